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

/// What a client needs from a kubeconfig's current context: the server, the CA to trust it by
/// (PEM), and the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub server: String,
    pub ca_pem: Option<String>,
    pub token: Option<String>,
}

impl Credentials {
    /// Reads the current context of a kubeconfig.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: serde_json::Value =
            serde_yaml::from_str(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
        let named = |list: &str, name: &str| {
            config[list]
                .as_array()
                .into_iter()
                .flatten()
                .find(|entry| entry["name"].as_str() == Some(name))
                .cloned()
                .unwrap_or_default()
        };
        let current = config["current-context"].as_str().unwrap_or_default();
        let context = named("contexts", current);
        let context = &context["context"];
        let cluster = named("clusters", context["cluster"].as_str().unwrap_or_default());
        let user = named("users", context["user"].as_str().unwrap_or_default());
        let server = cluster["cluster"]["server"]
            .as_str()
            .ok_or_else(|| format!("context {current:?} names no cluster with a server"))?
            .to_owned();
        let ca_pem = match cluster["cluster"]["certificate-authority-data"].as_str() {
            Some(data) => {
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| format!("certificate-authority-data: {e}"))?;
                Some(
                    String::from_utf8(pem)
                        .map_err(|e| format!("certificate-authority-data: {e}"))?,
                )
            }
            None => None,
        };
        let token = user["user"]["token"].as_str().map(str::to_owned);
        Ok(Self {
            server,
            ca_pem,
            token,
        })
    }
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
        let credentials = Credentials::parse(&text).unwrap();
        assert_eq!(
            credentials,
            Credentials {
                server: "https://127.0.0.1:6443".into(),
                ca_pem: Some("PEM".into()),
                token: Some("secret".into()),
            }
        );
        assert!(Credentials::parse("kind: Config\n").is_err());
    }
}
