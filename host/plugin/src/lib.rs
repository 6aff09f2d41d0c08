//! The plugin host: the wasmtime engine that runs Flotilla's policy plugins.
//!
//! This crate owns the engine configuration (component model, pooling allocator, epoch
//! interruption), the per-instance limits, module digests, and the only WIT host bindings in the
//! project (generated from `wit/` in [`bindings`]). It must not know which plugin kind serves
//! which purpose beyond the world it binds: scheduling, admission and the rest drive plugins
//! through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::ResourceTable;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host bindings for every world in `wit/`. Generated here and nowhere else.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin",
        world: "probe",
    });
}

/// The version of the `flotilla:plugin` WIT package this host serves.
pub const WIT_VERSION: &str = "0.1.0";

/// How often the engine's epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Hard limits applied to every plugin call.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Longest a call may run before it is interrupted.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            call_deadline: Duration::from_millis(100),
        }
    }
}

/// A plugin failure. Every variant names the plugin and its module digest.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {name} ({digest}) failed to compile: {message}")]
    Compile {
        name: String,
        digest: String,
        message: String,
    },
    #[error("plugin {name} ({digest}) failed to instantiate: {message}")]
    Instantiate {
        name: String,
        digest: String,
        message: String,
    },
    #[error("plugin {name} ({digest}) trapped: {message}")]
    Trap {
        name: String,
        digest: String,
        message: String,
    },
    #[error(
        "plugin {name} ({digest}) was built against flotilla:plugin@{found}; this host serves @{expected}"
    )]
    Incompatible {
        name: String,
        digest: String,
        found: String,
        expected: String,
    },
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub wit_version: String,
}

/// A compiled plugin module, identified by its sha256 digest.
#[derive(Clone, Debug)]
pub struct Module {
    pub name: String,
    pub digest: String,
    component: Component,
}

/// The state every plugin instance's store carries.
struct HostState {
    limits: StoreLimits,
    /// Plugins built with a standard library import WASI. They get a sandbox: no arguments,
    /// environment, files or sockets; stdio goes nowhere.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The wasmtime engine with Flotilla's configuration, and a thread that advances its epoch.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    limits: Limits,
    /// Held, never read: the epoch thread runs while any handle to this host exists.
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Stops the epoch thread when the last host handle goes.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sha256 digest of a module, as `sha256:<hex>`.
pub fn digest(wasm: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(wasm)))
}

impl PluginHost {
    pub fn new(limits: Limits) -> Result<Self, PluginError> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(256)
            .total_core_instances(256)
            .total_memories(256)
            .total_tables(256)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("flotilla-plugin-epoch".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles a module. The error names the plugin and the digest of what it was given.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<Module, PluginError> {
        let digest = digest(wasm);
        let component = Component::new(&self.engine, wasm).map_err(|e| PluginError::Compile {
            name: name.to_owned(),
            digest: digest.clone(),
            message: format!("{e:#}"),
        })?;
        Ok(Module {
            name: name.to_owned(),
            digest,
            component,
        })
    }

    fn store(&self) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            limits,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let ticks = self.limits.call_deadline.as_millis().max(1) as u64;
        store.set_epoch_deadline(ticks / EPOCH_TICK.as_millis().max(1) as u64);
        store
    }

    /// Instantiates a module and asks it what it is; refuses a plugin built against another WIT
    /// version before trusting it with anything else.
    pub fn describe(&self, module: &Module) -> Result<PluginInfo, PluginError> {
        let mut store = self.store();
        let probe = bindings::Probe::instantiate(&mut store, &module.component, &self.linker)
            .map_err(|e| PluginError::Instantiate {
                name: module.name.clone(),
                digest: module.digest.clone(),
                message: format!("{e:#}"),
            })?;
        let info = probe
            .flotilla_plugin_meta()
            .call_info(&mut store)
            .map_err(|e| PluginError::Trap {
                name: module.name.clone(),
                digest: module.digest.clone(),
                message: format!("{e:#}"),
            })?;
        if info.wit_version != WIT_VERSION {
            return Err(PluginError::Incompatible {
                name: module.name.clone(),
                digest: module.digest.clone(),
                found: info.wit_version,
                expected: WIT_VERSION.to_owned(),
            });
        }
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            wit_version: info.wit_version,
        })
    }
}
