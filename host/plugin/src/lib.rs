//! The plugin host: the wasmtime engine that runs Flotilla's policy plugins.
//!
//! This crate owns the engine configuration (component model, pooling allocator, epoch
//! interruption), the compiled-artifact cache on disk ([`cache`]), the checks a component
//! passes before it is instantiated ([`world`]), the per-call limits (deadline, memory, bytes
//! crossing the boundary), the host side of the imported interfaces ([`host`]), hot-swap and
//! health bookkeeping ([`swap`]), and the only WIT host bindings in the project
//! ([`bindings`]). Proxy strategies are linked apart ([`nowait`]): their calls run directly on
//! the caller's thread, without a fiber, so nothing they import may wait. It must not know
//! what a plugin kind is for beyond the world it binds: scheduling, admission and the rest drive plugins through the typed handles here
//! ([`SchedulerPolicy`], [`AdmissionPolicy`], [`Controller`], [`ProxyStrategy`]), and fetching
//! modules or reporting status belongs to them. The artifact cache ([`ArtifactCache`]) also
//! serves the node agent's engine for workload components.

mod admission;
pub mod bindings;
mod cache;
mod controller;
mod host;
mod nowait;
mod proxy;
mod scheduler;
mod stderr;
mod swap;
mod world;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

pub use admission::AdmissionPolicy;
pub use cache::{ArtifactCache, CacheStats};
pub use controller::Controller;
pub use host::{ApiWriter, CacheReader, EndpointLoad, Services, Status};
pub use proxy::ProxyStrategy;
pub use scheduler::SchedulerPolicy;
pub use swap::{DEGRADED_AFTER, DEGRADED_WINDOW, Health, Swap};
pub use world::World;

use bindings::meta;
use host::{HostState, Stop};

/// The WIT package every plugin is built against.
pub const WIT_PACKAGE: &str = "flotilla:plugin";
/// The version of that package this host serves.
pub const WIT_VERSION: &str = "0.1.3";

/// How often the engine's epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Extra time the host allows past a call's deadline before it abandons the call from outside
/// (the epoch and host-call timeouts normally stop it first).
const ABANDON_AFTER: Duration = Duration::from_millis(250);

/// Limits applied to one plugin instance and each call into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most linear memory the instance may grow to.
    pub memory_bytes: usize,
    /// Longest one call may take, host calls included.
    pub call_deadline: Duration,
    /// Most bytes that may cross the boundary (arguments, results, host-call data) in one call.
    pub boundary_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            call_deadline: Duration::from_secs(1),
            boundary_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The engine's configuration, fixed for the life of the host.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where compiled artifacts are kept; none compiles in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Instances alive at once, across all plugins (the pooling allocator's slots).
    pub max_instances: u32,
    /// The largest memory any instance may have; per-plugin limits are at most this.
    pub max_memory_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 256,
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What went wrong with a plugin. Always wrapped in a [`PluginError`] naming the plugin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("does not match its digest: got {actual}")]
    Digest { actual: String },
    #[error("failed to compile: {0}")]
    Compile(String),
    #[error("was built against {WIT_PACKAGE}@{found}; this host serves @{WIT_VERSION}")]
    Incompatible { found: String },
    #[error("is not a {world} plugin: {message}")]
    WrongWorld { world: World, message: String },
    #[error("failed to instantiate: {0}")]
    Instantiate(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("ran past its deadline of {0:?}")]
    Deadline(Duration),
    #[error("exceeded its memory limit of {limit} bytes")]
    Memory { limit: usize },
    #[error("sent more than {limit} bytes across the boundary in one call")]
    Boundary { limit: usize },
    #[error("returned an invalid result: {0}")]
    Invalid(String),
    #[error("reported an error: {0}")]
    Reported(String),
    #[error("failed its self-check: {0}")]
    SelfCheck(String),
    #[error("is unusable after an earlier failure ({0}); it must be instantiated again")]
    Poisoned(String),
}

/// A plugin failure, naming the plugin and the digest of its module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} ({digest}) {failure}")]
pub struct PluginError {
    pub plugin: String,
    pub digest: String,
    pub failure: Failure,
}

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("plugin engine: {0}")]
pub struct EngineError(String);

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub wit_version: String,
}

/// The sha256 digest of a module, as `sha256:<hex>`.
pub fn digest(wasm: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(wasm)))
}

/// The wasmtime engine with Flotilla's configuration, and a thread that advances its epoch.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    /// Imports that may wait (on a fiber): every world but the proxy strategy's.
    linker: Arc<Linker<HostState>>,
    /// Imports that never wait, for proxy strategies, called without a fiber.
    direct: Arc<Linker<HostState>>,
    cache: Arc<ArtifactCache>,
    max_memory_bytes: usize,
    /// Held, never read: the engine's epoch advances while any handle to this host, or any
    /// module or instance it made, exists.
    ticker: Arc<Ticker>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A guest's typed exports, held by a handle (the generated types are not `Debug`).
pub(crate) struct Exports<T>(pub(crate) T);

impl<T> std::fmt::Debug for Exports<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<T>())
    }
}

/// Keeps its engine's epoch advancing until dropped (keep it as long as the engine runs guests).
#[derive(Debug)]
pub struct Ticker {
    id: u64,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Ok(epochs) = epochs() {
            lock(&epochs.engines).retain(|(id, _)| *id != self.id);
        }
    }
}

/// The engines whose epoch the process's one epoch thread advances, by [`Ticker`] id. One
/// thread for all: each wake-up is a context switch on a core that also serves requests.
struct Epochs {
    engines: Mutex<Vec<(u64, wasmtime::EngineWeak)>>,
    /// Signalled when an engine is added, so the thread sleeps while there is none.
    added: Condvar,
    next: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's epoch thread, started on first use.
fn epochs() -> Result<&'static Epochs, EngineError> {
    static EPOCHS: OnceLock<Result<Epochs, String>> = OnceLock::new();
    EPOCHS
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("flotilla-epoch".into())
                .spawn(|| {
                    let Ok(epochs) = epochs() else { return };
                    loop {
                        let mut engines = lock(&epochs.engines);
                        while engines.is_empty() {
                            engines = epochs
                                .added
                                .wait(engines)
                                .unwrap_or_else(|e| e.into_inner());
                        }
                        drop(engines);
                        std::thread::sleep(EPOCH_TICK);
                        for (_, weak) in lock(&epochs.engines).iter() {
                            if let Some(engine) = weak.upgrade() {
                                engine.increment_epoch();
                            }
                        }
                    }
                })
                .map(|_| Epochs {
                    engines: Mutex::new(Vec::new()),
                    added: Condvar::new(),
                    next: AtomicU64::new(0),
                })
                .map_err(|e| format!("cannot start the epoch thread: {e}"))
        })
        .as_ref()
        .map_err(|e| EngineError(e.clone()))
}

/// A wasmtime engine as Flotilla runs guests: the component model, the pooling allocator sized
/// by `config`, and epoch interruption, advanced every millisecond by the process's epoch
/// thread until the returned [`Ticker`] is dropped. The plugin host and the node agent's
/// workload runtime both run on one.
pub fn pooled_engine(config: &EngineConfig) -> Result<(Engine, Ticker), EngineError> {
    let instances = config.max_instances.max(1);
    let mut pooling = PoolingAllocationConfig::default();
    // A component holds several core instances and tables, and usually one or two memories.
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(8))
        .total_stacks(instances)
        .max_memory_size(config.max_memory_bytes);
    let mut engine_config = Config::new();
    engine_config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&engine_config).map_err(engine_error)?;
    let epochs = epochs()?;
    let id = epochs.next.fetch_add(1, Ordering::Relaxed);
    lock(&epochs.engines).push((id, engine.weak()));
    epochs.added.notify_one();
    Ok((engine, Ticker { id }))
}

fn engine_error(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
}

impl PluginHost {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let (engine, ticker) = pooled_engine(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        bindings::add_flotilla_imports(&mut linker).map_err(engine_error)?;
        let direct = nowait::linker(&engine).map_err(engine_error)?;
        let cache = ArtifactCache::new(&engine, config.cache_dir).map_err(engine_error)?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            direct: Arc::new(direct),
            cache: Arc::new(cache),
            max_memory_bytes: config.max_memory_bytes,
            ticker: Arc::new(ticker),
        })
    }

    /// How many modules this host compiled and how many it loaded from disk.
    pub fn cache_stats(&self) -> &CacheStats {
        &self.cache.stats
    }

    /// Loads a module for `world`: checks `wasm` against `expected` (a `sha256:` digest, when
    /// given), takes the compiled artifact from the cache or compiles it, and checks the
    /// component's WIT version, exports and imports. Nothing is instantiated yet.
    pub fn load(
        &self,
        name: &str,
        world: World,
        wasm: &[u8],
        expected: Option<&str>,
    ) -> Result<Module, PluginError> {
        let actual = digest(wasm);
        let fail = |failure| PluginError {
            plugin: name.to_owned(),
            digest: expected.unwrap_or(&actual).to_owned(),
            failure,
        };
        if expected.is_some_and(|expected| expected != actual) {
            return Err(fail(Failure::Digest {
                actual: actual.clone(),
            }));
        }
        let hex = &actual["sha256:".len()..];
        let component = match self.cache.get(&self.engine, hex) {
            Some(component) => component,
            None => self
                .cache
                .compile(&self.engine, hex, wasm)
                .map_err(|e| fail(Failure::Compile(format!("{e:#}"))))?,
        };
        self.prepare(name, world, &actual, component)
    }

    /// Loads a module by digest from the artifact cache alone, without its bytes: none when
    /// this host has no artifact for it.
    pub fn load_cached(
        &self,
        name: &str,
        world: World,
        digest: &str,
    ) -> Option<Result<Module, PluginError>> {
        let hex = digest.strip_prefix("sha256:")?;
        let component = self.cache.get(&self.engine, hex)?;
        Some(self.prepare(name, world, digest, component))
    }

    fn prepare(
        &self,
        name: &str,
        world: World,
        digest: &str,
        component: wasmtime::component::Component,
    ) -> Result<Module, PluginError> {
        let fail = |failure| PluginError {
            plugin: name.to_owned(),
            digest: digest.to_owned(),
            failure,
        };
        world::check(&self.engine, &component, world).map_err(fail)?;
        let linker = if world.calls_directly() {
            &self.direct
        } else {
            &self.linker
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| fail(Failure::Instantiate(format!("{e:#}"))))?;
        Ok(Module {
            name: name.into(),
            digest: digest.into(),
            world,
            pre,
            max_memory_bytes: self.max_memory_bytes,
            engine: self.engine.clone(),
            _ticker: self.ticker.clone(),
        })
    }
}

/// A compiled, checked module, ready to instantiate as often as needed.
#[derive(Clone)]
pub struct Module {
    name: Arc<str>,
    digest: Arc<str>,
    world: World,
    pre: InstancePre<HostState>,
    max_memory_bytes: usize,
    engine: Engine,
    /// Keeps the epoch advancing: a call without a fiber has no other deadline.
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

impl Module {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn world(&self) -> World {
        self.world
    }

    fn error(&self, failure: Failure) -> PluginError {
        PluginError {
            plugin: self.name.to_string(),
            digest: self.digest.to_string(),
            failure,
        }
    }

    /// A fresh instance with its own store, memory limit and services. Its `info` has been
    /// read and its WIT version checked.
    pub async fn instantiate(
        &self,
        limits: Limits,
        services: Services,
    ) -> Result<Instance, PluginError> {
        let memory_bytes = limits.memory_bytes.min(self.max_memory_bytes);
        let state = HostState::new(
            self.name.clone(),
            self.digest.clone(),
            services,
            memory_bytes,
            limits.boundary_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        // Every tick the guest gives its thread back to the async executor, so a guest that
        // computes for long never holds a host thread for more than one tick; at its deadline
        // it is stopped. A call without a fiber cannot yield: it runs on to its deadline.
        let direct = self.world.calls_directly();
        store.epoch_deadline_callback(move |context| {
            Ok(if Instant::now() >= context.data().deadline {
                UpdateDeadline::Interrupt
            } else if direct {
                UpdateDeadline::Continue(1)
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        store.set_epoch_deadline(1);
        store.data_mut().deadline = Instant::now() + limits.call_deadline;
        let instance = match tokio::time::timeout(
            limits.call_deadline + ABANDON_AFTER,
            self.pre.instantiate_async(&mut store),
        )
        .await
        {
            Ok(Ok(instance)) => instance,
            Ok(Err(e)) => {
                return Err(self.error(classify(e, store.data_mut(), limits.call_deadline)));
            }
            Err(_) => return Err(self.error(Failure::Deadline(limits.call_deadline))),
        };
        let meta = meta::GuestIndices::new(&self.pre)
            .and_then(|indices| indices.load(&mut store, &instance))
            .map_err(|e| self.error(Failure::Instantiate(format!("{e:#}"))))?;
        let mut instance = Instance {
            module: self.clone(),
            store,
            instance,
            meta,
            limits,
            poisoned: None,
        };
        let info = instance.info().await?;
        if !world::compatible(&info.wit_version) {
            return Err(self.error(Failure::Incompatible {
                found: info.wit_version,
            }));
        }
        Ok(instance)
    }
}

/// Awaits a call, abandoning it a little after its deadline if the epoch and host-call
/// timeouts have not stopped it (none when abandoned).
async fn within<R>(
    deadline: Duration,
    call: impl Future<Output = wasmtime::Result<R>>,
) -> Option<wasmtime::Result<R>> {
    tokio::time::timeout(deadline + ABANDON_AFTER, call)
        .await
        .ok()
}

/// Turns a wasmtime error into a failure, using what the host recorded about why it stopped
/// the call and what the guest wrote to stderr (a panic's message).
fn classify(error: wasmtime::Error, state: &mut HostState, deadline: Duration) -> Failure {
    let stderr = state.stderr.take();
    match state.stopped.take() {
        Some(Stop::Memory { limit }) => return Failure::Memory { limit },
        Some(Stop::Boundary { limit }) => return Failure::Boundary { limit },
        Some(Stop::Deadline) => return Failure::Deadline(deadline),
        None => {}
    }
    let mut message = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return Failure::Deadline(deadline),
        Some(trap) => trap.to_string(),
        // A host call's own error: its message and causes, without the wasm backtrace.
        None => {
            let trace = error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(ToString::to_string);
            error
                .chain()
                .map(|cause| cause.to_string())
                .filter(|cause| Some(cause) != trace.as_ref())
                .collect::<Vec<_>>()
                .join(": ")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("note: run with"))
        .collect();
    if !said.is_empty() {
        message.push_str(": ");
        message.push_str(&said.join(" "));
    }
    Failure::Trap(message)
}

/// One live plugin instance. Calls run one at a time (`&mut self`); each has the deadline and
/// byte budget of the instance's limits. After a trap or a stop the instance is poisoned —
/// its memory may be half-updated — and every later call fails until the owner replaces it.
pub struct Instance {
    module: Module,
    store: Store<HostState>,
    instance: wasmtime::component::Instance,
    meta: meta::Guest,
    limits: Limits,
    poisoned: Option<String>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("module", &self.module)
            .field("limits", &self.limits)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Instance {
    pub fn module(&self) -> &Module {
        &self.module
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// A failure of this instance's plugin.
    pub fn error(&self, failure: Failure) -> PluginError {
        self.module.error(failure)
    }

    /// The typed exports of `world` (loaded by `load`), after checking that the module was
    /// loaded as that world.
    fn guest<G>(
        &mut self,
        world: World,
        load: impl FnOnce(
            &InstancePre<HostState>,
            &mut Store<HostState>,
            &wasmtime::component::Instance,
        ) -> wasmtime::Result<G>,
    ) -> Result<G, PluginError> {
        if self.module.world() != world {
            return Err(self.error(Failure::WrongWorld {
                world,
                message: format!("it was loaded as a {}", self.module.world()),
            }));
        }
        load(&self.module.pre, &mut self.store, &self.instance)
            .map_err(|e| self.error(Failure::Instantiate(format!("{e:#}"))))
    }

    /// Starts a call: refuses a poisoned instance, charges the arguments' size against the
    /// call's byte budget, and arms the deadline. The call itself is awaited with [`within`],
    /// then given to [`Instance::finish`].
    fn begin(&mut self, inputs: usize) -> Result<Duration, PluginError> {
        if let Some(reason) = &self.poisoned {
            return Err(self.error(Failure::Poisoned(reason.clone())));
        }
        let limit = self.limits.boundary_bytes;
        if inputs > limit {
            return Err(self.error(Failure::Boundary { limit }));
        }
        let deadline = self.limits.call_deadline;
        let state = self.store.data_mut();
        state.crossed = inputs;
        state.stopped = None;
        state.deadline = Instant::now() + deadline;
        self.store.set_epoch_deadline(1);
        Ok(deadline)
    }

    /// Runs a call directly on the caller's thread, without a fiber (an instance of a world
    /// that [calls directly](World::calls_directly)): begun and finished like every call, and
    /// stopped by the epoch alone.
    fn call_direct<R>(
        &mut self,
        inputs: usize,
        call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
        outputs: impl FnOnce(&R) -> usize,
    ) -> Result<R, PluginError> {
        debug_assert!(self.module.world().calls_directly());
        self.begin(inputs)?;
        let outcome = call(&mut self.store);
        self.finish(Some(outcome), outputs)
    }

    /// Ends a call: checks the result's size against the budget and turns a failure into a
    /// [`PluginError`], poisoning the instance.
    fn finish<R>(
        &mut self,
        outcome: Option<wasmtime::Result<R>>,
        outputs: impl FnOnce(&R) -> usize,
    ) -> Result<R, PluginError> {
        let deadline = self.limits.call_deadline;
        let failure = match outcome {
            Some(Ok(result)) => {
                let crossed = self.store.data().crossed.saturating_add(outputs(&result));
                if crossed <= self.limits.boundary_bytes {
                    return Ok(result);
                }
                Failure::Boundary {
                    limit: self.limits.boundary_bytes,
                }
            }
            Some(Err(error)) => classify(error, self.store.data_mut(), deadline),
            None => Failure::Deadline(deadline),
        };
        self.poisoned = Some(failure.to_string());
        Err(self.error(failure))
    }

    /// The plugin's own description.
    pub async fn info(&mut self) -> Result<PluginInfo, PluginError> {
        let deadline = self.begin(0)?;
        let outcome = within(deadline, self.meta.call_info(&mut self.store)).await;
        let info = self.finish(outcome, |info| {
            info.name.len() + info.version.len() + info.wit_version.len()
        })?;
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            wit_version: info.wit_version,
        })
    }

    /// The plugin's self-check, run on a fresh instance before it takes any work.
    pub async fn self_check(&mut self) -> Result<(), PluginError> {
        let deadline = self.begin(0)?;
        let outcome = within(deadline, self.meta.call_self_check(&mut self.store)).await;
        self.finish(outcome, |result| {
            result.as_ref().err().map_or(0, String::len)
        })?
        .map_err(|message| self.error(Failure::SelfCheck(message)))
    }
}
