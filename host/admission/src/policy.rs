//! AdmissionPolicy objects: their spec, which requests their rules match, and which requests
//! are exempt from every policy that has not opted in.

use std::time::Duration;

use flotilla_api::selector::LabelSelector;
use serde::Deserialize;
use serde_json::Value;

/// Flotilla's API group: its objects are exempt unless a policy opts in.
pub const OWN_GROUP: &str = "plugins.flotilla.dev";

/// Namespaces whose objects (and the Namespace objects themselves) are exempt unless a policy
/// opts in: the cluster's own workloads live there.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Mode {
    Mutating,
    Validating,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum FailurePolicy {
    #[default]
    Fail,
    Ignore,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Reinvocation {
    Never,
    #[default]
    IfNeeded,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub operations: Vec<String>,
    pub api_groups: Vec<String>,
    pub api_versions: Vec<String>,
    pub resources: Vec<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// A kind a policy may read from the informer cache.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct KindRef {
    pub api_version: String,
    pub kind: String,
}

fn ten() -> u64 {
    10
}

/// An AdmissionPolicy's spec.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    pub plugin: String,
    pub mode: Mode,
    #[serde(default)]
    pub order: i64,
    #[serde(default)]
    pub reinvocation_policy: Reinvocation,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default = "ten")]
    pub timeout_seconds: u64,
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub namespace_selector: Option<Value>,
    #[serde(default)]
    pub object_selector: Option<Value>,
    #[serde(default)]
    pub settings: Option<Value>,
    #[serde(default)]
    pub reads: Vec<KindRef>,
    /// Kinds whose status the policy may read live and write (a quota's usage).
    #[serde(default)]
    pub writes: Vec<KindRef>,
    #[serde(default)]
    pub include_system: bool,
}

/// What a request is about, as rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespaced: bool,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl Target<'_> {
    /// Whether policies that have not opted in leave this request alone: Flotilla's own
    /// objects, Nodes, and everything in (or being) a system namespace.
    pub fn is_system(&self) -> bool {
        self.group == OWN_GROUP
            || (self.group.is_empty() && self.resource == "nodes")
            || self
                .namespace
                .is_some_and(|ns| SYSTEM_NAMESPACES.contains(&ns))
            || (self.group.is_empty()
                && self.resource == "namespaces"
                && SYSTEM_NAMESPACES.contains(&self.name))
    }
}

fn listed(values: &[String], value: &str) -> bool {
    values.iter().any(|v| v == "*" || v == value)
}

/// `pods` matches the resource itself, `pods/status` one subresource, `pods/*` every
/// subresource of pods, `*/status` that subresource of everything, `*` every resource and
/// `*/*` everything.
fn resource_listed(values: &[String], resource: &str, subresource: Option<&str>) -> bool {
    values.iter().any(|entry| {
        let (r, s) = entry.split_once('/').unwrap_or((entry, ""));
        let resource_ok = r == "*" || r == resource;
        let sub_ok = match subresource {
            None => s.is_empty(),
            Some(sub) => s == "*" || s == sub,
        };
        resource_ok && sub_ok
    })
}

impl Rule {
    pub fn matches(&self, target: &Target<'_>) -> bool {
        let scope = match self.scope.as_deref() {
            None | Some("*") => true,
            Some("Cluster") => !target.namespaced,
            Some("Namespaced") => target.namespaced,
            Some(_) => false,
        };
        scope
            && listed(&self.operations, target.operation)
            && listed(&self.api_groups, target.group)
            && listed(&self.api_versions, target.version)
            && resource_listed(&self.resources, target.resource, target.subresource)
    }
}

/// A policy's spec made ready to match: its selectors parsed, its settings serialised.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub name: String,
    pub spec: PolicySpec,
    pub namespace_selector: Option<LabelSelector>,
    pub object_selector: Option<LabelSelector>,
    /// The settings as the plugin gets them (`{}` when unset).
    pub settings: String,
    pub timeout: Duration,
}

/// The longest timeout a policy may ask for.
pub const MAX_TIMEOUT_SECONDS: u64 = 30;

fn selector(value: &Option<Value>, field: &str) -> Result<Option<LabelSelector>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => LabelSelector::from_json(value)
            .map(|s| (!s.is_empty()).then_some(s))
            .map_err(|e| format!("spec.{field}: {e}")),
    }
}

impl Compiled {
    /// Reads an AdmissionPolicy object, saying which field is wrong when it cannot.
    pub fn of(object: &Value) -> Result<Self, String> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let spec: PolicySpec =
            serde_json::from_value(object["spec"].clone()).map_err(|e| format!("spec: {e}"))?;
        if spec.timeout_seconds == 0 || spec.timeout_seconds > MAX_TIMEOUT_SECONDS {
            return Err(format!(
                "spec.timeoutSeconds: must be between 1 and {MAX_TIMEOUT_SECONDS}"
            ));
        }
        if spec.rules.is_empty() {
            return Err("spec.rules: at least one rule is required".into());
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            for (field, values) in [
                ("operations", &rule.operations),
                ("apiGroups", &rule.api_groups),
                ("apiVersions", &rule.api_versions),
                ("resources", &rule.resources),
            ] {
                if values.is_empty() {
                    return Err(format!("spec.rules[{i}].{field}: must not be empty"));
                }
            }
        }
        let namespace_selector = selector(&spec.namespace_selector, "namespaceSelector")?;
        let object_selector = selector(&spec.object_selector, "objectSelector")?;
        let settings = match &spec.settings {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(value) => value.to_string(),
        };
        Ok(Self {
            name,
            timeout: Duration::from_secs(spec.timeout_seconds),
            namespace_selector,
            object_selector,
            settings,
            spec,
        })
    }

    /// Whether the policy's rules cover the request (selectors are checked apart, as they need
    /// the objects).
    pub fn covers(&self, target: &Target<'_>) -> bool {
        (self.spec.include_system || !target.is_system())
            && self.spec.rules.iter().any(|rule| rule.matches(target))
    }

    /// Whether the object selector holds for the object or, on updates and deletes, the old
    /// object (as Kubernetes' webhooks match).
    pub fn selects_object(&self, object: Option<&Value>, old: Option<&Value>) -> bool {
        let Some(selector) = &self.object_selector else {
            return true;
        };
        [object, old]
            .into_iter()
            .flatten()
            .any(|o| selector.matches(&labels(o)))
    }
}

pub use flotilla_controllers::labels;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target<'a>(operation: &'a str, resource: &'a str, sub: Option<&'a str>) -> Target<'a> {
        Target {
            operation,
            group: "",
            version: "v1",
            resource,
            subresource: sub,
            namespaced: true,
            namespace: Some("default"),
            name: "x",
        }
    }

    fn policy(spec: Value) -> Compiled {
        Compiled::of(&json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn rules_match_operations_groups_versions_and_subresources() {
        let p = policy(json!({
            "plugin": "x", "mode": "Validating",
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods", "deployments/scale", "*/status"]}],
        }));
        assert!(p.covers(&target("CREATE", "pods", None)));
        assert!(!p.covers(&target("UPDATE", "pods", None)));
        assert!(!p.covers(&target("CREATE", "pods", Some("binding"))));
        assert!(p.covers(&target("CREATE", "services", Some("status"))));
        assert!(p.covers(&target("CREATE", "deployments", Some("scale"))));
        assert!(!p.covers(&target("CREATE", "deployments", None)));
        let apps = Target {
            group: "apps",
            ..target("CREATE", "pods", None)
        };
        assert!(!p.covers(&apps));
    }

    #[test]
    fn wildcards_and_scope() {
        let p = policy(json!({
            "plugin": "x", "mode": "Mutating",
            "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                       "resources": ["*"], "scope": "Cluster"}],
        }));
        assert!(!p.covers(&target("DELETE", "pods", None)));
        let cluster = Target {
            namespaced: false,
            namespace: None,
            ..target("DELETE", "persistentvolumes", None)
        };
        assert!(p.covers(&cluster));
        assert!(!p.covers(&Target {
            subresource: Some("status"),
            ..cluster
        }));
    }

    #[test]
    fn system_namespaces_and_own_objects_are_exempt_unless_opted_in() {
        let spec = json!({
            "plugin": "x", "mode": "Validating",
            "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}],
        });
        let user = policy(spec.clone());
        let mut opted = spec;
        opted["includeSystem"] = json!(true);
        let opted = policy(opted);
        let system = Target {
            namespace: Some("kube-system"),
            ..target("CREATE", "pods", None)
        };
        let own = Target {
            group: OWN_GROUP,
            namespaced: false,
            namespace: None,
            ..target("CREATE", "wasmplugins", None)
        };
        let namespace = Target {
            namespaced: false,
            namespace: None,
            name: "kube-system",
            ..target("DELETE", "namespaces", None)
        };
        for t in [system, own, namespace] {
            assert!(!user.covers(&t), "{t:?}");
            assert!(opted.covers(&t), "{t:?}");
        }
        assert!(user.covers(&target("CREATE", "pods", None)));
    }

    #[test]
    fn the_object_selector_sees_the_object_or_the_old_one() {
        let p = policy(json!({
            "plugin": "x", "mode": "Validating",
            "rules": [{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}],
            "objectSelector": {"matchLabels": {"team": "a"}},
        }));
        let a = json!({"metadata": {"labels": {"team": "a"}}});
        let b = json!({"metadata": {"labels": {"team": "b"}}});
        assert!(p.selects_object(Some(&a), None));
        assert!(!p.selects_object(Some(&b), None));
        assert!(p.selects_object(Some(&b), Some(&a)));
        assert!(p.selects_object(None, Some(&a)));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let bad = |spec: Value| {
            Compiled::of(&json!({"metadata": {"name": "p"}, "spec": spec})).unwrap_err()
        };
        let rule = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]});
        assert!(
            bad(
                json!({"plugin": "x", "mode": "Validating", "rules": [rule], "timeoutSeconds": 31})
            )
            .contains("timeoutSeconds")
        );
        assert!(bad(json!({"plugin": "x", "mode": "Validating", "rules": []})).contains("rules"));
        assert!(
            bad(json!({"plugin": "x", "mode": "Validating", "rules": [rule],
                        "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}))
            .contains("namespaceSelector")
        );
    }
}
