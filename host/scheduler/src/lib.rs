//! The scheduler: the loop that places pods on nodes by running WASM policies.
//!
//! It is an API client. Watches keep a snapshot of nodes and of the pods placed on them
//! ([`Nodes`], `placed`), and a queue of unbound pods whose `schedulerName` names a
//! SchedulerProfile ([`queue`]). Each profile is a chain of WasmPlugins of kind
//! `scheduler-policy`; each plugin runs as one warm instance that receives cluster changes
//! incrementally. Per pod the scheduler calls `prepare`, `filter` over batches of nodes (stopping
//! once enough are feasible, as Kubernetes' `percentageOfNodesToScore` does), `score` over the
//! feasible ones, sums the weighted scores and binds the pod to the best node through
//! `pods/binding`, recording `Scheduled` or `FailedScheduling` Events.
//!
//! Plugins are hot-swapped between cycles: a changed WasmPlugin is fetched and compiled in the
//! background, then instantiated, self-checked and given the whole snapshot before it replaces
//! the old instance; a module that fails any step is refused and the old one keeps serving.
//! Only the leader (a Lease) schedules.
//!
//! This crate holds mechanism only: which node fits and which is best is decided by the
//! policies. It must not reach the store.

pub mod convert;
pub mod defaults;
pub mod policy;
pub mod queue;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flotilla_client::plugins::{self, ComponentStatus, WasmPluginSpec};
use flotilla_plugin::bindings::scheduling::{self as wit, Change, Prepared};
use flotilla_plugin::{Health, Limits, Module, PluginHost, SchedulerPolicy, Services};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, DynamicObject, ObjectMeta, PostParams};
use kube::runtime::watcher;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use defaults::DEFAULT_SCHEDULER;
pub use policy::{Policy, PolicySource};
use queue::Queue;
use writer::Writer;

/// Nodes filtered per call: big enough to amortize the boundary, small enough to stop soon
/// after enough nodes are feasible.
const FILTER_BATCH: usize = 512;
/// Kubernetes' floor on nodes to find feasible before scoring.
const MIN_FEASIBLE: usize = 100;
/// Cycle durations kept in [`Stats::cycle_micros`].
const MAX_CYCLES_KEPT: usize = 200_000;

/// How the scheduler runs.
#[derive(Clone)]
pub struct Options {
    /// This scheduler's name in the Lease and in plugin status (`scheduler/<identity>`).
    pub identity: String,
    pub plugin_host: PluginHost,
    /// Limits for plugins that do not set their own.
    pub default_limits: Limits,
    /// Schedule only while holding the `kube-system/flotilla-scheduler` Lease.
    pub leader_election: bool,
    /// Create the built-in plugins and the default profile when missing.
    pub install_defaults: bool,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// Policies from elsewhere than WasmPlugins (the benchmark's native peer).
    pub policy_source: Option<Arc<dyn PolicySource>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("identity", &self.identity)
            .field("leader_election", &self.leader_election)
            .finish_non_exhaustive()
    }
}

impl Options {
    pub fn new(identity: &str, plugin_host: PluginHost) -> Self {
        Self {
            identity: identity.to_owned(),
            plugin_host,
            default_limits: Limits::default(),
            leader_election: true,
            install_defaults: true,
            bind_concurrency: 64,
            policy_source: None,
        }
    }
}

/// Counters a running scheduler keeps, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Pods bound.
    pub scheduled: AtomicU64,
    /// Scheduling attempts that failed (unschedulable, plugin errors, failed bindings).
    pub failed: AtomicU64,
    /// Hot swaps completed.
    pub swaps: AtomicU64,
    /// Microseconds from the last swap's WasmPlugin event to the first decision that used it.
    pub last_swap_to_decision_micros: AtomicU64,
    /// When the last swapped-in policy first took part in a decision.
    pub last_swap_first_decision: std::sync::Mutex<Option<Instant>>,
    /// Bindings the API server refused (a pod bound twice would be one).
    pub bind_conflicts: AtomicU64,
    /// How long recent successful scheduling cycles took, in microseconds.
    pub cycle_micros: std::sync::Mutex<Vec<u32>>,
}

/// A running scheduler.
#[derive(Clone, Debug)]
pub struct Handle {
    pub stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Handle {
    /// Stops the scheduler's loop and watches; bindings in flight finish.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

enum Input {
    Node(Box<watcher::Event<Node>>),
    Pod(Box<watcher::Event<Pod>>),
    Profile(Box<watcher::Event<DynamicObject>>),
    Plugin(Box<watcher::Event<DynamicObject>>),
    Loaded {
        name: String,
        spec: WasmPluginSpec,
        seen: Instant,
        result: Result<Module, String>,
    },
    /// Time to try a refused spec again.
    Retry {
        name: String,
        spec: WasmPluginSpec,
    },
    Bound {
        uid: String,
        pod: Arc<Pod>,
        node: String,
        result: Result<(), kube::Error>,
    },
}

/// Starts the scheduler's loop in the background.
pub async fn start(client: kube::Client, options: Options) -> Result<Handle, kube::Error> {
    if options.install_defaults {
        defaults::install(&client).await?;
    }
    let (tx, rx) = mpsc::channel(4096);
    let stop = CancellationToken::new();
    flotilla_client::forward_watch(
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
        tx.clone(),
        |e| Input::Node(Box::new(e)),
        stop.clone(),
        "scheduler",
    );
    flotilla_client::forward_watch(
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        ),
        tx.clone(),
        |e| Input::Pod(Box::new(e)),
        stop.clone(),
        "scheduler",
    );
    flotilla_client::forward_watch(
        watcher(
            plugins::api(&client, "SchedulerProfile"),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Profile(Box::new(e)),
        stop.clone(),
        "scheduler",
    );
    flotilla_client::forward_watch(
        watcher(
            plugins::api(&client, "WasmPlugin"),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Plugin(Box::new(e)),
        stop.clone(),
        "scheduler",
    );
    let leading = if options.leader_election {
        flotilla_client::leader::elect(
            client.clone(),
            "kube-system",
            "flotilla-scheduler",
            &options.identity,
            Default::default(),
        )
    } else {
        watch::channel(true).1
    };
    let stats = Arc::new(Stats::default());
    let scheduler = Scheduler {
        reports: plugins::Reporter::start(client.clone(), stop.clone()),
        writer: Writer::start(client.clone(), DEFAULT_SCHEDULER),
        binds: Arc::new(Semaphore::new(options.bind_concurrency.max(1))),
        client,
        options,
        nodes: Nodes::default(),
        placed: HashMap::new(),
        pending: Vec::new(),
        pending_pods: Vec::new(),
        profiles: HashMap::new(),
        slots: HashMap::new(),
        queue: Queue::default(),
        inputs: tx,
        leading,
        next_start: 0,
        stats: stats.clone(),
        pods_seen: HashSet::new(),
        nodes_seen: HashSet::new(),
        awaiting_node: HashMap::new(),
        nodes_synced: false,
        pods_synced: false,
        profiles_synced: false,
        plugins_synced: false,
    };
    tokio::spawn(scheduler.run(rx, stop.clone()));
    Ok(Handle { stats, stop })
}

/// Nodes by the index the policies know them by.
#[derive(Default)]
struct Nodes {
    index: HashMap<String, u32>,
    records: Vec<Option<wit::Node>>,
    free: Vec<u32>,
    /// Live indexes in ascending order; rebuilt when nodes come or go.
    live: Vec<u32>,
}

impl Nodes {
    /// Sets a node; the change for the policies, if anything changed.
    fn set(&mut self, node: wit::Node) -> Option<Change> {
        let index = match self.index.get(&node.name) {
            Some(&index) => {
                if self.records[index as usize].as_ref() == Some(&node) {
                    return None;
                }
                index
            }
            None => {
                let index = self.free.pop().unwrap_or(self.records.len() as u32);
                if index as usize == self.records.len() {
                    self.records.push(None);
                }
                self.index.insert(node.name.clone(), index);
                self.live.push(index);
                self.live.sort_unstable();
                index
            }
        };
        self.records[index as usize] = Some(node.clone());
        Some(Change::NodeSet((index, node)))
    }

    fn remove(&mut self, name: &str) -> Option<u32> {
        let index = self.index.remove(name)?;
        self.records[index as usize] = None;
        self.free.push(index);
        self.live.retain(|i| *i != index);
        Some(index)
    }

    fn name(&self, index: u32) -> Option<&str> {
        self.records
            .get(index as usize)?
            .as_ref()
            .map(|n| n.name.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
struct ProfileEntry {
    plugin: String,
    filter: bool,
    score: bool,
    weight: i64,
}

#[derive(Clone, Debug, PartialEq)]
struct Profile {
    percentage: u32,
    entries: Vec<ProfileEntry>,
}

fn profile_of(object: &DynamicObject) -> Profile {
    let spec = &object.data["spec"];
    Profile {
        percentage: spec["percentageOfNodesToScore"].as_u64().unwrap_or(0) as u32,
        entries: spec["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(ProfileEntry {
                    plugin: p["name"].as_str()?.to_owned(),
                    filter: p["filter"].as_bool().unwrap_or(true),
                    score: p["score"].as_bool().unwrap_or(true),
                    weight: p["weight"].as_i64().unwrap_or(1),
                })
            })
            .collect(),
    }
}

/// One WasmPlugin as the scheduler runs it.
#[derive(Default)]
struct Slot {
    /// The latest spec seen.
    spec: Option<WasmPluginSpec>,
    /// The module serving, with the spec it was loaded for.
    serving: Option<(Module, WasmPluginSpec)>,
    /// The live instance; none until made, or after it failed.
    policy: Option<Box<dyn Policy>>,
    /// A load in progress, for this spec.
    loading: Option<WasmPluginSpec>,
    /// Why the latest spec is not serving.
    refused: Option<String>,
    /// Loads of the latest spec that failed in a row: the next try waits longer.
    failed_loads: u32,
    health: Health,
    /// When the serving module's swap was requested, until its first decision.
    swapped: Option<Instant>,
    reported: Option<ComponentStatus>,
    version: String,
}

struct Scheduler {
    client: kube::Client,
    /// Plugin status, written in order.
    reports: plugins::Reporter,
    options: Options,
    nodes: Nodes,
    /// Pods bound or assumed bound, by uid.
    placed: HashMap<String, wit::PlacedPod>,
    /// Node changes not yet sent to the policies.
    pending: Vec<Change>,
    /// Pod changes not yet sent to the policies that want them.
    pending_pods: Vec<Change>,
    profiles: HashMap<String, Profile>,
    slots: HashMap<String, Slot>,
    queue: Queue,
    inputs: mpsc::Sender<Input>,
    leading: watch::Receiver<bool>,
    next_start: usize,
    stats: Arc<Stats>,
    writer: Writer,
    binds: Arc<Semaphore>,
    /// Objects listed since the last watch restart (to drop those that vanished meanwhile).
    pods_seen: HashSet<String>,
    nodes_seen: HashSet<String>,
    /// Bound pods whose node the scheduler has not seen yet, by uid: placed when it appears.
    awaiting_node: HashMap<String, (String, Arc<Pod>)>,
    /// The initial lists are complete: no decision is taken on a partial snapshot (a pod
    /// whose profile or plugins are not listed yet would fail for nothing).
    nodes_synced: bool,
    pods_synced: bool,
    profiles_synced: bool,
    plugins_synced: bool,
}

/// Kubernetes' `numFeasibleNodesToFind`.
fn feasible_to_find(total: usize, percentage: u32) -> usize {
    if total < MIN_FEASIBLE {
        return total;
    }
    let percentage = if percentage == 0 {
        (50 - (total / 125) as i64).max(5) as usize
    } else {
        percentage as usize
    };
    (total * percentage / 100).max(MIN_FEASIBLE).min(total)
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn placed_pod(pod: &Pod, node: u32) -> wit::PlacedPod {
    wit::PlacedPod {
        uid: uid_of(pod),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        labels: pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        node,
        requests: convert::pod_requests(pod),
    }
}

/// Why a scheduling attempt failed.
enum Failed {
    /// No node fits: wait for the cluster to change.
    Unschedulable(String),
    /// A plugin or the scheduler itself failed: retry after the backoff.
    Error(String),
    /// A plugin of the profile is still loading for the first time: wait for it quietly.
    NotReady,
}

impl Scheduler {
    fn component(&self) -> String {
        format!("scheduler/{}", self.options.identity)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Input>, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            // Take every input that is waiting before the next cycle.
            loop {
                match rx.try_recv() {
                    Ok(input) => self.handle(input).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            self.queue.flush(now);
            let ready = *self.leading.borrow()
                && self.nodes_synced
                && self.pods_synced
                && self.profiles_synced
                && self.plugins_synced;
            if ready && let Some((uid, pod)) = self.queue.pop() {
                self.schedule(uid, pod).await;
                continue;
            }
            let wake = self
                .queue
                .next_backoff()
                .map(|at| at.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.handle(input).await,
                    None => return,
                },
                _ = tokio::time::sleep(wake) => {}
                _ = self.leading.changed() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn handle(&mut self, input: Input) {
        match input {
            Input::Node(event) => self.node_event(*event),
            Input::Pod(event) => self.pod_event(*event),
            Input::Profile(event) => match *event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    if let Some(name) = o.metadata.name.clone() {
                        self.profiles.insert(name, profile_of(&o));
                        self.queue.cluster_changed(Instant::now());
                    }
                }
                watcher::Event::Delete(o) => {
                    if let Some(name) = &o.metadata.name {
                        self.profiles.remove(name);
                    }
                }
                watcher::Event::InitDone => self.profiles_synced = true,
                watcher::Event::Init => {}
            },
            Input::Plugin(event) => match *event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => self.plugin_changed(&o),
                watcher::Event::Delete(o) => {
                    if let Some(name) = &o.metadata.name {
                        self.slots.remove(name);
                    }
                }
                watcher::Event::InitDone => self.plugins_synced = true,
                watcher::Event::Init => {}
            },
            Input::Loaded {
                name,
                spec,
                seen,
                result,
            } => self.loaded(name, spec, seen, result).await,
            Input::Retry { name, spec } => {
                let current = self.slots.get(&name).and_then(|s| s.spec.clone());
                if current.as_ref() == Some(&spec) {
                    self.start_load(name, spec);
                }
            }
            Input::Bound {
                uid,
                pod,
                node,
                result,
            } => self.bound(uid, pod, node, result),
        }
    }

    fn node_event(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.nodes_seen.clear(),
            watcher::Event::InitApply(node) => {
                if let Some(name) = &node.metadata.name {
                    self.nodes_seen.insert(name.clone());
                }
                self.set_node(&node);
            }
            watcher::Event::Apply(node) => self.set_node(&node),
            watcher::Event::Delete(node) => {
                if let Some(name) = &node.metadata.name {
                    self.remove_node(&name.clone());
                }
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = self
                    .nodes
                    .index
                    .keys()
                    .filter(|n| !self.nodes_seen.contains(*n))
                    .cloned()
                    .collect();
                for name in gone {
                    self.remove_node(&name);
                }
                self.nodes_synced = true;
            }
        }
    }

    fn set_node(&mut self, node: &Node) {
        let Some(change) = self.nodes.set(convert::node(node)) else {
            return;
        };
        self.pending.push(change);
        // Pods bound to this node before it was seen are placed now.
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let waiting: Vec<String> = self
            .awaiting_node
            .iter()
            .filter(|(_, (node, _))| node == name)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in waiting {
            if let Some((_, pod)) = self.awaiting_node.remove(&uid) {
                self.pod_applied(Pod::clone(&pod));
            }
        }
        self.queue.cluster_changed(Instant::now());
    }

    fn remove_node(&mut self, name: &str) {
        if let Some(index) = self.nodes.remove(name) {
            self.placed.retain(|_, p| p.node != index);
            self.pending.push(Change::NodeRemoved(index));
        }
    }

    fn pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.pods_seen.clear(),
            watcher::Event::InitApply(pod) => {
                self.pods_seen.insert(uid_of(&pod));
                self.pod_applied(pod);
            }
            watcher::Event::Apply(pod) => self.pod_applied(pod),
            watcher::Event::Delete(pod) => self.pod_gone(&uid_of(&pod)),
            watcher::Event::InitDone => {
                let gone: Vec<String> = self
                    .placed
                    .keys()
                    .chain(self.awaiting_node.keys())
                    .filter(|uid| !self.pods_seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.pod_gone(&uid);
                }
                self.pods_synced = true;
            }
        }
    }

    fn pod_applied(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match node_name {
            Some(node_name) => {
                self.queue.remove(&uid);
                let Some(&index) = self.nodes.index.get(&node_name) else {
                    self.awaiting_node.insert(uid, (node_name, Arc::new(pod)));
                    return;
                };
                let placed = placed_pod(&pod, index);
                if self.placed.get(&uid) != Some(&placed) {
                    self.placed.insert(uid, placed.clone());
                    self.pending_pods.push(Change::PodPlaced(placed));
                }
            }
            None => {
                // Pods of schedulers without a profile (yet) wait in the queue too: a profile
                // created later schedules them.
                if pod.metadata.deletion_timestamp.is_some() {
                    self.queue.remove(&uid);
                } else if !self.placed.contains_key(&uid) {
                    self.queue.add_or_update(&uid, Arc::new(pod));
                }
            }
        }
    }

    fn pod_gone(&mut self, uid: &str) {
        self.queue.remove(uid);
        self.awaiting_node.remove(uid);
        if self.placed.remove(uid).is_some() {
            self.pending_pods.push(Change::PodRemoved(uid.to_owned()));
            self.queue.cluster_changed(Instant::now());
        }
    }

    /// A WasmPlugin was created or changed: load its module in the background when what
    /// serves differs from the spec.
    fn plugin_changed(&mut self, object: &DynamicObject) {
        let Some(name) = object.metadata.name.clone() else {
            return;
        };
        let spec = match WasmPluginSpec::of(object) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(plugin = name, "{error}");
                return;
            }
        };
        if spec.kind != "scheduler-policy" {
            return;
        }
        let slot = self.slots.entry(name.clone()).or_default();
        if slot.spec.as_ref() != Some(&spec) {
            slot.failed_loads = 0;
        }
        slot.spec = Some(spec.clone());
        self.start_load(name, spec);
    }

    /// Fetches, compiles and checks a spec's module in the background, unless it is serving
    /// or being loaded already.
    fn start_load(&mut self, name: String, spec: WasmPluginSpec) {
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        let serving = slot.serving.as_ref().map(|(_, s)| s);
        if serving == Some(&spec) || slot.loading.as_ref() == Some(&spec) {
            return;
        }
        slot.loading = Some(spec.clone());
        let seen = Instant::now();
        let client = self.client.clone();
        let host = self.options.plugin_host.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let result = plugins::load(&host, &client, &name, &spec).await;
            let _ = inputs
                .send(Input::Loaded {
                    name,
                    spec,
                    seen,
                    result,
                })
                .await;
        });
    }

    /// Makes a policy for a slot from its serving module, with the whole snapshot replayed.
    async fn instantiate(
        &mut self,
        name: &str,
        module: &Module,
        spec: &WasmPluginSpec,
    ) -> Result<(Box<dyn Policy>, String), String> {
        let config = spec.config_json();
        let (mut policy, version): (Box<dyn Policy>, String) = match self
            .options
            .policy_source
            .as_ref()
            .and_then(|s| s.make(name, &config))
        {
            Some(native) => (native, "native".to_owned()),
            None => {
                let services = Services {
                    config,
                    ..Services::default()
                };
                let limits = spec.limits(&self.options.default_limits);
                let mut instance = module
                    .instantiate(limits, services)
                    .await
                    .map_err(|e| e.to_string())?;
                let info = instance.info().await.map_err(|e| e.to_string())?;
                instance.self_check().await.map_err(|e| e.to_string())?;
                let policy = SchedulerPolicy::new(instance)
                    .await
                    .map_err(|e| e.to_string())?;
                (Box::new(policy), info.version)
            }
        };
        // Everything already sent to the other policies, then the whole state to this one.
        self.flush().await;
        let mut replay: Vec<Change> = self
            .nodes
            .records
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.clone().map(|n| Change::NodeSet((i as u32, n))))
            .collect();
        if policy.capabilities().wants_pods {
            replay.extend(self.placed.values().cloned().map(Change::PodPlaced));
        }
        policy.update(&replay).await.map_err(|e| e.to_string())?;
        Ok((policy, version))
    }

    async fn loaded(
        &mut self,
        name: String,
        spec: WasmPluginSpec,
        seen: Instant,
        result: Result<Module, String>,
    ) {
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        if slot.loading.as_ref() == Some(&spec) {
            slot.loading = None;
        }
        let outcome = match result {
            Ok(module) => match self.instantiate(&name, &module, &spec).await {
                Ok((policy, version)) => Ok((module, policy, version)),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        match outcome {
            Ok((module, policy, version)) => {
                tracing::info!(
                    plugin = name,
                    digest = module.digest(),
                    "scheduling policy loaded"
                );
                slot.serving = Some((module, spec));
                slot.policy = Some(policy);
                slot.refused = None;
                slot.failed_loads = 0;
                slot.health = Health::default();
                slot.swapped = Some(seen);
                slot.version = version;
                self.stats.swaps.fetch_add(1, Ordering::Relaxed);
                self.queue.cluster_changed(Instant::now());
            }
            Err(error) => {
                tracing::warn!(plugin = name, "refused {}: {error}", spec.module.digest);
                slot.refused = Some(format!("refused {}: {error}", spec.module.digest));
                // A registry or a pull secret may come back: try again, as image pulls do.
                if slot.spec.as_ref() == Some(&spec) {
                    let delay = plugins::load_backoff(slot.failed_loads);
                    slot.failed_loads = slot.failed_loads.saturating_add(1);
                    let inputs = self.inputs.clone();
                    let retry = Input::Retry {
                        name: name.clone(),
                        spec,
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = inputs.send(retry).await;
                    });
                }
            }
        }
        self.report(&name);
    }

    /// Reports a slot's state on its WasmPlugin when it changed.
    fn report(&mut self, name: &str) {
        let component = self.component();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let status = ComponentStatus::of(
            slot.spec.as_ref().map(|s| s.module.digest.as_str()),
            slot.serving.as_ref().map(|(m, _)| m.digest()),
            slot.refused.as_deref(),
            &slot.health,
            &slot.version,
        );
        if slot.reported.as_ref() == Some(&status) {
            return;
        }
        slot.reported = Some(status.clone());
        self.reports.send(name, &component, status);
    }

    /// Sends pending changes to every live policy.
    async fn flush(&mut self) {
        if self.pending.is_empty() && self.pending_pods.is_empty() {
            return;
        }
        let nodes = std::mem::take(&mut self.pending);
        let pods = std::mem::take(&mut self.pending_pods);
        let mut failed = Vec::new();
        for (name, slot) in &mut self.slots {
            let Some(policy) = slot.policy.as_mut() else {
                continue;
            };
            let mut result = Ok(());
            if !nodes.is_empty() {
                result = policy.update(&nodes).await;
            }
            if result.is_ok() && !pods.is_empty() && policy.capabilities().wants_pods {
                result = policy.update(&pods).await;
            }
            if let Err(error) = result {
                tracing::warn!(plugin = name, "{error}");
                slot.health.failed(&error);
                slot.policy = None;
                failed.push(name.clone());
            }
        }
        for name in failed {
            self.report(&name);
        }
    }

    /// Makes sure every plugin of a profile has a live policy.
    async fn ready(&mut self, profile: &Profile) -> Result<(), Failed> {
        for entry in &profile.entries {
            let Some(slot) = self.slots.get(&entry.plugin) else {
                return Err(Failed::Error(format!(
                    "plugin {} does not exist",
                    entry.plugin
                )));
            };
            if slot.policy.as_ref().is_some_and(|p| !p.is_poisoned()) {
                continue;
            }
            let Some((module, spec)) = slot.serving.clone() else {
                return Err(match &slot.refused {
                    Some(refused) => Failed::Error(format!("plugin {}: {refused}", entry.plugin)),
                    None => Failed::NotReady,
                });
            };
            let made = self.instantiate(&entry.plugin, &module, &spec).await;
            let slot = self.slots.get_mut(&entry.plugin).expect("checked above");
            match made {
                Ok((policy, _)) => slot.policy = Some(policy),
                Err(error) => {
                    slot.health.failed(&error);
                    let error = format!("plugin {}: {error}", entry.plugin);
                    self.report(&entry.plugin.clone());
                    return Err(Failed::Error(error));
                }
            }
        }
        Ok(())
    }

    /// Runs a call on a plugin's policy, recording its health.
    fn record<T>(
        &mut self,
        plugin: &str,
        result: Result<T, flotilla_plugin::PluginError>,
    ) -> Result<T, String> {
        let Some(slot) = self.slots.get_mut(plugin) else {
            return Err(format!("plugin {plugin} went away"));
        };
        match result {
            Ok(value) => {
                let reported = slot.reported.as_ref().is_some_and(|r| r.degraded);
                if reported && !slot.health.degraded() {
                    self.report(plugin);
                }
                Ok(value)
            }
            Err(error) => {
                slot.health.failed(&error);
                if slot.policy.as_ref().is_some_and(|p| p.is_poisoned()) {
                    slot.policy = None;
                }
                let message = error.to_string();
                self.report(plugin);
                Err(message)
            }
        }
    }

    fn policy(&mut self, plugin: &str) -> Result<&mut Box<dyn Policy>, String> {
        self.slots
            .get_mut(plugin)
            .and_then(|s| s.policy.as_mut())
            .ok_or_else(|| format!("plugin {plugin} is not loaded"))
    }

    async fn schedule(&mut self, uid: String, pod: Arc<Pod>) {
        let scheduler_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_else(|| DEFAULT_SCHEDULER.to_owned());
        let Some(profile) = self.profiles.get(&scheduler_name).cloned() else {
            // Another scheduler's pod, or a profile not created yet: wait for a change.
            self.queue.failed(&uid, true, Instant::now());
            return;
        };
        let started = Instant::now();
        match self.decide(&pod, &profile).await {
            Ok(index) => {
                let mut cycles = self
                    .stats
                    .cycle_micros
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                // The most recent cycles only, so a long-running scheduler stays bounded.
                if cycles.len() >= MAX_CYCLES_KEPT {
                    cycles.drain(..MAX_CYCLES_KEPT / 2);
                }
                cycles.push(started.elapsed().as_micros() as u32);
                drop(cycles);
                let node = self.nodes.name(index).unwrap_or_default().to_owned();
                self.assume(&uid, &pod, index);
                self.bind(uid, pod, node);
            }
            Err(failed) => {
                let (unschedulable, message) = match failed {
                    Failed::NotReady => {
                        // Waits for the load, which counts as a cluster change.
                        self.queue.failed(&uid, true, Instant::now());
                        return;
                    }
                    Failed::Unschedulable(m) => (true, m),
                    Failed::Error(m) => (false, m),
                };
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.writer
                    .event(&pod, "Warning", "FailedScheduling", &message);
                let reason = if unschedulable {
                    "Unschedulable"
                } else {
                    "SchedulerError"
                };
                self.writer.unschedulable(&pod, reason, &message);
                self.queue.failed(&uid, unschedulable, Instant::now());
            }
        }
    }

    /// One scheduling cycle: the index of the node for `pod`.
    async fn decide(&mut self, pod: &Pod, profile: &Profile) -> Result<u32, Failed> {
        self.ready(profile).await?;
        self.flush().await;
        let total = self.nodes.live.len();
        if total == 0 {
            return Err(Failed::Unschedulable(
                "0/0 nodes are available: no nodes available to schedule pods.".into(),
            ));
        }
        let record = convert::pod(pod);
        let mut active = Vec::new();
        for entry in &profile.entries {
            let prepared = match self.policy(&entry.plugin) {
                Ok(policy) => policy.prepare(&record).await,
                Err(error) => return Err(Failed::Error(error)),
            };
            match self
                .record(&entry.plugin, prepared)
                .map_err(Failed::Error)?
            {
                Prepared::Proceed => active.push(entry.clone()),
                Prepared::Skip => {}
                Prepared::Unschedulable(reason) => {
                    let mut reasons = BTreeMap::new();
                    reasons.insert(reason, total);
                    return Err(Failed::Unschedulable(convert::unavailable(total, &reasons)));
                }
            }
        }
        for entry in &active {
            self.mark_decision(&entry.plugin);
        }

        // Filter batches of nodes, from a rotating start, until enough are feasible.
        let to_find = feasible_to_find(total, profile.percentage);
        let start = self.next_start % total;
        let order: Vec<u32> = self.nodes.live[start..]
            .iter()
            .chain(&self.nodes.live[..start])
            .copied()
            .collect();
        let mut feasible = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut evaluated = 0;
        for batch in order.chunks(FILTER_BATCH) {
            evaluated += batch.len();
            let mut candidates = batch.to_vec();
            for entry in active.iter().filter(|e| e.filter) {
                if candidates.is_empty() {
                    break;
                }
                let policy = self.policy(&entry.plugin).map_err(Failed::Error)?;
                if !policy.capabilities().filter {
                    continue;
                }
                let result = policy.filter(&candidates).await;
                let result = self.record(&entry.plugin, result).map_err(Failed::Error)?;
                if result.rejected.is_empty() {
                    continue;
                }
                let mut rejected = HashSet::new();
                for r in &result.rejected {
                    rejected.insert(r.node);
                    *reasons
                        .entry(result.reasons[r.reason as usize].clone())
                        .or_default() += 1;
                }
                candidates.retain(|n| !rejected.contains(n));
            }
            feasible.extend(candidates);
            if feasible.len() >= to_find {
                break;
            }
        }
        self.next_start = (start + evaluated) % total;
        if feasible.is_empty() {
            return Err(Failed::Unschedulable(convert::unavailable(total, &reasons)));
        }
        if feasible.len() == 1 {
            return Ok(feasible[0]);
        }

        let mut totals = vec![0i64; feasible.len()];
        for entry in active.iter().filter(|e| e.score && e.weight > 0) {
            let policy = self.policy(&entry.plugin).map_err(Failed::Error)?;
            if !policy.capabilities().score {
                continue;
            }
            let scores = policy.score(&feasible).await;
            let scores = self.record(&entry.plugin, scores).map_err(Failed::Error)?;
            for (total, score) in totals.iter_mut().zip(scores) {
                *total += score * entry.weight;
            }
        }
        // The best score wins; ties are broken uniformly at random.
        let mut best = 0;
        let mut ties = 0;
        let mut rng = rand::rng();
        for (i, score) in totals.iter().enumerate() {
            if *score > totals[best] {
                best = i;
                ties = 1;
            } else if *score == totals[best] {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        Ok(feasible[best])
    }

    /// Notes the first decision a newly swapped-in policy takes part in.
    fn mark_decision(&mut self, plugin: &str) {
        if let Some(slot) = self.slots.get_mut(plugin)
            && let Some(seen) = slot.swapped.take()
        {
            let micros = seen.elapsed().as_micros() as u64;
            self.stats
                .last_swap_to_decision_micros
                .store(micros, Ordering::Relaxed);
            *self
                .stats
                .last_swap_first_decision
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            tracing::info!(
                plugin,
                "first decision {micros} µs after the WasmPlugin changed"
            );
        }
    }

    /// Counts the pod as placed before its binding is confirmed, so the next cycles see it.
    fn assume(&mut self, uid: &str, pod: &Pod, index: u32) {
        let placed = placed_pod(pod, index);
        self.placed.insert(uid.to_owned(), placed.clone());
        self.pending_pods.push(Change::PodPlaced(placed));
    }

    fn bind(&mut self, uid: String, pod: Arc<Pod>, node: String) {
        let client = self.client.clone();
        let inputs = self.inputs.clone();
        let binds = self.binds.clone();
        tokio::spawn(async move {
            let _permit = binds.acquire_owned().await;
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectMeta::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    ..ObjectReference::default()
                },
            };
            let result = api
                .create_subresource::<serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    serde_json::to_vec(&binding).unwrap_or_default(),
                )
                .await
                .map(|_| ());
            let _ = inputs
                .send(Input::Bound {
                    uid,
                    pod,
                    node,
                    result,
                })
                .await;
        });
    }

    fn bound(&mut self, uid: String, pod: Arc<Pod>, node: String, result: Result<(), kube::Error>) {
        match result {
            Ok(()) => {
                self.stats.scheduled.fetch_add(1, Ordering::Relaxed);
                self.queue.done(&uid);
                let meta = &pod.metadata;
                let message = format!(
                    "Successfully assigned {}/{} to {node}",
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default()
                );
                self.writer.event(&pod, "Normal", "Scheduled", &message);
            }
            Err(error) => {
                // Forget the assumption; a pod bound elsewhere or deleted leaves the queue
                // through its watch event, anything else is retried.
                if self.placed.remove(&uid).is_some() {
                    self.pending_pods.push(Change::PodRemoved(uid.clone()));
                }
                let gone = matches!(&error, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                if matches!(&error, kube::Error::Api(s) if s.code == 409) {
                    self.stats.bind_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                if gone {
                    self.queue.done(&uid);
                    return;
                }
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let message = format!("Binding rejected: {error}");
                self.writer
                    .event(&pod, "Warning", "FailedScheduling", &message);
                self.queue.failed(&uid, false, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_to_find_follow_kubernetes() {
        assert_eq!(feasible_to_find(50, 0), 50);
        assert_eq!(feasible_to_find(1000, 0), 420);
        assert_eq!(feasible_to_find(5000, 0), 500);
        assert_eq!(feasible_to_find(10000, 0), 500);
        assert_eq!(feasible_to_find(5000, 100), 5000);
        assert_eq!(feasible_to_find(200, 10), 100);
    }
}
