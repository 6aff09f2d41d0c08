//! Pod specs, in pods and in every kind with a pod template (`ValidatePodSpec`, the parts a user
//! meets), and what a pod update may change.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{
    Causes, Check, Field, UniqueNames, annotations, changed_except, check_str, entries, is_set,
    items, labels, nonnegative, one_of, port_number, port_number_or_name,
};
use crate::status::StatusCause;
use crate::validation;

/// The protocols of container, service and endpoint ports.
pub(super) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
const TOLERATION_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
const PROBE_HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "grpc"];

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than \
     `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,\
     `spec.tolerations` (only additions to existing tolerations),\
     `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A Pod: its spec, and on update, only what Kubernetes lets change.
pub(super) fn pod(pod: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(pod, "spec");
    self::spec(&spec, &[], out);
    if let Some(old) = old {
        update(&spec, &old["spec"], out);
    }
}

/// A pod template: its labels and annotations, and its pod spec, where `extra_volumes` name
/// volumes the owner provides besides the spec's own (a StatefulSet's claim templates).
pub(super) fn template(template: &Field, extra_volumes: &[&str], out: &mut Causes) {
    // Kubernetes names a template's labels `<template>.labels`, without `metadata`.
    let metadata = &template["metadata"];
    let at = |name: &str| Field {
        value: &metadata[name],
        path: template.path.child(name),
    };
    labels(&at("labels"), out);
    annotations(&at("annotations"), out);
    spec(&template.child("spec"), extra_volumes, out);
}

fn spec(spec: &Field, extra_volumes: &[&str], out: &mut Causes) {
    let mut volume_names = volumes(&spec.child("volumes"), out);
    volume_names.extend(extra_volumes);
    let containers = spec.child("containers");
    if items(&containers).is_empty() {
        out.push(containers.required());
    }
    let mut names = UniqueNames::new(validation::dns1123_label, true);
    for list in ["containers", "initContainers"] {
        for container in spec.child(list).items() {
            names.check(&container, out);
            self::container(&container, &volume_names, out);
        }
    }
    for (name, supported) in [
        ("restartPolicy", RESTART_POLICIES),
        ("dnsPolicy", DNS_POLICIES),
    ] {
        one_of(&spec.child(name), supported, out);
    }
    labels(&spec.child("nodeSelector"), out);
    for (name, check) in [
        ("serviceAccountName", validation::dns1123_subdomain as Check),
        ("hostname", validation::dns1123_label),
        ("subdomain", validation::dns1123_label),
    ] {
        check_str(&spec.child(name), check, out);
    }
    let deadline = spec.child("activeDeadlineSeconds");
    let in_range = |seconds| (1..=i64::from(i32::MAX)).contains(&seconds);
    if !deadline.is_null() && !deadline.as_i64().is_some_and(in_range) {
        out.push(deadline.invalid("must be between 1 and 2147483647, inclusive"));
    }
    for toleration in spec.child("tolerations").items() {
        self::toleration(&toleration, out);
    }
}

/// Volume names are unique DNS labels and each volume has exactly one source. Returns the
/// names.
fn volumes<'a>(volumes: &Field<'a>, out: &mut Causes) -> BTreeSet<&'a str> {
    let mut names = UniqueNames::new(validation::dns1123_label, true);
    for volume in volumes.items() {
        names.check(&volume, out);
        let mut sources = entries(&volume).filter(|(key, _)| *key != "name");
        match (sources.next(), sources.next()) {
            (None, _) => out.push(volume.required_with("must specify a volume type")),
            (Some(_), Some((extra, _))) => {
                let message = "may not specify more than 1 volume type";
                out.push(volume.child(extra).forbidden(message));
            }
            (Some(_), None) => {}
        }
    }
    names.seen
}

fn container(container: &Field, volumes: &BTreeSet<&str>, out: &mut Causes) {
    let image = container.child("image");
    match image.as_str() {
        None | Some("") => out.push(image.required()),
        Some(text) if text.trim() != text => {
            out.push(image.invalid("must not have leading or trailing whitespace"));
        }
        Some(_) => {}
    }
    for (name, supported) in [
        ("imagePullPolicy", PULL_POLICIES),
        ("terminationMessagePolicy", MESSAGE_POLICIES),
    ] {
        one_of(&container.child(name), supported, out);
    }
    ports(&container.child("ports"), out);
    for var in container.child("env").items() {
        env_var(&var, out);
    }
    let mut mount_paths = BTreeSet::new();
    for mount in container.child("volumeMounts").items() {
        self::mount(&mount, volumes, &mut mount_paths, out);
    }
    for name in ["livenessProbe", "readinessProbe", "startupProbe"] {
        probe(&container.child(name), name != "readinessProbe", out);
    }
}

fn ports(ports: &Field, out: &mut Causes) {
    let mut names = UniqueNames::new(validation::port_name, false);
    for port in ports.items() {
        names.check(&port, out);
        let container_port = port.child("containerPort");
        if *container_port == 0 {
            out.push(container_port.required());
        } else {
            port_number(&container_port, out);
        }
        let host_port = port.child("hostPort");
        if !host_port.is_null() && *host_port != 0 {
            port_number(&host_port, out);
        }
        one_of(&port.child("protocol"), PROTOCOLS, out);
    }
}

fn env_var(var: &Field, out: &mut Causes) {
    let name = var.child("name");
    if name.is_set() {
        check_str(&name, validation::env_var_name, out);
    } else {
        out.push(name.required());
    }
    if is_set(&var["value"]) && !var["valueFrom"].is_null() {
        out.push(StatusCause::invalid(
            &var.child("valueFrom").path,
            &json!(""),
            "may not be specified when `value` is not empty",
        ));
    }
}

/// A mount names a volume of the pod, at a mount path no other mount of the container has.
fn mount<'a>(
    mount: &Field<'a>,
    volumes: &BTreeSet<&str>,
    mount_paths: &mut BTreeSet<&'a str>,
    out: &mut Causes,
) {
    let name = mount.child("name");
    match name.as_str() {
        None | Some("") => out.push(name.required()),
        Some(volume) if !volumes.contains(volume) => out.push(name.not_found()),
        Some(_) => {}
    }
    let mount_path = mount.child("mountPath");
    match mount_path.value.as_str() {
        None | Some("") => out.push(mount_path.required()),
        Some(text) if !mount_paths.insert(text) => out.push(mount_path.invalid("must be unique")),
        Some(_) => {}
    }
}

/// A probe has one handler and non-negative timings; liveness and startup probes succeed
/// after a single success.
fn probe(probe: &Field, single_success: bool, out: &mut Causes) {
    if probe.is_null() {
        return;
    }
    handler(probe, out);
    for name in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(&probe.child(name), out);
    }
    let success = probe.child("successThreshold");
    if single_success && success.as_i64().is_some_and(|n| n != 1) {
        out.push(success.invalid("must be 1"));
    }
}

fn handler(handler: &Field, out: &mut Causes) {
    let present: Vec<&str> = PROBE_HANDLERS
        .iter()
        .copied()
        .filter(|name| !handler[*name].is_null())
        .collect();
    if present.is_empty() {
        out.push(handler.required_with("must specify a handler type"));
    }
    for extra in present.iter().skip(1) {
        let message = "may not specify more than 1 handler type";
        out.push(handler.child(extra).forbidden(message));
    }
    let exec = handler.child("exec");
    if !exec.is_null() && items(&exec["command"]).is_empty() {
        out.push(exec.child("command").required());
    }
    let get = handler.child("httpGet");
    if !get.is_null() {
        port_number_or_name(&get.child("port"), out);
        one_of(&get.child("scheme"), &["HTTP", "HTTPS"], out);
    }
    let tcp = handler.child("tcpSocket");
    if !tcp.is_null() {
        port_number_or_name(&tcp.child("port"), out);
    }
    let grpc = handler.child("grpc");
    if !grpc.is_null() {
        port_number(&grpc.child("port"), out);
    }
}

fn toleration(toleration: &Field, out: &mut Causes) {
    let key = toleration.child("key");
    check_str(&key, validation::qualified_name, out);
    let operator = toleration.child("operator");
    let effect = toleration.child("effect");
    let value = &toleration["value"];
    if !key.is_set() && *operator != "Exists" {
        out.push(operator.invalid(
            "operator must be Exists when `key` is empty, which means \"match all values and \
             all keys\"",
        ));
    }
    if !toleration["tolerationSeconds"].is_null() && *effect != "NoExecute" {
        out.push(effect.invalid("effect must be 'NoExecute' when `tolerationSeconds` is set"));
    }
    let operator_name = if operator.is_null() {
        Some("")
    } else {
        operator.as_str()
    };
    match operator_name {
        Some("" | "Equal") => {
            let errors = validation::label_value(value.as_str().unwrap_or_default());
            if !errors.is_empty() {
                let detail = errors.join(";");
                out.push(StatusCause::invalid(&operator.path, value, &detail));
            }
        }
        Some("Exists") if is_set(value) => {
            let message = "value must be empty when `operator` is 'Exists'";
            out.push(StatusCause::invalid(&operator.path, toleration, message));
        }
        Some("Exists") => {}
        _ => out.push(operator.not_supported(&["Equal", "Exists"])),
    }
    if effect.is_set() {
        one_of(&effect, TOLERATION_EFFECTS, out);
    }
}

/// A pod's spec may change only in its images, deadline, tolerations and grace period; its
/// node may be set once.
fn update(spec: &Field, old: &Value, out: &mut Causes) {
    let node = spec.child("nodeName");
    if is_set(&old["nodeName"]) && *node != old["nodeName"] {
        out.push(node.invalid("field is immutable"));
    }
    let mut with_old_images = spec.value.clone();
    for list in ["containers", "initContainers"] {
        let containers = with_old_images.get_mut(list).and_then(Value::as_array_mut);
        for (container, old) in containers.into_iter().flatten().zip(items(&old[list])) {
            if let Some(fields) = container.as_object_mut() {
                match old.get("image") {
                    Some(image) => fields.insert("image".to_owned(), image.clone()),
                    None => fields.remove("image"),
                };
            }
        }
    }
    let mutable = [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
        "nodeName",
    ];
    if changed_except(&with_old_images, old, &mutable) {
        out.push(spec.forbidden(POD_UPDATE_FORBIDDEN));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{problems, update_problems};
    use serde_json::{Value, json};

    fn pod(spec: Value) -> Vec<String> {
        problems("", "Pod", json!({"metadata": {"name": "p"}, "spec": spec}))
    }

    fn web() -> Value {
        json!({"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 80}]}]})
    }

    #[test]
    fn a_plain_pod_is_valid() {
        assert!(pod(web()).is_empty(), "{:?}", pod(web()));
    }

    #[test]
    fn containers_are_required_with_names_and_images() {
        assert_eq!(pod(json!({})), ["spec.containers: Required value"]);
        assert_eq!(
            pod(json!({"containers": []})),
            ["spec.containers: Required value"]
        );
        let problems = pod(json!({
            "containers": [{"image": " nginx"}, {"name": "Web_1", "image": "x"}, {"name": "a", "image": ""}],
            "initContainers": [{"name": "a", "image": "busybox"}],
        }));
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert_eq!(problems[0], "spec.containers[0].name: Required value");
        assert_eq!(
            problems[1],
            "spec.containers[0].image: Invalid value: \" nginx\": must not have leading or trailing whitespace"
        );
        assert!(problems[2].starts_with(
            "spec.containers[1].name: Invalid value: \"Web_1\": a lowercase RFC 1123 label"
        ));
        assert_eq!(problems[3], "spec.containers[2].image: Required value");
        assert_eq!(
            problems[4],
            "spec.initContainers[0].name: Duplicate value: \"a\""
        );
    }

    #[test]
    fn restart_and_dns_policies_are_enumerations() {
        let mut spec = web();
        spec["restartPolicy"] = json!("Sometimes");
        spec["dnsPolicy"] = json!("Google");
        assert_eq!(
            pod(spec),
            [
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
                "spec.dnsPolicy: Unsupported value: \"Google\": supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\"",
            ]
        );
    }

    #[test]
    fn ports_env_and_pull_policy() {
        let problems = pod(json!({"containers": [{
            "name": "c",
            "image": "x",
            "imagePullPolicy": "Sometimes",
            "ports": [
                {"containerPort": 0},
                {"name": "http", "containerPort": 70000, "protocol": "HTTP"},
                {"name": "http", "containerPort": 81},
                {"name": "8080", "containerPort": 82},
            ],
            "env": [{"value": "x"}, {"name": "A=B"}, {"name": "OK", "value": "1", "valueFrom": {}}],
        }]}));
        let expected = [
            "spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
            "spec.containers[0].ports[0].containerPort: Required value",
            "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.containers[0].ports[2].name: Duplicate value: \"http\"",
            "spec.containers[0].ports[3].name: Invalid value: \"8080\": must contain at least one letter (a-z)",
            "spec.containers[0].env[0].name: Required value",
            "spec.containers[0].env[1].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
            "spec.containers[0].env[2].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty",
        ];
        assert_eq!(problems, expected);
    }

    #[test]
    fn volumes_and_mounts() {
        let problems = pod(json!({
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "data", "configMap": {"name": "c"}},
                {"name": "two", "emptyDir": {}, "hostPath": {"path": "/"}},
            ],
            "containers": [{"name": "c", "image": "x", "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "missing", "mountPath": "/data"},
                {"name": "two"},
            ]}],
        }));
        assert_eq!(
            problems,
            [
                "spec.volumes[1].name: Duplicate value: \"data\"",
                "spec.volumes[2].hostPath: Forbidden: may not specify more than 1 volume type",
                "spec.containers[0].volumeMounts[1].name: Not found: \"missing\"",
                "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/data\": must be unique",
                "spec.containers[0].volumeMounts[2].mountPath: Required value",
            ]
        );
    }

    #[test]
    fn probes_need_one_handler() {
        let problems = pod(json!({"containers": [{
            "name": "c",
            "image": "x",
            "livenessProbe": {"successThreshold": 2, "exec": {"command": ["true"]}},
            "readinessProbe": {"periodSeconds": -1, "successThreshold": 2},
            "startupProbe": {"httpGet": {"port": "http"}, "tcpSocket": {"port": 0}},
        }]}));
        assert_eq!(
            problems,
            [
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
                "spec.containers[0].readinessProbe: Required value: must specify a handler type",
                "spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.containers[0].startupProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
                "spec.containers[0].startupProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn tolerations() {
        let mut spec = web();
        spec["tolerations"] = json!([
            {"operator": "Exists"},
            {"key": "k", "operator": "Exists", "value": "v"},
            {"key": "k", "operator": "Maybe"},
            {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 5},
            {"key": "k", "value": "v", "effect": "Sometimes"},
        ]);
        let problems = pod(spec);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("spec.tolerations[1].operator: Invalid value: {"));
        assert!(problems[0].ends_with("value must be empty when `operator` is 'Exists'"));
        assert_eq!(
            problems[1],
            "spec.tolerations[2].operator: Unsupported value: \"Maybe\": supported values: \"Equal\", \"Exists\""
        );
        assert!(problems[2].starts_with("spec.tolerations[4].effect: Unsupported value"));
    }

    fn stored(spec: Value) -> Value {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": spec});
        crate::defaults::apply_defaults("", "Pod", &mut pod);
        pod
    }

    #[test]
    fn updates_may_change_images_and_tolerations_only() {
        let old = stored(web());
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        new["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        new["spec"]["activeDeadlineSeconds"] = json!(60);
        assert!(update_problems("", "Pod", new.clone(), Some(old.clone())).is_empty());

        new["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(81);
        let problems = update_problems("", "Pod", new, Some(old.clone()));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with(
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
        ));

        let mut more = old.clone();
        more["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "b", "image": "x"}));
        assert_eq!(update_problems("", "Pod", more, Some(old)).len(), 1);
    }

    #[test]
    fn a_node_is_set_once() {
        let old = stored(web());
        let mut bound = old.clone();
        bound["spec"]["nodeName"] = json!("n1");
        assert!(update_problems("", "Pod", bound.clone(), Some(old)).is_empty());
        let mut moved = bound.clone();
        moved["spec"]["nodeName"] = json!("n2");
        assert_eq!(
            update_problems("", "Pod", moved, Some(bound)),
            ["spec.nodeName: Invalid value: \"n2\": field is immutable"]
        );
    }

    #[test]
    fn pod_templates_are_pod_specs() {
        let problems = problems(
            "",
            "PodTemplate",
            json!({"template": {"metadata": {"labels": {"a": "-"}}, "spec": {}}}),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("template.labels: Invalid value: \"-\""));
        assert_eq!(problems[1], "template.spec.containers: Required value");
    }
}
