//! Deletion as Kubernetes does it: `DeleteOptions` (grace period, preconditions, propagation
//! policy), graceful deletion of pods that run on a node, finalizers that hold an object until
//! they are removed, and namespaces that terminate: everything in them is deleted, then they
//! are.
//!
//! An object whose deletion must wait gets `metadata.deletionTimestamp` (and
//! `deletionGracePeriodSeconds`) and stays; it goes when its last finalizer is removed with no
//! grace period left, or when it is deleted again with a zero grace period (as the node agent
//! does once a pod's containers have stopped).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flotilla_api::{Status, StatusReason};
use flotilla_store::{RangeRequest, StoreExt, TxnOutcome};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::admission::{self, AdmissionRequest, Operation};
use crate::resources::ResourceDef;
use crate::{ApiError, ApiResult, ApiServer, Query, Target, decode, encode, json_body};

/// The finalizer a namespace carries until everything in it is gone.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// Finalizers the garbage collector acts on, added by the propagation policy.
const ORPHAN_FINALIZER: &str = "orphan";
const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// How many times a deletion is retried when another write changes the object meanwhile.
const ATTEMPTS: usize = 5;

/// `metav1.DeleteOptions`, from the body and the query (the query wins, as in Kubernetes).
#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_version: Option<String>,
}

impl DeleteOptions {
    pub fn parse(query: &Query, body: &[u8]) -> Result<Self, ApiError> {
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            crate::body::parse(body)?
        };
        let mut options = Self {
            grace_period: body["gracePeriodSeconds"].as_i64(),
            propagation: body["propagationPolicy"].as_str().map(str::to_owned),
            precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
            precondition_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
        };
        if body["orphanDependents"] == json!(true) {
            options.propagation = Some("Orphan".into());
        }
        if let Some(grace) = query.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
            options.grace_period = Some(grace.parse().map_err(|_| {
                crate::bad_request(format!("invalid gracePeriodSeconds {grace:?}"))
            })?);
        }
        if let Some(policy) = query.get("propagationPolicy").filter(|p| !p.is_empty()) {
            options.propagation = Some(policy.to_owned());
        }
        if options.grace_period.is_some_and(|g| g < 0) {
            return Err(crate::bad_request(
                "gracePeriodSeconds must be zero or more",
            ));
        }
        match options.propagation.as_deref() {
            None | Some("Orphan" | "Background" | "Foreground") => Ok(options),
            Some(other) => Err(ApiError::from(Status::invalid(
                "",
                "DeleteOptions",
                "",
                vec![flotilla_api::StatusCause::not_supported(
                    "propagationPolicy",
                    &json!(other),
                    &["Foreground", "Background", "Orphan"],
                )],
            ))),
        }
    }
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The grace period a deletion of `object` gets: pods on a node stop gracefully (unless they
/// have finished); everything else goes at once.
fn grace_period(resource: &ResourceDef, object: &Value, requested: Option<i64>) -> i64 {
    if (resource.group, resource.plural) != ("", "pods") {
        return 0;
    }
    let scheduled = object["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        object["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !scheduled || finished {
        return 0;
    }
    requested
        .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// `DELETE` of one object.
pub(crate) async fn delete(
    server: &ApiServer,
    target: &Target<'_>,
    query: &Query,
    body: Bytes,
) -> ApiResult {
    let options = DeleteOptions::parse(query, &body)?;
    let resource = target.resource;
    let name = target.name.as_deref().unwrap_or_default();
    let key = resource.key(target.namespace.as_deref(), name);
    let object = delete_key(server, resource, &key, &options).await?;
    Ok(json_body(&object))
}

/// Deletes the object at `key`, or marks it for deletion when it must wait; returns the object
/// as it was deleted or as it now waits.
pub(crate) async fn delete_key(
    server: &ApiServer,
    resource: &ResourceDef,
    key: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let conflict = || ApiError::from(Status::conflict(resource.group, resource.plural, name));
    for _ in 0..ATTEMPTS {
        let (current, _) = server.store.get(key, None).await?;
        let current = current.ok_or_else(|| {
            ApiError::from(Status::not_found(resource.group, resource.plural, name))
        })?;
        let mut object = decode(&current)?;
        check_preconditions(resource, name, &object, options)?;
        let request = AdmissionRequest {
            operation: Operation::Delete,
            resource,
            subresource: None,
            namespace: object["metadata"]["namespace"].as_str(),
            name,
            old_object: Some(&object),
            user: admission::user(),
            dry_run: admission::dry_run(),
            object_kind: None,
        };
        server.admission.validate(&request, None).await?;
        if request.dry_run {
            return Ok(object.clone());
        }
        let mut held = finalizers(&object);
        match options.propagation.as_deref() {
            Some("Orphan") if !held.iter().any(|f| f == ORPHAN_FINALIZER) => {
                held.push(ORPHAN_FINALIZER.into())
            }
            Some("Foreground") if !held.iter().any(|f| f == FOREGROUND_FINALIZER) => {
                held.push(FOREGROUND_FINALIZER.into())
            }
            _ => {}
        }
        let grace = grace_period(resource, &object, options.grace_period);
        // A namespace always terminates first: what is in it goes before it does.
        let namespace = (resource.group, resource.plural) == ("", "namespaces");
        if held.is_empty() && grace == 0 && !namespace {
            match server.store.delete(key, Some(current.mod_revision)).await? {
                TxnOutcome::Applied {
                    prev: Some(prev), ..
                } => return decode(&prev),
                _ => continue,
            }
        }
        let metadata = &mut object["metadata"];
        let pending_grace = metadata["deletionGracePeriodSeconds"].as_i64();
        match pending_grace {
            // Already being deleted, no sooner than asked: nothing to change.
            Some(pending) if pending <= grace && metadata["finalizers"] == json!(held) => {
                return Ok(object);
            }
            _ => {}
        }
        let deadline = SystemTime::now() + Duration::from_secs(grace.unsigned_abs());
        metadata["deletionTimestamp"] =
            json!(humantime::format_rfc3339_seconds(deadline).to_string());
        metadata["deletionGracePeriodSeconds"] = json!(grace);
        metadata["finalizers"] = json!(held);
        if namespace {
            object["status"]["phase"] = json!("Terminating");
            if object["spec"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                object["spec"]["finalizers"] = json!([NAMESPACE_FINALIZER]);
            }
        }
        match server
            .store
            .update(key, encode(&object), current.mod_revision, None)
            .await?
        {
            TxnOutcome::Applied { kv: Some(kv), .. } => {
                return decode(&kv);
            }
            _ => continue,
        }
    }
    Err(conflict())
}

fn check_preconditions(
    resource: &ResourceDef,
    name: &str,
    object: &Value,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    let failed = |what: &str, expected: &str, actual: &Value| {
        let mut status = Status::conflict(resource.group, resource.plural, name);
        status.message = format!(
            "Precondition failed: {what} in precondition: {expected}, {what} in object meta: {}",
            actual.as_str().unwrap_or_default()
        );
        ApiError::from(status)
    };
    let metadata = &object["metadata"];
    if let Some(uid) = &options.precondition_uid
        && metadata["uid"].as_str() != Some(uid)
    {
        return Err(failed("UID", uid, &metadata["uid"]));
    }
    if let Some(version) = &options.precondition_version
        && metadata["resourceVersion"].as_str() != Some(version)
    {
        return Err(failed(
            "ResourceVersion",
            version,
            &metadata["resourceVersion"],
        ));
    }
    Ok(())
}

/// What an update does to an object that is being deleted: no new finalizers, and the
/// deletion metadata stays as the server set it. Returns whether the update completes the
/// deletion (the last finalizer went and no grace period is left).
pub(crate) fn guard_update(existing: &Value, object: &mut Value) -> Result<bool, ApiError> {
    let old = &existing["metadata"];
    if old["deletionTimestamp"].is_null() {
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            if let Some(map) = object["metadata"].as_object_mut() {
                map.remove(field);
            }
        }
        return Ok(false);
    }
    let before = finalizers(existing);
    let added: Vec<String> = finalizers(object)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !added.is_empty() {
        return Err(ApiError::from(Status::invalid(
            "",
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default(),
            vec![flotilla_api::StatusCause::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            )],
        )));
    }
    object["metadata"]["deletionTimestamp"] = old["deletionTimestamp"].clone();
    object["metadata"]["deletionGracePeriodSeconds"] = old["deletionGracePeriodSeconds"].clone();
    Ok(finalizers(object).is_empty()
        && old["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0)
}

/// Deletes every object of `resources` (in `namespace`, or everywhere) and waits until they are
/// gone: pods may stop gracefully and finalizers may hold objects for a while.
pub(crate) async fn delete_everything(
    server: &ApiServer,
    resources: &[ResourceDef],
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    // Versions of one custom resource share their storage: visit each prefix once.
    let mut seen = std::collections::HashSet::new();
    let resources: Vec<&ResourceDef> = resources
        .iter()
        .filter(|r| seen.insert(r.prefix(namespace)))
        .collect();
    loop {
        // Watch from now, so that whatever changes after this pass wakes the next one.
        let from = server.store.current_revision().await? + 1;
        let mut remaining = 0;
        for resource in &resources {
            let prefix = resource.prefix(namespace);
            let page = server.store.range(RangeRequest::prefix(&prefix)).await?;
            for kv in &page.kvs {
                remaining += 1;
                let deleting = decode(kv)?["metadata"]["deletionTimestamp"].is_string();
                if !deleting {
                    match delete_key(server, resource, &kv.key, &DeleteOptions::default()).await {
                        Ok(_) => {}
                        Err(e) if e.0.reason == StatusReason::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if remaining == 0 {
            return Ok(());
        }
        let mut changes = server.store.watch("/registry/", from).await?;
        let _ = changes.next().await;
    }
}
