//! An example controller, written with the Flotilla SDK: every Namespace labelled
//! `flotilla.dev/defaults: enabled` holds a ConfigMap (`defaults` unless the configuration says
//! `"name"`) whose data is the plugin configuration's `data`, e.g.
//! `{"data": {"registry": "registry.local:5000"}}`.
//!
//! The ConfigMap is owned by its Namespace (a controller owner reference), so an edit or a
//! deletion of it is noticed and undone, and deleting the Namespace removes it. Removing the
//! label deletes the ConfigMap again. Reconciling an object that is already right writes
//! nothing; every write carries the resourceVersion it was computed from.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path examples/namespace-defaults/Cargo.toml
//! flotilla plugin push examples/namespace-defaults/target/wasm32-wasip2/release/namespace_defaults.wasm \
//!     --name namespace-defaults --kind controller
//! ```

use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Map, Value, json};

const LABEL: &str = "flotilla.dev/defaults";

#[derive(Debug)]
pub struct NamespaceDefaults {
    name: String,
    data: Map<String, Value>,
}

fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn failed(what: &str, status: Status) -> String {
    format!("{what}: {} ({})", status.message, status.reason)
}

impl NamespaceDefaults {
    fn configmap_ref(&self, namespace: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some(namespace.into()),
            name: self.name.clone(),
        }
    }

    fn event(&self, namespace: &Value, reason: &str, message: String) {
        let regarding = ObjectRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: namespace["metadata"]["name"].as_str().unwrap_or("").into(),
        };
        // An event that cannot be recorded is not worth failing the reconcile for.
        let _ = api::emit_event(&Event {
            regarding,
            event_type: "Normal".into(),
            reason: reason.into(),
            message,
        });
    }
}

impl Controller for NamespaceDefaults {
    const NAME: &'static str = "namespace-defaults";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        let config = parse(config).map_err(|e| format!("configuration is {e}"))?;
        let name = config
            .get("name")
            .map(|n| {
                n.as_str()
                    .map(str::to_owned)
                    .ok_or("\"name\" must be a string")
            })
            .transpose()?
            .unwrap_or_else(|| "defaults".into());
        let data = match config.get("data") {
            None => Map::new(),
            Some(Value::Object(data)) if data.values().all(Value::is_string) => data.clone(),
            Some(_) => return Err("\"data\" must map keys to strings".into()),
        };
        Ok(Self { name, data })
    }

    fn register(&self) -> Registration {
        Registration::new("v1", "Namespace").owns("v1", "ConfigMap")
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<std::time::Duration>, String> {
        let Some(namespace) = cache::get("v1", "Namespace", None, &key.name)
            .map_err(|s| failed("reading the namespace", s))?
        else {
            // Gone: the garbage collector removes what it owned.
            return Ok(None);
        };
        let namespace = parse(&namespace)?;
        let metadata = &namespace["metadata"];
        let wanted = metadata["labels"][LABEL].as_str() == Some("enabled")
            && metadata.get("deletionTimestamp").is_none();
        let target = self.configmap_ref(&key.name);
        let existing = cache::get("v1", "ConfigMap", Some(&key.name), &self.name)
            .map_err(|s| failed("reading the config map", s))?
            .map(|c| parse(&c))
            .transpose()?;
        let ours = |c: &Value| {
            c["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == metadata["uid"]))
        };

        match existing {
            None if wanted => {
                let configmap = json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": self.name,
                        "namespace": key.name,
                        "ownerReferences": [{
                            "apiVersion": "v1",
                            "kind": "Namespace",
                            "name": key.name,
                            "uid": metadata["uid"],
                            "controller": true,
                            "blockOwnerDeletion": true,
                        }],
                    },
                    "data": self.data,
                });
                match api::create(&configmap.to_string()) {
                    Ok(_) => {}
                    // The cache has not seen our earlier create yet: its event brings us back.
                    Err(status) if status.code == 409 => return Ok(None),
                    Err(status) => return Err(failed("creating the config map", status)),
                }
                self.event(
                    &namespace,
                    "DefaultsCreated",
                    format!("created {}", self.name),
                );
            }
            Some(configmap) if wanted => {
                if configmap["data"].as_object() == Some(&self.data) {
                    return Ok(None);
                }
                let mut updated = configmap;
                updated["data"] = Value::Object(self.data.clone());
                api::update(&updated.to_string())
                    .map_err(|s| failed("updating the config map", s))?;
                self.event(
                    &namespace,
                    "DefaultsRestored",
                    format!("restored {}", self.name),
                );
            }
            Some(configmap) if ours(&configmap) => {
                let options = DeleteOptions {
                    resource_version: configmap["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_owned),
                    ..DeleteOptions::default()
                };
                match api::delete(&target, &options) {
                    Ok(()) => {}
                    Err(status) if status.code == 404 => {}
                    Err(status) => return Err(failed("deleting the config map", status)),
                }
            }
            // Not wanted, and absent or someone else's: nothing to do.
            _ => {}
        }
        Ok(None)
    }
}

flotilla_sdk::export_controller!(NamespaceDefaults);
