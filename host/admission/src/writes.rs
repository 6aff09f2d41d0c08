//! What an admission policy may write: the status of the kinds its AdmissionPolicy declares in
//! `spec.writes`, and live reads of them, as the bookkeeping its decisions need (ResourceQuota
//! charging a quota's usage). Every other call is refused with 403. The writes go through the
//! API server like any client's, with the object's resourceVersion as the precondition.

use std::collections::HashSet;

use flotilla_controllers::api::Writer;
use flotilla_controllers::informer::KindKey;
use flotilla_plugin::bindings::api::{self, ApiResource};
use flotilla_plugin::bindings::types::ObjectRef;
use flotilla_plugin::{ApiWriter, Status};

/// A policy's writes, limited to the status of the kinds it declared.
#[derive(Debug)]
pub struct StatusWriter {
    pub writer: Writer,
    pub allowed: HashSet<KindKey>,
}

fn forbidden(what: &str) -> Status {
    Status {
        code: 403,
        reason: "Forbidden".into(),
        message: format!("an admission policy may not {what}"),
    }
}

impl StatusWriter {
    /// Whether `object` (JSON) is of a declared kind; 403 naming it otherwise.
    fn check_object(&self, object: &str) -> Result<(), Status> {
        let value: serde_json::Value = serde_json::from_str(object).map_err(|e| Status {
            code: 400,
            reason: "BadRequest".into(),
            message: format!("not JSON: {e}"),
        })?;
        self.check(
            value["apiVersion"].as_str().unwrap_or_default(),
            value["kind"].as_str().unwrap_or_default(),
        )
    }

    fn check(&self, api_version: &str, kind: &str) -> Result<(), Status> {
        let key = KindKey::new(api_version, kind);
        if self.allowed.contains(&key) {
            Ok(())
        } else {
            Err(forbidden(&format!(
                "write {key}: its AdmissionPolicy does not declare it in spec.writes"
            )))
        }
    }

    /// The admission path keeps nothing of a write: what a controller remembers to read its
    /// own writes is dropped.
    fn forget<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        drop(self.writer.take_written());
        result
    }
}

#[async_trait::async_trait]
impl ApiWriter for StatusWriter {
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        self.check(api_version, kind)?;
        self.writer.get(api_version, kind, namespace, name).await
    }

    async fn update_status(&self, object: String) -> Result<String, Status> {
        self.check_object(&object)?;
        let result = self.writer.update_status(object).await;
        self.forget(result)
    }

    async fn update_subresource(
        &self,
        object: String,
        subresource: &str,
    ) -> Result<String, Status> {
        if subresource != "status" {
            return Err(forbidden(&format!("write the {subresource} subresource")));
        }
        self.update_status(object).await
    }

    async fn create(&self, _object: String) -> Result<String, Status> {
        Err(forbidden("create objects"))
    }

    async fn update(&self, _object: String) -> Result<String, Status> {
        Err(forbidden(
            "update objects (only the status of declared kinds)",
        ))
    }

    async fn patch(
        &self,
        _target: ObjectRef,
        _patch_type: api::PatchType,
        _patch: String,
    ) -> Result<String, Status> {
        Err(forbidden("patch objects"))
    }

    async fn delete(
        &self,
        _target: ObjectRef,
        _resource_version: Option<String>,
        _uid: Option<String>,
        _propagation: Option<String>,
    ) -> Result<(), Status> {
        Err(forbidden("delete objects"))
    }

    async fn emit_event(&self, _event: api::Event) -> Result<(), Status> {
        Err(forbidden("emit events"))
    }

    async fn resources(&self) -> Result<Vec<ApiResource>, Status> {
        Err(forbidden("list the API's resources"))
    }
}
