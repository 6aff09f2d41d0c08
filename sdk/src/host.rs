//! What the host offers every plugin: logging, the clock and the plugin's configuration.
//!
//! Inside a component these call the host. Natively (a policy linked into a benchmark or a
//! unit test) logging goes to stderr, the clock is the system's, and the configuration is the
//! one set with [`set_native_config`].

/// Log levels, as the host's log has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

pub use imp::{config, log, now, set_native_config};

#[cfg(all(
    target_arch = "wasm32",
    any(
        feature = "scheduler",
        feature = "admission",
        feature = "controller",
        feature = "proxy"
    )
))]
mod imp {
    use super::Level;
    use crate::imports;

    /// Writes to the host's log, tagged with the plugin's name and digest.
    pub fn log(level: Level, message: &str) {
        use imports::log::Level as L;
        let level = match level {
            Level::Trace => L::Trace,
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        imports::log::log(level, message);
    }

    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub fn now() -> u64 {
        imports::clock::now()
    }

    /// Has no effect inside a component: the host gives the configuration.
    pub fn set_native_config(_config: &str) {}

    /// The plugin's configuration (`spec.config` of its WasmPlugin) as JSON; `{}` when unset.
    pub fn config() -> String {
        imports::config::get()
    }
}

#[cfg(not(all(
    target_arch = "wasm32",
    any(
        feature = "scheduler",
        feature = "admission",
        feature = "controller",
        feature = "proxy"
    )
)))]
mod imp {
    use super::Level;

    static NATIVE_CONFIG: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

    /// Writes to stderr.
    pub fn log(level: Level, message: &str) {
        eprintln!("[{level:?}] {message}");
    }

    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Sets what [`config`] returns outside a component.
    pub fn set_native_config(config: &str) {
        *NATIVE_CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(config.to_owned());
    }

    /// The configuration set with [`set_native_config`]; `{}` when unset.
    pub fn config() -> String {
        NATIVE_CONFIG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "{}".to_owned())
    }
}
