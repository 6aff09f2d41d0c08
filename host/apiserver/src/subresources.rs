//! Subresources beyond `status`: `scale` (autoscaling/v1 Scale) on deployments, replica sets and
//! stateful sets; `binding`, `eviction` and `log` on pods.

use flotilla_api::{LabelSelector, Status, StatusCause, StatusReason};
use flotilla_store::{StoreExt, TxnOutcome};
use serde_json::{Value, json};

use crate::admission;
use crate::delete::{self, DeleteOptions};
use crate::resources::{ResourceDef, ScalePaths};
use crate::{
    ApiError, ApiResult, ApiServer, Query, Target, View, current_object, decode, encode, json_body,
    json_response, replace,
};

/// The Scale of a scalable object: its desired and current replicas and its selector.
/// Where a kind keeps what its Scale shows: Kubernetes' fields for the built-in kinds, the
/// definition's paths for custom resources.
fn scale_paths(resource: &ResourceDef) -> ScalePaths {
    resource
        .custom
        .as_ref()
        .and_then(|c| c.scale.clone())
        .unwrap_or_else(|| ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        })
}

/// Sets the value at a simple path (`.spec.replicas`), making the objects on the way.
fn set_path(object: &mut Value, path: &str, value: Value) {
    let mut at = object;
    let steps: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    for (i, step) in steps.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        if i + 1 == steps.len() {
            at[*step] = value;
            return;
        }
        at = &mut at[*step];
    }
}

pub(crate) fn scale_of(resource: &ResourceDef, object: &Value) -> Result<Value, ApiError> {
    let metadata = &object["metadata"];
    let paths = scale_paths(resource);
    let replicas = |path: &str| crate::crd::json_path(object, path).and_then(Value::as_i64);
    let selector = match &paths.label_selector {
        Some(path) => crate::crd::json_path(object, path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        None if resource.custom.is_some() => String::new(),
        None => LabelSelector::from_json(&object["spec"]["selector"])
            .map(|s| s.to_string())
            .unwrap_or_default(),
    };
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": replicas(&paths.spec_replicas).unwrap_or(1)},
        "status": {
            "replicas": replicas(&paths.status_replicas).unwrap_or(0),
            "selector": selector,
        },
    }))
}

/// `object` with the replicas a changed Scale asks for; the Scale's resourceVersion, if any,
/// must still be the object's.
pub(crate) fn apply_scale(
    resource: &ResourceDef,
    mut object: Value,
    scale: &Value,
) -> Result<Value, ApiError> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let replicas = &scale["spec"]["replicas"];
    let invalid = |detail: &str| {
        ApiError::from(Status::invalid(
            "autoscaling",
            "Scale",
            &name,
            vec![StatusCause::invalid("spec.replicas", replicas, detail)],
        ))
    };
    let count = match replicas {
        Value::Null => 0,
        value => value
            .as_i64()
            .ok_or_else(|| invalid("must be an integer"))?,
    };
    if count < 0 {
        return Err(invalid("must be greater than or equal to 0"));
    }
    if let Some(version) = scale["metadata"]["resourceVersion"].as_str()
        && !version.is_empty()
        && object["metadata"]["resourceVersion"].as_str() != Some(version)
    {
        return Err(ApiError::from(Status::conflict(
            resource.group,
            resource.plural,
            &name,
        )));
    }
    set_path(
        &mut object,
        &scale_paths(resource).spec_replicas,
        json!(count),
    );
    Ok(object)
}

pub(crate) async fn get_scale(server: &ApiServer, target: &Target<'_>) -> ApiResult {
    let object = decode(&current_object(server, target).await?)?;
    Ok(json_body(&scale_of(target.resource, &object)?))
}

/// `PUT` of a subresource: the object with the part the subresource covers replaced.
pub(crate) async fn put(
    server: &ApiServer,
    target: &Target<'_>,
    view: View,
    sent: Value,
) -> ApiResult {
    let current = current_object(server, target).await?;
    let stored = decode(&current)?;
    let object = view.apply(target.resource, stored, sent)?;
    let object = replace(server, target, &current, object).await?;
    Ok(json_body(&view.of(target.resource, &object)?))
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

/// Admission of a create on a pod subresource that takes an object of its own (a Binding, an
/// Eviction), as Kubernetes admits `CREATE pods/binding`: mutating then validating policies,
/// the object being the one sent.
async fn admit_create(
    server: &ApiServer,
    target: &Target<'_>,
    subresource: &str,
    kind: (&str, &str, &str),
    object: &mut Value,
) -> Result<(), ApiError> {
    let request = admission::AdmissionRequest {
        operation: admission::Operation::Create,
        resource: target.resource,
        subresource: Some(subresource),
        namespace: target.namespace.as_deref(),
        name: target.name.as_deref().unwrap_or_default(),
        old_object: None,
        user: admission::user(),
        dry_run: admission::dry_run(),
        object_kind: Some(kind),
    };
    server.admission.mutate(&request, object).await?;
    server.admission.validate(&request, Some(object)).await
}

/// `POST pods/<name>/binding`: assigns the pod to a node, once.
pub(crate) async fn bind(server: &ApiServer, target: &Target<'_>, binding: Value) -> ApiResult {
    let mut binding = binding;
    admit_create(
        server,
        target,
        "binding",
        ("", "v1", "Binding"),
        &mut binding,
    )
    .await?;
    let name = target.name.as_deref().unwrap_or_default();
    let node = binding["target"]["name"].as_str().unwrap_or_default();
    let invalid =
        |cause: StatusCause| ApiError::from(Status::invalid("", "Binding", name, vec![cause]));
    if node.is_empty() {
        return Err(invalid(StatusCause::required("target.name")));
    }
    if !matches!(binding["target"]["kind"].as_str(), None | Some("" | "Node")) {
        return Err(invalid(StatusCause::not_supported(
            "target.kind",
            &binding["target"]["kind"],
            &["Node"],
        )));
    }
    let refused = |message: String| ApiError::from(Status::new(StatusReason::Conflict, message));
    for _ in 0..5 {
        let current = current_object(server, target).await?;
        let mut pod = decode(&current)?;
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(refused(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(assigned) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(refused(format!(
                "pod {name} is already assigned to node {assigned:?}"
            )));
        }
        pod["spec"]["nodeName"] = json!(node);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut conditions: Vec<Value> = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
        pod["status"]["conditions"] = json!(conditions);
        if let TxnOutcome::Applied { .. } = server
            .store
            .update(&current.key, encode(&pod), current.mod_revision, None)
            .await?
        {
            return Ok(json_response(
                axum::http::StatusCode::CREATED,
                &success(201),
            ));
        }
    }
    Err(ApiError::from(Status::conflict("", "pods", name)))
}

/// `POST pods/<name>/eviction`: deletes the pod with the eviction's delete options. No
/// PodDisruptionBudget is served, so nothing refuses an eviction.
pub(crate) async fn evict(server: &ApiServer, target: &Target<'_>, eviction: Value) -> ApiResult {
    let mut eviction = eviction;
    admit_create(
        server,
        target,
        "eviction",
        ("policy", "v1", "Eviction"),
        &mut eviction,
    )
    .await?;
    let options = &eviction["deleteOptions"];
    let options = DeleteOptions {
        grace_period: options["gracePeriodSeconds"].as_i64(),
        propagation: options["propagationPolicy"].as_str().map(str::to_owned),
        precondition_uid: options["preconditions"]["uid"].as_str().map(str::to_owned),
        precondition_version: options["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_owned),
    };
    let name = target.name.as_deref().unwrap_or_default();
    let key = target.resource.key(target.namespace.as_deref(), name);
    delete::delete_key(server, target.resource, &key, &options).await?;
    Ok(json_response(
        axum::http::StatusCode::CREATED,
        &success(201),
    ))
}

/// `GET pods/<name>/log`: logs live on the node agent that runs the pod.
pub(crate) async fn log(server: &ApiServer, target: &Target<'_>, query: &Query) -> ApiResult {
    let pod = decode(&current_object(server, target).await?)?;
    let name = target.name.as_deref().unwrap_or_default();
    let bad = |message: String| ApiError::from(Status::bad_request(message));
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    match query.get("container").filter(|c| !c.is_empty()) {
        Some(container) if !containers.contains(&container) => {
            return Err(bad(format!(
                "container {container} is not valid for pod {name}"
            )));
        }
        None if containers.len() > 1 => {
            return Err(bad(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
        _ => {}
    }
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(bad(format!("pod {name} does not have a host assigned")));
    };
    let container = query
        .get("container")
        .filter(|c| !c.is_empty())
        .or(containers.first().copied())
        .unwrap_or_default();
    for number in ["tailLines", "sinceSeconds", "limitBytes"] {
        if let Some(value) = query.get(number)
            && value.parse::<i64>().map_or(true, |n| n < 0)
        {
            return Err(bad(format!(
                "{number} must be a non-negative integer, not {value:?}"
            )));
        }
    }
    let unavailable =
        |message: String| ApiError::from(Status::new(StatusReason::ServiceUnavailable, message));
    let Some(client) = &server.node_client else {
        return Err(unavailable(format!(
            "the logs of pod {name} are on node {node:?}, and this API server has no identity to reach agents with"
        )));
    };
    let node_key = server
        .find("", "v1", "nodes")
        .map(|nodes| nodes.key(None, node))
        .ok_or_else(|| unavailable("nodes are not served".into()))?;
    let node_object = match server.store.get(&node_key, None).await {
        Ok((Some(kv), _)) => decode(&kv)?,
        Ok((None, _)) => {
            return Err(unavailable(format!(
                "node {node:?} of pod {name} is not registered"
            )));
        }
        Err(e) => return Err(unavailable(format!("cannot read node {node:?}: {e}"))),
    };
    let endpoint = crate::nodes::Endpoint::of(&node_object).map_err(unavailable)?;
    let namespace = target.namespace.as_deref().unwrap_or_default();
    let mut forwarded = Vec::new();
    for key in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        if let Some(value) = query.get(key) {
            forwarded.push(format!("{key}={}", percent(value)));
        }
    }
    let path = format!(
        "/containerLogs/{namespace}/{name}/{container}?{}",
        forwarded.join("&")
    );
    let response = client.get(&endpoint, &path).await.map_err(unavailable)?;
    let status = response.status();
    if !status.is_success() {
        use http_body_util::BodyExt;
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let reason = if status == axum::http::StatusCode::NOT_FOUND {
            StatusReason::NotFound
        } else {
            StatusReason::BadRequest
        };
        return Err(ApiError::from(Status::new(reason, body.trim().to_owned())));
    }
    let mut answer = axum::response::Response::new(axum::body::Body::new(response.into_body()));
    answer.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain"),
    );
    Ok(answer)
}

/// Percent-encodes a query value.
fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
