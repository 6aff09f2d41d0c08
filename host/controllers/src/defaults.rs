//! The built-in controllers: a WasmPlugin of kind `controller` for each (module `builtin`,
//! digest of the module this binary carries). Missing ones are created; built-ins still
//! pointing at a built-in module follow this binary's digest; anything a user changed
//! otherwise is left alone.

use flotilla_client::plugins::{GROUP, VERSION, api};
use kube::api::{DynamicObject, PostParams};
use serde_json::json;

/// The built-in controllers, by plugin name (the guest crate's name).
pub const BUILTIN_CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "garbage-collector",
    "endpoints-controller",
    "node-lifecycle-controller",
    "job-controller",
    "daemonset-controller",
    "statefulset-controller",
    "cronjob-controller",
    "namespace-controller",
];

/// The limits a built-in controller gets: a reconcile may read thousands of objects (a
/// ReplicaSet of 10,000 pods) and write hundreds (one burst of creates), so it has more room
/// and time than a plugin on a hot path. Set on the WasmPlugin, where users see and change it.
static BUILTIN_LIMITS: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
    json!({
        "memoryBytes": 256u64 << 20,
        "callTimeoutMilliseconds": 30_000,
        "boundaryBytes": 64u64 << 20,
    })
});

/// [`BUILTIN_LIMITS`] as the engine applies them.
pub fn builtin_limits() -> flotilla_plugin::Limits {
    let spec = flotilla_client::plugins::WasmPluginSpec {
        limits: serde_json::from_value(BUILTIN_LIMITS.clone()).ok(),
        ..Default::default()
    };
    spec.limits(&flotilla_plugin::Limits::default())
}

/// Creates or refreshes the built-in controllers' WasmPlugins.
pub async fn install(client: &kube::Client) -> Result<(), kube::Error> {
    let plugins = api(client, "WasmPlugin");
    for name in BUILTIN_CONTROLLERS {
        let Some(builtin) = flotilla_builtins::find(name) else {
            continue;
        };
        let digest = flotilla_plugin::digest(builtin.wasm);
        let conflict_is_fine = |result: Result<DynamicObject, kube::Error>| match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        };
        match plugins.get_opt(name).await? {
            None => {
                let object: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": format!("{GROUP}/{VERSION}"),
                    "kind": "WasmPlugin",
                    "metadata": {"name": name, "labels": {"plugins.flotilla.dev/builtin": "true"}},
                    "spec": {"kind": "controller", "module": {"digest": digest, "builtin": name},
                        "limits": BUILTIN_LIMITS.clone()},
                }))
                .map_err(kube::Error::SerdeError)?;
                conflict_is_fine(plugins.create(&PostParams::default(), &object).await)?;
            }
            Some(mut current) => {
                let module = &current.data["spec"]["module"];
                if module["builtin"] == *name && module["digest"] != digest.as_str() {
                    current.data["spec"]["module"]["digest"] = json!(digest);
                    if current.data["spec"].get("limits").is_none() {
                        current.data["spec"]["limits"] = BUILTIN_LIMITS.clone();
                    }
                    conflict_is_fine(
                        plugins
                            .replace(name, &PostParams::default(), &current)
                            .await,
                    )?;
                }
            }
        }
    }
    Ok(())
}
