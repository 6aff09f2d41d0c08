//! The Flotilla plugin SDK: what plugin authors depend on.
//!
//! A plugin is a WebAssembly component for one world of `wit/plugin` (the WIT package
//! `flotilla:plugin`). This crate builds against those same files, hides the bindings
//! `wit-bindgen` generates from them, and gives authors idiomatic types, one trait per plugin
//! kind and one export macro per kind. It carries [`WIT_VERSION`], which every plugin reports,
//! so a host serving another version refuses the plugin before instantiating it.
//!
//! Enable the feature of the kind you build (`scheduler`, `admission`) and export your type
//! with that kind's macro ([`export_scheduler_policy!`], [`export_admission_policy!`]):
//!
//! ```ignore
//! use flotilla_sdk::scheduling::*;
//!
//! #[derive(Default)]
//! struct Spread { nodes: NodeTable }
//!
//! impl SchedulerPolicy for Spread {
//!     const NAME: &'static str = "spread";
//!     const VERSION: &'static str = "1.0.0";
//!     fn new(_config: &str) -> Result<Self, String> { Ok(Self::default()) }
//!     fn capabilities(&self) -> Capabilities { Capabilities { filter: false, score: true, wants_pods: true } }
//!     fn update(&mut self, change: Change) { self.nodes.apply(change) }
//!     fn prepare(&mut self, _pod: Pod) -> Result<Prepared, String> { Ok(Prepared::Proceed) }
//!     fn score(&mut self, nodes: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
//!         scores.extend(nodes.iter().map(|&n| 100 - self.nodes.pods_on(n).min(100) as i64));
//!         Ok(())
//!     }
//! }
//!
//! flotilla_sdk::export_scheduler_policy!(Spread);
//! ```
//!
//! The types and traits compile on any target, so a policy can also be linked natively (the
//! benchmarks compare the two); the bindings exist only on `wasm32`.
//!
//! This crate must not expose generated binding types: authors see only the types here.

pub mod admission;
pub mod host;
pub mod scheduling;

#[cfg(all(target_arch = "wasm32", feature = "scheduler", feature = "admission"))]
compile_error!("a component exports one world: enable one plugin kind's feature of flotilla-sdk");

/// The version of the `flotilla:plugin` WIT package this SDK builds against.
pub const WIT_VERSION: &str = "0.1.0";

/// Implements a kind's `Singleton` for an exported type: the one policy value of the component,
/// made on first use from the plugin's configuration. The export macros expand to it.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_singleton {
    ($policy:ty, $singleton:path, $kind:path) => {
        const _: () = {
            impl $singleton for $policy {
                fn with<R>(f: impl FnOnce(&mut Result<Self, String>) -> R) -> R {
                    ::std::thread_local! {
                        static POLICY: ::std::cell::RefCell<Option<Result<$policy, String>>> =
                            const { ::std::cell::RefCell::new(None) };
                    }
                    POLICY.with(|cell| {
                        let mut slot = cell.borrow_mut();
                        let policy = slot.get_or_insert_with(|| {
                            <$policy as $kind>::new(&$crate::host::config())
                        });
                        f(policy)
                    })
                }
            }
        };
    };
}

/// What a plugin reports about itself through `meta.info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub wit_version: String,
}

/// Generated bindings, per world. Not part of the SDK's API: the export macros name them.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
#[allow(
    unsafe_code,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
pub mod __bindings {
    #[cfg(feature = "scheduler")]
    pub mod scheduler {
        wit_bindgen::generate!({
            path: "../wit/plugin",
            world: "scheduler-policy",
            pub_export_macro: true,
            export_macro_name: "__export_scheduler_policy",
            default_bindings_module: "$crate::__bindings::scheduler",
        });
    }

    #[cfg(feature = "admission")]
    pub mod admission {
        wit_bindgen::generate!({
            path: "../wit/plugin",
            world: "admission-policy",
            pub_export_macro: true,
            export_macro_name: "__export_admission_policy",
            default_bindings_module: "$crate::__bindings::admission",
        });
    }
}
