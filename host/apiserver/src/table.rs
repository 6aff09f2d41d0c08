//! Server-side printing: `meta.k8s.io/v1` Tables with the columns Kubernetes prints for each
//! kind, for `kubectl get` (which asks for `application/json;as=Table;v=v1;g=meta.k8s.io`).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceDef};

/// What a Table row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a Table before anything else it accepts.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

type Cell = fn(&Value, SystemTime) -> Value;

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    /// 0: shown by default; 1: shown with `-o wide`.
    priority: u8,
    cell: Cell,
}

const fn column(name: &'static str, priority: u8, description: &'static str, cell: Cell) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority,
        cell,
    }
}

fn name_cell(o: &Value, _: SystemTime) -> Value {
    o["metadata"]["name"].clone()
}

fn age_cell(o: &Value, now: SystemTime) -> Value {
    json!(age(o["metadata"]["creationTimestamp"].as_str(), now))
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: name_cell,
};
const AGE: Column = column(
    "Age",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
    age_cell,
);

/// How long ago `timestamp` was, as Kubernetes prints ages: `45s`, `3m20s`, `5h`, `2d3h`.
pub fn age(timestamp: Option<&str>, now: SystemTime) -> String {
    let Some(then) = timestamp.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    match now.duration_since(then) {
        Ok(elapsed) => human_duration(elapsed),
        Err(e) if e.duration() > Duration::from_secs(1) => "<invalid>".into(),
        Err(_) => "0s".into(),
    }
}

/// apimachinery's `duration.HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        }
    } else {
        format!("{years}y")
    }
}

fn or_none(value: Option<String>) -> Value {
    json!(
        value
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "<none>".into())
    )
}

fn count(value: &Value) -> usize {
    value
        .as_object()
        .map(|m| m.len())
        .or_else(|| value.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// `pods: 1/10, requests.cpu: 500m/2` as `kubectl get quota` prints it: the quota's hard
/// resources (its `limits.*` ones, or the others) with what is used of each.
fn quota_usage(quota: &Value, limits: bool) -> String {
    let hard = quota["status"]["hard"]
        .as_object()
        .or_else(|| quota["spec"]["hard"].as_object());
    let mut parts = Vec::new();
    for (name, amount) in hard.into_iter().flatten() {
        if name.starts_with("limits.") != limits {
            continue;
        }
        let used = quota["status"]["used"][name].as_str().unwrap_or("0");
        parts.push(format!("{name}: {used}/{}", amount.as_str().unwrap_or("0")));
    }
    parts.join(", ")
}

fn pod_ready(o: &Value, _: SystemTime) -> Value {
    let total = count(&o["spec"]["containers"]);
    let ready = o["status"]["containerStatuses"]
        .as_array()
        .map(|s| s.iter().filter(|c| c["ready"] == true).count())
        .unwrap_or(0);
    json!(format!("{ready}/{total}"))
}

/// The STATUS column of a pod, as kubectl derives it: the pod's reason or phase, overridden by a
/// container's waiting or terminated reason, and `Terminating` once deletion started.
fn pod_status(o: &Value, _: SystemTime) -> Value {
    let status = &o["status"];
    let mut reason = status["reason"]
        .as_str()
        .or_else(|| status["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    if let Some(containers) = status["containerStatuses"].as_array() {
        for c in containers.iter().rev() {
            let state = &c["state"];
            if let Some(waiting) = state["waiting"]["reason"].as_str() {
                reason = waiting.to_owned();
            } else if let Some(terminated) = state["terminated"]["reason"].as_str() {
                reason = terminated.to_owned();
            } else if state["terminated"].is_object() {
                let code = state["terminated"]["exitCode"].as_i64().unwrap_or(0);
                reason = format!("ExitCode:{code}");
            }
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        reason = "Terminating".into();
    }
    json!(reason)
}

fn pod_restarts(o: &Value, _: SystemTime) -> Value {
    let restarts: i64 = o["status"]["containerStatuses"]
        .as_array()
        .map(|s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum())
        .unwrap_or(0);
    json!(restarts.to_string())
}

fn service_ports(o: &Value) -> String {
    o["spec"]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let protocol = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(node) => format!("{}:{node}/{protocol}", p["port"]),
                        None => format!("{}/{protocol}", p["port"]),
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn node_status(o: &Value, _: SystemTime) -> Value {
    let ready = o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| match c["status"].as_str() {
            Some("True") => "Ready",
            Some("False") => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_owned();
    if o["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value, _: SystemTime) -> Value {
    let roles: Vec<&str> = o["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    or_none(Some(roles.join(",")))
}

fn node_address(o: &Value, kind: &str) -> Value {
    or_none(
        o["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["type"] == kind))
            .and_then(|a| a["address"].as_str())
            .map(str::to_owned),
    )
}

/// A field of every container in a workload's pod template, comma-separated.
fn container_field(o: &Value, field: &str) -> String {
    o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c[field].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn template_containers(o: &Value, _: SystemTime) -> Value {
    json!(container_field(o, "name"))
}

fn template_images(o: &Value, _: SystemTime) -> Value {
    json!(container_field(o, "image"))
}

fn template_selector(o: &Value, _: SystemTime) -> Value {
    json!(match_labels(o))
}

fn ready_of_desired(o: &Value, _: SystemTime) -> Value {
    json!(format!(
        "{}/{}",
        o["status"]["readyReplicas"].as_i64().unwrap_or(0),
        o["spec"]["replicas"].as_i64().unwrap_or(1)
    ))
}

/// READY as deployments and stateful sets print it: `ready/desired`.
const READY_OF_DESIRED: Column = column(
    "Ready",
    0,
    "Number of the pods that are ready out of those desired.",
    ready_of_desired,
);

/// The wide columns every workload with a pod template prints.
const TEMPLATE_CONTAINERS: Column = column(
    "Containers",
    1,
    "Names of each container in the template.",
    template_containers,
);
const TEMPLATE_IMAGES: Column = column(
    "Images",
    1,
    "Images referenced by each container in the template.",
    template_images,
);
const TEMPLATE_SELECTOR: Column = column(
    "Selector",
    1,
    "Label selector for the pods.",
    template_selector,
);

/// A workload's `spec.selector.matchLabels` as `k=v,…`.
fn match_labels(o: &Value) -> String {
    o["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A job's state as Kubernetes prints it.
fn job_status(o: &Value, _: SystemTime) -> Value {
    let holds = |kind: &str| {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] == "True")
    };
    let status = if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if o["spec"]["suspend"] == json!(true) {
        "Suspended"
    } else {
        "Running"
    };
    json!(status)
}

/// How long a job ran (or has been running).
fn job_duration(o: &Value, now: SystemTime) -> Value {
    let time = |field: &str| {
        o["status"][field]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    match (time("startTime"), time("completionTime")) {
        (Some(start), end) => {
            let end = end.unwrap_or(now);
            json!(human_duration(
                end.duration_since(start).unwrap_or_default()
            ))
        }
        (None, _) => json!(""),
    }
}

fn ingress_hosts(o: &Value, _: SystemTime) -> Value {
    let hosts: Vec<&str> = o["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["host"].as_str().unwrap_or("*"))
        .collect();
    json!(if hosts.is_empty() {
        "*".to_owned()
    } else {
        hosts.join(",")
    })
}

fn columns(resource: &ResourceDef) -> Vec<Column> {
    match (resource.group, resource.plural) {
        ("", "pods") => vec![
            NAME,
            column(
                "Ready",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
                pod_ready,
            ),
            column(
                "Status",
                0,
                "The aggregate status of the containers in this pod.",
                pod_status,
            ),
            column(
                "Restarts",
                0,
                "The number of times the containers in this pod have been restarted.",
                pod_restarts,
            ),
            AGE,
            column("IP", 1, "The IP address assigned to the pod.", |o, _| {
                or_none(o["status"]["podIP"].as_str().map(str::to_owned))
            }),
            column("Node", 1, "The node the pod is bound to.", |o, _| {
                or_none(o["spec"]["nodeName"].as_str().map(str::to_owned))
            }),
            column(
                "Nominated Node",
                1,
                "The node the scheduler nominated for preemption.",
                |o, _| or_none(o["status"]["nominatedNodeName"].as_str().map(str::to_owned)),
            ),
            column(
                "Readiness Gates",
                1,
                "The readiness gates of the pod.",
                |o, _| {
                    or_none(
                        (count(&o["spec"]["readinessGates"]) > 0)
                            .then(|| count(&o["spec"]["readinessGates"]).to_string()),
                    )
                },
            ),
        ],
        ("", "services") => vec![
            NAME,
            column("Type", 0, "The type of the service.", |o, _| {
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP"))
            }),
            column("Cluster-IP", 0, "The cluster IP of the service.", |o, _| {
                or_none(o["spec"]["clusterIP"].as_str().map(str::to_owned))
            }),
            column(
                "External-IP",
                0,
                "The external IPs of the service.",
                |o, _| {
                    let ingress: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                        .as_array()
                        .map(|i| {
                            i.iter()
                                .filter_map(|i| i["ip"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    let external: Vec<String> = o["spec"]["externalIPs"]
                        .as_array()
                        .map(|i| {
                            i.iter()
                                .filter_map(|i| i.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    let all = [ingress, external].concat();
                    if all.is_empty() && o["spec"]["type"] == "LoadBalancer" {
                        json!("<pending>")
                    } else {
                        or_none(Some(all.join(",")))
                    }
                },
            ),
            column("Port(s)", 0, "The ports of the service.", |o, _| {
                or_none(Some(service_ports(o)))
            }),
            AGE,
            column("Selector", 1, "The selector of the service.", |o, _| {
                or_none(o["spec"]["selector"].as_object().map(|s| {
                    s.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                }))
            }),
        ],
        ("", "nodes") => vec![
            NAME,
            column("Status", 0, "The status of the node.", node_status),
            column("Roles", 0, "The roles of the node.", node_roles),
            AGE,
            column("Version", 0, "The kubelet version of the node.", |o, _| {
                json!(
                    o["status"]["nodeInfo"]["kubeletVersion"]
                        .as_str()
                        .unwrap_or("")
                )
            }),
            column("Internal-IP", 1, "The internal IP of the node.", |o, _| {
                node_address(o, "InternalIP")
            }),
            column("External-IP", 1, "The external IP of the node.", |o, _| {
                node_address(o, "ExternalIP")
            }),
            column("OS-Image", 1, "The OS image of the node.", |o, _| {
                json!(
                    o["status"]["nodeInfo"]["osImage"]
                        .as_str()
                        .unwrap_or("<unknown>")
                )
            }),
            column(
                "Kernel-Version",
                1,
                "The kernel version of the node.",
                |o, _| {
                    json!(
                        o["status"]["nodeInfo"]["kernelVersion"]
                            .as_str()
                            .unwrap_or("<unknown>")
                    )
                },
            ),
            column(
                "Container-Runtime",
                1,
                "The container runtime of the node.",
                |o, _| {
                    json!(
                        o["status"]["nodeInfo"]["containerRuntimeVersion"]
                            .as_str()
                            .unwrap_or("<unknown>")
                    )
                },
            ),
        ],
        ("", "namespaces") => vec![
            NAME,
            column("Status", 0, "The status of the namespace.", |o, _| {
                json!(o["status"]["phase"].as_str().unwrap_or("Active"))
            }),
            AGE,
        ],
        ("", "configmaps") => vec![
            NAME,
            column(
                "Data",
                0,
                "The number of entries in the config map.",
                |o, _| json!(count(&o["data"]) + count(&o["binaryData"])),
            ),
            AGE,
        ],
        ("", "secrets") => vec![
            NAME,
            column("Type", 0, "The type of the secret.", |o, _| {
                json!(o["type"].as_str().unwrap_or("Opaque"))
            }),
            column("Data", 0, "The number of entries in the secret.", |o, _| {
                json!(count(&o["data"]))
            }),
            AGE,
        ],
        ("", "resourcequotas") => vec![
            NAME,
            AGE,
            column(
                "Request",
                0,
                "Used and hard amounts of the quota's resources other than limits.",
                |o, _| json!(quota_usage(o, false)),
            ),
            column(
                "Limit",
                0,
                "Used and hard amounts of the quota's limits.",
                |o, _| json!(quota_usage(o, true)),
            ),
        ],
        ("", "limitranges") => vec![NAME, AGE],
        ("", "serviceaccounts") => vec![
            NAME,
            column(
                "Secrets",
                0,
                "The number of secrets of the service account.",
                |o, _| json!(count(&o["secrets"])),
            ),
            AGE,
        ],
        ("", "endpoints") => vec![
            NAME,
            column("Endpoints", 0, "The endpoints of the service.", |o, _| {
                let mut endpoints = Vec::new();
                for subset in o["subsets"].as_array().into_iter().flatten() {
                    for address in subset["addresses"].as_array().into_iter().flatten() {
                        for port in subset["ports"].as_array().into_iter().flatten() {
                            endpoints.push(format!(
                                "{}:{}",
                                address["ip"].as_str().unwrap_or_default(),
                                port["port"]
                            ));
                        }
                    }
                }
                or_none(Some(endpoints.join(",")))
            }),
            AGE,
        ],
        ("discovery.k8s.io", "endpointslices") => vec![
            NAME,
            column("AddressType", 0, "The type of the addresses.", |o, _| {
                o["addressType"].clone()
            }),
            column("Ports", 0, "The ports of the endpoints.", |o, _| {
                let ports: Vec<String> = o["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p["port"].to_string())
                    .collect();
                json!(if ports.is_empty() {
                    "<unset>".to_owned()
                } else {
                    ports.join(",")
                })
            }),
            column("Endpoints", 0, "The addresses of the endpoints.", |o, _| {
                let addresses: Vec<&str> = o["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                // As kubectl prints them: three, then how many more.
                let mut shown = addresses
                    .iter()
                    .take(3)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(",");
                if addresses.len() > 3 {
                    shown.push_str(&format!(" + {} more...", addresses.len() - 3));
                }
                or_none(Some(shown))
            }),
            AGE,
        ],
        ("", "events") => vec![
            column("Last Seen", 0, "When the event last happened.", |o, now| {
                let last = o["lastTimestamp"]
                    .as_str()
                    .or_else(|| o["eventTime"].as_str())
                    .or_else(|| o["metadata"]["creationTimestamp"].as_str());
                json!(age(last, now))
            }),
            column("Type", 0, "The type of the event.", |o, _| {
                o["type"].clone()
            }),
            column("Reason", 0, "Why the event happened.", |o, _| {
                o["reason"].clone()
            }),
            column("Object", 0, "The object the event is about.", |o, _| {
                let object = &o["involvedObject"];
                json!(format!(
                    "{}/{}",
                    object["kind"].as_str().unwrap_or_default().to_lowercase(),
                    object["name"].as_str().unwrap_or_default()
                ))
            }),
            column("Message", 0, "What happened.", |o, _| o["message"].clone()),
        ],
        ("apps", "deployments") => vec![
            NAME,
            READY_OF_DESIRED,
            column(
                "Up-to-date",
                0,
                "Total number of pods that run the desired template.",
                |o, _| json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
            ),
            column(
                "Available",
                0,
                "Total number of pods available to serve.",
                |o, _| json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
            ),
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
            TEMPLATE_SELECTOR,
        ],
        ("apps", "replicasets") => vec![
            NAME,
            column("Desired", 0, "Number of desired pods.", |o, _| {
                json!(o["spec"]["replicas"].as_i64().unwrap_or(1))
            }),
            column("Current", 0, "Number of actual pods.", |o, _| {
                json!(o["status"]["replicas"].as_i64().unwrap_or(0))
            }),
            column("Ready", 0, "Number of ready pods.", |o, _| {
                json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0))
            }),
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
            TEMPLATE_SELECTOR,
        ],
        ("apps", "statefulsets") => vec![NAME, READY_OF_DESIRED, AGE],
        ("apps", "controllerrevisions") => vec![
            NAME,
            column(
                "Controller",
                0,
                "The object that owns the revision.",
                |o, _| {
                    let owner = o["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|r| r["controller"] == json!(true));
                    json!(owner.map_or_else(String::new, |r| {
                        format!(
                            "{}.{}/{}",
                            r["kind"].as_str().unwrap_or_default().to_lowercase(),
                            r["apiVersion"]
                                .as_str()
                                .unwrap_or_default()
                                .split('/')
                                .next()
                                .unwrap_or_default(),
                            r["name"].as_str().unwrap_or_default()
                        )
                    }))
                },
            ),
            column("Revision", 0, "The revision's number.", |o, _| {
                json!(o["revision"].as_i64().unwrap_or(0))
            }),
            AGE,
        ],
        ("apps", "daemonsets") => vec![
            NAME,
            column(
                "Desired",
                0,
                "Number of nodes that should run the pod.",
                |o, _| json!(o["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0)),
            ),
            column("Current", 0, "Number of nodes running the pod.", |o, _| {
                json!(o["status"]["currentNumberScheduled"].as_i64().unwrap_or(0))
            }),
            column("Ready", 0, "Number of nodes with the pod ready.", |o, _| {
                json!(o["status"]["numberReady"].as_i64().unwrap_or(0))
            }),
            column(
                "Up-to-date",
                0,
                "Number of nodes running the updated pod.",
                |o, _| json!(o["status"]["updatedNumberScheduled"].as_i64().unwrap_or(0)),
            ),
            column(
                "Available",
                0,
                "Number of nodes with the pod available.",
                |o, _| json!(o["status"]["numberAvailable"].as_i64().unwrap_or(0)),
            ),
            column(
                "Node Selector",
                0,
                "The node selector of the pod template.",
                |o, _| {
                    or_none(
                        o["spec"]["template"]["spec"]["nodeSelector"]
                            .as_object()
                            .map(|s| {
                                s.iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            }),
                    )
                },
            ),
            AGE,
        ],
        ("batch", "jobs") => vec![
            NAME,
            column("Status", 0, "The job's state.", job_status),
            column(
                "Completions",
                0,
                "The desired number of successfully finished pods the job should be run with.",
                |o, _| {
                    json!(format!(
                        "{}/{}",
                        o["status"]["succeeded"].as_i64().unwrap_or(0),
                        o["spec"]["completions"].as_i64().unwrap_or(1)
                    ))
                },
            ),
            column(
                "Duration",
                0,
                "Time required to complete the job.",
                job_duration,
            ),
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
            TEMPLATE_SELECTOR,
        ],
        ("batch", "cronjobs") => vec![
            NAME,
            column("Schedule", 0, "The schedule in Cron format.", |o, _| {
                o["spec"]["schedule"].clone()
            }),
            column("Timezone", 0, "The time zone of the schedule.", |o, _| {
                or_none(o["spec"]["timeZone"].as_str().map(str::to_owned))
            }),
            column("Suspend", 0, "Whether later runs are suspended.", |o, _| {
                json!(if o["spec"]["suspend"] == json!(true) {
                    "True"
                } else {
                    "False"
                })
            }),
            column("Active", 0, "The number of running jobs.", |o, _| {
                json!(o["status"]["active"].as_array().map_or(0, Vec::len))
            }),
            column(
                "Last Schedule",
                0,
                "When the job was last scheduled.",
                |o, now| match o["status"]["lastScheduleTime"].as_str() {
                    Some(when) => json!(age(Some(when), now)),
                    None => json!("<none>"),
                },
            ),
            AGE,
        ],
        ("networking.k8s.io", "ingresses") => vec![
            NAME,
            column("Class", 0, "The ingress class.", |o, _| {
                or_none(o["spec"]["ingressClassName"].as_str().map(str::to_owned))
            }),
            column(
                "Hosts",
                0,
                "Hosts that incoming requests are matched against.",
                ingress_hosts,
            ),
            column("Address", 0, "Where the ingress is reachable.", |o, _| {
                let addresses: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
                    .collect();
                json!(addresses.join(","))
            }),
            column("Ports", 0, "Ports of the ingress.", |o, _| {
                let tls = o["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty());
                json!(if tls { "80, 443" } else { "80" })
            }),
            AGE,
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => vec![
            NAME,
            Column {
                format: "date-time",
                ..column(
                    "Created At",
                    0,
                    "When the definition was created.",
                    |o, _| o["metadata"]["creationTimestamp"].clone(),
                )
            },
        ],
        ("coordination.k8s.io", "leases") => vec![
            NAME,
            column("Holder", 0, "The holder of the lease.", |o, _| {
                json!(o["spec"]["holderIdentity"].as_str().unwrap_or(""))
            }),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn row(object: &Value, columns: &[Column], include: IncludeObject, now: SystemTime) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(object, now)).collect();
    let mut row = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"],
            });
        }
        IncludeObject::Object => row["object"] = object.clone(),
    }
    row
}

/// A Table of custom resources with their definition's printer columns.
fn custom_table(
    printer: &[PrinterColumn],
    objects: &[Value],
    list_metadata: Value,
    include: IncludeObject,
) -> Value {
    let now = SystemTime::now();
    let mut definitions = vec![json!({
        "name": NAME.name, "type": NAME.kind, "format": NAME.format,
        "description": NAME.description, "priority": 0,
    })];
    definitions.extend(printer.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![name_cell(object, now)];
            cells.extend(printer.iter().map(|c| {
                match (crate::crd::json_path(object, &c.json_path), c.kind.as_str()) {
                    (Some(Value::String(when)), "date") => json!(age(Some(when), now)),
                    (Some(value), _) => value.clone(),
                    (None, _) => Value::Null,
                }
            }));
            let mut row = row(object, &[], include, now);
            row["cells"] = json!(cells);
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// A Table of `objects` with the resource's columns.
pub fn table(
    resource: &ResourceDef,
    objects: &[Value],
    list_metadata: Value,
    include: IncludeObject,
) -> Value {
    if let Some(custom) = resource.custom.as_ref().filter(|c| !c.columns.is_empty()) {
        return custom_table(&custom.columns, objects, list_metadata, include);
    }
    let columns = columns(resource);
    let now = SystemTime::now();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(o, &columns, include, now))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubernetes() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (200, "3m20s"),
            (300, "5m"),
            (1800, "30m"),
            (4 * 3600 + 5 * 60, "4h5m"),
            (5 * 3600, "5h"),
            (30 * 3600, "30h"),
            (3 * 86400 + 2 * 3600, "3d2h"),
            (40 * 86400, "40d"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                human_duration(Duration::from_secs(seconds)),
                expected,
                "{seconds}s"
            );
        }
    }

    #[test]
    fn accept_headers_that_want_tables() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn endpoint_slices_show_their_ports_and_a_few_addresses() {
        let slices = crate::resources::builtin()
            .into_iter()
            .find(|r| r.plural == "endpointslices")
            .unwrap();
        let endpoints: Vec<Value> = (1..=5)
            .map(|i| json!({"addresses": [format!("10.0.0.{i}")]}))
            .collect();
        let slice = json!({
            "metadata": {"name": "web-abc", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "addressType": "IPv4",
            "ports": [{"port": 8080}, {"port": 9090}],
            "endpoints": endpoints,
        });
        let t = table(&slices, &[slice], json!({}), IncludeObject::None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-abc");
        assert_eq!(cells[1], "IPv4");
        assert_eq!(cells[2], "8080,9090");
        assert_eq!(cells[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...");
    }

    #[test]
    fn pod_columns_follow_container_states() {
        let pods = crate::resources::builtin()
            .into_iter()
            .find(|r| r.plural == "pods")
            .unwrap();
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let t = table(&pods, &[pod], json!({}), IncludeObject::Metadata);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(&names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn service_columns() {
        let services = crate::resources::builtin()
            .into_iter()
            .find(|r| r.plural == "services")
            .unwrap();
        let svc = json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "ports": [
                {"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}
            ]}
        });
        let t = table(&services, &[svc], json!({}), IncludeObject::None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.43.0.10");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
        assert!(t["rows"][0].get("object").is_none());
    }

    fn resource(plural: &str) -> ResourceDef {
        crate::resources::builtin()
            .into_iter()
            .find(|r| r.plural == plural)
            .unwrap()
    }

    #[test]
    fn jobs_and_cron_jobs_print_their_state() {
        let job = json!({
            "metadata": {"name": "once"},
            "spec": {"completions": 3},
            "status": {"succeeded": 3, "startTime": "2026-01-01T00:00:00Z",
                "completionTime": "2026-01-01T00:02:05Z",
                "conditions": [{"type": "Complete", "status": "True"}]},
        });
        let t = table(&resource("jobs"), &[job], json!({}), IncludeObject::None);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(
            (&cells[1], &cells[2], &cells[3]),
            (&json!("Complete"), &json!("3/3"), &json!("2m5s"))
        );

        let cron = json!({
            "metadata": {"name": "tick"},
            "spec": {"schedule": "*/5 * * * *", "suspend": true},
            "status": {"active": [{"name": "tick-1"}]},
        });
        let t = table(
            &resource("cronjobs"),
            &[cron],
            json!({}),
            IncludeObject::None,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age"
            ]
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "tick",
                "*/5 * * * *",
                "<none>",
                "True",
                1,
                "<none>",
                "<unknown>"
            ])
        );
    }
}
