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

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str = "node(s) were unschedulable";
    const KEY: &str = "node.kubernetes.io/unschedulable";

    fn node(name: &str, unschedulable: bool) -> Node {
        Node {
            name: name.into(),
            unschedulable,
            ready: true,
            ..Node::default()
        }
    }

    /// A policy with nodes at indexes 0, 1, 2…, cordoned where `cordoned` says so.
    fn policy(cordoned: &[bool]) -> NodeUnschedulable {
        let mut policy = NodeUnschedulable::new("{}").unwrap();
        for (index, &unschedulable) in cordoned.iter().enumerate() {
            policy.update(Change::NodeSet(
                index as u32,
                node(&format!("n{index}"), unschedulable),
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

    fn rejected(policy: &mut NodeUnschedulable, candidates: &[u32]) -> Vec<(u32, String)> {
        let mut rejections = Rejections::default();
        policy.filter(candidates, &mut rejections).unwrap();
        rejections
            .rejected
            .iter()
            .map(|&(node, reason)| (node, rejections.reasons[reason as usize].clone()))
            .collect()
    }

    #[test]
    fn it_only_filters() {
        let c = policy(&[]).capabilities();
        assert!(c.filter);
        assert!(!c.score);
        assert!(!c.wants_pods);
    }

    #[test]
    fn cordoned_nodes_are_rejected() {
        let mut p = policy(&[false, true, false, true]);
        assert_eq!(p.prepare(pod(vec![])).unwrap(), Prepared::Proceed);
        assert_eq!(
            rejected(&mut p, &[0, 1, 2, 3]),
            vec![(1, REASON.to_string()), (3, REASON.to_string())]
        );
    }

    #[test]
    fn uncordoning_a_node_admits_pods_again() {
        let mut p = policy(&[true]);
        p.prepare(pod(vec![])).unwrap();
        assert_eq!(rejected(&mut p, &[0]), vec![(0, REASON.to_string())]);
        p.update(Change::NodeSet(0, node("n0", false)));
        assert_eq!(rejected(&mut p, &[0]), vec![]);
        p.update(Change::NodeSet(0, node("n0", true)));
        assert_eq!(rejected(&mut p, &[0]), vec![(0, REASON.to_string())]);
    }

    #[test]
    fn taints_alone_do_not_make_a_node_unschedulable() {
        // Only spec.unschedulable counts here; taints are TaintToleration's business.
        let mut p = policy(&[]);
        p.update(Change::NodeSet(
            0,
            Node {
                taints: vec![Taint {
                    key: KEY.into(),
                    value: String::new(),
                    effect: TaintEffect::NoSchedule,
                }],
                ..node("n0", false)
            },
        ));
        p.prepare(pod(vec![])).unwrap();
        assert_eq!(rejected(&mut p, &[0]), vec![]);
    }

    #[test]
    fn pods_tolerating_the_unschedulable_taint_are_admitted() {
        use TolerationOperator::*;
        let tolerating = [
            toleration(KEY, Exists, "", Some(TaintEffect::NoSchedule)),
            toleration(KEY, Exists, "", None),
            toleration(KEY, Equal, "", Some(TaintEffect::NoSchedule)),
            toleration("", Exists, "", None),
            toleration("", Exists, "", Some(TaintEffect::NoSchedule)),
        ];
        for t in tolerating {
            let mut p = policy(&[true]);
            assert_eq!(
                p.prepare(pod(vec![t.clone()])).unwrap(),
                Prepared::Skip,
                "{t:?} tolerates a cordoned node"
            );
        }
    }

    #[test]
    fn other_tolerations_do_not_admit_pods_to_cordoned_nodes() {
        use TolerationOperator::*;
        let not_tolerating = [
            toleration(KEY, Exists, "", Some(TaintEffect::NoExecute)),
            toleration(KEY, Exists, "", Some(TaintEffect::PreferNoSchedule)),
            toleration(KEY, Equal, "true", Some(TaintEffect::NoSchedule)),
            toleration("node.kubernetes.io/not-ready", Exists, "", None),
            toleration("", Exists, "", Some(TaintEffect::NoExecute)),
        ];
        for t in not_tolerating {
            let mut p = policy(&[true, false]);
            assert_eq!(
                p.prepare(pod(vec![t.clone()])).unwrap(),
                Prepared::Proceed,
                "{t:?} does not tolerate a cordoned node"
            );
            assert_eq!(rejected(&mut p, &[0, 1]), vec![(0, REASON.to_string())]);
        }
    }

    #[test]
    fn one_tolerating_toleration_among_others_is_enough() {
        use TolerationOperator::*;
        let mut p = policy(&[true]);
        let tolerations = vec![
            toleration("dedicated", Equal, "gpu", Some(TaintEffect::NoSchedule)),
            toleration(KEY, Exists, "", Some(TaintEffect::NoSchedule)),
        ];
        assert_eq!(p.prepare(pod(tolerations)).unwrap(), Prepared::Skip);
    }
}
