//! The guest build path end to end: the `probe` component from `plugins/`, built by
//! `flotilla-builtins`' build script, loads in the host and answers.

use flotilla_plugin::{Limits, PluginError, PluginHost, WIT_VERSION, digest};

#[test]
fn builtin_probe_component_loads_and_describes_itself() {
    let host = PluginHost::new(Limits::default()).expect("engine");
    let probe = flotilla_builtins::find("probe").expect("probe is built in");
    let module = host.compile(probe.name, probe.wasm).expect("compiles");
    assert_eq!(module.digest, digest(probe.wasm));
    assert!(module.digest.starts_with("sha256:") && module.digest.len() == 7 + 64);

    let info = host.describe(&module).expect("describes itself");
    assert_eq!(info.name, "probe");
    assert_eq!(info.wit_version, WIT_VERSION);
}

#[test]
fn bytes_that_are_not_a_component_are_refused_with_name_and_digest() {
    let host = PluginHost::new(Limits::default()).expect("engine");
    let garbage = b"\0asm this is not a component".to_vec();
    let err = host.compile("broken", &garbage).unwrap_err();
    assert!(matches!(err, PluginError::Compile { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("broken"), "{message}");
    assert!(message.contains(&digest(&garbage)), "{message}");
}
