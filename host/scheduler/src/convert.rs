//! Kubernetes objects into the typed records of the `scheduling` interface, and the
//! FailedScheduling summary in Kubernetes' wording.

use std::collections::BTreeMap;

use flotilla_plugin::bindings::scheduling as wit;
use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

fn labels(map: Option<&BTreeMap<String, String>>) -> Vec<(String, String)> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn amount(name: &str, quantity: &Quantity) -> i64 {
    match flotilla_api::quantity::parse(&quantity.0) {
        Ok(q) if name == "cpu" => q.milli_value(),
        Ok(q) => q.value(),
        Err(_) => 0,
    }
}

/// Resources from a name → quantity map.
pub fn resources(map: Option<&BTreeMap<String, Quantity>>) -> wit::Resources {
    let mut r = wit::Resources {
        milli_cpu: 0,
        memory: 0,
        pods: 0,
        scalar: vec![],
    };
    for (name, quantity) in map.into_iter().flatten() {
        let value = amount(name, quantity);
        match name.as_str() {
            "cpu" => r.milli_cpu = value,
            "memory" => r.memory = value,
            "pods" => r.pods = value,
            _ => r.scalar.push((name.clone(), value)),
        }
    }
    r
}

fn add(total: &mut wit::Resources, more: &wit::Resources) {
    total.milli_cpu += more.milli_cpu;
    total.memory += more.memory;
    total.pods += more.pods;
    for (name, value) in &more.scalar {
        match total.scalar.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v += value,
            None => total.scalar.push((name.clone(), *value)),
        }
    }
}

fn max_into(total: &mut wit::Resources, other: &wit::Resources) {
    total.milli_cpu = total.milli_cpu.max(other.milli_cpu);
    total.memory = total.memory.max(other.memory);
    for (name, value) in &other.scalar {
        match total.scalar.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = (*v).max(*value),
            None => total.scalar.push((name.clone(), *value)),
        }
    }
}

/// A container's requests; limits stand in for requests that are not set, as Kubernetes'
/// defaulting does.
fn container_requests(container: &Container) -> wit::Resources {
    let spec = container.resources.as_ref();
    let mut merged = spec.and_then(|r| r.limits.clone()).unwrap_or_default();
    merged.extend(spec.and_then(|r| r.requests.clone()).unwrap_or_default());
    resources(Some(&merged))
}

/// A pod's effective requests: the sum of its containers (and restartable init containers),
/// at least each init container's, plus the pod's overhead; `pods` is 1.
pub fn pod_requests(pod: &Pod) -> wit::Resources {
    let mut total = wit::Resources {
        milli_cpu: 0,
        memory: 0,
        pods: 0,
        scalar: vec![],
    };
    let Some(spec) = &pod.spec else {
        return total;
    };
    for container in &spec.containers {
        add(&mut total, &container_requests(container));
    }
    let mut sidecars = wit::Resources {
        milli_cpu: 0,
        memory: 0,
        pods: 0,
        scalar: vec![],
    };
    for init in spec.init_containers.iter().flatten() {
        let requests = container_requests(init);
        if init.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &requests);
            add(&mut total, &requests);
        } else {
            let mut with_sidecars = sidecars.clone();
            add(&mut with_sidecars, &requests);
            max_into(&mut total, &with_sidecars);
        }
    }
    add(&mut total, &resources(spec.overhead.as_ref()));
    total.pods = 1;
    total
}

fn operator(op: &str) -> wit::SelectorOperator {
    match op {
        "In" => wit::SelectorOperator::In,
        "NotIn" => wit::SelectorOperator::NotIn,
        "Exists" => wit::SelectorOperator::Exists,
        "DoesNotExist" => wit::SelectorOperator::DoesNotExist,
        "Gt" => wit::SelectorOperator::Gt,
        _ => wit::SelectorOperator::Lt,
    }
}

fn requirement(r: &NodeSelectorRequirement) -> wit::SelectorRequirement {
    wit::SelectorRequirement {
        key: r.key.clone(),
        operator: operator(&r.operator),
        values: r.values.clone().unwrap_or_default(),
    }
}

fn term(t: &NodeSelectorTerm) -> wit::NodeSelectorTerm {
    wit::NodeSelectorTerm {
        match_expressions: t
            .match_expressions
            .iter()
            .flatten()
            .map(requirement)
            .collect(),
        match_fields: t.match_fields.iter().flatten().map(requirement).collect(),
    }
}

fn label_selector(s: &LabelSelector) -> wit::LabelSelector {
    wit::LabelSelector {
        match_labels: labels(s.match_labels.as_ref()),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|r| wit::SelectorRequirement {
                key: r.key.clone(),
                operator: operator(&r.operator),
                values: r.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

fn effect(e: &str) -> Option<wit::TaintEffect> {
    match e {
        "NoSchedule" => Some(wit::TaintEffect::NoSchedule),
        "PreferNoSchedule" => Some(wit::TaintEffect::PreferNoSchedule),
        "NoExecute" => Some(wit::TaintEffect::NoExecute),
        _ => None,
    }
}

fn toleration(t: &Toleration) -> wit::Toleration {
    wit::Toleration {
        key: t.key.clone().unwrap_or_default(),
        operator: if t.operator.as_deref() == Some("Exists") {
            wit::TolerationOperator::Exists
        } else {
            wit::TolerationOperator::Equal
        },
        value: t.value.clone().unwrap_or_default(),
        effect: t.effect.as_deref().and_then(effect),
        toleration_seconds: t.toleration_seconds,
    }
}

fn inclusion(policy: Option<&String>, default: wit::InclusionPolicy) -> wit::InclusionPolicy {
    match policy.map(String::as_str) {
        Some("Honor") => wit::InclusionPolicy::Honor,
        Some("Ignore") => wit::InclusionPolicy::Ignore,
        _ => default,
    }
}

/// The pod as scheduling policies see it.
pub fn pod(pod: &Pod) -> wit::Pod {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref());
    wit::Pod {
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: labels(meta.labels.as_ref()),
        node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
        node_selector: labels(spec.node_selector.as_ref()),
        node_affinity: affinity.map(|a| wit::NodeAffinity {
            required: a
                .required_during_scheduling_ignored_during_execution
                .as_ref()
                .map(|r| r.node_selector_terms.iter().map(term).collect()),
            preferred: a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|p| wit::PreferredTerm {
                    weight: p.weight,
                    preference: term(&p.preference),
                })
                .collect(),
        }),
        tolerations: spec.tolerations.iter().flatten().map(toleration).collect(),
        requests: pod_requests(pod),
        topology_spread_constraints: spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| wit::TopologySpreadConstraint {
                max_skew: c.max_skew,
                topology_key: c.topology_key.clone(),
                when_unsatisfiable: if c.when_unsatisfiable == "ScheduleAnyway" {
                    wit::WhenUnsatisfiable::ScheduleAnyway
                } else {
                    wit::WhenUnsatisfiable::DoNotSchedule
                },
                label_selector: c.label_selector.as_ref().map(label_selector),
                min_domains: c.min_domains,
                node_affinity_policy: inclusion(
                    c.node_affinity_policy.as_ref(),
                    wit::InclusionPolicy::Honor,
                ),
                node_taints_policy: inclusion(
                    c.node_taints_policy.as_ref(),
                    wit::InclusionPolicy::Ignore,
                ),
                match_label_keys: c.match_label_keys.clone().unwrap_or_default(),
            })
            .collect(),
        priority: spec.priority.unwrap_or(0),
    }
}

/// The node as scheduling policies see it.
pub fn node(node: &Node) -> wit::Node {
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    wit::Node {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: labels(node.metadata.labels.as_ref()),
        taints: spec
            .taints
            .iter()
            .flatten()
            .filter_map(|t| {
                Some(wit::Taint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: effect(&t.effect)?,
                })
            })
            .collect(),
        allocatable: resources(status.allocatable.as_ref().or(status.capacity.as_ref())),
        unschedulable: spec.unschedulable.unwrap_or(false),
        ready: status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
    }
}

/// Kubernetes' FailedScheduling message: `0/5 nodes are available: 2 Insufficient cpu, 3
/// node(s) had untolerated taint {…}.` — reasons with their node counts, sorted.
pub fn unavailable(total_nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total_nodes} nodes are available.");
    }
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn effective_requests_follow_kubernetes() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "200m", "example.com/gpu": "1"}}},
                ],
                "initContainers": [
                    {"name": "setup", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}},
                ],
                "overhead": {"cpu": "10m"},
            }
        }))
        .unwrap();
        let r = pod_requests(&pod);
        assert_eq!(
            r.milli_cpu,
            1000 + 10,
            "an init container's larger request wins, plus overhead"
        );
        assert_eq!(r.memory, 64 << 20);
        assert_eq!(r.pods, 1);
        assert_eq!(r.scalar, vec![("example.com/gpu".to_owned(), 1)]);
    }

    #[test]
    fn the_summary_reads_like_kubernetes() {
        let mut reasons = BTreeMap::new();
        reasons.insert(
            "node(s) had untolerated taint {dedicated: gpu}".to_owned(),
            2,
        );
        reasons.insert("Insufficient cpu".to_owned(), 3);
        assert_eq!(
            unavailable(5, &reasons),
            "0/5 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient cpu."
        );
    }
}
