//! An admission policy that misbehaves on purpose, as its AdmissionPolicy's settings say:
//! `{"mode": "sleep", "seconds": 5}` sleeps in a host call, `{"mode": "loop"}` computes forever,
//! `{"mode": "panic"}` panics, `{"mode": "stamp", "as": "m1"}` (mutating) appends `m1` to the
//! object's `flotilla.dev/stamps` annotation each time it is called, with a JSON Patch (or the
//! whole changed object with `"whole": true`); any other mode admits.
//! `"prefix": "slow"` limits the misbehaviour to objects whose name starts with it.
//!
//! Every answer carries the warning `admission-misbehave version=<v>`, `<v>` being the
//! `version` of its WasmPlugin's config, so a test sees which load of the plugin answered.
//! With `"signal": {"namespace": "default", "service": "signal"}`, a sleeping review first
//! writes `reviewing-<v>` into that Service's `status.loadBalancer.ingress[0].hostname` (the
//! AdmissionPolicy declares Services in `writes`), so a test knows the review is in flight.
//! The host's tests use it for timeouts, failure policies, hot swaps and reinvocation.

use flotilla_sdk::admission::*;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct Misbehave {
    version: String,
}

/// Writes `reviewing-<version>` into the signal Service's status.
fn signal(target: &Value, version: &str) -> Result<(), String> {
    let namespace = target["namespace"].as_str().unwrap_or("default");
    let name = target["service"].as_str().ok_or("signal needs a service")?;
    let found = api::get("v1", "Service", Some(namespace), name)
        .map_err(|s| s.message)?
        .ok_or_else(|| format!("no Service {namespace}/{name}"))?;
    let mut service: Value = serde_json::from_str(&found).map_err(|e| e.to_string())?;
    service["status"]["loadBalancer"] =
        json!({"ingress": [{"hostname": format!("reviewing-{version}")}]});
    api::update_subresource(&service.to_string(), "status").map_err(|s| s.message)?;
    Ok(())
}

/// A JSON Patch appending `stamp` to the object's `flotilla.dev/stamps` annotation.
fn stamped(object: &Value, stamp: &str) -> String {
    let annotations = &object["metadata"]["annotations"];
    let patch = match annotations["flotilla.dev/stamps"].as_str() {
        Some(stamps) => {
            json!([{"op": "replace", "path": "/metadata/annotations/flotilla.dev~1stamps",
            "value": format!("{stamps},{stamp}")}])
        }
        None if annotations.is_object() => json!([{"op": "add",
            "path": "/metadata/annotations/flotilla.dev~1stamps", "value": stamp}]),
        None => json!([{"op": "add", "path": "/metadata/annotations",
            "value": {"flotilla.dev/stamps": stamp}}]),
    };
    patch.to_string()
}

impl AdmissionPolicy for Misbehave {
    const NAME: &'static str = "admission-misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        let config: Value = serde_json::from_str(config).unwrap_or(Value::Null);
        Ok(Self {
            version: config["version"].as_str().unwrap_or("unset").to_owned(),
        })
    }

    fn review(&mut self, request: Request) -> Response {
        let settings: Value = serde_json::from_str(&request.settings).unwrap_or(Value::Null);
        let warning = format!("admission-misbehave version={}", self.version);
        let chosen = settings["prefix"]
            .as_str()
            .is_none_or(|prefix| request.name.starts_with(prefix));
        if !chosen {
            return Response::allow().warn(warning);
        }
        match settings["mode"].as_str() {
            Some("sleep") => {
                if let Some(target) = settings.get("signal")
                    && let Err(error) = signal(target, &self.version)
                {
                    return Response::deny(format!("admission-misbehave: cannot signal: {error}"));
                }
                let seconds = settings["seconds"].as_u64().unwrap_or(5);
                std::thread::sleep(std::time::Duration::from_secs(seconds));
                Response::allow().warn(warning)
            }
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("panic") => panic!("admission-misbehave: told to panic"),
            Some("stamp") => {
                let object: Value = request
                    .object
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or(Value::Null);
                let stamp = settings["as"].as_str().unwrap_or("stamp");
                if settings["whole"] == true {
                    // The whole changed object instead of a patch.
                    let mut changed = object;
                    let stamps =
                        match changed["metadata"]["annotations"]["flotilla.dev/stamps"].as_str() {
                            Some(stamps) => format!("{stamps},{stamp}"),
                            None => stamp.to_owned(),
                        };
                    changed["metadata"]["annotations"]["flotilla.dev/stamps"] = json!(stamps);
                    return Response::allow().mutated(changed.to_string()).warn(warning);
                }
                Response::allow()
                    .patch(stamped(&object, stamp))
                    .warn(warning)
            }
            _ => Response::allow().warn(warning),
        }
    }
}

flotilla_sdk::export_admission_policy!(Misbehave);
