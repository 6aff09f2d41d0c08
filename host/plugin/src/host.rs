//! What a plugin instance's store carries, and the host side of the imported interfaces.
//!
//! Every import is bounded: strings and lists crossing the boundary are charged against the
//! call's byte budget, and async imports (cache reads, API writes) are cut off at the call's
//! deadline, so a guest blocked in a host call is still stopped. `endpoint-load` is
//! synchronous: a proxy strategy's calls run without a fiber (see [`crate::nowait`]), and its
//! figures are counters read in place.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, format_err};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{
    api, balancing, cache, clock, config, endpoint_load, log, scheduling, types,
};
use crate::stderr::Tail;

/// A `Status` failure as the imports return it.
pub type Status = types::Status;

/// The host's shared informer cache, as plugins may read it.
#[async_trait::async_trait]
pub trait CacheReader: Send + Sync {
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status>;

    async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<String>, Status>;

    /// The objects a query selects (`cache.query`).
    async fn query(
        &self,
        api_version: &str,
        kind: &str,
        selection: cache::Selection,
    ) -> Result<Vec<String>, Status> {
        let _ = (api_version, kind, selection);
        Err(not_served("cache.query"))
    }
}

/// API writes made on a plugin's behalf.
#[async_trait::async_trait]
pub trait ApiWriter: Send + Sync {
    async fn create(&self, object: String) -> Result<String, Status>;

    /// Creates objects concurrently (`api.create-batch`); each result in order.
    async fn create_batch(&self, objects: Vec<String>) -> Vec<Result<String, Status>> {
        let mut results = Vec::with_capacity(objects.len());
        for object in objects {
            results.push(self.create(object).await);
        }
        results
    }
    async fn update(&self, object: String) -> Result<String, Status>;
    async fn update_status(&self, object: String) -> Result<String, Status>;
    async fn patch(
        &self,
        target: types::ObjectRef,
        patch_type: api::PatchType,
        patch: String,
    ) -> Result<String, Status>;
    async fn delete(
        &self,
        target: types::ObjectRef,
        resource_version: Option<String>,
        uid: Option<String>,
        propagation: Option<String>,
    ) -> Result<(), Status>;
    async fn emit_event(&self, event: api::Event) -> Result<(), Status>;

    /// The kinds the API server serves (`api.resources`).
    async fn resources(&self) -> Result<Vec<api::ApiResource>, Status> {
        Err(not_served("api.resources"))
    }

    /// Deletes a collection and says what is left of it (`api.delete-collection`).
    async fn delete_collection(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<api::Remaining, Status> {
        let _ = (api_version, kind, namespace, label_selector);
        Err(not_served("api.delete-collection"))
    }

    /// Replaces a subresource of an object (`api.update-subresource`).
    async fn update_subresource(
        &self,
        object: String,
        subresource: &str,
    ) -> Result<String, Status> {
        let _ = (object, subresource);
        Err(not_served("api.update-subresource"))
    }

    /// Reads one object from the API server, not the cache (`api.get`).
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let _ = (api_version, kind, namespace, name);
        Err(not_served("api.get"))
    }
}

/// What a reader or writer answers for a call it does not implement.
fn not_served(call: &str) -> Status {
    Status {
        code: 501,
        reason: "NotImplemented".into(),
        message: format!("this host does not serve {call}"),
    }
}

/// Per-endpoint load figures the proxy keeps. Read on the caller's thread in the middle of a
/// pick: it must answer at once, without waiting.
pub trait EndpointLoad: Send + Sync {
    fn active(&self, service: &str, ids: &[u32]) -> Vec<u32>;
}

/// What the host offers one plugin instance beyond WASI: its configuration and the optional
/// services of its world.
#[derive(Clone, Default)]
pub struct Services {
    /// `spec.config` as JSON.
    pub config: String,
    pub cache: Option<Arc<dyn CacheReader>>,
    pub api: Option<Arc<dyn ApiWriter>>,
    pub load: Option<Arc<dyn EndpointLoad>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("config", &self.config)
            .field("cache", &self.cache.is_some())
            .field("api", &self.api.is_some())
            .field("load", &self.load.is_some())
            .finish()
    }
}

/// Why the current call was stopped by the host, when it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Memory { limit: usize },
    Boundary { limit: usize },
    Deadline,
}

/// The state of one plugin instance's store.
pub(crate) struct HostState {
    pub(crate) plugin: Arc<str>,
    pub(crate) digest: Arc<str>,
    pub(crate) services: Services,
    pub(crate) memory_limit: usize,
    pub(crate) boundary_limit: usize,
    /// Bytes crossed during the current call.
    pub(crate) crossed: usize,
    pub(crate) deadline: Instant,
    pub(crate) stopped: Option<Stop>,
    pub(crate) stderr: Tail,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        digest: Arc<str>,
        services: Services,
        memory_limit: usize,
        boundary_limit: usize,
    ) -> Self {
        let stderr = Tail::default();
        // Plugins built with a standard library import WASI. They get a sandbox: no arguments,
        // environment, files or sockets; stdout is dropped and stderr kept for trap messages.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Self {
            plugin,
            digest,
            services,
            memory_limit,
            boundary_limit,
            crossed: 0,
            deadline: Instant::now(),
            stopped: None,
            stderr,
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Counts `bytes` against the call's boundary budget; past it, the call traps.
    pub(crate) fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.crossed = self.crossed.saturating_add(bytes);
        if self.crossed > self.boundary_limit {
            self.stopped = Some(Stop::Boundary {
                limit: self.boundary_limit,
            });
            return Err(format_err!(
                "{} bytes crossed the plugin boundary in one call; the limit is {}",
                self.crossed,
                self.boundary_limit
            ));
        }
        Ok(())
    }

    /// Runs an async host call until the call's deadline.
    async fn bounded<T>(
        &mut self,
        what: &str,
        call: impl Future<Output = T>,
    ) -> wasmtime::Result<T> {
        match tokio::time::timeout_at(self.deadline.into(), call).await {
            Ok(value) => Ok(value),
            Err(_) => {
                self.stopped = Some(Stop::Deadline);
                Err(format_err!(
                    "the call's deadline passed while waiting in host call {what}"
                ))
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.stopped = Some(Stop::Memory {
                limit: self.memory_limit,
            });
            return Err(format_err!(
                "memory would grow to {desired} bytes; the limit is {}",
                self.memory_limit
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn forbidden(what: &str) -> Status {
    Status {
        code: 403,
        reason: "Forbidden".into(),
        message: format!("this plugin's world does not offer {what}"),
    }
}

fn status_len(result: &Result<String, Status>) -> usize {
    match result {
        Ok(json) => json.len(),
        Err(status) => status.message.len(),
    }
}

impl types::Host for HostState {}
impl scheduling::Host for HostState {}
impl balancing::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.charge(message.len())?;
        let plugin = &*self.plugin;
        let digest = &*self.digest;
        match level {
            log::Level::Trace => tracing::trace!(plugin, digest, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, digest, "{message}"),
            log::Level::Info => tracing::info!(plugin, digest, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, digest, "{message}"),
            log::Level::Error => tracing::error!(plugin, digest, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
    }
}

impl config::Host for HostState {
    fn get(&mut self) -> wasmtime::Result<String> {
        let config = self.services.config.clone();
        self.charge(config.len())?;
        Ok(config)
    }
}

impl cache::Host for HostState {
    async fn get(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        name: String,
    ) -> wasmtime::Result<Result<Option<String>, Status>> {
        let Some(reader) = self.services.cache.clone() else {
            return Ok(Err(forbidden("cache reads")));
        };
        let result = self
            .bounded(
                "cache.get",
                reader.get(&api_version, &kind, namespace.as_deref(), &name),
            )
            .await?;
        self.charge(match &result {
            Ok(Some(json)) => json.len(),
            Ok(None) => 0,
            Err(status) => status.message.len(),
        })?;
        Ok(result)
    }

    async fn list(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        label_selector: String,
    ) -> wasmtime::Result<Result<Vec<String>, Status>> {
        let Some(reader) = self.services.cache.clone() else {
            return Ok(Err(forbidden("cache reads")));
        };
        let result = self
            .bounded(
                "cache.list",
                reader.list(&api_version, &kind, namespace.as_deref(), &label_selector),
            )
            .await?;
        self.charge(match &result {
            Ok(items) => items.iter().map(String::len).sum(),
            Err(status) => status.message.len(),
        })?;
        Ok(result)
    }

    async fn query(
        &mut self,
        api_version: String,
        kind: String,
        selection: cache::Selection,
    ) -> wasmtime::Result<Result<Vec<String>, Status>> {
        let Some(reader) = self.services.cache.clone() else {
            return Ok(Err(forbidden("cache reads")));
        };
        self.charge(selection.fields.iter().map(String::len).sum())?;
        let result = self
            .bounded("cache.query", reader.query(&api_version, &kind, selection))
            .await?;
        self.charge(match &result {
            Ok(items) => items.iter().map(String::len).sum(),
            Err(status) => status.message.len(),
        })?;
        Ok(result)
    }
}

impl api::Host for HostState {
    async fn get(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        name: String,
    ) -> wasmtime::Result<Result<Option<String>, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API reads")));
        };
        let result = self
            .bounded(
                "api.get",
                api.get(&api_version, &kind, namespace.as_deref(), &name),
            )
            .await?;
        self.charge(match &result {
            Ok(found) => found.as_ref().map_or(0, String::len),
            Err(status) => status.message.len(),
        })?;
        Ok(result)
    }

    async fn create(&mut self, object: String) -> wasmtime::Result<Result<String, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.charge(object.len())?;
        let result = self.bounded("api.create", api.create(object)).await?;
        self.charge(status_len(&result))?;
        Ok(result)
    }

    async fn create_batch(
        &mut self,
        objects: Vec<String>,
    ) -> wasmtime::Result<Vec<Result<String, Status>>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(objects
                .iter()
                .map(|_| Err(forbidden("API writes")))
                .collect());
        };
        self.charge(objects.iter().map(String::len).sum())?;
        let results = self
            .bounded("api.create-batch", api.create_batch(objects))
            .await?;
        self.charge(results.iter().map(status_len).sum())?;
        Ok(results)
    }

    async fn update(&mut self, object: String) -> wasmtime::Result<Result<String, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.charge(object.len())?;
        let result = self.bounded("api.update", api.update(object)).await?;
        self.charge(status_len(&result))?;
        Ok(result)
    }

    async fn update_status(&mut self, object: String) -> wasmtime::Result<Result<String, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.charge(object.len())?;
        let result = self
            .bounded("api.update-status", api.update_status(object))
            .await?;
        self.charge(status_len(&result))?;
        Ok(result)
    }

    async fn patch(
        &mut self,
        target: types::ObjectRef,
        patch_type: api::PatchType,
        patch: String,
    ) -> wasmtime::Result<Result<String, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.charge(patch.len())?;
        let result = self
            .bounded("api.patch", api.patch(target, patch_type, patch))
            .await?;
        self.charge(status_len(&result))?;
        Ok(result)
    }

    async fn delete(
        &mut self,
        target: types::ObjectRef,
        resource_version: Option<String>,
        uid: Option<String>,
        propagation: Option<String>,
    ) -> wasmtime::Result<Result<(), Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.bounded(
            "api.delete",
            api.delete(target, resource_version, uid, propagation),
        )
        .await
    }

    async fn emit_event(&mut self, event: api::Event) -> wasmtime::Result<Result<(), Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.charge(event.message.len() + event.reason.len())?;
        self.bounded("api.emit-event", api.emit_event(event)).await
    }

    async fn resources(&mut self) -> wasmtime::Result<Result<Vec<api::ApiResource>, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        let result = self.bounded("api.resources", api.resources()).await?;
        self.charge(match &result {
            Ok(resources) => resources
                .iter()
                .map(|r| {
                    r.api_version.len()
                        + r.kind.len()
                        + r.resource.len()
                        + r.verbs.iter().map(String::len).sum::<usize>()
                })
                .sum(),
            Err(status) => status.message.len(),
        })?;
        Ok(result)
    }

    async fn delete_collection(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
        label_selector: String,
    ) -> wasmtime::Result<Result<api::Remaining, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        let result = self
            .bounded(
                "api.delete-collection",
                api.delete_collection(&api_version, &kind, namespace.as_deref(), &label_selector),
            )
            .await?;
        self.charge(match &result {
            Ok(left) => left.finalizers.iter().map(|(f, _)| f.len() + 4).sum(),
            Err(status) => status.message.len(),
        })?;
        Ok(result)
    }

    async fn update_subresource(
        &mut self,
        object: String,
        subresource: String,
    ) -> wasmtime::Result<Result<String, Status>> {
        let Some(api) = self.services.api.clone() else {
            return Ok(Err(forbidden("API writes")));
        };
        self.charge(object.len())?;
        let result = self
            .bounded(
                "api.update-subresource",
                api.update_subresource(object, &subresource),
            )
            .await?;
        self.charge(status_len(&result))?;
        Ok(result)
    }
}

impl endpoint_load::Host for HostState {
    fn active(&mut self, service: String, ids: Vec<u32>) -> wasmtime::Result<Vec<u32>> {
        let Some(load) = self.services.load.clone() else {
            return Ok(vec![0; ids.len()]);
        };
        self.charge(ids.len() * 4)?;
        Ok(load.active(&service, &ids))
    }
}
