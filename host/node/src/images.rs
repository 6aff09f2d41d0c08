//! Container images: a container's `image` names a component, which the node fetches and keeps
//! by digest.
//!
//! - A local path (`/abs/app.wasm`, `./app.wasm`, `file:///abs/app.wasm`), for development:
//!   read at every start, so a rebuilt file is picked up.
//! - An https URL with its digest, `https://host/app.wasm@sha256:<hex>`: fetched once, checked
//!   against the digest, kept.
//! - Anything else is an OCI reference (`registry:5000/apps/hello:v1`, or `…@sha256:<hex>`) to a
//!   wasm OCI artifact, pulled with the pod's pull secrets and kept; which digest a tag
//!   resolved to is remembered, so `IfNotPresent` and `Never` work without the registry.
//!
//! Modules live in `<dir>/sha256-<hex>.wasm`, written through a temporary file and a rename.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flotilla_artifacts::oci::{self, Credentials};

/// The largest module a node fetches.
pub const MAX_MODULE_BYTES: usize = 256 << 20;

/// Why an image could not be had, with Kubernetes' reason for the container's waiting state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ImageError {
    /// `InvalidImageName`, `ErrImagePull` or `ErrImageNeverPull`.
    pub reason: &'static str,
    pub message: String,
}

impl ImageError {
    fn invalid(message: String) -> Self {
        Self {
            reason: "InvalidImageName",
            message,
        }
    }

    fn pull(message: String) -> Self {
        Self {
            reason: "ErrImagePull",
            message,
        }
    }
}

/// Where an image's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url { url: String, digest: String },
    Oci(String),
}

fn check_digest_form(image: &str, digest: &str) -> Result<(), ImageError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(ImageError::invalid(format!(
            "{image}: {digest} is not a sha256 digest (sha256: and 64 lower-case hex digits)"
        )))
    }
}

/// Reads an image reference.
pub fn parse(image: &str) -> Result<Source, ImageError> {
    let image = image.trim();
    if image.is_empty() {
        return Err(ImageError::invalid("the image is empty".into()));
    }
    if let Some(path) = image.strip_prefix("file://") {
        return Ok(Source::Path(PathBuf::from(path)));
    }
    if image.starts_with('/') || image.starts_with("./") || image.starts_with("../") {
        return Ok(Source::Path(PathBuf::from(image)));
    }
    if image.starts_with("https://") || image.starts_with("http://") {
        let Some((url, digest)) = image.rsplit_once('@') else {
            return Err(ImageError::invalid(format!(
                "{image}: a URL image needs the module's digest: {image}@sha256:<hex>"
            )));
        };
        check_digest_form(image, digest)?;
        return Ok(Source::Url {
            url: url.to_owned(),
            digest: digest.to_owned(),
        });
    }
    oci::registry_of(image).map_err(|e| ImageError::invalid(e.to_string()))?;
    if let Some((_, digest)) = image.rsplit_once('@') {
        check_digest_form(image, digest)?;
    }
    Ok(Source::Oci(image.to_owned()))
}

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a container states, or Kubernetes' default: `Always` for a `:latest` or
    /// untagged OCI reference, `IfNotPresent` otherwise.
    pub fn of(stated: Option<&str>, image: &str) -> Self {
        match stated {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or(image);
                let oci = !image.contains("://") && !image.starts_with(['/', '.']);
                if oci && !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"))
                {
                    PullPolicy::Always
                } else {
                    PullPolicy::IfNotPresent
                }
            }
        }
    }
}

/// A module the node has, by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub digest: String,
    pub path: PathBuf,
    /// Whether this call fetched it (an event says `Pulled` then, `already present` otherwise).
    pub pulled: bool,
}

/// The node's modules, by digest, and which digest each OCI tag resolved to.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    tags: Mutex<HashMap<String, String>>,
}

impl Images {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let tags = std::fs::read(dir.join("tags.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Ok(Self {
            dir,
            tags: Mutex::new(tags),
        })
    }

    fn module_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.wasm", digest.replace(':', "-")))
    }

    fn present(&self, digest: &str) -> Option<PathBuf> {
        let path = self.module_path(digest);
        path.is_file().then_some(path)
    }

    fn keep(&self, digest: &str, wasm: &[u8]) -> Result<PathBuf, ImageError> {
        let path = self.module_path(digest);
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, wasm)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| ImageError::pull(format!("cannot keep the module: {e}")))?;
        Ok(path)
    }

    fn remember_tag(&self, reference: &str, digest: &str) {
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        if tags.get(reference).map(String::as_str) == Some(digest) {
            return;
        }
        tags.insert(reference.to_owned(), digest.to_owned());
        if let Ok(bytes) = serde_json::to_vec(&*tags) {
            let path = self.dir.join("tags.json");
            let temporary = path.with_extension("tmp");
            let _ =
                std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, &path));
        }
    }

    /// Makes the image present, honouring the pull policy. `credentials` are asked for only
    /// when a registry is contacted, with the registry's host.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: impl AsyncFnOnce(&str) -> Credentials,
    ) -> Result<Image, ImageError> {
        match parse(image)? {
            Source::Path(path) => {
                let wasm = read_local(&path)?;
                let digest = flotilla_artifacts::digest(&wasm);
                let kept = match self.present(&digest) {
                    Some(kept) => kept,
                    None => self.keep(&digest, &wasm)?,
                };
                Ok(Image {
                    digest,
                    path: kept,
                    pulled: false,
                })
            }
            Source::Url { url, digest } => {
                if policy != PullPolicy::Always
                    && let Some(path) = self.present(&digest)
                {
                    return Ok(Image {
                        digest,
                        path,
                        pulled: false,
                    });
                }
                if policy == PullPolicy::Never {
                    return Err(never(image));
                }
                let wasm = flotilla_artifacts::fetch_url(&url, MAX_MODULE_BYTES)
                    .await
                    .map_err(|e| ImageError::pull(e.to_string()))?;
                flotilla_artifacts::check_digest(&url, &wasm, &digest)
                    .map_err(|e| ImageError::pull(e.to_string()))?;
                let path = self.keep(&digest, &wasm)?;
                Ok(Image {
                    digest,
                    path,
                    pulled: true,
                })
            }
            Source::Oci(reference) => {
                if policy != PullPolicy::Always {
                    let known = self
                        .tags
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&reference)
                        .cloned();
                    if let Some(path) = known.as_deref().and_then(|d| self.present(d)) {
                        return Ok(Image {
                            digest: known.unwrap_or_default(),
                            path,
                            pulled: false,
                        });
                    }
                }
                if policy == PullPolicy::Never {
                    return Err(never(image));
                }
                let registry =
                    oci::registry_of(&reference).map_err(|e| ImageError::invalid(e.to_string()))?;
                let credentials = credentials(&registry).await;
                let pulled = oci::pull(&reference, &credentials, MAX_MODULE_BYTES)
                    .await
                    .map_err(|e| ImageError::pull(e.to_string()))?;
                let path = self.keep(&pulled.digest, &pulled.wasm)?;
                self.remember_tag(&reference, &pulled.digest);
                Ok(Image {
                    digest: pulled.digest,
                    path,
                    pulled: true,
                })
            }
        }
    }
}

fn never(image: &str) -> ImageError {
    ImageError {
        reason: "ErrImageNeverPull",
        message: format!("Container image \"{image}\" is not present with pull policy of Never"),
    }
}

fn read_local(path: &Path) -> Result<Vec<u8>, ImageError> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| ImageError::pull(format!("cannot read {}: {e}", path.display())))?;
    if metadata.len() > MAX_MODULE_BYTES as u64 {
        return Err(ImageError::pull(format!(
            "{} is {} bytes, over the limit of {MAX_MODULE_BYTES}",
            path.display(),
            metadata.len()
        )));
    }
    std::fs::read(path)
        .map_err(|e| ImageError::pull(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_are_read_by_their_form() {
        assert_eq!(
            parse("/opt/app.wasm").unwrap(),
            Source::Path("/opt/app.wasm".into())
        );
        assert_eq!(
            parse("file:///opt/app.wasm").unwrap(),
            Source::Path("/opt/app.wasm".into())
        );
        assert_eq!(
            parse(&format!("https://example.com/app.wasm@sha256:{HEX}")).unwrap(),
            Source::Url {
                url: "https://example.com/app.wasm".into(),
                digest: format!("sha256:{HEX}")
            }
        );
        assert_eq!(
            parse("127.0.0.1:5000/apps/hello:v1").unwrap(),
            Source::Oci("127.0.0.1:5000/apps/hello:v1".into())
        );
        let no_digest = parse("https://example.com/app.wasm").unwrap_err();
        assert_eq!(no_digest.reason, "InvalidImageName");
        assert!(no_digest.message.contains("@sha256:"), "{no_digest}");
        assert_eq!(
            parse("https://e.com/a.wasm@sha256:12").unwrap_err().reason,
            "InvalidImageName"
        );
        assert_eq!(parse("").unwrap_err().reason, "InvalidImageName");
    }

    #[test]
    fn pull_policies_default_as_kubernetes_does() {
        assert_eq!(PullPolicy::of(None, "registry/app"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::of(None, "registry/app:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::of(None, "registry:5000/app:v1"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::of(None, "/opt/app.wasm"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::of(Some("Never"), "registry/app"),
            PullPolicy::Never
        );
    }

    #[tokio::test]
    async fn local_modules_are_kept_by_digest_and_never_pull_refuses_a_missing_tag() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::open(dir.path().join("images")).unwrap();
        let module = dir.path().join("app.wasm");
        std::fs::write(&module, b"\0asm not really").unwrap();
        let anonymous = async |_: &str| Credentials::Anonymous;
        let image = images
            .ensure(
                module.to_str().unwrap(),
                PullPolicy::IfNotPresent,
                anonymous,
            )
            .await
            .unwrap();
        assert_eq!(
            image.digest,
            flotilla_artifacts::digest(b"\0asm not really")
        );
        assert_eq!(std::fs::read(&image.path).unwrap(), b"\0asm not really");
        let refused = images
            .ensure("127.0.0.1:1/apps/none:v1", PullPolicy::Never, anonymous)
            .await
            .unwrap_err();
        assert_eq!(refused.reason, "ErrImageNeverPull");
    }
}
