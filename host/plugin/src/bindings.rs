//! Host bindings for every world in `wit/plugin`, generated here and nowhere else.
//!
//! They are generated once, from the `host` world (the union of the plugin worlds), so each
//! imported interface has one Rust trait and each exported interface one typed handle; a
//! plugin is instantiated against the world it declares and only that world's exports are
//! looked up.

wasmtime::component::bindgen!({
    path: "../../wit/plugin",
    world: "host",
    imports: {
        "flotilla:plugin/cache": async | trappable,
        "flotilla:plugin/api": async | trappable,
        "flotilla:plugin/endpoint-load": async | trappable,
        default: trappable,
    },
    exports: {
        default: async,
    },
    additional_derives: [PartialEq],
});

pub use exports::flotilla::plugin::{
    admission, meta, reconciler, scheduler, strategy, strategy_inputs,
};
pub use flotilla::plugin::{
    api, balancing, cache, clock, config, endpoint_load, log, scheduling, types,
};
