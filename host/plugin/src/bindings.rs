//! Host bindings for every world in `wit/plugin`, generated here and nowhere else.
//!
//! They are generated once, from the `host` world (the union of the plugin worlds), so each
//! imported interface has one Rust trait and each exported interface one typed handle; a
//! plugin is instantiated against the world it declares and only that world's exports are
//! looked up. The proxy strategy's exports (`strategy`, `strategy-inputs`) are synchronous;
//! the rest are async.

wasmtime::component::bindgen!({
    path: "../../wit/plugin",
    world: "host",
    imports: {
        "flotilla:plugin/cache": async | trappable,
        "flotilla:plugin/api": async | trappable,
        default: trappable,
    },
    // A proxy strategy's calls run directly on the caller's thread, without a fiber: they
    // are on every request's path, and their one Flotilla import (`endpoint-load`) only reads
    // counters. Every other world's calls run on a fiber and may wait in the host.
    exports: {
        "flotilla:plugin/meta": async,
        "flotilla:plugin/scheduler": async,
        "flotilla:plugin/admission": async,
        "flotilla:plugin/reconciler": async,
    },
    additional_derives: [PartialEq],
});

/// Adds the host side of every Flotilla interface to one of the host's linkers (the world check
/// keeps each plugin to its own world's imports).
pub(crate) fn add_flotilla_imports(
    linker: &mut wasmtime::component::Linker<crate::host::HostState>,
) -> wasmtime::Result<()> {
    Host_::add_to_linker::<_, wasmtime::component::HasSelf<crate::host::HostState>>(
        linker,
        |state| state,
    )
}

pub use exports::flotilla::plugin::{
    admission, meta, reconciler, scheduler, strategy, strategy_inputs,
};
pub use flotilla::plugin::{
    api, balancing, cache, clock, config, endpoint_load, log, scheduling, types,
};
