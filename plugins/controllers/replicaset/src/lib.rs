//! The ReplicaSet controller, as Kubernetes' has it: a ReplicaSet keeps `spec.replicas` active
//! pods of its template.
//!
//! - **Claims**: one cache query reads the pods it controls and the orphans its selector
//!   matches, and only the fields it needs of them. Pods it controls (a controller owner
//!   reference with its uid) whose labels no longer match its selector are released; pods
//!   matching its selector that no controller owns are adopted. Both are JSON patches that test the reference they change, so a race
//!   with another controller fails instead of stealing the pod.
//! - **Creation** in slow-start batches (1, 2, 4, … pods), each batch created concurrently
//!   by the host, at most 500 pods per reconcile; a failed batch stops the rest, records
//!   `FailedCreate` and the `ReplicaFailure` condition.
//! - **Deletion** preference: unscheduled before scheduled, Pending before Unknown before
//!   Running, not ready before ready, ready for less time before longer, more restarts before
//!   fewer, newer before older.
//! - **Status**: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (ready for
//!   `minReadySeconds`), observedGeneration, written with the resourceVersion it was computed
//!   from; a ReplicaSet with pods about to become available is reconciled again when they do.

use std::time::Duration;

use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

/// What the controller reads of its pods: enough to count, rank and judge them, so a
/// ReplicaSet of thousands of pods reads a fraction of their bytes.
const POD_FIELDS: &[&str] = &[
    "metadata.creationTimestamp",
    "spec.nodeName",
    "status.phase",
    "status.conditions",
    "status.containerStatuses",
];

/// Most pods created or deleted in one reconcile (Kubernetes' burstReplicas).
const BURST: usize = 500;

#[derive(Debug)]
pub struct ReplicaSetController;

fn event(rs: &Value, event_type: &str, reason: &str, message: String) {
    // An event that cannot be recorded is not worth failing the reconcile for.
    let _ = api::emit_event(&Event {
        regarding: object_ref(rs),
        event_type: event_type.into(),
        reason: reason.into(),
        message,
    });
}

fn pod_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

impl ReplicaSetController {
    /// Creates `count` pods of the template in slow-start batches; how many were created, and
    /// the first failure.
    fn create(&self, rs: &Value, count: usize) -> (usize, Option<String>) {
        let template = &rs["spec"]["template"];
        let namespace = rs["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = name_of(rs);
        let mut metadata = json!({
            "generateName": format!("{name}-"),
            "namespace": namespace,
            "ownerReferences": [owner_reference(rs)],
        });
        for field in ["labels", "annotations"] {
            if let Some(value) = template["metadata"].get(field) {
                metadata[field] = value.clone();
            }
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
            .to_string();
        let mut created = 0;
        let mut batch = 1;
        while created < count {
            let size = batch.min(count - created);
            let mut failure = None;
            for result in api::create_batch(&vec![pod.clone(); size]) {
                match result {
                    Ok(made) => {
                        created += 1;
                        let made = parse(&made).unwrap_or_default();
                        event(
                            rs,
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created pod: {}", name_of(&made)),
                        );
                    }
                    Err(status) => {
                        let message = format!("Error creating: {}", status.message);
                        event(rs, "Warning", "FailedCreate", message.clone());
                        failure.get_or_insert(message);
                    }
                }
            }
            // A batch with a failure stops the rest: the next reconcile tries again.
            if failure.is_some() {
                return (created, failure);
            }
            batch *= 2;
        }
        (created, None)
    }

    fn delete(&self, rs: &Value, mut pods: Vec<Value>, count: usize) -> Result<(), String> {
        pods.sort_by_key(deletion_rank);
        for pod in pods.iter().take(count) {
            let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            let options = DeleteOptions {
                uid: pod["metadata"]["uid"].as_str().map(str::to_owned),
                ..DeleteOptions::default()
            };
            match api::delete(&pod_ref(namespace, name_of(pod)), &options) {
                Ok(()) => event(
                    rs,
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", name_of(pod)),
                ),
                Err(s) if s.code == 404 => {}
                Err(s) => {
                    event(
                        rs,
                        "Warning",
                        "FailedDelete",
                        format!("Error deleting: {}", s.message),
                    );
                    return Err(failed("deleting a pod", s));
                }
            }
        }
        Ok(())
    }

    /// The status the pods give, and when the next pod becomes available (seconds from now).
    fn status(rs: &Value, pods: &[Value], failure: Option<&str>) -> (Value, Option<i64>) {
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = now();
        let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
        let ready: Vec<&Value> = pods.iter().filter(|p| is_ready(p)).collect();
        let available = ready
            .iter()
            .filter(|p| is_available(p, min_ready, now))
            .count();
        let next = ready
            .iter()
            .filter_map(|p| ready_since(p))
            .map(|since| since + min_ready - now)
            .filter(|wait| *wait > 0)
            .min();
        let mut conditions: Vec<Value> = rs["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "ReplicaFailure")
            .collect();
        if let Some(message) = failure {
            let since = rs["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "ReplicaFailure")
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(now_rfc3339()));
            conditions.push(
                json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": message, "lastTransitionTime": since}),
            );
        }
        let mut status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": pods.iter().filter(|p| has_labels(p, template_labels)).count(),
            "readyReplicas": ready.len(),
            "availableReplicas": available,
            "observedGeneration": rs["metadata"]["generation"],
        });
        if !conditions.is_empty() {
            status["conditions"] = json!(conditions);
        }
        (status, next)
    }
}

impl Controller for ReplicaSetController {
    const NAME: &'static str = "replicaset-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("apps/v1", "ReplicaSet")
            .owns("v1", "Pod")
            .watch(Watch::new(
                "v1",
                "Pod",
                KeyMapping::SelectedBy("spec.selector".into()),
            ))
            .workers(5)
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(rs) = cache::get("apps/v1", "ReplicaSet", key.namespace.as_deref(), &key.name)
            .map_err(|s| failed("reading the replica set", s))?
        else {
            // Gone: the garbage collector removes the pods it owned.
            return Ok(None);
        };
        let rs = parse(&rs)?;
        let selector =
            selector_string(&rs["spec"]["selector"]).map_err(|e| format!("spec.selector: {e}"))?;
        let claim = claim::Claim {
            owner: &rs,
            api_version: "v1",
            kind: "Pod",
            selector: &selector,
        };
        let pods = claim.run_with_fields(POD_FIELDS, |_| true, |_| Ok(()))?;
        let active: Vec<Value> = pods.into_iter().filter(is_active).collect();
        let wanted = rs["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut failure = None;
        if rs["metadata"].get("deletionTimestamp").is_none() {
            if active.len() < wanted {
                let (_, failed) = self.create(&rs, (wanted - active.len()).min(BURST));
                failure = failed;
            } else if active.len() > wanted {
                self.delete(&rs, active.clone(), (active.len() - wanted).min(BURST))?;
            }
        }
        let (status, next) = Self::status(&rs, &active, failure.as_deref());
        let unchanged = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
            "conditions",
        ]
        .iter()
        .all(|field| {
            rs["status"].get(*field).unwrap_or(&Value::Null)
                == status.get(*field).unwrap_or(&Value::Null)
                || (rs["status"].get(*field).is_none() && status[*field] == json!(0))
        });
        if !unchanged {
            let mut updated = rs.clone();
            updated["status"] = status;
            api::update_status(&updated.to_string())
                .map_err(|s| failed("writing the status", s))?;
        }
        if let Some(message) = failure {
            return Err(message);
        }
        Ok(next.map(|seconds| Duration::from_secs(seconds as u64)))
    }
}

flotilla_sdk::export_controller!(ReplicaSetController);
