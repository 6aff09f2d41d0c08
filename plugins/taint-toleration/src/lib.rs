//! TaintToleration, as Kubernetes has it: a node with a NoSchedule or NoExecute taint the pod
//! does not tolerate is filtered out (`node(s) had untolerated taint {key: value}`); nodes are
//! scored down by their untolerated PreferNoSchedule taints (fewest scores 100).

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct TaintToleration {
    nodes: NodeTable,
    tolerations: Vec<Toleration>,
}

impl SchedulerPolicy for TaintToleration {
    const NAME: &'static str = "taint-toleration";
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
        self.tolerations = pod.tolerations;
        Ok(Prepared::Proceed)
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        for &index in candidates {
            let Some(state) = self.nodes.get(index) else {
                continue;
            };
            let untolerated = state.node.taints.iter().find(|taint| {
                matches!(
                    taint.effect,
                    TaintEffect::NoSchedule | TaintEffect::NoExecute
                ) && !tolerated(&self.tolerations, taint)
            });
            if let Some(taint) = untolerated {
                rejections.reject(
                    index,
                    &format!(
                        "node(s) had untolerated taint {{{}: {}}}",
                        taint.key, taint.value
                    ),
                );
            }
        }
        Ok(())
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        // Only tolerations that cover PreferNoSchedule count here, as in Kubernetes.
        let prefer: Vec<&Toleration> = self
            .tolerations
            .iter()
            .filter(|t| t.effect.is_none_or(|e| e == TaintEffect::PreferNoSchedule))
            .collect();
        let start = scores.len();
        for &index in candidates {
            let count = self.nodes.get(index).map_or(0, |s| {
                s.node
                    .taints
                    .iter()
                    .filter(|taint| {
                        taint.effect == TaintEffect::PreferNoSchedule
                            && !prefer.iter().any(|t| t.tolerates(taint))
                    })
                    .count()
            });
            scores.push(count as i64);
        }
        normalize(&mut scores[start..], true);
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(TaintToleration);
