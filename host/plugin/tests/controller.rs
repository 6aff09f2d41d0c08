//! A controller built with the SDK (`examples/namespace-defaults`) is built from source and
//! driven through the host's controller handle, reading a cache and writing through an API
//! that behave as the API server does: writes are checked against the server's copy by
//! resourceVersion, and the cache sees them only when it syncs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_plugin::bindings::api::{Event, PatchType};
use flotilla_plugin::bindings::reconciler::KeyMapping;
use flotilla_plugin::bindings::types::ObjectRef;
use flotilla_plugin::{
    ApiWriter, CacheReader, Controller, EngineConfig, Failure, Limits, PluginHost, Services,
    Status, World,
};
use serde_json::{Value, json};

type Key = (String, Option<String>, String);

fn key_of(object: &Value) -> Key {
    let metadata = &object["metadata"];
    (
        object["kind"].as_str().unwrap().to_owned(),
        metadata["namespace"].as_str().map(str::to_owned),
        metadata["name"].as_str().unwrap().to_owned(),
    )
}

fn status(code: u16, reason: &str, message: String) -> Status {
    Status {
        code,
        reason: reason.into(),
        message,
    }
}

#[derive(Default)]
struct State {
    server: BTreeMap<Key, Value>,
    cache: BTreeMap<Key, Value>,
    revision: u64,
    writes: Vec<String>,
    events: Vec<String>,
}

/// The API server's objects and an informer cache of them that lags until `sync`.
#[derive(Default)]
struct Cluster(Mutex<State>);

impl Cluster {
    /// Writes an object as another client would, and lets the cache see it.
    fn put(&self, object: Value) {
        self.put_unseen(object);
        self.sync();
    }

    /// Writes an object as another client would, before the cache has seen it.
    fn put_unseen(&self, mut object: Value) {
        let mut state = self.0.lock().unwrap();
        state.revision += 1;
        object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
        state.server.insert(key_of(&object), object);
    }

    fn sync(&self) {
        let mut state = self.0.lock().unwrap();
        state.cache = state.server.clone();
    }

    fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = (
            kind.to_owned(),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        self.0.lock().unwrap().server.get(&key).cloned()
    }

    fn writes(&self) -> Vec<String> {
        self.0.lock().unwrap().writes.clone()
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().events.clone()
    }
}

#[async_trait::async_trait]
impl CacheReader for Cluster {
    async fn get(
        &self,
        _api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let key = (
            kind.to_owned(),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        let state = self.0.lock().unwrap();
        Ok(state.cache.get(&key).map(Value::to_string))
    }

    async fn list(
        &self,
        _api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        _label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        let state = self.0.lock().unwrap();
        Ok(state
            .cache
            .iter()
            .filter(|((k, ns, _), _)| {
                k == kind && (namespace.is_none() || ns.as_deref() == namespace)
            })
            .map(|(_, v)| v.to_string())
            .collect())
    }
}

#[async_trait::async_trait]
impl ApiWriter for Cluster {
    async fn create(&self, object: String) -> Result<String, Status> {
        let mut object: Value = serde_json::from_str(&object).unwrap();
        let key = key_of(&object);
        let mut state = self.0.lock().unwrap();
        state.writes.push(format!("create {}/{}", key.0, key.2));
        if state.server.contains_key(&key) {
            return Err(status(409, "AlreadyExists", format!("{} exists", key.2)));
        }
        state.revision += 1;
        object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
        state.server.insert(key, object.clone());
        Ok(object.to_string())
    }

    async fn update(&self, object: String) -> Result<String, Status> {
        let mut object: Value = serde_json::from_str(&object).unwrap();
        let key = key_of(&object);
        let mut state = self.0.lock().unwrap();
        state.writes.push(format!("update {}/{}", key.0, key.2));
        let current = state
            .server
            .get(&key)
            .map(|c| c["metadata"]["resourceVersion"].clone());
        match current {
            None => return Err(status(404, "NotFound", format!("{} not found", key.2))),
            Some(rv) if rv != object["metadata"]["resourceVersion"] => {
                return Err(status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again".into(),
                ));
            }
            Some(_) => {}
        }
        state.revision += 1;
        object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
        state.server.insert(key, object.clone());
        Ok(object.to_string())
    }

    async fn update_status(&self, object: String) -> Result<String, Status> {
        self.update(object).await
    }

    async fn patch(
        &self,
        target: ObjectRef,
        _patch_type: PatchType,
        _patch: String,
    ) -> Result<String, Status> {
        Err(status(
            405,
            "MethodNotAllowed",
            format!("no patches of {}", target.name),
        ))
    }

    async fn delete(
        &self,
        target: ObjectRef,
        resource_version: Option<String>,
        _uid: Option<String>,
        _propagation: Option<String>,
    ) -> Result<(), Status> {
        let key = (
            target.kind.clone(),
            target.namespace.clone(),
            target.name.clone(),
        );
        let mut state = self.0.lock().unwrap();
        state.writes.push(format!("delete {}/{}", key.0, key.2));
        let Some(current) = state.server.get(&key) else {
            return Err(status(404, "NotFound", format!("{} not found", key.2)));
        };
        if resource_version.is_some_and(|rv| current["metadata"]["resourceVersion"] != json!(rv)) {
            return Err(status(409, "Conflict", "precondition failed".into()));
        }
        state.server.remove(&key);
        Ok(())
    }

    async fn emit_event(&self, event: Event) -> Result<(), Status> {
        let mut state = self.0.lock().unwrap();
        state.events.push(format!(
            "{} {}: {}",
            event.regarding.name, event.reason, event.message
        ));
        Ok(())
    }
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels},
    })
}

fn key(name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: None,
        name: name.into(),
    }
}

const CONFIG: &str = r#"{"data": {"registry": "registry.local:5000"}}"#;

/// A fresh instance of a controller component, reading and writing `cluster`.
async fn instance(
    host: &PluginHost,
    wasm: &[u8],
    cluster: &Arc<Cluster>,
    config: &str,
) -> flotilla_plugin::Instance {
    let module = host
        .load("controller", World::Controller, wasm, None)
        .unwrap();
    let services = Services {
        config: config.into(),
        cache: Some(cluster.clone()),
        api: Some(cluster.clone()),
        load: None,
    };
    module
        .instantiate(Limits::default(), services)
        .await
        .unwrap()
}

async fn controller(
    host: &PluginHost,
    wasm: &[u8],
    cluster: &Arc<Cluster>,
    config: &str,
) -> Controller {
    let mut instance = instance(host, wasm, cluster, config).await;
    instance.self_check().await.unwrap();
    Controller::new(instance).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_controller_registers_reconciles_and_writes_with_preconditions() {
    let wasm = common::build_example("namespace-defaults");
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let cluster = Arc::new(Cluster::default());
    let mut controller = controller(&host, &wasm, &cluster, CONFIG).await;

    let registration = controller.register().await.unwrap();
    assert_eq!(
        (
            registration.primary_api_version.as_str(),
            registration.primary_kind.as_str()
        ),
        ("v1", "Namespace")
    );
    let watches: Vec<_> = registration
        .watches
        .iter()
        .map(|w| (w.kind.as_str(), w.mapping.clone()))
        .collect();
    assert_eq!(
        watches,
        [
            ("Namespace", KeyMapping::Primary),
            ("ConfigMap", KeyMapping::Owner("Namespace".into()))
        ]
    );

    // A namespace that does not ask for defaults, and one that is gone: nothing is written.
    cluster.put(namespace("plain", json!({})));
    assert_eq!(controller.reconcile(&key("plain")).await.unwrap(), Ok(None));
    assert_eq!(controller.reconcile(&key("gone")).await.unwrap(), Ok(None));
    assert!(cluster.writes().is_empty());

    // One that does gets its ConfigMap, owned by it.
    cluster.put(namespace(
        "team-a",
        json!({"flotilla.dev/defaults": "enabled"}),
    ));
    assert_eq!(
        controller.reconcile(&key("team-a")).await.unwrap(),
        Ok(None)
    );
    let made = cluster
        .get("ConfigMap", Some("team-a"), "defaults")
        .unwrap();
    assert_eq!(made["data"], json!({"registry": "registry.local:5000"}));
    let owner = &made["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["uid"].as_str(), owner["controller"].as_bool()),
        (Some("uid-team-a"), Some(true))
    );
    assert_eq!(
        cluster.events(),
        ["team-a DefaultsCreated: created defaults"]
    );

    // Before the cache has seen the create, a second reconcile's create meets AlreadyExists
    // and waits for the event; once it has, reconciling writes nothing.
    assert_eq!(
        controller.reconcile(&key("team-a")).await.unwrap(),
        Ok(None)
    );
    cluster.sync();
    let before = cluster.writes().len();
    assert_eq!(
        controller.reconcile(&key("team-a")).await.unwrap(),
        Ok(None)
    );
    assert_eq!(cluster.writes().len(), before, "{:?}", cluster.writes());

    // A user's edit is undone, through an update carrying the resourceVersion it read.
    let mut edited = made.clone();
    edited["data"] = json!({"registry": "elsewhere"});
    cluster.put(edited);
    assert_eq!(
        controller.reconcile(&key("team-a")).await.unwrap(),
        Ok(None)
    );
    let restored = cluster
        .get("ConfigMap", Some("team-a"), "defaults")
        .unwrap();
    assert_eq!(restored["data"], json!({"registry": "registry.local:5000"}));

    // An update computed from a stale cache is refused, not applied: the reconcile fails and
    // the host retries it with backoff.
    let mut newer = restored.clone();
    newer["data"] = json!({"registry": "third"});
    cluster.put(newer.clone());
    let mut server_side = newer;
    server_side["data"]["extra"] = json!("x");
    cluster.put_unseen(server_side);
    let failed = controller
        .reconcile(&key("team-a"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(failed.contains("(Conflict)"), "{failed}");
    cluster.sync();
    assert_eq!(
        controller.reconcile(&key("team-a")).await.unwrap(),
        Ok(None)
    );

    // Removing the label removes the ConfigMap.
    cluster.sync();
    cluster.put(namespace("team-a", json!({})));
    assert_eq!(
        controller.reconcile(&key("team-a")).await.unwrap(),
        Ok(None)
    );
    assert!(
        cluster
            .get("ConfigMap", Some("team-a"), "defaults")
            .is_none()
    );
    assert!(!controller.is_poisoned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_controller_fails_its_self_check() {
    let wasm = common::build_example("namespace-defaults");
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let module = host
        .load("namespace-defaults", World::Controller, &wasm, None)
        .unwrap();
    let services = Services {
        config: r#"{"data": {"registry": 5}}"#.into(),
        ..Services::default()
    };
    let mut instance = module
        .instantiate(Limits::default(), services)
        .await
        .unwrap();
    let refused = instance.self_check().await.unwrap_err();
    assert_eq!(
        refused.failure,
        Failure::SelfCheck("\"data\" must map keys to strings".into())
    );
}

/// A plugin built against the released 0.1.0 files loads in this (newer 0.1.x) host: its
/// imports link to the host's and its exports are found, and it reports its own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_built_against_an_earlier_compatible_version_still_runs() {
    let wasm = flotilla_builtins::find("released-controller")
        .expect("the testing feature embeds it")
        .wasm;
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let cluster = Arc::new(Cluster::default());
    let mut instance = instance(&host, wasm, &cluster, "{}").await;
    assert_eq!(instance.info().await.unwrap().wit_version, "0.1.0");
    assert_ne!(flotilla_plugin::WIT_VERSION, "0.1.0");
    instance.self_check().await.unwrap();
    let mut controller = Controller::new(instance).unwrap();
    let registration = controller.register().await.unwrap();
    assert_eq!(registration.primary_kind, "ConfigMap");
    cluster.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"}}));
    let key = ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("default".into()),
        name: "settings".into(),
    };
    assert_eq!(controller.reconcile(&key).await.unwrap(), Ok(None));
    assert_eq!(
        cluster.events(),
        ["settings Seen: read through flotilla:plugin@0.1.0"]
    );
}
