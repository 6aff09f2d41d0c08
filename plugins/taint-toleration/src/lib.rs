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

#[cfg(test)]
mod tests {
    use super::*;
    use TaintEffect::*;
    use TolerationOperator::*;

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    fn toleration(
        key: &str,
        operator: TolerationOperator,
        value: &str,
        effect: Option<TaintEffect>,
    ) -> Toleration {
        Toleration {
            key: key.into(),
            operator,
            value: value.into(),
            effect,
            toleration_seconds: None,
        }
    }

    /// A policy with nodes at indexes 0, 1, 2… carrying `taints`.
    fn policy(taints: Vec<Vec<Taint>>) -> TaintToleration {
        let mut policy = TaintToleration::new("{}").unwrap();
        for (index, taints) in taints.into_iter().enumerate() {
            policy.update(Change::NodeSet(
                index as u32,
                Node {
                    name: format!("n{index}"),
                    taints,
                    ready: true,
                    ..Node::default()
                },
            ));
        }
        policy
    }

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            name: "web".into(),
            namespace: "default".into(),
            tolerations,
            ..Pod::default()
        }
    }

    fn rejected(
        policy: &mut TaintToleration,
        tolerations: Vec<Toleration>,
        candidates: &[u32],
    ) -> Vec<(u32, String)> {
        assert_eq!(policy.prepare(pod(tolerations)).unwrap(), Prepared::Proceed);
        let mut rejections = Rejections::default();
        policy.filter(candidates, &mut rejections).unwrap();
        rejections
            .rejected
            .iter()
            .map(|&(node, reason)| (node, rejections.reasons[reason as usize].clone()))
            .collect()
    }

    fn scores(
        policy: &mut TaintToleration,
        tolerations: Vec<Toleration>,
        candidates: &[u32],
    ) -> Vec<i64> {
        assert_eq!(policy.prepare(pod(tolerations)).unwrap(), Prepared::Proceed);
        let mut scores = Vec::new();
        policy.score(candidates, &mut scores).unwrap();
        scores
    }

    fn reason(node: u32, text: &str) -> (u32, String) {
        (node, text.to_string())
    }

    #[test]
    fn it_filters_and_scores() {
        let c = policy(vec![]).capabilities();
        assert!(c.filter);
        assert!(c.score);
        assert!(!c.wants_pods);
    }

    #[test]
    fn untolerated_no_schedule_and_no_execute_taints_reject() {
        let mut p = policy(vec![
            vec![],
            vec![taint("dedicated", "gpu", NoSchedule)],
            vec![taint("node.kubernetes.io/not-ready", "", NoExecute)],
        ]);
        assert_eq!(
            rejected(&mut p, vec![], &[0, 1, 2]),
            vec![
                reason(1, "node(s) had untolerated taint {dedicated: gpu}"),
                reason(
                    2,
                    "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
                ),
            ]
        );
    }

    #[test]
    fn prefer_no_schedule_taints_do_not_filter() {
        let mut p = policy(vec![vec![
            taint("a", "1", PreferNoSchedule),
            taint("b", "2", PreferNoSchedule),
        ]]);
        assert_eq!(rejected(&mut p, vec![], &[0]), vec![]);
    }

    #[test]
    fn the_first_untolerated_taint_is_the_reason() {
        let mut p = policy(vec![vec![
            taint("soft", "x", PreferNoSchedule),
            taint("tolerated", "yes", NoSchedule),
            taint("first", "1", NoExecute),
            taint("second", "2", NoSchedule),
        ]]);
        let tolerations = vec![toleration("tolerated", Equal, "yes", None)];
        assert_eq!(
            rejected(&mut p, tolerations, &[0]),
            vec![reason(0, "node(s) had untolerated taint {first: 1}")]
        );
    }

    #[test]
    fn tolerations_match_key_value_and_effect() {
        let node = vec![vec![taint("dedicated", "gpu", NoSchedule)]];
        let admitted = [
            toleration("dedicated", Equal, "gpu", Some(NoSchedule)),
            toleration("dedicated", Equal, "gpu", None),
            toleration("dedicated", Exists, "", Some(NoSchedule)),
            toleration("dedicated", Exists, "", None),
            toleration("", Exists, "", None),
            toleration("", Exists, "", Some(NoSchedule)),
        ];
        for t in admitted {
            let mut p = policy(node.clone());
            assert_eq!(rejected(&mut p, vec![t.clone()], &[0]), vec![], "{t:?}");
        }
        let refused = [
            toleration("dedicated", Equal, "cpu", Some(NoSchedule)),
            toleration("dedicated", Equal, "gpu", Some(NoExecute)),
            toleration("dedicated", Equal, "gpu", Some(PreferNoSchedule)),
            toleration("dedicated", Equal, "", None),
            toleration("other", Exists, "", None),
            toleration("", Exists, "", Some(NoExecute)),
        ];
        for t in refused {
            let mut p = policy(node.clone());
            assert_eq!(
                rejected(&mut p, vec![t.clone()], &[0]),
                vec![reason(0, "node(s) had untolerated taint {dedicated: gpu}")],
                "{t:?}"
            );
        }
    }

    #[test]
    fn exists_with_an_empty_key_tolerates_every_taint() {
        let mut p = policy(vec![vec![
            taint("a", "1", NoSchedule),
            taint("b", "2", NoExecute),
            taint("c", "3", PreferNoSchedule),
        ]]);
        let all = vec![toleration("", Exists, "", None)];
        assert_eq!(rejected(&mut p, all.clone(), &[0]), vec![]);
        assert_eq!(scores(&mut p, all, &[0]), vec![100]);
    }

    #[test]
    fn every_taint_must_be_tolerated() {
        let mut p = policy(vec![vec![
            taint("a", "1", NoSchedule),
            taint("b", "2", NoSchedule),
        ]]);
        let only_a = vec![toleration("a", Exists, "", None)];
        assert_eq!(
            rejected(&mut p, only_a, &[0]),
            vec![reason(0, "node(s) had untolerated taint {b: 2}")]
        );
        let both = vec![
            toleration("a", Exists, "", None),
            toleration("b", Equal, "2", Some(NoSchedule)),
        ];
        assert_eq!(rejected(&mut p, both, &[0]), vec![]);
    }

    #[test]
    fn fewer_untolerated_prefer_no_schedule_taints_score_higher() {
        let mut p = policy(vec![
            vec![],
            vec![taint("a", "1", PreferNoSchedule)],
            vec![
                taint("a", "1", PreferNoSchedule),
                taint("b", "2", PreferNoSchedule),
            ],
            vec![
                taint("a", "1", PreferNoSchedule),
                taint("b", "2", PreferNoSchedule),
                taint("c", "3", PreferNoSchedule),
                taint("d", "4", PreferNoSchedule),
            ],
        ]);
        // Counts 0, 1, 2, 4: 100 - count * 100 / 4.
        assert_eq!(scores(&mut p, vec![], &[0, 1, 2, 3]), vec![100, 75, 50, 0]);
        // Normalized over the candidates scored: the most tainted of them scores 0.
        assert_eq!(scores(&mut p, vec![], &[1, 2]), vec![50, 0]);
        assert_eq!(scores(&mut p, vec![], &[2, 1, 0]), vec![0, 50, 100]);
    }

    #[test]
    fn nodes_without_untolerated_soft_taints_all_score_100() {
        let mut p = policy(vec![
            vec![],
            vec![taint("a", "1", PreferNoSchedule)],
            vec![taint("hard", "1", NoSchedule)],
        ]);
        let tolerations = vec![toleration("a", Equal, "1", Some(PreferNoSchedule))];
        assert_eq!(scores(&mut p, tolerations, &[0, 1, 2]), vec![100, 100, 100]);
    }

    #[test]
    fn no_schedule_and_no_execute_taints_do_not_lower_scores() {
        let mut p = policy(vec![
            vec![
                taint("hard", "1", NoSchedule),
                taint("exec", "1", NoExecute),
            ],
            vec![taint("a", "1", PreferNoSchedule)],
        ]);
        assert_eq!(scores(&mut p, vec![], &[0, 1]), vec![100, 0]);
    }

    #[test]
    fn only_tolerations_covering_prefer_no_schedule_count_in_scores() {
        let mut p = policy(vec![vec![], vec![taint("a", "1", PreferNoSchedule)]]);
        // A NoSchedule toleration does not tolerate a PreferNoSchedule taint.
        let no_schedule = vec![toleration("a", Exists, "", Some(NoSchedule))];
        assert_eq!(scores(&mut p, no_schedule, &[0, 1]), vec![100, 0]);
        // A toleration without effect covers every effect.
        let any = vec![toleration("a", Exists, "", None)];
        assert_eq!(scores(&mut p, any, &[0, 1]), vec![100, 100]);
        let wrong_value = vec![toleration("a", Equal, "2", Some(PreferNoSchedule))];
        assert_eq!(scores(&mut p, wrong_value, &[0, 1]), vec![100, 0]);
    }

    #[test]
    fn taint_changes_are_seen() {
        let mut p = policy(vec![vec![]]);
        assert_eq!(rejected(&mut p, vec![], &[0]), vec![]);
        p.update(Change::NodeSet(
            0,
            Node {
                name: "n0".into(),
                taints: vec![taint("maintenance", "true", NoExecute)],
                ..Node::default()
            },
        ));
        assert_eq!(
            rejected(&mut p, vec![], &[0]),
            vec![reason(
                0,
                "node(s) had untolerated taint {maintenance: true}"
            )]
        );
    }
}
