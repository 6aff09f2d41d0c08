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
                // Resources the node has none of are left out, as in Kubernetes.
                let fractions: Vec<f64> = [
                    (
                        state.requested.milli_cpu + self.requests.milli_cpu,
                        node.milli_cpu,
                    ),
                    (state.requested.memory + self.requests.memory, node.memory),
                ]
                .into_iter()
                .filter(|&(_, capacity)| capacity != 0)
                .map(|(requested, capacity)| (requested as f64 / capacity as f64).min(1.0))
                .collect();
                // With two resources the standard deviation is half their difference; with
                // fewer it is 0.
                let deviation = match fractions.as_slice() {
                    [cpu, memory] => (cpu - memory).abs() / 2.0,
                    _ => 0.0,
                };
                ((1.0 - deviation) * 100.0) as i64
            });
            scores.push(score);
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(BalancedAllocation);

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1 << 20;
    const GIB: i64 = 1 << 30;

    fn resources(milli_cpu: i64, memory: i64) -> Resources {
        Resources {
            milli_cpu,
            memory,
            pods: 1,
            scalar: vec![],
        }
    }

    /// A policy with nodes of (cpu, memory) allocatable at indexes 0, 1, 2…
    fn policy(nodes: &[(i64, i64)]) -> BalancedAllocation {
        let mut policy = BalancedAllocation::new("{}").unwrap();
        for (index, &(milli_cpu, memory)) in nodes.iter().enumerate() {
            policy.update(Change::NodeSet(
                index as u32,
                Node {
                    name: format!("n{index}"),
                    allocatable: Resources {
                        pods: 110,
                        ..resources(milli_cpu, memory)
                    },
                    ready: true,
                    ..Node::default()
                },
            ));
        }
        policy
    }

    fn place(policy: &mut BalancedAllocation, uid: &str, node: u32, milli_cpu: i64, memory: i64) {
        policy.update(Change::PodPlaced(PlacedPod {
            uid: uid.into(),
            namespace: "default".into(),
            labels: Labels::new(),
            node,
            requests: resources(milli_cpu, memory),
        }));
    }

    fn pod(requests: Resources) -> Pod {
        Pod {
            name: "web".into(),
            namespace: "default".into(),
            requests,
            ..Pod::default()
        }
    }

    /// Prepares a pod requesting (cpu, memory) and scores `candidates`.
    fn scores(
        policy: &mut BalancedAllocation,
        milli_cpu: i64,
        memory: i64,
        candidates: &[u32],
    ) -> Vec<i64> {
        assert_eq!(
            policy.prepare(pod(resources(milli_cpu, memory))).unwrap(),
            Prepared::Proceed
        );
        let mut scores = Vec::new();
        policy.score(candidates, &mut scores).unwrap();
        scores
    }

    #[test]
    fn it_scores_and_wants_pods() {
        let c = policy(&[]).capabilities();
        assert!(!c.filter);
        assert!(c.score);
        assert!(c.wants_pods);
    }

    #[test]
    fn pods_requesting_neither_cpu_nor_memory_are_skipped() {
        let mut p = policy(&[(4000, 8 * GIB)]);
        assert_eq!(p.prepare(pod(resources(0, 0))).unwrap(), Prepared::Skip);
        let gpu_only = Resources {
            scalar: vec![("example.com/gpu".into(), 1)],
            ..resources(0, 0)
        };
        assert_eq!(p.prepare(pod(gpu_only)).unwrap(), Prepared::Skip);
    }

    #[test]
    fn equal_cpu_and_memory_shares_score_100() {
        let mut p = policy(&[(4000, 8 * GIB)]);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![100]);
    }

    #[test]
    fn the_score_is_one_minus_half_the_difference_of_the_shares() {
        // A cpu-only pod already placed: cpu 2000/4000 = 0.5, memory 2/8 = 0.25;
        // (1 - 0.25 / 2) * 100 = 87.5, truncated.
        let mut p = policy(&[(4000, 8 * GIB)]);
        place(&mut p, "a", 0, 1000, 0);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![87]);
        // 1000/3000 and 2/7: (1 - |1/3 - 2/7| / 2) * 100 = 97.6.
        let mut p = policy(&[(3000, 7 * GIB)]);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![97]);
    }

    #[test]
    fn a_pod_requesting_only_cpu_is_scored() {
        // cpu 0.25, memory 0: (1 - 0.125) * 100.
        let mut p = policy(&[(4000, 8 * GIB)]);
        assert_eq!(scores(&mut p, 1000, 0, &[0]), vec![87]);
    }

    #[test]
    fn actual_requests_count_not_the_scoring_defaults() {
        // A placed pod without requests adds nothing: 500/1000 and 512MiB/1GiB balance.
        let mut p = policy(&[(1000, GIB)]);
        place(&mut p, "a", 0, 0, 0);
        assert_eq!(scores(&mut p, 500, 512 * MIB, &[0]), vec![100]);
    }

    #[test]
    fn shares_are_capped_at_one() {
        // cpu 2000/1000 counts as 1, memory 0.5: (1 - 0.25) * 100.
        let mut p = policy(&[(1000, GIB)]);
        assert_eq!(scores(&mut p, 2000, 512 * MIB, &[0]), vec![75]);
    }

    #[test]
    fn better_balanced_nodes_score_higher() {
        let mut p = policy(&[(4000, 8 * GIB), (4000, 8 * GIB)]);
        place(&mut p, "a", 0, 2000, 0);
        // Node 0: cpu 0.75, memory 0.25 → 75; node 1: 0.25 and 0.25 → 100.
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0, 1]), vec![75, 100]);
    }

    #[test]
    fn resources_the_node_has_none_of_are_left_out() {
        // Kubernetes skips a resource whose allocatable is 0; one share alone deviates by 0.
        let mut p = policy(&[(4000, 0), (0, 0)]);
        assert_eq!(scores(&mut p, 1000, GIB, &[0, 1]), vec![100, 100]);
    }

    #[test]
    fn removed_pods_no_longer_unbalance_the_node() {
        let mut p = policy(&[(4000, 8 * GIB)]);
        place(&mut p, "a", 0, 2000, 0);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![75]);
        p.update(Change::PodRemoved("a".into()));
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![100]);
    }
}
