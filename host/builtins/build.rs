//! Builds the guest workspace in `plugins/` to wasm32-wasip2 components and writes
//! `$OUT_DIR/builtins.rs`, which embeds each component. A plain `cargo build` of the host thus
//! always carries up-to-date built-in plugins.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Every guest crate in `plugins/`, by package name. The constant it becomes is the name in
/// upper case with `-` turned into `_`.
const GUESTS: &[&str] = &[
    "probe",
    "node-name",
    "node-unschedulable",
    "node-resources-fit",
    "node-affinity",
    "taint-toleration",
    "pod-topology-spread",
    "least-allocated",
    "most-allocated",
    "balanced-allocation",
    // Workloads `flotilla bench pods` runs: the example wasi:http handler and a command.
    "hello-http",
    "workload",
];

/// Guests embedded only with the `testing` feature: misbehaving plugins for containment tests,
/// and the examples the end-to-end tests push to a cluster.
const TESTING_GUESTS: &[&str] = &[
    "misbehave",
    "blocking",
    "misbehaving-strategy",
    "zone-spread",
    "released-controller",
    "released-strategy",
];

/// The built-in controllers, in `plugins/controllers`.
const CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "garbage-collector",
    "endpoints-controller",
    "node-lifecycle-controller",
    "job-controller",
    "daemonset-controller",
    "statefulset-controller",
    "cronjob-controller",
    "namespace-controller",
    "resourcequota-controller",
];

/// The built-in proxy strategies, in `plugins/proxy`.
const STRATEGIES: &[&str] = &[
    "round-robin",
    "random",
    "least-connections",
    "client-ip-affinity",
    "canary",
];

/// The built-in admission policies, in `plugins/admission/builtin`.
const ADMISSION: &[&str] = &[
    "namespace-lifecycle",
    "limit-ranger",
    "resource-quota",
    "pod-security",
];

/// Example admission policies `flotilla bench admission` measures (from `examples/`).
const BENCH_ADMISSION: &[&str] = &["require-labels"];

/// Admission policies in `plugins/admission` (the examples among them live in `examples/`),
/// embedded only with the `testing` feature for the end-to-end tests.
const TESTING_ADMISSION: &[&str] = &["admission-misbehave", "allowed-images", "inject-env"];

/// Controllers embedded only with the `testing` feature.
const TESTING_CONTROLLERS: &[&str] = &["misbehaving-controller", "website-operator"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    for watched in ["plugins", "wit", "sdk", "examples"] {
        rerun_if_changed(&root.join(watched));
    }

    ensure_target();

    let testing = env::var_os("CARGO_FEATURE_TESTING").is_some();
    // A separate target directory: the outer cargo holds the lock on the host's one.
    let target_dir = guest_target_dir(&out_dir);
    // The controllers and the proxy strategies are workspaces of their own: the SDK's
    // features select one world per component, and cargo unifies features within a workspace.
    for workspace in [
        plugins.join("Cargo.toml"),
        plugins.join("controllers/Cargo.toml"),
        plugins.join("proxy/Cargo.toml"),
        plugins.join("admission/Cargo.toml"),
    ] {
        build_guests(&workspace, &target_dir);
    }

    let mut generated = String::from(
        "/// The built-in components, by package name.\npub const ALL: &[Builtin] = &[\n",
    );
    let mut constants = String::new();
    let placed = |dir: &'static str| move |guest: &&'static str| (*guest, dir);
    let embedded_guests = GUESTS
        .iter()
        .map(placed(""))
        .chain(CONTROLLERS.iter().map(placed("controllers/")))
        .chain(STRATEGIES.iter().map(placed("proxy/")))
        .chain(ADMISSION.iter().map(placed("admission/builtin/")))
        .chain(BENCH_ADMISSION.iter().map(placed("../examples/")))
        .chain(TESTING_GUESTS.iter().filter(|_| testing).map(placed("")))
        .chain(
            TESTING_CONTROLLERS
                .iter()
                .filter(|_| testing)
                .map(placed("controllers/")),
        )
        .chain(
            TESTING_ADMISSION
                .iter()
                .filter(|_| testing)
                .map(placed("admission/")),
        );
    for (guest, dir) in embedded_guests {
        let file = guest.replace('-', "_");
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{file}.wasm"));
        let embedded = out_dir.join(format!("{file}.wasm"));
        std::fs::copy(&built, &embedded)
            .unwrap_or_else(|e| panic!("guest component {} is missing: {e}", built.display()));
        let constant = file.to_uppercase();
        constants.push_str(&format!(
            "/// The `{guest}` component from `plugins/{dir}{guest}`.\npub const {constant}: Builtin = Builtin {{ name: {guest:?}, wasm: include_bytes!({:?}) }};\n",
            embedded.display().to_string()
        ));
        generated.push_str(&format!("    {constant},\n"));
    }
    generated.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), constants + &generated).expect("write builtins.rs");
}

/// `cargo build --release --target wasm32-wasip2` of one guest workspace.
fn build_guests(manifest: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest components: {e}"));
    assert!(
        status.success(),
        "building the guest components in {} failed ({status})",
        manifest.display()
    );
}

fn rerun_if_changed(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed={}", dir.display());
}

/// `target/<profile>/build/<crate>-<hash>/out` → `target/guests`.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .map(|target| target.join("guests"))
        .unwrap_or_else(|| out_dir.join("guests"))
}

/// Makes sure the wasm32-wasip2 standard library is installed. Machines that set
/// `RUSTUP_AUTO_INSTALL=0` do not install it from `rust-toolchain.toml`, so ask rustup directly.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|s| s.join("lib/rustlib").join(TARGET).exists()) {
        return;
    }
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        added,
        "the {TARGET} target is not installed and `rustup target add {TARGET}` failed; \
         install it and build again"
    );
}
