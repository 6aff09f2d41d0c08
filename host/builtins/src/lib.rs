//! The built-in guest components, embedded in the host.
//!
//! `build.rs` compiles the `plugins/` workspace to wasm32-wasip2 components on every host build,
//! so the host always carries the components built from the sources beside it. This crate only
//! hands out their bytes: it must not load, run or interpret them (that is `flotilla-plugin`).

/// One embedded component.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// The guest crate's package name.
    pub name: &'static str,
    /// The component's bytes.
    pub wasm: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// Looks a built-in component up by name.
pub fn find(name: &str) -> Option<Builtin> {
    ALL.iter().find(|b| b.name == name).copied()
}
