//! An example mutating admission policy, written with the Flotilla SDK: every container (and
//! init container) of a pod being created gets the environment variable an AdmissionPolicy's
//! settings name, e.g. `{"name": "CLUSTER_REGION", "value": "eu-west"}`, unless it sets that
//! variable itself. The change is a JSON Patch, so it shows on the stored pod.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path examples/inject-env/Cargo.toml
//! flotilla plugin push target/wasm32-wasip2/release/inject_env.wasm \
//!     --name inject-env --kind admission-policy
//! ```

use flotilla_sdk::admission::*;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct InjectEnv;

fn variable(settings: &str) -> Result<(String, String), String> {
    let settings: Value =
        serde_json::from_str(settings).map_err(|e| format!("settings are not JSON: {e}"))?;
    let name = settings["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("settings need \"name\": the variable's name")?;
    let value = settings["value"]
        .as_str()
        .ok_or("settings need \"value\": the variable's value, a string")?;
    Ok((name.to_owned(), value.to_owned()))
}

/// The JSON Patch that adds `name=value` to each container of `pod` that lacks it.
pub fn patch(pod: &Value, name: &str, value: &str) -> Vec<Value> {
    let entry = json!({"name": name, "value": value});
    let mut operations = Vec::new();
    for field in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"][field].as_array() else {
            continue;
        };
        for (i, container) in containers.iter().enumerate() {
            match container["env"].as_array() {
                Some(env) if env.iter().any(|e| e["name"] == name) => {}
                Some(_) => operations.push(json!({
                    "op": "add", "path": format!("/spec/{field}/{i}/env/-"), "value": entry,
                })),
                None => operations.push(json!({
                    "op": "add", "path": format!("/spec/{field}/{i}/env"), "value": [entry],
                })),
            }
        }
    }
    operations
}

impl AdmissionPolicy for InjectEnv {
    const NAME: &'static str = "inject-env";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        variable(settings).map(|_| ())
    }

    fn review(&mut self, request: Request) -> Response {
        if request.kind.kind != "Pod" || request.operation != Operation::Create {
            return Response::allow();
        }
        let (name, value) = match variable(&request.settings) {
            Ok(variable) => variable,
            Err(error) => return Response::deny(format!("inject-env: {error}")),
        };
        let pod: Value = request
            .object
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null);
        let operations = patch(&pod, &name, &value);
        if operations.is_empty() {
            return Response::allow();
        }
        Response::allow().patch(Value::Array(operations).to_string())
    }
}

flotilla_sdk::export_admission_policy!(InjectEnv);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_container_without_the_variable_gets_it() {
        let pod = json!({"spec": {"containers": [
            {"name": "a"},
            {"name": "b", "env": [{"name": "OTHER", "value": "1"}]},
            {"name": "c", "env": [{"name": "REGION", "value": "mine"}]},
        ]}});
        let ops = patch(&pod, "REGION", "eu");
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0]["path"], "/spec/containers/0/env");
        assert_eq!(ops[1]["path"], "/spec/containers/1/env/-");
    }
}
