//! `flotilla bench admission` (W7): what an admission policy costs.
//!
//! First, one call: the `require-labels` example policy reviewing a ConfigMap create, as a
//! WASM component through the admission host's instance pool (what every request pays, the
//! request copied into the guest and the answer out) and, in the same run, the same crate
//! linked natively and called directly — the peer. Each side runs the same request many
//! times; the report gives each call's p50 and p99 and their ratio.
//!
//! Then the API: ConfigMap creates through a `flotilla server` child (HTTPS, embedded store)
//! with no policy, with one and with five `require-labels` policies on ConfigMaps, the
//! built-in policies turned off so only those run; and, in a second server, with the built-in
//! policies alone as a cluster starts with them. Each count is measured once per round, in
//! turn, so drift spreads over all of them; the report takes each count's median round.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_plugin::bindings::admission as wit;
use flotilla_plugin::{EngineConfig, Limits, PluginHost, Services, World};
use flotilla_sdk::admission::{self as sdk, AdmissionPolicy as _};
use hdrhistogram::Histogram;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use crate::bench;
use crate::bench_api::{CreateFigures, ServerProcess, creates_at};

#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionBenchArgs {
    /// Where the servers keep their state (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Reviews measured on each side of the per-call comparison.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// ConfigMaps created for each policy count in each round.
    #[arg(long, default_value_t = 3000)]
    creates: usize,
    /// Concurrent clients creating them (each its own connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Rounds over the policy counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const SETTINGS: &str = r#"{"labels":["team"]}"#;

/// The ConfigMap every review and create carries.
fn config_map(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "bench",
            "labels": {"team": "payments", "app": "bench", "tier": "backend"}},
        "data": {"mode": "bench", "level": "info", "endpoint": "https://payments.internal:8443"},
    })
}

/// One review request as the admission host sends it.
fn wit_request() -> wit::Request {
    wit::Request {
        uid: "705ab4f5-6393-11e8-b7cc-42010a800002".into(),
        kind: wit::GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        },
        resource: wit::GroupVersionResource {
            group: String::new(),
            version: "v1".into(),
            resource: "configmaps".into(),
        },
        sub_resource: String::new(),
        namespace: "bench".into(),
        name: "settings".into(),
        operation: wit::Operation::Create,
        user_info: wit::UserInfo {
            username: "admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: Vec::new(),
        },
        object: Some(config_map("settings").to_string()),
        old_object: None,
        dry_run: false,
        options: Some(
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "kubectl"})
                .to_string(),
        ),
        settings: SETTINGS.into(),
    }
}

/// The same request in the SDK's types, as the native peer takes it.
fn sdk_request(r: &wit::Request) -> sdk::Request {
    sdk::Request {
        uid: r.uid.clone(),
        kind: sdk::GroupVersionKind {
            group: r.kind.group.clone(),
            version: r.kind.version.clone(),
            kind: r.kind.kind.clone(),
        },
        resource: sdk::GroupVersionResource {
            group: r.resource.group.clone(),
            version: r.resource.version.clone(),
            resource: r.resource.resource.clone(),
        },
        sub_resource: r.sub_resource.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        operation: sdk::Operation::Create,
        user: sdk::UserInfo {
            username: r.user_info.username.clone(),
            uid: r.user_info.uid.clone(),
            groups: r.user_info.groups.clone(),
            extra: r.user_info.extra.clone(),
        },
        object: r.object.clone(),
        old_object: r.old_object.clone(),
        dry_run: r.dry_run,
        options: r.options.clone(),
        settings: r.settings.clone(),
    }
}

/// Per-call latencies in nanoseconds.
struct Calls {
    wasm: Histogram<u64>,
    native: Histogram<u64>,
}

async fn per_call(calls: usize) -> anyhow::Result<Calls> {
    let builtin = flotilla_builtins::find("require-labels")
        .context("this binary carries no require-labels")?;
    let host = PluginHost::new(EngineConfig::default())?;
    let module = host.load("require-labels", World::AdmissionPolicy, builtin.wasm, None)?;
    let services = Services {
        config: "{}".into(),
        ..Services::default()
    };
    let pool = flotilla_admission::pool::Pool::start(module, Limits::default(), services)
        .await
        .map_err(anyhow::Error::msg)?;
    let request = wit_request();
    let mut native = require_labels::RequireLabels::new("{}").map_err(anyhow::Error::msg)?;
    let native_request = sdk_request(&request);
    // Both sides must give the same verdict.
    let answer = pool.review(&request).await.map_err(anyhow::Error::msg)?;
    let native_answer = native.review(native_request.clone());
    anyhow::ensure!(
        answer.allowed && native_answer.allowed,
        "the bench request must be admitted on both sides"
    );
    let mut wasm = Histogram::<u64>::new(3)?;
    let mut peer = Histogram::<u64>::new(3)?;
    // Warm-up, then the two sides interleaved in blocks so drift spreads over both.
    for _ in 0..calls / 10 {
        pool.review(&request).await.map_err(anyhow::Error::msg)?;
        std::hint::black_box(native.review(native_request.clone()));
    }
    let block = 1000.min(calls.max(1));
    let mut done = 0;
    while done < calls {
        let n = block.min(calls - done);
        for _ in 0..n {
            let t = Instant::now();
            let answer = pool.review(&request).await.map_err(anyhow::Error::msg)?;
            wasm.record(t.elapsed().as_nanos() as u64)?;
            std::hint::black_box(answer);
        }
        for _ in 0..n {
            let t = Instant::now();
            let answer = native.review(native_request.clone());
            peer.record(t.elapsed().as_nanos() as u64)?;
            std::hint::black_box(answer);
        }
        done += n;
    }
    Ok(Calls { wasm, native: peer })
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value)?)
}

fn policies_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(
                flotilla_client::plugins::GROUP,
                flotilla_client::plugins::VERSION,
                "AdmissionPolicy",
            ),
            "admissionpolicies",
        ),
    )
}

/// Makes `policy-0` … `policy-{count-1}` (require-labels on ConfigMap creates) the user
/// policies there are, and waits until they are in force: each Ready, and a ConfigMap
/// without the label refused (none: admitted).
async fn set_policies(
    client: &kube::Client,
    present: &mut usize,
    count: usize,
) -> anyhow::Result<()> {
    let policies = policies_api(client);
    for i in *present..count {
        policies
            .create(
                &PostParams::default(),
                &object(json!({
                    "apiVersion": "plugins.flotilla.dev/v1alpha1",
                    "kind": "AdmissionPolicy",
                    "metadata": {"name": format!("policy-{i}")},
                    "spec": {
                        "plugin": "require-labels",
                        "mode": "Validating",
                        "rules": [{"operations": ["CREATE"], "apiGroups": [""],
                                   "apiVersions": ["v1"], "resources": ["configmaps"]}],
                        "settings": {"labels": ["team"]},
                    },
                }))?,
            )
            .await?;
    }
    for i in count..*present {
        policies
            .delete(&format!("policy-{i}"), &kube::api::DeleteParams::default())
            .await?;
    }
    *present = count;
    let names: Vec<String> = (0..count).map(|i| format!("policy-{i}")).collect();
    ready(client, &names).await?;
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{count} policies were not in force within 60 s"
        );
        let unlabelled = object(json!({"metadata": {"name": "unlabelled"}}))?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let refused = matches!(
            config_maps.create(&dry_run, &unlabelled).await,
            Err(kube::Error::Api(status)) if status.code == 403
        );
        if refused == (count > 0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until each named AdmissionPolicy reports Ready.
async fn ready(client: &kube::Client, names: &[String]) -> anyhow::Result<()> {
    let policies = policies_api(client);
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in names {
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} was not Ready within 120 s"
            );
            let found = policies.get_opt(name).await?;
            let is_ready = found.is_some_and(|p| {
                p.data["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if is_ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A server for the create runs, the bench namespace made.
async fn server(
    dir: &std::path::Path,
    builtins: bool,
) -> anyhow::Result<(ServerProcess, kube::Client)> {
    let mut args = vec![
        "server",
        "--datastore",
        "embedded",
        "--disable-scheduler",
        "--disable-controllers",
    ];
    if !builtins {
        for name in flotilla_admission::builtins::BUILTIN_POLICIES {
            args.extend(["--disable-admission-policy", name]);
        }
    }
    let server = ServerProcess::start_with(dir, &args)?;
    let client = flotilla_client::connect(&server.kubeconfig).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    Ok((server, client))
}

fn median(mut runs: Vec<CreateFigures>) -> CreateFigures {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    runs.swap_remove(runs.len() / 2)
}

pub async fn admission(args: AdmissionBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.calls > 0,
        "--rounds and --calls must be at least 1"
    );
    let scratch = bench::scratch_dir(args.dir.as_deref())?;
    let template = config_map("__NAME__").to_string();

    let calls = per_call(args.calls).await?;
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    eprintln!(
        "per call: WASM p50 {:.1} µs p99 {:.1} µs, native p50 {:.1} µs p99 {:.1} µs",
        q(&calls.wasm, 0.5),
        q(&calls.wasm, 0.99),
        q(&calls.native, 0.5),
        q(&calls.native, 0.99)
    );

    // 0, 1 and 5 policies in one server; each round measures every count, so the policies are
    // added in the first round and the later rounds delete them back to each count.
    let (server_a, client) = server(&scratch.path().join("policies"), false).await?;
    let plugins = flotilla_client::plugins::api(&client, "WasmPlugin");
    let digest = flotilla_plugin::digest(
        flotilla_builtins::find("require-labels")
            .context("this binary carries no require-labels")?
            .wasm,
    );
    plugins
        .create(
            &PostParams::default(),
            &object(json!({
                "apiVersion": "plugins.flotilla.dev/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "require-labels"},
                "spec": {"kind": "admission-policy",
                         "module": {"digest": digest, "builtin": "require-labels"}},
            }))?,
        )
        .await?;
    let counts = [0usize, 1, 5];
    let mut runs: Vec<Vec<CreateFigures>> = counts.iter().map(|_| Vec::new()).collect();
    let mut present = 0;
    let path = "/api/v1/namespaces/bench/configmaps";
    for round in 0..args.rounds {
        for (index, &count) in counts.iter().enumerate() {
            set_policies(&client, &mut present, count).await?;
            let figures = creates_at(
                &server_a,
                path,
                args.clients,
                args.creates,
                &template.replace("__NAME__", &format!("r{round}-{count}-__NAME__")),
            )
            .await?;
            eprintln!(
                "{count} policies: {:.0} creates/s, p50 {} µs, p99 {} µs",
                figures.rate, figures.p50_us, figures.p99_us
            );
            runs[index].push(figures);
        }
    }
    drop(server_a);
    let (server_b, client_b) = server(&scratch.path().join("builtins"), true).await?;
    let builtins: Vec<String> = flotilla_admission::builtins::BUILTIN_POLICIES
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    ready(&client_b, &builtins).await?;
    let mut builtin_runs = Vec::new();
    for round in 0..args.rounds {
        let figures = creates_at(
            &server_b,
            "/api/v1/namespaces/bench/configmaps",
            args.clients,
            args.creates,
            &template.replace("__NAME__", &format!("b{round}-__NAME__")),
        )
        .await?;
        eprintln!(
            "built-in policies: {:.0} creates/s, p50 {} µs, p99 {} µs",
            figures.rate, figures.p50_us, figures.p99_us
        );
        builtin_runs.push(figures);
    }
    drop(server_b);

    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}", bench::machine());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| W7: one review of a ConfigMap create by require-labels, {} calls each | p50 | p99 |",
        args.calls
    );
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| WASM component through the admission host's instance pool | {:.1} µs | {:.1} µs |",
        q(&calls.wasm, 0.5),
        q(&calls.wasm, 0.99)
    );
    let _ = writeln!(
        out,
        "| the same crate linked natively (peer) | {:.1} µs | {:.1} µs |",
        q(&calls.native, 0.5),
        q(&calls.native, 0.99)
    );
    let _ = writeln!(
        out,
        "| WASM added per call | {:+.1} µs | {:+.1} µs |",
        q(&calls.wasm, 0.5) - q(&calls.native, 0.5),
        q(&calls.wasm, 0.99) - q(&calls.native, 0.99)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| W7: ConfigMap creates, {} clients, {} per run; median of {} rounds | creates/s | vs none | p50 | p99 |",
        args.clients, args.creates, args.rounds
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let figures: Vec<CreateFigures> = runs.into_iter().map(median).collect();
    let none = figures[0].rate.max(1.0);
    for (count, f) in counts.iter().zip(&figures) {
        let what = match count {
            0 => "no policy (built-ins off)".to_owned(),
            1 => "1 require-labels policy".to_owned(),
            n => format!("{n} require-labels policies"),
        };
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.2}x | {} µs | {} µs |",
            f.rate,
            f.rate / none,
            f.p50_us,
            f.p99_us
        );
    }
    let b = median(builtin_runs);
    let _ = writeln!(
        out,
        "| the built-in policies (a fresh server's defaults; namespace-lifecycle and resource-quota see ConfigMaps) | {:.0} | {:.2}x | {} µs | {} µs |",
        b.rate,
        b.rate / none,
        b.p50_us,
        b.p99_us
    );
    println!("\n{out}");
    Ok(())
}
