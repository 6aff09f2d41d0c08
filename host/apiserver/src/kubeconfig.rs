//! The kubeconfig a server writes for its admin: the server's address, the CA to trust it by,
//! and a bearer token — what `kubectl --kubeconfig` and the client libraries read.

use base64::Engine;
use serde_json::json;

/// A kubeconfig with one cluster, one user and one context, all named `flotilla`.
pub fn kubeconfig(server_url: &str, ca_pem: Option<&str>, token: &str) -> String {
    let mut cluster = json!({"server": server_url});
    if let Some(ca) = ca_pem {
        cluster["certificate-authority-data"] =
            json!(base64::engine::general_purpose::STANDARD.encode(ca));
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "flotilla", "cluster": cluster}],
        "users": [{"name": "flotilla-admin", "user": {"token": token}}],
        "contexts": [{"name": "flotilla", "context": {"cluster": "flotilla", "user": "flotilla-admin"}}],
        "current-context": "flotilla",
        "preferences": {},
    });
    serde_yaml::to_string(&config).expect("a JSON value is always YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_names_the_server_the_ca_and_the_token() {
        let text = kubeconfig("https://127.0.0.1:6443", Some("PEM"), "secret");
        let parsed: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(parsed["current-context"], "flotilla");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            parsed["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(parsed["users"][0]["user"]["token"], "secret");
    }
}
