//! WasmPlugin objects (`plugins.flotilla.dev/v1alpha1`): their spec, their module's bytes
//! fetched and checked by digest, and status reports from the components that run them.

use std::time::Duration;

use base64::Engine as _;
use flotilla_artifacts::oci::{self, Credentials};
use flotilla_plugin::{Health, Limits, Module, PluginHost, World};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize;
use serde_json::{Value, json};

pub const GROUP: &str = "plugins.flotilla.dev";
pub const VERSION: &str = "v1alpha1";
/// The largest module fetched from a URL or assembled from chunks.
pub const MAX_MODULE_BYTES: usize = 128 << 20;
/// Bytes per WasmModuleChunk.
pub const CHUNK_BYTES: usize = 512 << 10;

/// The API resource of one of the group's kinds (`WasmPlugin`, `WasmModule`, …).
pub fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, kind))
}

/// The API of one of the group's (cluster-scoped) kinds.
pub fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &resource(kind))
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRef {
    pub digest: String,
    #[serde(default)]
    pub builtin: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub oci: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret in `kube-system` for the OCI registry.
    #[serde(default)]
    pub pull_secret: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    pub memory_bytes: Option<u64>,
    pub call_timeout_milliseconds: Option<u64>,
    pub boundary_bytes: Option<u64>,
}

/// A WasmPlugin's spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginSpec {
    pub kind: String,
    pub module: ModuleRef,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
    #[serde(default)]
    pub failure_policy: Option<String>,
}

impl WasmPluginSpec {
    /// Reads the spec of a WasmPlugin object.
    pub fn of(object: &DynamicObject) -> Result<Self, String> {
        serde_json::from_value(object.data["spec"].clone())
            .map_err(|e| format!("invalid WasmPlugin spec: {e}"))
    }

    pub fn world(&self) -> Result<World, String> {
        World::from_name(&self.kind).ok_or_else(|| format!("unknown plugin kind {:?}", self.kind))
    }

    /// The configuration as the plugin reads it (`{}` when unset).
    pub fn config_json(&self) -> String {
        self.config
            .as_ref()
            .map_or_else(|| "{}".to_owned(), Value::to_string)
    }

    /// The spec's limits over `defaults`.
    pub fn limits(&self, defaults: &Limits) -> Limits {
        let spec = self.limits.clone().unwrap_or_default();
        Limits {
            memory_bytes: spec
                .memory_bytes
                .map_or(defaults.memory_bytes, |b| b as usize),
            call_deadline: spec
                .call_timeout_milliseconds
                .map_or(defaults.call_deadline, Duration::from_millis),
            boundary_bytes: spec
                .boundary_bytes
                .map_or(defaults.boundary_bytes, |b| b as usize),
        }
    }
}

/// The name of the WasmModule holding an uploaded module: `sha256-<hex>`.
pub fn module_object_name(digest: &str) -> String {
    digest.replace(':', "-")
}

fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// Fetches a module's bytes from where its reference says. The caller checks them against the
/// digest (`PluginHost::load` does).
pub async fn fetch(client: &kube::Client, module: &ModuleRef) -> Result<Vec<u8>, String> {
    if !valid_digest(&module.digest) {
        return Err(format!(
            "module digest {:?} is not sha256:<64 lowercase hex digits>",
            module.digest
        ));
    }
    if let Some(name) = &module.builtin {
        return flotilla_builtins::find(name)
            .map(|b| b.wasm.to_vec())
            .ok_or_else(|| format!("there is no built-in module {name:?}"));
    }
    if let Some(url) = &module.url {
        return flotilla_artifacts::fetch_url(url, MAX_MODULE_BYTES)
            .await
            .map_err(|e| e.to_string());
    }
    if let Some(reference) = &module.oci {
        let credentials = match &module.pull_secret {
            Some(secret) => pull_credentials(client, secret, reference).await?,
            None => Credentials::Anonymous,
        };
        let pulled = oci::pull(reference, &credentials, MAX_MODULE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(pulled.wasm);
    }
    fetch_uploaded(client, &module.digest).await
}

/// The credentials for an OCI reference's registry in a pull secret in kube-system.
async fn pull_credentials(
    client: &kube::Client,
    secret: &str,
    reference: &str,
) -> Result<Credentials, String> {
    let registry = oci::registry_of(reference).map_err(|e| e.to_string())?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let object = secrets
        .get_opt(secret)
        .await
        .map_err(|e| format!("cannot read the pull secret kube-system/{secret}: {e}"))?
        .ok_or_else(|| format!("the pull secret kube-system/{secret} does not exist"))?;
    let data = object.data.unwrap_or_default();
    let config = data
        .get(".dockerconfigjson")
        .or_else(|| data.get(".dockercfg"))
        .ok_or_else(|| format!("the pull secret kube-system/{secret} has no .dockerconfigjson"))?;
    Credentials::from_docker_config(&config.0, &registry)
        .map_err(|e| format!("the pull secret kube-system/{secret}: {e}"))
}

/// A module uploaded through the API: its WasmModule and chunks.
async fn fetch_uploaded(client: &kube::Client, digest: &str) -> Result<Vec<u8>, String> {
    let name = module_object_name(digest);
    let module = api(client, "WasmModule")
        .get_opt(&name)
        .await
        .map_err(|e| format!("cannot read WasmModule {name}: {e}"))?
        .ok_or_else(|| {
            format!("no module was uploaded for {digest} (WasmModule {name} does not exist)")
        })?;
    let size = module.data["spec"]["size"].as_u64().unwrap_or(0) as usize;
    let chunks = module.data["spec"]["chunks"].as_u64().unwrap_or(0);
    if size > MAX_MODULE_BYTES {
        return Err(format!(
            "WasmModule {name} is larger than {MAX_MODULE_BYTES} bytes"
        ));
    }
    let chunk_api = api(client, "WasmModuleChunk");
    let mut bytes = Vec::with_capacity(size);
    for index in 0..chunks {
        let chunk_name = format!("{name}-{index}");
        let chunk = chunk_api
            .get(&chunk_name)
            .await
            .map_err(|e| format!("cannot read WasmModuleChunk {chunk_name}: {e}"))?;
        let data = chunk.data["spec"]["data"].as_str().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("WasmModuleChunk {chunk_name} is not base64: {e}"))?;
        bytes.extend_from_slice(&decoded);
    }
    if bytes.len() != size {
        return Err(format!(
            "WasmModule {name} says {size} bytes but its chunks hold {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Loads the module of a WasmPlugin for its world: from the artifact cache when this host has
/// compiled the digest before (no fetch), else fetched, checked against the digest and compiled.
pub async fn load(
    host: &PluginHost,
    client: &kube::Client,
    name: &str,
    spec: &WasmPluginSpec,
) -> Result<Module, String> {
    let world = spec.world()?;
    if let Some(loaded) = host.load_cached(name, world, &spec.module.digest) {
        return loaded.map_err(|e| e.to_string());
    }
    let bytes = fetch(client, &spec.module).await?;
    let host = host.clone();
    let name = name.to_owned();
    let digest = spec.module.digest.clone();
    // Compiling takes a while: off the async threads.
    tokio::task::spawn_blocking(move || {
        host.load(&name, world, &bytes, Some(&digest))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("compilation stopped: {e}"))?
}

/// What one component (the scheduler, a node's proxy, …) reports about a plugin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ComponentStatus {
    /// The digest the component runs now, if any.
    pub digest: Option<String>,
    /// It runs the spec's digest and its last calls succeeded.
    pub ready: bool,
    /// Its calls fail repeatedly.
    pub degraded: bool,
    /// Why it is not ready or degraded (a refused swap, the last error).
    pub message: String,
    /// The plugin's own version, from `meta.info`.
    pub version: String,
}

impl ComponentStatus {
    /// The status of a component that wants `wanted`, serves `serving` (digests), had the
    /// latest spec refused for `refused`, and whose calls have this `health`.
    pub fn of(
        wanted: Option<&str>,
        serving: Option<&str>,
        refused: Option<&str>,
        health: &Health,
        version: &str,
    ) -> Self {
        let degraded = health.degraded();
        let message = refused
            .map(str::to_owned)
            .or_else(|| degraded.then(|| health.last_error.clone()).flatten())
            .unwrap_or_default();
        Self {
            digest: serving.map(str::to_owned),
            ready: serving.is_some() && serving == wanted && refused.is_none(),
            degraded,
            message,
            version: version.to_owned(),
        }
    }
}

/// How long to wait before loading a refused spec again: Kubernetes' image pull backoff,
/// 10 s doubling to 5 minutes.
pub fn load_backoff(failures: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << failures.min(5)).min(300))
}

/// Records `status` for `component` on the WasmPlugin `name` and recomputes its conditions:
/// Ready when every component runs the spec's digest and is ready, Degraded when any is.
/// Retries on conflicts; gives up quietly if the plugin is gone.
pub async fn report(
    client: &kube::Client,
    name: &str,
    component: &str,
    status: &ComponentStatus,
) -> Result<(), kube::Error> {
    let plugins = api(client, "WasmPlugin");
    for _ in 0..8 {
        let Some(mut object) = plugins.get_opt(name).await? else {
            return Ok(());
        };
        let wanted = object.data["spec"]["module"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut current = object.data["status"].clone();
        if !current.is_object() {
            current = json!({});
        }
        let now = crate::now_rfc3339();
        let previous = current["components"][component].clone();
        let entry = json!({
            "digest": status.digest,
            "ready": status.ready,
            "degraded": status.degraded,
            "message": status.message,
            "version": status.version,
            "lastUpdateTime": now,
        });
        let unchanged = ["digest", "ready", "degraded", "message", "version"]
            .iter()
            .all(|k| previous[*k] == entry[*k]);
        if unchanged {
            return Ok(());
        }
        if !current["components"].is_object() {
            current["components"] = json!({});
        }
        current["components"][component] = entry;
        let components = current["components"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let ready = components
            .values()
            .all(|c| c["ready"] == true && c["digest"] == wanted.as_str());
        let degraded = components.values().any(|c| c["degraded"] == true);
        let reasons: Vec<String> = components
            .iter()
            .filter(|(_, c)| c["message"].as_str().is_some_and(|m| !m.is_empty()))
            .map(|(who, c)| format!("{who}: {}", c["message"].as_str().unwrap_or_default()))
            .collect();
        let conditions = [
            ("Ready", ready, if ready { "Loaded" } else { "NotLoaded" }),
            (
                "Degraded",
                degraded,
                if degraded { "FailingCalls" } else { "Healthy" },
            ),
        ];
        let old = current["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        current["conditions"] = Value::Array(
            conditions
                .iter()
                .map(|(kind, on, reason)| {
                    let status = if *on { "True" } else { "False" };
                    let since = old
                        .iter()
                        .find(|c| c["type"] == *kind && c["status"] == status)
                        .and_then(|c| c["lastTransitionTime"].as_str())
                        .unwrap_or(&now)
                        .to_owned();
                    json!({"type": kind, "status": status, "reason": reason,
                        "message": reasons.join("; "), "lastTransitionTime": since})
                })
                .collect(),
        );
        if !status.message.is_empty() && !status.ready {
            current["lastError"] = json!(format!("{component}: {}", status.message));
        }
        object.data["status"] = current;
        let body = serde_json::to_vec(&object).map_err(kube::Error::SerdeError)?;
        match plugins
            .replace_status(name, &PostParams::default(), body)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a component's status reports one at a time, in the order they were made: two
/// reports in flight could otherwise land out of order and leave an older status on the
/// WasmPlugin for good (later identical reports are skipped).
#[derive(Clone, Debug)]
pub struct Reporter {
    queue: tokio::sync::mpsc::UnboundedSender<(String, String, ComponentStatus)>,
}

impl Reporter {
    /// Starts the task that writes the reports, until `stop`.
    pub fn start(client: kube::Client, stop: tokio_util::sync::CancellationToken) -> Self {
        let (queue, mut reports) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (name, component, status): (String, String, ComponentStatus) = tokio::select! {
                    next = reports.recv() => match next {
                        Some(next) => next,
                        None => return,
                    },
                    _ = stop.cancelled() => return,
                };
                if let Err(error) = report(&client, &name, &component, &status).await {
                    tracing::warn!(plugin = name, "cannot report status: {error}");
                }
            }
        });
        Self { queue }
    }

    /// Queues `status` of `component` for the WasmPlugin `name`.
    pub fn send(&self, name: &str, component: &str, status: ComponentStatus) {
        let _ = self
            .queue
            .send((name.to_owned(), component.to_owned(), status));
    }
}

/// Uploads a module through the API (a WasmModule and its chunks, unless already there) and
/// creates or updates the WasmPlugin `name` of `kind` to run it with `config`. Returns the
/// module's digest.
pub async fn push(
    client: &kube::Client,
    name: &str,
    kind: World,
    wasm: &[u8],
    config: Option<Value>,
) -> Result<String, String> {
    let digest = flotilla_plugin::digest(wasm);
    let module_name = module_object_name(&digest);
    let modules = api(client, "WasmModule");
    let exists = modules
        .get_opt(&module_name)
        .await
        .map_err(|e| format!("cannot read WasmModule {module_name}: {e}"))?
        .is_some();
    if !exists {
        let chunk_api = api(client, "WasmModuleChunk");
        let chunks: Vec<&[u8]> = wasm.chunks(CHUNK_BYTES).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let chunk_name = format!("{module_name}-{index}");
            let object = object_of(
                "WasmModuleChunk",
                &chunk_name,
                json!({"module": module_name, "index": index,
                    "data": base64::engine::general_purpose::STANDARD.encode(chunk)}),
            )?;
            create_or_keep(&chunk_api, &object).await?;
        }
        let module = object_of(
            "WasmModule",
            &module_name,
            json!({"digest": digest, "size": wasm.len(), "chunks": chunks.len()}),
        )?;
        create_or_keep(&modules, &module).await?;
    }
    let plugins = api(client, "WasmPlugin");
    let mut spec = json!({"kind": kind.name(), "module": {"digest": digest}});
    if let Some(config) = config {
        spec["config"] = config;
    }
    match plugins
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read WasmPlugin {name}: {e}"))?
    {
        Some(mut current) => {
            let old = &current.data["spec"];
            if old["kind"] != spec["kind"] {
                return Err(format!(
                    "WasmPlugin {name} is a {} plugin, not {}",
                    old["kind"].as_str().unwrap_or("?"),
                    kind.name()
                ));
            }
            // Keep limits and failure policy; replace the module and, if given, the config.
            let mut merged = old.clone();
            merged["module"] = spec["module"].clone();
            if spec.get("config").is_some() {
                merged["config"] = spec["config"].clone();
            }
            current.data["spec"] = merged;
            plugins
                .replace(name, &PostParams::default(), &current)
                .await
                .map_err(|e| format!("cannot update WasmPlugin {name}: {e}"))?;
        }
        None => {
            let object = object_of("WasmPlugin", name, spec)?;
            plugins
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| format!("cannot create WasmPlugin {name}: {e}"))?;
        }
    }
    Ok(digest)
}

fn object_of(kind: &str, name: &str, spec: Value) -> Result<DynamicObject, String> {
    serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .map_err(|e| e.to_string())
}

async fn create_or_keep(api: &Api<DynamicObject>, object: &DynamicObject) -> Result<(), String> {
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(format!(
            "cannot create {} {}: {e}",
            object.types.as_ref().map_or("object", |t| t.kind.as_str()),
            object.metadata.name.as_deref().unwrap_or_default()
        )),
    }
}

/// Creates a WasmPlugin of `kind` for each named built-in module this binary carries (module
/// `builtin: <name>`, labelled `plugins.flotilla.dev/builtin`, with `limits` when given), and
/// moves those still pointing at a built-in module to this binary's digest (setting `limits`
/// if they have none). Anything a user changed otherwise is left alone.
pub async fn install_builtins(
    client: &kube::Client,
    kind: World,
    names: &[&str],
    limits: Option<&Value>,
) -> Result<(), kube::Error> {
    let plugins = api(client, "WasmPlugin");
    for name in names {
        let Some(builtin) = flotilla_builtins::find(name) else {
            continue;
        };
        let digest = flotilla_plugin::digest(builtin.wasm);
        match plugins.get_opt(name).await? {
            None => {
                let mut spec =
                    json!({"kind": kind.name(), "module": {"digest": digest, "builtin": name}});
                if let Some(limits) = limits {
                    spec["limits"] = limits.clone();
                }
                let mut object = object_of("WasmPlugin", name, spec).map_err(|e| {
                    kube::Error::SerdeError(serde_json::Error::io(std::io::Error::other(e)))
                })?;
                object.metadata.labels = Some(
                    [(BUILTIN_LABEL.to_owned(), "true".to_owned())]
                        .into_iter()
                        .collect(),
                );
                ignore_conflict(plugins.create(&PostParams::default(), &object).await)?;
            }
            Some(mut current) => {
                let module = &current.data["spec"]["module"];
                if module["builtin"] == *name && module["digest"] != digest.as_str() {
                    current.data["spec"]["module"]["digest"] = json!(digest);
                    if let Some(limits) = limits
                        && current.data["spec"].get("limits").is_none()
                    {
                        current.data["spec"]["limits"] = limits.clone();
                    }
                    ignore_conflict(
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

/// The label on the WasmPlugins a cluster starts with.
pub const BUILTIN_LABEL: &str = "plugins.flotilla.dev/builtin";

/// A create or replace that lost a race to another writer is fine: someone installed it.
fn ignore_conflict<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_loads_back_off_like_image_pulls() {
        let secs: Vec<u64> = (0..8).map(|n| load_backoff(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
