//! The objects a fresh cluster schedules with: a WasmPlugin for each built-in scheduling policy
//! (module `builtin`, digest of the module this binary carries) and the `default-scheduler`
//! SchedulerProfile with Kubernetes' default weights. Missing objects are created; built-in
//! plugins still pointing at a built-in module follow this binary's digest; anything a user
//! changed otherwise is left alone.

use flotilla_client::plugins::{self, GROUP, VERSION, api};
use flotilla_plugin::World;
use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};

/// The default profile's name, as in Kubernetes.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// The built-in scheduling policies: (plugin name, filter, score weight).
pub const BUILTIN_POLICIES: &[(&str, bool, i64)] = &[
    ("node-unschedulable", true, 0),
    ("node-name", true, 0),
    ("taint-toleration", true, 3),
    ("node-affinity", true, 2),
    ("node-resources-fit", true, 0),
    ("pod-topology-spread", true, 2),
    ("least-allocated", false, 1),
    ("balanced-allocation", false, 1),
    ("most-allocated", false, 0),
];

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"name": name, "labels": {"plugins.flotilla.dev/builtin": "true"}},
        "spec": spec,
    }))
    .expect("a valid object")
}

/// The default profile's spec: every built-in that filters, and those that score with their
/// weight (MostAllocated is available but not in the default chain).
pub fn default_profile() -> Value {
    let plugins: Vec<Value> = BUILTIN_POLICIES
        .iter()
        .filter(|(_, filter, weight)| *filter || *weight > 0)
        .map(|(name, filter, weight)| {
            json!({"name": name, "filter": filter, "score": *weight > 0, "weight": weight})
        })
        .collect();
    json!({"percentageOfNodesToScore": 0, "plugins": plugins})
}

/// Creates or refreshes the built-in plugins and the default profile.
pub async fn install(client: &kube::Client) -> Result<(), kube::Error> {
    let names: Vec<&str> = BUILTIN_POLICIES.iter().map(|(name, _, _)| *name).collect();
    plugins::install_builtins(client, World::SchedulerPolicy, &names, None).await?;
    let profiles = api(client, "SchedulerProfile");
    if profiles.get_opt(DEFAULT_SCHEDULER).await?.is_none() {
        match profiles
            .create(
                &PostParams::default(),
                &object("SchedulerProfile", DEFAULT_SCHEDULER, default_profile()),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
