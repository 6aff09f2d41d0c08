//! `flotilla bench schedule`: W3, Kubernetes' SchedulingBasic at 5,000 simulated nodes and
//! 10,000 pods, with the built-in policies as WASM components and, in the same run, the same
//! policies compiled natively (the peer), plus a hot swap of the scoring policy in the middle of
//! a WASM run.
//!
//! Each run has its own `flotilla server` child (embedded store, HTTPS, its scheduler off). The
//! bench registers simulated nodes, creates the pods (unbound), then starts a scheduler in this
//! process and measures until every pod is bound: pods per second from the first decision to
//! the last binding, and each scheduling cycle's latency. Bindings and Events go through the API
//! as they do in a cluster.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_plugin::bindings::scheduling as wit;
use flotilla_plugin::{EngineConfig, Failure, PluginError, PluginHost};
use flotilla_scheduler::{Policy, PolicySource};
use flotilla_sdk::scheduling as sdk;
use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::bench;
use crate::bench_api::ServerProcess;

#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods to schedule.
    #[arg(long, default_value_t = 10000)]
    pods: usize,
    /// Concurrent clients creating the pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Directory for the servers' data (a temporary directory inside it is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug)]
struct RunFigures {
    label: &'static str,
    pods_per_second: f64,
    /// Wall time from the scheduler's start to the last binding.
    total: Duration,
    cycle_p50_us: u64,
    cycle_p99_us: u64,
    bound: usize,
    failed: u64,
    conflicts: u64,
    swap_to_decision: Option<Duration>,
    server_cpu: Duration,
}

pub async fn schedule(args: ScheduleBenchArgs) -> anyhow::Result<()> {
    let scratch = bench::scratch_dir(args.dir.as_deref())?;
    let fsync = bench::measure_fsync(scratch.path())?;
    let mut runs = Vec::new();
    for (i, (label, native, swap)) in [
        ("WASM", false, false),
        ("native (peer)", true, false),
        ("WASM, scoring hot-swapped at 50%", false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = scratch.path().join(format!("run{i}"));
        let figures = run(&args, &dir, label, native, swap).await?;
        eprintln!(
            "{label}: {:.0} pods/s, cycle p50 {} µs p99 {} µs, {} bound, {} failed",
            figures.pods_per_second,
            figures.cycle_p50_us,
            figures.cycle_p99_us,
            figures.bound,
            figures.failed
        );
        runs.push(figures);
    }
    println!("{}", report(&args, &fsync, &runs));
    Ok(())
}

async fn run(
    args: &ScheduleBenchArgs,
    dir: &std::path::Path,
    label: &'static str,
    native: bool,
    swap: bool,
) -> anyhow::Result<RunFigures> {
    std::fs::create_dir_all(dir)?;
    let server = ServerProcess::start(dir, "embedded")?;
    let client = flotilla_client::connect(&server.kubeconfig).await?;

    let simulation = flotilla_node::simulate::start(client.clone(), bench::perf_nodes(args.nodes))
        .await
        .context("cannot register the simulated nodes")?;

    // scheduler_perf's default pod: 100m cpu, 500Mi memory.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut creates = futures::stream::iter(0..args.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench"}},
                    "spec": {"containers": [{"name": "c", "image": "bench.wasm",
                        "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.clients.max(1));
    while let Some(created) = creates.next().await {
        created?;
    }
    drop(creates);

    let host = PluginHost::new(EngineConfig {
        cache_dir: Some(dir.join("plugin-cache")),
        ..EngineConfig::default()
    })?;
    let mut options = flotilla_scheduler::Options::new("bench", host);
    options.leader_election = false;
    if native {
        options.policy_source = Some(Arc::new(NativePolicies));
    }
    let cpu_before = server.cpu();
    let started = Instant::now();
    let handle = flotilla_scheduler::start(client.clone(), options).await?;
    let stats = handle.stats.clone();

    let mut swap_applied = None;
    let mut first_decision = None;
    let deadline = started + Duration::from_secs(600);
    loop {
        let scheduled = stats.scheduled.load(Ordering::Relaxed) as usize;
        if first_decision.is_none() && scheduled > 0 {
            first_decision = Some(Instant::now());
        }
        if swap && swap_applied.is_none() && scheduled >= args.pods / 2 {
            swap_applied = Some(swap_scoring(&client).await?);
        }
        if scheduled >= args.pods {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{label}: only {scheduled} of {} pods bound after 10 minutes",
            args.pods
        );
        // Polling the in-process counters is the bench's clock, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished = Instant::now();
    let server_cpu = server.cpu().saturating_sub(cpu_before);
    handle.stop();
    simulation.stop();

    let list = pods.list(&ListParams::default()).await?;
    let bound = list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count();
    let mut cycles = Histogram::<u64>::new(3)?;
    for micros in stats
        .cycle_micros
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        cycles.record(u64::from(*micros).max(1))?;
    }
    let first = first_decision.unwrap_or(started);
    let swap_to_decision = match (
        swap_applied,
        *stats
            .last_swap_first_decision
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    ) {
        (Some(applied), Some(decided)) if decided > applied => Some(decided - applied),
        _ => None,
    };
    Ok(RunFigures {
        label,
        pods_per_second: args.pods as f64 / finished.duration_since(first).as_secs_f64(),
        total: finished - started,
        cycle_p50_us: cycles.value_at_quantile(0.5),
        cycle_p99_us: cycles.value_at_quantile(0.99),
        bound,
        failed: stats.failed.load(Ordering::Relaxed),
        conflicts: stats.bind_conflicts.load(Ordering::Relaxed),
        swap_to_decision,
        server_cpu,
    })
}

/// Points the `least-allocated` WasmPlugin at the MostAllocated module: the scoring policy
/// changes under load. Returns when the change was applied.
async fn swap_scoring(client: &kube::Client) -> anyhow::Result<Instant> {
    let module = flotilla_builtins::find("most-allocated").context("built in")?;
    let patch = json!({"spec": {"module": {
        "digest": flotilla_plugin::digest(module.wasm), "builtin": "most-allocated"}}});
    flotilla_client::plugins::api(client, "WasmPlugin")
        .patch(
            "least-allocated",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(Instant::now())
}

fn report(args: &ScheduleBenchArgs, fsync: &Histogram<u64>, runs: &[RunFigures]) -> String {
    let mut out = bench::report_header(fsync);
    let _ = writeln!(
        out,
        "SchedulingBasic: {} simulated nodes (4 cpu, 32Gi, 110 pods, 10 zones), {} pods (100m, 500Mi) created unbound, then scheduled by the default profile (9 policies) in the bench process; bindings and events through the API of a `flotilla server` child.\n",
        args.nodes, args.pods
    );
    let _ = writeln!(
        out,
        "| run | pods/s | vs native | cycle p50 / p99 (µs) | all bound in | bound | failed | bind conflicts | server CPU |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let native = runs
        .iter()
        .find(|r| r.label.starts_with("native"))
        .map_or(1.0, |r| r.pods_per_second);
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {} / {} | {:.1} s | {} | {} | {} | {:.1} s |",
            r.label,
            r.pods_per_second,
            r.pods_per_second / native,
            r.cycle_p50_us,
            r.cycle_p99_us,
            r.total.as_secs_f64(),
            r.bound,
            r.failed,
            r.conflicts,
            r.server_cpu.as_secs_f64()
        );
    }
    match runs.iter().find_map(|r| r.swap_to_decision) {
        Some(swap) => {
            let _ = writeln!(
                out,
                "\nHot swap: from the WasmPlugin update's acknowledgement to the first decision by the new scoring policy: {:.1} ms.",
                swap.as_secs_f64() * 1000.0
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nHot swap: the run ended before the new scoring policy took a decision (too few pods)."
            );
        }
    }
    out
}

/// The built-in policies compiled natively, in place of their components.
struct NativePolicies;

impl PolicySource for NativePolicies {
    fn make(&self, plugin: &str, config: &str) -> Option<Box<dyn Policy>> {
        fn boxed<P: sdk::SchedulerPolicy + Send>(config: &str) -> Option<Box<dyn Policy>> {
            P::new(config).ok().map(|policy| {
                Box::new(Native {
                    policy,
                    name: P::NAME,
                }) as Box<dyn Policy>
            })
        }
        match plugin {
            "node-name" => boxed::<node_name::NodeName>(config),
            "node-unschedulable" => boxed::<node_unschedulable::NodeUnschedulable>(config),
            "node-resources-fit" => boxed::<node_resources_fit::NodeResourcesFit>(config),
            "node-affinity" => boxed::<node_affinity::NodeAffinityPolicy>(config),
            "taint-toleration" => boxed::<taint_toleration::TaintToleration>(config),
            "pod-topology-spread" => boxed::<pod_topology_spread::PodTopologySpread>(config),
            "least-allocated" => boxed::<least_allocated::LeastAllocated>(config),
            "most-allocated" => boxed::<most_allocated::MostAllocated>(config),
            "balanced-allocation" => boxed::<balanced_allocation::BalancedAllocation>(config),
            _ => None,
        }
    }
}

struct Native<P> {
    policy: P,
    name: &'static str,
}

impl<P> Native<P> {
    fn error(&self, message: String) -> PluginError {
        PluginError {
            plugin: self.name.to_owned(),
            digest: "native".to_owned(),
            failure: Failure::Reported(message),
        }
    }
}

#[async_trait::async_trait]
impl<P: sdk::SchedulerPolicy + Send> Policy for Native<P> {
    fn capabilities(&self) -> wit::Capabilities {
        let c = self.policy.capabilities();
        wit::Capabilities {
            filter: c.filter,
            score: c.score,
            wants_pods: c.wants_pods,
        }
    }

    fn is_poisoned(&self) -> bool {
        false
    }

    async fn update(&mut self, changes: &[wit::Change]) -> Result<(), PluginError> {
        for change in changes {
            self.policy.update(to_sdk::change(change));
        }
        Ok(())
    }

    async fn prepare(&mut self, pod: &wit::Pod) -> Result<wit::Prepared, PluginError> {
        match self.policy.prepare(to_sdk::pod(pod)) {
            Ok(sdk::Prepared::Proceed) => Ok(wit::Prepared::Proceed),
            Ok(sdk::Prepared::Skip) => Ok(wit::Prepared::Skip),
            Ok(sdk::Prepared::Unschedulable(r)) => Ok(wit::Prepared::Unschedulable(r)),
            Err(message) => Err(self.error(message)),
        }
    }

    async fn filter(&mut self, candidates: &[u32]) -> Result<wit::FilterResult, PluginError> {
        let mut rejections = sdk::Rejections::default();
        self.policy
            .filter(candidates, &mut rejections)
            .map_err(|m| self.error(m))?;
        Ok(wit::FilterResult {
            rejected: rejections
                .rejected
                .into_iter()
                .map(|(node, reason)| wit::Rejection { node, reason })
                .collect(),
            reasons: rejections.reasons,
        })
    }

    async fn score(&mut self, candidates: &[u32]) -> Result<Vec<i64>, PluginError> {
        let mut scores = Vec::with_capacity(candidates.len());
        self.policy
            .score(candidates, &mut scores)
            .map_err(|m| self.error(m))?;
        Ok(scores)
    }
}

/// The host's records as the SDK's types: the work the component's side of the boundary does.
mod to_sdk {
    use super::{sdk, wit};

    fn labels(list: &[(String, String)]) -> sdk::Labels {
        list.iter().cloned().collect()
    }

    fn resources(r: &wit::Resources) -> sdk::Resources {
        sdk::Resources {
            milli_cpu: r.milli_cpu,
            memory: r.memory,
            pods: r.pods,
            scalar: r.scalar.clone(),
        }
    }

    fn effect(e: wit::TaintEffect) -> sdk::TaintEffect {
        match e {
            wit::TaintEffect::NoSchedule => sdk::TaintEffect::NoSchedule,
            wit::TaintEffect::PreferNoSchedule => sdk::TaintEffect::PreferNoSchedule,
            wit::TaintEffect::NoExecute => sdk::TaintEffect::NoExecute,
        }
    }

    fn requirement(r: &wit::SelectorRequirement) -> sdk::Requirement {
        sdk::Requirement {
            key: r.key.clone(),
            operator: match r.operator {
                wit::SelectorOperator::In => sdk::Operator::In,
                wit::SelectorOperator::NotIn => sdk::Operator::NotIn,
                wit::SelectorOperator::Exists => sdk::Operator::Exists,
                wit::SelectorOperator::DoesNotExist => sdk::Operator::DoesNotExist,
                wit::SelectorOperator::Gt => sdk::Operator::Gt,
                wit::SelectorOperator::Lt => sdk::Operator::Lt,
            },
            values: r.values.clone(),
        }
    }

    fn term(t: &wit::NodeSelectorTerm) -> sdk::NodeSelectorTerm {
        sdk::NodeSelectorTerm {
            match_expressions: t.match_expressions.iter().map(requirement).collect(),
            match_fields: t.match_fields.iter().map(requirement).collect(),
        }
    }

    fn inclusion(p: wit::InclusionPolicy) -> sdk::InclusionPolicy {
        match p {
            wit::InclusionPolicy::Honor => sdk::InclusionPolicy::Honor,
            wit::InclusionPolicy::Ignore => sdk::InclusionPolicy::Ignore,
        }
    }

    pub fn change(c: &wit::Change) -> sdk::Change {
        match c {
            wit::Change::NodeSet((index, n)) => sdk::Change::NodeSet(
                *index,
                sdk::Node {
                    name: n.name.clone(),
                    labels: labels(&n.labels),
                    taints: n
                        .taints
                        .iter()
                        .map(|t| sdk::Taint {
                            key: t.key.clone(),
                            value: t.value.clone(),
                            effect: effect(t.effect),
                        })
                        .collect(),
                    allocatable: resources(&n.allocatable),
                    unschedulable: n.unschedulable,
                    ready: n.ready,
                },
            ),
            wit::Change::NodeRemoved(index) => sdk::Change::NodeRemoved(*index),
            wit::Change::PodPlaced(p) => sdk::Change::PodPlaced(sdk::PlacedPod {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                labels: labels(&p.labels),
                node: p.node,
                requests: resources(&p.requests),
            }),
            wit::Change::PodRemoved(uid) => sdk::Change::PodRemoved(uid.clone()),
        }
    }

    pub fn pod(p: &wit::Pod) -> sdk::Pod {
        sdk::Pod {
            uid: p.uid.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            labels: labels(&p.labels),
            node_name: p.node_name.clone(),
            node_selector: labels(&p.node_selector),
            node_affinity: p.node_affinity.as_ref().map(|a| sdk::NodeAffinity {
                required: a.required.as_ref().map(|t| t.iter().map(term).collect()),
                preferred: a
                    .preferred
                    .iter()
                    .map(|p| sdk::PreferredTerm {
                        weight: p.weight,
                        preference: term(&p.preference),
                    })
                    .collect(),
            }),
            tolerations: p
                .tolerations
                .iter()
                .map(|t| sdk::Toleration {
                    key: t.key.clone(),
                    operator: match t.operator {
                        wit::TolerationOperator::Exists => sdk::TolerationOperator::Exists,
                        wit::TolerationOperator::Equal => sdk::TolerationOperator::Equal,
                    },
                    value: t.value.clone(),
                    effect: t.effect.map(effect),
                    toleration_seconds: t.toleration_seconds,
                })
                .collect(),
            requests: resources(&p.requests),
            topology_spread_constraints: p
                .topology_spread_constraints
                .iter()
                .map(|c| sdk::TopologySpreadConstraint {
                    max_skew: c.max_skew,
                    topology_key: c.topology_key.clone(),
                    when_unsatisfiable: match c.when_unsatisfiable {
                        wit::WhenUnsatisfiable::DoNotSchedule => {
                            sdk::WhenUnsatisfiable::DoNotSchedule
                        }
                        wit::WhenUnsatisfiable::ScheduleAnyway => {
                            sdk::WhenUnsatisfiable::ScheduleAnyway
                        }
                    },
                    label_selector: c.label_selector.as_ref().map(|s| sdk::LabelSelector {
                        match_labels: labels(&s.match_labels),
                        match_expressions: s.match_expressions.iter().map(requirement).collect(),
                    }),
                    min_domains: c.min_domains,
                    node_affinity_policy: inclusion(c.node_affinity_policy),
                    node_taints_policy: inclusion(c.node_taints_policy),
                    match_label_keys: c.match_label_keys.clone(),
                })
                .collect(),
            priority: p.priority,
        }
    }
}
