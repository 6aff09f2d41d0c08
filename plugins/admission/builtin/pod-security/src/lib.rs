//! The built-in PodSecurity policy: pods must meet the Pod Security Standards' baseline level,
//! checked as Kubernetes' PodSecurity admission checks `baseline:latest`.
//!
//! A pod's create, an update that changes its spec, and an update of its
//! `ephemeralcontainers` are checked for host namespaces, privileged containers, capabilities
//! beyond the baseline set, hostPath volumes, host ports, Unconfined seccomp and AppArmor
//! profiles, non-default `procMount`, SELinux options, unsafe sysctls and Windows host
//! processes, over its containers, init containers and ephemeral containers. A pod that fails
//! is denied with every failure in PodSecurity's words:
//! `violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), …`.
//! A pod whose Namespace, read from the host's cache (the policy reads v1 Namespace), is
//! labelled `pod-security.kubernetes.io/enforce: privileged` is exempt; other levels are held
//! to baseline. Settings: `{"exemptNamespaces": [...]}` exempts whole namespaces,
//! `{"hostPathNamespaces": [...]}` lifts only the hostPath check in those; any other key is
//! refused.
//!
//! It must not judge anything but pods, nor pod templates, nor updates that leave the pod spec
//! as it was (metadata-only updates pass), nor other subresources (status, binding, eviction).

use std::collections::BTreeSet;

use flotilla_sdk::admission::*;
use serde_json::Value;

#[derive(Debug)]
pub struct PodSecurity;

/// The Namespace label whose `privileged` value exempts the namespace.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// A policy's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Namespaces whose pods are not checked at all.
    pub exempt_namespaces: Vec<String>,
    /// Namespaces whose pods may use hostPath volumes.
    pub host_path_namespaces: Vec<String>,
}

/// Reads settings: a JSON object with optional `exemptNamespaces` and `hostPathNamespaces`.
pub fn settings(text: &str) -> Result<Settings, String> {
    const KEYS: [&str; 2] = ["exemptNamespaces", "hostPathNamespaces"];
    let map = admission_common::settings_object(text, &KEYS)?;
    Ok(Settings {
        exempt_namespaces: admission_common::names(&map, KEYS[0])?,
        host_path_namespaces: admission_common::names(&map, KEYS[1])?,
    })
}

/// One failed check: PodSecurity's reason and, when it has one, its detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

fn violation(reason: impl Into<String>, detail: String) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail,
    })
}

fn pluralize<'a>(one: &'a str, many: &'a str, count: usize) -> &'a str {
    if count == 1 { one } else { many }
}

/// `"a", "b"`: PodSecurity quotes each item as it is, without escaping.
fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let quoted: Vec<String> = items
        .into_iter()
        .map(|i| format!("\"{}\"", i.as_ref()))
        .collect();
    quoted.join(", ")
}

/// `containers "a", "b"`.
fn named(containers: &[&str]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", containers.len()),
        join_quote(containers)
    )
}

/// Init containers, containers, then ephemeral containers, as PodSecurity visits them.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|field| spec[field].as_array())
        .flatten()
        .collect()
}

fn name(container: &Value) -> &str {
    container["name"].as_str().unwrap_or_default()
}

/// The containers for which `bad` holds, by name.
fn which(spec: &Value, mut bad: impl FnMut(&Value) -> bool) -> Vec<&str> {
    containers(spec)
        .into_iter()
        .filter(|c| bad(c))
        .map(name)
        .collect()
}

fn app_armor(metadata: &Value, spec: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut types = BTreeSet::new();
    let mut bad = |profile: &Value| -> bool {
        if !profile.is_object() {
            return false;
        }
        let kind = profile["type"].as_str().unwrap_or_default();
        let allowed = matches!(kind, "RuntimeDefault" | "Localhost");
        if !allowed {
            types.insert(kind.to_owned());
        }
        !allowed
    };
    if bad(&spec["securityContext"]["appArmorProfile"]) {
        setters.push("pod".to_owned());
    }
    let bad_containers: Vec<&str> = containers(spec)
        .into_iter()
        .filter(|c| bad(&c["securityContext"]["appArmorProfile"]))
        .map(name)
        .collect();
    if !bad_containers.is_empty() {
        setters.push(named(&bad_containers));
    }
    let prefix = "container.apparmor.security.beta.kubernetes.io/";
    let mut annotations: Vec<String> = metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with(prefix))
        .filter_map(|(key, value)| {
            let value = value.as_str().unwrap_or_default();
            let allowed =
                value.is_empty() || value == "runtime/default" || value.starts_with("localhost/");
            (!allowed).then(|| format!("{key}={}", Value::from(value)))
        })
        .collect();
    let mut values: Vec<String> = types.into_iter().collect();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_owned());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

fn host_namespaces(spec: &Value) -> Option<Violation> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|field| spec[field] == true)
        .map(|field| format!("{field}=true"))
        .collect();
    (!set.is_empty()).then(|| Violation {
        reason: "host namespaces".into(),
        detail: set.join(", "),
    })
}

fn host_path_volumes(spec: &Value) -> Option<Violation> {
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| !v["hostPath"].is_null())
        .map(name)
        .collect();
    if volumes.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", volumes.len()),
            join_quote(&volumes)
        ),
    )
}

fn host_ports(spec: &Value) -> Option<Violation> {
    let mut ports = BTreeSet::new();
    let bad = which(spec, |c| {
        let mut uses = false;
        for port in c["ports"].as_array().into_iter().flatten() {
            match &port["hostPort"] {
                Value::Null => {}
                Value::Number(n) if n.as_i64() == Some(0) => {}
                other => {
                    uses = true;
                    ports.insert(
                        other
                            .as_str()
                            .map_or_else(|| other.to_string(), str::to_owned),
                    );
                }
            }
        }
        uses
    });
    if bad.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            named(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

fn privileged(spec: &Value) -> Option<Violation> {
    let bad = which(spec, |c| c["securityContext"]["privileged"] == true);
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            named(&bad)
        ),
    )
}

fn proc_mount(spec: &Value) -> Option<Violation> {
    let mut values = BTreeSet::new();
    let bad = which(spec, |c| match c["securityContext"]["procMount"].as_str() {
        Some("Default") | None => false,
        Some(other) => {
            values.insert(other.to_owned());
            true
        }
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            named(&bad),
            join_quote(&values)
        ),
    )
}

fn se_linux_options(spec: &Value) -> Option<Violation> {
    const ALLOWED: [&str; 5] = [
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut bad = |options: &Value| -> bool {
        if !options.is_object() {
            return false;
        }
        let mut valid = true;
        let kind = options["type"].as_str().unwrap_or_default();
        if !ALLOWED.contains(&kind) {
            types.insert(kind.to_owned());
            valid = false;
        }
        if !options["user"].as_str().unwrap_or_default().is_empty() {
            user = true;
            valid = false;
        }
        if !options["role"].as_str().unwrap_or_default().is_empty() {
            role = true;
            valid = false;
        }
        !valid
    };
    let mut setters = Vec::new();
    if bad(&spec["securityContext"]["seLinuxOptions"]) {
        setters.push("pod".to_owned());
    }
    let bad_containers: Vec<&str> = containers(spec)
        .into_iter()
        .filter(|c| bad(&c["securityContext"]["seLinuxOptions"]))
        .map(name)
        .collect();
    if !bad_containers.is_empty() {
        setters.push(named(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !types.is_empty() {
        data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if user {
        data.push("user may not be set".to_owned());
    }
    if role {
        data.push("role may not be set".to_owned());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

/// The sysctls baseline allows, as of Kubernetes 1.32.
pub const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

fn sysctls(spec: &Value) -> Option<Violation> {
    let forbidden: Vec<&str> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .filter(|name| !SAFE_SYSCTLS.contains(name))
        .collect();
    (!forbidden.is_empty()).then(|| Violation {
        reason: "forbidden sysctls".into(),
        detail: forbidden.join(", "),
    })
}

fn host_process(spec: &Value) -> Option<Violation> {
    let set = |context: &Value| context["windowsOptions"]["hostProcess"] == true;
    let mut setters = Vec::new();
    if set(&spec["securityContext"]) {
        setters.push("pod".to_owned());
    }
    let bad = which(spec, |c| set(&c["securityContext"]));
    if !bad.is_empty() {
        setters.push(named(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters.join(" and ")
        ),
    )
}

/// The capabilities baseline lets containers add, without the `CAP_` prefix.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities(spec: &Value) -> Option<Violation> {
    let mut added = BTreeSet::new();
    let bad = which(spec, |c| {
        let mut forbidden = false;
        for capability in c["securityContext"]["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let capability = capability.as_str().unwrap_or_default();
            let bare = capability.strip_prefix("CAP_").unwrap_or(capability);
            if !BASELINE_CAPABILITIES.contains(&bare) {
                added.insert(capability.to_owned());
                forbidden = true;
            }
        }
        forbidden
    });
    if bad.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            named(&bad),
            join_quote(&added)
        ),
    )
}

fn seccomp_profile(spec: &Value) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let mut bad = |profile: &Value| -> bool {
        if !profile.is_object() {
            return false;
        }
        let kind = profile["type"].as_str().unwrap_or_default();
        let allowed = matches!(kind, "RuntimeDefault" | "Localhost");
        if !allowed {
            types.insert(kind.to_owned());
        }
        !allowed
    };
    let mut setters = Vec::new();
    if bad(&spec["securityContext"]["seccompProfile"]) {
        setters.push("pod".to_owned());
    }
    let bad_containers: Vec<&str> = containers(spec)
        .into_iter()
        .filter(|c| bad(&c["securityContext"]["seccompProfile"]))
        .map(name)
        .collect();
    if !bad_containers.is_empty() {
        setters.push(named(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&types)
        ),
    )
}

/// Every baseline check `pod` fails, in PodSecurity's order; `host_path` lifts the hostPath
/// check.
pub fn violations(pod: &Value, host_path: bool) -> Vec<Violation> {
    let (metadata, spec) = (&pod["metadata"], &pod["spec"]);
    [
        app_armor(metadata, spec),
        host_namespaces(spec),
        if host_path {
            None
        } else {
            host_path_volumes(spec)
        },
        host_ports(spec),
        privileged(spec),
        proc_mount(spec),
        se_linux_options(spec),
        sysctls(spec),
        host_process(spec),
        capabilities(spec),
        seccomp_profile(spec),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The denial for `violations`.
pub fn message(violations: &[Violation]) -> String {
    let listed: Vec<String> = violations.iter().map(Violation::to_string).collect();
    format!(
        "violates PodSecurity \"baseline:latest\": {}",
        listed.join(", ")
    )
}

/// Whether a Namespace's label exempts its pods.
pub fn is_privileged(namespace: &Value) -> bool {
    namespace["metadata"]["labels"][ENFORCE_LABEL] == "privileged"
}

fn parse(object: Option<&str>) -> Option<Value> {
    object.and_then(|o| serde_json::from_str(o).ok())
}

/// The verdict on `request`, with `namespace` reading a Namespace from the cache.
pub fn decide(
    request: &Request,
    settings: &Settings,
    namespace: impl FnOnce(&str) -> Result<Option<Value>, String>,
) -> Response {
    let pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let judged = matches!(request.sub_resource.as_str(), "" | "ephemeralcontainers");
    let listed = |list: &[String]| list.contains(&request.namespace);
    if !pod
        || !judged
        || !matches!(request.operation, Operation::Create | Operation::Update)
        || listed(&settings.exempt_namespaces)
    {
        return Response::allow();
    }
    let Some(object) = parse(request.object.as_deref()) else {
        return Response::allow();
    };
    if request.operation == Operation::Update
        && parse(request.old_object.as_deref()).is_some_and(|old| old["spec"] == object["spec"])
    {
        return Response::allow();
    }
    let found = violations(&object, listed(&settings.host_path_namespaces));
    if found.is_empty() {
        return Response::allow();
    }
    match namespace(&request.namespace) {
        Ok(Some(ns)) if is_privileged(&ns) => Response::allow(),
        Ok(_) => Response::deny(message(&found)),
        Err(error) => Response::deny(message(&found)).warn(format!(
            "unable to read namespace {} for its {ENFORCE_LABEL} label: {error}",
            request.namespace
        )),
    }
}

impl AdmissionPolicy for PodSecurity {
    const NAME: &'static str = "pod-security";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        self::settings(settings).map(|_| ())
    }

    fn review(&mut self, request: Request) -> Response {
        match settings(&request.settings) {
            Ok(settings) => decide(&request, &settings, admission_common::cached_namespace),
            Err(error) => Response::deny(format!("invalid settings: {error}")),
        }
    }
}

flotilla_sdk::export_admission_policy!(PodSecurity);

#[cfg(test)]
mod tests;
