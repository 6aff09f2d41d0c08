//! BalancedAllocation, as Kubernetes has it: once the pod is placed, the fractions of a node's
//! cpu and memory in use should be close; the score is `(1 - standard deviation) * 100`. It
//! counts actual requests (not scoring defaults), and skips pods that request neither.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct BalancedAllocation {
    nodes: NodeTable,
    requests: Resources,
}

impl SchedulerPolicy for BalancedAllocation {
    const NAME: &'static str = "balanced-allocation";
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
        Ok(
            if self.requests.milli_cpu == 0 && self.requests.memory == 0 {
                Prepared::Skip
            } else {
                Prepared::Proceed
            },
        )
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        for &index in candidates {
            let score = self.nodes.get(index).map_or(0, |state| {
                let node = &state.node.allocatable;
                let fraction = |requested: i64, capacity: i64| {
                    if capacity == 0 {
                        1.0
                    } else {
                        (requested as f64 / capacity as f64).min(1.0)
                    }
                };
                let fractions = [
                    fraction(
                        state.requested.milli_cpu + self.requests.milli_cpu,
                        node.milli_cpu,
                    ),
                    fraction(state.requested.memory + self.requests.memory, node.memory),
                ];
                // With two resources the standard deviation is half their difference.
                let deviation = (fractions[0] - fractions[1]).abs() / 2.0;
                ((1.0 - deviation) * 100.0) as i64
            });
            scores.push(score);
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(BalancedAllocation);
