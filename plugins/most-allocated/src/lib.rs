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
                // Resources the node has none of are left out of the average, as in Kubernetes.
                let per: Vec<i64> = state
                    .use_with(&self.requests)
                    .into_iter()
                    .filter(|&(_, capacity)| capacity != 0)
                    .map(|(requested, capacity)| requested.min(capacity) * 100 / capacity)
                    .collect();
                if per.is_empty() {
                    0
                } else {
                    per.iter().sum::<i64>() / per.len() as i64
                }
            });
            scores.push(score);
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(MostAllocated);

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
    fn policy(nodes: &[(i64, i64)]) -> MostAllocated {
        let mut policy = MostAllocated::new("{}").unwrap();
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

    fn place(policy: &mut MostAllocated, uid: &str, node: u32, milli_cpu: i64, memory: i64) {
        policy.update(Change::PodPlaced(PlacedPod {
            uid: uid.into(),
            namespace: "default".into(),
            labels: Labels::new(),
            node,
            requests: resources(milli_cpu, memory),
        }));
    }

    /// Prepares a pod requesting (cpu, memory) and scores `candidates`.
    fn scores(
        policy: &mut MostAllocated,
        milli_cpu: i64,
        memory: i64,
        candidates: &[u32],
    ) -> Vec<i64> {
        let pod = Pod {
            name: "web".into(),
            namespace: "default".into(),
            requests: resources(milli_cpu, memory),
            ..Pod::default()
        };
        assert_eq!(policy.prepare(pod).unwrap(), Prepared::Proceed);
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
    fn the_score_is_the_used_share_once_the_pod_is_placed() {
        // 4000m/8GiB with 1000m/2GiB placed, plus 1000m/2GiB: half of each is used.
        let mut p = policy(&[(4000, 8 * GIB)]);
        place(&mut p, "a", 0, 1000, 2 * GIB);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![50]);
    }

    #[test]
    fn cpu_and_memory_shares_are_averaged_and_truncated() {
        // cpu 1000 * 100 / 4000 = 25; memory 1 GiB * 100 / 8 GiB = 12 (12.5); (25 + 12) / 2 = 18.
        let mut p = policy(&[(4000, 8 * GIB)]);
        assert_eq!(scores(&mut p, 1000, GIB, &[0]), vec![18]);
    }

    #[test]
    fn fuller_nodes_score_higher() {
        let mut p = policy(&[(4000, 8 * GIB), (4000, 8 * GIB), (4000, 8 * GIB)]);
        place(&mut p, "a", 1, 2000, 4 * GIB);
        place(&mut p, "b", 2, 3000, 6 * GIB);
        // Shares used: 25/25, 75/75, 100/100.
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0, 1, 2]), vec![25, 75, 100]);
    }

    #[test]
    fn a_pod_without_requests_counts_as_100m_and_200mib() {
        // 1000m/2000MiB: 100 / 1000 = 10 and 200 / 2000 = 10.
        let mut p = policy(&[(1000, 2000 * MIB)]);
        assert_eq!(scores(&mut p, 0, 0, &[0]), vec![10]);
        // Only the missing request is defaulted: cpu 50, memory 10.
        assert_eq!(scores(&mut p, 500, 0, &[0]), vec![30]);
    }

    #[test]
    fn placed_pods_without_requests_count_the_defaults_too() {
        // Placed 100m/200MiB (defaults) plus the pod's 100m/200MiB of 1000m/2000MiB: 20 used.
        let mut p = policy(&[(1000, 2000 * MIB)]);
        place(&mut p, "a", 0, 0, 0);
        assert_eq!(scores(&mut p, 100, 200 * MIB, &[0]), vec![20]);
    }

    #[test]
    fn an_overcommitted_resource_counts_as_full() {
        // cpu 1000 + 500 of 1000 → 100; memory 200MiB (default) + 1GiB of 8GiB → 14.
        let mut p = policy(&[(1000, 8 * GIB)]);
        place(&mut p, "a", 0, 1000, 0);
        assert_eq!(scores(&mut p, 500, GIB, &[0]), vec![(100 + 14) / 2]);
    }

    #[test]
    fn resources_the_node_has_none_of_are_left_out() {
        // Kubernetes skips a resource whose allocatable is 0 instead of scoring it 0.
        let mut p = policy(&[(4000, 0), (0, 0)]);
        assert_eq!(scores(&mut p, 1000, GIB, &[0, 1]), vec![25, 0]);
    }

    #[test]
    fn removed_pods_free_their_share() {
        let mut p = policy(&[(4000, 8 * GIB)]);
        place(&mut p, "a", 0, 2000, 4 * GIB);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![75]);
        p.update(Change::PodRemoved("a".into()));
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0]), vec![25]);
    }

    #[test]
    fn scores_are_not_normalized() {
        // Two half-full nodes both score 50, not 100.
        let mut p = policy(&[(4000, 8 * GIB), (2000, 4 * GIB)]);
        place(&mut p, "a", 0, 1000, 2 * GIB);
        assert_eq!(scores(&mut p, 1000, 2 * GIB, &[0, 1]), vec![50, 50]);
    }
}
