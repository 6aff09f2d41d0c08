//! A controller built against `wit/released/flotilla-plugin@0.1.0`, as a plugin compiled
//! before 0.1.1 is: the host's tests load it to check that a host serving a newer 0.1.x still
//! links its imports and finds its exports. It reconciles ConfigMaps by reading one from the
//! cache and recording a `Seen` event about it through the API.

wit_bindgen::generate!({
    path: "../../../wit/released/flotilla-plugin@0.1.0",
    world: "controller",
});

use exports::flotilla::plugin::meta::{Guest as Meta, PluginInfo};
use exports::flotilla::plugin::reconciler::{Guest as Reconciler, KeyMapping, Registration, Watch};
use flotilla::plugin::types::ObjectRef;
use flotilla::plugin::{api, cache};

struct Released;

impl Meta for Released {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "released-controller".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: "0.1.0".into(),
        }
    }

    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

impl Reconciler for Released {
    fn register() -> Registration {
        Registration {
            primary_api_version: "v1".into(),
            primary_kind: "ConfigMap".into(),
            watches: vec![Watch {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                mapping: KeyMapping::Primary,
                label_selector: String::new(),
            }],
            resync_seconds: None,
            workers: 1,
        }
    }

    fn keys_for(_watch: u32, _object: String) -> Vec<ObjectRef> {
        Vec::new()
    }

    fn reconcile(key: ObjectRef) -> Result<Option<u64>, String> {
        let found = cache::get(
            &key.api_version,
            &key.kind,
            key.namespace.as_deref(),
            &key.name,
        )
        .map_err(|s| s.message)?;
        if found.is_none() {
            return Ok(None);
        }
        api::emit_event(&api::Event {
            regarding: key,
            event_type: "Normal".into(),
            reason: "Seen".into(),
            message: "read through flotilla:plugin@0.1.0".into(),
        })
        .map_err(|s| s.message)?;
        Ok(None)
    }
}

export!(Released);
