//! Bearer-token authentication. Tokens live in a file in Kubernetes' static token format
//! (`token,user,uid,"group1,group2"`), made at first start with one admin token. Every request but
//! health checks and `/version` must carry a known token; anonymous ones get 401.
//!
//! Tokens are held as SHA-256 digests, so a lookup compares digests and never the secret itself.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_api::{Status, StatusReason};
use sha2::{Digest, Sha256};

use crate::ApiError;

/// Who made a request, as Kubernetes' `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// The group whose members may do anything.
pub const ADMIN_GROUP: &str = "system:masters";

/// The name of the user the first start makes.
pub const ADMIN_USER: &str = "admin";

/// Known tokens, by digest, and the file new ones are added to.
#[derive(Debug, Default)]
pub struct Authenticator {
    users: std::sync::RwLock<HashMap<[u8; 32], UserInfo>>,
    file: Option<std::path::PathBuf>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: 32 bytes from the OS, hex.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    Ok(hex::encode(bytes))
}

impl Authenticator {
    /// Reads the token file, making it with one admin token first if there is none. Returns the
    /// authenticator and the admin's token.
    pub fn load_or_create(path: &Path) -> io::Result<(Self, String)> {
        if !path.exists() {
            let token = new_token()?;
            let line = format!("{token},{ADMIN_USER},{ADMIN_USER},\"{ADMIN_GROUP}\"\n");
            crate::pki::write_secret_file(path, &line)?;
        }
        let text = fs::read_to_string(path)?;
        let authenticator = Self {
            file: Some(path.to_path_buf()),
            ..Self::default()
        };
        let mut admin = None;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (token, user) = parse_line(line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}:{}: expected token,user,uid[,\"groups\"]",
                        path.display(),
                        number + 1
                    ),
                )
            })?;
            if admin.is_none() && user.groups.iter().any(|g| g == ADMIN_GROUP) {
                admin = Some(token.clone());
            }
            authenticator.insert(&token, user);
        }
        let admin = admin.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: no token in group {ADMIN_GROUP} to write the admin kubeconfig with",
                    path.display()
                ),
            )
        })?;
        Ok((authenticator, admin))
    }

    /// Accepts `token` as `user` until the process ends.
    pub fn insert(&self, token: &str, user: UserInfo) {
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest(token), user);
    }

    /// Accepts `token` as `user` from now on, across restarts: the token is added to the
    /// token file first.
    pub fn insert_persistent(&self, token: &str, user: UserInfo) -> io::Result<()> {
        if let Some(path) = &self.file {
            use std::io::Write;
            let line = format!(
                "{token},{},{},\"{}\"\n",
                user.name,
                user.uid,
                user.groups.join(",")
            );
            let mut file = fs::OpenOptions::new().append(true).open(path)?;
            file.write_all(line.as_bytes())?;
            file.sync_all()?;
        }
        self.insert(token, user);
        Ok(())
    }

    /// The user a request's `Authorization: Bearer` header names, if the token is known.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<UserInfo> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest(token))
            .cloned()
    }
}

/// `token,user,uid` with an optional quoted, comma-separated group list.
fn parse_line(line: &str) -> Option<(String, UserInfo)> {
    let mut fields = line.splitn(4, ',');
    let token = fields.next()?.trim();
    let name = fields.next()?.trim();
    let uid = fields.next()?.trim();
    let groups = fields
        .next()
        .map(|g| {
            g.trim()
                .trim_matches('"')
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if token.is_empty() || name.is_empty() {
        return None;
    }
    Some((
        token.to_owned(),
        UserInfo {
            name: name.to_owned(),
            uid: uid.to_owned(),
            groups,
        },
    ))
}

/// Paths anyone may read: health checks and the version, as Kubernetes' default RBAC allows.
/// `/cacerts` and the join endpoint too: a joining node reads the CA it then checks against
/// its join token, and proves itself with that token (`join.rs`).
fn public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/cacerts" | crate::join::JOIN_PATH
    )
}

/// The middleware: known tokens pass with their [`UserInfo`] in the request's extensions,
/// anything else gets a 401 Status.
pub async fn require_token(
    State(authenticator): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let user = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| authenticator.authenticate(Some(v)));
    match user {
        Some(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None if public(request.uri().path()) => next.run(request).await,
        None => {
            ApiError::from(Status::new(StatusReason::Unauthorized, "Unauthorized")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_makes_an_admin_token_that_later_starts_accept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let (_, token) = Authenticator::load_or_create(&path).unwrap();
        let (again, same) = Authenticator::load_or_create(&path).unwrap();
        assert_eq!(token, same);
        let user = again
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(user.name, ADMIN_USER);
        assert_eq!(user.groups, [ADMIN_GROUP]);
        assert!(again.authenticate(Some("Bearer nope")).is_none());
        assert!(again.authenticate(Some(&token)).is_none(), "no scheme");
        assert!(again.authenticate(None).is_none());
    }

    #[test]
    fn token_lines_follow_the_kubernetes_static_token_format() {
        let (token, user) = parse_line(r#"abc,alice,1001,"dev,ops""#).unwrap();
        assert_eq!(token, "abc");
        assert_eq!(user.name, "alice");
        assert_eq!(user.uid, "1001");
        assert_eq!(user.groups, ["dev", "ops"]);
        assert!(parse_line("abc").is_none());
        assert!(parse_line(",bob,1").is_none());
    }

    #[test]
    fn a_token_file_without_an_admin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "abc,alice,1\n").unwrap();
        let error = Authenticator::load_or_create(&path).unwrap_err();
        assert!(error.to_string().contains(ADMIN_GROUP), "{error}");
    }
}
