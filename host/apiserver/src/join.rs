//! Nodes joining the cluster with a join token, as k3s agents do.
//!
//! A join token is `K10<ca-hash>::<id>.<secret>`: the SHA-256 of the cluster CA's PEM, then a
//! Kubernetes bootstrap token, kept as the Secret `kube-system/bootstrap-token-<id>` (type
//! `bootstrap.kubernetes.io/token`, with `token-secret`, an optional `expiration` and
//! `usage-bootstrap-authentication: "true"`). A joining agent reads `/cacerts` without
//! trusting it, checks it against the hash, and only then — over TLS verified with that CA —
//! posts its node name to [`JOIN_PATH`] with the bootstrap token as its bearer token. The
//! server answers with credentials of the node's own (`system:node:<name>`), added to the
//! token file so they outlive restarts.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use flotilla_api::{Status, StatusReason};
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::{ApiError, ApiServer};

/// Where a node joins.
pub const JOIN_PATH: &str = "/v1-flotilla/join";

/// The group every node's identity is in.
pub const NODES_GROUP: &str = "system:nodes";

/// What the join endpoint needs.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The cluster CA, PEM, served at `/cacerts`.
    pub ca_pem: String,
}

/// A bootstrap token as an agent presents it: `<id>.<secret>`, id 6 and secret 16 characters
/// of `[a-z0-9]`, as Kubernetes' bootstrap tokens are.
pub fn parse_bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (valid(id, 6) && valid(secret, 16)).then_some((id, secret))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::from(Status::new(StatusReason::Unauthorized, message))
}

fn data_field(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

pub(crate) async fn cacerts(State(server): State<Arc<ApiServer>>) -> Response {
    match &server.join {
        Some(join) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            join.ca_pem.clone(),
        )
            .into_response(),
        None => ApiError::from(Status::new(
            StatusReason::NotFound,
            "the cluster CA is not served here",
        ))
        .into_response(),
    }
}

pub(crate) async fn join(
    State(server): State<Arc<ApiServer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match admit(&server, &headers, &body).await {
        Ok(answer) => (StatusCode::CREATED, axum::Json(answer)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn admit(server: &ApiServer, headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let (Some(_), Some(authenticator)) = (&server.join, &server.authenticator) else {
        return Err(ApiError::from(Status::new(
            StatusReason::NotFound,
            "nodes do not join this server",
        )));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("a join needs a bootstrap token"))?;
    let (id, secret) =
        parse_bootstrap_token(token.trim()).ok_or_else(|| unauthorized("not a bootstrap token"))?;
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::from(Status::bad_request(format!(
            "the join request is not JSON: {e}"
        )))
    })?;
    let node = request["nodeName"].as_str().unwrap_or_default();
    let problems = flotilla_api::validation::dns1123_subdomain(node);
    if !problems.is_empty() {
        return Err(ApiError::from(Status::bad_request(format!(
            "nodeName {node:?}: {}",
            problems.join("; ")
        ))));
    }

    let key = server
        .find("", "v1", "secrets")
        .map(|secrets| secrets.key(Some("kube-system"), &format!("bootstrap-token-{id}")))
        .ok_or_else(|| unauthorized("bootstrap tokens are not served"))?;
    let stored = match server.store.get(&key, None).await {
        Ok((Some(kv), _)) => crate::decode(&kv)?,
        Ok((None, _)) => return Err(unauthorized("unknown bootstrap token")),
        Err(e) => {
            return Err(ApiError::from(Status::new(
                StatusReason::ServiceUnavailable,
                format!("cannot read the bootstrap token: {e}"),
            )));
        }
    };
    let secret_matches = data_field(&stored, "token-secret")
        .is_some_and(|s| constant_time_eq(s.as_bytes(), secret.as_bytes()));
    if stored["type"] != "bootstrap.kubernetes.io/token"
        || data_field(&stored, "token-id").as_deref() != Some(id)
        || !secret_matches
        || data_field(&stored, "usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return Err(unauthorized("unknown bootstrap token"));
    }
    if let Some(expiration) = data_field(&stored, "expiration") {
        let expired = k8s_openapi_time_before_now(&expiration);
        if expired {
            return Err(unauthorized("the bootstrap token has expired"));
        }
    }

    let token = crate::authn::new_token().map_err(|e| {
        ApiError::from(Status::internal(format!(
            "cannot make the node's token: {e}"
        )))
    })?;
    let user = UserInfo {
        name: format!("system:node:{node}"),
        uid: format!("system:node:{node}"),
        // Nodes act with full rights until authorization lands.
        groups: vec![NODES_GROUP.into(), crate::authn::ADMIN_GROUP.into()],
    };
    authenticator.insert_persistent(&token, user).map_err(|e| {
        ApiError::from(Status::internal(format!(
            "cannot keep the node's token: {e}"
        )))
    })?;
    tracing::info!(node, bootstrap_token = id, "a node joined");
    Ok(json!({"nodeName": node, "token": token}))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an RFC 3339 time is in the past (an unreadable one counts as past: refuse).
fn k8s_openapi_time_before_now(text: &str) -> bool {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(text))
        .map_or(true, |t| t <= std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_have_kubernetes_form() {
        assert_eq!(
            parse_bootstrap_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(parse_bootstrap_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse_bootstrap_token("abcdef0123456789abcdef"), None);
        assert_eq!(parse_bootstrap_token("abc.0123456789abcdef"), None);
    }

    #[test]
    fn expirations_in_the_past_are_refused() {
        assert!(k8s_openapi_time_before_now("2000-01-01T00:00:00Z"));
        assert!(!k8s_openapi_time_before_now("2999-01-01T00:00:00Z"));
        assert!(k8s_openapi_time_before_now("garbage"));
    }
}
