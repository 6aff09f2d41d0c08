//! `flotilla token create` and the agent's side of joining: join tokens
//! (`K10<ca-hash>::<id>.<secret>`) are bootstrap-token Secrets plus the hash of the cluster CA
//! the joining node checks before it sends anything secret.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use sha2::Digest as _;

/// A join token, read.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA's PEM, hex.
    pub ca_hash: String,
    /// `<id>.<secret>`.
    pub bootstrap: String,
}

pub fn parse(token: &str) -> anyhow::Result<JoinToken> {
    let rest = token
        .trim()
        .strip_prefix("K10")
        .context("a join token starts with K10 (make one with `flotilla token create`)")?;
    let (hash, bootstrap) = rest
        .split_once("::")
        .context("a join token is K10<ca-hash>::<id>.<secret>")?;
    anyhow::ensure!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "the join token's CA hash is not a SHA-256"
    );
    anyhow::ensure!(
        flotilla_apiserver::join::parse_bootstrap_token(bootstrap).is_some(),
        "the join token's secret part is not <id>.<secret> (6 and 16 of [a-z0-9])"
    );
    Ok(JoinToken {
        ca_hash: hash.to_ascii_lowercase(),
        bootstrap: bootstrap.to_owned(),
    })
}

fn random_text(len: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Makes a bootstrap-token Secret valid for `ttl` and returns the join token for it.
pub async fn create(client: kube::Client, ca_pem: &str, ttl: Duration) -> anyhow::Result<String> {
    let (id, secret) = (random_text(6)?, random_text(16)?);
    let expiration =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + ttl).to_string();
    let object: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": id,
            "token-secret": secret,
            "expiration": expiration,
            "usage-bootstrap-authentication": "true",
            "description": "made by flotilla token create",
        },
    }))?;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, "kube-system");
    secrets
        .create(&Default::default(), &object)
        .await
        .context("cannot store the bootstrap token")?;
    let hash = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    Ok(format!("K10{hash}::{id}.{secret}"))
}

/// Joins the cluster at `server` with `token` and writes the node's kubeconfig to `path`.
pub async fn join(server: &str, token: &JoinToken, node: &str, path: &Path) -> anyhow::Result<()> {
    let server = server.trim_end_matches('/');
    // The CA is read without trusting it, then checked against the token's hash.
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let ca_pem = insecure
        .get(format!("{server}/cacerts"))
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?
        .error_for_status()?
        .text()
        .await?;
    let actual = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    anyhow::ensure!(
        actual == token.ca_hash,
        "the server at {server} presents a CA whose hash is {actual}, not the join token's {}: refusing to join",
        token.ca_hash
    );
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("the cluster CA")?;
    let verified = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = verified
        .post(format!("{server}{}", flotilla_apiserver::join::JOIN_PATH))
        .bearer_auth(&token.bootstrap)
        .json(&serde_json::json!({"nodeName": node}))
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.context("the join answer")?;
    anyhow::ensure!(
        status.is_success(),
        "the server refused the join: {}",
        answer["message"].as_str().unwrap_or("no reason given")
    );
    let node_token = answer["token"]
        .as_str()
        .context("the join answer has no token")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let kubeconfig = flotilla_apiserver::kubeconfig::kubeconfig(server, Some(&ca_pem), node_token);
    flotilla_apiserver::pki::write_secret_file(path, &kubeconfig)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The CA a kubeconfig's current cluster is verified with (PEM), when it names one.
pub fn cluster_ca(kubeconfig: &str) -> Option<String> {
    let config = kube::config::Kubeconfig::from_yaml(kubeconfig).ok()?;
    let context_name = config.current_context.clone()?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)?
        .context
        .clone()?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .clone()?;
    if let Some(data) = cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?;
        return String::from_utf8(pem).ok();
    }
    std::fs::read_to_string(cluster.certificate_authority?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_are_read_and_bad_ones_named() {
        let hash = "a".repeat(64);
        let token = parse(&format!("K10{hash}::abcdef.0123456789abcdef")).unwrap();
        assert_eq!(token.ca_hash, hash);
        assert_eq!(token.bootstrap, "abcdef.0123456789abcdef");
        assert!(
            parse("abcdef.0123456789abcdef")
                .unwrap_err()
                .to_string()
                .contains("K10")
        );
        assert!(parse(&format!("K10{hash}::short")).is_err());
        assert!(parse("K10abc::abcdef.0123456789abcdef").is_err());
    }
}
