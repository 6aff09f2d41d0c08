//! LeastAllocated, as Kubernetes' NodeResourcesFit scores it: the share of a node's cpu and
//! memory left free once the pod is placed, averaged with equal weights. Spreads pods.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct LeastAllocated {
    nodes: NodeTable,
    requests: Resources,
}

impl SchedulerPolicy for LeastAllocated {
    const NAME: &'static str = "least-allocated";
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
                    if capacity == 0 || requested > capacity {
                        0
                    } else {
                        (capacity - requested) * 100 / capacity
                    }
                });
                per.iter().sum::<i64>() / per.len() as i64
            });
            scores.push(score);
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(LeastAllocated);
