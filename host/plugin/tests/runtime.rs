//! The plugin host against real components from `plugins/`: loading and its checks, the
//! artifact cache, the scheduling handle, and containment of misbehaving plugins.

use std::time::{Duration, Instant};

use flotilla_builtins as builtins;
use flotilla_plugin::bindings::scheduling::{Change, Node, Pod, Prepared, Resources};
use flotilla_plugin::{
    EngineConfig, Failure, Limits, PluginHost, SchedulerPolicy, Services, WIT_VERSION, World,
    digest,
};

fn host() -> PluginHost {
    PluginHost::new(EngineConfig::default()).expect("engine")
}

fn resources(milli_cpu: i64, memory: i64, pods: i64) -> Resources {
    Resources {
        milli_cpu,
        memory,
        pods,
        scalar: vec![],
    }
}

fn node(name: &str, milli_cpu: i64) -> Node {
    Node {
        name: name.into(),
        labels: vec![("kubernetes.io/hostname".into(), name.into())],
        taints: vec![],
        allocatable: resources(milli_cpu, 8 << 30, 110),
        unschedulable: false,
        ready: true,
    }
}

fn pod(milli_cpu: i64) -> Pod {
    Pod {
        uid: "uid-1".into(),
        namespace: "default".into(),
        name: "p".into(),
        labels: vec![],
        node_name: None,
        node_selector: vec![],
        node_affinity: None,
        tolerations: vec![],
        requests: resources(milli_cpu, 0, 1),
        topology_spread_constraints: vec![],
        priority: 0,
    }
}

async fn policy(host: &PluginHost, name: &str, config: &str, limits: Limits) -> SchedulerPolicy {
    let builtin = builtins::find(name).expect("built-in component");
    let module = host
        .load(name, World::SchedulerPolicy, builtin.wasm, None)
        .expect("load");
    let services = Services {
        config: config.into(),
        ..Services::default()
    };
    let mut instance = module
        .instantiate(limits, services)
        .await
        .expect("instantiate");
    instance.self_check().await.expect("self-check");
    SchedulerPolicy::new(instance)
        .await
        .expect("scheduler handle")
}

#[tokio::test]
async fn a_policy_filters_nodes_it_was_told_about() {
    let host = host();
    let mut fit = policy(&host, "node-resources-fit", "{}", Limits::default()).await;
    assert!(fit.capabilities().filter && fit.capabilities().wants_pods);
    fit.update(&[
        Change::NodeSet((0, node("small", 500))),
        Change::NodeSet((1, node("big", 4000))),
    ])
    .await
    .unwrap();
    assert_eq!(fit.prepare(&pod(1000)).await.unwrap(), Prepared::Proceed);
    let result = fit.filter(&[0, 1]).await.unwrap();
    assert_eq!(result.rejected.len(), 1);
    assert_eq!(result.rejected[0].node, 0);
    assert_eq!(
        result.reasons[result.rejected[0].reason as usize],
        "Insufficient cpu"
    );
}

#[tokio::test]
async fn a_module_is_checked_before_it_is_instantiated() {
    let host = host();
    let probe = builtins::find("probe").unwrap();

    let wrong_world = host
        .load("probe", World::SchedulerPolicy, probe.wasm, None)
        .unwrap_err();
    assert!(
        matches!(wrong_world.failure, Failure::WrongWorld { .. }),
        "{wrong_world}"
    );
    assert!(
        wrong_world
            .to_string()
            .contains("not a scheduler-policy plugin"),
        "{wrong_world}"
    );

    let mismatch = host
        .load("probe", World::Probe, probe.wasm, Some("sha256:00"))
        .unwrap_err();
    assert!(
        matches!(mismatch.failure, Failure::Digest { .. }),
        "{mismatch}"
    );

    let garbage = host
        .load("garbage", World::Probe, b"\0asm not really", None)
        .unwrap_err();
    assert!(matches!(garbage.failure, Failure::Compile(_)), "{garbage}");
    assert!(
        garbage.to_string().starts_with("plugin garbage (sha256:"),
        "{garbage}"
    );

    // The same component as if built against another version of the package: every
    // `flotilla:plugin/…@<this version>` name becomes `@0.9.0` (same length, so still a valid
    // binary).
    let ours = format!("flotilla:plugin/meta@{WIT_VERSION}");
    assert!(String::from_utf8_lossy(probe.wasm).contains(&ours));
    let mut patched = probe.wasm.to_vec();
    let needle = ours.as_bytes();
    let mut at = 0;
    while let Some(i) = patched[at..]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        let start = at + i + needle.len() - 5;
        patched[start..start + 5].copy_from_slice(b"0.9.0");
        at = start;
    }
    let incompatible = host
        .load("probe", World::Probe, &patched, None)
        .unwrap_err();
    assert_eq!(
        incompatible.failure,
        Failure::Incompatible {
            found: "0.9.0".into()
        },
        "{incompatible}"
    );
    assert!(
        incompatible.to_string().contains(&format!(
            "was built against flotilla:plugin@0.9.0; this host serves @{WIT_VERSION}"
        )),
        "{incompatible}"
    );
}

#[tokio::test]
async fn compiled_artifacts_are_reused_by_a_second_host() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    };
    let wasm = builtins::find("least-allocated").unwrap().wasm;
    let first = PluginHost::new(config.clone()).unwrap();
    first
        .load("least-allocated", World::SchedulerPolicy, wasm, None)
        .unwrap();
    first
        .load("least-allocated-again", World::SchedulerPolicy, wasm, None)
        .unwrap();
    let stats = first.cache_stats();
    assert_eq!(
        stats.compiled.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one compilation per digest in a process"
    );

    // A restart or a second replica: a new engine on the same directory.
    let second = PluginHost::new(config).unwrap();
    let module = second
        .load_cached("least-allocated", World::SchedulerPolicy, &digest(wasm))
        .expect("an artifact on disk")
        .unwrap();
    let stats = second.cache_stats();
    assert_eq!(stats.compiled.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(stats.loaded.load(std::sync::atomic::Ordering::Relaxed), 1);
    module
        .instantiate(Limits::default(), Services::default())
        .await
        .expect("the cached artifact runs");
    second
        .load("least-allocated", World::SchedulerPolicy, wasm, None)
        .unwrap();
    assert_eq!(stats.compiled.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Runs the misbehaving plugin in `mode` and returns the failure of the call that misbehaved.
async fn misbehave(host: &PluginHost, mode: &str, call: &str) -> flotilla_plugin::PluginError {
    let limits = Limits {
        memory_bytes: 32 << 20,
        call_deadline: Duration::from_millis(200),
        boundary_bytes: 1 << 20,
    };
    let config = format!(r#"{{"mode": "{mode}", "in": "{call}"}}"#);
    let mut policy = policy(host, "misbehave", &config, limits).await;
    policy
        .update(&[Change::NodeSet((0, node("n0", 1000)))])
        .await
        .unwrap();
    let error = match call {
        "prepare" => policy.prepare(&pod(1)).await.unwrap_err(),
        "filter" => {
            policy.prepare(&pod(1)).await.unwrap();
            policy.filter(&[0]).await.unwrap_err()
        }
        _ => {
            policy.prepare(&pod(1)).await.unwrap();
            policy.score(&[0]).await.unwrap_err()
        }
    };
    assert_eq!(error.plugin, "misbehave");
    assert_eq!(
        error.digest,
        digest(builtins::find("misbehave").unwrap().wasm)
    );
    error
}

#[tokio::test]
async fn misbehaving_plugins_are_contained_and_named() {
    let host = host();

    let started = Instant::now();
    let looped = misbehave(&host, "loop", "score").await;
    assert_eq!(
        looped.failure,
        Failure::Deadline(Duration::from_millis(200))
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let bomb = misbehave(&host, "memory", "prepare").await;
    assert_eq!(bomb.failure, Failure::Memory { limit: 32 << 20 }, "{bomb}");

    let panicked = misbehave(&host, "panic", "filter").await;
    let Failure::Trap(message) = &panicked.failure else {
        panic!("{panicked}")
    };
    assert!(
        message.contains("misbehave: told to panic in filter"),
        "{message}"
    );

    // Rust guests keep their stack in linear memory: overflowing it is an out-of-bounds access
    // (other languages hit wasmtime's own stack limit, a "stack overflow" trap).
    let deep = misbehave(&host, "recursion", "score").await;
    let Failure::Trap(message) = &deep.failure else {
        panic!("{deep}")
    };
    assert!(
        message.contains("out of bounds memory access") || message.contains("stack overflow"),
        "{message}"
    );

    let range = misbehave(&host, "out-of-range", "score").await;
    assert!(
        matches!(&range.failure, Failure::Invalid(m) if m.contains("score 1000 for node 0 is outside 0..=100")),
        "{range}"
    );
    let count = misbehave(&host, "wrong-count", "score").await;
    assert!(matches!(count.failure, Failure::Invalid(_)), "{count}");
    let stranger = misbehave(&host, "unknown-node", "filter").await;
    assert!(
        matches!(&stranger.failure, Failure::Invalid(m) if m.contains("not a candidate")),
        "{stranger}"
    );
    let huge = misbehave(&host, "huge", "score").await;
    assert_eq!(huge.failure, Failure::Boundary { limit: 1 << 20 }, "{huge}");

    // The host and other plugins are unaffected.
    let mut fit = policy(&host, "node-resources-fit", "{}", Limits::default()).await;
    fit.update(&[Change::NodeSet((0, node("n0", 1000)))])
        .await
        .unwrap();
    assert_eq!(fit.prepare(&pod(10)).await.unwrap(), Prepared::Proceed);
}

#[tokio::test]
async fn a_failed_call_poisons_only_its_instance() {
    let host = host();
    let limits = Limits {
        call_deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut bad = policy(
        &host,
        "misbehave",
        r#"{"mode": "panic", "in": "prepare"}"#,
        limits,
    )
    .await;
    bad.prepare(&pod(1)).await.unwrap_err();
    assert!(bad.is_poisoned());
    let again = bad.update(&[]).await.unwrap_err();
    assert!(matches!(again.failure, Failure::Poisoned(_)), "{again}");
}

#[tokio::test]
async fn a_failing_self_check_refuses_the_module() {
    let host = host();
    let wasm = builtins::find("misbehave").unwrap().wasm;
    let module = host
        .load("misbehave", World::SchedulerPolicy, wasm, None)
        .unwrap();
    let services = Services {
        config: r#"{"mode": "bad-config"}"#.into(),
        ..Services::default()
    };
    let mut instance = module
        .instantiate(Limits::default(), services)
        .await
        .unwrap();
    let error = instance.self_check().await.unwrap_err();
    assert_eq!(
        error.failure,
        Failure::SelfCheck("mode bad-config is refused by the self-check".into())
    );
}
