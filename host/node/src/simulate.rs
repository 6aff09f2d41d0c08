//! Simulated nodes: registered Nodes with chosen capacity and labels, Leases renewed at an
//! interval, and pods bound to them reported Running (and their deletions completed) without
//! running anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The label every simulated node carries.
pub const SIMULATED_LABEL: &str = "flotilla.dev/simulated";

#[derive(Clone, Debug)]
pub struct Options {
    pub count: usize,
    /// Node names are `<prefix><n>`.
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// Labels on every node.
    pub labels: BTreeMap<String, String>,
    /// Spread nodes over this many `topology.kubernetes.io/zone` values (0: no zone label).
    pub zones: usize,
    /// How often each node's Lease is renewed.
    pub lease_interval: Duration,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Report pods bound to the nodes Running (and complete their deletions).
    pub run_pods: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            count: 1,
            prefix: "sim-".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            zones: 0,
            lease_interval: Duration::from_secs(10),
            concurrency: 32,
            run_pods: true,
        }
    }
}

/// Running simulated nodes.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Simulation {
    /// Stops renewing leases and running pods (the Nodes stay registered).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// What the simulation has done, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub nodes_registered: AtomicU64,
    pub leases_renewed: AtomicU64,
    pub pods_running: AtomicU64,
    pub pods_deleted: AtomicU64,
}

fn node_name(options: &Options, n: usize) -> String {
    format!("{}{n}", options.prefix)
}

fn node_object(options: &Options, n: usize) -> Result<Node, serde_json::Error> {
    let name = node_name(options, n);
    let mut labels = options.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.clone());
    labels.insert("kubernetes.io/os".into(), "wasip2".into());
    labels.insert("kubernetes.io/arch".into(), "wasm32".into());
    labels.insert(SIMULATED_LABEL.into(), "true".into());
    if options.zones > 0 {
        labels.insert(
            "topology.kubernetes.io/zone".into(),
            format!("zone-{}", n % options.zones),
        );
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
    }))
}

fn node_status(options: &Options) -> serde_json::Value {
    let now = flotilla_client::now_rfc3339();
    let resources = json!({"cpu": options.cpu, "memory": options.memory,
        "pods": options.pods.to_string(), "ephemeral-storage": "100Gi"});
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "simulated node is ready", "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "simulated", "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "nodeInfo": {"machineID": "simulated", "systemUUID": "simulated", "bootID": "simulated",
            "kernelVersion": "", "osImage": "Flotilla simulated node", "containerRuntimeVersion": "flotilla://simulated",
            "kubeletVersion": "v1.32.0-flotilla", "kubeProxyVersion": "", "operatingSystem": "wasip2",
            "architecture": "wasm32"},
    }})
}

/// Registers the nodes, then keeps them alive in the background. Returns once every node is
/// registered.
pub async fn start(client: kube::Client, options: Options) -> Result<Simulation, kube::Error> {
    let stats = Arc::new(Stats::default());
    let nodes: Api<Node> = Api::all(client.clone());
    let gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let registering = options.clone();
    let mut registrations = futures::stream::iter(0..registering.count)
        .map(|n| {
            let nodes = nodes.clone();
            let options = registering.clone();
            async move {
                let node = node_object(&options, n).map_err(kube::Error::SerdeError)?;
                let name = node_name(&options, n);
                match nodes.create(&PostParams::default(), &node).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e),
                }
                nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(node_status(&options)),
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(registering.concurrency.max(1));
    while let Some(result) = registrations.next().await {
        result?;
        stats.nodes_registered.fetch_add(1, Ordering::Relaxed);
    }
    drop(registrations);
    let stop = CancellationToken::new();
    let leases = renew_leases(client.clone(), options.clone(), stats.clone(), gate.clone());
    tokio::spawn(stop.clone().run_until_cancelled_owned(leases));
    if options.run_pods {
        let pods = run_pods(client, options, stats.clone(), gate);
        tokio::spawn(stop.clone().run_until_cancelled_owned(pods));
    }
    Ok(Simulation { stats, stop })
}

/// Renews every node's Lease in `kube-node-lease`, spreading the writes over the interval.
async fn renew_leases(
    client: kube::Client,
    options: Options,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let spacing = options.lease_interval / options.count.max(1) as u32;
    let mut ticker = tokio::time::interval(spacing.max(Duration::from_micros(100)));
    let mut n = 0;
    loop {
        ticker.tick().await;
        let name = node_name(&options, n % options.count.max(1));
        n += 1;
        let leases = leases.clone();
        let stats = stats.clone();
        let Ok(permit) = gate.clone().acquire_owned().await else {
            return;
        };
        let interval = options.lease_interval;
        tokio::spawn(async move {
            let _permit = permit;
            let lease = crate::agent::node_lease(&name, interval);
            let patch = Patch::Apply(lease);
            let params = PatchParams::apply("flotilla-simulated-node").force();
            if leases.patch(&name, &params, &patch).await.is_ok() {
                stats.leases_renewed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Moves pods bound to simulated nodes to Running and completes their deletions.
async fn run_pods(client: kube::Client, options: Options, stats: Arc<Stats>, gate: Arc<Semaphore>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = std::pin::pin!(
        watcher(pods, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(event) = events.next().await {
        let Ok(pod) = event else { continue };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !node.starts_with(&options.prefix) {
            continue;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let Ok(permit) = gate.clone().acquire_owned().await else {
            return;
        };
        let stats = stats.clone();
        if pod.metadata.deletion_timestamp.is_some() {
            tokio::spawn(async move {
                let _permit = permit;
                if api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                    .is_ok()
                {
                    stats.pods_deleted.fetch_add(1, Ordering::Relaxed);
                }
            });
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase != "Pending" {
            continue;
        }
        let containers: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": flotilla_client::now_rfc3339()}}})
            })
            .collect();
        tokio::spawn(async move {
            let _permit = permit;
            let now = flotilla_client::now_rfc3339();
            let status = json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": containers,
            }});
            if api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                .await
                .is_ok()
            {
                stats.pods_running.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
