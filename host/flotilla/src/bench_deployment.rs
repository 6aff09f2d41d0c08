//! `flotilla bench deployment`: W9, a Deployment burst — one Deployment of 10,000 replicas on
//! 1,000 simulated nodes, its ReplicaSet and pods made by the built-in controllers (WASM) and
//! placed by the scheduler — next to the peer: the same pods created directly by concurrent
//! clients, scheduled by the same scheduler, in a server of the same configuration.
//!
//! Each run has its own `flotilla server` child (embedded store, HTTPS, scheduler and
//! controller manager in it). The bench registers the simulated nodes, waits until a
//! one-replica warm-up Deployment's pod is bound (controllers and scheduler serving), watches
//! the pods, makes the burst and measures until every pod is bound: pods created and bound per second from the
//! burst's start, and each pod's latency from its creation being seen to its binding being seen.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::bench;
use crate::bench_api::ServerProcess;

#[derive(Debug, Clone, clap::Args)]
pub struct DeploymentBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// The Deployment's replicas (and the peer's pods).
    #[arg(long, default_value_t = 10000)]
    replicas: usize,
    /// Concurrent clients creating the peer's pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Directory for the servers' data (a temporary directory inside it is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// How a run makes its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Burst {
    /// One Deployment: the controllers make the ReplicaSet and the pods.
    Deployment,
    /// The peer: the bench creates the pods itself.
    DirectPods,
}

/// What one run measured.
#[derive(Debug)]
struct RunFigures {
    label: &'static str,
    /// Pods created and bound per second, from the burst's start to the last binding.
    pods_per_second: f64,
    /// From the burst's start to the last pod seen created, and to the last seen bound.
    all_created: Duration,
    all_bound: Duration,
    bind_p50_ms: u64,
    bind_p99_ms: u64,
    server_cpu: Duration,
}

pub async fn deployment(args: DeploymentBenchArgs) -> anyhow::Result<()> {
    let scratch = bench::scratch_dir(args.dir.as_deref())?;
    let fsync = bench::measure_fsync(scratch.path())?;
    let mut runs = Vec::new();
    for (i, (label, burst)) in [
        ("Deployment (WASM controllers)", Burst::Deployment),
        ("pods created by the clients (peer)", Burst::DirectPods),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = scratch.path().join(format!("run{i}"));
        let figures = run(&args, &dir, label, burst).await?;
        eprintln!(
            "{label}: {:.0} pods/s, all created in {:.1} s, all bound in {:.1} s, create→bind p50 {} ms p99 {} ms",
            figures.pods_per_second,
            figures.all_created.as_secs_f64(),
            figures.all_bound.as_secs_f64(),
            figures.bind_p50_ms,
            figures.bind_p99_ms
        );
        runs.push(figures);
    }
    println!("{}", report(&args, &fsync, &runs));
    Ok(())
}

/// scheduler_perf's default pod: 100m cpu, 500Mi memory.
fn template() -> Value {
    json!({
        "metadata": {"labels": {"app": "burst"}},
        "spec": {"containers": [{"name": "c", "image": "burst.wasm",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
    })
}

async fn run(
    args: &DeploymentBenchArgs,
    dir: &std::path::Path,
    label: &'static str,
    burst: Burst,
) -> anyhow::Result<RunFigures> {
    std::fs::create_dir_all(dir)?;
    let server = ServerProcess::start_with(dir, &["server", "--datastore", "embedded"])?;
    let client = flotilla_client::connect(&server.kubeconfig).await?;
    let simulation = flotilla_node::simulate::start(client.clone(), bench::perf_nodes(args.nodes))
        .await
        .context("cannot register the simulated nodes")?;

    // Every pod's creation and binding, as a watcher sees them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let wanted = args.replicas;
    let watching = tokio::spawn(async move {
        let mut seen: HashMap<String, (Instant, Option<Instant>)> = HashMap::new();
        let mut bound = 0;
        let mut synced_tx = Some(synced_tx);
        let config = watcher::Config::default().labels("app=burst");
        let mut events = std::pin::pin!(watcher(pods, config));
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!("bench watch: {error}");
                    continue;
                }
            };
            let now = Instant::now();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let entry = seen.entry(uid).or_insert((now, None));
            let is_bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            if is_bound && entry.1.is_none() {
                entry.1 = Some(now);
                bound += 1;
                if bound >= wanted {
                    return seen;
                }
            }
        }
        seen
    });
    synced
        .await
        .context("the pod watch ended before it was synced")?;

    warm_up(&client).await?;

    let cpu_before = server.cpu();
    let started = Instant::now();
    match burst {
        Burst::Deployment => {
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": "burst"},
                "spec": {"replicas": args.replicas, "selector": {"matchLabels": {"app": "burst"}},
                    "template": template()},
            }))?;
            Api::<Deployment>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &deployment)
                .await?;
        }
        Burst::DirectPods => {
            let api: Api<Pod> = Api::namespaced(client.clone(), "default");
            let mut creates = futures::stream::iter(0..args.replicas)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        let mut pod = template();
                        pod["metadata"]["name"] = json!(format!("burst-{i}"));
                        let pod: Pod = serde_json::from_value(pod)?;
                        api.create(&PostParams::default(), &pod).await?;
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(args.clients.max(1));
            while let Some(created) = creates.next().await {
                created?;
            }
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(900), watching)
        .await
        .with_context(|| format!("{label}: not every pod was bound within 15 minutes"))??;
    let server_cpu = server.cpu().saturating_sub(cpu_before);
    simulation.stop();

    let mut latencies = Histogram::<u64>::new(3)?;
    let (mut last_created, mut last_bound) = (started, started);
    for (created, bound) in seen.values() {
        last_created = last_created.max(*created);
        if let Some(bound) = bound {
            last_bound = last_bound.max(*bound);
            latencies.record(bound.duration_since(*created).as_millis() as u64)?;
        }
    }
    anyhow::ensure!(
        latencies.len() as usize >= args.replicas,
        "{label}: only {} of {} pods bound",
        latencies.len(),
        args.replicas
    );
    let all_bound = last_bound.duration_since(started);
    Ok(RunFigures {
        label,
        pods_per_second: args.replicas as f64 / all_bound.as_secs_f64(),
        all_created: last_created.duration_since(started),
        all_bound,
        bind_p50_ms: latencies.value_at_quantile(0.5),
        bind_p99_ms: latencies.value_at_quantile(0.99),
        server_cpu,
    })
}

/// Waits until the controllers and the scheduler serve: a one-replica Deployment's pod is
/// bound. Both runs start their clock after this, so neither measures start-up.
async fn warm_up(client: &kube::Client) -> anyhow::Result<()> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "warm-up"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "warm-up"}},
            "template": {"metadata": {"labels": {"app": "warm-up"}},
                "spec": template()["spec"].clone()}},
    }))?;
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = kube::api::ListParams::default().labels("app=warm-up");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let bound = pods.list(&list).await?.items.iter().any(|pod| {
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        });
        if bound {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up pod was not bound within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(args: &DeploymentBenchArgs, fsync: &Histogram<u64>, runs: &[RunFigures]) -> String {
    let mut out = bench::report_header(fsync);
    let _ = writeln!(
        out,
        "Deployment burst: {} simulated nodes (4 cpu, 32Gi, 110 pods, 10 zones), {} pods (100m, 500Mi); a `flotilla server` child runs the API server, the scheduler (built-in WASM policies) and the controller manager (built-in WASM controllers). The peer creates the same pods itself with {} clients.\n",
        args.nodes, args.replicas, args.clients
    );
    let _ = writeln!(
        out,
        "| run | pods created + bound /s | vs peer | all created in | all bound in | create→bind p50 / p99 (ms) | server CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let peer = runs
        .iter()
        .find(|r| r.label.ends_with("(peer)"))
        .map_or(1.0, |r| r.pods_per_second);
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.1} s | {:.1} s | {} / {} | {:.1} s |",
            r.label,
            r.pods_per_second,
            r.pods_per_second / peer,
            r.all_created.as_secs_f64(),
            r.all_bound.as_secs_f64(),
            r.bind_p50_ms,
            r.bind_p99_ms,
            r.server_cpu.as_secs_f64()
        );
    }
    out
}
