//! Server-side apply (`PATCH` with `application/apply-patch+yaml`) and the field ownership every
//! write records in `metadata.managedFields`. The algorithms are `flotilla_api::managed`'s; this
//! module gives them the kind's schema, the request's manager, and the write path.

use flotilla_api::managed::{Walker, Writer, display_path};
use flotilla_api::{Status, StatusCause, StatusReason};
use serde_json::{Value, json};

use crate::resources::ResourceDef;
use crate::{
    ApiError, ApiResult, ApiServer, Target, admission, body, create_object, current_object, decode,
    json_body, replace,
};

/// The media type of server-side apply.
pub const MEDIA_TYPE: &str = "application/apply-patch+yaml";

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Records an ordinary write's fields as its manager's.
pub(crate) fn track(
    server: &ApiServer,
    resource: &ResourceDef,
    old: Option<&Value>,
    object: &mut Value,
    subresource: &str,
) {
    let schemas = server.schemas();
    let schema = schemas.kind_schema(&resource.gvk());
    let manager = admission::manager();
    let api_version = resource.api_version();
    let time = now();
    let writer = Writer {
        manager: &manager,
        api_version: &api_version,
        subresource,
        time: &time,
    };
    Walker {
        schemas: schemas.as_ref(),
    }
    .track_update(old, object, schema, &writer);
}

/// A server-side apply: create the object if it does not exist, otherwise merge the applied
/// configuration into it, refusing fields other managers own with other values unless forced.
pub(crate) async fn apply(server: &ApiServer, target: &Target<'_>, body: &[u8]) -> ApiResult {
    let resource = target.resource;
    let manager = admission::manager();
    if manager == "unknown" {
        return Err(ApiError::from(Status::bad_request(
            "PATCH requests with apply content type must have a fieldManager",
        )));
    }
    let applied = body::decode("application/yaml", body)?.value;
    if !applied.is_object() {
        return Err(ApiError::from(Status::bad_request(
            "an applied configuration must be an object",
        )));
    }
    let name = target.name.as_deref().unwrap_or_default();
    if applied["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::from(Status::bad_request(
            "the name of the applied object does not match the name on the URL",
        )));
    }
    admission::set_applying();
    let current = match current_object(server, target).await {
        Ok(current) => Some(current),
        Err(e) if e.0.reason == StatusReason::NotFound => None,
        Err(e) => return Err(e),
    };
    let existing = match &current {
        Some(current) => decode(current)?,
        // Apply creates what does not exist yet.
        None => json!({"metadata": {"name": name}}),
    };
    // Merged without holding the schemas across an await.
    let merged = {
        let schemas = server.schemas();
        let schema = schemas.kind_schema(&resource.gvk());
        let api_version = resource.api_version();
        let time = now();
        let writer = Writer {
            manager: &manager,
            api_version: &api_version,
            subresource: "",
            time: &time,
        };
        let force = current.is_none() || admission::force();
        Walker {
            schemas: schemas.as_ref(),
        }
        .apply(&existing, &applied, schema, &writer, force)
    };
    let api_version = resource.api_version();
    match (merged, current) {
        (Ok(object), None) => {
            let collection = Target {
                resource,
                namespace: target.namespace.clone(),
                name: None,
                subresource: None,
            };
            create_object(server, &collection, object).await
        }
        (Ok(object), Some(current)) => {
            Ok(json_body(&replace(server, target, &current, object).await?))
        }
        (Err(conflicts), _) => {
            let causes: Vec<StatusCause> = conflicts
                .iter()
                .flat_map(|c| {
                    c.managers.iter().map(|m| StatusCause {
                        reason: "FieldManagerConflict".into(),
                        message: format!("conflict with {m:?} using {api_version}"),
                        field: display_path(&c.path),
                    })
                })
                .collect();
            // Kubernetes' wording: one conflict inline, several as a list.
            let listed: Vec<String> = causes
                .iter()
                .map(|c| format!("{}: {}", c.message, c.field))
                .collect();
            let message = match listed.as_slice() {
                [one] => format!("Apply failed with 1 conflict: {one}"),
                many => format!(
                    "Apply failed with {} conflicts: {}",
                    many.len(),
                    many.iter().map(|c| format!("\n- {c}")).collect::<String>()
                ),
            };
            let mut status = Status::new(StatusReason::Conflict, message);
            status.causes = causes;
            Err(ApiError::from(status))
        }
    }
}
