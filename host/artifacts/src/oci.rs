//! WebAssembly modules as OCI artifacts.
//!
//! A module in a registry is a manifest whose one wasm layer is the module (the CNCF wasm OCI
//! artifact layout: layer `application/wasm`, config `application/vnd.wasm.config.v0+json`;
//! older layer types are read too). An image index is resolved to its wasm entry. References
//! are those `docker pull` takes (`registry:port/repo:tag` or `…@sha256:…`). Registries on
//! loopback are spoken to over plain http, every other registry over https. The registry's
//! token flow (a `WWW-Authenticate: Bearer` challenge) is followed with the credentials given.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};

use crate::{Error, TIMEOUT};

/// The layer media type a module is pushed with.
pub const WASM_LAYER: &str = "application/wasm";
/// Layer media types read as a module: the current one and those older tools push.
pub const WASM_LAYERS: &[&str] = &[
    WASM_LAYER,
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.module.wasm.content.layer.v1+wasm",
];
/// The config media type a module is pushed with.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// How a registry is spoken to.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, …)"),
        }
    }
}

impl Credentials {
    /// The credentials a docker config (a `kubernetes.io/dockerconfigjson` Secret's
    /// `.dockerconfigjson`, or the older `.dockercfg`) holds for `registry`, or `Anonymous`
    /// when it holds none.
    pub fn from_docker_config(config: &[u8], registry: &str) -> Result<Self, Error> {
        let config: Value = serde_json::from_slice(config)
            .map_err(|e| Error(format!("the docker config is not JSON: {e}")))?;
        let entries = config.get("auths").unwrap_or(&config);
        let Some(entries) = entries.as_object() else {
            return Err(Error("the docker config holds no \"auths\" object".into()));
        };
        let wanted = registry_name(registry);
        let Some(entry) = entries
            .iter()
            .find(|(key, _)| registry_name(key) == wanted)
            .map(|(_, entry)| entry)
        else {
            return Ok(Credentials::Anonymous);
        };
        if let (Some(username), Some(password)) =
            (entry["username"].as_str(), entry["password"].as_str())
        {
            return Ok(Credentials::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
        let auth = entry["auth"].as_str().ok_or_else(|| {
            Error(format!(
                "the docker config's entry for {registry} has neither auth nor username and password"
            ))
        })?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                Error(format!(
                    "the docker config's auth for {registry} is not base64 text"
                ))
            })?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            Error(format!(
                "the docker config's auth for {registry} is not user:password"
            ))
        })?;
        Ok(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    fn auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// A registry's name as docker configs key it: no scheme, no path, Docker Hub's aliases as one.
fn registry_name(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

/// The registry a reference names (`docker.io` when it names none).
pub fn registry_of(reference: &str) -> Result<String, Error> {
    Ok(parse(reference)?.resolve_registry().to_owned())
}

fn parse(reference: &str) -> Result<Reference, Error> {
    reference
        .parse()
        .map_err(|e| Error(format!("{reference:?} is not an OCI reference: {e}")))
}

fn client_for(reference: &Reference) -> Client {
    let registry = reference.resolve_registry();
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    let protocol = if crate::is_loopback(host) {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(wasm_entry)),
        read_timeout: Some(TIMEOUT),
        connect_timeout: Some(TIMEOUT),
        ..ClientConfig::default()
    })
}

/// The entry of an image index that holds WebAssembly: one for a wasm architecture or a WASI
/// operating system, or the only entry.
fn wasm_entry(entries: &[ImageIndexEntry]) -> Option<String> {
    let wasm = |entry: &&ImageIndexEntry| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| p.architecture == "wasm" || p.os.starts_with("wasi"))
    };
    entries
        .iter()
        .find(wasm)
        .or(match entries {
            [only] => Some(only),
            _ => None,
        })
        .map(|entry| entry.digest.clone())
}

/// The one layer of a manifest that holds a module.
fn wasm_layer<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<&'m OciDescriptor, Error> {
    let mut layers = manifest
        .layers
        .iter()
        .filter(|layer| WASM_LAYERS.contains(&layer.media_type.as_str()));
    match (layers.next(), layers.next()) {
        (Some(layer), None) => Ok(layer),
        (None, _) => {
            let found: Vec<&str> = manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect();
            Err(Error(format!(
                "{reference} is not a WebAssembly artifact: no layer of type {WASM_LAYER} (its layers are {found:?})"
            )))
        }
        (Some(_), Some(_)) => Err(Error(format!(
            "{reference} holds more than one WebAssembly layer; a module is one layer"
        ))),
    }
}

/// A module pulled from a registry.
#[derive(Debug)]
pub struct Pulled {
    pub wasm: Vec<u8>,
    /// The digest of the module (its layer).
    pub digest: String,
    /// The digest of the manifest the reference resolved to.
    pub manifest_digest: String,
}

/// Pulls the module a reference names, refusing more than `max_bytes`. The layer is checked
/// against the digest the manifest gives, and the manifest against a digest in the reference.
pub async fn pull(
    reference: &str,
    credentials: &Credentials,
    max_bytes: usize,
) -> Result<Pulled, Error> {
    let parsed = parse(reference)?;
    let client = client_for(&parsed);
    let (manifest, manifest_digest) = client
        .pull_image_manifest(&parsed, &credentials.auth())
        .await
        .map_err(|e| Error(format!("cannot pull {reference}: {e}")))?;
    let layer = wasm_layer(reference, &manifest)?;
    if usize::try_from(layer.size).map_or(true, |size| size > max_bytes) {
        return Err(Error(format!(
            "{reference}: the module is {} bytes, over the limit of {max_bytes} bytes",
            layer.size
        )));
    }
    let mut out = Bounded {
        bytes: Vec::with_capacity(layer.size as usize),
        max: max_bytes,
    };
    client
        .pull_blob(&parsed, layer, &mut out)
        .await
        .map_err(|e| Error(format!("cannot pull {reference} ({}): {e}", layer.digest)))?;
    Ok(Pulled {
        wasm: out.bytes,
        digest: layer.digest.clone(),
        manifest_digest,
    })
}

/// Pushes a module as a wasm OCI artifact and returns the manifest's URL.
pub async fn push(
    reference: &str,
    wasm: &[u8],
    credentials: &Credentials,
) -> Result<String, Error> {
    let parsed = parse(reference)?;
    let client = client_for(&parsed);
    let layer = ImageLayer::new(wasm.to_vec(), WASM_LAYER.to_owned(), None);
    let config = json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [crate::digest(wasm)],
    });
    let config = Config::new(
        serde_json::to_vec(&config).expect("JSON"),
        WASM_CONFIG.to_owned(),
        None,
    );
    let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    let pushed = client
        .push(
            &parsed,
            &[layer],
            config,
            &credentials.auth(),
            Some(manifest),
        )
        .await
        .map_err(|e| Error(format!("cannot push {reference}: {e}")))?;
    Ok(pushed.manifest_url)
}

/// A writer that keeps what it is given and fails past a size.
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.max {
            let max = self.max;
            return Poll::Ready(Err(std::io::Error::other(format!(
                "more than {max} bytes arrived"
            ))));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(username: &str, password: &str) -> Credentials {
        Credentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn credentials_are_found_in_docker_configs_by_registry() {
        let config = br#"{"auths": {
            "https://registry.example:5000/v2/": {"auth": "YWxpY2U6czNjcmV0"},
            "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}
        }}"#;
        let find = |registry| Credentials::from_docker_config(config, registry).unwrap();
        assert_eq!(find("registry.example:5000"), basic("alice", "s3cret"));
        assert_eq!(find("docker.io"), basic("bob", "pw"));
        assert_eq!(find("other.example"), Credentials::Anonymous);
        // The older .dockercfg has no "auths" wrapper.
        let old = br#"{"registry.example": {"auth": "YWxpY2U6czNjcmV0"}}"#;
        assert_eq!(
            Credentials::from_docker_config(old, "registry.example").unwrap(),
            basic("alice", "s3cret")
        );
        for (bad, says) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"auths": {"r": {"auth": "!!"}}}"#, "not base64"),
            (
                br#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#,
                "not user:password",
            ),
            (br#"{"auths": {"r": {}}}"#, "neither auth nor"),
        ] {
            let error = Credentials::from_docker_config(bad, "r").unwrap_err();
            assert!(error.0.contains(says), "{error}");
        }
        assert!(!format!("{:?}", basic("alice", "s3cret")).contains("s3cret"));
    }

    #[test]
    fn an_index_resolves_to_its_wasm_entry() {
        let entry = |digest: &str, os: &str, arch: &str| -> ImageIndexEntry {
            serde_json::from_value(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest, "size": 1,
                "platform": {"os": os, "architecture": arch},
            }))
            .unwrap()
        };
        let linux = entry("sha256:1", "linux", "amd64");
        let wasi = entry("sha256:2", "wasip2", "wasm");
        assert_eq!(wasm_entry(&[linux.clone(), wasi]), Some("sha256:2".into()));
        assert_eq!(
            wasm_entry(std::slice::from_ref(&linux)),
            Some("sha256:1".into())
        );
        assert_eq!(wasm_entry(&[linux.clone(), linux]), None);
    }

    #[test]
    fn references_name_their_registry() {
        assert_eq!(
            registry_of("127.0.0.1:5000/p/q:v1").unwrap(),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("nginx").unwrap(), "index.docker.io");
        assert!(
            registry_of("not a reference!")
                .unwrap_err()
                .0
                .contains("not an OCI reference")
        );
    }
}
