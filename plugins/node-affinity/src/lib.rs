//! NodeAffinity, as Kubernetes has it: `nodeSelector` and required node affinity filter nodes
//! (`node(s) didn't match Pod's node affinity/selector`); preferred terms score them by the sum
//! of the weights of the terms a node matches, normalized to 0..=100. Required terms that each
//! name nodes (`matchFields` `metadata.name In`) but together name none make the pod
//! unschedulable up front (`pod affinity terms conflict`), as Kubernetes' PreFilter does.

use std::collections::BTreeSet;

use flotilla_sdk::scheduling::*;

/// Whether every required term names its nodes with `metadata.name In` and no node is named:
/// within a term the named sets intersect, across terms they unite. A term that names no node
/// this way allows every node, so there is no conflict.
fn names_conflict(terms: &[NodeSelectorTerm]) -> bool {
    let mut named: Option<BTreeSet<&str>> = None;
    for term in terms {
        let mut in_term: Option<BTreeSet<&str>> = None;
        for r in &term.match_fields {
            if r.key == "metadata.name" && r.operator == Operator::In {
                let names: BTreeSet<&str> = r.values.iter().map(String::as_str).collect();
                in_term = Some(match in_term {
                    None => names,
                    Some(before) => before.intersection(&names).copied().collect(),
                });
            }
        }
        let Some(in_term) = in_term else {
            return false;
        };
        named.get_or_insert_with(BTreeSet::new).extend(in_term);
    }
    named.is_some_and(|named| named.is_empty())
}

#[derive(Debug, Default)]
pub struct NodeAffinityPolicy {
    nodes: NodeTable,
    pod: Pod,
}

impl SchedulerPolicy for NodeAffinityPolicy {
    const NAME: &'static str = "node-affinity";
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
        let concerned = !pod.node_selector.is_empty()
            || pod
                .node_affinity
                .as_ref()
                .is_some_and(|a| a.required.is_some() || !a.preferred.is_empty());
        let conflict = pod
            .node_affinity
            .as_ref()
            .and_then(|a| a.required.as_deref())
            .is_some_and(names_conflict);
        self.pod = pod;
        if conflict {
            return Ok(Prepared::Unschedulable(
                "pod affinity terms conflict".into(),
            ));
        }
        Ok(if concerned {
            Prepared::Proceed
        } else {
            Prepared::Skip
        })
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        for &index in candidates {
            if self
                .nodes
                .get(index)
                .is_some_and(|s| !self.pod.node_selection_matches(&s.node))
            {
                rejections.reject(index, "node(s) didn't match Pod's node affinity/selector");
            }
        }
        Ok(())
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        let preferred = self
            .pod
            .node_affinity
            .as_ref()
            .map(|a| a.preferred.as_slice())
            .unwrap_or(&[]);
        let start = scores.len();
        for &index in candidates {
            let sum = self.nodes.get(index).map_or(0, |s| {
                preferred
                    .iter()
                    .filter(|term| term.weight != 0 && term.preference.matches(&s.node))
                    .map(|term| i64::from(term.weight))
                    .sum()
            });
            scores.push(sum);
        }
        normalize(&mut scores[start..], false);
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(NodeAffinityPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn term(expressions: Vec<Requirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: expressions,
            match_fields: vec![],
        }
    }

    fn fields(fields: Vec<Requirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: vec![],
            match_fields: fields,
        }
    }

    fn preferred(weight: i32, preference: NodeSelectorTerm) -> PreferredTerm {
        PreferredTerm { weight, preference }
    }

    /// Four nodes:
    /// 0 `n0` zone=a disk=ssd cores=8, 1 `n1` zone=b disk=hdd cores=4,
    /// 2 `n2` zone=c cores=16, 3 `n3` without labels.
    fn policy() -> NodeAffinityPolicy {
        let mut policy = NodeAffinityPolicy::new("{}").unwrap();
        let nodes = [
            (
                "n0",
                labels(&[("zone", "a"), ("disk", "ssd"), ("cores", "8")]),
            ),
            (
                "n1",
                labels(&[("zone", "b"), ("disk", "hdd"), ("cores", "4")]),
            ),
            ("n2", labels(&[("zone", "c"), ("cores", "16")])),
            ("n3", Labels::new()),
        ];
        for (index, (name, labels)) in nodes.into_iter().enumerate() {
            policy.update(Change::NodeSet(
                index as u32,
                Node {
                    name: name.into(),
                    labels,
                    ready: true,
                    ..Node::default()
                },
            ));
        }
        policy
    }

    const ALL: [u32; 4] = [0, 1, 2, 3];

    fn pod(selector: &[(&str, &str)], affinity: Option<NodeAffinity>) -> Pod {
        Pod {
            name: "web".into(),
            namespace: "default".into(),
            node_selector: labels(selector),
            node_affinity: affinity,
            ..Pod::default()
        }
    }

    fn required(terms: Vec<NodeSelectorTerm>) -> Pod {
        pod(
            &[],
            Some(NodeAffinity {
                required: Some(terms),
                preferred: vec![],
            }),
        )
    }

    fn preferring(terms: Vec<PreferredTerm>) -> Pod {
        pod(
            &[],
            Some(NodeAffinity {
                required: None,
                preferred: terms,
            }),
        )
    }

    /// Prepares `pod` (which must proceed) and returns the candidates that pass the filter.
    fn passing(policy: &mut NodeAffinityPolicy, pod: Pod, candidates: &[u32]) -> Vec<u32> {
        assert_eq!(policy.prepare(pod).unwrap(), Prepared::Proceed);
        let mut rejections = Rejections::default();
        policy.filter(candidates, &mut rejections).unwrap();
        for &(_, reason) in &rejections.rejected {
            assert_eq!(rejections.reasons[reason as usize], REASON);
        }
        candidates
            .iter()
            .copied()
            .filter(|c| !rejections.rejected.iter().any(|(n, _)| n == c))
            .collect()
    }

    /// Prepares `pod` (which must proceed) and scores `candidates`.
    fn scores(policy: &mut NodeAffinityPolicy, pod: Pod, candidates: &[u32]) -> Vec<i64> {
        assert_eq!(policy.prepare(pod).unwrap(), Prepared::Proceed);
        let mut scores = Vec::new();
        policy.score(candidates, &mut scores).unwrap();
        scores
    }

    #[test]
    fn it_filters_and_scores() {
        let c = policy().capabilities();
        assert!(c.filter);
        assert!(c.score);
        assert!(!c.wants_pods);
    }

    #[test]
    fn pods_without_selector_or_affinity_are_skipped() {
        let mut p = policy();
        assert_eq!(p.prepare(pod(&[], None)).unwrap(), Prepared::Skip);
        let empty = NodeAffinity {
            required: None,
            preferred: vec![],
        };
        assert_eq!(p.prepare(pod(&[], Some(empty))).unwrap(), Prepared::Skip);
    }

    #[test]
    fn node_selector_requires_every_label() {
        let mut p = policy();
        assert_eq!(passing(&mut p, pod(&[("zone", "a")], None), &ALL), vec![0]);
        assert_eq!(
            passing(&mut p, pod(&[("zone", "b"), ("disk", "hdd")], None), &ALL),
            vec![1]
        );
        assert_eq!(
            passing(&mut p, pod(&[("zone", "a"), ("disk", "hdd")], None), &ALL),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn rejections_carry_kubernetes_reason_once() {
        let mut p = policy();
        p.prepare(pod(&[("zone", "a")], None)).unwrap();
        let mut rejections = Rejections::default();
        p.filter(&ALL, &mut rejections).unwrap();
        assert_eq!(rejections.reasons, vec![REASON.to_string()]);
        assert_eq!(rejections.rejected, vec![(1, 0), (2, 0), (3, 0)]);
    }

    #[test]
    fn required_terms_are_ored() {
        let mut p = policy();
        let pod = required(vec![
            term(vec![req("zone", Operator::In, &["a"])]),
            term(vec![req("disk", Operator::In, &["hdd"])]),
        ]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![0, 1]);
    }

    #[test]
    fn expressions_within_a_term_are_anded() {
        let mut p = policy();
        let both = |disk: Requirement| {
            required(vec![term(vec![
                req("zone", Operator::In, &["a", "b"]),
                disk,
            ])])
        };
        assert_eq!(
            passing(&mut p, both(req("disk", Operator::Exists, &[])), &ALL),
            vec![0, 1]
        );
        assert_eq!(
            passing(&mut p, both(req("disk", Operator::In, &["hdd"])), &ALL),
            vec![1]
        );
    }

    #[test]
    fn each_operator_follows_kubernetes() {
        let mut p = policy();
        let cases: Vec<(Requirement, Vec<u32>)> = vec![
            (req("zone", Operator::In, &["a", "c"]), vec![0, 2]),
            // NotIn and DoesNotExist match nodes without the label.
            (req("zone", Operator::NotIn, &["a", "c"]), vec![1, 3]),
            (req("disk", Operator::Exists, &[]), vec![0, 1]),
            (req("disk", Operator::DoesNotExist, &[]), vec![2, 3]),
            // Gt and Lt compare integers; nodes without the label never match.
            (req("cores", Operator::Gt, &["6"]), vec![0, 2]),
            (req("cores", Operator::Lt, &["8"]), vec![1]),
            (req("cores", Operator::Gt, &["16"]), vec![]),
            (req("zone", Operator::Gt, &["1"]), vec![]),
        ];
        for (requirement, expected) in cases {
            let pod = required(vec![term(vec![requirement.clone()])]);
            assert_eq!(passing(&mut p, pod, &ALL), expected, "{requirement:?}");
        }
    }

    #[test]
    fn match_fields_select_nodes_by_name() {
        let mut p = policy();
        let pod = required(vec![fields(vec![req(
            "metadata.name",
            Operator::In,
            &["n1", "n2"],
        )])]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![1, 2]);
        let pod = required(vec![fields(vec![req(
            "metadata.name",
            Operator::NotIn,
            &["n1"],
        )])]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![0, 2, 3]);
        // Fields and expressions of one term must all hold.
        let pod = required(vec![NodeSelectorTerm {
            match_expressions: vec![req("zone", Operator::In, &["b", "c"])],
            match_fields: vec![req("metadata.name", Operator::In, &["n0", "n1"])],
        }]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![1]);
    }

    #[test]
    fn required_but_empty_matches_no_node() {
        let mut p = policy();
        assert_eq!(passing(&mut p, required(vec![]), &ALL), Vec::<u32>::new());
    }

    #[test]
    fn an_empty_term_matches_no_node_but_others_still_may() {
        let mut p = policy();
        assert_eq!(
            passing(&mut p, required(vec![NodeSelectorTerm::default()]), &ALL),
            Vec::<u32>::new()
        );
        let pod = required(vec![
            NodeSelectorTerm::default(),
            term(vec![req("zone", Operator::In, &["b"])]),
        ]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![1]);
    }

    #[test]
    fn node_selector_and_required_affinity_must_both_hold() {
        let mut p = policy();
        let pod = pod(
            &[("disk", "ssd")],
            Some(NodeAffinity {
                required: Some(vec![term(vec![req("zone", Operator::In, &["a", "b"])])]),
                preferred: vec![],
            }),
        );
        assert_eq!(passing(&mut p, pod, &ALL), vec![0]);
    }

    #[test]
    fn terms_naming_disjoint_nodes_conflict_up_front() {
        let mut p = policy();
        // One term whose two name requirements have no node in common.
        let pod = required(vec![fields(vec![
            req("metadata.name", Operator::In, &["n0"]),
            req("metadata.name", Operator::In, &["n1"]),
        ])]);
        assert_eq!(
            p.prepare(pod).unwrap(),
            Prepared::Unschedulable("pod affinity terms conflict".into())
        );
        // Every term conflicting is a conflict too.
        let pod = required(vec![
            fields(vec![
                req("metadata.name", Operator::In, &["n0"]),
                req("metadata.name", Operator::In, &["n2"]),
            ]),
            fields(vec![req("metadata.name", Operator::In, &[])]),
        ]);
        assert_eq!(
            p.prepare(pod).unwrap(),
            Prepared::Unschedulable("pod affinity terms conflict".into())
        );
    }

    #[test]
    fn named_nodes_do_not_conflict_while_some_term_allows_a_node() {
        let mut p = policy();
        // Terms are ORed: their names unite.
        let pod = required(vec![
            fields(vec![req("metadata.name", Operator::In, &["n0"])]),
            fields(vec![req("metadata.name", Operator::In, &["n1"])]),
        ]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![0, 1]);
        // A term not naming nodes allows every node, so nothing conflicts; the conflicting
        // term just matches nothing.
        let pod = required(vec![
            fields(vec![
                req("metadata.name", Operator::In, &["n0"]),
                req("metadata.name", Operator::In, &["n1"]),
            ]),
            term(vec![req("zone", Operator::In, &["c"])]),
        ]);
        assert_eq!(passing(&mut p, pod, &ALL), vec![2]);
        // NotIn does not name nodes.
        let pod = required(vec![fields(vec![
            req("metadata.name", Operator::In, &["n0"]),
            req("metadata.name", Operator::NotIn, &["n0"]),
        ])]);
        assert_eq!(passing(&mut p, pod, &ALL), Vec::<u32>::new());
    }

    #[test]
    fn preferred_terms_do_not_filter() {
        let mut p = policy();
        let pod = preferring(vec![preferred(
            10,
            term(vec![req("zone", Operator::In, &["a"])]),
        )]);
        assert_eq!(passing(&mut p, pod, &ALL), ALL.to_vec());
    }

    #[test]
    fn preferred_weights_are_summed_and_normalized() {
        let mut p = policy();
        let pod = preferring(vec![
            preferred(2, term(vec![req("zone", Operator::In, &["a"])])),
            preferred(8, term(vec![req("disk", Operator::Exists, &[])])),
        ]);
        // n0 matches both (10), n1 the disk term (8), n2 and n3 neither.
        assert_eq!(scores(&mut p, pod, &ALL), vec![100, 80, 0, 0]);
    }

    #[test]
    fn preferred_scores_are_normalized_over_the_candidates_scored() {
        let mut p = policy();
        let pod = preferring(vec![
            preferred(30, term(vec![req("zone", Operator::In, &["a"])])),
            preferred(20, term(vec![req("cores", Operator::Gt, &["2"])])),
        ]);
        // Over every node: n0 50, n1 20, n2 20, n3 0.
        assert_eq!(scores(&mut p, pod.clone(), &ALL), vec![100, 40, 40, 0]);
        // Without n0 the best is 20.
        assert_eq!(scores(&mut p, pod.clone(), &[1, 2, 3]), vec![100, 100, 0]);
        // Scores are appended, and normalized apart from what was there.
        let mut appended = vec![7];
        p.score(&[0, 3], &mut appended).unwrap();
        assert_eq!(appended, vec![7, 100, 0]);
    }

    #[test]
    fn preferred_terms_matching_nothing_score_zero() {
        let mut p = policy();
        let pod = preferring(vec![preferred(
            50,
            term(vec![req("zone", Operator::In, &["z"])]),
        )]);
        assert_eq!(scores(&mut p, pod, &ALL), vec![0, 0, 0, 0]);
    }

    #[test]
    fn zero_weights_and_empty_preferences_count_for_nothing() {
        let mut p = policy();
        let pod = preferring(vec![
            preferred(0, term(vec![req("zone", Operator::In, &["a"])])),
            preferred(40, NodeSelectorTerm::default()),
            preferred(10, term(vec![req("zone", Operator::In, &["b"])])),
        ]);
        assert_eq!(scores(&mut p, pod, &ALL), vec![0, 100, 0, 0]);
    }

    #[test]
    fn preferred_terms_can_name_nodes() {
        let mut p = policy();
        let pod = preferring(vec![
            preferred(5, fields(vec![req("metadata.name", Operator::In, &["n3"])])),
            preferred(
                10,
                fields(vec![req("metadata.name", Operator::In, &["n2"])]),
            ),
        ]);
        assert_eq!(scores(&mut p, pod, &ALL), vec![0, 0, 100, 50]);
    }

    #[test]
    fn a_node_selector_alone_scores_every_node_alike() {
        let mut p = policy();
        let s = scores(&mut p, pod(&[("zone", "a")], None), &ALL);
        assert!(s.iter().all(|&v| v == s[0]), "{s:?}");
    }

    #[test]
    fn node_label_changes_are_seen() {
        let mut p = policy();
        let selector = pod(&[("zone", "c")], None);
        assert_eq!(passing(&mut p, selector.clone(), &ALL), vec![2]);
        p.update(Change::NodeSet(
            3,
            Node {
                name: "n3".into(),
                labels: labels(&[("zone", "c")]),
                ..Node::default()
            },
        ));
        assert_eq!(passing(&mut p, selector.clone(), &ALL), vec![2, 3]);
        p.update(Change::NodeSet(
            2,
            Node {
                name: "n2".into(),
                ..Node::default()
            },
        ));
        assert_eq!(passing(&mut p, selector, &ALL), vec![3]);
    }
}
