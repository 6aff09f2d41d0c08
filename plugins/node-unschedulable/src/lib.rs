//! NodeUnschedulable, as Kubernetes has it: a cordoned node (`spec.unschedulable`) takes only
//! pods that tolerate the `node.kubernetes.io/unschedulable:NoSchedule` taint.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct NodeUnschedulable {
    nodes: NodeTable,
    tolerates: bool,
}

impl SchedulerPolicy for NodeUnschedulable {
    const NAME: &'static str = "node-unschedulable";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter: true,
            score: false,
            wants_pods: false,
        }
    }

    fn update(&mut self, change: Change) {
        self.nodes.apply(change);
    }

    fn prepare(&mut self, pod: Pod) -> Result<Prepared, String> {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        };
        self.tolerates = tolerated(&pod.tolerations, &taint);
        Ok(if self.tolerates {
            Prepared::Skip
        } else {
            Prepared::Proceed
        })
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        for &index in candidates {
            if self.nodes.get(index).is_some_and(|s| s.node.unschedulable) {
                rejections.reject(index, "node(s) were unschedulable");
            }
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(NodeUnschedulable);
