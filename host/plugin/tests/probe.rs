//! The guest build path end to end: the `probe` component from `plugins/`, built by
//! `flotilla-builtins`' build script, loads in the host and answers.

use flotilla_plugin::{EngineConfig, Limits, PluginHost, Services, WIT_VERSION, World, digest};

#[tokio::test]
async fn builtin_probe_component_loads_and_describes_itself() {
    let host = PluginHost::new(EngineConfig::default()).expect("engine");
    let probe = flotilla_builtins::find("probe").expect("probe is built in");
    let module = host
        .load(
            probe.name,
            World::Probe,
            probe.wasm,
            Some(&digest(probe.wasm)),
        )
        .expect("loads");
    assert_eq!(module.digest(), digest(probe.wasm));
    assert!(module.digest().starts_with("sha256:") && module.digest().len() == 7 + 64);

    let mut instance = module
        .instantiate(Limits::default(), Services::default())
        .await
        .expect("instantiates");
    let info = instance.info().await.expect("describes itself");
    assert_eq!(info.name, "probe");
    assert_eq!(info.wit_version, WIT_VERSION);
    instance.self_check().await.expect("passes its self-check");
}

#[test]
fn the_host_serves_the_version_of_the_wit_package() {
    let meta = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../wit/plugin/meta.wit"
    ))
    .unwrap();
    assert!(
        meta.contains(&format!("package flotilla:plugin@{WIT_VERSION};")),
        "wit/plugin/meta.wit and flotilla_plugin::WIT_VERSION disagree"
    );
}
