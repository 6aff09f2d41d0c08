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

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str = "node(s) didn't match the requested node name";

    /// A policy that knows nodes `names`, at indexes 0, 1, 2…
    fn policy(names: &[&str]) -> NodeName {
        let mut policy = NodeName::new("{}").unwrap();
        for (index, name) in names.iter().enumerate() {
            policy.update(Change::NodeSet(
                index as u32,
                Node {
                    name: (*name).into(),
                    ready: true,
                    ..Node::default()
                },
            ));
        }
        policy
    }

    fn pod(node_name: Option<&str>) -> Pod {
        Pod {
            name: "web".into(),
            namespace: "default".into(),
            node_name: node_name.map(Into::into),
            ..Pod::default()
        }
    }

    /// The rejected candidates with their reasons.
    fn rejected(policy: &mut NodeName, candidates: &[u32]) -> Vec<(u32, String)> {
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
    fn pods_without_a_node_name_are_skipped() {
        let mut p = policy(&["n0", "n1"]);
        assert_eq!(p.prepare(pod(None)).unwrap(), Prepared::Skip);
        assert_eq!(
            p.prepare(pod(Some(""))).unwrap(),
            Prepared::Skip,
            "an empty nodeName is no nodeName"
        );
    }

    #[test]
    fn a_pod_naming_a_node_fits_only_that_node() {
        let mut p = policy(&["n0", "n1", "n2"]);
        assert_eq!(p.prepare(pod(Some("n1"))).unwrap(), Prepared::Proceed);
        assert_eq!(
            rejected(&mut p, &[0, 1, 2]),
            vec![(0, REASON.to_string()), (2, REASON.to_string())]
        );
    }

    #[test]
    fn the_reason_is_stored_once_for_all_rejected_nodes() {
        let mut p = policy(&["n0", "n1", "n2", "n3"]);
        p.prepare(pod(Some("n3"))).unwrap();
        let mut rejections = Rejections::default();
        p.filter(&[0, 1, 2, 3], &mut rejections).unwrap();
        assert_eq!(rejections.reasons, vec![REASON.to_string()]);
        assert_eq!(rejections.rejected, vec![(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn only_the_candidates_given_are_judged() {
        let mut p = policy(&["n0", "n1", "n2"]);
        p.prepare(pod(Some("n0"))).unwrap();
        assert_eq!(rejected(&mut p, &[0]), vec![]);
        assert_eq!(rejected(&mut p, &[2]), vec![(2, REASON.to_string())]);
        assert_eq!(rejected(&mut p, &[]), vec![]);
    }

    #[test]
    fn a_pod_naming_an_unknown_node_fits_nowhere() {
        let mut p = policy(&["n0", "n1"]);
        p.prepare(pod(Some("elsewhere"))).unwrap();
        assert_eq!(
            rejected(&mut p, &[0, 1]),
            vec![(0, REASON.to_string()), (1, REASON.to_string())]
        );
    }

    #[test]
    fn the_names_follow_node_changes() {
        let mut p = policy(&["n0", "n1"]);
        p.prepare(pod(Some("n1"))).unwrap();
        assert_eq!(rejected(&mut p, &[1]), vec![]);

        // Index 1 now holds another node; a removed node matches nothing.
        p.update(Change::NodeSet(
            1,
            Node {
                name: "n9".into(),
                ..Node::default()
            },
        ));
        assert_eq!(rejected(&mut p, &[1]), vec![(1, REASON.to_string())]);
        p.update(Change::NodeSet(
            2,
            Node {
                name: "n1".into(),
                ..Node::default()
            },
        ));
        assert_eq!(rejected(&mut p, &[1, 2]), vec![(1, REASON.to_string())]);
        p.update(Change::NodeRemoved(2));
        assert_eq!(rejected(&mut p, &[2]), vec![(2, REASON.to_string())]);
    }

    #[test]
    fn each_pod_is_judged_by_its_own_node_name() {
        let mut p = policy(&["n0", "n1"]);
        p.prepare(pod(Some("n0"))).unwrap();
        assert_eq!(rejected(&mut p, &[0, 1]), vec![(1, REASON.to_string())]);
        p.prepare(pod(Some("n1"))).unwrap();
        assert_eq!(rejected(&mut p, &[0, 1]), vec![(0, REASON.to_string())]);
        // A later pod without nodeName is skipped, and leaves no name behind.
        assert_eq!(p.prepare(pod(None)).unwrap(), Prepared::Skip);
        assert_eq!(rejected(&mut p, &[0, 1]), vec![]);
    }
}
