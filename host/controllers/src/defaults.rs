//! The built-in controllers: a WasmPlugin of kind `controller` for each (module `builtin`,
//! digest of the module this binary carries). Missing ones are created; built-ins still
//! pointing at a built-in module follow this binary's digest; anything a user changed
//! otherwise is left alone.

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
    "resourcequota-controller",
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
    flotilla_client::plugins::install_builtins(
        client,
        flotilla_plugin::World::Controller,
        BUILTIN_CONTROLLERS,
        Some(&BUILTIN_LIMITS),
    )
    .await
}
