//! The control loop: AdmissionPolicies and WasmPlugins watched through the API, each policy's
//! plugin loaded into a pool (a swap loads and self-checks the new module first; one that fails
//! is refused and the old one keeps serving), the policies published in the order they run,
//! and their status written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::plugins::{self, ComponentStatus, Reporter, WasmPluginSpec};
use flotilla_controllers::api::{Reader, Writer};
use flotilla_controllers::informer::{Informer, Informers, KindKey};
use flotilla_plugin::{Health, Services};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::policy::{Compiled, KindRef, Mode};
use crate::pool::Pool;
use crate::{Active, Admission, Live};

/// The Namespace resource (namespace selectors read it from the shared cache).
pub fn namespaces() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Namespace"), "namespaces")
}

/// The AdmissionPolicy resource.
pub fn policies() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(plugins::GROUP, plugins::VERSION, "AdmissionPolicy"),
        "admissionpolicies",
    )
}

/// The name this host reports under in a WasmPlugin's status, per policy.
fn component(policy: &str) -> String {
    format!("admission/{policy}")
}

/// What a policy's pool is made from: a change to any of it loads a new pool.
#[derive(Clone, Debug, PartialEq)]
struct LoadKey {
    plugin: String,
    spec: WasmPluginSpec,
    timeout: Duration,
    reads: Vec<KindRef>,
    writes: Vec<KindRef>,
}

#[derive(Debug, Default)]
struct Slot {
    serving: Option<(LoadKey, Arc<Pool>)>,
    /// The last spec refused, why, and when to try it again.
    refused: Option<(LoadKey, String, Instant)>,
    failures: u32,
    /// The status last written, so an unchanged one is not written again.
    written: Option<Value>,
}

struct Inner {
    client: kube::Client,
    informers: Informers,
    options: crate::Options,
    reporter: Reporter,
    slots: Mutex<HashMap<String, Slot>>,
    namespaces: std::sync::OnceLock<Arc<Informer>>,
    /// Where policies' writers would send events (they may send none).
    events: Arc<flotilla_controllers::events::Recorder>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// The admission host's handle on its control loop and shared cache.
#[derive(Clone, Debug)]
pub struct Handle {
    inner: Arc<Inner>,
}

pub fn start(admission: Admission, client: kube::Client, stop: CancellationToken) -> Handle {
    let handle = Handle {
        inner: Arc::new(Inner {
            informers: Informers::new(client.clone(), stop.clone()),
            options: admission.shared.options.clone(),
            reporter: Reporter::start(client.clone(), stop.clone()),
            events: flotilla_controllers::events::Recorder::start(client.clone(), stop.clone()),
            client,
            slots: Mutex::default(),
            namespaces: std::sync::OnceLock::new(),
        }),
    };
    tokio::spawn(
        stop.clone()
            .run_until_cancelled_owned(handle.clone().run(admission, stop)),
    );
    handle
}

fn not_admission(name: &str, spec: &WasmPluginSpec) -> Option<String> {
    (spec.kind != "admission-policy").then(|| {
        format!(
            "WasmPlugin {name:?} is a {}, not an admission-policy",
            spec.kind
        )
    })
}

impl Handle {
    /// A namespace's labels, when the shared cache has the namespace.
    pub fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let informer = self.inner.namespaces.get()?;
        let found = informer.get(None, namespace)?;
        Some(crate::policy::labels(&found))
    }

    /// A pool for checking a policy being applied: the one serving the same plugin spec, or a
    /// fresh one. Errors say why the plugin cannot serve.
    pub async fn pool_for_check(&self, policy: &Compiled) -> Result<Arc<Pool>, String> {
        let name = &policy.spec.plugin;
        let found = plugins::api(&self.inner.client, "WasmPlugin")
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read WasmPlugin {name:?}: {e}"))?
            .ok_or_else(|| format!("WasmPlugin {name:?} not found"))?;
        let spec = WasmPluginSpec::of(&found)?;
        if let Some(error) = not_admission(name, &spec) {
            return Err(error);
        }
        let key = LoadKey {
            plugin: name.clone(),
            spec,
            timeout: policy.timeout,
            reads: policy.spec.reads.clone(),
            writes: policy.spec.writes.clone(),
        };
        let serving = self
            .inner
            .slots
            .lock()
            .await
            .values()
            .filter_map(|slot| slot.serving.as_ref())
            .find(|(k, _)| k.plugin == key.plugin && k.spec == key.spec)
            .map(|(_, pool)| pool.clone());
        match serving {
            Some(pool) => Ok(pool),
            None => self.load(&key).await,
        }
    }

    /// Loads a pool: the declared kinds' informers started and synced, the module fetched or
    /// taken from the artifact cache, a first instance made and self-checked.
    async fn load(&self, key: &LoadKey) -> Result<Arc<Pool>, String> {
        let inner = &self.inner;
        let mut allowed = HashSet::new();
        for read in &key.reads {
            let kind = KindKey::new(&read.api_version, &read.kind);
            let informer = inner
                .informers
                .informer(&kind)
                .await
                .map_err(|e| format!("cannot read {kind}: {e}"))?;
            tokio::time::timeout(Duration::from_secs(30), informer.synced())
                .await
                .map_err(|_| format!("the cache of {kind} did not fill within 30s"))?;
            allowed.insert(kind);
        }
        let module = plugins::load(
            &inner.options.plugin_host,
            &inner.client,
            &key.plugin,
            &key.spec,
        )
        .await?;
        let mut limits = key.spec.limits(&inner.options.default_limits);
        limits.call_deadline = key.timeout;
        let api: Option<Arc<dyn flotilla_plugin::ApiWriter>> = if key.writes.is_empty() {
            None
        } else {
            Some(Arc::new(crate::writes::StatusWriter {
                writer: Writer {
                    client: inner.client.clone(),
                    informers: inner.informers.clone(),
                    events: inner.events.clone(),
                    manager: format!("admission-policy/{}", key.plugin),
                    written: std::sync::Mutex::default(),
                },
                allowed: key
                    .writes
                    .iter()
                    .map(|w| KindKey::new(&w.api_version, &w.kind))
                    .collect(),
            }))
        };
        let services = Services {
            config: key.spec.config_json(),
            cache: Some(Arc::new(Reader {
                informers: inner.informers.clone(),
                allowed,
            })),
            api,
            ..Services::default()
        };
        Pool::start(module, limits, services).await.map(Arc::new)
    }

    async fn run(self, admission: Admission, stop: CancellationToken) {
        let namespaces_kind = KindKey::new("v1", "Namespace");
        let mut delay = Duration::from_millis(100);
        let namespaces = loop {
            match self.inner.informers.informer(&namespaces_kind).await {
                Ok(informer) => break informer,
                Err(error) => {
                    tracing::debug!("admission waiting for the API: {error}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let _ = self.inner.namespaces.set(namespaces);
        let client = &self.inner.client;
        if self.inner.options.install_builtins {
            // Before the first load, so the policies are in force from the first request on;
            // but never holding requests back for long: past the deadline the first load goes
            // ahead, and what is missing is the operator's to see in the log.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut delay = Duration::from_millis(100);
            while let Err(error) =
                crate::builtins::install(client, &self.inner.options.disabled_builtins).await
            {
                if Instant::now() > deadline {
                    tracing::error!(
                        "the built-in admission policies are not all installed: {error}"
                    );
                    break;
                }
                tracing::debug!("cannot install the built-in admission policies yet: {error}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        let policies_write = reflector::store::Writer::new(policies());
        let policies_read = policies_write.as_reader();
        let plugins_write = reflector::store::Writer::new(plugins::resource("WasmPlugin"));
        let plugins_read = plugins_write.as_reader();
        let (changed, mut changes) = mpsc::channel::<()>(16);
        let policy_stream = reflector(
            policies_write,
            watcher(
                Api::<DynamicObject>::all_with(client.clone(), &policies()),
                watcher::Config::default(),
            ),
        );
        let plugin_stream = reflector(
            plugins_write,
            watcher(
                plugins::api(client, "WasmPlugin"),
                watcher::Config::default(),
            ),
        );
        for (stream, what) in [
            (policy_stream.boxed(), "AdmissionPolicy"),
            (plugin_stream.boxed(), "WasmPlugin"),
        ] {
            let changed = changed.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut stream =
                    std::pin::pin!(stream.default_backoff().take_until(stop.cancelled_owned()));
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(_) => {
                            let _ = changed.try_send(());
                        }
                        Err(error) => tracing::warn!("{what} watch: {error}"),
                    }
                }
            });
        }
        let _ = tokio::join!(
            policies_read.wait_until_ready(),
            plugins_read.wait_until_ready()
        );
        loop {
            let retry = self
                .reconcile(&admission, &policies_read.state(), &plugins_read.state())
                .await;
            let wait = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = changes.recv() => if next.is_none() { return },
                () = wait => {}
            }
            while changes.try_recv().is_ok() {}
        }
    }

    /// Brings every policy's pool to its spec, publishes the policies, writes their status;
    /// returns when a refused load is next due again.
    async fn reconcile(
        &self,
        admission: &Admission,
        policy_objects: &[Arc<DynamicObject>],
        plugin_objects: &[Arc<DynamicObject>],
    ) -> Option<Instant> {
        let plugins_by_name: HashMap<&str, &DynamicObject> = plugin_objects
            .iter()
            .filter_map(|p| Some((p.metadata.name.as_deref()?, &**p)))
            .collect();
        let mut active = Active::default();
        let mut seen = HashSet::new();
        let mut next_retry: Option<Instant> = None;
        let mut statuses = Vec::new();
        for object in policy_objects {
            let value = serde_json::to_value(&**object).unwrap_or_default();
            let Some(name) = object.metadata.name.clone() else {
                continue;
            };
            seen.insert(name.clone());
            let compiled = match Compiled::of(&value) {
                Ok(compiled) => compiled,
                Err(error) => {
                    statuses.push((name, None, condition(false, "Invalid", &error), None));
                    continue;
                }
            };
            let wanted = match plugins_by_name.get(compiled.spec.plugin.as_str()) {
                None => Err(format!("WasmPlugin {:?} not found", compiled.spec.plugin)),
                Some(plugin) => WasmPluginSpec::of(plugin).and_then(|spec| {
                    match not_admission(&compiled.spec.plugin, &spec) {
                        Some(error) => Err(error),
                        None => Ok(LoadKey {
                            plugin: compiled.spec.plugin.clone(),
                            spec,
                            timeout: compiled.timeout,
                            reads: compiled.spec.reads.clone(),
                            writes: compiled.spec.writes.clone(),
                        }),
                    }
                }),
            };
            let (pool, status, retry) = self.bring(&name, wanted, &compiled).await;
            if let Some(at) = retry {
                next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
            }
            statuses.push((name, Some(compiled.spec.plugin.clone()), status.0, status.1));
            let live = Arc::new(Live {
                policy: compiled,
                pool,
            });
            match live.policy.spec.mode {
                Mode::Mutating => active.mutating.push(live),
                Mode::Validating => active.validating.push(live),
            }
        }
        active.mutating.sort_by(|a, b| {
            (a.policy.spec.order, &a.policy.name).cmp(&(b.policy.spec.order, &b.policy.name))
        });
        active
            .validating
            .sort_by(|a, b| a.policy.name.cmp(&b.policy.name));
        admission.publish(active);
        let mut slots = self.inner.slots.lock().await;
        slots.retain(|name, _| seen.contains(name));
        for (name, plugin, condition, digest) in statuses {
            let slot = slots.entry(name.clone()).or_default();
            let status = json!({"digest": digest, "conditions": [condition]});
            if slot.written.as_ref() == Some(&status) {
                continue;
            }
            let mut stamped = status.clone();
            stamped["conditions"][0]["lastTransitionTime"] = json!(flotilla_client::now_rfc3339());
            let api = Api::<DynamicObject>::all_with(self.inner.client.clone(), &policies());
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": stamped})),
                )
                .await
            {
                Ok(_) => slot.written = Some(status),
                Err(error) => tracing::warn!(policy = name, "cannot write status: {error}"),
            }
            if let (Some(plugin), Some((key, pool))) = (plugin, &slot.serving) {
                let report = ComponentStatus::of(
                    Some(&key.spec.module.digest),
                    Some(pool.module.digest()),
                    slot.refused.as_ref().map(|(_, why, _)| why.as_str()),
                    &Health::default(),
                    &pool.version,
                );
                self.inner.reporter.send(&plugin, &component(&name), report);
            }
        }
        next_retry
    }

    /// One policy's pool brought to its wanted spec: what serves, the status to show (Ready
    /// condition, digest), and when a refused load is due again.
    async fn bring(
        &self,
        name: &str,
        wanted: Result<LoadKey, String>,
        policy: &Compiled,
    ) -> (
        Result<Arc<Pool>, String>,
        (Value, Option<String>),
        Option<Instant>,
    ) {
        let on_failure = match policy.spec.failure_policy {
            crate::policy::FailurePolicy::Fail => "requests it matches are refused",
            crate::policy::FailurePolicy::Ignore => "requests it matches are admitted",
        };
        let key = match wanted {
            Ok(key) => key,
            Err(error) => {
                let mut slots = self.inner.slots.lock().await;
                let slot = slots.entry(name.to_owned()).or_default();
                slot.serving = None;
                slot.refused = None;
                let message = format!("{error}; {on_failure}");
                return (
                    Err(error),
                    (condition(false, "PluginUnavailable", &message), None),
                    None,
                );
            }
        };
        let (serving, due) = {
            let mut slots = self.inner.slots.lock().await;
            let slot = slots.entry(name.to_owned()).or_default();
            let serving = slot.serving.clone();
            let due = match &slot.refused {
                Some((refused, _, at)) if *refused == key => Instant::now() >= *at,
                _ => true,
            };
            (serving, due)
        };
        let current = serving
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, p)| p.clone());
        if current.is_none() && due {
            match self.load(&key).await {
                Ok(pool) => {
                    tracing::info!(
                        policy = name,
                        digest = pool.module.digest(),
                        "admission policy loaded"
                    );
                    let mut slots = self.inner.slots.lock().await;
                    let slot = slots.entry(name.to_owned()).or_default();
                    slot.serving = Some((key.clone(), pool.clone()));
                    slot.refused = None;
                    slot.failures = 0;
                }
                Err(error) => {
                    tracing::warn!(policy = name, "refused {}: {error}", key.spec.module.digest);
                    let mut slots = self.inner.slots.lock().await;
                    let slot = slots.entry(name.to_owned()).or_default();
                    let at = Instant::now() + plugins::load_backoff(slot.failures);
                    slot.failures = slot.failures.saturating_add(1);
                    slot.refused = Some((
                        key.clone(),
                        format!("refused {}: {error}", key.spec.module.digest),
                        at,
                    ));
                }
            }
        }
        let slots = self.inner.slots.lock().await;
        let slot = &slots[name];
        let refused = slot.refused.as_ref().filter(|(k, _, _)| *k == key);
        let retry = refused.map(|(_, _, at)| *at);
        let pool = slot.serving.as_ref().map(|(_, pool)| pool.clone());
        let digest = pool.as_ref().map(|p| p.module.digest().to_owned());
        let status = match (&pool, refused) {
            (Some(pool), None) => condition(
                true,
                "Serving",
                &format!(
                    "plugin {} {} ({})",
                    key.plugin,
                    pool.version,
                    pool.module.digest()
                ),
            ),
            (Some(pool), Some((_, why, _))) => condition(
                false,
                "SwapRefused",
                &format!("{why}; still serving {}", pool.module.digest()),
            ),
            (None, Some((_, why, _))) => {
                condition(false, "PluginUnavailable", &format!("{why}; {on_failure}"))
            }
            (None, None) => condition(false, "Loading", "the plugin is being loaded"),
        };
        let pool = pool.ok_or_else(|| {
            refused.map_or_else(
                || "the plugin is being loaded".to_owned(),
                |(_, why, _)| why.clone(),
            )
        });
        (pool, (status, digest), retry)
    }
}

fn condition(ready: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": reason,
        "message": message,
    })
}
