//! `metav1.Status`: every API error, with the code, reason and message Kubernetes gives, so that
//! kubectl and client libraries show Flotilla's errors exactly as they show Kubernetes' own.

use serde_json::{Value, json};

/// Why a request failed (`metav1.StatusReason`), with its HTTP code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusReason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    AlreadyExists,
    Conflict,
    Gone,
    Expired,
    RequestEntityTooLarge,
    UnsupportedMediaType,
    Invalid,
    TooManyRequests,
    InternalError,
    ServiceUnavailable,
    Timeout,
}

impl StatusReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::BadRequest => "BadRequest",
            StatusReason::Unauthorized => "Unauthorized",
            StatusReason::Forbidden => "Forbidden",
            StatusReason::NotFound => "NotFound",
            StatusReason::MethodNotAllowed => "MethodNotAllowed",
            StatusReason::NotAcceptable => "NotAcceptable",
            StatusReason::AlreadyExists => "AlreadyExists",
            StatusReason::Conflict => "Conflict",
            StatusReason::Gone => "Gone",
            StatusReason::Expired => "Expired",
            StatusReason::RequestEntityTooLarge => "RequestEntityTooLarge",
            StatusReason::UnsupportedMediaType => "UnsupportedMediaType",
            StatusReason::Invalid => "Invalid",
            StatusReason::TooManyRequests => "TooManyRequests",
            StatusReason::InternalError => "InternalError",
            StatusReason::ServiceUnavailable => "ServiceUnavailable",
            StatusReason::Timeout => "Timeout",
        }
    }

    /// The HTTP status code Kubernetes sends with this reason.
    pub fn code(self) -> u16 {
        match self {
            StatusReason::BadRequest => 400,
            StatusReason::Unauthorized => 401,
            StatusReason::Forbidden => 403,
            StatusReason::NotFound => 404,
            StatusReason::MethodNotAllowed => 405,
            StatusReason::NotAcceptable => 406,
            StatusReason::AlreadyExists | StatusReason::Conflict => 409,
            StatusReason::Gone | StatusReason::Expired => 410,
            StatusReason::RequestEntityTooLarge => 413,
            StatusReason::UnsupportedMediaType => 415,
            StatusReason::Invalid => 422,
            StatusReason::TooManyRequests => 429,
            StatusReason::InternalError => 500,
            StatusReason::ServiceUnavailable => 503,
            StatusReason::Timeout => 504,
        }
    }
}

/// One field-level problem of an invalid object (`metav1.StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCause {
    /// The cause type, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: String,
    /// What is wrong, e.g. `Required value` or `Invalid value: "x": must be ...`.
    pub message: String,
    /// The field path, e.g. `spec.containers[0].name`.
    pub field: String,
}

impl StatusCause {
    /// `Required value`: the field is missing or empty.
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
            field: field.into(),
        }
    }

    /// `Required value: <detail>`: the field is missing, and why it is needed.
    pub fn required_with(field: impl Into<String>, detail: &str) -> Self {
        Self {
            message: format!("Required value: {detail}"),
            ..Self::required(field)
        }
    }

    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {value}: {detail}"),
            field: field.into(),
        }
    }

    /// `Forbidden: <detail>`: the field may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }

    /// `Duplicate value: <value>`: the value appears earlier in the same list.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate".into(),
            message: format!("Duplicate value: {value}"),
            field: field.into(),
        }
    }

    /// `Not found: <value>`: the value refers to something that does not exist.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueNotFound".into(),
            message: format!("Not found: {value}"),
            field: field.into(),
        }
    }

    /// `Too long: may not be more than <max> bytes`.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        Self {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {max_bytes} bytes"),
            field: field.into(),
        }
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
            field: field.into(),
        }
    }

    /// The cause as Kubernetes prints it inside a message: `field: message`.
    pub fn to_message(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// An API error as `metav1.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub reason: StatusReason,
    pub message: String,
    /// The object the error is about: name, group, and kind or resource.
    pub name: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
    pub causes: Vec<StatusCause>,
    pub retry_after_seconds: Option<u32>,
}

/// `pods` for the core group, `deployments.apps` otherwise: how Kubernetes names a resource in
/// messages.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

impl Status {
    pub fn new(reason: StatusReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
            retry_after_seconds: None,
        }
    }

    fn about(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self.group = (!group.is_empty()).then(|| group.to_owned());
        self.kind = Some(kind.to_owned());
        self
    }

    pub fn code(&self) -> u16 {
        self.reason.code()
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            StatusReason::NotFound,
            format!("{} {name:?} not found", qualified(group, resource)),
        )
        .about(group, resource, name)
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            StatusReason::AlreadyExists,
            format!("{} {name:?} already exists", qualified(group, resource)),
        )
        .about(group, resource, name)
    }

    /// A write lost an optimistic-concurrency race (stale resourceVersion).
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            StatusReason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, resource)
            ),
        )
        .about(group, resource, name)
    }

    /// An object failed validation: 422 naming every field.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        let aggregate = match causes.as_slice() {
            [one] => one.to_message(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(StatusCause::to_message)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut status = Self::new(
            StatusReason::Invalid,
            format!("{kind} {name:?} is invalid: {aggregate}"),
        )
        .about(group, kind, name);
        status.causes = causes;
        status
    }

    /// A watch or list asked for history that is gone.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusReason::Expired, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusReason::BadRequest, message)
    }

    pub fn too_many_requests(retry_after_seconds: u32) -> Self {
        let mut status = Self::new(
            StatusReason::TooManyRequests,
            "Too many requests, please try again later.",
        );
        status.retry_after_seconds = Some(retry_after_seconds);
        status
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusReason::InternalError,
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `metav1.Status` JSON body.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.code(),
        });
        let mut details = serde_json::Map::new();
        if let Some(name) = &self.name {
            details.insert("name".into(), json!(name));
        }
        if let Some(group) = &self.group {
            details.insert("group".into(), json!(group));
        }
        if let Some(kind) = &self.kind {
            details.insert("kind".into(), json!(kind));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(seconds) = self.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        if !details.is_empty() {
            body["details"] = Value::Object(details);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let core = Status::not_found("", "pods", "web");
        assert_eq!(core.code(), 404);
        assert_eq!(core.message, "pods \"web\" not found");
        let apps = Status::not_found("apps", "deployments", "web").to_json();
        assert_eq!(apps["message"], "deployments.apps \"web\" not found");
        assert_eq!(apps["reason"], "NotFound");
        assert_eq!(apps["details"]["group"], "apps");
        assert_eq!(apps["kind"], "Status");
        assert_eq!(apps["status"], "Failure");
    }

    #[test]
    fn conflict_and_already_exists_are_409() {
        let conflict = Status::conflict("", "configmaps", "c");
        assert_eq!(conflict.code(), 409);
        assert!(
            conflict
                .message
                .starts_with("Operation cannot be fulfilled on configmaps \"c\"")
        );
        let exists = Status::already_exists("", "pods", "p").to_json();
        assert_eq!(exists["reason"], "AlreadyExists");
        assert_eq!(exists["code"], 409);
    }

    #[test]
    fn invalid_names_every_field() {
        let one = Status::invalid(
            "",
            "Pod",
            "p",
            vec![StatusCause::required("spec.containers")],
        );
        assert_eq!(one.code(), 422);
        assert_eq!(
            one.message,
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        let two = Status::invalid(
            "apps",
            "Deployment",
            "d",
            vec![
                StatusCause::required("spec.selector"),
                StatusCause::invalid("metadata.name", &json!("D_1"), "must be lowercase"),
            ],
        );
        assert_eq!(
            two.message,
            "Deployment \"d\" is invalid: [spec.selector: Required value, metadata.name: Invalid value: \"D_1\": must be lowercase]"
        );
        let body = two.to_json();
        assert_eq!(body["details"]["causes"][1]["field"], "metadata.name");
        assert_eq!(body["details"]["causes"][1]["reason"], "FieldValueInvalid");
    }

    #[test]
    fn throttling_carries_retry_after() {
        let body = Status::too_many_requests(1).to_json();
        assert_eq!(body["code"], 429);
        assert_eq!(body["details"]["retryAfterSeconds"], 1);
        assert_eq!(
            Status::expired("too old resource version: 1 (5)").code(),
            410
        );
        assert!(Status::bad_request("x").to_json().get("details").is_none());
    }
}
