//! Endpoints and EndpointSlices, as Kubernetes' endpoints and endpointslice controllers make
//! them, for every Service with a selector:
//!
//! - the Service's pods are those its selector matches that have an IP and are not finished;
//! - a pod is a ready address when its Ready condition is True (or the Service publishes
//!   not-ready addresses), else a not-ready one; a pod being deleted leaves the Endpoints and
//!   stays in its slice as `terminating`;
//! - each port's `targetPort` is a number, or a name resolved in each pod's containers (a pod
//!   without that named port is left out of that port's addresses);
//! - Endpoints (named as the Service) group addresses by their port sets; EndpointSlices hold
//!   at most 100 endpoints each, are labelled `kubernetes.io/service-name` and owned by the
//!   Service (so the garbage collector removes them with it). Endpoints of a deleted Service
//!   are deleted. Nothing is written when nothing changed.

use std::collections::BTreeMap;
use std::time::Duration;

use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";
const MAX_PER_SLICE: usize = 100;

#[derive(Debug)]
pub struct EndpointsController;

/// A pod's port for a Service port's `targetPort`.
fn target_port(pod: &Value, target: &Value, port: &Value) -> Option<i64> {
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        // Unset: the same as the port.
        _ => port.as_i64(),
    }
}

/// One pod as an endpoint: its ports (resolved) and its state.
struct Member<'a> {
    pod: &'a Value,
    ports: Vec<Value>,
    ready: bool,
    terminating: bool,
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
        "uid": pod["metadata"]["uid"]})
}

fn address(pod: &Value) -> Value {
    let mut address = json!({"ip": pod["status"]["podIP"], "targetRef": target_ref(pod)});
    if let Some(node) = pod["spec"]["nodeName"].as_str() {
        address["nodeName"] = json!(node);
    }
    address
}

fn members<'a>(service: &Value, pods: &'a [Value]) -> Vec<Member<'a>> {
    let publish = service["spec"]["publishNotReadyAddresses"] == true;
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    pods.iter()
        .filter(|pod| pod["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty()))
        .filter(|pod| !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .map(|pod| Member {
            pod,
            ports: ports
                .iter()
                .filter_map(|p| {
                    let number = target_port(pod, &p["targetPort"], &p["port"])?;
                    let mut port = json!({"port": number, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                        port["name"] = json!(name);
                    }
                    if let Some(app) = p["appProtocol"].as_str() {
                        port["appProtocol"] = json!(app);
                    }
                    Some(port)
                })
                .collect(),
            ready: publish || is_ready(pod),
            terminating: pod["metadata"].get("deletionTimestamp").is_some(),
        })
        .collect()
}

/// One Endpoints subset being built: ready and not-ready addresses of one port set.
#[derive(Default)]
struct Subset {
    ready: Vec<Value>,
    not_ready: Vec<Value>,
    ports: Vec<Value>,
}

/// Endpoints subsets: addresses grouped by their port sets, sorted for stable output.
fn subsets(members: &[Member]) -> Value {
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    for member in members
        .iter()
        .filter(|m| !m.terminating && !m.ports.is_empty())
    {
        let key = Value::Array(member.ports.clone()).to_string();
        let group = groups.entry(key).or_insert_with(|| Subset {
            ports: member.ports.clone(),
            ..Subset::default()
        });
        if member.ready {
            group.ready.push(address(member.pod));
        } else {
            group.not_ready.push(address(member.pod));
        }
    }
    let by_ip = |a: &Value, b: &Value| a["ip"].as_str().cmp(&b["ip"].as_str());
    Value::Array(
        groups
            .into_values()
            .map(|mut group| {
                group.ready.sort_by(by_ip);
                group.not_ready.sort_by(by_ip);
                let mut subset = json!({"ports": group.ports});
                if !group.ready.is_empty() {
                    subset["addresses"] = json!(group.ready);
                }
                if !group.not_ready.is_empty() {
                    subset["notReadyAddresses"] = json!(group.not_ready);
                }
                subset
            })
            .collect(),
    )
}

/// The slices wanted: per port set, chunks of at most 100 endpoints, named
/// `<service>-<hash of the port set>[-n]`.
fn slices(service: &Value, members: &[Member]) -> Vec<Value> {
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for member in members {
        let key = Value::Array(member.ports.clone()).to_string();
        let mut endpoint = json!({
            "addresses": [member.pod["status"]["podIP"]],
            "conditions": {"ready": member.ready && !member.terminating, "serving": member.ready,
                "terminating": member.terminating},
            "targetRef": target_ref(member.pod),
        });
        if let Some(node) = member.pod["spec"]["nodeName"].as_str() {
            endpoint["nodeName"] = json!(node);
        }
        groups
            .entry(key)
            .or_insert_with(|| (Vec::new(), member.ports.clone()))
            .0
            .push(endpoint);
    }
    let mut labels = service["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(SERVICE_NAME.into(), json!(name));
    labels.insert(MANAGED_BY.into(), json!(MANAGER));
    let mut wanted = Vec::new();
    for (key, (mut endpoints, ports)) in groups {
        endpoints.sort_by(|a, b| a["addresses"][0].as_str().cmp(&b["addresses"][0].as_str()));
        let hash = safe_encode(fnv32a(key.as_bytes()));
        for (index, chunk) in endpoints.chunks(MAX_PER_SLICE).enumerate() {
            let slice_name = if index == 0 {
                format!("{name}-{hash}")
            } else {
                format!("{name}-{hash}-{index}")
            };
            wanted.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": slice_name, "namespace": service["metadata"]["namespace"],
                    "labels": labels, "ownerReferences": [owner_reference(service)]},
                "addressType": "IPv4",
                "endpoints": chunk,
                "ports": ports,
            }));
        }
    }
    wanted
}

/// Creates `wanted`, or updates `existing` to it when the listed fields differ.
fn put(existing: Option<&Value>, wanted: Value, fields: &[&str]) -> Result<(), String> {
    match existing {
        None => match api::create(&wanted.to_string()) {
            Ok(_) => Ok(()),
            Err(s) if s.code == 409 => Err("created meanwhile; retrying".into()),
            Err(s) => Err(failed("creating", s)),
        },
        Some(existing) => {
            let same = fields.iter().all(|f| {
                let (a, b) = (field(existing, f), field(&wanted, f));
                a == b || (a.is_null() && b.as_array().is_some_and(Vec::is_empty))
            });
            if same {
                return Ok(());
            }
            let mut updated = existing.clone();
            for f in fields {
                let target = f
                    .split('.')
                    .fold(&mut updated, |value, part| &mut value[part]);
                *target = field(&wanted, f).clone();
            }
            api::update(&updated.to_string())
                .map(drop)
                .map_err(|s| failed("updating", s))
        }
    }
}

fn field<'a>(object: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(object, |value, part| &value[part])
}

impl Controller for EndpointsController {
    const NAME: &'static str = "endpoints-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("v1", "Service")
            .watch(Watch::new(
                "v1",
                "Pod",
                KeyMapping::SelectedBy("spec.selector".into()),
            ))
            .watch(Watch::new("v1", "Endpoints", KeyMapping::Primary))
            .owns("discovery.k8s.io/v1", "EndpointSlice")
            .workers(5)
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let namespace = key.namespace.as_deref();
        let endpoints = cache::get("v1", "Endpoints", namespace, &key.name)
            .map_err(|s| failed("reading the endpoints", s))?
            .map(|e| parse(&e))
            .transpose()?;
        let slices_now: Vec<Value> = cache::list(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            namespace,
            &format!("{SERVICE_NAME}={},{MANAGED_BY}={MANAGER}", key.name),
        )
        .map_err(|s| failed("listing endpoint slices", s))?
        .iter()
        .filter_map(|s| parse(s).ok())
        .collect();
        let service = cache::get("v1", "Service", namespace, &key.name)
            .map_err(|s| failed("reading the service", s))?
            .map(|s| parse(&s))
            .transpose()?;
        let selector = service
            .as_ref()
            .and_then(|s| s["spec"]["selector"].as_object())
            .filter(|s| !s.is_empty());
        let (Some(service), Some(selector)) = (service.as_ref(), selector) else {
            // No Service, or one without a selector (its Endpoints are its owner's business):
            // the Endpoints of a deleted Service go; its slices go with it (owned).
            if service.is_none()
                && let Some(endpoints) = &endpoints
            {
                let options = DeleteOptions {
                    uid: endpoints["metadata"]["uid"].as_str().map(str::to_owned),
                    ..DeleteOptions::default()
                };
                match api::delete(&object_ref(endpoints), &options) {
                    Ok(()) => {}
                    Err(s) if s.code == 404 || s.code == 409 => {}
                    Err(s) => return Err(failed("deleting the endpoints", s)),
                }
            }
            return Ok(None);
        };
        let selector: Vec<String> = selector
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
            .collect();
        let pods: Vec<Value> = cache::list("v1", "Pod", namespace, &selector.join(","))
            .map_err(|s| failed("listing pods", s))?
            .iter()
            .filter_map(|p| parse(p).ok())
            .collect();
        let members = members(service, &pods);

        let mut labels = service["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if service["spec"]["clusterIP"] == "None" {
            labels.insert("service.kubernetes.io/headless".into(), json!(""));
        }
        let wanted = json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": key.name, "namespace": key.namespace, "labels": labels},
            "subsets": subsets(&members),
        });
        put(endpoints.as_ref(), wanted, &["metadata.labels", "subsets"])
            .map_err(|e| format!("endpoints: {e}"))?;

        let wanted = slices(service, &members);
        for slice in &wanted {
            let name = slice["metadata"]["name"].as_str().unwrap_or_default();
            let existing = slices_now.iter().find(|s| s["metadata"]["name"] == name);
            put(
                existing,
                slice.clone(),
                &["metadata.labels", "endpoints", "ports"],
            )
            .map_err(|e| format!("endpoint slice {name}: {e}"))?;
        }
        for stale in slices_now.iter().filter(|s| {
            !wanted
                .iter()
                .any(|w| w["metadata"]["name"] == s["metadata"]["name"])
        }) {
            let options = DeleteOptions {
                uid: stale["metadata"]["uid"].as_str().map(str::to_owned),
                ..DeleteOptions::default()
            };
            match api::delete(&object_ref(stale), &options) {
                Ok(()) => {}
                Err(s) if s.code == 404 || s.code == 409 => {}
                Err(s) => return Err(failed("deleting a stale endpoint slice", s)),
            }
        }
        Ok(None)
    }
}

flotilla_sdk::export_controller!(EndpointsController);
