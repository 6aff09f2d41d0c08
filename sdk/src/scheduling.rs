//! Scheduling policies: the types of the `scheduler-policy` world, the [`SchedulerPolicy`]
//! trait, and helpers with Kubernetes' semantics (tolerations, node selector terms, label
//! selectors, a table of nodes and the pods placed on them).
//!
//! The host keeps one warm instance of each policy. It names nodes by index (`u32`), sends
//! cluster changes as they happen ([`SchedulerPolicy::update`]), and per pod calls
//! [`SchedulerPolicy::prepare`] once, then [`SchedulerPolicy::filter`] over batches of candidate
//! nodes and [`SchedulerPolicy::score`] over the feasible ones.

use std::collections::{BTreeMap, HashMap};

/// Quantities in base units: cpu in millicores, memory in bytes, the rest as counts or bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
    /// Every other resource (`ephemeral-storage`, extended resources), by name.
    pub scalar: Vec<(String, i64)>,
}

impl Resources {
    /// The amount of a named scalar resource (0 when absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn scalar_mut(&mut self, name: &str) -> &mut i64 {
        let at = match self.scalar.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                self.scalar.push((name.to_owned(), 0));
                self.scalar.len() - 1
            }
        };
        &mut self.scalar[at].1
    }

    /// Adds `other` into `self`, or takes it away with `sign` = -1.
    pub fn add(&mut self, other: &Resources, sign: i64) {
        self.milli_cpu += sign * other.milli_cpu;
        self.memory += sign * other.memory;
        self.pods += sign * other.pods;
        for (name, value) in &other.scalar {
            *self.scalar_mut(name) += sign * value;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// Empty with `Exists` tolerates every taint.
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    /// None tolerates every effect.
    pub effect: Option<TaintEffect>,
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint`, as Kubernetes decides it.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|effect| effect != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether a set of labels satisfies the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|w| w == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(value), [bound]) = (value, self.values.as_slice()) else {
                    return false;
                };
                match (value.parse::<i64>(), bound.parse::<i64>()) {
                    (Ok(value), Ok(bound)) if self.operator == Operator::Gt => value > bound,
                    (Ok(value), Ok(bound)) => value < bound,
                    _ => false,
                }
            }
        }
    }

    /// Matches against a single value standing for `key` (node fields such as `metadata.name`).
    fn matches_value(&self, value: &str) -> bool {
        match self.operator {
            Operator::In => self.values.iter().any(|w| w == value),
            Operator::NotIn => !self.values.iter().any(|w| w == value),
            _ => false,
        }
    }
}

/// Labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// A node selector term: all expressions and fields hold. An empty term matches no node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSelectorTerm {
    pub match_expressions: Vec<Requirement>,
    pub match_fields: Vec<Requirement>,
}

impl NodeSelectorTerm {
    pub fn matches(&self, node: &Node) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions
            .iter()
            .all(|r| r.matches(&node.labels))
            && self
                .match_fields
                .iter()
                .all(|r| r.key == "metadata.name" && r.matches_value(&node.name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferredTerm {
    pub weight: i32,
    pub preference: NodeSelectorTerm,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAffinity {
    /// Required terms (ORed); none when unset. Set but empty matches no node.
    pub required: Option<Vec<NodeSelectorTerm>>,
    pub preferred: Vec<PreferredTerm>,
}

/// A label selector: every label and expression holds. An empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InclusionPolicy {
    Honor,
    Ignore,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologySpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// None selects no pod.
    pub label_selector: Option<LabelSelector>,
    pub min_domains: Option<i32>,
    pub node_affinity_policy: InclusionPolicy,
    pub node_taints_policy: InclusionPolicy,
    pub match_label_keys: Vec<String>,
}

/// The pod being scheduled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub node_selector: Labels,
    pub node_affinity: Option<NodeAffinity>,
    pub tolerations: Vec<Toleration>,
    /// Effective requests, with `pods` = 1.
    pub requests: Resources,
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    pub priority: i32,
}

impl Pod {
    /// Whether `node` satisfies the pod's `nodeSelector` and required node affinity.
    pub fn node_selection_matches(&self, node: &Node) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self
                .node_affinity
                .as_ref()
                .and_then(|a| a.required.as_ref())
                .is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    pub unschedulable: bool,
    pub ready: bool,
}

/// A pod bound (or assumed bound) to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedPod {
    pub uid: String,
    pub namespace: String,
    pub labels: Labels,
    pub node: u32,
    pub requests: Resources,
}

/// One change to the cluster state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    NodeSet(u32, Node),
    NodeRemoved(u32),
    PodPlaced(PlacedPod),
    PodRemoved(String),
}

/// What a policy implements and needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub filter: bool,
    pub score: bool,
    /// The policy wants [`Change::PodPlaced`] and [`Change::PodRemoved`].
    pub wants_pods: bool,
}

/// The answer to [`SchedulerPolicy::prepare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The host calls `filter` and `score` for this pod.
    Proceed,
    /// Nothing in this pod concerns the policy.
    Skip,
    /// No node can take the pod.
    Unschedulable(String),
}

/// Rejections collected by a filter, with each reason stored once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    pub rejected: Vec<(u32, u32)>,
    pub reasons: Vec<String>,
}

impl Rejections {
    /// Rejects `node` for `reason` (Kubernetes' wording, e.g. `Insufficient cpu`). A node may be
    /// rejected for several reasons; each is counted in the pod's FailedScheduling summary.
    pub fn reject(&mut self, node: u32, reason: &str) {
        let index = match self.reasons.iter().position(|r| r == reason) {
            Some(index) => index,
            None => {
                self.reasons.push(reason.to_owned());
                self.reasons.len() - 1
            }
        };
        self.rejected.push((node, index as u32));
    }

    pub fn clear(&mut self) {
        self.rejected.clear();
        self.reasons.clear();
    }
}

/// Scales raw scores into 0..=100 by the largest one (Kubernetes' `DefaultNormalizeScore`);
/// `reverse` makes the largest raw score the lowest.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for score in scores.iter_mut() {
        if max == 0 {
            *score = if reverse { 100 } else { 0 };
            continue;
        }
        let scaled = *score * 100 / max;
        *score = if reverse { 100 - scaled } else { scaled };
    }
}

/// The cpu a pod without a cpu request counts as when nodes are scored (Kubernetes' 100m).
pub const NON_ZERO_MILLI_CPU: i64 = 100;
/// The memory a pod without a memory request counts as when nodes are scored (200 MiB).
pub const NON_ZERO_MEMORY: i64 = 200 * 1024 * 1024;

/// A pod's cpu and memory for scoring: its requests, or the defaults above where it has none.
pub fn non_zero(requests: &Resources) -> (i64, i64) {
    (
        if requests.milli_cpu == 0 {
            NON_ZERO_MILLI_CPU
        } else {
            requests.milli_cpu
        },
        if requests.memory == 0 {
            NON_ZERO_MEMORY
        } else {
            requests.memory
        },
    )
}

/// A node as a [`NodeTable`] keeps it: the node and what is placed on it.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    pub node: Node,
    /// The sum of the placed pods' requests (`pods` counts them).
    pub requested: Resources,
    /// The sum of the placed pods' [`non_zero`] cpu and memory, for scoring.
    pub non_zero_requested: (i64, i64),
    /// Uids of the pods placed on the node.
    pub pods: Vec<String>,
}

impl NodeState {
    /// Cpu and memory as `(requested, allocatable)` once `pod` is placed here, with the
    /// [`non_zero`] defaults Kubernetes' scoring uses.
    pub fn use_with(&self, pod: &Resources) -> [(i64, i64); 2] {
        let (cpu, memory) = non_zero(pod);
        [
            (
                self.non_zero_requested.0 + cpu,
                self.node.allocatable.milli_cpu,
            ),
            (
                self.non_zero_requested.1 + memory,
                self.node.allocatable.memory,
            ),
        ]
    }
}

/// The cluster as a policy sees it, kept from [`Change`]s: nodes by index, and the pods placed
/// on them.
#[derive(Clone, Debug, Default)]
pub struct NodeTable {
    nodes: Vec<Option<NodeState>>,
    pods: HashMap<String, PlacedPod>,
}

impl NodeTable {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::NodeSet(index, node) => {
                let index = index as usize;
                if self.nodes.len() <= index {
                    self.nodes.resize_with(index + 1, || None);
                }
                match &mut self.nodes[index] {
                    Some(state) => state.node = node,
                    slot => {
                        *slot = Some(NodeState {
                            node,
                            ..NodeState::default()
                        })
                    }
                }
            }
            Change::NodeRemoved(index) => {
                if let Some(state) = self.nodes.get_mut(index as usize).and_then(Option::take) {
                    for uid in state.pods {
                        self.pods.remove(&uid);
                    }
                }
            }
            Change::PodPlaced(pod) => {
                self.remove_pod(&pod.uid);
                if let Some(Some(state)) = self.nodes.get_mut(pod.node as usize) {
                    state.requested.add(&pod.requests, 1);
                    let (cpu, memory) = non_zero(&pod.requests);
                    state.non_zero_requested.0 += cpu;
                    state.non_zero_requested.1 += memory;
                    state.pods.push(pod.uid.clone());
                    self.pods.insert(pod.uid.clone(), pod);
                }
            }
            Change::PodRemoved(uid) => self.remove_pod(&uid),
        }
    }

    fn remove_pod(&mut self, uid: &str) {
        let Some(pod) = self.pods.remove(uid) else {
            return;
        };
        if let Some(Some(state)) = self.nodes.get_mut(pod.node as usize) {
            state.requested.add(&pod.requests, -1);
            let (cpu, memory) = non_zero(&pod.requests);
            state.non_zero_requested.0 -= cpu;
            state.non_zero_requested.1 -= memory;
            state.pods.retain(|p| p != uid);
        }
    }

    pub fn get(&self, index: u32) -> Option<&NodeState> {
        self.nodes.get(index as usize).and_then(Option::as_ref)
    }

    /// Every node with its index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &NodeState)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u32, s)))
    }

    /// The pods placed on a node.
    pub fn pods_on(&self, index: u32) -> impl Iterator<Item = &PlacedPod> {
        self.get(index)
            .into_iter()
            .flat_map(|s| s.pods.iter())
            .filter_map(|uid| self.pods.get(uid))
    }

    pub fn pod(&self, uid: &str) -> Option<&PlacedPod> {
        self.pods.get(uid)
    }

    pub fn len(&self) -> usize {
        self.nodes.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A scheduling policy. One value lives in the plugin's instance for as long as the host keeps
/// it; calls come one at a time.
pub trait SchedulerPolicy: Sized + 'static {
    /// The policy's name, for logs and status.
    const NAME: &'static str;
    /// The policy's own version.
    const VERSION: &'static str;

    /// Builds the policy from its configuration (JSON, `{}` when unset). An error fails the
    /// plugin's self-check, so the host refuses the module.
    fn new(config: &str) -> Result<Self, String>;

    fn capabilities(&self) -> Capabilities;

    /// One cluster change.
    fn update(&mut self, change: Change);

    /// Starts the cycle of `pod`.
    fn prepare(&mut self, pod: Pod) -> Result<Prepared, String>;

    /// Rejects the candidates that cannot take the prepared pod.
    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        let _ = (candidates, rejections);
        Ok(())
    }

    /// Pushes one score within 0..=100 per candidate, in order.
    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        scores.extend(candidates.iter().map(|_| 0));
        Ok(())
    }
}

/// The single policy value of a component, created on first use from the plugin's
/// configuration. Implemented by [`export_scheduler_policy!`](crate::export_scheduler_policy).
#[doc(hidden)]
pub trait Singleton: SchedulerPolicy {
    fn with<R>(f: impl FnOnce(&mut Result<Self, String>) -> R) -> R;
}

/// Exports a [`SchedulerPolicy`] as the component's `scheduler-policy` world.
#[macro_export]
macro_rules! export_scheduler_policy {
    ($policy:ty) => {
        $crate::__export_singleton!(
            $policy,
            $crate::scheduling::Singleton,
            $crate::scheduling::SchedulerPolicy
        );
        #[cfg(target_arch = "wasm32")]
        type __FlotillaSchedulerPolicy = $crate::scheduling::Adapter<$policy>;
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::scheduler::__export_scheduler_policy!(
            __FlotillaSchedulerPolicy with_types_in $crate::__bindings::scheduler
        );
    };
}

#[cfg(all(target_arch = "wasm32", feature = "scheduler"))]
pub use adapter::Adapter;

/// Conversions between the generated records and the SDK's types, and the generated `Guest`
/// traits implemented over any [`Singleton`].
#[cfg(all(target_arch = "wasm32", feature = "scheduler"))]
mod adapter {
    use super::*;
    use crate::__bindings::scheduler::exports::flotilla::plugin::{meta, scheduler};
    use crate::__bindings::scheduler::flotilla::plugin::scheduling as wit;

    #[doc(hidden)]
    pub struct Adapter<P>(std::marker::PhantomData<P>);

    impl<P> std::fmt::Debug for Adapter<P> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Adapter")
        }
    }

    fn labels(list: Vec<(String, String)>) -> Labels {
        list.into_iter().collect()
    }

    fn resources(r: wit::Resources) -> Resources {
        Resources {
            milli_cpu: r.milli_cpu,
            memory: r.memory,
            pods: r.pods,
            scalar: r.scalar,
        }
    }

    fn effect(e: wit::TaintEffect) -> TaintEffect {
        match e {
            wit::TaintEffect::NoSchedule => TaintEffect::NoSchedule,
            wit::TaintEffect::PreferNoSchedule => TaintEffect::PreferNoSchedule,
            wit::TaintEffect::NoExecute => TaintEffect::NoExecute,
        }
    }

    fn requirement(r: wit::SelectorRequirement) -> Requirement {
        Requirement {
            key: r.key,
            operator: match r.operator {
                wit::SelectorOperator::In => Operator::In,
                wit::SelectorOperator::NotIn => Operator::NotIn,
                wit::SelectorOperator::Exists => Operator::Exists,
                wit::SelectorOperator::DoesNotExist => Operator::DoesNotExist,
                wit::SelectorOperator::Gt => Operator::Gt,
                wit::SelectorOperator::Lt => Operator::Lt,
            },
            values: r.values,
        }
    }

    fn term(t: wit::NodeSelectorTerm) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: t.match_expressions.into_iter().map(requirement).collect(),
            match_fields: t.match_fields.into_iter().map(requirement).collect(),
        }
    }

    fn inclusion(p: wit::InclusionPolicy) -> InclusionPolicy {
        match p {
            wit::InclusionPolicy::Honor => InclusionPolicy::Honor,
            wit::InclusionPolicy::Ignore => InclusionPolicy::Ignore,
        }
    }

    fn node(n: wit::Node) -> Node {
        Node {
            name: n.name,
            labels: labels(n.labels),
            taints: n
                .taints
                .into_iter()
                .map(|t| Taint {
                    key: t.key,
                    value: t.value,
                    effect: effect(t.effect),
                })
                .collect(),
            allocatable: resources(n.allocatable),
            unschedulable: n.unschedulable,
            ready: n.ready,
        }
    }

    fn pod(p: wit::Pod) -> Pod {
        Pod {
            uid: p.uid,
            namespace: p.namespace,
            name: p.name,
            labels: labels(p.labels),
            node_name: p.node_name,
            node_selector: labels(p.node_selector),
            node_affinity: p.node_affinity.map(|a| NodeAffinity {
                required: a
                    .required
                    .map(|terms| terms.into_iter().map(term).collect()),
                preferred: a
                    .preferred
                    .into_iter()
                    .map(|p| PreferredTerm {
                        weight: p.weight,
                        preference: term(p.preference),
                    })
                    .collect(),
            }),
            tolerations: p
                .tolerations
                .into_iter()
                .map(|t| Toleration {
                    key: t.key,
                    operator: match t.operator {
                        wit::TolerationOperator::Exists => TolerationOperator::Exists,
                        wit::TolerationOperator::Equal => TolerationOperator::Equal,
                    },
                    value: t.value,
                    effect: t.effect.map(effect),
                    toleration_seconds: t.toleration_seconds,
                })
                .collect(),
            requests: resources(p.requests),
            topology_spread_constraints: p
                .topology_spread_constraints
                .into_iter()
                .map(|c| TopologySpreadConstraint {
                    max_skew: c.max_skew,
                    topology_key: c.topology_key,
                    when_unsatisfiable: match c.when_unsatisfiable {
                        wit::WhenUnsatisfiable::DoNotSchedule => WhenUnsatisfiable::DoNotSchedule,
                        wit::WhenUnsatisfiable::ScheduleAnyway => WhenUnsatisfiable::ScheduleAnyway,
                    },
                    label_selector: c.label_selector.map(|s| LabelSelector {
                        match_labels: labels(s.match_labels),
                        match_expressions: s
                            .match_expressions
                            .into_iter()
                            .map(requirement)
                            .collect(),
                    }),
                    min_domains: c.min_domains,
                    node_affinity_policy: inclusion(c.node_affinity_policy),
                    node_taints_policy: inclusion(c.node_taints_policy),
                    match_label_keys: c.match_label_keys,
                })
                .collect(),
            priority: p.priority,
        }
    }

    fn change(c: wit::Change) -> Change {
        match c {
            wit::Change::NodeSet((index, n)) => Change::NodeSet(index, node(n)),
            wit::Change::NodeRemoved(index) => Change::NodeRemoved(index),
            wit::Change::PodPlaced(p) => Change::PodPlaced(PlacedPod {
                uid: p.uid,
                namespace: p.namespace,
                labels: labels(p.labels),
                node: p.node,
                requests: resources(p.requests),
            }),
            wit::Change::PodRemoved(uid) => Change::PodRemoved(uid),
        }
    }

    impl<P: Singleton> meta::Guest for Adapter<P> {
        fn info() -> meta::PluginInfo {
            meta::PluginInfo {
                name: P::NAME.to_owned(),
                version: P::VERSION.to_owned(),
                wit_version: crate::WIT_VERSION.to_owned(),
            }
        }

        fn self_check() -> Result<(), String> {
            P::with(|policy| policy.as_ref().map(|_| ()).map_err(Clone::clone))
        }
    }

    impl<P: Singleton> scheduler::Guest for Adapter<P> {
        fn describe() -> wit::Capabilities {
            P::with(|policy| match policy {
                Ok(policy) => {
                    let c = policy.capabilities();
                    wit::Capabilities {
                        filter: c.filter,
                        score: c.score,
                        wants_pods: c.wants_pods,
                    }
                }
                Err(_) => wit::Capabilities {
                    filter: false,
                    score: false,
                    wants_pods: false,
                },
            })
        }

        fn update(changes: Vec<wit::Change>) {
            P::with(|policy| {
                if let Ok(policy) = policy {
                    for c in changes {
                        policy.update(change(c));
                    }
                }
            })
        }

        fn prepare(p: wit::Pod) -> Result<wit::Prepared, String> {
            P::with(|policy| {
                let policy = policy.as_mut().map_err(|e| e.clone())?;
                Ok(match policy.prepare(pod(p))? {
                    Prepared::Proceed => wit::Prepared::Proceed,
                    Prepared::Skip => wit::Prepared::Skip,
                    Prepared::Unschedulable(reason) => wit::Prepared::Unschedulable(reason),
                })
            })
        }

        fn filter(candidates: Vec<u32>) -> Result<wit::FilterResult, String> {
            P::with(|policy| {
                let policy = policy.as_mut().map_err(|e| e.clone())?;
                let mut rejections = Rejections::default();
                policy.filter(&candidates, &mut rejections)?;
                Ok(wit::FilterResult {
                    rejected: rejections
                        .rejected
                        .into_iter()
                        .map(|(node, reason)| wit::Rejection { node, reason })
                        .collect(),
                    reasons: rejections.reasons,
                })
            })
        }

        fn score(candidates: Vec<u32>) -> Result<Vec<i64>, String> {
            P::with(|policy| {
                let policy = policy.as_mut().map_err(|e| e.clone())?;
                let mut scores = Vec::with_capacity(candidates.len());
                policy.score(&candidates, &mut scores)?;
                Ok(scores)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    fn toleration(
        key: &str,
        operator: TolerationOperator,
        value: &str,
        effect: Option<TaintEffect>,
    ) -> Toleration {
        Toleration {
            key: key.into(),
            operator,
            value: value.into(),
            effect,
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_follow_kubernetes() {
        let t = taint("dedicated", "gpu", TaintEffect::NoSchedule);
        use TolerationOperator::*;
        assert!(toleration("dedicated", Equal, "gpu", None).tolerates(&t));
        assert!(toleration("dedicated", Equal, "gpu", Some(TaintEffect::NoSchedule)).tolerates(&t));
        assert!(!toleration("dedicated", Equal, "gpu", Some(TaintEffect::NoExecute)).tolerates(&t));
        assert!(!toleration("dedicated", Equal, "cpu", None).tolerates(&t));
        assert!(toleration("dedicated", Exists, "", None).tolerates(&t));
        assert!(
            toleration("", Exists, "", None).tolerates(&t),
            "empty key with Exists tolerates all"
        );
        assert!(!toleration("other", Exists, "", None).tolerates(&t));
    }

    #[test]
    fn requirements_and_terms_follow_kubernetes() {
        let node = Node {
            name: "n1".into(),
            labels: labels(&[("zone", "a"), ("cores", "8")]),
            ..Node::default()
        };
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(req("zone", Operator::In, &["a", "b"]).matches(&node.labels));
        assert!(!req("zone", Operator::NotIn, &["a"]).matches(&node.labels));
        assert!(req("missing", Operator::NotIn, &["a"]).matches(&node.labels));
        assert!(req("cores", Operator::Gt, &["4"]).matches(&node.labels));
        assert!(!req("cores", Operator::Lt, &["4"]).matches(&node.labels));
        assert!(
            !req("zone", Operator::Gt, &["4"]).matches(&node.labels),
            "non-numeric never matches"
        );
        let term = NodeSelectorTerm {
            match_expressions: vec![req("zone", Operator::In, &["a"])],
            match_fields: vec![req("metadata.name", Operator::In, &["n1"])],
        };
        assert!(term.matches(&node));
        assert!(
            !NodeSelectorTerm::default().matches(&node),
            "an empty term matches nothing"
        );
        let pod = Pod {
            node_affinity: Some(NodeAffinity {
                required: Some(vec![]),
                preferred: vec![],
            }),
            ..Pod::default()
        };
        assert!(
            !pod.node_selection_matches(&node),
            "required but empty matches no node"
        );
    }

    #[test]
    fn the_node_table_tracks_placed_pods() {
        let mut table = NodeTable::default();
        let alloc = Resources {
            milli_cpu: 4000,
            memory: 8 << 30,
            pods: 110,
            scalar: vec![],
        };
        table.apply(Change::NodeSet(
            3,
            Node {
                name: "n3".into(),
                allocatable: alloc.clone(),
                ..Node::default()
            },
        ));
        let requests = Resources {
            milli_cpu: 500,
            memory: 1 << 30,
            pods: 1,
            scalar: vec![("example.com/gpu".into(), 1)],
        };
        let placed = |uid: &str| PlacedPod {
            uid: uid.into(),
            namespace: "default".into(),
            labels: Labels::new(),
            node: 3,
            requests: requests.clone(),
        };
        table.apply(Change::PodPlaced(placed("a")));
        table.apply(Change::PodPlaced(placed("b")));
        table.apply(Change::PodPlaced(placed("b")));
        let state = table.get(3).unwrap();
        assert_eq!(state.requested.milli_cpu, 1000);
        assert_eq!(
            state.requested.pods, 2,
            "placing a pod twice counts it once"
        );
        assert_eq!(state.requested.scalar("example.com/gpu"), 2);
        table.apply(Change::PodRemoved("a".into()));
        assert_eq!(table.get(3).unwrap().requested.milli_cpu, 500);
        assert_eq!(table.pods_on(3).count(), 1);
        table.apply(Change::NodeRemoved(3));
        assert!(table.get(3).is_none());
        assert!(
            table.pod("b").is_none(),
            "a removed node's pods are forgotten"
        );
    }

    #[test]
    fn normalize_scales_by_the_largest_score() {
        let mut scores = vec![0, 5, 10];
        normalize(&mut scores, false);
        assert_eq!(scores, vec![0, 50, 100]);
        let mut scores = vec![0, 5, 10];
        normalize(&mut scores, true);
        assert_eq!(scores, vec![100, 50, 0]);
        let mut zeros = vec![0, 0];
        normalize(&mut zeros, true);
        assert_eq!(zeros, vec![100, 100]);
    }
}
