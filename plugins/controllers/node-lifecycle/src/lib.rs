//! Node lifecycle, as Kubernetes' node lifecycle controller has it. A node is alive while its
//! Lease in `kube-node-lease` is renewed. One that has not renewed it for
//! `nodeMonitorGracePeriodSeconds` (default 40) gets its conditions set to Unknown
//! (`NodeStatusUnknown`, "Kubelet stopped posting node status.") and the
//! `node.kubernetes.io/unreachable` taints, NoSchedule and NoExecute; a node renewing again
//! loses the taints. The pods of a node with the NoExecute taint are evicted (deleted) once the
//! taint is older than their toleration of it: a matching toleration's `tolerationSeconds`
//! (none: tolerated for ever), or `defaultTolerationSeconds` (default 300) for pods without
//! one. Their controllers replace them.
//!
//! Configuration: `{"nodeMonitorGracePeriodSeconds": 40, "defaultTolerationSeconds": 300}`.

use std::time::Duration;

use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const LEASES: &str = "kube-node-lease";

#[derive(Debug)]
pub struct NodeLifecycle {
    grace: i64,
    default_toleration: i64,
}

/// The node's taints but the unreachable ones.
fn other_taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] != UNREACHABLE)
        .cloned()
        .collect()
}

fn unreachable_taints(node: &Value) -> Vec<&Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == UNREACHABLE)
        .collect()
}

/// How long `pod` tolerates the NoExecute unreachable taint: none means for ever.
fn toleration_seconds(pod: &Value, default: i64) -> Option<i64> {
    let matching = pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            let key_matches =
                t["key"] == UNREACHABLE || (t["key"].is_null() && t["operator"] == "Exists");
            let effect_matches = t["effect"].is_null() || t["effect"] == "NoExecute";
            key_matches && effect_matches
        });
    match matching {
        Some(toleration) => toleration["tolerationSeconds"].as_i64(),
        None => Some(default),
    }
}

impl NodeLifecycle {
    /// When the node was last heard of: its Lease's renewal, else its Ready heartbeat.
    fn last_heard(&self, node: &Value) -> Option<i64> {
        let name = node["metadata"]["name"].as_str()?;
        let lease = cache::get("coordination.k8s.io/v1", "Lease", Some(LEASES), name)
            .ok()
            .flatten()
            .and_then(|l| parse(&l).ok());
        lease
            .and_then(|l| l["spec"]["renewTime"].as_str().and_then(parse_time))
            .or_else(|| {
                node["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?["lastHeartbeatTime"]
                    .as_str()
                    .and_then(parse_time)
            })
    }

    fn mark_unreachable(&self, node: &Value) -> Result<Value, String> {
        let now = now_rfc3339();
        let mut node = node.clone();
        let mut changed = false;
        for condition in node["status"]["conditions"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if condition["status"] != "Unknown" {
                condition["status"] = json!("Unknown");
                condition["reason"] = json!("NodeStatusUnknown");
                condition["message"] = json!("Kubelet stopped posting node status.");
                condition["lastTransitionTime"] = json!(now);
                changed = true;
            }
        }
        if changed {
            node = parse(
                &api::update_status(&node.to_string())
                    .map_err(|s| failed("marking the node Unknown", s))?,
            )?;
        }
        if unreachable_taints(&node).len() < 2 {
            let mut taints = other_taints(&node);
            taints.push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": now}));
            taints.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now}));
            node["spec"]["taints"] = json!(taints);
            node = parse(
                &api::update(&node.to_string()).map_err(|s| failed("tainting the node", s))?,
            )?;
        }
        Ok(node)
    }

    fn mark_reachable(&self, node: &Value) -> Result<(), String> {
        if unreachable_taints(node).is_empty() {
            return Ok(());
        }
        let mut node = node.clone();
        node["spec"]["taints"] = json!(other_taints(&node));
        api::update(&node.to_string())
            .map(drop)
            .map_err(|s| failed("untainting the node", s))
    }

    /// Evicts the pods whose toleration of the taint ran out; when to look again.
    fn evict(&self, node: &Value) -> Result<Option<i64>, String> {
        let Some(taint) = unreachable_taints(node)
            .into_iter()
            .find(|t| t["effect"] == "NoExecute")
        else {
            return Ok(None);
        };
        let added = taint["timeAdded"]
            .as_str()
            .and_then(parse_time)
            .unwrap_or_else(now);
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let now = now();
        let mut next: Option<i64> = None;
        for pod in cache::list("v1", "Pod", None, "").map_err(|s| failed("listing pods", s))? {
            let pod = parse(&pod)?;
            if pod["spec"]["nodeName"] != name || pod["metadata"].get("deletionTimestamp").is_some()
            {
                continue;
            }
            let Some(seconds) = toleration_seconds(&pod, self.default_toleration) else {
                continue;
            };
            let due = added + seconds.max(0);
            if due > now {
                next = Some(next.map_or(due - now, |n| n.min(due - now)));
                continue;
            }
            let options = DeleteOptions {
                uid: pod["metadata"]["uid"].as_str().map(str::to_owned),
                ..DeleteOptions::default()
            };
            match api::delete(&object_ref(&pod), &options) {
                Ok(()) => {
                    let _ = api::emit_event(&Event {
                        regarding: object_ref(&pod),
                        event_type: "Normal".into(),
                        reason: "TaintManagerEviction".into(),
                        message: format!(
                            "Marking for deletion Pod {}",
                            pod["metadata"]["name"].as_str().unwrap_or_default()
                        ),
                    });
                }
                Err(s) if s.code == 404 || s.code == 409 => {}
                Err(s) => return Err(failed("evicting a pod", s)),
            }
        }
        Ok(next)
    }
}

impl Controller for NodeLifecycle {
    const NAME: &'static str = "node-lifecycle-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        let config = parse(config).map_err(|e| format!("configuration is {e}"))?;
        let number = |field: &str, default: i64| match &config[field] {
            Value::Null => Ok(default),
            value => value
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or(format!("{field} must be a whole number of seconds")),
        };
        Ok(Self {
            grace: number("nodeMonitorGracePeriodSeconds", 40)?,
            default_toleration: number("defaultTolerationSeconds", 300)?,
        })
    }

    fn register(&self) -> Registration {
        Registration::new("v1", "Node")
            .watch(Watch::new(
                "coordination.k8s.io/v1",
                "Lease",
                KeyMapping::Custom,
            ))
            .watch(Watch::new("v1", "Pod", KeyMapping::Custom))
            .resync_every(Duration::from_secs(5))
            .workers(2)
    }

    /// A node's Lease and its pods concern the node.
    fn keys_for(&mut self, watch: u32, object: &str) -> Vec<ObjectRef> {
        let Ok(object) = parse(object) else {
            return Vec::new();
        };
        let name = if watch == 0 {
            (object["metadata"]["namespace"] == LEASES)
                .then(|| object["metadata"]["name"].as_str())
                .flatten()
        } else {
            object["spec"]["nodeName"].as_str()
        };
        name.map(|name| {
            vec![ObjectRef {
                api_version: "v1".into(),
                kind: "Node".into(),
                namespace: None,
                name: name.into(),
            }]
        })
        .unwrap_or_default()
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(node) =
            cache::get("v1", "Node", None, &key.name).map_err(|s| failed("reading the node", s))?
        else {
            return Ok(None);
        };
        let node = parse(&node)?;
        let Some(last) = self.last_heard(&node) else {
            return Ok(None);
        };
        let silent = now() - last;
        if silent <= self.grace {
            self.mark_reachable(&node)?;
            // Look again when it would pass the grace period.
            return Ok(Some(Duration::from_secs(
                (self.grace - silent + 1).max(1) as u64
            )));
        }
        let node = self.mark_unreachable(&node)?;
        Ok(self
            .evict(&node)?
            .map(|seconds| Duration::from_secs(seconds.max(1) as u64)))
    }
}

flotilla_sdk::export_controller!(NodeLifecycle);
