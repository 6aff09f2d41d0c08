//! What an object charges a Kubernetes ResourceQuota, as Kubernetes' quota evaluators count it,
//! shared by the `resource-quota` admission policy (which checks and charges a quota when an
//! object is created) and the `resourcequota-controller` (which recounts a quota's usage from
//! what exists):
//!
//! - [`usage`]: what one object charges: its object count (`count/<plural>[.<group>]`, and the
//!   legacy names `pods`, `services`, `configmaps`, … of the core kinds), a service's node
//!   ports and load balancers, a claim's storage, a pod's effective requests and limits;
//! - [`tracked`] (and [`covers`]): which of a quota's resources objects of a kind charge at
//!   all, so whether the quota concerns them;
//! - [`matches_scopes`]: whether a quota's `spec.scopes` and `spec.scopeSelector` select an
//!   object;
//! - [`missing_compute`]: the compute resources a pod must state for a quota that limits them;
//! - a quota's `spec.hard` and `status.used` read into maps ([`hard`], [`used`]), written back
//!   canonically ([`to_json`]) and printed as Kubernetes prints them ([`pretty`]).
//!
//! Everything here is pure: it reads the objects it is given and nothing else, keeps no state
//! and calls no host, so it must not depend on the SDK. Deciding, charging and writing belong
//! to its two users.

use std::collections::{BTreeMap, BTreeSet};

pub use flotilla_quantity::{Quantity, parse};
use serde_json::{Value, json};

/// Resource names and their quantities, sorted by name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// The compute resources a quota on which makes every container state them (Kubernetes keeps
/// this for backward compatibility, for cpu and memory only).
const VALIDATED: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The pod resources a quota can name besides the prefixed ones (hugepages, extended
/// resources).
const POD_RESOURCES: &[&str] = &[
    "pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

/// Core kinds whose object count also has a legacy name: the plural itself.
const LEGACY_COUNTS: &[&str] = &[
    "pods",
    "services",
    "configmaps",
    "secrets",
    "persistentvolumeclaims",
    "replicationcontrollers",
    "resourcequotas",
];

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// The object-count resource of a kind: `count/pods` in the core group,
/// `count/deployments.apps` in another.
pub fn count_name(resource: &str, group: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// A map of resource names to quantities (strings, or numbers) as a [`ResourceList`]; entries
/// that are not quantities are left out (the API server refuses them anyway).
pub fn quantities(map: &Value) -> ResourceList {
    map.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                _ => return None,
            };
            parse(&text).ok().map(|q| (name.clone(), q))
        })
        .collect()
}

/// A quota's `spec.hard`.
pub fn hard(quota: &Value) -> ResourceList {
    quantities(&quota["spec"]["hard"])
}

/// A quota's `status.used`.
pub fn used(quota: &Value) -> ResourceList {
    quantities(&quota["status"]["used"])
}

/// A quota's `status.hard`.
pub fn status_hard(quota: &Value) -> ResourceList {
    quantities(&quota["status"]["hard"])
}

/// A list as the JSON map a quota's status holds, each quantity in its canonical form.
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(name, q)| (name.clone(), json!(q.to_string())))
            .collect(),
    )
}

/// `pods=1,requests.cpu=500m`: a list as Kubernetes prints it in quota messages.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(name, q)| format!("{name}={q}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Only the entries of `list` that `names` holds.
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names
        .into_iter()
        .filter_map(|name| list.get(name).map(|q| (name.clone(), *q)))
        .collect()
}

fn add_into(total: &mut ResourceList, more: &ResourceList) {
    for (name, q) in more {
        *total.entry(name.clone()).or_insert(Quantity::ZERO) += *q;
    }
}

fn max_into(total: &mut ResourceList, other: &ResourceList) {
    for (name, q) in other {
        let entry = total.entry(name.clone()).or_insert(*q);
        if *q > *entry {
            *entry = *q;
        }
    }
}

/// An extended resource (`example.com/gpu`): a domain-prefixed name outside `kubernetes.io`.
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/") && !name.starts_with("requests.")
}

fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod["spec"][field].as_array().into_iter().flatten()
}

/// A pod's effective requests (`field` = `requests`) or limits (`limits`), as Kubernetes'
/// `PodRequests`/`PodLimits` have it: the larger of the containers' sum and each init
/// container's own (restartable "sidecar" init containers run alongside the rest, so they add
/// to both), plus `spec.overhead` (to limits only where a limit is set).
pub fn pod_resources(pod: &Value, field: &str) -> ResourceList {
    let mut total = ResourceList::new();
    for container in containers(pod, "containers") {
        add_into(&mut total, &quantities(&container["resources"][field]));
    }
    let mut sidecars = ResourceList::new();
    let mut init = ResourceList::new();
    for container in containers(pod, "initContainers") {
        let mut own = quantities(&container["resources"][field]);
        if container["restartPolicy"] == "Always" {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            own = sidecars.clone();
        } else {
            add_into(&mut own, &sidecars);
        }
        max_into(&mut init, &own);
    }
    max_into(&mut total, &init);
    let overhead = quantities(&pod["spec"]["overhead"]);
    if field == "limits" {
        for (name, q) in overhead {
            if let Some(limit) = total.get_mut(&name) {
                *limit += q;
            }
        }
    } else {
        add_into(&mut total, &overhead);
    }
    total
}

/// Whether a pod has finished (`Succeeded` or `Failed`): it no longer holds compute.
pub fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// What requests and limits give as quota resources: `cpu` and `requests.cpu` from a cpu
/// request, `limits.cpu` from its limit (memory and ephemeral storage alike), hugepages and
/// extended resources from their requests.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    for name in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(name) {
            out.insert(name.to_owned(), *q);
            out.insert(format!("requests.{name}"), *q);
        }
        if let Some(q) = limits.get(name) {
            out.insert(format!("limits.{name}"), *q);
        }
    }
    for (name, q) in requests {
        if name.starts_with("hugepages-") {
            out.insert(name.clone(), *q);
            out.insert(format!("requests.{name}"), *q);
        } else if is_extended(name) {
            out.insert(format!("requests.{name}"), *q);
        }
    }
    out
}

fn pod_usage(pod: &Value, out: &mut ResourceList) {
    // Object counts track every pod in storage; `pods` and compute only pods that still run.
    if is_terminal(pod) {
        return;
    }
    out.insert("pods".into(), Quantity::from_value(1));
    let requests = pod_resources(pod, "requests");
    let limits = pod_resources(pod, "limits");
    out.extend(compute_usage(&requests, &limits));
}

fn service_usage(service: &Value, out: &mut ResourceList) {
    out.insert("services".into(), Quantity::from_value(1));
    let spec = &service["spec"];
    let ports = spec["ports"].as_array().map_or(&[][..], Vec::as_slice);
    let node_ports = match spec["type"].as_str() {
        Some("NodePort") => ports.len(),
        Some("LoadBalancer") => {
            out.insert("services.loadbalancers".into(), Quantity::from_value(1));
            if spec["allocateLoadBalancerNodePorts"] == false {
                ports
                    .iter()
                    .filter(|p| p["nodePort"].as_i64().is_some_and(|n| n != 0))
                    .count()
            } else {
                ports.len()
            }
        }
        _ => 0,
    };
    if node_ports > 0 {
        out.insert(
            "services.nodeports".into(),
            Quantity::from_value(node_ports as i64),
        );
    }
}

/// A claim's storage class: `spec.storageClassName`, or the beta annotation.
fn storage_class(claim: &Value) -> Option<&str> {
    claim["spec"]["storageClassName"]
        .as_str()
        .or_else(|| {
            claim["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"].as_str()
        })
        .filter(|class| !class.is_empty())
}

fn claim_usage(claim: &Value, out: &mut ResourceList) {
    let one = Quantity::from_value(1);
    out.insert("persistentvolumeclaims".into(), one);
    let storage = quantities(&claim["spec"]["resources"]["requests"])
        .get("storage")
        .copied();
    if let Some(storage) = storage {
        out.insert("requests.storage".into(), storage);
    }
    if let Some(class) = storage_class(claim) {
        out.insert(
            format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            one,
        );
        if let Some(storage) = storage {
            out.insert(
                format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"),
                storage,
            );
        }
    }
}

/// What one object of `resource` (its plural) in API group `group` charges a quota. A pod
/// that has finished charges only its object count (`count/pods`): Kubernetes counts objects
/// in storage, compute only of pods that can still run.
pub fn usage(resource: &str, group: &str, object: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert(count_name(resource, group), Quantity::from_value(1));
    if !group.is_empty() {
        return out;
    }
    match resource {
        "pods" => pod_usage(object, &mut out),
        "services" => service_usage(object, &mut out),
        "persistentvolumeclaims" => claim_usage(object, &mut out),
        _ if LEGACY_COUNTS.contains(&resource) => {
            out.insert(resource.to_owned(), Quantity::from_value(1));
        }
        _ => {}
    }
    out
}

/// Whether objects of `resource` in `group` can charge the quota resource `name` (Kubernetes'
/// `MatchingResources`): a quota naming it concerns them, even when one object charges none
/// of it.
pub fn covers(resource: &str, group: &str, name: &str) -> bool {
    if name == count_name(resource, group) {
        return true;
    }
    if !group.is_empty() {
        return false;
    }
    match resource {
        "pods" => {
            POD_RESOURCES.contains(&name)
                || name.starts_with("hugepages-")
                || name.starts_with("requests.hugepages-")
                || name.strip_prefix("requests.").is_some_and(is_extended)
        }
        "services" => matches!(
            name,
            "services" | "services.loadbalancers" | "services.nodeports"
        ),
        "persistentvolumeclaims" => {
            name == "persistentvolumeclaims"
                || name == "requests.storage"
                || name
                    .split_once(STORAGE_CLASS_SUFFIX)
                    .is_some_and(|(class, rest)| {
                        !class.is_empty()
                            && matches!(rest, "requests.storage" | "persistentvolumeclaims")
                    })
        }
        _ => LEGACY_COUNTS.contains(&resource) && name == resource,
    }
}

/// The resources of `hard` that objects of `resource` in `group` charge: what a quota with
/// these limits tracks of them. Empty: the quota does not concern the kind.
pub fn tracked(hard: &ResourceList, resource: &str, group: &str) -> Vec<String> {
    hard.keys()
        .filter(|name| covers(resource, group, name))
        .cloned()
        .collect()
}

/// `spec.activeDeadlineSeconds` is set: the pod ends on its own.
fn is_terminating(pod: &Value) -> bool {
    pod["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|s| s >= 0)
}

/// The pod's QoS class is BestEffort: no container states a cpu or memory request or limit
/// above zero (Kubernetes' QoS looks at cpu and memory only). A recorded `status.qosClass`
/// wins.
pub fn is_best_effort(pod: &Value) -> bool {
    if let Some(class) = pod["status"]["qosClass"].as_str().filter(|c| !c.is_empty()) {
        return class == "BestEffort";
    }
    let states = |resources: &Value| {
        ["requests", "limits"].iter().any(|field| {
            quantities(&resources[*field])
                .iter()
                .any(|(name, q)| matches!(name.as_str(), "cpu" | "memory") && *q > Quantity::ZERO)
        })
    };
    !(states(&pod["spec"]["resources"])
        || containers(pod, "containers")
            .chain(containers(pod, "initContainers"))
            .any(|c| states(&c["resources"])))
}

/// Some pod (anti-)affinity term of the pod names other namespaces.
fn uses_cross_namespace_affinity(pod: &Value) -> bool {
    let affinity = &pod["spec"]["affinity"];
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let affinity = &affinity[*kind];
        let required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten();
        let preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| &p["podAffinityTerm"]);
        required.chain(preferred).any(|term| {
            term["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                || term["namespaceSelector"].is_object()
        })
    })
}

/// Whether one scope requirement selects a pod. The scopes that are properties of the pod
/// (Terminating, BestEffort, …) hold with `Exists` (what `spec.scopes` means) and are negated
/// by `DoesNotExist`; PriorityClass compares `spec.priorityClassName` with the values.
fn scope_matches(scope: &str, operator: &str, values: &[&str], pod: &Value) -> bool {
    let holds = match scope {
        "Terminating" => is_terminating(pod),
        "NotTerminating" => !is_terminating(pod),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(pod),
        "PriorityClass" => {
            let class = pod["spec"]["priorityClassName"]
                .as_str()
                .unwrap_or_default();
            return match operator {
                "In" => values.contains(&class),
                "NotIn" => !values.contains(&class),
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                _ => false,
            };
        }
        _ => return false,
    };
    if operator == "DoesNotExist" {
        !holds
    } else {
        holds
    }
}

/// Whether a quota's scopes select `object` (of `object_resource`, its plural): every scope
/// of `spec.scopes` and every `spec.scopeSelector.matchExpressions` requirement holds. A quota
/// without scopes selects everything; one with any scope tracks only pods, so selects no
/// object of another kind.
pub fn matches_scopes(quota: &Value, object_resource: &str, object: &Value) -> bool {
    let scopes: Vec<(&str, &str, Vec<&str>)> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|scope| (scope, "Exists", Vec::new()))
        .chain(
            quota["spec"]["scopeSelector"]["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (
                        e["scopeName"].as_str().unwrap_or_default(),
                        e["operator"].as_str().unwrap_or_default(),
                        e["values"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect(),
                    )
                }),
        )
        .collect();
    if scopes.is_empty() {
        return true;
    }
    object_resource == "pods"
        && scopes
            .iter()
            .all(|(scope, operator, values)| scope_matches(scope, operator, values, object))
}

/// The cpu and memory resources `hard` limits that some container (or init container) of
/// `pod` does not state, as Kubernetes words it: `["limits.cpu for: app,sidecar",
/// "requests.memory for: app"]`, by resource, containers sorted. A quota on `cpu`/`memory`
/// (meaning requests) or `requests.*`/`limits.*` of them makes every container state them.
pub fn missing_compute(hard: &ResourceList, pod: &Value) -> Vec<String> {
    let required: BTreeSet<&str> = hard
        .keys()
        .map(String::as_str)
        .filter(|name| VALIDATED.contains(name))
        .collect();
    if required.is_empty() {
        return Vec::new();
    }
    let mut missing: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for container in containers(pod, "containers").chain(containers(pod, "initContainers")) {
        let stated = compute_usage(
            &quantities(&container["resources"]["requests"]),
            &quantities(&container["resources"]["limits"]),
        );
        let name = container["name"].as_str().unwrap_or_default();
        for resource in &required {
            if !stated.contains_key(*resource) {
                missing.entry(resource).or_default().insert(name);
            }
        }
    }
    missing
        .into_iter()
        .map(|(resource, names)| {
            let names: Vec<&str> = names.into_iter().collect();
            format!("{resource} for: {}", names.join(","))
        })
        .collect()
}

/// `must specify limits.cpu for: app,sidecar; requests.memory for: app`: what
/// [`missing_compute`] found, as one message.
pub fn must_specify(missing: &[String]) -> String {
    format!("must specify {}", missing.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        parse(text).unwrap()
    }

    fn list(entries: &[(&str, &str)]) -> ResourceList {
        entries
            .iter()
            .map(|(name, text)| ((*name).to_owned(), q(text)))
            .collect()
    }

    fn container(name: &str, requests: Value, limits: Value) -> Value {
        json!({"name": name, "resources": {"requests": requests, "limits": limits}})
    }

    #[test]
    fn count_names_carry_the_group() {
        assert_eq!(count_name("pods", ""), "count/pods");
        assert_eq!(count_name("deployments", "apps"), "count/deployments.apps");
        assert_eq!(
            count_name("websites", "example.com"),
            "count/websites.example.com"
        );
    }

    #[test]
    fn every_object_charges_its_count_and_core_kinds_their_legacy_name() {
        assert_eq!(
            usage("configmaps", "", &json!({})),
            list(&[("configmaps", "1"), ("count/configmaps", "1")])
        );
        for kind in ["secrets", "replicationcontrollers", "resourcequotas"] {
            let charged = usage(kind, "", &json!({}));
            assert_eq!(charged[kind], q("1"), "{kind}");
            assert_eq!(charged[&format!("count/{kind}")], q("1"), "{kind}");
        }
        assert_eq!(
            usage("deployments", "apps", &json!({"spec": {"replicas": 3}})),
            list(&[("count/deployments.apps", "1")])
        );
        assert_eq!(
            usage("widgets", "", &json!({})),
            list(&[("count/widgets", "1")])
        );
    }

    #[test]
    fn a_pod_charges_the_larger_of_its_containers_and_init_containers_plus_overhead() {
        let pod = json!({"spec": {
            "containers": [
                container("app", json!({"cpu": "250m", "memory": "64Mi"}), json!({"cpu": "500m", "memory": "128Mi"})),
                container("sidecar", json!({"cpu": "250m", "memory": "64Mi"}), json!({"memory": "64Mi"})),
            ],
            "initContainers": [
                container("setup", json!({"cpu": "1", "memory": "32Mi"}), json!({"cpu": "2"})),
            ],
            "overhead": {"cpu": "100m", "memory": "10Mi"},
        }});
        let charged = usage("pods", "", &pod);
        assert_eq!(
            charged,
            list(&[
                ("count/pods", "1"),
                ("pods", "1"),
                ("cpu", "1100m"),
                ("requests.cpu", "1100m"),
                ("memory", "138Mi"),
                ("requests.memory", "138Mi"),
                ("limits.cpu", "2100m"),
                ("limits.memory", "202Mi"),
            ])
        );
    }

    #[test]
    fn sidecar_init_containers_run_alongside_the_containers() {
        let pod = json!({"spec": {
            "containers": [container("app", json!({"cpu": "1"}), json!(null))],
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                container("migrate", json!({"cpu": "1200m"}), json!(null)),
            ],
        }});
        // The sum is 1.5; the migration runs next to the proxy: 1.7.
        assert_eq!(pod_resources(&pod, "requests")["cpu"], q("1700m"));
    }

    #[test]
    fn ephemeral_storage_hugepages_and_extended_resources_are_charged() {
        let pod = json!({"spec": {"containers": [container(
            "app",
            json!({"ephemeral-storage": "1Gi", "hugepages-2Mi": "4Mi", "example.com/gpu": "2"}),
            json!({"ephemeral-storage": "2Gi", "example.com/gpu": "2"}),
        )]}});
        let charged = usage("pods", "", &pod);
        assert_eq!(charged["ephemeral-storage"], q("1Gi"));
        assert_eq!(charged["requests.ephemeral-storage"], q("1Gi"));
        assert_eq!(charged["limits.ephemeral-storage"], q("2Gi"));
        assert_eq!(charged["hugepages-2Mi"], q("4Mi"));
        assert_eq!(charged["requests.hugepages-2Mi"], q("4Mi"));
        assert_eq!(charged["requests.example.com/gpu"], q("2"));
        assert!(!charged.contains_key("limits.example.com/gpu"));
        assert!(!charged.contains_key("cpu"), "nothing asked for cpu");
    }

    #[test]
    fn numeric_quantities_are_read() {
        let pod =
            json!({"spec": {"containers": [container("app", json!({"cpu": 2}), json!(null))]}});
        assert_eq!(usage("pods", "", &pod)["requests.cpu"], q("2"));
    }

    #[test]
    fn a_finished_pod_charges_only_its_object_count() {
        let pod = json!({"spec": {"containers": [container("app", json!({"cpu": "1"}), json!(null))]},
            "status": {"phase": "Succeeded"}});
        assert_eq!(usage("pods", "", &pod), list(&[("count/pods", "1")]));
        let failed = json!({"status": {"phase": "Failed"}});
        assert!(!usage("pods", "", &failed).contains_key("pods"));
        let running = json!({"status": {"phase": "Running"}});
        assert_eq!(usage("pods", "", &running)["pods"], q("1"));
    }

    #[test]
    fn services_charge_node_ports_and_load_balancers() {
        let ports = json!([{"port": 80}, {"port": 443}]);
        let cluster_ip = json!({"spec": {"type": "ClusterIP", "ports": ports}});
        assert_eq!(
            usage("services", "", &cluster_ip),
            list(&[("count/services", "1"), ("services", "1")])
        );
        let node_port = json!({"spec": {"type": "NodePort", "ports": ports}});
        assert_eq!(
            usage("services", "", &node_port)["services.nodeports"],
            q("2")
        );
        assert!(!usage("services", "", &node_port).contains_key("services.loadbalancers"));
        let balancer = json!({"spec": {"type": "LoadBalancer", "ports": ports}});
        let charged = usage("services", "", &balancer);
        assert_eq!(charged["services.loadbalancers"], q("1"));
        assert_eq!(charged["services.nodeports"], q("2"));
        let without_node_ports = json!({"spec": {"type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false,
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}});
        assert_eq!(
            usage("services", "", &without_node_ports)["services.nodeports"],
            q("1")
        );
    }

    #[test]
    fn claims_charge_their_storage_also_by_class() {
        let claim = json!({"spec": {"storageClassName": "fast",
            "resources": {"requests": {"storage": "10Gi"}}}});
        assert_eq!(
            usage("persistentvolumeclaims", "", &claim),
            list(&[
                ("count/persistentvolumeclaims", "1"),
                ("persistentvolumeclaims", "1"),
                ("requests.storage", "10Gi"),
                (
                    "fast.storageclass.storage.k8s.io/persistentvolumeclaims",
                    "1"
                ),
                ("fast.storageclass.storage.k8s.io/requests.storage", "10Gi"),
            ])
        );
    }

    #[test]
    fn a_kind_covers_the_resources_it_can_charge() {
        for name in [
            "pods",
            "count/pods",
            "cpu",
            "requests.memory",
            "limits.ephemeral-storage",
            "requests.hugepages-2Mi",
            "requests.example.com/gpu",
        ] {
            assert!(covers("pods", "", name), "{name}");
        }
        for name in [
            "services",
            "requests.storage",
            "count/services",
            "limits.example.com/gpu",
        ] {
            assert!(!covers("pods", "", name), "{name}");
        }
        assert!(covers("services", "", "services.nodeports"));
        assert!(covers("persistentvolumeclaims", "", "requests.storage"));
        assert!(covers(
            "persistentvolumeclaims",
            "",
            "gold.storageclass.storage.k8s.io/requests.storage"
        ));
        assert!(covers("deployments", "apps", "count/deployments.apps"));
        assert!(!covers("deployments", "apps", "count/deployments"));
        assert!(!covers("deployments", "apps", "pods"));
        assert!(covers("secrets", "", "secrets"));
        assert!(!covers("secrets", "", "configmaps"));
        let hard = list(&[("pods", "10"), ("requests.cpu", "4"), ("services", "2")]);
        assert_eq!(tracked(&hard, "pods", ""), vec!["pods", "requests.cpu"]);
        assert_eq!(tracked(&hard, "services", ""), vec!["services"]);
        assert!(tracked(&hard, "configmaps", "").is_empty());
    }

    #[test]
    fn a_quota_without_scopes_selects_everything() {
        let quota = json!({"spec": {"hard": {"pods": "1"}}});
        assert!(matches_scopes(&quota, "pods", &json!({})));
        assert!(matches_scopes(&quota, "configmaps", &json!({})));
    }

    #[test]
    fn a_scoped_quota_selects_only_pods() {
        let quota = json!({"spec": {"scopes": ["NotTerminating"]}});
        assert!(matches_scopes(&quota, "pods", &json!({"spec": {}})));
        assert!(!matches_scopes(&quota, "configmaps", &json!({})));
        assert!(!matches_scopes(&quota, "services", &json!({})));
    }

    #[test]
    fn terminating_scopes_follow_the_active_deadline() {
        let terminating = json!({"spec": {"scopes": ["Terminating"]}});
        let not_terminating = json!({"spec": {"scopes": ["NotTerminating"]}});
        let job_pod = json!({"spec": {"activeDeadlineSeconds": 60}});
        let pod = json!({"spec": {}});
        assert!(matches_scopes(&terminating, "pods", &job_pod));
        assert!(!matches_scopes(&terminating, "pods", &pod));
        assert!(matches_scopes(&not_terminating, "pods", &pod));
        assert!(!matches_scopes(&not_terminating, "pods", &job_pod));
    }

    #[test]
    fn best_effort_scopes_follow_the_qos_class() {
        let best_effort = json!({"spec": {"scopes": ["BestEffort"]}});
        let not_best_effort = json!({"spec": {"scopes": ["NotBestEffort"]}});
        let bare = json!({"spec": {"containers": [{"name": "app"}]}});
        let storage_only = json!({"spec": {"containers": [container("app",
            json!({"ephemeral-storage": "1Gi"}), json!(null))]}});
        let init_limited = json!({"spec": {"containers": [{"name": "app"}],
            "initContainers": [container("setup", json!(null), json!({"memory": "1Gi"}))]}});
        let recorded = json!({"spec": {"containers": [{"name": "app"}]},
            "status": {"qosClass": "Burstable"}});
        assert!(matches_scopes(&best_effort, "pods", &bare));
        assert!(matches_scopes(&best_effort, "pods", &storage_only));
        assert!(!matches_scopes(&best_effort, "pods", &init_limited));
        assert!(matches_scopes(&not_best_effort, "pods", &init_limited));
        assert!(!matches_scopes(&best_effort, "pods", &recorded));
        assert!(!matches_scopes(&not_best_effort, "pods", &bare));
    }

    #[test]
    fn scope_selectors_match_priority_classes() {
        let selector = |operator: &str, values: Value| {
            json!({"spec": {"scopeSelector": {"matchExpressions": [
                {"scopeName": "PriorityClass", "operator": operator, "values": values}]}}})
        };
        let high = json!({"spec": {"priorityClassName": "high"}});
        let none = json!({"spec": {}});
        let is_in = selector("In", json!(["high", "medium"]));
        assert!(matches_scopes(&is_in, "pods", &high));
        assert!(!matches_scopes(&is_in, "pods", &none));
        let not_in = selector("NotIn", json!(["high"]));
        assert!(!matches_scopes(&not_in, "pods", &high));
        assert!(matches_scopes(&not_in, "pods", &none));
        let exists = selector("Exists", json!([]));
        assert!(matches_scopes(&exists, "pods", &high));
        assert!(!matches_scopes(&exists, "pods", &none));
        let absent = selector("DoesNotExist", json!([]));
        assert!(!matches_scopes(&absent, "pods", &high));
        assert!(matches_scopes(&absent, "pods", &none));
        assert!(!matches_scopes(&is_in, "services", &high));
    }

    #[test]
    fn scopes_and_selectors_must_all_hold() {
        let quota = json!({"spec": {"scopes": ["NotTerminating"], "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]},
            {"scopeName": "BestEffort", "operator": "DoesNotExist"}]}}});
        let pod = |deadline: Value, class: &str, cpu: Value| {
            json!({"spec": {"activeDeadlineSeconds": deadline, "priorityClassName": class,
                "containers": [container("app", json!({"cpu": cpu}), json!(null))]}})
        };
        assert!(matches_scopes(
            &quota,
            "pods",
            &pod(json!(null), "high", json!("1"))
        ));
        assert!(!matches_scopes(
            &quota,
            "pods",
            &pod(json!(30), "high", json!("1"))
        ));
        assert!(!matches_scopes(
            &quota,
            "pods",
            &pod(json!(null), "low", json!("1"))
        ));
        assert!(!matches_scopes(
            &quota,
            "pods",
            &pod(json!(null), "high", json!(null))
        ));
    }

    #[test]
    fn cross_namespace_affinity_is_a_scope() {
        let quota = json!({"spec": {"scopes": ["CrossNamespacePodAffinity"]}});
        let cross = json!({"spec": {"affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1,
                "podAffinityTerm": {"topologyKey": "zone", "namespaceSelector": {}}}]}}}});
        let local = json!({"spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone"}]}}}});
        assert!(matches_scopes(&quota, "pods", &cross));
        assert!(!matches_scopes(&quota, "pods", &local));
    }

    #[test]
    fn a_quota_on_cpu_or_memory_makes_every_container_state_it() {
        let pod = json!({"spec": {
            "containers": [
                container("app", json!({"cpu": "1"}), json!(null)),
                container("sidecar", json!({"cpu": "1", "memory": "1Gi"}), json!({"memory": "1Gi"})),
            ],
            "initContainers": [container("setup", json!({"cpu": "1", "memory": "1Gi"}),
                json!({"cpu": "1", "memory": "1Gi"}))],
        }});
        let hard = list(&[
            ("limits.cpu", "4"),
            ("requests.memory", "4Gi"),
            ("pods", "3"),
        ]);
        let missing = missing_compute(&hard, &pod);
        assert_eq!(
            missing,
            vec!["limits.cpu for: app,sidecar", "requests.memory for: app"]
        );
        assert_eq!(
            must_specify(&missing),
            "must specify limits.cpu for: app,sidecar; requests.memory for: app"
        );
        // Plain `cpu` means requests.
        let plain = list(&[("cpu", "4"), ("memory", "4Gi")]);
        assert_eq!(missing_compute(&plain, &pod), vec!["memory for: app"]);
        // Ephemeral storage and counts constrain nothing.
        let others = list(&[("pods", "3"), ("limits.ephemeral-storage", "1Gi")]);
        assert!(missing_compute(&others, &pod).is_empty());
        let stated = list(&[("requests.cpu", "4")]);
        assert!(missing_compute(&stated, &pod).is_empty());
    }

    #[test]
    fn quota_maps_read_print_and_write_canonically() {
        let quota = json!({"spec": {"hard": {"pods": 10, "requests.cpu": "2000m", "bad": "x"}},
            "status": {"used": {"pods": "3", "requests.cpu": "0.5"}}});
        let hard = hard(&quota);
        assert_eq!(hard, list(&[("pods", "10"), ("requests.cpu", "2")]));
        assert_eq!(
            used(&quota),
            list(&[("pods", "3"), ("requests.cpu", "500m")])
        );
        assert!(status_hard(&quota).is_empty());
        assert_eq!(pretty(&hard), "pods=10,requests.cpu=2");
        assert_eq!(to_json(&hard), json!({"pods": "10", "requests.cpu": "2"}));
        assert_eq!(pretty(&ResourceList::new()), "");
        let names = vec!["pods".to_owned(), "memory".to_owned()];
        assert_eq!(mask(&hard, &names), list(&[("pods", "10")]));
    }
}
