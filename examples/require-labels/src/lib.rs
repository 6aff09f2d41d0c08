//! An example admission policy, written with the Flotilla SDK: objects must carry the labels an
//! AdmissionPolicy's settings name, e.g. `{"labels": ["team"]}`.
//!
//! Creates and updates of an object without one of them are denied with a message naming the
//! missing labels; an object whose `team` label is empty is admitted with a warning. Settings
//! that are not a list of label keys are refused when the AdmissionPolicy is applied.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path examples/require-labels/Cargo.toml
//! flotilla plugin push examples/require-labels/target/wasm32-wasip2/release/require_labels.wasm \
//!     --name require-labels --kind admission-policy
//! ```

use flotilla_sdk::admission::*;
use serde_json::Value;

#[derive(Debug)]
pub struct RequireLabels;

fn required(settings: &str) -> Result<Vec<String>, String> {
    let settings: Value =
        serde_json::from_str(settings).map_err(|e| format!("settings are not JSON: {e}"))?;
    let labels = settings
        .get("labels")
        .and_then(Value::as_array)
        .ok_or("settings need \"labels\": a list of label keys")?;
    labels
        .iter()
        .map(|l| {
            l.as_str()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("label keys must be non-empty strings, not {l}"))
        })
        .collect()
}

impl AdmissionPolicy for RequireLabels {
    const NAME: &'static str = "require-labels";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        required(settings).map(|_| ())
    }

    fn review(&mut self, request: Request) -> Response {
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return Response::allow();
        }
        let wanted = match required(&request.settings) {
            Ok(wanted) => wanted,
            Err(error) => return Response::deny(format!("require-labels: {error}")),
        };
        let object: Value = request
            .object
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null);
        let labels = &object["metadata"]["labels"];
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|key| labels.get(key.as_str()).is_none())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Response::deny(format!(
                "{} {} is missing required label(s): {}",
                request.kind.kind,
                request.name,
                missing.join(", ")
            ));
        }
        let empty: Vec<&str> = wanted
            .iter()
            .filter(|key| labels[key.as_str()].as_str() == Some(""))
            .map(String::as_str)
            .collect();
        let mut response = Response::allow();
        for key in empty {
            response = response.warn(format!("label {key} is empty"));
        }
        response
    }
}

flotilla_sdk::export_admission_policy!(RequireLabels);
