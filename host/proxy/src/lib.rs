//! The node's service proxy: Flotilla's kube-proxy.
//!
//! Every node runs one (in the agent process, and in `flotilla up`). It watches Services,
//! EndpointSlices and WasmPlugins through the API and carries traffic from Service addresses
//! to endpoints: a listener per ClusterIP port (bound with `SO_REUSEPORT`, so every node's proxy
//! on one host can serve it) and per NodePort on the node's address. TCP ports are spliced per
//! connection (L4); ports whose appProtocol or name says HTTP are proxied per request (L7) over
//! keep-alive connections pooled per endpoint ([`pool`]).
//!
//! Which endpoint gets a connection or request is decided by the Service's strategy: the
//! WasmPlugin of kind `proxy-strategy` its `proxy.flotilla.dev/strategy` annotation names
//! (`client-ip-affinity` for `sessionAffinity: ClientIP` without one), or the native
//! round-robin when it names none. Strategies get every service that uses them whole when it
//! changes and are asked per pick; they read the live per-endpoint counts through
//! `endpoint-load`. A changed WasmPlugin is loaded in the background, instantiated,
//! self-checked and given every service before it replaces the running instance, so a swap
//! fails no request; a strategy that is missing, failing or names an endpoint it may not use is
//! stood in for by the round-robin for that pick. Only ready endpoints get new traffic (serving
//! terminating ones while none is ready), from the moment their EndpointSlice update arrives.
//!
//! This crate holds mechanism only: which endpoint is best is the strategies' business. It must
//! not reach the store, and it does not allocate addresses (the API server does).

pub mod balance;
pub mod dns;
pub mod forward;
pub mod ingress;
pub mod model;
pub mod pool;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use flotilla_client::plugins::{self, ComponentStatus, WasmPluginSpec};
use flotilla_plugin::bindings::balancing;
use flotilla_plugin::{Health, Limits, Module, PluginHost, ProxyStrategy, Services, World};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use balance::{Backend, Endpoint, Live, Load, Shared, Strategy};
use model::PortSpec;

/// The built-in strategies a cluster starts with, as WasmPlugins of the same names.
pub const BUILTIN_STRATEGIES: &[&str] = &[
    "round-robin",
    "random",
    "least-connections",
    "client-ip-affinity",
    "canary",
];

/// How a node's proxy runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node it runs on: its name in plugin status (`proxy/<node>`).
    pub node_name: String,
    /// The address NodePorts are served on.
    pub node_ip: IpAddr,
    pub plugin_host: PluginHost,
    /// Limits of strategy instances whose WasmPlugin sets none: picks are on the request path,
    /// so the deadline is short.
    pub default_limits: Limits,
    /// Create the built-in strategies' WasmPlugins when missing.
    pub install_defaults: bool,
    /// Where the node's DNS server answers (UDP); none: it does not run.
    pub dns: Option<SocketAddr>,
    /// The node's Ingress entries, plain HTTP and HTTPS; none: not served.
    pub ingress_http: Option<SocketAddr>,
    pub ingress_https: Option<SocketAddr>,
}

impl Options {
    pub fn new(node_name: &str, node_ip: IpAddr, plugin_host: PluginHost) -> Self {
        Self {
            node_name: node_name.to_owned(),
            node_ip,
            plugin_host,
            default_limits: Limits {
                memory_bytes: 32 << 20,
                call_deadline: std::time::Duration::from_millis(100),
                boundary_bytes: 4 << 20,
            },
            install_defaults: true,
            dns: Some(SocketAddr::new(node_ip, 53)),
            ingress_http: Some(SocketAddr::new(node_ip, 80)),
            ingress_https: Some(SocketAddr::new(node_ip, 443)),
        }
    }
}

/// A running proxy; stops (listeners closed, watches ended) when dropped.
#[derive(Debug)]
pub struct Handle {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Handle {
    pub fn stats(&self) -> &balance::Stats {
        &self.shared.stats
    }

    /// The Service names, for workloads' name lookups.
    pub fn names(&self) -> Arc<dns::Names> {
        self.shared.names.clone()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

enum Input {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Plugin(Box<watcher::Event<DynamicObject>>),
    Ingress(Box<watcher::Event<Ingress>>),
    Class(Box<watcher::Event<IngressClass>>),
    Secret(Box<watcher::Event<Secret>>),
    Loaded {
        name: String,
        spec: WasmPluginSpec,
        result: Result<Module, String>,
    },
    Retry {
        name: String,
        spec: WasmPluginSpec,
    },
}

/// Starts a node's proxy in the background.
pub async fn start(client: kube::Client, options: Options) -> Result<Handle, kube::Error> {
    if options.install_defaults {
        plugins::install_builtins(&client, World::ProxyStrategy, BUILTIN_STRATEGIES, None).await?;
        install_ingress_class(&client).await?;
    }
    let (tx, rx) = mpsc::channel(4096);
    let (failures_tx, failures) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared::new(failures_tx));
    flotilla_client::forward_watch(
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Service(Box::new(e)),
        stop.clone(),
        "proxy",
    );
    flotilla_client::forward_watch(
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Slice(Box::new(e)),
        stop.clone(),
        "proxy",
    );
    flotilla_client::forward_watch(
        watcher(
            plugins::api(&client, "WasmPlugin"),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Plugin(Box::new(e)),
        stop.clone(),
        "proxy",
    );
    if let Some(addr) = options.dns {
        match dns::bind(addr) {
            Ok(socket) => dns::serve(socket, shared.names.clone(), stop.clone()),
            // Port 53 needs privileges: the proxy works without it, names through workloads'
            // lookups only.
            Err(error) => tracing::warn!(%addr, "the node's DNS server cannot listen: {error}"),
        }
    }
    for (addr, tls) in [(options.ingress_http, false), (options.ingress_https, true)] {
        let Some(addr) = addr else {
            continue;
        };
        match forward::bind(addr) {
            Ok(listener) => ingress::serve(listener, tls, shared.clone(), stop.clone()),
            // Ports 80 and 443 need privileges: Services work without the Ingress entry.
            Err(error) => tracing::warn!(%addr, "the node's Ingress entry cannot listen: {error}"),
        }
    }
    flotilla_client::forward_watch(
        watcher(
            Api::<Ingress>::all(client.clone()),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Ingress(Box::new(e)),
        stop.clone(),
        "proxy",
    );
    flotilla_client::forward_watch(
        watcher(
            Api::<IngressClass>::all(client.clone()),
            watcher::Config::default(),
        ),
        tx.clone(),
        |e| Input::Class(Box::new(e)),
        stop.clone(),
        "proxy",
    );
    flotilla_client::forward_watch(
        watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
        ),
        tx.clone(),
        |e| Input::Secret(Box::new(e)),
        stop.clone(),
        "proxy",
    );
    let reports = plugins::Reporter::start(client.clone(), stop.clone());
    let proxy = Proxy {
        client,
        component: format!("proxy/{}", options.node_name),
        options,
        shared: shared.clone(),
        stop: stop.clone(),
        inputs: tx,
        reports,
        services: HashMap::new(),
        slices: HashMap::new(),
        slice_owner: HashMap::new(),
        seen_services: None,
        seen_slices: None,
        seen_plugins: None,
        dirty: HashSet::new(),
        ports: HashMap::new(),
        by_service: HashMap::new(),
        endpoints: HashMap::new(),
        next_id: 1,
        listeners: HashMap::new(),
        slots: HashMap::new(),
        ingress: ingress::Objects::default(),
        routes_dirty: false,
        relisting: HashMap::new(),
        services_listed: false,
        slices_listed: false,
    };
    tokio::spawn(proxy.run(rx, failures));
    Ok(Handle { shared, stop })
}

/// A change a strategy is told of.
enum Change<'a> {
    Update(&'a balancing::Service),
    Remove(&'a str),
}

/// One WasmPlugin of kind `proxy-strategy` as this proxy runs it.
#[derive(Default)]
struct Slot {
    /// The latest spec seen.
    spec: Option<WasmPluginSpec>,
    /// The module of the running instance, with the spec it was loaded for.
    serving: Option<(Module, WasmPluginSpec)>,
    loading: Option<WasmPluginSpec>,
    refused: Option<String>,
    failed_loads: u32,
    health: Health,
    version: String,
    reported: Option<ComponentStatus>,
}

/// One service port as the proxy carries it.
struct Port {
    spec: PortSpec,
    backend: Arc<Backend>,
}

/// The control loop's state: the objects watched, the ports made of them, the endpoints and
/// listeners they use, and the strategies.
struct Proxy {
    client: kube::Client,
    component: String,
    options: Options,
    shared: Arc<Shared>,
    stop: CancellationToken,
    inputs: mpsc::Sender<Input>,
    reports: plugins::Reporter,
    /// Services by `namespace/name`.
    services: HashMap<String, Service>,
    /// EndpointSlices by their Service's `namespace/name`, then by slice name.
    slices: HashMap<String, BTreeMap<String, EndpointSlice>>,
    /// The Service of each slice (`namespace/slice` → `namespace/service`).
    slice_owner: HashMap<String, String>,
    /// What a relist has shown so far (from its Init to its InitDone).
    seen_services: Option<HashSet<String>>,
    seen_slices: Option<HashSet<String>>,
    seen_plugins: Option<HashSet<String>>,
    /// Services whose ports are to be recomputed.
    dirty: HashSet<String>,
    ports: HashMap<String, Port>,
    by_service: HashMap<String, Vec<String>>,
    /// Endpoints by address, with the number of ports using each.
    endpoints: HashMap<SocketAddr, (Arc<Endpoint>, usize)>,
    next_id: u32,
    listeners: HashMap<SocketAddr, CancellationToken>,
    slots: HashMap<String, Slot>,
    ingress: ingress::Objects,
    /// Ingresses, their classes or Secrets changed: the routes are to be made again.
    routes_dirty: bool,
    /// What the relist of each Ingress-side kind has shown so far.
    relisting: HashMap<&'static str, Option<HashSet<String>>>,
    /// Services and EndpointSlices have been listed once: until then nothing is published,
    /// so a starting proxy never serves a Service as if it had no endpoints.
    services_listed: bool,
    slices_listed: bool,
}

/// Keeps `objects` (by `namespace/name`, or name) in step with a watch; `convert` makes the
/// value kept. A relist replaces the objects only once it is complete (`seen` holds what it
/// showed so far), so nothing drops out while it runs.
fn mirror<K, V>(
    objects: &mut HashMap<String, V>,
    seen: &mut Option<HashSet<String>>,
    event: watcher::Event<K>,
    convert: impl Fn(K) -> Option<V>,
) where
    K: kube::Resource,
{
    let key = |object: &K| {
        let meta = object.meta();
        match &meta.namespace {
            Some(namespace) => format!("{namespace}/{}", meta.name.as_deref().unwrap_or_default()),
            None => meta.name.clone().unwrap_or_default(),
        }
    };
    match event {
        watcher::Event::Init => *seen = Some(HashSet::new()),
        watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
            let name = key(&object);
            if let Some(seen) = seen {
                seen.insert(name.clone());
            }
            match convert(object) {
                Some(value) => objects.insert(name, value),
                None => objects.remove(&name),
            };
        }
        watcher::Event::Delete(object) => {
            objects.remove(&key(&object));
        }
        watcher::Event::InitDone => {
            let seen = seen.take().unwrap_or_default();
            objects.retain(|name, _| seen.contains(name));
        }
    }
}

/// The IngressClass `flotilla`, made the default when no other class is.
async fn install_ingress_class(client: &kube::Client) -> Result<(), kube::Error> {
    let classes: Api<IngressClass> = Api::all(client.clone());
    if classes.get_opt(ingress::CLASS).await?.is_some() {
        return Ok(());
    }
    let other_default = classes
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ingress::DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        });
    let class: IngressClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": ingress::CLASS, "annotations": {
            "ingressclass.kubernetes.io/is-default-class": (!other_default).to_string()}},
        "spec": {"controller": ingress::CONTROLLER},
    }))
    .map_err(kube::Error::SerdeError)?;
    match classes.create(&Default::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn key_of(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The Service an EndpointSlice belongs to, by its label.
fn owner_of(slice: &EndpointSlice) -> Option<String> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(model::SERVICE_NAME_LABEL)?;
    Some(format!(
        "{}/{service}",
        slice.metadata.namespace.as_deref().unwrap_or_default()
    ))
}

/// The record a strategy gets for a port.
fn wit_service(spec: &PortSpec, ids: &[u32]) -> balancing::Service {
    balancing::Service {
        key: spec.key.clone(),
        endpoints: spec
            .endpoints
            .iter()
            .zip(ids)
            .map(|(e, id)| balancing::Endpoint {
                id: *id,
                ip: e.addr.ip().to_string(),
                port: e.addr.port(),
                node: e.node.clone(),
                zone: e.zone.clone(),
                ready: e.ready,
                terminating: e.terminating,
            })
            .collect(),
        annotations: spec.annotations.clone(),
        client_ip_affinity_seconds: spec.affinity_seconds,
    }
}

impl Proxy {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut failures: mpsc::UnboundedReceiver<(String, String)>,
    ) {
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.handle(input).await,
                    None => return,
                },
                Some((plugin, error)) = failures.recv() => self.failed(&plugin, &error).await,
                _ = self.stop.cancelled() => break,
            }
            // Take every input waiting, then apply the changes at once.
            while let Ok(input) = rx.try_recv() {
                self.handle(input).await;
            }
            self.flush().await;
        }
        for (_, stop) in self.listeners.drain() {
            stop.cancel();
        }
    }

    async fn handle(&mut self, input: Input) {
        match input {
            Input::Service(event) => self.service_event(*event),
            Input::Slice(event) => self.slice_event(*event),
            Input::Plugin(event) => self.plugin_event(*event),
            Input::Ingress(event) => {
                let seen = self.relisting.entry("ingresses").or_default();
                mirror(&mut self.ingress.ingresses, seen, *event, Some);
                self.routes_dirty = true;
            }
            Input::Class(event) => {
                let seen = self.relisting.entry("ingressclasses").or_default();
                mirror(&mut self.ingress.classes, seen, *event, Some);
                self.routes_dirty = true;
            }
            Input::Secret(event) => {
                let seen = self.relisting.entry("secrets").or_default();
                mirror(&mut self.ingress.secrets, seen, *event, |secret| {
                    Some(ingress::certified_key(&secret))
                });
                self.routes_dirty = true;
            }
            Input::Loaded { name, spec, result } => self.loaded(name, spec, result).await,
            Input::Retry { name, spec } => {
                let current = self.slots.get(&name).and_then(|s| s.spec.clone());
                if current.as_ref() == Some(&spec) {
                    self.start_load(&name, true);
                }
            }
        }
    }

    fn service_event(&mut self, event: watcher::Event<Service>) {
        match event {
            watcher::Event::Init => self.seen_services = Some(HashSet::new()),
            watcher::Event::InitApply(service) | watcher::Event::Apply(service) => {
                let key = key_of(&service.metadata);
                if let Some(seen) = &mut self.seen_services {
                    seen.insert(key.clone());
                }
                self.dirty.insert(key.clone());
                self.services.insert(key, service);
            }
            watcher::Event::Delete(service) => {
                let key = key_of(&service.metadata);
                self.services.remove(&key);
                self.dirty.insert(key);
            }
            watcher::Event::InitDone => {
                self.services_listed = true;
                let seen = self.seen_services.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .services
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.services.remove(&key);
                    self.dirty.insert(key);
                }
            }
        }
    }

    fn remove_slice(&mut self, slice_key: &str) {
        let Some(owner) = self.slice_owner.remove(slice_key) else {
            return;
        };
        let name = slice_key.split_once('/').map_or(slice_key, |(_, n)| n);
        if let Some(slices) = self.slices.get_mut(&owner) {
            slices.remove(name);
            if slices.is_empty() {
                self.slices.remove(&owner);
            }
        }
        self.dirty.insert(owner);
    }

    fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) {
        match event {
            watcher::Event::Init => self.seen_slices = Some(HashSet::new()),
            watcher::Event::InitApply(slice) | watcher::Event::Apply(slice) => {
                let key = key_of(&slice.metadata);
                if let Some(seen) = &mut self.seen_slices {
                    seen.insert(key.clone());
                }
                // A slice whose label moved leaves its old Service.
                self.remove_slice(&key);
                if let Some(owner) = owner_of(&slice) {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    self.slice_owner.insert(key, owner.clone());
                    self.slices
                        .entry(owner.clone())
                        .or_default()
                        .insert(name, slice);
                    self.dirty.insert(owner);
                }
            }
            watcher::Event::Delete(slice) => self.remove_slice(&key_of(&slice.metadata)),
            watcher::Event::InitDone => {
                self.slices_listed = true;
                let seen = self.seen_slices.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .slice_owner
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.remove_slice(&key);
                }
            }
        }
    }

    fn plugin_event(&mut self, event: watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => self.seen_plugins = Some(HashSet::new()),
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                let Some(name) = object.metadata.name.clone() else {
                    return;
                };
                if let Some(seen) = &mut self.seen_plugins {
                    seen.insert(name.clone());
                }
                match WasmPluginSpec::of(&object) {
                    Ok(spec) if spec.kind == World::ProxyStrategy.name() => {
                        let slot = self.slots.entry(name.clone()).or_default();
                        if slot.spec.as_ref() != Some(&spec) {
                            slot.failed_loads = 0;
                        }
                        slot.spec = Some(spec);
                        if self.in_use(&name) {
                            self.start_load(&name, false);
                        }
                    }
                    Ok(_) => self.remove_plugin(&name),
                    Err(error) => tracing::warn!(plugin = name, "{error}"),
                }
            }
            watcher::Event::Delete(object) => {
                if let Some(name) = &object.metadata.name {
                    self.remove_plugin(name);
                }
            }
            watcher::Event::InitDone => {
                let seen = self.seen_plugins.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .slots
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    self.remove_plugin(&name);
                }
            }
        }
    }

    fn remove_plugin(&mut self, name: &str) {
        if self.slots.remove(name).is_some() {
            self.shared.set_strategy(name, None);
        }
    }

    fn in_use(&self, plugin: &str) -> bool {
        self.ports
            .values()
            .any(|p| p.spec.strategy.as_deref() == Some(plugin))
    }

    /// Recomputes the dirty services' ports, then publishes the frontends and their listeners.
    async fn flush(&mut self) {
        let listed = self.services_listed && self.slices_listed;
        if !listed || (self.dirty.is_empty() && !self.routes_dirty) {
            return;
        }
        let dirty: Vec<String> = self.dirty.drain().collect();
        for service in dirty {
            self.sync(&service).await;
        }
        self.publish();
        let routes = self.ingress.routes(&self.services, |key| {
            self.ports.get(key).map(|port| port.backend.clone())
        });
        self.shared.ingress.set(routes);
        self.routes_dirty = false;
    }

    async fn sync(&mut self, service: &str) {
        let (wanted, addresses) = match self.services.get(service) {
            Some(object) => {
                let slices: Vec<&EndpointSlice> = self
                    .slices
                    .get(service)
                    .map(|s| s.values().collect())
                    .unwrap_or_default();
                (
                    model::ports(object, &slices),
                    model::addresses(object, &slices),
                )
            }
            None => (Vec::new(), None),
        };
        self.shared.names.set(service, addresses);
        let keys: Vec<String> = wanted.iter().map(|p| p.key.clone()).collect();
        for old in self.by_service.remove(service).unwrap_or_default() {
            if !keys.contains(&old) {
                self.drop_port(&old).await;
            }
        }
        for spec in wanted {
            self.put_port(spec).await;
        }
        if !keys.is_empty() {
            self.by_service.insert(service.to_owned(), keys);
        }
    }

    fn acquire(&mut self, addr: SocketAddr) -> Arc<Endpoint> {
        if let Some((endpoint, users)) = self.endpoints.get_mut(&addr) {
            *users += 1;
            return endpoint.clone();
        }
        let endpoint = Arc::new(Endpoint {
            id: self.next_id,
            addr,
            active: AtomicU32::new(0),
        });
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.endpoints.insert(addr, (endpoint.clone(), 1));
        self.shared.add_endpoint(endpoint.clone());
        endpoint
    }

    fn release(&mut self, addr: SocketAddr) {
        let Some((endpoint, users)) = self.endpoints.get_mut(&addr) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            let id = endpoint.id;
            self.endpoints.remove(&addr);
            self.shared.remove_endpoint(id);
        }
    }

    async fn put_port(&mut self, spec: PortSpec) {
        if self.ports.get(&spec.key).is_some_and(|p| p.spec == spec) {
            return;
        }
        let endpoints: Vec<Arc<Endpoint>> = spec
            .endpoints
            .iter()
            .map(|e| self.acquire(e.addr))
            .collect();
        let ready: Vec<Arc<Endpoint>> = spec
            .endpoints
            .iter()
            .zip(&endpoints)
            .filter(|(e, _)| e.ready)
            .map(|(_, t)| t.clone())
            .collect();
        let targets = if ready.is_empty() {
            spec.endpoints
                .iter()
                .zip(&endpoints)
                .filter(|(e, _)| e.serving && e.terminating)
                .map(|(_, t)| t.clone())
                .collect()
        } else {
            ready
        };
        let ids: Vec<u32> = endpoints.iter().map(|e| e.id).collect();
        let backend = Arc::new(Backend::new(
            spec.key.clone(),
            spec.l7,
            spec.strategy.clone(),
            targets,
        ));
        let old = self.ports.insert(
            spec.key.clone(),
            Port {
                spec: spec.clone(),
                backend,
            },
        );
        if let Some(old) = old {
            for endpoint in &old.spec.endpoints {
                self.release(endpoint.addr);
            }
            if let Some(previous) = old
                .spec
                .strategy
                .filter(|s| Some(s) != spec.strategy.as_ref())
            {
                self.strategy_call(&previous, Change::Remove(&spec.key))
                    .await;
            }
        }
        if let Some(name) = &spec.strategy {
            let record = wit_service(&spec, &ids);
            self.strategy_call(name, Change::Update(&record)).await;
            self.start_load(name, false);
        }
    }

    async fn drop_port(&mut self, key: &str) {
        let Some(old) = self.ports.remove(key) else {
            return;
        };
        for endpoint in &old.spec.endpoints {
            self.release(endpoint.addr);
        }
        if let Some(name) = &old.spec.strategy {
            self.strategy_call(name, Change::Remove(key)).await;
        }
    }

    /// Tells the live instance of a strategy, if it has one, of a change, recording a failure.
    async fn strategy_call(&mut self, name: &str, change: Change<'_>) {
        let Some(strategy) = self.shared.strategy(name) else {
            return;
        };
        let live = strategy.current();
        let mut instance = live.instance.lock().await;
        let result = match change {
            Change::Update(service) => instance.update(service),
            Change::Remove(key) => instance.remove(key),
        };
        drop(instance);
        if let Err(error) = result {
            self.failed(name, &error.to_string()).await;
        }
    }

    /// Publishes every port's frontends and makes the listeners match them.
    fn publish(&mut self) {
        let mut frontends: HashMap<SocketAddr, Arc<Backend>> = HashMap::new();
        for port in self.ports.values() {
            if let Some(cluster) = port.spec.cluster {
                frontends.insert(cluster, port.backend.clone());
            }
            if let Some(node_port) = port.spec.node_port {
                frontends.insert(
                    SocketAddr::new(self.options.node_ip, node_port),
                    port.backend.clone(),
                );
            }
        }
        self.listeners.retain(|addr, stop| {
            let keep = frontends.contains_key(addr);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for addr in frontends.keys() {
            if self.listeners.contains_key(addr) {
                continue;
            }
            match forward::bind(*addr) {
                Ok(listener) => {
                    let stop = self.stop.child_token();
                    forward::serve(listener, self.shared.clone(), stop.clone());
                    self.listeners.insert(*addr, stop);
                }
                // Tried again at the next change.
                Err(error) => tracing::warn!(%addr, "cannot listen: {error}"),
            }
        }
        self.shared.set_frontends(frontends);
    }

    /// Loads a strategy's latest spec in the background, unless it serves or is loading, or
    /// was refused and this is not the retry after the backoff.
    fn start_load(&mut self, name: &str, retry: bool) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let Some(spec) = slot.spec.clone() else {
            return;
        };
        let serving = slot.serving.as_ref().map(|(_, s)| s);
        let waiting = slot.failed_loads > 0 && !retry;
        if serving == Some(&spec) || slot.loading.as_ref() == Some(&spec) || waiting {
            return;
        }
        slot.loading = Some(spec.clone());
        let client = self.client.clone();
        let host = self.options.plugin_host.clone();
        let inputs = self.inputs.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let result = plugins::load(&host, &client, &name, &spec).await;
            let _ = inputs.send(Input::Loaded { name, spec, result }).await;
        });
    }

    /// A new instance of a strategy, given every service that uses it, with what it reads of
    /// a pick.
    async fn instantiate(
        &self,
        name: &str,
        module: &Module,
        spec: &WasmPluginSpec,
    ) -> Result<(Live, String), String> {
        let services = Services {
            config: spec.config_json(),
            load: Some(Arc::new(Load(self.shared.clone()))),
            ..Services::default()
        };
        let mut instance = module
            .instantiate(spec.limits(&self.options.default_limits), services)
            .await
            .map_err(|e| e.to_string())?;
        let info = instance.info().await.map_err(|e| e.to_string())?;
        instance.self_check().await.map_err(|e| e.to_string())?;
        let mut strategy = ProxyStrategy::new(instance).map_err(|e| e.to_string())?;
        for port in self.ports.values() {
            if port.spec.strategy.as_deref() == Some(name) {
                let ids: Vec<u32> = port
                    .spec
                    .endpoints
                    .iter()
                    .map(|e| self.endpoints.get(&e.addr).map_or(0, |(e, _)| e.id))
                    .collect();
                strategy
                    .update(&wit_service(&port.spec, &ids))
                    .map_err(|e| e.to_string())?;
            }
        }
        let live = Live::new(strategy).map_err(|e| e.to_string())?;
        Ok((live, info.version))
    }

    /// Puts an instance in service: the first one, or a swap that leaves picks in flight on
    /// the old one.
    fn install(&self, name: &str, strategy: Live) {
        match self.shared.strategy(name) {
            Some(live) => {
                live.replace(strategy);
            }
            None => self
                .shared
                .set_strategy(name, Some(Arc::new(Strategy::new(strategy)))),
        }
    }

    async fn loaded(&mut self, name: String, spec: WasmPluginSpec, result: Result<Module, String>) {
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        if slot.loading.as_ref() == Some(&spec) {
            slot.loading = None;
        }
        let made = match result {
            Ok(module) => self
                .instantiate(&name, &module, &spec)
                .await
                .map(|(strategy, version)| (module, strategy, version)),
            Err(error) => Err(error),
        };
        match made {
            Ok((module, strategy, version)) => {
                tracing::info!(
                    plugin = name,
                    digest = module.digest(),
                    "proxy strategy loaded"
                );
                self.install(&name, strategy);
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.serving = Some((module, spec));
                    slot.refused = None;
                    slot.failed_loads = 0;
                    slot.health = Health::default();
                    slot.version = version;
                }
            }
            Err(error) => {
                tracing::warn!(plugin = name, "refused {}: {error}", spec.module.digest);
                if let Some(slot) = self.slots.get_mut(&name)
                    && slot.spec.as_ref() == Some(&spec)
                {
                    slot.refused = Some(format!("refused {}: {error}", spec.module.digest));
                    // A registry or a pull secret may come back: try again, as image pulls do.
                    let delay = plugins::load_backoff(slot.failed_loads);
                    slot.failed_loads = slot.failed_loads.saturating_add(1);
                    let inputs = self.inputs.clone();
                    let retry = Input::Retry {
                        name: name.clone(),
                        spec,
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = inputs.send(retry).await;
                    });
                }
            }
        }
        self.report(&name);
    }

    /// A strategy call failed: recorded, and a poisoned instance replaced by a fresh one.
    async fn failed(&mut self, name: &str, error: &str) {
        tracing::warn!(plugin = name, "{error}");
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.health.failed(&error);
        let poisoned = match self.shared.strategy(name) {
            Some(live) => live.current().instance.lock().await.is_poisoned(),
            None => false,
        };
        if poisoned
            && let Some((module, spec)) = self.slots.get(name).and_then(|s| s.serving.clone())
        {
            match self.instantiate(name, &module, &spec).await {
                Ok((strategy, _)) => self.install(name, strategy),
                Err(error) => {
                    // Picks fall back to the round-robin until a load succeeds.
                    self.shared.set_strategy(name, None);
                    if let Some(slot) = self.slots.get_mut(name) {
                        slot.health.failed(&error);
                        slot.serving = None;
                    }
                }
            }
        }
        self.report(name);
    }

    fn report(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let status = ComponentStatus::of(
            slot.spec.as_ref().map(|s| s.module.digest.as_str()),
            slot.serving.as_ref().map(|(m, _)| m.digest()),
            slot.refused.as_deref(),
            &slot.health,
            &slot.version,
        );
        if slot.reported.as_ref() == Some(&status) {
            return;
        }
        slot.reported = Some(status.clone());
        self.reports.send(name, &self.component, status);
    }
}
