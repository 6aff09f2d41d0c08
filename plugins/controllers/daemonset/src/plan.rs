//! Which nodes a daemon pod belongs on, and the pod it runs there.

use serde_json::{Value, json};

/// The taints Kubernetes lets every daemon pod tolerate, with their effects.
const DAEMON_TOLERATIONS: &[(&str, &str)] = &[
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// Daemon pods on the host network also tolerate a node whose network is not ready.
const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// Whether a daemon pod may start on a node, and whether one there may keep running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub should_run: bool,
    pub should_continue: bool,
}

/// Kubernetes' `ToleratesTaint`.
fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && taint["effect"] != effect {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or("");
    let exists = toleration["operator"] == "Exists";
    if key.is_empty() {
        return exists;
    }
    if taint["key"] != key {
        return false;
    }
    exists || toleration["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("")
}

/// The pod spec's tolerations with the daemon ones added.
pub fn with_daemon_tolerations(spec: &Value) -> Vec<Value> {
    let mut tolerations: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let host_network = spec["hostNetwork"] == true;
    let network = host_network.then_some((NETWORK_UNAVAILABLE, "NoSchedule"));
    for (key, effect) in DAEMON_TOLERATIONS.iter().copied().chain(network) {
        let present = tolerations
            .iter()
            .any(|t| t["key"] == key && t["operator"] == "Exists" && t["effect"] == effect);
        if !present {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
    tolerations
}

fn label<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node["metadata"]["labels"][key].as_str()
}

/// One node selector requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`) against
/// a value the node has or not.
fn requirement_holds(requirement: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = requirement["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |text: &str| text.parse::<i64>().ok();
    match requirement["operator"].as_str() {
        Some("In") => value.is_some_and(|v| values.contains(&v)),
        Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
        Some("Exists") => value.is_some(),
        Some("DoesNotExist") => value.is_none(),
        Some("Gt") => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(v), Some(bound)) if v > bound)
        }
        Some("Lt") => {
            matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(v), Some(bound)) if v < bound)
        }
        _ => false,
    }
}

/// A node selector term: all its label expressions and field expressions hold. An empty term
/// selects nothing.
fn term_selects(term: &Value, node: &Value) -> bool {
    let expressions = term["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let fields = term["matchFields"].as_array().cloned().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_holds(r, r["key"].as_str().and_then(|k| label(node, k))))
        && fields.iter().all(|r| {
            let value = (r["key"] == "metadata.name").then(|| node["metadata"]["name"].as_str());
            requirement_holds(r, value.flatten())
        })
}

/// Whether the pod spec's `nodeSelector` and required node affinity select the node.
pub fn selects(spec: &Value, node: &Value) -> bool {
    let selector_holds = spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| label(node, key) == value.as_str());
    let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let affinity_holds = match terms.as_array() {
        Some(terms) => terms.iter().any(|t| term_selects(t, node)),
        None => true,
    };
    selector_holds && affinity_holds
}

/// Where a daemon pod of `template` stands on `node`.
pub fn placement(template: &Value, node: &Value) -> Placement {
    let spec = &template["spec"];
    if !selects(spec, node) {
        return Placement {
            should_run: false,
            should_continue: false,
        };
    }
    let tolerations = with_daemon_tolerations(spec);
    let tolerated = |effect: &str| {
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|taint| taint["effect"] == effect)
            .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
    };
    let keeps = tolerated("NoExecute");
    Placement {
        should_run: keeps && tolerated("NoSchedule"),
        should_continue: keeps,
    }
}

/// The node a daemon pod is bound or pinned to.
pub fn node_of(pod: &Value) -> Option<&str> {
    if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|r| r["key"] == "metadata.name" && r["operator"] == "In")
        .and_then(|r| r["values"][0].as_str())
}

/// The pod spec of the template pinned to `node` (every required term also names the node,
/// as Kubernetes' `ReplaceDaemonSetPodNodeNameNodeAffinity` does) with the daemon tolerations.
pub fn pod_spec_for(template: &Value, node: &str) -> Value {
    let mut spec = template["spec"].clone();
    let pin = json!([{"key": "metadata.name", "operator": "In", "values": [node]}]);
    let required =
        &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    match required["nodeSelectorTerms"].as_array_mut() {
        Some(terms) if !terms.is_empty() => {
            for term in terms {
                term["matchFields"] = pin.clone();
            }
        }
        _ => *required = json!({"nodeSelectorTerms": [{"matchFields": pin}]}),
    }
    spec["tolerations"] = json!(with_daemon_tolerations(&template["spec"]));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    fn template(spec: Value) -> Value {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "i"}]);
        json!({"spec": spec})
    }

    #[test]
    fn node_selector_and_required_affinity_choose_the_nodes() {
        let ssd = node("a", json!({"disk": "ssd", "cores": "8"}), json!([]));
        let hdd = node("b", json!({"disk": "hdd", "cores": "2"}), json!([]));
        let by_selector = template(json!({"nodeSelector": {"disk": "ssd"}}));
        assert!(placement(&by_selector, &ssd).should_run);
        assert!(!placement(&by_selector, &hdd).should_run);
        let by_affinity = template(json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]},
        ]}}}}));
        assert!(placement(&by_affinity, &ssd).should_run);
        assert!(placement(&by_affinity, &hdd).should_run);
        let neither = node("c", json!({"cores": "2"}), json!([]));
        assert!(!placement(&by_affinity, &neither).should_run);
        assert!(placement(&template(json!({})), &neither).should_run);
    }

    #[test]
    fn taints_stop_new_pods_and_no_execute_ones_evict() {
        let plain = template(json!({}));
        let no_schedule = node(
            "a",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            placement(&plain, &no_schedule),
            Placement {
                should_run: false,
                should_continue: true
            }
        );
        let no_execute = node(
            "a",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]),
        );
        assert_eq!(
            placement(&plain, &no_execute),
            Placement {
                should_run: false,
                should_continue: false
            }
        );
        let tolerant = template(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}),
        );
        assert!(placement(&tolerant, &no_execute).should_run);
        // What Kubernetes' daemon pods tolerate by themselves.
        let cordoned = node(
            "a",
            json!({}),
            json!([
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
            ]),
        );
        assert!(placement(&plain, &cordoned).should_run);
    }

    #[test]
    fn pods_are_pinned_to_their_node_in_every_required_term() {
        let template = template(json!({"hostNetwork": true, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}));
        let spec = pod_spec_for(&template, "n-1");
        let pod = json!({"spec": spec});
        assert_eq!(node_of(&pod), Some("n-1"));
        let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], "disk");
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), DAEMON_TOLERATIONS.len() + 1);
        // Pinned again, nothing doubles.
        let again = pod_spec_for(&pod, "n-1");
        assert_eq!(
            again["tolerations"].as_array().unwrap().len(),
            tolerations.len()
        );
        let bare = pod_spec_for(&super::tests::template(json!({})), "n-2");
        assert_eq!(node_of(&json!({"spec": bare})), Some("n-2"));
        assert_eq!(node_of(&json!({"spec": {"nodeName": "n-3"}})), Some("n-3"));
    }
}
