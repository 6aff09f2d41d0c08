//! Compiled artifacts on disk, keyed by module digest and engine compatibility.
//!
//! A module is compiled once per digest and engine configuration: the artifact is written to
//! `<dir>/<digest-hex>-<engine-hex>.cwasm` (through a temporary file and a rename, so a reader
//! never sees half an artifact) and later loads deserialize it instead of compiling. A second
//! process on the same directory — a restart, another replica — finds it too. Artifacts that do
//! not load (truncated, another engine) are compiled again and replaced. Within a process each
//! digest is compiled once: loaded components are kept in memory, and a second load of a digest
//! being compiled waits for the first.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Feeds `Hash` output into sha256, so the engine's compatibility hash is stable across
/// processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Compilation counters, for status and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Modules compiled by this process.
    pub compiled: AtomicU64,
    /// Modules loaded from an artifact on disk.
    pub loaded: AtomicU64,
}

#[derive(Debug)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
    pub stats: CacheStats,
    /// Components this process has, by digest.
    loaded: Mutex<HashMap<String, Component>>,
    /// One lock per digest being compiled, so it is compiled once.
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl ArtifactCache {
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
        }
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        // The engine's own hash covers its configuration and wasmtime's version; this crate's
        // version is added so a changed host never trusts an older one's artifacts.
        hasher.write(env!("CARGO_PKG_VERSION").as_bytes());
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Ok(Self {
            dir,
            engine_key,
            stats: CacheStats::default(),
            loaded: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, digest_hex: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{digest_hex}-{}.cwasm", self.engine_key)))
    }

    fn remembered(&self, digest_hex: &str) -> Option<Component> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest_hex)
            .cloned()
    }

    fn remember(&self, digest_hex: &str, component: &Component) {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest_hex.to_owned(), component.clone());
    }

    /// The component for a digest, if this process has it or an artifact on disk loads.
    pub fn get(&self, engine: &Engine, digest_hex: &str) -> Option<Component> {
        if let Some(component) = self.remembered(digest_hex) {
            return Some(component);
        }
        let component = self.get_from_disk(engine, digest_hex)?;
        self.remember(digest_hex, &component);
        Some(component)
    }

    fn get_from_disk(&self, engine: &Engine, digest_hex: &str) -> Option<Component> {
        let path = self.path(digest_hex)?;
        if !path.exists() {
            return None;
        }
        match deserialize(engine, &path) {
            Ok(component) => {
                self.stats.loaded.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), "discarding a compiled plugin that does not load: {error:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Compiles `wasm` (once per digest, however many callers ask at once) and stores the
    /// artifact. Failing to write the artifact is logged, not an error: the component is still
    /// usable.
    pub fn compile(
        &self,
        engine: &Engine,
        digest_hex: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Component> {
        let lock = self
            .compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest_hex.to_owned())
            .or_default()
            .clone();
        let _compiling = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(component) = self.get(engine, digest_hex) {
            return Ok(component);
        }
        let compiled = self.compile_uncached(engine, digest_hex, wasm);
        if let Ok(component) = &compiled {
            self.remember(digest_hex, component);
        }
        self.compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest_hex);
        compiled
    }

    fn compile_uncached(
        &self,
        engine: &Engine,
        digest_hex: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Component> {
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        let Some(path) = self.path(digest_hex) else {
            return Component::new(engine, wasm);
        };
        let artifact = engine.precompile_component(wasm)?;
        if let Err(error) = write_atomically(&path, &artifact) {
            tracing::warn!(path = %path.display(), "cannot cache a compiled plugin: {error}");
        }
        // The artifact was made by this engine from bytes just checked against their digest.
        #[allow(unsafe_code)]
        unsafe {
            Component::deserialize(engine, &artifact)
        }
    }
}

/// Loads an artifact this cache wrote.
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // Only this cache writes into its directory, always whole files (see `write_atomically`),
    // and the file name carries the engine's compatibility key; wasmtime checks the header again.
    #[allow(unsafe_code)]
    unsafe {
        Component::deserialize_file(engine, path)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
