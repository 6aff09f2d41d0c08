//! The agent: registers this node (capacity from the machine, labels, addresses, its pod CIDR),
//! renews its Lease in `kube-node-lease`, reports its conditions, and runs the pods bound to it
//! (one task per pod, see [`crate::pod`]), each with an IP from the node's pod CIDR.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::Utc;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::Recorder;
use crate::images::Images;
use crate::network::{self, NetworkMode, cidr_text};
use crate::pod::{self, BackoffPolicy, NodeContext};
use crate::runtime::{HttpStats, Runtime, RuntimeConfig};

/// The Node annotation naming the agent's serving certificate (its SHA-256, hex).
pub const SERVING_CERTIFICATE_ANNOTATION: &str = "flotilla.dev/serving-certificate-sha256";

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node_name: String,
    /// Modules, compiled artifacts, pod volumes and logs live here.
    pub data_dir: PathBuf,
    /// The node's pod CIDR (IPv4). In loopback mode it lies in 127.0.0.0/8.
    pub pod_cidr: (Ipv4Addr, u8),
    /// The node's address, as its InternalIP.
    pub node_ip: IpAddr,
    /// How pod IPs reach each other: one host's loopback range, or routes between hosts.
    pub network: NetworkMode,
    /// How often running pods' configMap and secret volumes are refreshed from their objects
    /// (the kubelet's `--sync-frequency`).
    pub sync_frequency: Duration,
    pub lease_interval: Duration,
    pub labels: BTreeMap<String, String>,
    /// Overrides of the capacity read from the machine.
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub max_pods: u32,
    pub backoff: BackoffPolicy,
    pub runtime: RuntimeConfig,
    /// The port of the agent's endpoint (logs) on the node's address; 0 picks a free one.
    pub port: u16,
    /// The cluster CA (PEM): the agent serves only clients it signed, the API server.
    pub api_ca_pem: Option<String>,
    /// The cluster's Service names (the node's proxy's), which workloads' name lookups
    /// resolve; none: workloads resolve through the host's resolver only.
    pub service_names: Option<Arc<dyn crate::runtime::ServiceNames>>,
}

impl AgentOptions {
    /// Defaults for a node of this name keeping its state in `data_dir`.
    pub fn new(node_name: &str, data_dir: PathBuf) -> Self {
        Self {
            node_name: node_name.to_owned(),
            runtime: crate::runtime::default_config(Some(data_dir.join("artifacts"))),
            data_dir,
            pod_cidr: (Ipv4Addr::new(127, 1, 0, 0), 16),
            node_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            network: NetworkMode::Loopback,
            sync_frequency: Duration::from_secs(60),
            lease_interval: Duration::from_secs(10),
            labels: BTreeMap::new(),
            cpu: None,
            memory: None,
            max_pods: 110,
            backoff: BackoffPolicy::default(),
            port: 10250,
            api_ca_pem: None,
            service_names: None,
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot register node {node}: {source}")]
    Register { node: String, source: kube::Error },
    #[error("{0}")]
    Setup(String),
}

/// A running agent.
#[derive(Clone)]
pub struct Agent {
    ctx: Arc<NodeContext>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.ctx.node)
            .finish()
    }
}

impl Agent {
    pub fn node_name(&self) -> &str {
        &self.ctx.node
    }

    /// Stops renewing the Lease and watching pods; running pods stop with the process.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Request counters of a running HTTP container, by pod uid and container name.
    pub fn http_stats(&self, pod_uid: &str, container: &str) -> Option<Arc<HttpStats>> {
        self.ctx
            .http_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pod_uid.to_owned(), container.to_owned()))
            .cloned()
    }
}

/// The machine's cpu count and memory in bytes.
fn machine() -> (u32, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    (cpus, memory)
}

/// Available memory as a share of the total, for the MemoryPressure condition.
fn memory_available_fraction() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
    };
    Some(field("MemAvailable:")? / field("MemTotal:")?)
}

/// Pod IPs from the node's CIDR: the network and first address are left out (the first is the
/// node's gateway in routed mode).
#[derive(Debug)]
struct Ipam {
    base: u32,
    size: u32,
    used: HashMap<String, Ipv4Addr>,
    next: u32,
}

impl Ipam {
    fn new((base, prefix): (Ipv4Addr, u8)) -> Self {
        let size = 1u32
            .checked_shl(32 - u32::from(prefix.min(30)))
            .unwrap_or(u32::MAX);
        Self {
            base: u32::from(base) & !(size - 1),
            size,
            used: HashMap::new(),
            next: 2,
        }
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.base + 2 && n < self.base + self.size - 1
    }

    /// The pod's address: the one it had (after an agent restart) when it is still free, or
    /// the next free one.
    fn allocate(&mut self, uid: &str, had: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(ip) = self.used.get(uid) {
            return Some(*ip);
        }
        let taken: HashSet<Ipv4Addr> = self.used.values().copied().collect();
        if let Some(ip) = had.filter(|ip| self.contains(*ip) && !taken.contains(ip)) {
            self.used.insert(uid.to_owned(), ip);
            return Some(ip);
        }
        for _ in 0..self.size {
            let offset = self.next;
            self.next = if self.next + 1 >= self.size - 1 {
                2
            } else {
                self.next + 1
            };
            let ip = Ipv4Addr::from(self.base + offset);
            if !taken.contains(&ip) {
                self.used.insert(uid.to_owned(), ip);
                return Some(ip);
            }
        }
        None
    }

    fn release(&mut self, uid: &str) {
        self.used.remove(uid);
    }
}

/// Where the agent serves and which certificate it serves with.
struct Endpoint {
    port: u16,
    fingerprint: String,
}

async fn register(
    client: &kube::Client,
    options: &AgentOptions,
    endpoint: &Endpoint,
) -> Result<(i64, i64), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (cpus, memory) = machine();
    let cpu = options.cpu.clone().unwrap_or_else(|| cpus.to_string());
    let memory_text = options
        .memory
        .clone()
        .unwrap_or_else(|| format!("{}Ki", memory / 1024));
    let mut labels = options.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), options.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "wasip2".into());
    labels.insert("kubernetes.io/arch".into(), "wasm32".into());
    let annotations = json!({SERVING_CERTIFICATE_ANNOTATION: endpoint.fingerprint});
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": options.node_name, "labels": labels, "annotations": annotations},
        "spec": {"podCIDR": cidr_text(options.pod_cidr), "podCIDRs": [cidr_text(options.pod_cidr)]},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({"metadata": {"labels": labels, "annotations": annotations},
                "spec": {"podCIDR": cidr_text(options.pod_cidr), "podCIDRs": [cidr_text(options.pod_cidr)]}});
            nodes
                .patch(
                    &options.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        Err(e) => return Err(e),
    }
    let mut status = node_status(options, &cpu, &memory_text, true);
    status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": endpoint.port}});
    nodes
        .patch_status(
            &options.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    let cpu_millis = flotilla_api::quantity::parse(&cpu).map_or(1000, |q| q.milli_value());
    let memory_bytes = flotilla_api::quantity::parse(&memory_text).map_or(0, |q| q.value());
    Ok((cpu_millis, memory_bytes))
}

fn node_status(options: &AgentOptions, cpu: &str, memory: &str, first: bool) -> serde_json::Value {
    let now = flotilla_client::now_rfc3339();
    let pressure = memory_available_fraction().is_some_and(|f| f < 0.05);
    let resources = json!({"cpu": cpu, "memory": memory, "pods": options.max_pods.to_string(),
        "ephemeral-storage": "100Gi"});
    let mut status = json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "flotilla agent is posting ready status", "lastHeartbeatTime": now},
            {"type": "MemoryPressure", "status": if pressure { "True" } else { "False" },
             "reason": if pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
             "message": if pressure { "less than 5% of memory is available" } else { "kubelet has sufficient memory available" },
             "lastHeartbeatTime": now},
        ],
        "addresses": [
            {"type": "InternalIP", "address": options.node_ip.to_string()},
            {"type": "Hostname", "address": options.node_name},
        ],
        "nodeInfo": {
            "machineID": options.node_name, "systemUUID": options.node_name,
            "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim(),
            "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "osImage": "Flotilla (WASI 0.2)",
            "containerRuntimeVersion": concat!("wasmtime://48.0.8 flotilla/", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.32.0-flotilla",
            "kubeProxyVersion": "",
            "operatingSystem": "wasip2",
            "architecture": "wasm32",
        },
    });
    if first {
        for condition in status["conditions"].as_array_mut().into_iter().flatten() {
            condition["lastTransitionTime"] = json!(now);
        }
    }
    status
}

/// A node's Lease as renewed now: held by the node, valid for four renewal intervals.
pub(crate) fn node_lease(name: &str, interval: Duration) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(interval.as_secs().max(1) as i32 * 4),
            renew_time: Some(MicroTime(Utc::now())),
            ..Default::default()
        }),
    }
}

async fn renew_lease(client: kube::Client, options: AgentOptions) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let name = options.node_name.clone();
    let mut ticker = tokio::time::interval(options.lease_interval);
    loop {
        ticker.tick().await;
        let lease = node_lease(&name, options.lease_interval);
        let params = PatchParams::apply("flotilla-agent").force();
        if let Err(error) = leases.patch(&name, &params, &Patch::Apply(lease)).await {
            tracing::warn!(node = name, "cannot renew the node's lease: {error}");
        }
    }
}

/// Reports the node's conditions every minute (a heartbeat for clients that read them).
async fn report_status(client: kube::Client, options: AgentOptions, cpu: String, memory: String) {
    let nodes: Api<Node> = Api::all(client);
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let status = node_status(&options, &cpu, &memory, false);
        let patch = json!({"status": {"conditions": status["conditions"]}});
        if let Err(error) = nodes
            .patch_status(
                &options.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            tracing::warn!(
                node = options.node_name,
                "cannot report the node's status: {error}"
            );
        }
    }
}

struct Running {
    updates: watch::Sender<Pod>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the agent: registers the node, then renews its Lease and runs its pods in the
/// background. Returns once the node is registered.
pub async fn start(client: kube::Client, options: AgentOptions) -> Result<Agent, AgentError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| AgentError::Setup(format!("{what}: {e}"));
    network::check(options.network, options.pod_cidr, options.node_ip)
        .map_err(AgentError::Setup)?;
    if options.network == NetworkMode::Routed {
        network::claim(options.pod_cidr)
            .await
            .map_err(|e| setup("cannot make the pod CIDR local (routed mode)", &e))?;
    }
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| setup("cannot make the data directory", &e))?;
    let runtime =
        Runtime::new(options.runtime.clone()).map_err(|e| setup("cannot start wasmtime", &e))?;
    let images = Images::open(options.data_dir.join("images"))
        .map_err(|e| setup("cannot open the image store", &e))?;
    let listener = tokio::net::TcpListener::bind((options.node_ip, options.port))
        .await
        .map_err(|e| {
            setup(
                &format!("cannot listen on {}:{}", options.node_ip, options.port),
                &e,
            )
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| setup("the agent's endpoint", &e))?
        .port();
    let identity = crate::server::identity(&options.node_name, &options.node_ip.to_string())
        .map_err(|e| setup("cannot make the agent's certificate", &e))?;
    let endpoint = Endpoint {
        port,
        fingerprint: identity.fingerprint.clone(),
    };
    let (cpu_millis, memory) = register(&client, &options, &endpoint)
        .await
        .map_err(|source| AgentError::Register {
            node: options.node_name.clone(),
            source,
        })?;
    let ctx = Arc::new(NodeContext {
        client: client.clone(),
        node: options.node_name.clone(),
        host_ip: options.node_ip.to_string(),
        runtime,
        images: Arc::new(images),
        pods_dir: options.data_dir.join("pods"),
        backoff: options.backoff,
        sync_frequency: options.sync_frequency,
        events: Recorder::start(client.clone(), options.node_name.clone()),
        node_cpu_millis: cpu_millis,
        node_memory: memory,
        logs: Arc::new(crate::server::LogIndex::default()),
        http_stats: Mutex::new(BTreeMap::new()),
        service_names: options.service_names.clone(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(crate::server::serve(
        listener,
        identity,
        options.api_ca_pem.clone(),
        ctx.logs.clone(),
        stop.clone(),
    ));
    tokio::spawn(
        stop.clone()
            .run_until_cancelled_owned(renew_lease(client.clone(), options.clone())),
    );
    let (cpus, machine_memory) = machine();
    let cpu = options.cpu.clone().unwrap_or_else(|| cpus.to_string());
    let memory_text = options
        .memory
        .clone()
        .unwrap_or_else(|| format!("{}Ki", machine_memory / 1024));
    tokio::spawn(stop.clone().run_until_cancelled_owned(report_status(
        client.clone(),
        options.clone(),
        cpu,
        memory_text,
    )));
    if options.network == NetworkMode::Routed {
        tokio::spawn(stop.clone().run_until_cancelled_owned(network::route_peers(
            client.clone(),
            options.node_name.clone(),
        )));
    }
    tokio::spawn(
        stop.clone()
            .run_until_cancelled_owned(run_pods(ctx.clone(), Ipam::new(options.pod_cidr))),
    );
    Ok(Agent { ctx, stop })
}

/// Watches the pods bound to this node and keeps one task per pod.
async fn run_pods(ctx: Arc<NodeContext>, ipam: Ipam) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut events = std::pin::pin!(watcher(pods, config));
    let ipam = Arc::new(Mutex::new(ipam));
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    let mut reap = tokio::time::interval(Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = reap.tick() => {
                // Pods whose task ended (deleted, deletion confirmed) give back their IP.
                running.retain(|uid, pod| {
                    let alive = !pod.task.is_finished();
                    if !alive {
                        ipam.lock().unwrap_or_else(|e| e.into_inner()).release(uid);
                    }
                    alive
                });
                continue;
            }
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(node = ctx.node, "pod watch failed, retrying: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(listed) = &mut listed {
                    listed.insert(uid.clone());
                }
                if let Some(existing) = running.get(&uid)
                    && !existing.task.is_finished()
                {
                    existing.updates.send_replace(pod);
                    continue;
                }
                let had = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse().ok());
                let Some(ip) = ipam
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .allocate(&uid, had)
                else {
                    ctx.events.pod_event(
                        &pod,
                        None,
                        true,
                        "FailedCreatePodSandBox",
                        "no pod IP is free in the node's pod CIDR".into(),
                    );
                    continue;
                };
                let (updates, receiver) = watch::channel(pod);
                let task = tokio::spawn(pod::run(ctx.clone(), receiver, IpAddr::V4(ip)));
                running.insert(uid, Running { updates, task });
            }
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down.
                if let Some(listed) = listed.take() {
                    running.retain(|uid, _| listed.contains(uid));
                }
            }
            watcher::Event::Delete(pod) => {
                // Gone from the API (force-deleted, or our own confirmation): its task ends
                // when the sender goes.
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                running.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_come_from_the_cidr_and_are_kept_across_restarts() {
        let mut ipam = Ipam::new((Ipv4Addr::new(127, 1, 0, 0), 29));
        assert_eq!(ipam.allocate("a", None), Some(Ipv4Addr::new(127, 1, 0, 2)));
        assert_eq!(ipam.allocate("a", None), Some(Ipv4Addr::new(127, 1, 0, 2)));
        // A pod that had an address (before an agent restart) keeps it.
        assert_eq!(
            ipam.allocate("b", Some(Ipv4Addr::new(127, 1, 0, 5))),
            Some(Ipv4Addr::new(127, 1, 0, 5))
        );
        // An address outside the CIDR is not kept.
        assert_eq!(
            ipam.allocate("c", Some(Ipv4Addr::new(10, 0, 0, 5))),
            Some(Ipv4Addr::new(127, 1, 0, 3))
        );
        assert_eq!(ipam.allocate("d", None), Some(Ipv4Addr::new(127, 1, 0, 4)));
        assert_eq!(ipam.allocate("e", None), Some(Ipv4Addr::new(127, 1, 0, 6)));
        assert_eq!(ipam.allocate("f", None), None, "a /29 holds five pods");
        ipam.release("a");
        assert_eq!(ipam.allocate("f", None), Some(Ipv4Addr::new(127, 1, 0, 2)));
    }
}
