//! The policy against a fake host that keeps quotas in memory: a cache (possibly stale) and
//! the API server's copy, whose status writes check the resourceVersion.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_sdk::cache::Selection;
use flotilla_sdk::controller::{ApiResource, DeleteOptions, Event, PatchType, Remaining};
use flotilla_sdk::native::{NativeHost, set_native_host};
use flotilla_sdk::{ObjectRef, Status};
use serde_json::{Value, json};

use super::*;

/// The native host is one per process: tests that set it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Fake {
    /// What the informer cache answers.
    cache: Mutex<Vec<Value>>,
    /// The API server's quotas, by name.
    store: Mutex<BTreeMap<String, Value>>,
    /// Status writes to refuse with 409 before honouring any.
    conflicts: Mutex<u32>,
    /// Status writes attempted, in order.
    writes: Mutex<Vec<Value>>,
    /// What reads from the server and writes (after the forced conflicts) fail with.
    failure: Mutex<Option<Status>>,
}

fn status(code: u16, reason: &str, message: &str) -> Status {
    Status {
        code,
        reason: reason.into(),
        message: message.into(),
    }
}

fn unused<T>() -> Result<T, Status> {
    Err(status(403, "Forbidden", "not used by resource-quota"))
}

impl NativeHost for Fake {
    fn get(
        &self,
        _api_version: &str,
        _kind: &str,
        _namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let cache = self.cache.lock().unwrap();
        Ok(cache
            .iter()
            .find(|q| q["metadata"]["name"] == name)
            .map(Value::to_string))
    }

    fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        _label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        assert_eq!((api_version, kind), ("v1", "ResourceQuota"));
        let cache = self.cache.lock().unwrap();
        Ok(cache
            .iter()
            .filter(|q| namespace.is_none_or(|ns| q["metadata"]["namespace"] == ns))
            .map(Value::to_string)
            .collect())
    }

    fn query(&self, _: &str, _: &str, _: &Selection) -> Result<Vec<String>, Status> {
        unused()
    }

    fn read(
        &self,
        _api_version: &str,
        _kind: &str,
        _namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        if let Some(failure) = self.failure.lock().unwrap().clone() {
            return Err(failure);
        }
        Ok(self.store.lock().unwrap().get(name).map(Value::to_string))
    }

    fn create(&self, _: &str) -> Result<String, Status> {
        unused()
    }

    fn update(&self, _: &str) -> Result<String, Status> {
        unused()
    }

    fn update_status(&self, _: &str) -> Result<String, Status> {
        unused()
    }

    fn patch(&self, _: &ObjectRef, _: PatchType, _: &str) -> Result<String, Status> {
        unused()
    }

    fn delete(&self, _: &ObjectRef, _: &DeleteOptions) -> Result<(), Status> {
        unused()
    }

    fn emit_event(&self, _: &Event) -> Result<(), Status> {
        unused()
    }

    fn resources(&self) -> Result<Vec<ApiResource>, Status> {
        unused()
    }

    fn delete_collection(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: &str,
    ) -> Result<Remaining, Status> {
        unused()
    }

    fn update_subresource(&self, object: &str, subresource: &str) -> Result<String, Status> {
        assert_eq!(subresource, "status");
        let mut written: Value = serde_json::from_str(object).unwrap();
        self.writes.lock().unwrap().push(written.clone());
        {
            let mut conflicts = self.conflicts.lock().unwrap();
            if *conflicts > 0 {
                *conflicts -= 1;
                return Err(status(409, "Conflict", "the object has been modified"));
            }
        }
        if let Some(failure) = self.failure.lock().unwrap().clone() {
            return Err(failure);
        }
        let name = written["metadata"]["name"].as_str().unwrap().to_owned();
        let mut store = self.store.lock().unwrap();
        let Some(stored) = store.get_mut(&name) else {
            return Err(status(404, "NotFound", "resourcequotas not found"));
        };
        if stored["metadata"]["resourceVersion"] != written["metadata"]["resourceVersion"] {
            return Err(status(409, "Conflict", "the object has been modified"));
        }
        let version: u64 = stored["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        written["metadata"]["resourceVersion"] = json!((version + 1).to_string());
        // Only the status changes through the status subresource.
        stored["status"] = written["status"].clone();
        stored["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"].clone();
        Ok(stored.to_string())
    }
}

struct Setup {
    fake: Arc<Fake>,
    _serial: MutexGuard<'static, ()>,
}

/// A fake host holding `quotas` (in the cache and on the server alike), set as the native
/// host.
fn with_quotas(quotas: Vec<Value>) -> Setup {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fake = Arc::new(Fake::default());
    *fake.store.lock().unwrap() = quotas
        .iter()
        .map(|q| {
            (
                q["metadata"]["name"].as_str().unwrap().to_owned(),
                q.clone(),
            )
        })
        .collect();
    *fake.cache.lock().unwrap() = quotas;
    set_native_host(fake.clone());
    Setup {
        fake,
        _serial: serial,
    }
}

impl Setup {
    fn stored(&self, name: &str) -> Value {
        self.fake.store.lock().unwrap()[name].clone()
    }

    fn writes(&self) -> usize {
        self.fake.writes.lock().unwrap().len()
    }
}

fn quota(name: &str, hard: Value, used: Option<Value>) -> Value {
    let mut quota = json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": name, "namespace": "team", "resourceVersion": "1"},
        "spec": {"hard": hard},
    });
    if let Some(used) = used {
        quota["status"] = json!({"hard": hard, "used": used});
    }
    quota
}

fn request(resource: &str, group: &str, kind: &str, object: Value) -> Request {
    Request {
        uid: "uid-1".into(),
        kind: GroupVersionKind {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
        },
        resource: GroupVersionResource {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
        },
        sub_resource: String::new(),
        namespace: "team".into(),
        name: object["metadata"]["name"].as_str().unwrap_or("x").into(),
        operation: Operation::Create,
        user: UserInfo::default(),
        object: Some(object.to_string()),
        old_object: None,
        dry_run: false,
        options: None,
        settings: "{}".into(),
    }
}

fn pod(cpu: Option<&str>) -> Request {
    let resources = match cpu {
        Some(cpu) => json!({"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}),
        None => json!({}),
    };
    request(
        "pods",
        "",
        "Pod",
        json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "resources": resources}]}}),
    )
}

fn configmap() -> Request {
    request(
        "configmaps",
        "",
        "ConfigMap",
        json!({"metadata": {"name": "settings"}}),
    )
}

fn message(response: &Response) -> &str {
    &response
        .status
        .as_ref()
        .expect("a denial has a status")
        .message
}

fn code(response: &Response) -> u16 {
    response
        .status
        .as_ref()
        .expect("a denial has a status")
        .code
}

#[test]
fn an_admitted_create_is_charged_to_the_quota() {
    let setup = with_quotas(vec![quota(
        "compute",
        json!({"pods": "2", "requests.cpu": "1", "configmaps": "5"}),
        Some(json!({"pods": "1", "requests.cpu": "250m", "configmaps": "3"})),
    )]);
    let response = review(&pod(Some("500m")));
    assert!(response.allowed, "{response:?}");
    let stored = setup.stored("compute");
    assert_eq!(
        stored["status"]["used"],
        json!({"pods": "2", "requests.cpu": "750m", "configmaps": "3"})
    );
    assert_eq!(
        stored["status"]["hard"],
        json!({"pods": "2", "requests.cpu": "1", "configmaps": "5"})
    );
    assert_eq!(setup.writes(), 1);
}

#[test]
fn a_create_that_exceeds_a_quota_is_refused_naming_what_is_exceeded() {
    let setup = with_quotas(vec![quota(
        "compute",
        json!({"pods": "2", "requests.cpu": "1"}),
        Some(json!({"pods": "2", "requests.cpu": "250m"})),
    )]);
    let response = review(&pod(Some("500m")));
    assert!(!response.allowed);
    assert_eq!(code(&response), 403);
    assert_eq!(
        message(&response),
        "exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
    );
    let response = review(&pod(Some("1")));
    assert_eq!(
        message(&response),
        "exceeded quota: compute, requested: pods=1,requests.cpu=1, used: pods=2,requests.cpu=250m, \
         limited: pods=2,requests.cpu=1"
    );
    assert_eq!(setup.writes(), 0);
}

#[test]
fn a_later_quota_refusing_leaves_no_quota_charged_when_checked_first() {
    let setup = with_quotas(vec![
        quota("a-pods", json!({"pods": "5"}), Some(json!({"pods": "0"}))),
        quota(
            "b-cpu",
            json!({"requests.cpu": "100m"}),
            Some(json!({"requests.cpu": "0"})),
        ),
    ]);
    let response = review(&pod(Some("500m")));
    assert_eq!(
        message(&response),
        "exceeded quota: b-cpu, requested: requests.cpu=500m, used: requests.cpu=0, limited: \
         requests.cpu=100m"
    );
    assert_eq!(
        setup.writes(),
        0,
        "every quota is checked before any is charged"
    );
}

#[test]
fn every_affected_quota_is_charged() {
    let setup = with_quotas(vec![
        quota("pods", json!({"pods": "5"}), Some(json!({"pods": "1"}))),
        quota(
            "cpu",
            json!({"limits.cpu": "2"}),
            Some(json!({"limits.cpu": "1"})),
        ),
        quota(
            "maps",
            json!({"configmaps": "5"}),
            Some(json!({"configmaps": "1"})),
        ),
    ]);
    assert!(review(&pod(Some("500m"))).allowed);
    assert_eq!(setup.stored("pods")["status"]["used"], json!({"pods": "2"}));
    assert_eq!(
        setup.stored("cpu")["status"]["used"],
        json!({"limits.cpu": "1500m"})
    );
    assert_eq!(
        setup.stored("maps")["status"]["used"],
        json!({"configmaps": "1"})
    );
    assert_eq!(setup.writes(), 2);
}

#[test]
fn a_dry_run_is_checked_but_not_charged() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "1"}),
        Some(json!({"pods": "0"})),
    )]);
    let mut dry = pod(None);
    dry.dry_run = true;
    assert!(review(&dry).allowed);
    assert_eq!(setup.writes(), 0);
    assert_eq!(setup.stored("pods")["status"]["used"], json!({"pods": "0"}));
    let setup = {
        drop(setup);
        with_quotas(vec![quota(
            "pods",
            json!({"pods": "1"}),
            Some(json!({"pods": "1"})),
        )])
    };
    assert!(!review(&dry).allowed, "a dry run over quota is refused");
    assert_eq!(setup.writes(), 0);
}

#[test]
fn a_conflicting_charge_is_checked_again_on_the_fresh_quota() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "3"}),
        Some(json!({"pods": "1"})),
    )]);
    // Another create charged the quota; the cache has not seen it yet.
    {
        let mut store = setup.fake.store.lock().unwrap();
        let stored = store.get_mut("pods").unwrap();
        stored["status"]["used"]["pods"] = json!("2");
        stored["metadata"]["resourceVersion"] = json!("2");
    }
    assert!(review(&pod(None)).allowed);
    assert_eq!(setup.writes(), 2);
    let stored = setup.stored("pods");
    assert_eq!(stored["status"]["used"], json!({"pods": "3"}));
    assert_eq!(stored["metadata"]["resourceVersion"], "3");
    // Now full, but the cache still says 1: the fresh read refuses the next one.
    let response = review(&pod(None));
    assert_eq!(
        message(&response),
        "exceeded quota: pods, requested: pods=1, used: pods=3, limited: pods=3"
    );
    assert_eq!(setup.stored("pods")["status"]["used"], json!({"pods": "3"}));
}

#[test]
fn a_conflict_once_then_success() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "3"}),
        Some(json!({"pods": "1"})),
    )]);
    *setup.fake.conflicts.lock().unwrap() = 1;
    assert!(review(&pod(None)).allowed);
    assert_eq!(setup.writes(), 2);
    assert_eq!(setup.stored("pods")["status"]["used"], json!({"pods": "2"}));
}

#[test]
fn conflicts_that_do_not_end_refuse_the_create() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "3"}),
        Some(json!({"pods": "1"})),
    )]);
    *setup.fake.conflicts.lock().unwrap() = 100;
    let response = review(&pod(None));
    assert!(!response.allowed);
    let status = response.status.unwrap();
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "the quota pods is being updated by other requests; try again"
    );
    assert_eq!(setup.writes(), ATTEMPTS);
}

#[test]
fn a_quota_that_vanished_is_skipped() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "3"}),
        Some(json!({"pods": "1"})),
    )]);
    setup.fake.store.lock().unwrap().clear();
    assert!(review(&pod(None)).allowed);
    // Deleted after a conflict: the fresh read finds nothing.
    *setup.fake.conflicts.lock().unwrap() = 1;
    assert!(review(&pod(None)).allowed);
}

#[test]
fn other_api_failures_refuse_with_500() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "3"}),
        Some(json!({"pods": "1"})),
    )]);
    *setup.fake.failure.lock().unwrap() = Some(status(
        503,
        "ServiceUnavailable",
        "the API server is restarting",
    ));
    let response = review(&pod(None));
    assert_eq!(code(&response), 500);
    assert_eq!(
        message(&response),
        "cannot charge quota pods: the API server is restarting"
    );
    // A conflict, then the fresh read fails.
    *setup.fake.conflicts.lock().unwrap() = 1;
    let response = review(&pod(None));
    assert_eq!(code(&response), 500);
    assert_eq!(
        message(&response),
        "cannot read quota pods: the API server is restarting"
    );
    assert_eq!(setup.stored("pods")["status"]["used"], json!({"pods": "1"}));
}

#[test]
fn a_quota_not_yet_counted_refuses_with_status_unknown() {
    let setup = with_quotas(vec![quota(
        "pods",
        json!({"pods": "3", "requests.cpu": "2"}),
        None,
    )]);
    let response = review(&pod(Some("100m")));
    assert_eq!(code(&response), 403);
    assert_eq!(
        message(&response),
        "status unknown for quota: pods, resource: pods,requests.cpu"
    );
    // Counted partly: still unknown.
    *setup.fake.cache.lock().unwrap() = vec![quota(
        "pods",
        json!({"pods": "3", "requests.cpu": "2"}),
        Some(json!({"pods": "1"})),
    )];
    assert!(message(&review(&pod(Some("100m")))).starts_with("status unknown for quota: pods"));
    // A kind the quota does not track is not held up.
    assert!(review(&configmap()).allowed);
    assert_eq!(setup.writes(), 0);
}

#[test]
fn a_scoped_quota_ignores_other_kinds() {
    let mut scoped = quota(
        "best-effort",
        json!({"pods": "1", "configmaps": "0"}),
        Some(json!({"pods": "1", "configmaps": "0"})),
    );
    scoped["spec"]["scopes"] = json!(["BestEffort"]);
    let setup = with_quotas(vec![scoped]);
    assert!(review(&configmap()).allowed);
    // A pod with requests is not BestEffort either.
    assert!(review(&pod(Some("100m"))).allowed);
    let response = review(&pod(None));
    assert_eq!(
        message(&response),
        "exceeded quota: best-effort, requested: pods=1, used: pods=1, limited: pods=1"
    );
    assert_eq!(setup.writes(), 0);
}

#[test]
fn a_pod_must_state_what_a_quota_limits() {
    let setup = with_quotas(vec![quota(
        "compute",
        json!({"limits.memory": "1Gi", "requests.cpu": "2"}),
        Some(json!({"limits.memory": "0", "requests.cpu": "0"})),
    )]);
    let response = review(&pod(Some("100m")));
    assert_eq!(code(&response), 403);
    assert_eq!(
        message(&response),
        "failed quota: compute: must specify limits.memory for: app"
    );
    let response = review(&pod(None));
    assert_eq!(
        message(&response),
        "failed quota: compute: must specify limits.memory for: app; requests.cpu for: app"
    );
    assert_eq!(setup.writes(), 0);
}

#[test]
fn object_counts_of_any_group_are_charged() {
    let setup = with_quotas(vec![quota(
        "counts",
        json!({"count/deployments.apps": "2", "count/pods": "9"}),
        Some(json!({"count/deployments.apps": "1", "count/pods": "0"})),
    )]);
    let deployment = request(
        "deployments",
        "apps",
        "Deployment",
        json!({"metadata": {"name": "web"}}),
    );
    assert!(review(&deployment).allowed);
    assert_eq!(
        setup.stored("counts")["status"]["used"],
        json!({"count/deployments.apps": "2", "count/pods": "0"})
    );
    assert_eq!(
        message(&review(&deployment)),
        "exceeded quota: counts, requested: count/deployments.apps=1, used: \
         count/deployments.apps=2, limited: count/deployments.apps=2"
    );
}

#[test]
fn only_creates_of_namespaced_objects_are_reviewed() {
    let setup = with_quotas(vec![quota(
        "full",
        json!({"pods": "0", "count/namespaces": "0"}),
        Some(json!({"pods": "0", "count/namespaces": "0"})),
    )]);
    let mut update = pod(None);
    update.operation = Operation::Update;
    assert!(review(&update).allowed);
    let mut binding = pod(None);
    binding.sub_resource = "binding".into();
    assert!(review(&binding).allowed);
    let mut namespace = request(
        "namespaces",
        "",
        "Namespace",
        json!({"metadata": {"name": "team"}}),
    );
    assert!(review(&namespace).allowed);
    namespace.namespace = String::new();
    assert!(review(&namespace).allowed);
    assert!(!review(&pod(None)).allowed);
    assert_eq!(setup.writes(), 0);
}

#[test]
fn without_quotas_everything_is_admitted() {
    let setup = with_quotas(Vec::new());
    assert!(review(&pod(None)).allowed);
    assert!(review(&configmap()).allowed);
    assert_eq!(setup.writes(), 0);
}

#[test]
fn settings_must_be_empty() {
    let policy = ResourceQuota;
    assert!(policy.validate_settings("{}").is_ok());
    assert!(policy.validate_settings("null").is_ok());
    assert!(policy.validate_settings(r#"{"limit": 1}"#).is_err());
    assert!(policy.validate_settings("[").is_err());
}
