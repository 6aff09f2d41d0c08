//! `flotilla bench reconcile`: W9's second figure, the cost of one ReplicaSet reconcile in the
//! built-in WASM controller next to the same crate (`plugins/controllers/replicaset`) linked
//! natively — the only place controller code runs natively, as the peer.
//!
//! A `flotilla server` child (no scheduler, no controller manager) holds one ReplicaSet and N
//! pods it owns, bound and Ready. This process runs the host's informers on Pods and
//! ReplicaSets and hands the same cache reader and API writer to both builds: the component
//! through its imports, the native build through the SDK's `NativeHost`. Once the status is
//! up to date, each reconcile reads the ReplicaSet, claims its pods (one projected cache
//! query), computes the status and writes nothing — the reconcile every pod event and resync
//! triggers. Rounds alternate between the builds.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_controllers::api::{Reader, Writer};
use flotilla_controllers::informer::{Informers, KindKey};
use flotilla_plugin::bindings::{api as wit_api, cache as wit_cache, types as wit_types};
use flotilla_plugin::{
    ApiWriter, CacheReader, Controller, EngineConfig, PluginHost, Services, World,
};
use flotilla_sdk::controller::{
    ApiResource, Controller as _, DeleteOptions, Event, ObjectRef, PatchType, Remaining,
};
use flotilla_sdk::{Status, cache::Selection};
use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use replicaset_controller::ReplicaSetController;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bench;
use crate::bench_api::ServerProcess;

#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileBenchArgs {
    /// ReplicaSet sizes to measure, in pods.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 10000])]
    pods: Vec<usize>,
    /// Reconciles per build and size.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Directory for the server's data (a temporary directory inside it is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The host's cache reader and API writer, as the native build's SDK reaches them.
struct Bridge {
    reader: Arc<Reader>,
    writer: Arc<Writer>,
    runtime: tokio::runtime::Handle,
}

fn sdk_status(s: wit_types::Status) -> Status {
    Status {
        code: s.code,
        reason: s.reason,
        message: s.message,
    }
}

fn wit_ref(r: &ObjectRef) -> wit_types::ObjectRef {
    wit_types::ObjectRef {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
    }
}

impl flotilla_sdk::native::NativeHost for Bridge {
    fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        self.runtime
            .block_on(self.reader.get(api_version, kind, namespace, name))
            .map_err(sdk_status)
    }

    fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        self.runtime
            .block_on(
                self.reader
                    .list(api_version, kind, namespace, label_selector),
            )
            .map_err(sdk_status)
    }

    fn query(
        &self,
        api_version: &str,
        kind: &str,
        selection: &Selection,
    ) -> Result<Vec<String>, Status> {
        let selection = wit_cache::Selection {
            namespace: selection.namespace.clone(),
            label_selector: selection.label_selector.clone(),
            claimable_by: selection.claimable_by.clone(),
            fields: selection.fields.clone(),
        };
        self.runtime
            .block_on(self.reader.query(api_version, kind, selection))
            .map_err(sdk_status)
    }

    fn create(&self, object: &str) -> Result<String, Status> {
        self.runtime
            .block_on(self.writer.create(object.to_owned()))
            .map_err(sdk_status)
    }

    fn create_batch(&self, objects: &[String]) -> Vec<Result<String, Status>> {
        self.runtime
            .block_on(self.writer.create_batch(objects.to_vec()))
            .into_iter()
            .map(|r| r.map_err(sdk_status))
            .collect()
    }

    fn update(&self, object: &str) -> Result<String, Status> {
        self.runtime
            .block_on(self.writer.update(object.to_owned()))
            .map_err(sdk_status)
    }

    fn update_status(&self, object: &str) -> Result<String, Status> {
        self.runtime
            .block_on(self.writer.update_status(object.to_owned()))
            .map_err(sdk_status)
    }

    fn patch(
        &self,
        target: &ObjectRef,
        patch_type: PatchType,
        patch: &str,
    ) -> Result<String, Status> {
        let patch_type = match patch_type {
            PatchType::Json => wit_api::PatchType::Json,
            PatchType::Merge => wit_api::PatchType::Merge,
            PatchType::Strategic => wit_api::PatchType::Strategic,
            PatchType::Apply => wit_api::PatchType::Apply,
        };
        self.runtime
            .block_on(
                self.writer
                    .patch(wit_ref(target), patch_type, patch.to_owned()),
            )
            .map_err(sdk_status)
    }

    fn delete(&self, target: &ObjectRef, options: &DeleteOptions) -> Result<(), Status> {
        self.runtime
            .block_on(self.writer.delete(
                wit_ref(target),
                options.resource_version.clone(),
                options.uid.clone(),
                options.propagation.clone(),
            ))
            .map_err(sdk_status)
    }

    fn emit_event(&self, event: &Event) -> Result<(), Status> {
        self.runtime
            .block_on(self.writer.emit_event(wit_api::Event {
                regarding: wit_ref(&event.regarding),
                event_type: event.event_type.clone(),
                reason: event.reason.clone(),
                message: event.message.clone(),
            }))
            .map_err(sdk_status)
    }

    fn resources(&self) -> Result<Vec<ApiResource>, Status> {
        let resources = self
            .runtime
            .block_on(self.writer.resources())
            .map_err(sdk_status)?;
        Ok(resources
            .into_iter()
            .map(|r| ApiResource {
                api_version: r.api_version,
                kind: r.kind,
                resource: r.resource,
                namespaced: r.namespaced,
                verbs: r.verbs,
            })
            .collect())
    }

    fn delete_collection(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Remaining, Status> {
        let left = self
            .runtime
            .block_on(
                self.writer
                    .delete_collection(api_version, kind, namespace, label_selector),
            )
            .map_err(sdk_status)?;
        Ok(Remaining {
            count: left.count,
            finalizers: left.finalizers,
        })
    }

    fn update_subresource(&self, object: &str, subresource: &str) -> Result<String, Status> {
        self.runtime
            .block_on(
                self.writer
                    .update_subresource(object.to_owned(), subresource),
            )
            .map_err(sdk_status)
    }
}

/// One size's figures, in microseconds.
struct SizeFigures {
    pods: usize,
    wasm: Histogram<u64>,
    native: Histogram<u64>,
}

/// Creates pods `from..to` owned by the ReplicaSet, bound and Ready.
async fn add_pods(
    client: &kube::Client,
    owner: &ReplicaSet,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let uid = owner
        .metadata
        .uid
        .clone()
        .context("the ReplicaSet has no uid")?;
    let mut creates = futures::stream::iter(from..to)
        .map(|i| {
            let pods = pods.clone();
            let uid = uid.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("web-{i:05}"), "labels": {"app": "web"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "name": "web", "uid": uid, "controller": true,
                            "blockOwnerDeletion": true}]},
                    "spec": {"nodeName": format!("node-{}", i % 100),
                        "containers": [{"name": "c", "image": "web.wasm",
                            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
                }))?;
                let created = pods.create(&PostParams::default(), &pod).await?;
                let now = flotilla_client::now_rfc3339();
                let status = json!({"status": {"phase": "Running", "podIP": "127.3.0.1",
                    "startTime": now,
                    "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now}],
                    "containerStatuses": [{"name": "c", "image": "web.wasm",
                        "imageID": "sha256:0", "ready": true, "started": true,
                        "restartCount": 0, "state": {"running": {"startedAt": now}}}]}});
                let name = created.metadata.name.clone().unwrap_or_default();
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32);
    while let Some(done) = creates.next().await {
        done?;
    }
    Ok(())
}

pub async fn reconcile(args: ReconcileBenchArgs) -> anyhow::Result<()> {
    let scratch = bench::scratch_dir(args.dir.as_deref())?;
    let fsync = bench::measure_fsync(scratch.path())?;
    let server = ServerProcess::start_with(
        &scratch.path().join("server"),
        &[
            "server",
            "--datastore",
            "embedded",
            "--disable-scheduler",
            "--disable-controllers",
        ],
    )?;
    let client = flotilla_client::connect(&server.kubeconfig).await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let owner: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}},
    }))?;
    let owner = replica_sets.create(&PostParams::default(), &owner).await?;

    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let informers = Informers::new(client.clone(), stop.clone());
    let pod_kind = KindKey::new("v1", "Pod");
    let rs_kind = KindKey::new("apps/v1", "ReplicaSet");
    let pod_informer = informers
        .informer(&pod_kind)
        .await
        .map_err(anyhow::Error::msg)?;
    let rs_informer = informers
        .informer(&rs_kind)
        .await
        .map_err(anyhow::Error::msg)?;
    pod_informer.synced().await;
    rs_informer.synced().await;
    let reader = Arc::new(Reader {
        informers: informers.clone(),
        allowed: HashSet::from([pod_kind, rs_kind]),
    });
    let writer = Arc::new(Writer {
        client: client.clone(),
        informers: informers.clone(),
        events: flotilla_controllers::events::Recorder::start(client.clone(), stop.clone()),
        manager: "bench-reconcile".into(),
        written: Mutex::default(),
    });

    let builtin = flotilla_builtins::find("replicaset-controller")
        .context("this binary carries no replicaset-controller")?;
    let host = PluginHost::new(EngineConfig::default())?;
    let module = host.load(
        "replicaset-controller",
        World::Controller,
        builtin.wasm,
        None,
    )?;
    let services = Services {
        config: "{}".into(),
        cache: Some(reader.clone()),
        api: Some(writer.clone()),
        load: None,
    };
    let mut instance = module
        .instantiate(flotilla_controllers::defaults::builtin_limits(), services)
        .await?;
    instance.self_check().await?;
    let mut wasm = Controller::new(instance)?;
    flotilla_sdk::native::set_native_host(Arc::new(Bridge {
        reader,
        writer: writer.clone(),
        runtime: tokio::runtime::Handle::current(),
    }));
    let mut native = Some(ReplicaSetController::new("{}").map_err(anyhow::Error::msg)?);

    let wit_key = wit_types::ObjectRef {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        namespace: Some("default".into()),
        name: "web".into(),
    };
    let sdk_key = ObjectRef {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        namespace: Some("default".into()),
        name: "web".into(),
    };
    // One reconcile of each build: (build, time taken, whether it wrote).
    macro_rules! reconcile_wasm {
        () => {{
            let started = Instant::now();
            let outcome = wasm.reconcile(&wit_key).await?;
            let took = started.elapsed();
            outcome.map_err(|e| anyhow::anyhow!("the WASM reconcile failed: {e}"))?;
            (took, !writer.take_written().is_empty())
        }};
    }
    macro_rules! reconcile_native {
        () => {{
            let mut controller = native.take().expect("the native controller");
            let key = sdk_key.clone();
            let (controller, took, outcome) = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let outcome = controller.reconcile(key);
                (controller, started.elapsed(), outcome)
            })
            .await?;
            native = Some(controller);
            outcome.map_err(|e| anyhow::anyhow!("the native reconcile failed: {e}"))?;
            (took, !writer.take_written().is_empty())
        }};
    }

    let mut sizes = Vec::new();
    let mut have = 0;
    for &pods in &args.pods {
        add_pods(&client, &owner, have, pods).await?;
        have = have.max(pods);
        replica_sets
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": pods}})),
            )
            .await?;
        // The cache holds every pod, Ready, and the new replica count.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = pod_informer
                .list(Some("default"))
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count();
            let wanted = rs_informer
                .get(Some("default"), "web")
                .is_some_and(|rs| rs["spec"]["replicas"] == pods);
            if ready >= pods && wanted {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the cache did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The status is brought up to date, and the cache has seen it: reconciles write
        // nothing from here on.
        let mut quiet = 0;
        for _ in 0..200 {
            // A build runs only on a cache that has seen the other's last write: a write on
            // a stale one would conflict.
            let (_, wrote_wasm) = reconcile_wasm!();
            if wrote_wasm {
                quiet = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let (_, wrote_native) = reconcile_native!();
            if wrote_native {
                quiet = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                quiet += 1;
                if quiet == 3 {
                    break;
                }
            }
        }
        anyhow::ensure!(quiet == 3, "the ReplicaSet's status did not settle");
        let mut figures = SizeFigures {
            pods,
            wasm: Histogram::new(3)?,
            native: Histogram::new(3)?,
        };
        for _ in 0..args.rounds {
            let (took, wrote) = reconcile_wasm!();
            anyhow::ensure!(!wrote, "a steady-state WASM reconcile wrote");
            figures.wasm.record(took.as_micros() as u64)?;
            let (took, wrote) = reconcile_native!();
            anyhow::ensure!(!wrote, "a steady-state native reconcile wrote");
            figures.native.record(took.as_micros() as u64)?;
        }
        eprintln!(
            "{pods} pods: WASM p50 {:.2} ms, native p50 {:.2} ms",
            figures.wasm.value_at_quantile(0.5) as f64 / 1000.0,
            figures.native.value_at_quantile(0.5) as f64 / 1000.0
        );
        sizes.push(figures);
    }
    println!("{}", report(&args, &fsync, &sizes));
    Ok(())
}

fn report(args: &ReconcileBenchArgs, fsync: &Histogram<u64>, sizes: &[SizeFigures]) -> String {
    let mut out = bench::report_header(fsync);
    let _ = writeln!(
        out,
        "ReplicaSet reconcile at steady state (the ReplicaSet and its pods read from the host's informer cache — one projected `cache.query` for the pods —, the status computed, nothing written), {} rounds per build and size, alternating. WASM: the built-in component in wasmtime; native: the same crate linked into the host, through the same cache reader.\n",
        args.rounds
    );
    let _ = writeln!(
        out,
        "| pods | WASM p50 / p99 (ms) | native p50 / p99 (ms) | WASM / native (p50) |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for s in sizes {
        let _ = writeln!(
            out,
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} |",
            s.pods,
            ms(&s.wasm, 0.5),
            ms(&s.wasm, 0.99),
            ms(&s.native, 0.5),
            ms(&s.native, 0.99),
            ms(&s.wasm, 0.5) / ms(&s.native, 0.5).max(0.001)
        );
    }
    out
}
