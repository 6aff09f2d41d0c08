//! The admission seam. Every write passes through it between defaulting and storage, as in
//! Kubernetes: mutating admission may change the object, then the object is validated, then
//! validating admission may refuse it. Admission logic itself is policy and lives in plugins;
//! this module only calls what it is given (`flotilla-admission`'s policies in `flotilla`).
//!
//! It also holds what a request carries through the write path: who sent it, whether it is a
//! dry run, and the warnings gathered for its `Warning` headers.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

use crate::ApiError;
use crate::authn::UserInfo;
use crate::resources::ResourceDef;

/// What a write does, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

/// What admission is asked about: Kubernetes' `AdmissionRequest` without the object itself,
/// which is passed alongside.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    pub operation: Operation,
    pub resource: &'a ResourceDef,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// The stored object an update or delete applies to.
    pub old_object: Option<&'a Value>,
    pub user: Option<UserInfo>,
    pub dry_run: bool,
    /// The group, version and kind of the object when it is not the resource's own (a
    /// `Binding` sent to `pods/binding`, an `Eviction` to `pods/eviction`).
    pub object_kind: Option<(&'a str, &'a str, &'a str)>,
}

/// A mutating admission step: may change the object, warn, or refuse with a Status.
#[async_trait]
pub trait MutatingAdmission: Send + Sync + std::fmt::Debug {
    async fn admit(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError>;
}

/// A validating admission step: may warn or refuse, never change.
#[async_trait]
pub trait ValidatingAdmission: Send + Sync + std::fmt::Debug {
    async fn validate(
        &self,
        request: &AdmissionRequest<'_>,
        object: Option<&Value>,
    ) -> Result<(), ApiError>;
}

/// The admission steps, called in order.
#[derive(Debug, Clone, Default)]
pub struct AdmissionChain {
    pub mutating: Vec<Arc<dyn MutatingAdmission>>,
    pub validating: Vec<Arc<dyn ValidatingAdmission>>,
}

impl AdmissionChain {
    pub(crate) async fn mutate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        for step in &self.mutating {
            step.admit(request, object).await?;
        }
        Ok(())
    }

    pub(crate) async fn validate(
        &self,
        request: &AdmissionRequest<'_>,
        object: Option<&Value>,
    ) -> Result<(), ApiError> {
        for step in &self.validating {
            step.validate(request, object).await?;
        }
        Ok(())
    }
}

/// How a write treats fields the kind does not have, or fields given twice
/// (`fieldValidation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them with a warning (Kubernetes' default).
    #[default]
    Warn,
    /// Refuse the write with 400 naming them.
    Strict,
}

/// What one request carries through the write path.
#[derive(Debug, Default)]
pub(crate) struct RequestContext {
    pub user: Option<UserInfo>,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub warnings: Mutex<Vec<String>>,
    /// Fields the request body gave more than once.
    pub duplicates: Mutex<Vec<String>>,
    /// Who the write's fields belong to in `managedFields`: `fieldManager`, or the client's
    /// name from its User-Agent.
    pub manager: String,
    /// `force=true`: a server-side apply takes conflicting fields over.
    pub force: bool,
    /// Set while a server-side apply writes: it records its own ownership.
    pub applying: std::sync::atomic::AtomicBool,
}

tokio::task_local! {
    static REQUEST: Arc<RequestContext>;
}

/// Runs `work` as part of the request described by `context`.
pub(crate) async fn scope<F: Future>(context: Arc<RequestContext>, work: F) -> F::Output {
    REQUEST.scope(context, work).await
}

/// Whether the current request is a dry run (work the server does on its own never is).
pub(crate) fn dry_run() -> bool {
    REQUEST.try_with(|r| r.dry_run).unwrap_or(false)
}

/// How the current request treats unknown and duplicate fields.
pub(crate) fn field_validation() -> FieldValidation {
    REQUEST.try_with(|r| r.field_validation).unwrap_or_default()
}

/// Notes fields the current request's body gave more than once.
pub(crate) fn note_duplicates(fields: Vec<String>) {
    let _ = REQUEST.try_with(|r| r.duplicates.lock().expect("duplicates lock").extend(fields));
}

/// The duplicate fields noted so far, taken.
pub(crate) fn take_duplicates() -> Vec<String> {
    REQUEST
        .try_with(|r| std::mem::take(&mut *r.duplicates.lock().expect("duplicates lock")))
        .unwrap_or_default()
}

/// Whether the current write is the server's own work rather than a client's request (the
/// server's bootstrap, its own repairs): admission policies do not see it.
pub fn is_server_work() -> bool {
    REQUEST.try_with(|_| ()).is_err()
}

/// The field manager of the current request, as admission passes it on in the options.
pub fn field_manager() -> String {
    manager()
}

/// The manager of the current request's fields.
pub(crate) fn manager() -> String {
    REQUEST
        .try_with(|r| r.manager.clone())
        .unwrap_or_else(|_| "flotilla".into())
}

/// Whether the current request forces a server-side apply.
pub(crate) fn force() -> bool {
    REQUEST.try_with(|r| r.force).unwrap_or(false)
}

/// Marks the current request as a server-side apply, which records its own ownership.
pub(crate) fn set_applying() {
    let _ = REQUEST.try_with(|r| r.applying.store(true, std::sync::atomic::Ordering::Relaxed));
}

/// Whether the current request is a server-side apply.
pub(crate) fn applying() -> bool {
    REQUEST
        .try_with(|r| r.applying.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap_or(false)
}

/// Who sent the current request.
pub(crate) fn user() -> Option<UserInfo> {
    REQUEST.try_with(|r| r.user.clone()).ok().flatten()
}

/// Adds a warning to the current request's response.
pub fn warn(message: impl Into<String>) {
    let message = message.into();
    let _ = REQUEST.try_with(|r| r.warnings.lock().expect("warnings lock").push(message));
}

/// A `Warning` header value (RFC 7234 form, as Kubernetes sends them).
pub(crate) fn warning_header(message: &str) -> String {
    let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
    format!("299 - \"{escaped}\"")
}
