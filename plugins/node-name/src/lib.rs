//! NodeName, as Kubernetes has it: a pod whose `spec.nodeName` is set fits only that node.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct NodeName {
    nodes: NodeTable,
    wanted: Option<String>,
}

impl SchedulerPolicy for NodeName {
    const NAME: &'static str = "node-name";
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
        self.wanted = pod.node_name.filter(|n| !n.is_empty());
        Ok(if self.wanted.is_some() {
            Prepared::Proceed
        } else {
            Prepared::Skip
        })
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        let Some(wanted) = &self.wanted else {
            return Ok(());
        };
        for &index in candidates {
            if self.nodes.get(index).is_none_or(|s| &s.node.name != wanted) {
                rejections.reject(index, "node(s) didn't match the requested node name");
            }
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(NodeName);
