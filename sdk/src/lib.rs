//! The Flotilla plugin SDK: what plugin authors depend on.
//!
//! A plugin is a WebAssembly component for one world of `wit/plugin` (the WIT package
//! `flotilla:plugin`). This crate builds against those same files, hides the bindings
//! `wit-bindgen` generates from them, and gives authors idiomatic types, one trait per plugin
//! kind and one export macro per kind. It carries [`WIT_VERSION`], which every plugin reports,
//! so a host serving another version refuses the plugin before instantiating it.
//!
//! Enable the feature of the kind you build (`scheduler`, `admission`, `controller`, `proxy`)
//! and export your type with that kind's macro ([`export_scheduler_policy!`],
//! [`export_admission_policy!`], [`export_controller!`], [`export_proxy_strategy!`]):
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
pub mod cache;
pub mod controller;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod proxy;
pub mod scheduling;

#[cfg(target_arch = "wasm32")]
const _: () = assert!(
    cfg!(feature = "scheduler") as u8
        + cfg!(feature = "admission") as u8
        + cfg!(feature = "controller") as u8
        + cfg!(feature = "proxy") as u8
        <= 1,
    "a component exports one world: enable one plugin kind's feature of flotilla-sdk"
);

#[cfg(all(target_arch = "wasm32", feature = "admission"))]
pub(crate) use __bindings::admission::flotilla::plugin as imports;
#[cfg(all(target_arch = "wasm32", feature = "controller"))]
pub(crate) use __bindings::controller::flotilla::plugin as imports;
#[cfg(all(target_arch = "wasm32", feature = "proxy"))]
pub(crate) use __bindings::proxy::flotilla::plugin as imports;
/// The host interfaces of the world being built (one kind's feature is enabled at a time).
#[cfg(all(target_arch = "wasm32", feature = "scheduler"))]
pub(crate) use __bindings::scheduler::flotilla::plugin as imports;

/// A Kubernetes `Status` failure: HTTP code, reason (`NotFound`, `Conflict`, `Forbidden`, …)
/// and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// Names one object; `namespace` is none for cluster-scoped kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// Conversions between the generated shared records and the SDK's, for the worlds that import
/// them.
#[cfg(all(
    target_arch = "wasm32",
    any(feature = "admission", feature = "controller")
))]
#[allow(dead_code)]
pub(crate) mod convert {
    use crate::imports::types;

    pub(crate) fn status(s: types::Status) -> crate::Status {
        crate::Status {
            code: s.code,
            reason: s.reason,
            message: s.message,
        }
    }

    pub(crate) fn wit_status(s: crate::Status) -> types::Status {
        types::Status {
            code: s.code,
            reason: s.reason,
            message: s.message,
        }
    }

    pub(crate) fn object_ref(r: types::ObjectRef) -> crate::ObjectRef {
        crate::ObjectRef {
            api_version: r.api_version,
            kind: r.kind,
            namespace: r.namespace,
            name: r.name,
        }
    }

    pub(crate) fn wit_object_ref(r: crate::ObjectRef) -> types::ObjectRef {
        types::ObjectRef {
            api_version: r.api_version,
            kind: r.kind,
            namespace: r.namespace,
            name: r.name,
        }
    }
}

/// The version of the `flotilla:plugin` WIT package this SDK builds against.
pub const WIT_VERSION: &str = "0.1.3";

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

    #[cfg(feature = "controller")]
    pub mod controller {
        wit_bindgen::generate!({
            path: "../wit/plugin",
            world: "controller",
            pub_export_macro: true,
            export_macro_name: "__export_controller",
            default_bindings_module: "$crate::__bindings::controller",
        });
    }

    #[cfg(feature = "proxy")]
    pub mod proxy {
        wit_bindgen::generate!({
            path: "../wit/plugin",
            world: "proxy-strategy",
            pub_export_macro: true,
            export_macro_name: "__export_proxy_strategy",
            default_bindings_module: "$crate::__bindings::proxy",
        });
    }
}
