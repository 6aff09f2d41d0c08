//! An example admission policy, written with the Flotilla SDK: a pod's containers (init
//! containers too) may only name images that start with one of the prefixes an
//! AdmissionPolicy's settings list, e.g. `{"prefixes": ["registry.local:5000/", "https://modules.example/"]}`.
//!
//! A pod naming another image is denied with a message listing each such container and its
//! image. Settings that are not a non-empty list of prefixes are refused when the policy is
//! applied.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path examples/allowed-images/Cargo.toml
//! flotilla plugin push target/wasm32-wasip2/release/allowed_images.wasm \
//!     --name allowed-images --kind admission-policy
//! ```

use flotilla_sdk::admission::*;
use serde_json::Value;

#[derive(Debug)]
pub struct AllowedImages;

fn prefixes(settings: &str) -> Result<Vec<String>, String> {
    let settings: Value =
        serde_json::from_str(settings).map_err(|e| format!("settings are not JSON: {e}"))?;
    let listed = settings
        .get("prefixes")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("settings need \"prefixes\": a non-empty list of image prefixes")?;
    listed
        .iter()
        .map(|p| {
            p.as_str()
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("prefixes must be non-empty strings, not {p}"))
        })
        .collect()
}

/// The containers of a pod whose image no prefix allows, as `name (image)`.
pub fn disallowed(pod: &Value, prefixes: &[String]) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|field| pod["spec"][field].as_array())
        .flatten()
        .filter_map(|container| {
            let image = container["image"].as_str().unwrap_or_default();
            (!prefixes.iter().any(|p| image.starts_with(p.as_str()))).then(|| {
                format!(
                    "{} ({image})",
                    container["name"].as_str().unwrap_or_default()
                )
            })
        })
        .collect()
}

impl AdmissionPolicy for AllowedImages {
    const NAME: &'static str = "allowed-images";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        prefixes(settings).map(|_| ())
    }

    fn review(&mut self, request: Request) -> Response {
        if request.kind.kind != "Pod" || !request.sub_resource.is_empty() {
            return Response::allow();
        }
        let prefixes = match prefixes(&request.settings) {
            Ok(prefixes) => prefixes,
            Err(error) => return Response::deny(format!("allowed-images: {error}")),
        };
        let pod: Value = request
            .object
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null);
        let refused = disallowed(&pod, &prefixes);
        if refused.is_empty() {
            return Response::allow();
        }
        Response::deny(format!(
            "pod {} uses images from sources that are not allowed: {} (allowed: {})",
            request.name,
            refused.join(", "),
            prefixes.join(", ")
        ))
    }
}

flotilla_sdk::export_admission_policy!(AllowedImages);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_outside_the_prefixes_are_named() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "setup", "image": "registry.local:5000/setup.wasm"}],
            "containers": [{"name": "app", "image": "elsewhere.example/app.wasm"}],
        }});
        let allowed = vec!["registry.local:5000/".to_owned()];
        assert_eq!(
            disallowed(&pod, &allowed),
            ["app (elsewhere.example/app.wasm)"]
        );
        assert!(prefixes(r#"{"prefixes": []}"#).is_err());
    }
}
