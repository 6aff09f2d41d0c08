//! The namespace controller's calls: discovery, collection deletes, the status write and the
//! finalize.

use std::time::Duration;

use controller_common::{failed, now_rfc3339, parse};
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

use crate::{FINALIZER, Tally, conditions, resource_name, terminating};

/// How soon a namespace with content left is looked at again.
const AGAIN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct NamespaceController;

/// Deletes every namespaced collection in `namespace` and counts what is left.
fn empty(namespace: &str) -> Tally {
    let mut tally = Tally::default();
    let resources = match api::resources() {
        Ok(resources) => resources,
        Err(status) => {
            tally.discovery_failure = Some(status.message);
            return tally;
        }
    };
    for resource in resources.iter().filter(|r| {
        r.namespaced
            && ["list", "deletecollection"]
                .iter()
                .all(|verb| r.verbs.iter().any(|v| v == verb))
    }) {
        let name = resource_name(&resource.api_version, &resource.resource);
        match api::delete_collection(&resource.api_version, &resource.kind, Some(namespace), "") {
            Ok(left) => tally.left(name, left.count, &left.finalizers),
            // Gone meanwhile (a custom resource whose definition was deleted).
            Err(status) if status.code == 404 => {}
            Err(status) => tally.failures.push(format!("{name}: {}", status.message)),
        }
    }
    tally
}

/// The namespace's status with the tally's conditions; transition times move only when a
/// condition's status does.
fn with_conditions(namespace: &Value, tally: &Tally) -> Value {
    let now = now_rfc3339();
    let old = namespace["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new = conditions(tally);
    let mut written: Vec<Value> = old
        .iter()
        .filter(|c| !new.iter().any(|(kind, ..)| c["type"] == *kind))
        .cloned()
        .collect();
    for (kind, status, reason, message) in new {
        let since = old
            .iter()
            .find(|c| c["type"] == kind && c["status"] == status)
            .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
        written.push(json!({"type": kind, "status": status, "reason": reason,
            "message": message, "lastTransitionTime": since}));
    }
    let mut updated = namespace.clone();
    updated["status"]["conditions"] = json!(written);
    updated
}

/// The conditions without their transition times, to tell whether a write changes anything.
fn condition_text(namespace: &Value) -> Vec<Value> {
    namespace["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!([c["type"], c["status"], c["reason"], c["message"]]))
        .collect()
}

impl Controller for NamespaceController {
    const NAME: &'static str = "namespace-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("v1", "Namespace")
            .resync_every(Duration::from_secs(300))
            .workers(5)
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(namespace) = cache::get("v1", "Namespace", None, &key.name)
            .map_err(|s| failed("reading the namespace", s))?
        else {
            return Ok(None);
        };
        let namespace = parse(&namespace)?;
        if !terminating(&namespace) {
            return Ok(None);
        }
        let tally = empty(&key.name);
        let mut current = namespace.clone();
        let updated = with_conditions(&namespace, &tally);
        if condition_text(&updated) != condition_text(&namespace) {
            match api::update_status(&updated.to_string()) {
                Ok(written) => current = parse(&written)?,
                Err(status) if status.code == 404 => return Ok(None),
                Err(status) => return Err(failed("writing the namespace's conditions", status)),
            }
        }
        if !tally.empty() {
            return Ok(Some(AGAIN));
        }
        let mut finalized = current;
        let kept: Vec<Value> = finalized["spec"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != FINALIZER)
            .collect();
        finalized["spec"]["finalizers"] = json!(kept);
        match api::update_subresource(&finalized.to_string(), "finalize") {
            Ok(_) => Ok(None),
            Err(status) if status.code == 404 => Ok(None),
            Err(status) => Err(failed("finalizing the namespace", status)),
        }
    }
}

flotilla_sdk::export_controller!(NamespaceController);
