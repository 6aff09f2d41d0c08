//! The probe plugin: exports `flotilla:plugin/meta` and nothing else. The host's tests load it to
//! prove that the guest workspace builds to a component the host can instantiate.

wit_bindgen::generate!({
    path: "../../wit/plugin",
    world: "probe",
});

struct Probe;

impl exports::flotilla::plugin::meta::Guest for Probe {
    fn info() -> exports::flotilla::plugin::meta::PluginInfo {
        exports::flotilla::plugin::meta::PluginInfo {
            name: "probe".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            wit_version: "0.1.3".to_owned(),
        }
    }

    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

export!(Probe);
