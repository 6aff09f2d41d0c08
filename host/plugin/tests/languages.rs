//! The WIT is language-neutral: a scheduling policy written in Python (componentize-py, from
//! `examples/label-preference-python`) is built from source here and runs in the host like the
//! Rust ones.

use std::path::Path;
use std::process::Command;

use flotilla_plugin::bindings::scheduling::{Change, Node, Pod, Prepared, Resources};
use flotilla_plugin::{EngineConfig, Limits, PluginHost, SchedulerPolicy, Services, World};

fn resources() -> Resources {
    Resources {
        milli_cpu: 1000,
        memory: 1 << 30,
        pods: 110,
        scalar: vec![],
    }
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        taints: vec![],
        allocatable: resources(),
        unschedulable: false,
        ready: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_policy_runs_in_the_scheduler_world() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let wasm_path = out.path().join("label-preference.wasm");
    let built = Command::new("componentize-py")
        .arg("-d")
        .arg(root.join("wit/plugin"))
        .args(["-w", "scheduler-policy", "componentize", "--python-path"])
        .arg(root.join("examples/label-preference-python"))
        .arg("app")
        .arg("-o")
        .arg(&wasm_path)
        .output()
        .expect("componentize-py is installed (scripts/deps installs it)");
    assert!(
        built.status.success(),
        "componentize-py failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = std::fs::read(&wasm_path).unwrap();

    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let module = host
        .load(
            "label-preference-python",
            World::SchedulerPolicy,
            &wasm,
            None,
        )
        .unwrap();
    let services = Services {
        config: r#"{"label": "disktype", "value": "ssd", "required": true}"#.into(),
        ..Services::default()
    };
    let limits = Limits {
        memory_bytes: 128 << 20,
        call_deadline: std::time::Duration::from_secs(5),
        ..Limits::default()
    };
    let mut instance = module.instantiate(limits.clone(), services).await.unwrap();
    let info = instance.info().await.unwrap();
    assert_eq!(info.name, "label-preference-python");
    instance.self_check().await.unwrap();
    let mut policy = SchedulerPolicy::new(instance).await.unwrap();
    policy
        .update(&[
            Change::NodeSet((0, node("fast", &[("disktype", "ssd")]))),
            Change::NodeSet((1, node("slow", &[("disktype", "hdd")]))),
            Change::NodeSet((2, node("plain", &[]))),
        ])
        .await
        .unwrap();
    let pod = Pod {
        uid: "u".into(),
        namespace: "default".into(),
        name: "p".into(),
        labels: vec![],
        node_name: None,
        node_selector: vec![],
        node_affinity: None,
        tolerations: vec![],
        requests: resources(),
        topology_spread_constraints: vec![],
        priority: 0,
    };
    assert_eq!(policy.prepare(&pod).await.unwrap(), Prepared::Proceed);
    let filtered = policy.filter(&[0, 1, 2]).await.unwrap();
    let rejected: Vec<u32> = filtered.rejected.iter().map(|r| r.node).collect();
    assert_eq!(rejected, [1, 2]);
    assert_eq!(filtered.reasons, ["node(s) didn't have label disktype"]);
    assert_eq!(policy.score(&[0, 1, 2]).await.unwrap(), [100, 0, 0]);

    // Its self-check refuses a configuration it cannot use, as a Rust plugin's does.
    let services = Services {
        config: "{}".into(),
        ..Services::default()
    };
    let mut instance = module.instantiate(limits, services).await.unwrap();
    let refused = instance.self_check().await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("configuration needs \"label\""),
        "{refused}"
    );
}
