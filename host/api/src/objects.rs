//! Validation of whole objects, per kind, as Kubernetes' API server validates them on create
//! and update: the rules a user meets, with Kubernetes' field paths (`spec.containers[0].image`)
//! and cause messages (`Required value`, `Invalid value: ...: field is immutable`, `Unsupported
//! value: ...`).
//!
//! Objects are Kubernetes' JSON wire format, after [`crate::defaults::apply_defaults`]. A field
//! that defaulting always fills is checked only when present, so validating an object that was
//! not defaulted reports what is wrong with it rather than what defaulting would have added.
//! Names, namespaces and the metadata that may not change on update are checked by the caller.

mod config;
mod network;
mod pod;
mod quota;
mod workloads;

use std::collections::BTreeSet;
use std::ops::Deref;

use serde_json::{Value, json};

use crate::defaults::apply_defaults;
use crate::status::StatusCause;
use crate::validation;

/// Problems found so far.
type Causes = Vec<StatusCause>;

/// A check of a string, returning Kubernetes' messages for what is wrong with it.
type Check = fn(&str) -> Vec<String>;

/// The most annotations may hold, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Validates an object about to be created (`old` is `None`) or to replace `old`, the stored
/// object. Returns one cause per problem, empty when the object is valid.
///
/// `object` should already have its defaults ([`apply_defaults`]). `old` gets them here, so that
/// an object stored before a default existed compares as if it had it.
pub fn validate(group: &str, kind: &str, object: &Value, old: Option<&Value>) -> Vec<StatusCause> {
    let old = old.map(|old| {
        let mut old = old.clone();
        apply_defaults(group, kind, &mut old);
        old
    });
    let old = old.as_ref();
    let mut out = Causes::new();
    metadata(object, old, &mut out);
    match (group, kind) {
        ("", "Pod") => pod::pod(object, old, &mut out),
        ("", "PodTemplate") => pod::template(&Field::of(object, "template"), &[], &mut out),
        ("", "Service") => network::service(object, old, &mut out),
        ("", "Endpoints") => network::endpoints(object, &mut out),
        ("", "ConfigMap") => config::config_map(object, old, &mut out),
        ("", "Secret") => config::secret(object, old, &mut out),
        ("", "Namespace") => namespace(object, &mut out),
        ("", "LimitRange") => quota::limit_range(object, &mut out),
        ("", "ResourceQuota") => quota::resource_quota(object, &mut out),
        ("", "Event") => event(object, &mut out),
        ("apps", "Deployment") => workloads::deployment(object, old, &mut out),
        ("apps", "ReplicaSet") => workloads::replica_set(object, old, &mut out),
        ("apps", "StatefulSet") => workloads::stateful_set(object, old, &mut out),
        ("apps", "DaemonSet") => workloads::daemon_set(object, old, &mut out),
        ("batch", "Job") => workloads::job(object, old, &mut out),
        ("batch", "CronJob") => workloads::cron_job(object, &mut out),
        ("networking.k8s.io", "Ingress") => network::ingress(object, &mut out),
        ("networking.k8s.io", "IngressClass") => network::ingress_class(object, old, &mut out),
        ("discovery.k8s.io", "EndpointSlice") => network::endpoint_slice(object, &mut out),
        ("coordination.k8s.io", "Lease") => lease(object, &mut out),
        _ => {}
    }
    out
}

/// A field path as Kubernetes prints it: `spec.containers[0].image`, `data[key]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Path(String);

impl Path {
    fn new(root: &str) -> Self {
        Self(root.to_owned())
    }

    fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }
}

impl From<&Path> for String {
    fn from(path: &Path) -> Self {
        path.0.clone()
    }
}

/// A value inside the object being validated, with its path: what a cause is about. Reads as
/// the value it holds (absent fields read as `null`).
#[derive(Debug, Clone)]
struct Field<'a> {
    value: &'a Value,
    path: Path,
}

impl Deref for Field<'_> {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value
    }
}

impl<'a> Field<'a> {
    /// The top-level field `name` of `object`.
    fn of(object: &'a Value, name: &str) -> Self {
        Self {
            value: &object[name],
            path: Path::new(name),
        }
    }

    /// The field `name` below this one.
    fn child(&self, name: &str) -> Self {
        Self {
            value: &self.value[name],
            path: self.path.child(name),
        }
    }

    /// The entry `key` of a map below this field, at `path[key]`.
    fn entry(&self, key: &str) -> Self {
        Self {
            value: &self.value[key],
            path: self.path.key(key),
        }
    }

    /// The elements of an array, each at `path[i]`; none for anything else.
    fn items(&self) -> impl Iterator<Item = Field<'a>> + use<'a> {
        let path = self.path.clone();
        items(self.value)
            .iter()
            .enumerate()
            .map(move |(i, value)| Field {
                value,
                path: path.index(i),
            })
    }

    /// The entries of a map, each at `path[key]`; none for anything else.
    fn entries(&self) -> impl Iterator<Item = (&'a String, Field<'a>)> + use<'a> {
        let path = self.path.clone();
        entries(self.value).map(move |(key, value)| {
            let path = path.key(key);
            (key, Field { value, path })
        })
    }

    /// `value`, a member of this field, named by this field's path: how Kubernetes names causes
    /// about labels, annotations and finalizers.
    fn member(&self, value: &'a Value) -> Self {
        Self {
            value,
            path: self.path.clone(),
        }
    }

    /// Whether the field counts as set: not absent, `null`, `""`, `[]` or `{}`.
    fn is_set(&self) -> bool {
        is_set(self.value)
    }

    fn required(&self) -> StatusCause {
        StatusCause::required(&self.path)
    }

    fn required_with(&self, detail: &str) -> StatusCause {
        StatusCause::required_with(&self.path, detail)
    }

    fn invalid(&self, detail: &str) -> StatusCause {
        StatusCause::invalid(&self.path, self.value, detail)
    }

    fn forbidden(&self, detail: &str) -> StatusCause {
        StatusCause::forbidden(&self.path, detail)
    }

    fn not_supported(&self, supported: &[&str]) -> StatusCause {
        StatusCause::not_supported(&self.path, self.value, supported)
    }

    fn duplicate(&self) -> StatusCause {
        StatusCause::duplicate(&self.path, self.value)
    }

    fn not_found(&self) -> StatusCause {
        StatusCause::not_found(&self.path, self.value)
    }
}

/// The elements of an array, none for anything else.
fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// The fields of an object, none for anything else.
fn entries(value: &Value) -> impl Iterator<Item = (&String, &Value)> {
    value.as_object().into_iter().flatten()
}

/// Whether a value counts as set: not absent, `null`, `""`, `[]` or `{}`.
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        _ => true,
    }
}

/// One `Invalid value` cause per message, about `value` at `path`.
fn invalid_each(path: &Path, value: &Value, messages: Vec<String>, out: &mut Causes) {
    out.extend(
        messages
            .iter()
            .map(|message| StatusCause::invalid(path, value, message)),
    );
}

/// A string field, if set, passes `check`; anything but a string is invalid.
fn check_str(field: &Field, check: Check, out: &mut Causes) {
    match field.value {
        Value::Null => {}
        Value::String(text) if text.is_empty() => {}
        Value::String(text) => invalid_each(&field.path, field, check(text), out),
        _ => out.push(field.invalid("must be a string")),
    }
}

/// A string field, if present, holds one of `supported`.
fn one_of(field: &Field, supported: &[&str], out: &mut Causes) {
    let known = field.as_str().is_some_and(|text| supported.contains(&text));
    if !field.is_null() && !known {
        out.push(field.not_supported(supported));
    }
}

/// An integer field, if present, is at least `min`.
fn at_least(field: &Field, min: i64, out: &mut Causes) {
    match field.as_i64() {
        _ if field.is_null() => {}
        Some(number) if number >= min => {}
        Some(_) if min == 0 => out.push(field.invalid("must be greater than or equal to 0")),
        Some(_) => out.push(field.invalid(&format!("must be greater than {}", min - 1))),
        None => out.push(field.invalid("must be an integer")),
    }
}

/// An integer field, if present, is not negative.
fn nonnegative(field: &Field, out: &mut Causes) {
    at_least(field, 0, out);
}

/// A required port number.
fn port_number(field: &Field, out: &mut Causes) {
    match field.as_i64() {
        _ if field.is_null() => out.push(field.required()),
        Some(port) => invalid_each(&field.path, field, validation::port_number(port), out),
        None => out.push(field.invalid("must be an integer")),
    }
}

/// A required port, by number or by name.
fn port_number_or_name(field: &Field, out: &mut Causes) {
    match field.as_str() {
        Some(name) => invalid_each(&field.path, field, validation::port_name(name), out),
        None => port_number(field, out),
    }
}

/// The names of the entries of a list: each passes a check, none repeats, and (if `required`)
/// none is missing.
#[derive(Debug)]
struct UniqueNames<'a> {
    check: Check,
    required: bool,
    seen: BTreeSet<&'a str>,
}

impl<'a> UniqueNames<'a> {
    fn new(check: Check, required: bool) -> Self {
        Self {
            check,
            required,
            seen: BTreeSet::new(),
        }
    }

    /// Checks the `name` of one entry.
    fn check(&mut self, entry: &Field<'a>, out: &mut Causes) {
        let name = entry.child("name");
        match name.value {
            Value::String(text) if !text.is_empty() => {
                invalid_each(&name.path, &name, (self.check)(text), out);
                if !self.seen.insert(text.as_str()) {
                    out.push(name.duplicate());
                }
            }
            Value::Null | Value::String(_) => {
                if self.required {
                    out.push(name.required());
                }
            }
            _ => out.push(name.invalid("must be a string")),
        }
    }
}

/// A field that may not change on update; `old` is its stored value.
fn immutable(field: &Field, old: &Value, out: &mut Causes) {
    if field.value != old {
        out.push(field.invalid("field is immutable"));
    }
}

/// Whether two objects differ in anything but the `mutable` fields.
fn changed_except(new: &Value, old: &Value, mutable: &[&str]) -> bool {
    let strip = |value: &Value| {
        let mut value = value.clone();
        if let Some(fields) = value.as_object_mut() {
            fields.retain(|key, _| !mutable.contains(&key.as_str()));
        }
        value
    };
    strip(new) != strip(old)
}

/// Label keys are qualified names and values label values (`ValidateLabels`); causes name the
/// map, not the entry.
fn labels(labels: &Field, out: &mut Causes) {
    for (key, value) in entries(labels.value) {
        let errors = validation::qualified_name(key);
        invalid_each(&labels.path, &json!(key), errors, out);
        check_str(&labels.member(value), validation::label_value, out);
    }
}

/// Annotation keys are qualified names (in any case), and all of them together fit 256 KiB.
fn annotations(annotations: &Field, out: &mut Causes) {
    let mut size = 0;
    for (key, value) in entries(annotations.value) {
        let errors = validation::qualified_name(&key.to_lowercase());
        invalid_each(&annotations.path, &json!(key), errors, out);
        match value.as_str() {
            Some(text) => size += key.len() + text.len(),
            None => out.push(annotations.member(value).invalid("must be a string")),
        }
    }
    let path = &annotations.path;
    if size > MAX_ANNOTATIONS_BYTES {
        out.push(StatusCause::too_long(path, MAX_ANNOTATIONS_BYTES));
    }
}

/// The checks of `ObjectMeta` that hold for every kind: labels, annotations, owner references
/// and finalizers; on update, no new finalizers once deletion has begun.
fn metadata(object: &Value, old: Option<&Value>, out: &mut Causes) {
    let metadata = Field::of(object, "metadata");
    labels(&metadata.child("labels"), out);
    annotations(&metadata.child("annotations"), out);
    owner_references(&metadata.child("ownerReferences"), out);
    let finalizers = metadata.child("finalizers");
    finalizer_names(&finalizers, out);
    if let Some(old) = old.filter(|old| !old["metadata"]["deletionTimestamp"].is_null()) {
        no_new_finalizers(&finalizers, &old["metadata"]["finalizers"], out);
    }
}

/// Owner references name their owner fully; at most one is the controller. Causes name the
/// list, not the entry.
fn owner_references(references: &Field, out: &mut Causes) {
    let empty = json!("");
    let mut controller = None;
    for reference in items(references) {
        for (field, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if !is_set(&reference[field]) {
                let path = references.path.child(field);
                let message = format!("{what} must not be empty");
                let value = reference
                    .get(field)
                    .filter(|v| !v.is_null())
                    .unwrap_or(&empty);
                out.push(StatusCause::invalid(&path, value, &message));
            }
        }
        if reference["controller"] == true {
            let this = format!(
                "{}/{}",
                reference["kind"].as_str().unwrap_or_default(),
                reference["name"].as_str().unwrap_or_default()
            );
            match &controller {
                None => controller = Some(this),
                Some(first) => out.push(references.invalid(&format!(
                    "Only one reference can have Controller set to true. Found \"true\" in \
                     references for {first} and {this}"
                ))),
            }
        }
    }
}

/// Finalizers are qualified names; `orphan` and `foregroundDeletion` exclude each other. Causes
/// name the list, not the entry.
fn finalizer_names(finalizers: &Field, out: &mut Causes) {
    for finalizer in items(finalizers.value) {
        check_str(
            &finalizers.member(finalizer),
            validation::qualified_name,
            out,
        );
    }
    let has = |name: &str| items(finalizers).iter().any(|f| f == name);
    if has("orphan") && has("foregroundDeletion") {
        let message = "finalizer orphan and foregroundDeletion cannot be both set";
        out.push(finalizers.invalid(message));
    }
}

fn no_new_finalizers(finalizers: &Field, old: &Value, out: &mut Causes) {
    let old = items(old);
    let added: BTreeSet<String> = items(finalizers)
        .iter()
        .filter(|finalizer| !old.contains(finalizer))
        .map(Value::to_string)
        .collect();
    if !added.is_empty() {
        let added: Vec<String> = added.into_iter().collect();
        out.push(finalizers.forbidden(&format!(
            "no new finalizers can be added if the object is being deleted, found new \
             finalizers []string{{{}}}",
            added.join(", ")
        )));
    }
}

/// A Namespace's `spec.finalizers` are qualified names, or one of Kubernetes' own. Causes name
/// the list, not the entry.
fn namespace(namespace: &Value, out: &mut Causes) {
    let finalizers = Field::of(namespace, "spec").child("finalizers");
    finalizer_names(&finalizers, out);
    let standard = ["kubernetes", "orphan", "foregroundDeletion"];
    for finalizer in items(finalizers.value) {
        if let Some(name) = finalizer.as_str()
            && !name.contains('/')
            && !standard.contains(&name)
        {
            let message = "name is neither a standard finalizer name nor is it fully qualified";
            out.push(finalizers.member(finalizer).invalid(message));
        }
    }
}

/// An Event is about an object, which must be in the Event's namespace; an Event with an
/// `eventTime` (the newer kind) also says who reported it and why.
fn event(event: &Value, out: &mut Causes) {
    let involved = Field::of(event, "involvedObject");
    if !involved.is_set() {
        out.push(involved.required());
        return;
    }
    let event_namespace = event["metadata"]["namespace"].as_str();
    let involved_namespace = involved["namespace"].as_str().unwrap_or_default();
    let legacy = event["eventTime"].is_null();
    let matches = match (involved_namespace, event_namespace) {
        (_, None) => true,
        ("", Some(namespace)) if legacy => ["", "default"].contains(&namespace),
        ("", Some(namespace)) => ["default", "kube-system"].contains(&namespace),
        (involved, Some(namespace)) => involved == namespace || !legacy,
    };
    if !matches {
        out.push(StatusCause::invalid(
            "involvedObject.namespace",
            &json!(involved_namespace),
            "does not match event.namespace",
        ));
    }
    if !legacy {
        for name in [
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            let field = Field::of(event, name);
            if !field.is_set() {
                out.push(field.required());
            }
        }
    }
}

fn lease(lease: &Value, out: &mut Causes) {
    let spec = Field::of(lease, "spec");
    at_least(&spec.child("leaseDurationSeconds"), 1, out);
    nonnegative(&spec.child("leaseTransitions"), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causes of validating a create, as `field: message` lines.
    pub(super) fn problems(group: &str, kind: &str, object: Value) -> Vec<String> {
        update_problems(group, kind, object, None)
    }

    /// The causes of validating an update (or a create, without `old`), after defaulting the
    /// new object as the API server does.
    pub(super) fn update_problems(
        group: &str,
        kind: &str,
        mut object: Value,
        old: Option<Value>,
    ) -> Vec<String> {
        apply_defaults(group, kind, &mut object);
        validate(group, kind, &object, old.as_ref())
            .iter()
            .map(StatusCause::to_message)
            .collect()
    }

    #[test]
    fn labels_and_annotations_are_checked_for_every_kind() {
        let problems = problems(
            "",
            "ConfigMap",
            json!({"metadata": {
                "labels": {"app": "web", "bad key!": "v", "ok": "-bad-"},
                "annotations": {"Example.COM/Note": "x", "/x": "y"},
            }}),
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "metadata.labels: Invalid value: \"bad key!\": name part must consist"
            )
        );
        assert!(
            problems[1].starts_with("metadata.labels: Invalid value: \"-bad-\": a valid label")
        );
        assert_eq!(
            problems[2],
            "metadata.annotations: Invalid value: \"/x\": prefix part must be non-empty"
        );
    }

    #[test]
    fn annotations_fit_256_kib() {
        let big = "x".repeat(MAX_ANNOTATIONS_BYTES);
        let problems = problems("", "Node", json!({"metadata": {"annotations": {"a": big}}}));
        assert_eq!(
            problems,
            ["metadata.annotations: Too long: may not be more than 262144 bytes"]
        );
    }

    #[test]
    fn owner_references_and_finalizers() {
        let problems = problems(
            "",
            "ServiceAccount",
            json!({"metadata": {
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a", "uid": "1", "controller": true},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "b", "controller": true},
                ],
                "finalizers": ["example.com/cleanup", "bad finalizer"],
            }}),
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(
            problems[0],
            "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty"
        );
        assert!(problems[1].contains(
            "Only one reference can have Controller set to true. Found \"true\" in references for ReplicaSet/a and ReplicaSet/b"
        ));
        assert!(problems[2].starts_with("metadata.finalizers: Invalid value: \"bad finalizer\""));
    }

    #[test]
    fn no_new_finalizers_once_deleting() {
        let old = json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["a.io/x"]}});
        let new = json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["a.io/x", "b.io/y"]}});
        assert_eq!(
            update_problems("", "ConfigMap", new, Some(old.clone())),
            [
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"b.io/y\"}"
            ]
        );
        let fewer = json!({"metadata": {"finalizers": []}});
        assert!(update_problems("", "ConfigMap", fewer, Some(old)).is_empty());
    }

    #[test]
    fn namespace_finalizers() {
        assert!(problems("", "Namespace", json!({"metadata": {"name": "a"}})).is_empty());
        assert_eq!(
            problems("", "Namespace", json!({"spec": {"finalizers": ["mine"]}})),
            [
                "spec.finalizers: Invalid value: \"mine\": name is neither a standard finalizer name nor is it fully qualified"
            ]
        );
    }

    #[test]
    fn events_need_an_object_in_their_namespace() {
        let event = |involved: Value| {
            problems(
                "",
                "Event",
                json!({"metadata": {"namespace": "default"}, "involvedObject": involved}),
            )
        };
        assert!(event(json!({"kind": "Pod", "name": "p", "namespace": "default"})).is_empty());
        assert!(event(json!({"kind": "Node", "name": "n"})).is_empty());
        assert_eq!(
            event(json!({"kind": "Pod", "name": "p", "namespace": "other"})),
            ["involvedObject.namespace: Invalid value: \"other\": does not match event.namespace"]
        );
        assert_eq!(
            problems("", "Event", json!({})),
            ["involvedObject: Required value"]
        );
    }

    #[test]
    fn leases() {
        assert!(
            problems(
                "coordination.k8s.io",
                "Lease",
                json!({"spec": {"leaseDurationSeconds": 15}})
            )
            .is_empty()
        );
        assert_eq!(
            problems(
                "coordination.k8s.io",
                "Lease",
                json!({"spec": {"leaseDurationSeconds": 0}})
            ),
            ["spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"]
        );
    }

    #[test]
    fn causes_carry_kubernetes_reasons() {
        let mut pod =
            json!({"spec": {"restartPolicy": "Sometimes", "containers": [{"name": "c"}]}});
        apply_defaults("", "Pod", &mut pod);
        let causes = validate("", "Pod", &pod, None);
        let reasons: Vec<(&str, &str)> = causes
            .iter()
            .map(|cause| (cause.field.as_str(), cause.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("spec.containers[0].image", "FieldValueRequired"),
                ("spec.restartPolicy", "FieldValueNotSupported"),
            ]
        );
    }

    #[test]
    fn kinds_without_rules_pass() {
        assert!(problems("", "Node", json!({"spec": {"podCIDR": "10.0.0.0/24"}})).is_empty());
        assert!(problems("example.com", "Widget", json!({"spec": 1})).is_empty());
    }
}
