//! What the tests of SDK-built examples share.

use std::path::Path;
use std::process::Command;

/// Builds the example component in `examples/<name>` (each is its own workspace, since a
/// component exports one world) and returns its bytes.
pub fn build_example(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("examples").join(name).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let built = cargo.output().expect("cargo runs");
    assert!(
        built.status.success(),
        "building examples/{name} failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let file = format!("{}.wasm", name.replace('-', "_"));
    std::fs::read(target.join("wasm32-wasip2/release").join(file)).unwrap()
}
