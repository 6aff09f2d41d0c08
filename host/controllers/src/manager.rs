//! The controller manager: while it leads (a Lease in `kube-system`), it runs every WasmPlugin
//! of kind `controller`. Each controller has one work queue, kept for its whole life, and
//! workers that each hold an instance of the version current when they took their key: a hot
//! swap loads and checks the new version, then the next keys go to it while reconciles in
//! flight finish on the old one. A controller whose calls trap, loop past their deadline or
//! fail is retried with back-off and reported Degraded; the others are not affected.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::selector::LabelSelector;
use flotilla_client::plugins::{self, ComponentStatus, WasmPluginSpec};
use flotilla_plugin::bindings::reconciler::{KeyMapping, Registration};
use flotilla_plugin::bindings::types::ObjectRef;
use flotilla_plugin::{Controller, EngineConfig, Health, Limits, Module, PluginHost, Services};
use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::api::{Expectation, Reader, Writer};
use crate::informer::{Change, Informer, Informers, KindKey};
use crate::queue::{Backoff, Queue};

/// The Lease the managers elect their leader with.
pub const LEASE: &str = "flotilla-controller-manager";
/// Longest a reconcile waits for the cache to show the previous reconcile's writes.
const EXPECTATION_WAIT: Duration = Duration::from_secs(5);
/// Most workers one controller may ask for.
const MAX_WORKERS: u32 = 16;

/// How a manager runs.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// This replica's identity in leader election.
    pub identity: String,
    /// Compiled artifacts are kept here (none: in memory).
    pub cache_dir: Option<PathBuf>,
    /// Create the built-in controllers' WasmPlugins when missing.
    pub install_builtins: bool,
    pub election: flotilla_client::leader::Timings,
    pub backoff: Backoff,
}

impl ManagerOptions {
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            cache_dir: None,
            install_builtins: true,
            election: flotilla_client::leader::Timings::default(),
            backoff: Backoff::default(),
        }
    }
}

/// A key of a controller's queue: one object of its primary kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Key {
    fn of(kind: &KindKey, object: &Value) -> Self {
        Self {
            api_version: kind.api_version.clone(),
            kind: kind.kind.clone(),
            namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
            name: object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    fn to_ref(&self) -> ObjectRef {
        ObjectRef {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn from_ref(key: ObjectRef) -> Self {
        Self {
            api_version: key.api_version,
            kind: key.kind,
            namespace: key.namespace,
            name: key.name,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}", ns, self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Runs the manager until `stop`: elects, and while leading runs the controllers.
pub async fn run(client: kube::Client, options: ManagerOptions, stop: CancellationToken) {
    let host = match PluginHost::new(EngineConfig {
        cache_dir: options.cache_dir.clone(),
        ..EngineConfig::default()
    }) {
        Ok(host) => host,
        Err(error) => {
            tracing::error!("the controller manager cannot start wasmtime: {error}");
            return;
        }
    };
    if options.install_builtins {
        let mut delay = Duration::from_millis(100);
        while let Err(error) = crate::defaults::install(&client).await {
            tracing::debug!("cannot install the built-in controllers yet: {error}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    let mut leading = flotilla_client::leader::elect(
        client.clone(),
        "kube-system",
        LEASE,
        &options.identity,
        options.election.clone(),
    );
    loop {
        tokio::select! {
            result = leading.wait_for(|l| *l) => if result.is_err() { return },
            _ = stop.cancelled() => return,
        }
        tracing::info!(identity = options.identity, "leading: running controllers");
        let term = stop.child_token();
        tokio::spawn(term.clone().run_until_cancelled_owned(run_controllers(
            client.clone(),
            host.clone(),
            options.clone(),
            term.clone(),
        )));
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => {
                tracing::warn!(identity = options.identity, "lost leadership: controllers stop");
            }
            _ = stop.cancelled() => {}
        }
        term.cancel();
    }
}

/// Keeps one [`Slot`] per controller WasmPlugin.
async fn run_controllers(
    client: kube::Client,
    host: PluginHost,
    options: ManagerOptions,
    term: CancellationToken,
) {
    let informers = Informers::new(client.clone(), term.clone());
    let discovery = watch_definitions(informers.clone(), term.clone());
    let shared = Term {
        component: format!("controller-manager/{}", options.identity),
        client: client.clone(),
        host: host.clone(),
        informers: informers.clone(),
        backoff: options.backoff,
        discovery,
    };
    let mut slots: HashMap<String, Arc<Slot>> = HashMap::new();
    let api = plugins::api(&client, "WasmPlugin");
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    let mut listed: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        let seen = |object: DynamicObject, slots: &mut HashMap<String, Arc<Slot>>| {
            let name = object.metadata.name.clone().unwrap_or_default();
            let spec = match WasmPluginSpec::of(&object) {
                Ok(spec) if spec.kind == "controller" => spec,
                _ => {
                    if let Some(slot) = slots.remove(&name) {
                        slot.stop.cancel();
                    }
                    return None;
                }
            };
            let slot = slots
                .entry(name.clone())
                .or_insert_with(|| Slot::start(name.clone(), &shared, term.child_token()));
            slot.offer(spec);
            Some(name)
        };
        match event {
            Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(object)) => {
                if let Some(name) = seen(object, &mut slots)
                    && let Some(listed) = &mut listed
                {
                    listed.insert(name);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listed.take().unwrap_or_default();
                slots.retain(|name, slot| {
                    let keep = listed.contains(name);
                    if !keep {
                        slot.stop.cancel();
                    }
                    keep
                });
            }
            Ok(watcher::Event::Apply(object)) => {
                seen(object, &mut slots);
            }
            Ok(watcher::Event::Delete(object)) => {
                let name = object.metadata.name.unwrap_or_default();
                if let Some(slot) = slots.remove(&name) {
                    tracing::info!(plugin = name, "controller removed");
                    slot.stop.cancel();
                }
            }
            Err(error) => {
                tracing::warn!("WasmPlugin watch failed, retrying: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Counts changes to CustomResourceDefinitions: the kinds the API serves. Controllers that
/// register from discovery (the garbage collector follows every custom resource) register
/// again when it moves.
fn watch_definitions(
    informers: Informers,
    term: CancellationToken,
) -> tokio::sync::watch::Receiver<u64> {
    let (changed, discovery) = tokio::sync::watch::channel(0u64);
    tokio::spawn(term.run_until_cancelled_owned(async move {
        let kind = KindKey::new("apiextensions.k8s.io/v1", "CustomResourceDefinition");
        let informer = loop {
            match informers.informer(&kind).await {
                Ok(informer) => break informer,
                Err(error) => {
                    tracing::debug!("no informer for definitions yet: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        use tokio::sync::broadcast::error::RecvError;
        let mut changes = informer.subscribe();
        informer.synced().await;
        loop {
            match changes.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    changed.send_modify(|n| *n += 1);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }));
    discovery
}

/// One loaded, checked version of a controller.
struct Version {
    module: Module,
    spec: WasmPluginSpec,
    limits: Limits,
    registration: Registration,
    /// The kinds it may read: its primary kind and everything it watches.
    kinds: HashSet<KindKey>,
    primary: KindKey,
    info_version: String,
    /// Each watch's label selector, parsed once.
    selectors: Vec<LabelSelector>,
    /// Maps events for `custom` watches.
    mapper: tokio::sync::Mutex<Option<Controller>>,
    /// Ends this version's event mapping when the next version takes over.
    mapping: CancellationToken,
}

/// One controller: its queue, its current version and its workers.
struct Slot {
    name: String,
    /// How this manager names itself on WasmPlugin status.
    component: String,
    client: kube::Client,
    host: PluginHost,
    informers: Informers,
    /// The controller's events, filtered per object across instances and versions.
    events: Arc<crate::events::Recorder>,
    queue: Arc<Queue<Key>>,
    /// The version new keys go to; a worker holds its `Arc` for the length of a reconcile.
    current: Mutex<Option<Arc<Version>>>,
    /// The spec being served or loaded, so an unchanged spec is not loaded twice.
    wanted: Mutex<Option<WasmPluginSpec>>,
    /// What the previous reconcile of each key wrote.
    expectations: Mutex<HashMap<Key, Vec<Expectation>>>,
    health: Mutex<Health>,
    /// The last status written; held across a report's write, so reports land in the order
    /// they were made and an older one never overwrites a newer one.
    reported: tokio::sync::Mutex<Option<ComponentStatus>>,
    last_error: Mutex<String>,
    workers: Mutex<u32>,
    stop: CancellationToken,
}

/// What every slot of one term shares.
#[derive(Clone)]
struct Term {
    /// How the manager names itself on WasmPlugin status.
    component: String,
    client: kube::Client,
    host: PluginHost,
    informers: Informers,
    backoff: Backoff,
    /// Moves when CustomResourceDefinitions change.
    discovery: tokio::sync::watch::Receiver<u64>,
}

impl Slot {
    fn start(name: String, term: &Term, stop: CancellationToken) -> Arc<Self> {
        let Term {
            component,
            client,
            host,
            informers,
            backoff,
            discovery,
        } = term.clone();
        let queue = Queue::new(backoff);
        let stopping = queue.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            stopping.shut_down();
        });
        let events = crate::events::Recorder::start(client.clone(), stop.clone());
        let slot = Arc::new(Self {
            name,
            component,
            client,
            host,
            events,
            informers,
            queue,
            current: Mutex::new(None),
            wanted: Mutex::new(None),
            expectations: Mutex::default(),
            health: Mutex::default(),
            reported: tokio::sync::Mutex::new(None),
            last_error: Mutex::default(),
            workers: Mutex::new(0),
            stop,
        });
        let rediscovering = slot.clone();
        let mut discovery = discovery;
        discovery.mark_unchanged();
        tokio::spawn(slot.stop.clone().run_until_cancelled_owned(async move {
            while discovery.changed().await.is_ok() {
                // Definitions often change in runs (created, then established): wait for
                // the run to end.
                tokio::time::sleep(Duration::from_millis(200)).await;
                discovery.mark_unchanged();
                rediscovering.rediscover().await;
            }
        }));
        slot
    }

    /// After the served kinds changed: if the current version registers differently now, it
    /// is loaded again with its new registration (the queue is kept, as in a hot swap).
    async fn rediscover(self: &Arc<Self>) {
        let Some(version) = self.current() else {
            return;
        };
        let registration = match self
            .register(&version.module, &version.spec, version.limits.clone())
            .await
        {
            Ok((_, registration)) => registration,
            Err(error) => {
                tracing::warn!(
                    plugin = self.name,
                    "controller not registered again: {error}"
                );
                return;
            }
        };
        if registration == version.registration {
            return;
        }
        tracing::info!(
            plugin = self.name,
            "the served kinds changed: registering again"
        );
        match self.load(version.spec.clone()).await {
            Ok(loaded) => {
                let still_wanted = self
                    .wanted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    == Some(&version.spec);
                if still_wanted {
                    self.serve(loaded);
                }
            }
            Err(error) => tracing::warn!(plugin = self.name, "controller not reloaded: {error}"),
        }
    }

    /// A fresh instance's self-check, information and registration. It may ask the API which
    /// kinds are served (`api.resources`) but reads no cache.
    async fn register(
        &self,
        module: &Module,
        spec: &WasmPluginSpec,
        limits: Limits,
    ) -> Result<(String, Registration), String> {
        let services = self.services(spec, &HashSet::new(), Some(self.writer()));
        let mut instance = module
            .instantiate(limits, services)
            .await
            .map_err(|e| e.to_string())?;
        instance.self_check().await.map_err(|e| e.to_string())?;
        let info = instance.info().await.map_err(|e| e.to_string())?;
        let mut controller = Controller::new(instance).map_err(|e| e.to_string())?;
        let registration = controller.register().await.map_err(|e| e.to_string())?;
        Ok((info.version, registration))
    }

    fn current(&self) -> Option<Arc<Version>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A spec seen on the WasmPlugin: load it unless it is what runs or loads already.
    fn offer(self: &Arc<Self>, spec: WasmPluginSpec) {
        {
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            if wanted.as_ref() == Some(&spec) {
                return;
            }
            *wanted = Some(spec.clone());
        }
        let slot = self.clone();
        tokio::spawn(self.stop.clone().run_until_cancelled_owned(async move {
            let loaded = slot.load(spec.clone()).await;
            // A spec offered meanwhile is loading too: this one is stale, whichever ends first.
            let still_wanted = slot
                .wanted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                == Some(&spec);
            if !still_wanted {
                return;
            }
            match loaded {
                Ok(version) => slot.serve(version),
                Err(error) => {
                    tracing::warn!(plugin = slot.name, "controller not loaded: {error}");
                    *slot.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
                    slot.report().await;
                }
            }
        }));
    }

    /// Loads and checks a version: its module, a fresh instance's self-check and registration,
    /// and informers for everything it declares.
    async fn load(&self, spec: WasmPluginSpec) -> Result<Version, String> {
        let module = plugins::load(&self.host, &self.client, &self.name, &spec).await?;
        let limits = spec.limits(&Limits::default());
        let (info_version, registration) = self.register(&module, &spec, limits.clone()).await?;
        let primary = KindKey::new(
            &registration.primary_api_version,
            &registration.primary_kind,
        );
        let mut kinds: HashSet<KindKey> = registration
            .watches
            .iter()
            .map(|w| KindKey::new(&w.api_version, &w.kind))
            .collect();
        kinds.insert(primary.clone());
        for kind in &kinds {
            let informer = self.informers.informer(kind).await?;
            informer.synced().await;
        }
        let selectors = registration
            .watches
            .iter()
            .map(|watch| {
                watch
                    .label_selector
                    .parse::<LabelSelector>()
                    .map_err(|e| format!("watch of {}: label selector: {e}", watch.kind))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let custom = registration
            .watches
            .iter()
            .any(|w| matches!(w.mapping, KeyMapping::Custom));
        let mapper = if custom {
            // It may ask the API what is served (`api.resources`), as the load instance did.
            let services = self.services(&spec, &kinds, Some(self.writer()));
            let instance = module
                .instantiate(limits.clone(), services)
                .await
                .map_err(|e| e.to_string())?;
            Some(Controller::new(instance).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Version {
            module,
            spec,
            limits,
            registration,
            selectors,
            kinds,
            primary,
            info_version,
            mapper: tokio::sync::Mutex::new(mapper),
            mapping: self.stop.child_token(),
        })
    }

    /// API writes as this controller, for one instance.
    fn writer(&self) -> Arc<Writer> {
        Arc::new(Writer {
            client: self.client.clone(),
            informers: self.informers.clone(),
            events: self.events.clone(),
            manager: self.name.clone(),
            written: Mutex::default(),
        })
    }

    fn services(
        &self,
        spec: &WasmPluginSpec,
        kinds: &HashSet<KindKey>,
        writer: Option<Arc<Writer>>,
    ) -> Services {
        Services {
            config: spec.config_json(),
            cache: Some(Arc::new(Reader {
                informers: self.informers.clone(),
                allowed: kinds.clone(),
            })),
            api: writer.map(|w| w as Arc<dyn flotilla_plugin::ApiWriter>),
            load: None,
        }
    }

    /// Makes `version` current: its event mapping starts, the previous version's stops, every
    /// object of the primary kind is queued, and workers are added up to what it asks for.
    fn serve(self: &Arc<Self>, version: Version) {
        let version = Arc::new(version);
        let previous = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(version.clone());
        if let Some(previous) = previous {
            previous.mapping.cancel();
            tracing::info!(
                plugin = self.name,
                from = previous.module.digest(),
                to = version.module.digest(),
                "controller swapped"
            );
        } else {
            tracing::info!(
                plugin = self.name,
                digest = version.module.digest(),
                "controller running"
            );
        }
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = Health::default();
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for (index, watch) in version.registration.watches.iter().enumerate() {
            let kind = KindKey::new(&watch.api_version, &watch.kind);
            if let Some(informer) = self.informers.running(&kind) {
                let slot = self.clone();
                let version = version.clone();
                let custom = matches!(watch.mapping, KeyMapping::Custom);
                // Subscribed before listing, so nothing between the two is missed.
                let changes = informer.subscribe();
                tokio::spawn(
                    version
                        .mapping
                        .clone()
                        .run_until_cancelled_owned(async move {
                            // Keys a custom mapping finds in what exists already (primary keys are
                            // all queued anyway).
                            if custom {
                                for object in informer.list(None) {
                                    let change = Change {
                                        old: None,
                                        new: Some(object),
                                    };
                                    for key in slot.keys_for(&version, Some(index), &change).await {
                                        slot.queue.add(key);
                                    }
                                }
                            }
                            slot.map_events(version, informer, changes, Some(index))
                                .await;
                        }),
                );
            }
        }
        if let Some(informer) = self.informers.running(&version.primary) {
            let slot = self.clone();
            let resync = version.registration.resync_seconds;
            let v = version.clone();
            let changes = informer.subscribe();
            tokio::spawn(
                version
                    .mapping
                    .clone()
                    .run_until_cancelled_owned(async move {
                        slot.enqueue_all(&informer);
                        let resync = async {
                            match resync {
                                Some(seconds) if seconds > 0 => {
                                    let mut ticker = tokio::time::interval(Duration::from_secs(
                                        u64::from(seconds),
                                    ));
                                    ticker.tick().await;
                                    loop {
                                        ticker.tick().await;
                                        slot.enqueue_all(&informer);
                                    }
                                }
                                _ => std::future::pending().await,
                            }
                        };
                        tokio::join!(
                            slot.clone().map_events(v, informer.clone(), changes, None),
                            resync
                        );
                    }),
            );
        }
        let wanted = version.registration.workers.clamp(1, MAX_WORKERS);
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while *workers < wanted {
            *workers += 1;
            let slot = self.clone();
            tokio::spawn(self.stop.clone().run_until_cancelled_owned(slot.work()));
        }
        drop(workers);
        let slot = self.clone();
        tokio::spawn(async move { slot.report().await });
    }

    fn enqueue_all(&self, informer: &Informer) {
        for object in informer.list(None) {
            self.queue.add(Key::of(&informer.kind, &object));
        }
    }

    /// Turns changes of one watched kind (`watch` index; none: the primary kind) into keys.
    async fn map_events(
        self: Arc<Self>,
        version: Arc<Version>,
        informer: Arc<Informer>,
        mut changes: tokio::sync::broadcast::Receiver<Change>,
        watch: Option<usize>,
    ) {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    for key in self.keys_for(&version, watch, &change).await {
                        self.queue.add(key);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        plugin = self.name,
                        missed,
                        "fell behind the {} informer: resyncing",
                        informer.kind
                    );
                    if let Some(primary) = self.informers.running(&version.primary) {
                        self.enqueue_all(&primary);
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn keys_for(&self, version: &Version, watch: Option<usize>, change: &Change) -> Vec<Key> {
        let objects: Vec<&Value> = change
            .old
            .iter()
            .chain(change.new.iter())
            .map(|o| &**o)
            .collect();
        let Some(index) = watch else {
            return objects
                .first()
                .map(|o| vec![Key::of(&version.primary, o)])
                .unwrap_or_default();
        };
        let watch = &version.registration.watches[index];
        let selector = &version.selectors[index];
        let mut keys = Vec::new();
        for object in objects
            .iter()
            .filter(|o| selector.matches(&crate::labels(o)))
        {
            match &watch.mapping {
                KeyMapping::Primary => keys.push(Key::of(&version.primary, object)),
                KeyMapping::Owner(kind) => {
                    if let Some(owner) = crate::controller_of(object)
                        && owner["kind"].as_str() == Some(kind.as_str())
                    {
                        keys.push(Key {
                            api_version: owner["apiVersion"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            kind: kind.clone(),
                            namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
                            name: owner["name"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                }
                KeyMapping::SelectedBy(path) => {
                    let Some(primary) = self.informers.running(&version.primary) else {
                        continue;
                    };
                    let labels = crate::labels(object);
                    let namespace = object["metadata"]["namespace"].as_str();
                    for candidate in primary.list(namespace) {
                        if crate::selector_at(&candidate, path).is_some_and(|s| s.matches(&labels))
                        {
                            keys.push(Key::of(&version.primary, &candidate));
                        }
                    }
                }
                KeyMapping::Custom => {
                    let mut mapper = version.mapper.lock().await;
                    if mapper.as_ref().is_none_or(Controller::is_poisoned) {
                        let services = self.services(&version.spec, &version.kinds, None);
                        *mapper = match version
                            .module
                            .instantiate(version.limits.clone(), services)
                            .await
                        {
                            Ok(instance) => Controller::new(instance).ok(),
                            Err(_) => None,
                        };
                    }
                    let Some(mapper) = mapper.as_mut() else {
                        continue;
                    };
                    match mapper.keys_for(index as u32, &object.to_string()).await {
                        Ok(refs) => keys.extend(refs.into_iter().map(Key::from_ref)),
                        Err(error) => {
                            tracing::warn!(plugin = self.name, "keys-for failed: {error}");
                            self.failed(&error);
                        }
                    }
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn failed(&self, error: &impl std::fmt::Display) {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed(error);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
    }

    /// One worker: takes keys and reconciles each with an instance of the version current
    /// when it took the key.
    async fn work(self: Arc<Self>) {
        let mut held: Option<(Arc<Version>, Controller, Arc<Writer>)> = None;
        while let Some(key) = self.queue.next().await {
            let Some(version) = self.current() else {
                self.queue.done(&key);
                continue;
            };
            if held
                .as_ref()
                .is_none_or(|(v, c, _)| !Arc::ptr_eq(v, &version) || c.is_poisoned())
            {
                held = None;
                let writer = self.writer();
                let services = self.services(&version.spec, &version.kinds, Some(writer.clone()));
                match version
                    .module
                    .instantiate(version.limits.clone(), services)
                    .await
                {
                    Ok(instance) => match Controller::new(instance) {
                        Ok(controller) => held = Some((version.clone(), controller, writer)),
                        Err(error) => self.failed(&error),
                    },
                    Err(error) => self.failed(&error),
                }
            }
            let Some((_, controller, writer)) = held.as_mut() else {
                self.queue.retry(key.clone());
                self.queue.done(&key);
                continue;
            };
            // The previous reconcile's writes are in the cache before this one reads it.
            let expected = self
                .expectations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key)
                .unwrap_or_default();
            futures::future::join_all(
                expected
                    .iter()
                    .map(|e| e.met(&self.informers, EXPECTATION_WAIT)),
            )
            .await;
            let outcome = controller.reconcile(&key.to_ref()).await;
            let written = writer.take_written();
            if !written.is_empty() {
                self.expectations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), written);
            }
            match outcome {
                Ok(Ok(after)) => {
                    self.queue.forget(&key);
                    if let Some(ms) = after {
                        self.queue.add_after(key.clone(), Duration::from_millis(ms));
                    }
                }
                Ok(Err(message)) => {
                    let delay = self.queue.retry(key.clone());
                    tracing::debug!(plugin = self.name, %key, ?delay, "reconcile failed: {message}");
                    self.failed(&format!("reconciling {key}: {message}"));
                }
                Err(error) => {
                    let delay = self.queue.retry(key.clone());
                    tracing::warn!(plugin = self.name, %key, ?delay, "reconcile stopped: {error}");
                    self.failed(&error);
                }
            }
            self.queue.done(&key);
            self.report().await;
        }
    }

    /// Reports this controller's state on its WasmPlugin when it changed.
    async fn report(&self) {
        let mut reported = self.reported.lock().await;
        let status = {
            let version = self.current();
            let wanted = self
                .wanted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let degraded = self
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .degraded();
            let error = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let serving_wanted = version
                .as_ref()
                .zip(wanted.as_ref())
                .is_some_and(|(v, w)| v.spec.module.digest == w.module.digest);
            ComponentStatus {
                digest: version.as_ref().map(|v| v.module.digest().to_owned()),
                ready: serving_wanted && !degraded,
                degraded,
                message: if degraded || !serving_wanted {
                    error
                } else {
                    String::new()
                },
                version: version.map(|v| v.info_version.clone()).unwrap_or_default(),
            }
        };
        if reported.as_ref() == Some(&status) {
            return;
        }
        *reported = Some(status.clone());
        if let Err(error) =
            plugins::report(&self.client, &self.name, &self.component, &status).await
        {
            tracing::debug!(plugin = self.name, "cannot report status: {error}");
        }
    }
}
