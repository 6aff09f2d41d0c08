//! A controller of ConfigMaps that misbehaves on request, for containment tests. Its
//! configuration's `mode` says how it reconciles a ConfigMap labelled `misbehave: "yes"`:
//! `panic` (the instance traps), `loop` (it never returns; the deadline stops it) or `fail`
//! (it returns an error). Other ConfigMaps reconcile cleanly.

use std::time::Duration;

use flotilla_sdk::cache;
use flotilla_sdk::controller::*;

#[derive(Debug)]
pub struct Misbehaving {
    mode: String,
}

impl Controller for Misbehaving {
    const NAME: &'static str = "misbehaving-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        let mode = config
            .split("\"mode\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .unwrap_or("fail")
            .to_owned();
        Ok(Self { mode })
    }

    fn register(&self) -> Registration {
        Registration::new("v1", "ConfigMap")
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let object = cache::get("v1", "ConfigMap", key.namespace.as_deref(), &key.name)
            .map_err(|s| s.message)?
            .unwrap_or_default();
        if !object.contains("\"misbehave\":\"yes\"") {
            return Ok(None);
        }
        match self.mode.as_str() {
            "panic" => panic!("asked to panic on {}", key.name),
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            _ => Err(format!("asked to fail on {}", key.name)),
        }
    }
}

flotilla_sdk::export_controller!(Misbehaving);
