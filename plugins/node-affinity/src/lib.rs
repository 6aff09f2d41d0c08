//! NodeAffinity, as Kubernetes has it: `nodeSelector` and required node affinity filter nodes
//! (`node(s) didn't match Pod's node affinity/selector`); preferred terms score them by the sum
//! of the weights of the terms a node matches, normalized to 0..=100.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct NodeAffinityPolicy {
    nodes: NodeTable,
    pod: Pod,
}

impl SchedulerPolicy for NodeAffinityPolicy {
    const NAME: &'static str = "node-affinity";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter: true,
            score: true,
            wants_pods: false,
        }
    }

    fn update(&mut self, change: Change) {
        self.nodes.apply(change);
    }

    fn prepare(&mut self, pod: Pod) -> Result<Prepared, String> {
        let concerned = !pod.node_selector.is_empty()
            || pod
                .node_affinity
                .as_ref()
                .is_some_and(|a| a.required.is_some() || !a.preferred.is_empty());
        self.pod = pod;
        Ok(if concerned {
            Prepared::Proceed
        } else {
            Prepared::Skip
        })
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        for &index in candidates {
            if self
                .nodes
                .get(index)
                .is_some_and(|s| !self.pod.node_selection_matches(&s.node))
            {
                rejections.reject(index, "node(s) didn't match Pod's node affinity/selector");
            }
        }
        Ok(())
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        let preferred = self
            .pod
            .node_affinity
            .as_ref()
            .map(|a| a.preferred.as_slice())
            .unwrap_or(&[]);
        let start = scores.len();
        for &index in candidates {
            let sum = self.nodes.get(index).map_or(0, |s| {
                preferred
                    .iter()
                    .filter(|term| term.weight != 0 && term.preference.matches(&s.node))
                    .map(|term| i64::from(term.weight))
                    .sum()
            });
            scores.push(sum);
        }
        normalize(&mut scores[start..], false);
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(NodeAffinityPolicy);
