//! The controller runtime: Flotilla's kube-controller-manager, whose controllers are all
//! WebAssembly components on the `controller` world.
//!
//! [`informer`] keeps one list + watch per kind and one shared cache that every controller
//! reads; [`queue`] is a controller's work queue (de-duplicated, one reconcile per key at a
//! time, exponential back-off on failure, delayed requeues); [`api`] is what a controller's
//! `cache` and `api` imports reach, and makes a controller read its own writes; [`manager`]
//! elects a leader through a Lease and, while leading, runs every WasmPlugin of kind
//! `controller`, hot-swapping them when their WasmPlugin changes; [`defaults`] installs the
//! built-in controllers' WasmPlugins.
//!
//! It is an API client: it must not reach the store, and holds no controller logic of its own
//! — what a ReplicaSet or a Deployment means lives in the plugins.

pub mod api;
pub mod defaults;
pub mod events;
pub mod informer;
pub mod manager;
pub mod queue;

use std::collections::BTreeMap;

use flotilla_api::selector::LabelSelector;
use serde_json::Value;

pub use manager::{Key, ManagerOptions, run};

/// An object's labels.
pub fn labels(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The owner reference marked `controller: true`, if any.
pub(crate) fn controller_of(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == Value::Bool(true))
}

/// The label selector at a dotted `path` of an object: the structured form (`matchLabels`,
/// `matchExpressions`) or a plain map of labels (a Service's). None when there is none, which
/// selects nothing.
pub(crate) fn selector_at(object: &Value, path: &str) -> Option<LabelSelector> {
    let mut value = object;
    for part in path.split('.') {
        value = value.get(part)?;
    }
    let map = value.as_object()?;
    if map.contains_key("matchLabels") || map.contains_key("matchExpressions") {
        return LabelSelector::from_json(value).ok();
    }
    let labels: Option<Vec<String>> = map
        .iter()
        .map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect();
    labels?.join(",").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_are_read_in_both_forms_and_a_missing_one_selects_nothing() {
        let rs = json!({"spec": {"selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}}});
        let selector = selector_at(&rs, "spec.selector").unwrap();
        let pod = |set: Value| labels(&json!({"metadata": {"labels": set}}));
        assert!(selector.matches(&pod(json!({"app": "web", "tier": "a"}))));
        assert!(!selector.matches(&pod(json!({"app": "web", "tier": "c"}))));
        let service = json!({"spec": {"selector": {"app": "web"}}});
        let selector = selector_at(&service, "spec.selector").unwrap();
        assert!(selector.matches(&pod(json!({"app": "web", "x": "y"}))));
        assert!(!selector.matches(&pod(json!({"app": "db"}))));
        assert!(selector_at(&json!({"spec": {}}), "spec.selector").is_none());
    }

    #[test]
    fn the_controller_reference_is_the_one_marked_so() {
        let pod = json!({"metadata": {"ownerReferences": [
            {"kind": "Thing", "name": "a"},
            {"kind": "ReplicaSet", "name": "web-1", "controller": true}]}});
        assert_eq!(controller_of(&pod).unwrap()["name"], "web-1");
        assert!(controller_of(&json!({"metadata": {}})).is_none());
    }
}
