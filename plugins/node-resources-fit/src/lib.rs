//! NodeResourcesFit's filter, as Kubernetes has it: a node fits a pod when its allocatable
//! resources cover the requests already placed on it plus the pod's. Each shortfall is its own
//! reason (`Too many pods`, `Insufficient cpu`, `Insufficient memory`, `Insufficient <name>`).

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct NodeResourcesFit {
    nodes: NodeTable,
    requests: Resources,
}

impl SchedulerPolicy for NodeResourcesFit {
    const NAME: &'static str = "node-resources-fit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter: true,
            score: false,
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

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        let want = &self.requests;
        for &index in candidates {
            let Some(state) = self.nodes.get(index) else {
                continue;
            };
            let have = &state.node.allocatable;
            let used = &state.requested;
            if used.pods + 1 > have.pods {
                rejections.reject(index, "Too many pods");
            }
            if want.milli_cpu > 0 && want.milli_cpu > have.milli_cpu - used.milli_cpu {
                rejections.reject(index, "Insufficient cpu");
            }
            if want.memory > 0 && want.memory > have.memory - used.memory {
                rejections.reject(index, "Insufficient memory");
            }
            for (name, amount) in &want.scalar {
                if *amount > 0 && *amount > have.scalar(name) - used.scalar(name) {
                    rejections.reject(index, &format!("Insufficient {name}"));
                }
            }
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(NodeResourcesFit);
