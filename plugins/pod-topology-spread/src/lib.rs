//! PodTopologySpread, as Kubernetes has it.
//!
//! For each of the pod's `topologySpreadConstraints`, pods in the pod's namespace that the
//! constraint's selector (plus `matchLabelKeys`) matches are counted per topology domain — the
//! values of `topologyKey` on eligible nodes (nodes with every constraint's key, and, per the
//! inclusion policies, matching the pod's node affinity and tolerated taints).
//!
//! - `DoNotSchedule` constraints filter: a node without the key is rejected (`missing required
//!   label`); otherwise placing the pod there must keep `count + self - min ≤ maxSkew`, where
//!   `min` is the smallest domain count (0 while there are fewer domains than `minDomains`).
//! - `ScheduleAnyway` constraints score: a node scores, per constraint, the matching pods in its
//!   domain times `ln(domains + 2)` plus `maxSkew - 1`, rounded; domains are those of the nodes
//!   being scored (for `kubernetes.io/hostname`, the nodes themselves, counted one by one).
//!   Nodes missing a key score 0; the others are normalized so the fewest matching pods scores
//!   100: `100 * (max + min - score) / max`.

use std::collections::{HashMap, HashSet};

use flotilla_sdk::scheduling::*;

const MISMATCH: &str = "node(s) didn't match pod topology spread constraints";
const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
/// Soft constraints on this key count pods node by node when scoring, as in Kubernetes.
const HOSTNAME: &str = "kubernetes.io/hostname";

/// One constraint, prepared for the current pod.
#[derive(Debug)]
struct Prepared1 {
    constraint: TopologySpreadConstraint,
    /// The selector with `matchLabelKeys` merged in; None selects no pod.
    selector: Option<LabelSelector>,
    /// Matching pods per domain (every eligible domain present, maybe with 0).
    counts: HashMap<String, i64>,
    self_match: i64,
}

impl Prepared1 {
    fn min_match(&self) -> i64 {
        let domains = self.counts.len() as i64;
        if self
            .constraint
            .min_domains
            .is_some_and(|min| domains < i64::from(min))
        {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
pub struct PodTopologySpread {
    nodes: NodeTable,
    /// The namespace of the pod being scheduled: only its pods are counted.
    namespace: String,
    hard: Vec<Prepared1>,
    soft: Vec<Prepared1>,
}

impl PodTopologySpread {
    fn prepare_constraint(
        &self,
        pod: &Pod,
        constraint: &TopologySpreadConstraint,
        keys: &[&str],
    ) -> Prepared1 {
        let selector = constraint.label_selector.clone().map(|mut selector| {
            for key in &constraint.match_label_keys {
                if let Some(value) = pod.labels.get(key) {
                    selector.match_expressions.push(Requirement {
                        key: key.clone(),
                        operator: Operator::In,
                        values: vec![value.clone()],
                    });
                }
            }
            selector
        });
        let mut counts: HashMap<String, i64> = HashMap::new();
        for (index, state) in self.nodes.iter() {
            let node = &state.node;
            if !keys.iter().all(|k| node.labels.contains_key(*k)) {
                continue;
            }
            if constraint.node_affinity_policy == InclusionPolicy::Honor
                && !pod.node_selection_matches(node)
            {
                continue;
            }
            if constraint.node_taints_policy == InclusionPolicy::Honor
                && node.taints.iter().any(|t| {
                    matches!(t.effect, TaintEffect::NoSchedule | TaintEffect::NoExecute)
                        && !tolerated(&pod.tolerations, t)
                })
            {
                continue;
            }
            let domain = node.labels[&constraint.topology_key].clone();
            let matching = self.matching_on(index, &pod.namespace, selector.as_ref());
            *counts.entry(domain).or_default() += matching;
        }
        let self_match = selector.as_ref().is_some_and(|s| s.matches(&pod.labels)) as i64;
        Prepared1 {
            constraint: constraint.clone(),
            selector,
            counts,
            self_match,
        }
    }

    /// The pods on a node in `namespace` that `selector` selects.
    fn matching_on(&self, index: u32, namespace: &str, selector: Option<&LabelSelector>) -> i64 {
        let Some(selector) = selector else {
            return 0;
        };
        self.nodes
            .pods_on(index)
            .filter(|p| p.namespace == namespace && selector.matches(&p.labels))
            .count() as i64
    }
}

impl SchedulerPolicy for PodTopologySpread {
    const NAME: &'static str = "pod-topology-spread";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter: true,
            score: true,
            wants_pods: true,
        }
    }

    fn update(&mut self, change: Change) {
        self.nodes.apply(change);
    }

    fn prepare(&mut self, pod: Pod) -> Result<Prepared, String> {
        self.hard.clear();
        self.soft.clear();
        self.namespace.clone_from(&pod.namespace);
        if pod.topology_spread_constraints.is_empty() {
            return Ok(Prepared::Skip);
        }
        for wanted in [
            WhenUnsatisfiable::DoNotSchedule,
            WhenUnsatisfiable::ScheduleAnyway,
        ] {
            let constraints: Vec<&TopologySpreadConstraint> = pod
                .topology_spread_constraints
                .iter()
                .filter(|c| c.when_unsatisfiable == wanted)
                .collect();
            let keys: Vec<&str> = constraints
                .iter()
                .map(|c| c.topology_key.as_str())
                .collect();
            let prepared: Vec<Prepared1> = constraints
                .iter()
                .map(|c| self.prepare_constraint(&pod, c, &keys))
                .collect();
            match wanted {
                WhenUnsatisfiable::DoNotSchedule => self.hard = prepared,
                WhenUnsatisfiable::ScheduleAnyway => self.soft = prepared,
            }
        }
        Ok(Prepared::Proceed)
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        for &index in candidates {
            let Some(state) = self.nodes.get(index) else {
                continue;
            };
            for c in &self.hard {
                let Some(domain) = state.node.labels.get(&c.constraint.topology_key) else {
                    rejections.reject(index, MISSING_LABEL);
                    break;
                };
                let count = c.counts.get(domain).copied().unwrap_or(0);
                let skew = count + c.self_match - c.min_match();
                if skew > i64::from(c.constraint.max_skew) {
                    rejections.reject(index, MISMATCH);
                    break;
                }
            }
        }
        Ok(())
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        if self.soft.is_empty() {
            scores.extend(candidates.iter().map(|_| 100));
            return Ok(());
        }
        // The candidates that have every key; the others are ignored and score 0.
        let scored: Vec<Option<&NodeState>> = candidates
            .iter()
            .map(|&index| {
                self.nodes.get(index).filter(|state| {
                    self.soft
                        .iter()
                        .all(|c| state.node.labels.contains_key(&c.constraint.topology_key))
                })
            })
            .collect();
        // Each constraint weighs ln(domains + 2), its domains being those of the scored nodes.
        let weights: Vec<f64> = self
            .soft
            .iter()
            .map(|c| {
                let key = &c.constraint.topology_key;
                let domains = if key == HOSTNAME {
                    scored.iter().flatten().count()
                } else {
                    scored
                        .iter()
                        .flatten()
                        .map(|state| &state.node.labels[key])
                        .collect::<HashSet<_>>()
                        .len()
                };
                ((domains + 2) as f64).ln()
            })
            .collect();
        // Raw scores: more matching pods is worse.
        let raw: Vec<Option<i64>> = candidates
            .iter()
            .zip(&scored)
            .map(|(&index, state)| {
                let state = (*state)?;
                let mut total = 0.0;
                for (c, weight) in self.soft.iter().zip(&weights) {
                    let key = &c.constraint.topology_key;
                    let count = if key == HOSTNAME {
                        self.matching_on(index, &self.namespace, c.selector.as_ref())
                    } else {
                        c.counts.get(&state.node.labels[key]).copied().unwrap_or(0)
                    };
                    total += count as f64 * weight + f64::from(c.constraint.max_skew - 1);
                }
                Some(total.round() as i64)
            })
            .collect();
        let max = raw.iter().flatten().copied().fold(0, i64::max);
        let min = raw.iter().flatten().copied().min().unwrap_or(0);
        for value in raw {
            scores.push(match value {
                None => 0,
                Some(_) if max == 0 => 100,
                Some(v) => 100 * (max + min - v) / max,
            });
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(PodTopologySpread);

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "topology.kubernetes.io/zone";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn web() -> Labels {
        labels(&[("app", "web")])
    }

    /// A node with its hostname label and, when given, a zone.
    fn node(name: &str, zone: Option<&str>) -> Node {
        let mut labels = labels(&[(HOSTNAME, name)]);
        if let Some(zone) = zone {
            labels.insert(ZONE.into(), zone.into());
        }
        Node {
            name: name.into(),
            labels,
            ready: true,
            ..Node::default()
        }
    }

    fn policy(nodes: Vec<Node>) -> PodTopologySpread {
        let mut policy = PodTopologySpread::new("{}").unwrap();
        for (index, node) in nodes.into_iter().enumerate() {
            policy.update(Change::NodeSet(index as u32, node));
        }
        policy
    }

    /// One node per zone, `n0` in the first, each with that many `app=web` pods in `default`.
    fn zonal(zones: &[(&str, usize)]) -> PodTopologySpread {
        let nodes = zones
            .iter()
            .enumerate()
            .map(|(i, (zone, _))| node(&format!("n{i}"), Some(zone)))
            .collect();
        let mut policy = policy(nodes);
        for (i, &(_, count)) in zones.iter().enumerate() {
            for _ in 0..count {
                place(&mut policy, i as u32, "default", web());
            }
        }
        policy
    }

    /// Places a pod with a fresh uid; returns the uid.
    fn place(policy: &mut PodTopologySpread, node: u32, namespace: &str, labels: Labels) -> String {
        let uid = format!(
            "pod-{}",
            policy
                .nodes
                .iter()
                .map(|(_, s)| s.pods.len())
                .sum::<usize>()
        );
        policy.update(Change::PodPlaced(PlacedPod {
            uid: uid.clone(),
            namespace: namespace.into(),
            labels,
            node,
            requests: Resources::default(),
        }));
        uid
    }

    /// A constraint selecting `app=web`, with Kubernetes' defaults for the rest.
    fn constraint(max_skew: i32, key: &str, when: WhenUnsatisfiable) -> TopologySpreadConstraint {
        TopologySpreadConstraint {
            max_skew,
            topology_key: key.into(),
            when_unsatisfiable: when,
            label_selector: Some(LabelSelector {
                match_labels: web(),
                match_expressions: vec![],
            }),
            min_domains: None,
            node_affinity_policy: InclusionPolicy::Honor,
            node_taints_policy: InclusionPolicy::Ignore,
            match_label_keys: vec![],
        }
    }

    fn hard(max_skew: i32, key: &str) -> TopologySpreadConstraint {
        constraint(max_skew, key, WhenUnsatisfiable::DoNotSchedule)
    }

    fn soft(max_skew: i32, key: &str) -> TopologySpreadConstraint {
        constraint(max_skew, key, WhenUnsatisfiable::ScheduleAnyway)
    }

    /// An `app=web` pod in `default` with `constraints`.
    fn pod(constraints: Vec<TopologySpreadConstraint>) -> Pod {
        Pod {
            uid: "incoming".into(),
            name: "web".into(),
            namespace: "default".into(),
            labels: web(),
            topology_spread_constraints: constraints,
            ..Pod::default()
        }
    }

    /// Prepares `pod` (which must proceed) and filters: the rejections with their reasons.
    fn rejected(
        policy: &mut PodTopologySpread,
        pod: Pod,
        candidates: &[u32],
    ) -> Vec<(u32, String)> {
        assert_eq!(policy.prepare(pod).unwrap(), Prepared::Proceed);
        let mut rejections = Rejections::default();
        policy.filter(candidates, &mut rejections).unwrap();
        rejections
            .rejected
            .iter()
            .map(|&(node, reason)| (node, rejections.reasons[reason as usize].clone()))
            .collect()
    }

    /// The candidates that pass the filter; every rejection must be for skew.
    fn passing(policy: &mut PodTopologySpread, pod: Pod, candidates: &[u32]) -> Vec<u32> {
        let rejected = rejected(policy, pod, candidates);
        for (node, reason) in &rejected {
            assert_eq!(reason, MISMATCH, "node {node}");
        }
        candidates
            .iter()
            .copied()
            .filter(|c| !rejected.iter().any(|(n, _)| n == c))
            .collect()
    }

    fn scores(policy: &mut PodTopologySpread, pod: Pod, candidates: &[u32]) -> Vec<i64> {
        assert_eq!(policy.prepare(pod).unwrap(), Prepared::Proceed);
        let mut scores = Vec::new();
        policy.score(candidates, &mut scores).unwrap();
        scores
    }

    #[test]
    fn it_filters_scores_and_wants_pods() {
        let c = policy(vec![]).capabilities();
        assert!(c.filter);
        assert!(c.score);
        assert!(c.wants_pods);
    }

    #[test]
    fn pods_without_constraints_are_skipped() {
        let mut p = zonal(&[("a", 2), ("b", 0)]);
        assert_eq!(p.prepare(pod(vec![])).unwrap(), Prepared::Skip);
    }

    #[test]
    fn max_skew_1_admits_only_the_emptiest_zone() {
        // Counts 2/1/0: placing in a makes 3 - 0, in b 2 - 0, in c 1 - 0.
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!(
            rejected(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1, 2]),
            vec![(0, MISMATCH.to_string()), (1, MISMATCH.to_string())]
        );
        assert_eq!(
            MISMATCH,
            "node(s) didn't match pod topology spread constraints"
        );
    }

    #[test]
    fn a_larger_max_skew_admits_more_zones() {
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!(
            passing(&mut p, pod(vec![hard(2, ZONE)]), &[0, 1, 2]),
            vec![1, 2]
        );
        assert_eq!(
            passing(&mut p, pod(vec![hard(3, ZONE)]), &[0, 1, 2]),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn a_zone_counts_the_pods_of_all_its_nodes() {
        // Zone a has two nodes with one pod each (2), zone b one node with one pod (1).
        let mut p = policy(vec![
            node("n0", Some("a")),
            node("n1", Some("a")),
            node("n2", Some("b")),
        ]);
        place(&mut p, 0, "default", web());
        place(&mut p, 1, "default", web());
        place(&mut p, 2, "default", web());
        assert_eq!(
            passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1, 2]),
            vec![2]
        );
    }

    #[test]
    fn a_node_without_the_key_is_rejected_for_a_missing_label() {
        let mut p = policy(vec![
            node("n0", Some("a")),
            node("n1", Some("b")),
            node("n2", None),
        ]);
        // Pods on a node without the key belong to no domain.
        for _ in 0..5 {
            place(&mut p, 2, "default", web());
        }
        assert_eq!(
            rejected(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1, 2]),
            vec![(2, MISSING_LABEL.to_string())]
        );
        assert_eq!(
            MISSING_LABEL,
            "node(s) didn't match pod topology spread constraints (missing required label)"
        );
    }

    #[test]
    fn min_domains_above_the_domain_count_makes_the_minimum_zero() {
        let mut p = zonal(&[("a", 1), ("b", 1)]);
        let with_min = |min: Option<i32>| {
            pod(vec![TopologySpreadConstraint {
                min_domains: min,
                ..hard(1, ZONE)
            }])
        };
        assert_eq!(passing(&mut p, with_min(None), &[0, 1]), vec![0, 1]);
        assert_eq!(passing(&mut p, with_min(Some(2)), &[0, 1]), vec![0, 1]);
        // Two domains, three wanted: the global minimum is 0, so 1 + 1 - 0 > 1.
        assert_eq!(
            passing(&mut p, with_min(Some(3)), &[0, 1]),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn only_pods_in_the_pods_namespace_count() {
        let mut p = zonal(&[("a", 0), ("b", 0)]);
        for _ in 0..3 {
            place(&mut p, 0, "other", web());
        }
        assert_eq!(
            passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1]),
            vec![0, 1]
        );
        let elsewhere = Pod {
            namespace: "other".into(),
            ..pod(vec![hard(1, ZONE)])
        };
        assert_eq!(passing(&mut p, elsewhere, &[0, 1]), vec![1]);
    }

    #[test]
    fn pods_the_selector_does_not_select_do_not_count() {
        let mut p = zonal(&[("a", 0), ("b", 0)]);
        for _ in 0..3 {
            place(&mut p, 0, "default", labels(&[("app", "db")]));
        }
        assert_eq!(
            passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1]),
            vec![0, 1]
        );
    }

    #[test]
    fn a_pod_outside_its_own_selector_adds_no_skew() {
        // Counts 2/1/0; the pod itself is not counted, so only a (2 - 0) is too skewed.
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        let canary = Pod {
            labels: labels(&[("app", "canary")]),
            ..pod(vec![hard(1, ZONE)])
        };
        assert_eq!(passing(&mut p, canary, &[0, 1, 2]), vec![1, 2]);
    }

    #[test]
    fn no_label_selector_selects_no_pod() {
        let mut p = zonal(&[("a", 5), ("b", 0)]);
        let unselective = pod(vec![TopologySpreadConstraint {
            label_selector: None,
            ..hard(1, ZONE)
        }]);
        assert_eq!(passing(&mut p, unselective, &[0, 1]), vec![0, 1]);
    }

    #[test]
    fn match_label_keys_narrow_the_selector_to_the_pods_values() {
        let mut p = zonal(&[("a", 0), ("b", 0)]);
        for _ in 0..2 {
            place(
                &mut p,
                0,
                "default",
                labels(&[("app", "web"), ("version", "v1")]),
            );
        }
        let versioned = |version: &str, keys: &[&str]| Pod {
            labels: labels(&[("app", "web"), ("version", version)]),
            ..pod(vec![TopologySpreadConstraint {
                match_label_keys: keys.iter().map(|k| k.to_string()).collect(),
                ..hard(1, ZONE)
            }])
        };
        // Without matchLabelKeys every app=web pod counts.
        assert_eq!(passing(&mut p, versioned("v2", &[]), &[0, 1]), vec![1]);
        // With it, only pods of the incoming pod's version.
        assert_eq!(
            passing(&mut p, versioned("v2", &["version"]), &[0, 1]),
            vec![0, 1]
        );
        assert_eq!(
            passing(&mut p, versioned("v1", &["version"]), &[0, 1]),
            vec![1]
        );
        // A key the pod lacks adds nothing.
        assert_eq!(
            passing(&mut p, versioned("v2", &["missing"]), &[0, 1]),
            vec![1]
        );
    }

    #[test]
    fn node_affinity_policy_honor_leaves_out_domains_the_pod_cannot_use() {
        // Zones a and b (ssd) hold one pod each; zone c (no ssd) is empty.
        let ssd = |name: &str, zone: &str| {
            let mut n = node(name, Some(zone));
            n.labels.insert("disk".into(), "ssd".into());
            n
        };
        let mut p = policy(vec![ssd("n0", "a"), ssd("n1", "b"), node("n2", Some("c"))]);
        place(&mut p, 0, "default", web());
        place(&mut p, 1, "default", web());
        let on_ssd = |policy: InclusionPolicy| Pod {
            node_selector: labels(&[("disk", "ssd")]),
            ..pod(vec![TopologySpreadConstraint {
                node_affinity_policy: policy,
                ..hard(1, ZONE)
            }])
        };
        // Honor: zone c is no domain of this pod, so the minimum is 1.
        assert_eq!(
            passing(&mut p, on_ssd(InclusionPolicy::Honor), &[0, 1, 2]),
            vec![0, 1, 2]
        );
        // Ignore: zone c counts with 0, so a and b are too skewed.
        assert_eq!(
            passing(&mut p, on_ssd(InclusionPolicy::Ignore), &[0, 1, 2]),
            vec![2]
        );
        // Required node affinity is honored the same way.
        let affine = Pod {
            node_affinity: Some(NodeAffinity {
                required: Some(vec![NodeSelectorTerm {
                    match_expressions: vec![Requirement {
                        key: ZONE.into(),
                        operator: Operator::In,
                        values: vec!["a".into(), "b".into()],
                    }],
                    match_fields: vec![],
                }]),
                preferred: vec![],
            }),
            ..pod(vec![hard(1, ZONE)])
        };
        assert_eq!(passing(&mut p, affine, &[0, 1]), vec![0, 1]);
    }

    #[test]
    fn node_taints_policy_honor_leaves_out_domains_of_untolerated_nodes() {
        let mut tainted = node("n2", Some("c"));
        tainted.taints = vec![Taint {
            key: "dedicated".into(),
            value: "batch".into(),
            effect: TaintEffect::NoSchedule,
        }];
        let mut p = policy(vec![node("n0", Some("a")), node("n1", Some("b")), tainted]);
        place(&mut p, 0, "default", web());
        place(&mut p, 1, "default", web());
        let with = |policy: InclusionPolicy, tolerations: Vec<Toleration>| Pod {
            tolerations,
            ..pod(vec![TopologySpreadConstraint {
                node_taints_policy: policy,
                ..hard(1, ZONE)
            }])
        };
        // Ignore (the default): the tainted zone counts with 0.
        assert_eq!(
            passing(&mut p, with(InclusionPolicy::Ignore, vec![]), &[0, 1]),
            Vec::<u32>::new()
        );
        // Honor: it does not, unless the pod tolerates the taint.
        assert_eq!(
            passing(&mut p, with(InclusionPolicy::Honor, vec![]), &[0, 1]),
            vec![0, 1]
        );
        let tolerate = vec![Toleration {
            key: "dedicated".into(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
            toleration_seconds: None,
        }];
        assert_eq!(
            passing(&mut p, with(InclusionPolicy::Honor, tolerate), &[0, 1]),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn prefer_no_schedule_taints_do_not_leave_domains_out() {
        let mut soft_tainted = node("n2", Some("c"));
        soft_tainted.taints = vec![Taint {
            key: "spot".into(),
            value: String::new(),
            effect: TaintEffect::PreferNoSchedule,
        }];
        let mut p = policy(vec![
            node("n0", Some("a")),
            node("n1", Some("b")),
            soft_tainted,
        ]);
        place(&mut p, 0, "default", web());
        place(&mut p, 1, "default", web());
        let honor = pod(vec![TopologySpreadConstraint {
            node_taints_policy: InclusionPolicy::Honor,
            ..hard(1, ZONE)
        }]);
        assert_eq!(passing(&mut p, honor, &[0, 1, 2]), vec![2]);
    }

    #[test]
    fn a_node_needs_every_hard_constraints_key_to_count() {
        // n0 and n1 in zone a (n0 holds a pod); n2 in zone b has no hostname label.
        let mut no_hostname = node("n2", Some("b"));
        no_hostname.labels.remove(HOSTNAME);
        let mut p = policy(vec![
            node("n0", Some("a")),
            node("n1", Some("a")),
            no_hostname,
        ]);
        place(&mut p, 0, "default", web());
        // With the zone constraint alone, zone b is a domain with 0 pods: a is too skewed.
        assert_eq!(
            passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1, 2]),
            vec![2]
        );
        // Adding a hostname constraint takes n2, and so zone b, out of every count: zone a is
        // the only zone; by hostname n0 holds 1 and n1 0.
        assert_eq!(
            rejected(
                &mut p,
                pod(vec![hard(1, ZONE), hard(1, HOSTNAME)]),
                &[0, 1, 2]
            ),
            vec![(0, MISMATCH.to_string()), (2, MISSING_LABEL.to_string())]
        );
    }

    #[test]
    fn placed_and_removed_pods_change_the_counts() {
        let mut p = zonal(&[("a", 0), ("b", 0)]);
        assert_eq!(
            passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1]),
            vec![0, 1]
        );
        let uid = place(&mut p, 0, "default", web());
        assert_eq!(passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1]), vec![1]);
        p.update(Change::PodRemoved(uid));
        assert_eq!(
            passing(&mut p, pod(vec![hard(1, ZONE)]), &[0, 1]),
            vec![0, 1]
        );
    }

    #[test]
    fn schedule_anyway_constraints_do_not_filter() {
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!(
            rejected(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1, 2]),
            vec![]
        );
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        // 3 domains weigh ln 5 = 1.609: raw 2 × 1.609 = 3.22 → 3, 1.61 → 2, 0;
        // normalized 100 × (3 + 0 - raw) / 3.
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1, 2]),
            vec![0, 33, 100]
        );
    }

    #[test]
    fn max_skew_waters_down_score_differences() {
        // maxSkew 3 adds 2 to every raw score: 5, 4, 2; 100 × (5 + 2 - raw) / 5.
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!(
            scores(&mut p, pod(vec![soft(3, ZONE)]), &[0, 1, 2]),
            vec![40, 60, 100]
        );
    }

    #[test]
    fn score_weights_count_only_the_domains_being_scored() {
        // Zone c's node was filtered out: 2 domains weigh ln 4 = 1.386: raw 2.77 → 3 and
        // 1.39 → 1; 100 × (3 + 1 - raw) / 3.
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1]),
            vec![33, 100]
        );
    }

    #[test]
    fn nodes_missing_a_soft_key_score_zero() {
        let mut p = zonal(&[("a", 2), ("b", 1), ("c", 0)]);
        p.update(Change::NodeSet(3, node("n3", None)));
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1, 2, 3]),
            vec![0, 33, 100, 0]
        );
    }

    #[test]
    fn hostname_constraints_score_each_node_by_its_own_pods() {
        let mut p = policy(vec![
            node("n0", Some("a")),
            node("n1", Some("a")),
            node("n2", Some("a")),
        ]);
        place(&mut p, 0, "default", web());
        place(&mut p, 0, "default", web());
        place(&mut p, 1, "default", web());
        // Three nodes scored weigh ln 5, as three zones do.
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, HOSTNAME)]), &[0, 1, 2]),
            vec![0, 33, 100]
        );
        // Two nodes scored weigh ln 4.
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, HOSTNAME)]), &[0, 1]),
            vec![33, 100]
        );
    }

    #[test]
    fn several_soft_constraints_add_up() {
        // Zone: 2 domains, ln 4 = 1.386; hostname: 3 nodes, ln 5 = 1.609.
        // n0 (zone a, 1 pod): 1.386 + 1.609 = 3.00 → 3; n1 (zone a, empty): 1.386 → 1;
        // n2 (zone b, empty): 0. Normalized 100 × (3 + 0 - raw) / 3.
        let mut p = policy(vec![
            node("n0", Some("a")),
            node("n1", Some("a")),
            node("n2", Some("b")),
        ]);
        place(&mut p, 0, "default", web());
        assert_eq!(
            scores(
                &mut p,
                pod(vec![soft(1, ZONE), soft(1, HOSTNAME)]),
                &[0, 1, 2]
            ),
            vec![0, 66, 100]
        );
    }

    #[test]
    fn evenly_spread_domains_all_score_100() {
        let mut p = zonal(&[("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1, 2]),
            vec![100, 100, 100]
        );
        let mut p = zonal(&[("a", 0), ("b", 0)]);
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1]),
            vec![100, 100]
        );
    }

    #[test]
    fn soft_scores_count_only_the_pods_namespace_and_selector() {
        let mut p = zonal(&[("a", 0), ("b", 0)]);
        for _ in 0..3 {
            place(&mut p, 0, "other", web());
            place(&mut p, 0, "default", labels(&[("app", "db")]));
        }
        place(&mut p, 1, "default", web());
        assert_eq!(
            scores(&mut p, pod(vec![soft(1, ZONE)]), &[0, 1]),
            vec![100, 0]
        );
    }
}
