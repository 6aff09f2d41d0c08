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
//! - `ScheduleAnyway` constraints score: fewer matching pods in a node's domains scores higher,
//!   each constraint weighted by `ln(domains + 2)`, normalized so the best node scores 100.

use std::collections::HashMap;

use flotilla_sdk::scheduling::*;

const MISMATCH: &str = "node(s) didn't match pod topology spread constraints";
const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// One constraint, prepared for the current pod.
#[derive(Debug)]
struct Prepared1 {
    constraint: TopologySpreadConstraint,
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
            let matching = match &selector {
                Some(selector) => self
                    .nodes
                    .pods_on(index)
                    .filter(|p| p.namespace == pod.namespace && selector.matches(&p.labels))
                    .count() as i64,
                None => 0,
            };
            *counts.entry(domain).or_default() += matching;
        }
        let self_match = selector.as_ref().is_some_and(|s| s.matches(&pod.labels)) as i64;
        Prepared1 {
            constraint: constraint.clone(),
            counts,
            self_match,
        }
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
        // Raw scores: lower is better; nodes missing a key are ignored (score 0 at the end).
        let raw: Vec<Option<f64>> = candidates
            .iter()
            .map(|&index| {
                let state = self.nodes.get(index)?;
                let mut total = 0.0;
                for c in &self.soft {
                    let domain = state.node.labels.get(&c.constraint.topology_key)?;
                    let count = c.counts.get(domain).copied().unwrap_or(0);
                    let weight = ((c.counts.len() + 2) as f64).ln();
                    total += (count + i64::from(c.constraint.max_skew) - 1) as f64 * weight;
                }
                Some(total)
            })
            .collect();
        let present = raw.iter().flatten();
        let max = present.clone().copied().fold(f64::MIN, f64::max);
        let min = present.copied().fold(f64::MAX, f64::min);
        for value in raw {
            scores.push(match value {
                None => 0,
                Some(_) if max <= 0.0 => 100,
                Some(v) => (100.0 * (max + min - v) / max) as i64,
            });
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(PodTopologySpread);
