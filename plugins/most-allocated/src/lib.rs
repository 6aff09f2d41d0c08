//! MostAllocated, as Kubernetes' NodeResourcesFit scores it: the share of a node's cpu and
//! memory in use once the pod is placed, averaged with equal weights. Packs pods onto the
//! fullest nodes that still fit them.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct MostAllocated {
    nodes: NodeTable,
    requests: Resources,
}

impl SchedulerPolicy for MostAllocated {
    const NAME: &'static str = "most-allocated";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter: false,
            score: true,
            wants_pods: true,
        }
    }

    fn update(&mut self, change: Change) {
        self.nodes.apply(change);
    }

    fn prepare(&mut self, pod: Pod) -> Result<Prepared, String> {
        self.requests = pod.requests;
        Ok(Prepared::Proceed)
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        for &index in candidates {
            let score = self.nodes.get(index).map_or(0, |state| {
                let per = state.use_with(&self.requests).map(|(requested, capacity)| {
                    if capacity == 0 {
                        0
                    } else {
                        requested.min(capacity) * 100 / capacity
                    }
                });
                per.iter().sum::<i64>() / per.len() as i64
            });
            scores.push(score);
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(MostAllocated);
