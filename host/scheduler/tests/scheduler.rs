//! The scheduler against a real API server (bootstrapped, on loopback) and simulated nodes:
//! binding, Kubernetes' FailedScheduling summary, retries when the cluster changes, plugins that
//! misbehave, hot swaps, modules pulled from a registry, and leader election.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_apiserver::{ApiOptions, ApiServer};
use flotilla_client::plugins;
use flotilla_plugin::{EngineConfig, PluginHost};
use flotilla_scheduler::{Options, Stats};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

struct Cluster {
    client: kube::Client,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store: flotilla_store::SharedStore = Arc::new(
        flotilla_store::EmbeddedStore::open(dir.path(), Default::default())
            .await
            .unwrap(),
    );
    let api = ApiServer::with_options(store, ApiOptions::default());
    api.bootstrap().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api.router()).await });
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    Cluster { client, _dir: dir }
}

fn host() -> PluginHost {
    PluginHost::new(EngineConfig::default()).unwrap()
}

async fn scheduler(cluster: &Cluster, identity: &str, leader_election: bool) -> Arc<Stats> {
    start_scheduler(cluster, identity, leader_election)
        .await
        .stats
}

async fn start_scheduler(
    cluster: &Cluster,
    identity: &str,
    leader_election: bool,
) -> flotilla_scheduler::Handle {
    let mut options = Options::new(identity, host());
    options.leader_election = leader_election;
    flotilla_scheduler::start(cluster.client.clone(), options)
        .await
        .unwrap()
}

async fn nodes(cluster: &Cluster, prefix: &str, count: usize, cpu: &str) {
    let options = flotilla_node::simulate::Options {
        count,
        prefix: prefix.into(),
        cpu: cpu.into(),
        memory: "16Gi".into(),
        lease_interval: Duration::from_secs(90),
        ..Default::default()
    };
    flotilla_node::simulate::start(cluster.client.clone(), options)
        .await
        .unwrap();
}

fn pod(name: &str, cpu: &str, extra: Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "c", "image": "app.wasm",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            pod["spec"][k] = v;
        }
    }
    serde_json::from_value(pod).unwrap()
}

async fn create(cluster: &Cluster, pod: Pod) {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    api.create(&PostParams::default(), &pod).await.unwrap();
}

/// Waits (watching, not sleeping) until `check` holds for the pod, and returns it.
async fn until_pod(cluster: &Cluster, name: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let found =
        kube::runtime::wait::await_condition(api, name, |p: Option<&Pod>| p.is_some_and(&check));
    tokio::time::timeout(Duration::from_secs(90), found)
        .await
        .unwrap_or_else(|_| panic!("pod {name} never got there"))
        .unwrap()
        .unwrap()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

/// Waits for an event about `pod` with `reason`, and returns its message.
async fn event(cluster: &Cluster, pod: &str, reason: &str) -> String {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let wanted = |e: &Event| {
        e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
    };
    let stream = kube::runtime::watcher(api, Default::default());
    let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
    let found = async {
        while let Some(event) = futures::StreamExt::next(&mut stream).await {
            let event = event.unwrap();
            if wanted(&event) {
                return event.message.unwrap_or_default();
            }
        }
        unreachable!("the watch ended")
    };
    tokio::time::timeout(Duration::from_secs(90), found)
        .await
        .unwrap_or_else(|_| panic!("no {reason} event for {pod}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_to_nodes_that_fit_and_events_say_where() {
    let cluster = cluster().await;
    nodes(&cluster, "small-", 1, "500m").await;
    nodes(&cluster, "big-", 2, "8").await;
    let stats = scheduler(&cluster, "only", false).await;
    for i in 0..6 {
        create(&cluster, pod(&format!("p{i}"), "1", json!({}))).await;
    }
    let mut placements = BTreeMap::new();
    for i in 0..6 {
        let bound = until_pod(&cluster, &format!("p{i}"), |p| node_of(p).is_some()).await;
        *placements.entry(node_of(&bound).unwrap()).or_insert(0) += 1;
    }
    assert!(!placements.contains_key("small-0"), "{placements:?}");
    assert_eq!(
        placements.get("big-0"),
        Some(&3),
        "least-allocated spreads: {placements:?}"
    );
    let message = event(&cluster, "p0", "Scheduled").await;
    assert!(
        message.starts_with("Successfully assigned default/p0 to big-"),
        "{message}"
    );
    assert_eq!(stats.scheduled.load(Ordering::Relaxed), 6);

    // The simulated nodes run what is bound to them.
    until_pod(&cluster, "p0", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_is_told_why_and_placed_once_a_node_fits() {
    let cluster = cluster().await;
    nodes(&cluster, "small-", 3, "1").await;
    nodes(&cluster, "gpu-", 2, "64").await;
    let taint =
        json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
    let api: Api<Node> = Api::all(cluster.client.clone());
    for name in ["gpu-0", "gpu-1"] {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&taint))
            .await
            .unwrap();
    }
    scheduler(&cluster, "only", false).await;
    create(&cluster, pod("greedy", "4", json!({}))).await;
    let message = event(&cluster, "greedy", "FailedScheduling").await;
    assert_eq!(
        message,
        "0/5 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient cpu."
    );
    let waiting = until_pod(&cluster, "greedy", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
    })
    .await;
    assert!(node_of(&waiting).is_none());

    nodes(&cluster, "large-", 1, "16").await;
    let bound = until_pod(&cluster, "greedy", |p| node_of(p).is_some()).await;
    assert_eq!(node_of(&bound).as_deref(), Some("large-0"));
}

async fn set_plugin(cluster: &Cluster, name: &str, spec: Value) {
    let api = plugins::api(&cluster.client, "WasmPlugin");
    let body = json!({"apiVersion": "plugins.flotilla.dev/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": name}, "spec": spec});
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

async fn set_profile(cluster: &Cluster, name: &str, plugins: Value) {
    let api = plugins::api(&cluster.client, "SchedulerProfile");
    let body = json!({"apiVersion": "plugins.flotilla.dev/v1alpha1", "kind": "SchedulerProfile",
        "metadata": {"name": name}, "spec": {"plugins": plugins}});
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

fn builtin(name: &str) -> Value {
    let module = flotilla_builtins::find(name).unwrap();
    json!({"digest": flotilla_plugin::digest(module.wasm), "builtin": name})
}

/// Waits until the WasmPlugin's status satisfies `check`.
async fn until_plugin(cluster: &Cluster, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let api = plugins::api(&cluster.client, "WasmPlugin");
    let found = kube::runtime::wait::await_condition(
        api.clone(),
        name,
        |o: Option<&kube::api::DynamicObject>| o.is_some_and(|o| check(&o.data["status"])),
    );
    match tokio::time::timeout(Duration::from_secs(90), found).await {
        Ok(object) => object.unwrap().unwrap().data["status"].clone(),
        Err(_) => {
            let last = api.get(name).await.map(|o| o.data["status"].clone());
            panic!("WasmPlugin {name} never got there; its status is {last:?}")
        }
    }
}

fn condition(status: &Value, kind: &str) -> String {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_plugin_fails_its_pods_by_name_while_other_pods_are_scheduled() {
    let cluster = cluster().await;
    nodes(&cluster, "n-", 3, "8").await;
    set_plugin(
        &cluster,
        "misbehave",
        json!({"kind": "scheduler-policy",
        "module": builtin("misbehave"), "config": {"mode": "loop", "in": "score"},
        "limits": {"callTimeoutMilliseconds": 50}}),
    )
    .await;
    set_profile(
        &cluster,
        "chaos-scheduler",
        json!([
            {"name": "node-resources-fit"}, {"name": "misbehave", "weight": 1},
        ]),
    )
    .await;
    scheduler(&cluster, "only", false).await;

    create(
        &cluster,
        pod("victim", "1", json!({"schedulerName": "chaos-scheduler"})),
    )
    .await;
    create(&cluster, pod("bystander", "1", json!({}))).await;
    let message = event(&cluster, "victim", "FailedScheduling").await;
    assert!(message.contains("plugin misbehave (sha256:"), "{message}");
    assert!(
        message.contains("ran past its deadline of 50ms"),
        "{message}"
    );
    until_pod(&cluster, "bystander", |p| node_of(p).is_some()).await;

    // It keeps failing: after three failures in a row the plugin is reported Degraded.
    let status = until_plugin(&cluster, "misbehave", |s| {
        condition(s, "Degraded") == "True"
    })
    .await;
    let component = &status["components"]["scheduler/only"];
    assert!(
        component["message"].as_str().unwrap().contains("deadline"),
        "{status}"
    );
    let victim = until_pod(&cluster, "victim", |_| true).await;
    assert!(node_of(&victim).is_none(), "never bound by a failing chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_hot_swapped_and_a_broken_module_is_refused() {
    let cluster = cluster().await;
    nodes(&cluster, "n-", 4, "8").await;
    // One scoring policy, so its effect is plain: spread, then pack.
    set_profile(
        &cluster,
        "swap-scheduler",
        json!([
            {"name": "node-resources-fit"}, {"name": "scoring", "weight": 1},
        ]),
    )
    .await;
    set_plugin(
        &cluster,
        "scoring",
        json!({"kind": "scheduler-policy", "module": builtin("least-allocated")}),
    )
    .await;
    let stats = scheduler(&cluster, "only", false).await;
    let spec = json!({"schedulerName": "swap-scheduler"});

    let mut spread = BTreeMap::new();
    for i in 0..4 {
        create(&cluster, pod(&format!("a{i}"), "1", spec.clone())).await;
        let bound = until_pod(&cluster, &format!("a{i}"), |p| node_of(p).is_some()).await;
        *spread.entry(node_of(&bound).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        4,
        "least-allocated puts one pod per node: {spread:?}"
    );

    set_plugin(
        &cluster,
        "scoring",
        json!({"kind": "scheduler-policy", "module": builtin("most-allocated")}),
    )
    .await;
    let most = builtin("most-allocated")["digest"].clone();
    until_plugin(&cluster, "scoring", |s| {
        s["components"]["scheduler/only"]["digest"] == most && condition(s, "Ready") == "True"
    })
    .await;
    let mut packed = BTreeMap::new();
    for i in 0..3 {
        create(&cluster, pod(&format!("b{i}"), "1", spec.clone())).await;
        let bound = until_pod(&cluster, &format!("b{i}"), |p| node_of(p).is_some()).await;
        *packed.entry(node_of(&bound).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        packed.len(),
        1,
        "most-allocated packs onto one node: {packed:?}"
    );
    assert!(stats.swaps.load(Ordering::Relaxed) >= 2);

    // A module that does not compile is refused; the serving one stays.
    let digest = plugins::push(
        &cluster.client,
        "scoring",
        flotilla_plugin::World::SchedulerPolicy,
        b"\0asm but not a component",
        None,
    )
    .await
    .unwrap();
    let status = until_plugin(&cluster, "scoring", |s| condition(s, "Ready") == "False").await;
    let component = &status["components"]["scheduler/only"];
    assert_eq!(
        component["digest"], most,
        "the old module keeps serving: {status}"
    );
    let message = component["message"].as_str().unwrap();
    assert!(message.contains(&format!("refused {digest}")), "{message}");
    assert!(message.contains("failed to compile"), "{message}");
    create(&cluster, pod("c0", "1", spec.clone())).await;
    let bound = until_pod(&cluster, "c0", |p| node_of(p).is_some()).await;
    assert_eq!(
        packed.keys().next(),
        node_of(&bound).as_ref(),
        "still packing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_pulled_from_a_private_registry_once_its_pull_secret_exists() {
    use flotilla_artifacts::oci::{self, Credentials};
    let registry = flotilla_artifacts::testing::Registry::with_user("flotilla", "pull-me");
    // The built-in policy with a custom section appended: the same behaviour under a digest
    // the host has not seen, so it must come from the registry.
    let mut wasm = flotilla_builtins::find("most-allocated")
        .unwrap()
        .wasm
        .to_vec();
    let name = b"flotilla-test";
    wasm.extend([0, 1 + name.len() as u8, name.len() as u8]);
    wasm.extend(name);
    let wasm = wasm.as_slice();
    let reference = format!("{}/policies/most-allocated:v1", registry.address);
    let login = Credentials::Basic {
        username: "flotilla".into(),
        password: "pull-me".into(),
    };
    oci::push(&reference, wasm, &login).await.unwrap();

    let cluster = cluster().await;
    nodes(&cluster, "n-", 3, "8").await;
    set_profile(
        &cluster,
        "oci-scheduler",
        json!([{"name": "node-resources-fit"}, {"name": "packing", "weight": 1}]),
    )
    .await;
    let digest = flotilla_plugin::digest(wasm);
    set_plugin(
        &cluster,
        "packing",
        json!({"kind": "scheduler-policy", "module": {
            "digest": digest, "oci": reference, "pullSecret": "registry-login"}}),
    )
    .await;
    scheduler(&cluster, "only", false).await;
    let status = until_plugin(&cluster, "packing", |s| {
        s["components"]["scheduler/only"]["message"] != json!("")
            && !s["components"]["scheduler/only"]["message"].is_null()
    })
    .await;
    let message = status["components"]["scheduler/only"]["message"].to_string();
    assert!(
        message.contains("the pull secret kube-system/registry-login does not exist"),
        "{status}"
    );
    assert_eq!(condition(&status, "Ready"), "False");

    // The secret arrives; the next try pulls the module with it.
    let config = json!({"auths": {registry.address.clone(): {
        "username": "flotilla", "password": "pull-me"}}});
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "registry-login", "namespace": "kube-system"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster.client.clone(), "kube-system")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    until_plugin(&cluster, "packing", |s| {
        s["components"]["scheduler/only"]["digest"] == json!(digest)
            && condition(s, "Ready") == "True"
    })
    .await;
    let spec = json!({"schedulerName": "oci-scheduler"});
    let mut packed = BTreeMap::new();
    for i in 0..3 {
        create(&cluster, pod(&format!("p{i}"), "1", spec.clone())).await;
        let bound = until_pod(&cluster, &format!("p{i}"), |p| node_of(p).is_some()).await;
        *packed.entry(node_of(&bound).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(packed.len(), 1, "the pulled policy packs: {packed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_schedules() {
    let cluster = cluster().await;
    nodes(&cluster, "n-", 2, "64").await;
    let first = scheduler(&cluster, "first", true).await;
    let second = scheduler(&cluster, "second", true).await;
    for i in 0..10 {
        create(&cluster, pod(&format!("p{i}"), "100m", json!({}))).await;
    }
    for i in 0..10 {
        until_pod(&cluster, &format!("p{i}"), |p| node_of(p).is_some()).await;
    }
    let (a, b) = (
        first.scheduled.load(Ordering::Relaxed),
        second.scheduled.load(Ordering::Relaxed),
    );
    assert_eq!(a + b, 10);
    assert!(a == 0 || b == 0, "both schedulers bound pods: {a} and {b}");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_plugin_fails_only_its_pods_with_an_event_naming_it() {
    let cluster = cluster().await;
    nodes(&cluster, "n-", 3, "8").await;
    // (mode, call, what the FailedScheduling message says)
    let cases = [
        ("memory", "prepare", "exceeded its memory limit"),
        ("panic", "filter", "misbehave: told to panic in filter"),
        ("out-of-range", "score", "score 1000 for node"),
        ("unknown-node", "filter", "not a candidate"),
        ("recursion", "score", "trapped"),
    ];
    for (mode, call, _) in cases {
        set_plugin(
            &cluster,
            &format!("bad-{mode}"),
            json!({"kind": "scheduler-policy", "module": builtin("misbehave"),
                "config": {"mode": mode, "in": call},
                "limits": {"memoryBytes": 16 << 20}}),
        )
        .await;
        set_profile(
            &cluster,
            &format!("{mode}-scheduler"),
            json!([{"name": "node-resources-fit"}, {"name": format!("bad-{mode}"), "weight": 1}]),
        )
        .await;
    }
    scheduler(&cluster, "only", false).await;
    for (mode, _, _) in cases {
        let spec = json!({"schedulerName": format!("{mode}-scheduler")});
        create(&cluster, pod(&format!("victim-{mode}"), "1", spec)).await;
    }
    create(&cluster, pod("bystander", "1", json!({}))).await;
    for (mode, _, says) in cases {
        let message = event(&cluster, &format!("victim-{mode}"), "FailedScheduling").await;
        assert!(
            message.starts_with(&format!("plugin bad-{mode} (sha256:")),
            "{mode}: {message}"
        );
        assert!(message.contains(says), "{mode}: {message}");
    }
    until_pod(&cluster, "bystander", |p| node_of(p).is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_counts_the_pods_already_bound() {
    let cluster = cluster().await;
    nodes(&cluster, "n-", 1, "2").await;
    let first = start_scheduler(&cluster, "first", false).await;
    for name in ["a", "b"] {
        create(&cluster, pod(name, "1", json!({}))).await;
        until_pod(&cluster, name, |p| node_of(p).is_some()).await;
    }
    first.stop();

    // A new scheduler learns the node and its two pods, whichever list arrives first.
    scheduler(&cluster, "second", false).await;
    create(&cluster, pod("c", "1", json!({}))).await;
    let message = event(&cluster, "c", "FailedScheduling").await;
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");
}
