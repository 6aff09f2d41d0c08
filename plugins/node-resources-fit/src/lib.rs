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

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1 << 30;
    const GPU: &str = "example.com/gpu";

    fn resources(milli_cpu: i64, memory: i64, pods: i64, scalar: &[(&str, i64)]) -> Resources {
        Resources {
            milli_cpu,
            memory,
            pods,
            scalar: scalar.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    fn node(name: &str, allocatable: Resources) -> Node {
        Node {
            name: name.into(),
            allocatable,
            ready: true,
            ..Node::default()
        }
    }

    /// A pod requesting `requests` (its `pods` is 1, as the host sends it).
    fn pod(milli_cpu: i64, memory: i64, scalar: &[(&str, i64)]) -> Pod {
        Pod {
            name: "web".into(),
            namespace: "default".into(),
            requests: resources(milli_cpu, memory, 1, scalar),
            ..Pod::default()
        }
    }

    fn placed(uid: &str, node: u32, milli_cpu: i64, memory: i64, scalar: &[(&str, i64)]) -> Change {
        Change::PodPlaced(PlacedPod {
            uid: uid.into(),
            namespace: "default".into(),
            labels: Labels::new(),
            node,
            requests: resources(milli_cpu, memory, 1, scalar),
        })
    }

    /// A policy with the nodes at indexes 0, 1, 2…
    fn policy(nodes: Vec<Node>) -> NodeResourcesFit {
        let mut policy = NodeResourcesFit::new("{}").unwrap();
        for (index, node) in nodes.into_iter().enumerate() {
            policy.update(Change::NodeSet(index as u32, node));
        }
        policy
    }

    /// Prepares `pod` and filters `candidates`: the rejections with their reasons.
    fn rejected(policy: &mut NodeResourcesFit, pod: Pod, candidates: &[u32]) -> Vec<(u32, String)> {
        assert_eq!(policy.prepare(pod).unwrap(), Prepared::Proceed);
        let mut rejections = Rejections::default();
        policy.filter(candidates, &mut rejections).unwrap();
        rejections
            .rejected
            .iter()
            .map(|&(node, reason)| (node, rejections.reasons[reason as usize].clone()))
            .collect()
    }

    fn small() -> Node {
        node("small", resources(4000, 8 * GIB, 110, &[]))
    }

    fn reason(node: u32, text: &str) -> (u32, String) {
        (node, text.to_string())
    }

    #[test]
    fn it_filters_and_wants_pods() {
        let c = policy(vec![]).capabilities();
        assert!(c.filter);
        assert!(!c.score);
        assert!(c.wants_pods);
    }

    #[test]
    fn a_pod_fits_exactly_what_is_allocatable() {
        let mut p = policy(vec![small()]);
        assert_eq!(rejected(&mut p, pod(4000, 8 * GIB, &[]), &[0]), vec![]);
    }

    #[test]
    fn too_much_cpu_is_insufficient_cpu() {
        let mut p = policy(vec![small()]);
        assert_eq!(
            rejected(&mut p, pod(4001, GIB, &[]), &[0]),
            vec![reason(0, "Insufficient cpu")]
        );
    }

    #[test]
    fn too_much_memory_is_insufficient_memory() {
        let mut p = policy(vec![small()]);
        assert_eq!(
            rejected(&mut p, pod(100, 8 * GIB + 1, &[]), &[0]),
            vec![reason(0, "Insufficient memory")]
        );
    }

    #[test]
    fn a_full_node_has_too_many_pods_even_for_a_pod_requesting_nothing() {
        let mut p = policy(vec![node("tiny", resources(4000, 8 * GIB, 2, &[]))]);
        p.update(placed("a", 0, 0, 0, &[]));
        assert_eq!(rejected(&mut p, pod(0, 0, &[]), &[0]), vec![]);
        p.update(placed("b", 0, 0, 0, &[]));
        assert_eq!(
            rejected(&mut p, pod(0, 0, &[]), &[0]),
            vec![reason(0, "Too many pods")]
        );
    }

    #[test]
    fn a_node_allowing_no_pods_takes_none() {
        let mut p = policy(vec![node("zero", resources(4000, 8 * GIB, 0, &[]))]);
        assert_eq!(
            rejected(&mut p, pod(0, 0, &[]), &[0]),
            vec![reason(0, "Too many pods")]
        );
    }

    #[test]
    fn extended_resources_are_checked_by_name() {
        let mut p = policy(vec![
            node("gpu", resources(4000, 8 * GIB, 110, &[(GPU, 2)])),
            small(),
        ]);
        assert_eq!(
            rejected(&mut p, pod(100, GIB, &[(GPU, 2)]), &[0, 1]),
            vec![reason(1, "Insufficient example.com/gpu")],
            "a node without the resource has none of it"
        );
        p.update(placed("a", 0, 0, 0, &[(GPU, 1)]));
        assert_eq!(
            rejected(&mut p, pod(100, GIB, &[(GPU, 2)]), &[0]),
            vec![reason(0, "Insufficient example.com/gpu")]
        );
        assert_eq!(rejected(&mut p, pod(100, GIB, &[(GPU, 1)]), &[0]), vec![]);
    }

    #[test]
    fn ephemeral_storage_is_checked_like_other_resources() {
        let mut p = policy(vec![node(
            "disk",
            resources(4000, 8 * GIB, 110, &[("ephemeral-storage", 10 * GIB)]),
        )]);
        assert_eq!(
            rejected(
                &mut p,
                pod(100, GIB, &[("ephemeral-storage", 11 * GIB)]),
                &[0]
            ),
            vec![reason(0, "Insufficient ephemeral-storage")]
        );
    }

    #[test]
    fn a_zero_request_of_a_resource_the_node_lacks_is_no_request() {
        let mut p = policy(vec![small()]);
        assert_eq!(rejected(&mut p, pod(100, GIB, &[(GPU, 0)]), &[0]), vec![]);
    }

    #[test]
    fn every_shortfall_of_a_node_is_its_own_reason() {
        let mut p = policy(vec![node("full", resources(1000, GIB, 1, &[(GPU, 0)]))]);
        p.update(placed("a", 0, 500, GIB / 2, &[]));
        assert_eq!(
            rejected(&mut p, pod(1000, GIB, &[(GPU, 1)]), &[0]),
            vec![
                reason(0, "Too many pods"),
                reason(0, "Insufficient cpu"),
                reason(0, "Insufficient memory"),
                reason(0, "Insufficient example.com/gpu"),
            ]
        );
    }

    #[test]
    fn a_reason_shared_by_several_nodes_is_stored_once() {
        let mut p = policy(vec![small(), small(), small()]);
        p.prepare(pod(6000, GIB, &[])).unwrap();
        let mut rejections = Rejections::default();
        p.filter(&[0, 1, 2], &mut rejections).unwrap();
        assert_eq!(rejections.reasons, vec!["Insufficient cpu".to_string()]);
        assert_eq!(rejections.rejected, vec![(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn placed_pods_use_up_the_node() {
        let mut p = policy(vec![small(), small()]);
        p.update(placed("a", 0, 3000, 6 * GIB, &[]));
        assert_eq!(
            rejected(&mut p, pod(1500, 3 * GIB, &[]), &[0, 1]),
            vec![
                reason(0, "Insufficient cpu"),
                reason(0, "Insufficient memory")
            ]
        );
        assert_eq!(rejected(&mut p, pod(1000, 2 * GIB, &[]), &[0]), vec![]);
    }

    #[test]
    fn removed_pods_release_what_they_used() {
        let mut p = policy(vec![small()]);
        p.update(placed("a", 0, 3000, GIB, &[]));
        p.update(placed("b", 0, 500, GIB, &[]));
        assert_eq!(
            rejected(&mut p, pod(1000, GIB, &[]), &[0]),
            vec![reason(0, "Insufficient cpu")]
        );
        p.update(Change::PodRemoved("a".into()));
        assert_eq!(rejected(&mut p, pod(1000, GIB, &[]), &[0]), vec![]);
        // Removing an unknown pod changes nothing.
        p.update(Change::PodRemoved("never-placed".into()));
        assert_eq!(
            rejected(&mut p, pod(3501, GIB, &[]), &[0]),
            vec![reason(0, "Insufficient cpu")]
        );
    }

    #[test]
    fn a_pod_placed_again_counts_once_on_its_latest_node() {
        let mut p = policy(vec![small(), small()]);
        p.update(placed("a", 0, 3000, GIB, &[]));
        p.update(placed("a", 1, 3000, GIB, &[]));
        assert_eq!(
            rejected(&mut p, pod(2000, GIB, &[]), &[0, 1]),
            vec![reason(1, "Insufficient cpu")]
        );
    }

    #[test]
    fn a_resized_node_keeps_its_pods() {
        let mut p = policy(vec![small()]);
        p.update(placed("a", 0, 3000, GIB, &[]));
        assert_eq!(
            rejected(&mut p, pod(2000, GIB, &[]), &[0]),
            vec![reason(0, "Insufficient cpu")]
        );
        p.update(Change::NodeSet(
            0,
            node("small", resources(8000, 8 * GIB, 110, &[])),
        ));
        assert_eq!(rejected(&mut p, pod(2000, GIB, &[]), &[0]), vec![]);
    }

    #[test]
    fn zero_requests_skip_the_cpu_and_memory_checks() {
        // An overcommitted node (allocatable shrank under its pods) still takes a pod that
        // requests no cpu or memory, as long as it has room for one more pod.
        let mut p = policy(vec![small()]);
        p.update(placed("a", 0, 5000, 9 * GIB, &[]));
        assert_eq!(rejected(&mut p, pod(0, 0, &[]), &[0]), vec![]);
        assert_eq!(
            rejected(&mut p, pod(0, 1, &[]), &[0]),
            vec![reason(0, "Insufficient memory")]
        );
        assert_eq!(
            rejected(&mut p, pod(1, 0, &[]), &[0]),
            vec![reason(0, "Insufficient cpu")]
        );
    }

    #[test]
    fn only_the_candidates_given_are_judged() {
        let mut p = policy(vec![
            small(),
            node("big", resources(16000, 64 * GIB, 110, &[])),
        ]);
        assert_eq!(rejected(&mut p, pod(8000, GIB, &[]), &[1]), vec![]);
        assert_eq!(
            rejected(&mut p, pod(8000, GIB, &[]), &[0, 1]),
            vec![reason(0, "Insufficient cpu")]
        );
    }
}
