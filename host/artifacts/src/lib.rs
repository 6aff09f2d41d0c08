//! WebAssembly modules fetched from outside the cluster.
//!
//! Plugins and workload images name their module by a source and a sha256 digest. This crate
//! owns the sources that live outside the cluster: an https URL ([`fetch_url`]) and an OCI
//! registry holding a wasm OCI artifact ([`oci`]: pull and push, anonymous, basic or token
//! auth, credentials read from a `kubernetes.io/dockerconfigjson` Secret's data). Every fetch
//! is bounded in size, never follows a redirect to somewhere else, and checks what arrives
//! against the digest it was asked for.
//!
//! It must not talk to the API server or the store, and it does not cache: callers keep
//! modules by digest (the plugin host's artifact cache, the agent's image cache).

pub mod oci;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use sha2::Digest as _;

/// How long one fetch may wait for a connection or between bytes.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Why a module could not be fetched. The message names the source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl Error {
    fn at(source: &str, what: impl std::fmt::Display) -> Self {
        Error(format!("{source}: {what}"))
    }
}

/// The `sha256:<hex>` digest of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Fails unless `bytes` have the digest `expected`.
pub fn check_digest(source: &str, bytes: &[u8], expected: &str) -> Result<(), Error> {
    let actual = digest(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(Error::at(
            source,
            format!("content has digest {actual}, not the expected {expected}"),
        ))
    }
}

/// Whether a host name or address is this machine: plain http is allowed there only.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Fetches the bytes at an https URL (plain http only on loopback), never following
/// redirects, refusing more than `max_bytes`.
pub async fn fetch_url(url: &str, max_bytes: usize) -> Result<Vec<u8>, Error> {
    let parsed = url::Url::parse(url).map_err(|e| Error::at(url, e))?;
    let loopback = parsed.host_str().is_some_and(is_loopback);
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        return Err(Error::at(
            url,
            "a module URL must be https (plain http is allowed on loopback only)",
        ));
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .use_rustls_tls()
        .connect_timeout(TIMEOUT)
        .read_timeout(TIMEOUT)
        .build()
        .map_err(|e| Error::at(url, format!("cannot make an HTTP client: {e}")))?;
    let mut response = http.get(url).send().await.map_err(|e| Error::at(url, e))?;
    if !response.status().is_success() {
        return Err(Error::at(url, response.status()));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Error::at(url, e))? {
        if bytes.len() + chunk.len() > max_bytes {
            return Err(Error::at(url, format!("larger than {max_bytes} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_in_lowercase_hex() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(check_digest("x", b"", &digest(b"")).is_ok());
        let error = check_digest("x", b"a", &digest(b"")).unwrap_err();
        assert!(
            error.0.starts_with("x: content has digest sha256:ca97"),
            "{error}"
        );
    }

    #[test]
    fn only_this_machine_is_loopback() {
        for host in ["localhost", "127.0.0.1", "127.8.9.1", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "localhost.example.com", "[::2]"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
