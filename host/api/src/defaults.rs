//! Defaulting: the fields Kubernetes' API server fills in when an object is written (its
//! `SetDefaults_*` functions, plus the create-time normalisations a user sees in the stored
//! object: a Secret's `stringData` folded into `data`, a Job's generated selector, a Namespace's
//! `kubernetes.io/metadata.name` label).
//!
//! Defaults only fill what is unset: absent, `null`, or for string fields `""` (Go's zero value).
//! A field of the wrong JSON type is left alone for validation to report. Applying defaults twice
//! changes nothing the second time.

use serde_json::{Map, Value, json};

use crate::base64;

/// The label Kubernetes puts on every Namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The label a Job's generated selector matches: the Job's uid.
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The label naming a Job on its pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

const TEMPLATE_SPEC: &[&str] = &["spec", "template", "spec"];

/// Fills in the defaults Kubernetes' API server sets for the kind (group `""` is the core
/// group, then `"apps"`, `"batch"`, ...). Kinds without defaults are left as they are.
///
/// A Job's selector is generated from `metadata.uid` (and its pod labels from `metadata.name`),
/// so call this after the server has set those.
pub fn apply_defaults(group: &str, kind: &str, object: &mut Value) {
    match (group, kind) {
        ("", "Pod") => pod(object),
        ("", "PodTemplate") => pod_template(object, &["template", "spec"]),
        ("", "Service") => service(object),
        ("", "Secret") => secret(object),
        ("", "Namespace") => namespace(object),
        ("", "Endpoints") => endpoints(object),
        ("apps", "Deployment") => deployment(object),
        ("apps", "ReplicaSet") => replica_set(object),
        ("apps", "StatefulSet") => stateful_set(object),
        ("apps", "DaemonSet") => daemon_set(object),
        ("batch", "Job") => job(object),
        ("batch", "CronJob") => cron_job(object),
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(object),
        _ => {}
    }
}

/// `object[key]` as a JSON object, created empty when unset; `None` when `object` is not an
/// object or holds something other than an object there.
fn child<'a>(object: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let value = object.as_object_mut()?.entry(key).or_insert(Value::Null);
    if value.is_null() {
        *value = Value::Object(Map::new());
    }
    value.is_object().then_some(value)
}

/// [`child`] along a path, creating what is missing.
fn descend<'a>(object: &'a mut Value, keys: &[&str]) -> Option<&'a mut Value> {
    keys.iter().try_fold(object, |value, key| child(value, key))
}

/// The object at a path, without creating anything.
fn find<'a>(object: &'a mut Value, keys: &[&str]) -> Option<&'a mut Value> {
    keys.iter().try_fold(object, |value, key| {
        value.get_mut(*key).filter(|value| value.is_object())
    })
}

/// The elements of the array `object[key]`, if there is one.
fn each<'a>(object: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    object
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

fn is_unset(current: &Value, default: &Value) -> bool {
    current.is_null() || (default.is_string() && current.as_str() == Some(""))
}

/// Sets `object[key]` to `value` if it is unset.
fn set_default(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        let current = map.entry(key).or_insert(Value::Null);
        if is_unset(current, &value) {
            *current = value;
        }
    }
}

fn set_defaults<const N: usize>(object: &mut Value, defaults: [(&str, Value); N]) {
    for (key, value) in defaults {
        set_default(object, key, value);
    }
}

/// Sets `object[key]` to `value` if it is unset or zero: for Go's plain (non-pointer) integer
/// fields, where 0 means unset.
fn set_default_number(object: &mut Value, key: &str, value: i64) {
    if let Some(fields) = object.as_object_mut() {
        let current = fields.entry(key).or_insert(Value::Null);
        if current.is_null() || *current == 0 {
            *current = json!(value);
        }
    }
}

/// `Always` for an image without a tag or tagged `latest`, `IfNotPresent` otherwise; a digest
/// counts as a tag.
fn image_pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    let tag = match last_segment.rsplit_once(':') {
        Some((_, tag)) => Some(tag),
        None if digest.is_some() || image.is_empty() => None,
        None => Some("latest"),
    };
    if tag == Some("latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// The defaults of every pod spec, in pods and in the templates of workloads.
fn pod_spec(spec: &mut Value) {
    set_defaults(
        spec,
        [
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("securityContext", json!({})),
        ],
    );
    let host_network = spec["hostNetwork"] == true;
    for list in ["containers", "initContainers"] {
        for container in each(spec, list) {
            self::container(container, host_network);
        }
    }
    for volume in each(spec, "volumes") {
        self::volume(volume);
    }
}

fn container(container: &mut Value, host_network: bool) {
    let pull_policy = image_pull_policy(container["image"].as_str().unwrap_or_default());
    set_defaults(
        container,
        [
            ("imagePullPolicy", json!(pull_policy)),
            ("terminationMessagePath", json!("/dev/termination-log")),
            ("terminationMessagePolicy", json!("File")),
            ("resources", json!({})),
        ],
    );
    for port in each(container, "ports") {
        set_default(port, "protocol", json!("TCP"));
        if host_network && let Some(container_port) = port["containerPort"].as_i64() {
            set_default_number(port, "hostPort", container_port);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = find(container, &[probe]) {
            self::probe(probe);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(handler) = find(container, &["lifecycle", hook]) {
            http_get(handler);
        }
    }
    for var in each(container, "env") {
        if let Some(field_ref) = find(var, &["valueFrom", "fieldRef"]) {
            set_default(field_ref, "apiVersion", json!("v1"));
        }
    }
}

fn probe(probe: &mut Value) {
    for (key, value) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        set_default_number(probe, key, value);
    }
    http_get(probe);
}

fn http_get(handler: &mut Value) {
    if let Some(get) = find(handler, &["httpGet"]) {
        set_defaults(get, [("path", json!("/")), ("scheme", json!("HTTP"))]);
    }
}

/// A volume without a source is an `emptyDir`; projected files default to mode 0644.
fn volume(volume: &mut Value) {
    let has_source = volume
        .as_object()
        .is_some_and(|fields| fields.keys().any(|key| key != "name"));
    if !has_source {
        set_default(volume, "emptyDir", json!({}));
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(source) = find(volume, &[source]) {
            set_default(source, "defaultMode", json!(0o644));
        }
    }
    if let Some(host_path) = find(volume, &["hostPath"]) {
        set_default(host_path, "type", json!(""));
    }
}

/// Pods get the pod spec defaults and a few of their own: service links, and requests equal to
/// limits where only limits are given.
fn pod(pod: &mut Value) {
    let Some(spec) = child(pod, "spec") else {
        return;
    };
    pod_spec(spec);
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        for container in each(spec, list) {
            requests_from_limits(container);
        }
    }
}

fn requests_from_limits(container: &mut Value) {
    let Some(resources) = find(container, &["resources"]) else {
        return;
    };
    let Some(limits) = resources["limits"]
        .as_object()
        .filter(|l| !l.is_empty())
        .cloned()
    else {
        return;
    };
    if let Some(requests) = child(resources, "requests") {
        for (resource, quantity) in limits {
            set_default(requests, &resource, quantity);
        }
    }
}

/// The pod spec defaults for the template at `keys`.
fn pod_template(object: &mut Value, keys: &[&str]) {
    if let Some(spec) = descend(object, keys) {
        pod_spec(spec);
    }
}

fn service(service: &mut Value) {
    let Some(spec) = child(service, "spec") else {
        return;
    };
    set_defaults(
        spec,
        [
            ("type", json!("ClusterIP")),
            ("sessionAffinity", json!("None")),
        ],
    );
    for port in each(spec, "ports") {
        set_default(port, "protocol", json!("TCP"));
        default_target_port(port);
    }
    if spec["sessionAffinity"] == "ClientIP"
        && let Some(client_ip) = descend(spec, &["sessionAffinityConfig", "clientIP"])
    {
        set_default(client_ip, "timeoutSeconds", json!(10800));
    }
    let service_type = spec["type"].as_str().unwrap_or_default().to_owned();
    if matches!(service_type.as_str(), "NodePort" | "LoadBalancer") {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if service_type == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if service_type != "ExternalName" {
        // Headless services without a selector take every family the cluster has.
        let family_policy = if spec["clusterIP"] == "None" && spec["selector"].is_null() {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        set_defaults(
            spec,
            [
                ("internalTrafficPolicy", json!("Cluster")),
                ("ipFamilyPolicy", json!(family_policy)),
            ],
        );
    }
}

/// A service port's `targetPort` is its `port` unless set (0 and `""` count as unset).
fn default_target_port(port: &mut Value) {
    let Some(fields) = port.as_object_mut() else {
        return;
    };
    let unset = fields
        .get("targetPort")
        .is_none_or(|target| target.is_null() || *target == 0 || *target == "");
    if unset && let Some(number) = fields.get("port").cloned() {
        fields.insert("targetPort".to_owned(), number);
    }
}

/// `Opaque`, and `stringData` folded into `data` (base64-encoded, winning over `data`) and
/// removed, as Kubernetes does on every write. A `stringData` holding anything but strings is
/// left for validation to refuse.
fn secret(secret: &mut Value) {
    set_default(secret, "type", json!("Opaque"));
    let Some(fields) = secret.as_object_mut() else {
        return;
    };
    let data_ok = matches!(
        fields.get("data"),
        None | Some(Value::Null | Value::Object(_))
    );
    let foldable = data_ok
        && match fields.get("stringData") {
            Some(Value::Object(strings)) => strings.values().all(Value::is_string),
            Some(Value::Null) => true,
            _ => false,
        };
    if !foldable {
        return;
    }
    let Some(Value::Object(strings)) = fields.remove("stringData") else {
        return;
    };
    if let Some(data) = child(secret, "data").and_then(Value::as_object_mut) {
        for (key, value) in strings {
            let encoded = base64::encode(value.as_str().unwrap_or_default().as_bytes());
            data.insert(key, json!(encoded));
        }
    }
}

/// The `kubernetes.io/metadata.name` label and the `kubernetes` finalizer.
fn namespace(namespace: &mut Value) {
    if let Some(name) = namespace["metadata"]["name"].as_str().map(str::to_owned)
        && let Some(labels) = descend(namespace, &["metadata", "labels"])
    {
        labels[NAMESPACE_NAME_LABEL] = json!(name);
    }
    if let Some(spec) = child(namespace, "spec") {
        set_default(spec, "finalizers", json!(["kubernetes"]));
    }
}

fn endpoints(endpoints: &mut Value) {
    for subset in each(endpoints, "subsets") {
        for port in each(subset, "ports") {
            set_default(port, "protocol", json!("TCP"));
        }
    }
}

fn endpoint_slice(slice: &mut Value) {
    for port in each(slice, "ports") {
        set_defaults(port, [("protocol", json!("TCP")), ("name", json!(""))]);
    }
}

fn deployment(deployment: &mut Value) {
    pod_template(deployment, TEMPLATE_SPEC);
    let Some(spec) = child(deployment, "spec") else {
        return;
    };
    set_defaults(
        spec,
        [
            ("replicas", json!(1)),
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
        ],
    );
    rolling_update(spec, "strategy", [json!("25%"), json!("25%")]);
}

/// Defaults `spec[key]` to a rolling update with the given `[maxUnavailable, maxSurge]`.
fn rolling_update(spec: &mut Value, key: &str, [unavailable, surge]: [Value; 2]) {
    let Some(strategy) = child(spec, key) else {
        return;
    };
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate"
        && let Some(rolling) = child(strategy, "rollingUpdate")
    {
        set_defaults(
            rolling,
            [("maxUnavailable", unavailable), ("maxSurge", surge)],
        );
    }
}

fn replica_set(replica_set: &mut Value) {
    pod_template(replica_set, TEMPLATE_SPEC);
    if let Some(spec) = child(replica_set, "spec") {
        set_default(spec, "replicas", json!(1));
    }
}

fn stateful_set(stateful_set: &mut Value) {
    pod_template(stateful_set, TEMPLATE_SPEC);
    let Some(spec) = child(stateful_set, "spec") else {
        return;
    };
    set_defaults(
        spec,
        [
            ("replicas", json!(1)),
            ("podManagementPolicy", json!("OrderedReady")),
            ("revisionHistoryLimit", json!(10)),
        ],
    );
    if let Some(strategy) = child(spec, "updateStrategy") {
        if is_unset(&strategy["type"], &json!("")) {
            strategy["type"] = json!("RollingUpdate");
            set_default(strategy, "rollingUpdate", json!({}));
        }
        if strategy["type"] == "RollingUpdate"
            && let Some(rolling) = find(strategy, &["rollingUpdate"])
        {
            set_default(rolling, "partition", json!(0));
        }
    }
    if let Some(retention) = child(spec, "persistentVolumeClaimRetentionPolicy") {
        set_defaults(
            retention,
            [
                ("whenDeleted", json!("Retain")),
                ("whenScaled", json!("Retain")),
            ],
        );
    }
    for claim in each(spec, "volumeClaimTemplates") {
        if let Some(claim_spec) = child(claim, "spec") {
            set_default(claim_spec, "volumeMode", json!("Filesystem"));
        }
    }
}

fn daemon_set(daemon_set: &mut Value) {
    pod_template(daemon_set, TEMPLATE_SPEC);
    let Some(spec) = child(daemon_set, "spec") else {
        return;
    };
    set_default(spec, "revisionHistoryLimit", json!(10));
    rolling_update(spec, "updateStrategy", [json!(1), json!(0)]);
}

fn job(job: &mut Value) {
    pod_template(job, TEMPLATE_SPEC);
    labels_from_template(job);
    generate_job_selector(job);
    let Some(spec) = child(job, "spec") else {
        return;
    };
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    let backoff_limit = if spec["backoffLimitPerIndex"].is_null() {
        6
    } else {
        i64::from(i32::MAX)
    };
    let replacement = if spec["podFailurePolicy"].is_null() {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set_defaults(
        spec,
        [
            ("parallelism", json!(1)),
            ("backoffLimit", json!(backoff_limit)),
            ("completionMode", json!("NonIndexed")),
            ("suspend", json!(false)),
            ("podReplacementPolicy", json!(replacement)),
        ],
    );
}

/// A Job without labels of its own takes its pod template's.
fn labels_from_template(job: &mut Value) {
    let own = job["metadata"]["labels"]
        .as_object()
        .is_some_and(|labels| !labels.is_empty());
    let template = &job["spec"]["template"]["metadata"]["labels"];
    if !own && template.is_object() {
        let template = template.clone();
        if let Some(metadata) = child(job, "metadata") {
            metadata["labels"] = template;
        }
    }
}

/// Unless `spec.manualSelector` is true, a Job's selector is generated: it matches the Job's
/// uid, which its pod template carries as a label, along with the Job's name.
fn generate_job_selector(job: &mut Value) {
    let Some(uid) = job["metadata"]["uid"].as_str().map(str::to_owned) else {
        return;
    };
    if job["spec"]["manualSelector"] == true || !job["spec"]["selector"].is_null() {
        return;
    }
    let name = job["metadata"]["name"].as_str().map(str::to_owned);
    if let Some(labels) = descend(job, &["spec", "template", "metadata", "labels"]) {
        for key in [JOB_CONTROLLER_UID_LABEL, "controller-uid"] {
            set_default(labels, key, json!(uid));
        }
        if let Some(name) = name {
            for key in [JOB_NAME_LABEL, "job-name"] {
                set_default(labels, key, json!(name));
            }
        }
    }
    if let Some(spec) = child(job, "spec") {
        spec["selector"] = json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: uid}});
    }
}

fn cron_job(cron_job: &mut Value) {
    pod_template(
        cron_job,
        &["spec", "jobTemplate", "spec", "template", "spec"],
    );
    if let Some(spec) = child(cron_job, "spec") {
        set_defaults(
            spec,
            [
                ("concurrencyPolicy", json!("Allow")),
                ("suspend", json!(false)),
                ("successfulJobsHistoryLimit", json!(3)),
                ("failedJobsHistoryLimit", json!(1)),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(group: &str, kind: &str, mut object: Value) -> Value {
        apply_defaults(group, kind, &mut object);
        let again = {
            let mut copy = object.clone();
            apply_defaults(group, kind, &mut copy);
            copy
        };
        assert_eq!(again, object, "defaulting twice changes nothing");
        object
    }

    fn pod_with(containers: Value) -> Value {
        defaulted("", "Pod", json!({"spec": {"containers": containers}}))
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:1.2", "IfNotPresent"),
            ("nginx:latest", "Always"),
            ("reg:5000/app", "Always"),
            ("reg:5000/app:v1", "IfNotPresent"),
            ("reg:5000/app@sha256:0123abcd", "IfNotPresent"),
            ("reg:5000/app:latest@sha256:0123abcd", "Always"),
        ] {
            let pod = pod_with(json!([{"name": "c", "image": image}]));
            assert_eq!(
                pod["spec"]["containers"][0]["imagePullPolicy"], policy,
                "{image}"
            );
        }
        let pod = pod_with(json!([{"name": "c", "image": "nginx", "imagePullPolicy": "Never"}]));
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
    }

    #[test]
    fn pods_get_kubernetes_defaults() {
        let pod = pod_with(json!([{
            "name": "web",
            "image": "nginx:1.27",
            "ports": [{"containerPort": 80}],
            "livenessProbe": {"httpGet": {"port": 80}},
            "resources": {"limits": {"cpu": "1"}},
            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        }]));
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["securityContext"], json!({}));
        assert!(spec.get("tolerations").is_none());
        let container = &spec["containers"][0];
        assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(container["terminationMessagePolicy"], "File");
        assert_eq!(container["ports"][0]["protocol"], "TCP");
        assert_eq!(
            container["resources"],
            json!({"limits": {"cpu": "1"}, "requests": {"cpu": "1"}})
        );
        assert_eq!(
            container["livenessProbe"],
            json!({
                "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10,
                "successThreshold": 1, "failureThreshold": 3,
            })
        );
        assert_eq!(
            container["env"][0]["valueFrom"]["fieldRef"]["apiVersion"],
            "v1"
        );
    }

    #[test]
    fn pod_defaults_keep_what_is_set() {
        let pod = defaulted(
            "",
            "Pod",
            json!({"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "dnsPolicy": "",
                "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}],
                "volumes": [{"name": "scratch"}, {"name": "conf", "configMap": {"name": "c"}}],
            }}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["terminationGracePeriodSeconds"], 0);
        assert_eq!(spec["dnsPolicy"], "ClusterFirst", "\"\" is unset");
        assert_eq!(
            spec["containers"][0]["resources"],
            json!({"requests": {"cpu": "1"}})
        );
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["configMap"]["defaultMode"], 420);
        assert!(spec["volumes"][1].get("emptyDir").is_none());
    }

    #[test]
    fn host_network_ports_default_their_host_port() {
        let pod = defaulted(
            "",
            "Pod",
            json!({"spec": {"hostNetwork": true, "containers": [
                {"name": "c", "image": "x", "ports": [{"containerPort": 53, "protocol": "UDP"}]}
            ]}}),
        );
        let port = &pod["spec"]["containers"][0]["ports"][0];
        assert_eq!(port["hostPort"], 53);
        assert_eq!(port["protocol"], "UDP");
    }

    #[test]
    fn services_default_type_ports_and_policies() {
        let service = defaulted(
            "",
            "Service",
            json!({"spec": {"selector": {"app": "web"}, "ports": [
                {"port": 80}, {"port": 443, "targetPort": "https", "protocol": "TCP"}
            ]}}),
        );
        let spec = &service["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][1]["targetPort"], "https");

        let node_port = defaulted(
            "",
            "Service",
            json!({"spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}),
        );
        let spec = &node_port["spec"];
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
        assert_eq!(
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );

        let external = defaulted(
            "",
            "Service",
            json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
        );
        assert!(external["spec"].get("internalTrafficPolicy").is_none());
        let headless = defaulted("", "Service", json!({"spec": {"clusterIP": "None"}}));
        assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    }

    #[test]
    fn secret_string_data_becomes_base64_data() {
        let secret = defaulted(
            "",
            "Secret",
            json!({"data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "user": "admin"}}),
        );
        assert_eq!(secret["type"], "Opaque");
        assert!(secret.get("stringData").is_none());
        assert_eq!(
            secret["data"],
            json!({"a": "bmV3", "keep": "eA==", "user": "YWRtaW4="})
        );
        let typed = defaulted(
            "",
            "Secret",
            json!({"type": "kubernetes.io/tls", "stringData": {"n": 1}}),
        );
        assert_eq!(typed["type"], "kubernetes.io/tls");
        assert_eq!(typed["stringData"], json!({"n": 1}), "left for validation");
    }

    #[test]
    fn namespaces_get_their_name_label_and_finalizer() {
        let namespace = defaulted(
            "",
            "Namespace",
            json!({"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "x"}}}),
        );
        assert_eq!(
            namespace["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "team"})
        );
        assert_eq!(namespace["spec"]["finalizers"], json!(["kubernetes"]));
    }

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    }

    #[test]
    fn deployments_default_replicas_strategy_and_template() {
        let deployment = defaulted(
            "apps",
            "Deployment",
            json!({"spec": {"template": template()}}),
        );
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert!(spec.get("minReadySeconds").is_none());
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let pod_spec = &spec["template"]["spec"];
        assert_eq!(pod_spec["restartPolicy"], "Always");
        assert_eq!(pod_spec["containers"][0]["imagePullPolicy"], "Always");
        assert!(
            pod_spec.get("enableServiceLinks").is_none(),
            "a pod-only default"
        );

        let recreate = defaulted(
            "apps",
            "Deployment",
            json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(recreate["spec"]["replicas"], 0);
    }

    #[test]
    fn stateful_and_daemon_sets() {
        let set = defaulted(
            "apps",
            "StatefulSet",
            json!({"spec": {"template": template(), "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}),
        );
        let spec = &set["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        let on_delete = defaulted(
            "apps",
            "StatefulSet",
            json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}),
        );
        assert_eq!(
            on_delete["spec"]["updateStrategy"],
            json!({"type": "OnDelete"})
        );

        let daemons = defaulted(
            "apps",
            "DaemonSet",
            json!({"spec": {"template": template()}}),
        );
        assert_eq!(
            daemons["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(daemons["spec"]["revisionHistoryLimit"], 10);
        let replicas = defaulted(
            "apps",
            "ReplicaSet",
            json!({"spec": {"template": template()}}),
        );
        assert_eq!(replicas["spec"]["replicas"], 1);
    }

    #[test]
    fn jobs_get_a_generated_selector_and_counts() {
        let job = defaulted(
            "batch",
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": template()}}),
        );
        let spec = &job["spec"];
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(
            spec["template"]["metadata"]["labels"],
            json!({
                "app": "web",
                "batch.kubernetes.io/controller-uid": "u-1",
                "controller-uid": "u-1",
                "batch.kubernetes.io/job-name": "pi",
                "job-name": "pi",
            })
        );
        assert_eq!(job["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert!(spec.get("manualSelector").is_none());

        let parallel = defaulted("batch", "Job", json!({"spec": {"parallelism": 3}}));
        assert!(parallel["spec"].get("completions").is_none());
        assert!(
            parallel["spec"].get("selector").is_none(),
            "no uid yet: nothing to select"
        );
        let manual = defaulted(
            "batch",
            "Job",
            json!({"metadata": {"uid": "u"}, "spec": {"manualSelector": true}}),
        );
        assert!(manual["spec"].get("selector").is_none());
    }

    #[test]
    fn cron_jobs_default_policies_and_the_pod_template() {
        let cron = defaulted(
            "batch",
            "CronJob",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template()}}}}),
        );
        let spec = &cron["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Allow");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["successfulJobsHistoryLimit"], 3);
        assert_eq!(spec["failedJobsHistoryLimit"], 1);
        assert_eq!(
            spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
            "Always"
        );
        assert!(spec["jobTemplate"]["spec"].get("backoffLimit").is_none());
    }

    #[test]
    fn endpoint_ports_default_to_tcp() {
        let slice = defaulted(
            "discovery.k8s.io",
            "EndpointSlice",
            json!({"ports": [{"port": 80}]}),
        );
        assert_eq!(
            slice["ports"][0],
            json!({"port": 80, "protocol": "TCP", "name": ""})
        );
        let endpoints = defaulted(
            "",
            "Endpoints",
            json!({"subsets": [{"ports": [{"port": 80}]}]}),
        );
        assert_eq!(endpoints["subsets"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn other_kinds_and_odd_shapes_are_left_alone() {
        let node = json!({"spec": {}});
        assert_eq!(defaulted("", "Node", node.clone()), node);
        assert_eq!(defaulted("", "Pod", json!("x")), json!("x"));
        let odd = defaulted("", "Pod", json!({"spec": {"containers": "nope"}}));
        assert_eq!(odd["spec"]["containers"], "nope");
    }
}
