//! An example scheduling policy, written with the Flotilla SDK: spread the pods of one app
//! across zones.
//!
//! Pods belong to an app by a label (`app` unless the configuration says `{"labelKey": "…"}`).
//! A node scores higher the fewer pods of the same app (same namespace, same label value) its
//! zone (`topology.kubernetes.io/zone`) already holds; nodes without a zone score 0. Pods
//! without the label are left to the other policies.
//!
//! Build and push it to a cluster (it replaces the plugin in place: a hot swap):
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p zone-spread
//! flotilla plugin push plugins/target/wasm32-wasip2/release/zone_spread.wasm \
//!     --name zone-spread --kind scheduler-policy
//! ```

use std::collections::HashMap;

use flotilla_sdk::scheduling::*;

const ZONE: &str = "topology.kubernetes.io/zone";

#[derive(Debug)]
pub struct ZoneSpread {
    nodes: NodeTable,
    label_key: String,
    /// The prepared pod's (namespace, app), when it has one.
    app: Option<(String, String)>,
}

fn label_key(config: &str) -> Result<String, String> {
    // `{"labelKey": "tier"}`; anything else keeps the default.
    let Some(at) = config.find("\"labelKey\"") else {
        return Ok("app".into());
    };
    let rest = &config[at + "\"labelKey\"".len()..];
    let value = rest
        .split('"')
        .nth(1)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("labelKey must be a non-empty string in {config}"))?;
    Ok(value.to_owned())
}

impl SchedulerPolicy for ZoneSpread {
    const NAME: &'static str = "zone-spread";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        Ok(Self {
            nodes: NodeTable::default(),
            label_key: label_key(config)?,
            app: None,
        })
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
        self.app = pod
            .labels
            .get(&self.label_key)
            .map(|value| (pod.namespace.clone(), value.clone()));
        Ok(if self.app.is_some() {
            Prepared::Proceed
        } else {
            Prepared::Skip
        })
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        let Some((namespace, app)) = &self.app else {
            scores.extend(candidates.iter().map(|_| 0));
            return Ok(());
        };
        let mut per_zone: HashMap<&str, i64> = HashMap::new();
        for (index, state) in self.nodes.iter() {
            let Some(zone) = state.node.labels.get(ZONE) else {
                continue;
            };
            let same = self
                .nodes
                .pods_on(index)
                .filter(|p| &p.namespace == namespace && p.labels.get(&self.label_key) == Some(app))
                .count() as i64;
            *per_zone.entry(zone).or_default() += same;
        }
        let start = scores.len();
        let mut zoned = Vec::with_capacity(candidates.len());
        for &index in candidates {
            let zone = self.nodes.get(index).and_then(|s| s.node.labels.get(ZONE));
            zoned.push(zone.is_some());
            scores.push(zone.map_or(0, |z| per_zone.get(z.as_str()).copied().unwrap_or(0)));
        }
        normalize(&mut scores[start..], true);
        for (score, zoned) in scores[start..].iter_mut().zip(zoned) {
            if !zoned {
                *score = 0;
            }
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(ZoneSpread);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> Node {
        let mut labels = Labels::new();
        labels.insert(ZONE.into(), zone.into());
        Node {
            name: name.into(),
            labels,
            ..Node::default()
        }
    }

    fn pod(uid: &str, app: &str) -> Pod {
        let mut labels = Labels::new();
        labels.insert("app".into(), app.into());
        Pod {
            uid: uid.into(),
            namespace: "default".into(),
            labels,
            ..Pod::default()
        }
    }

    #[test]
    fn the_emptiest_zone_for_the_app_scores_highest() {
        let mut policy = ZoneSpread::new("{}").unwrap();
        policy.update(Change::NodeSet(0, node("a1", "a")));
        policy.update(Change::NodeSet(1, node("a2", "a")));
        policy.update(Change::NodeSet(2, node("b1", "b")));
        for (uid, node, app) in [("x", 0, "web"), ("y", 1, "web"), ("z", 2, "db")] {
            let placed = pod(uid, app);
            policy.update(Change::PodPlaced(PlacedPod {
                uid: placed.uid,
                namespace: placed.namespace,
                labels: placed.labels,
                node,
                requests: Resources::default(),
            }));
        }
        assert_eq!(
            policy.prepare(pod("new", "web")).unwrap(),
            Prepared::Proceed
        );
        let mut scores = Vec::new();
        policy.score(&[0, 1, 2], &mut scores).unwrap();
        assert_eq!(
            scores,
            [0, 0, 100],
            "zone a holds two web pods, zone b none"
        );
        assert_eq!(policy.prepare(Pod::default()).unwrap(), Prepared::Skip);
        assert!(ZoneSpread::new(r#"{"labelKey": ""}"#).is_err());
    }
}
