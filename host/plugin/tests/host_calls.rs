//! Host calls: a guest waiting in an async host call (here a cache read) is stopped at its
//! call's deadline, the failure names the host call, and the host answers other calls meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_plugin::bindings::admission::{
    GroupVersionKind, GroupVersionResource, Operation, Request, UserInfo,
};
use flotilla_plugin::{
    AdmissionPolicy, CacheReader, EngineConfig, Failure, Limits, PluginHost, Services, Status,
    World,
};

/// A cache with one object, that never answers about `stuck`.
struct Cache;

#[async_trait::async_trait]
impl CacheReader for Cache {
    async fn get(
        &self,
        _api_version: &str,
        _kind: &str,
        _namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        match name {
            "stuck" => std::future::pending().await,
            "present" => Ok(Some(r#"{"metadata":{"name":"present"}}"#.into())),
            _ => Ok(None),
        }
    }

    async fn list(
        &self,
        _api_version: &str,
        _kind: &str,
        _namespace: Option<&str>,
        _label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        Ok(vec![])
    }
}

fn request(name: &str) -> Request {
    Request {
        uid: "req-1".into(),
        kind: GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        },
        resource: GroupVersionResource {
            group: String::new(),
            version: "v1".into(),
            resource: "configmaps".into(),
        },
        sub_resource: String::new(),
        namespace: "default".into(),
        name: name.into(),
        operation: Operation::Create,
        user_info: UserInfo {
            username: "admin".into(),
            uid: "admin".into(),
            groups: vec![],
            extra: vec![],
        },
        object: None,
        old_object: None,
        dry_run: false,
        options: None,
        settings: "{}".into(),
    }
}

async fn policy(host: &PluginHost, deadline: Duration) -> AdmissionPolicy {
    let wasm = flotilla_builtins::find("blocking").unwrap().wasm;
    let module = host
        .load("blocking", World::AdmissionPolicy, wasm, None)
        .unwrap();
    let services = Services {
        cache: Some(Arc::new(Cache)),
        ..Services::default()
    };
    let limits = Limits {
        call_deadline: deadline,
        ..Limits::default()
    };
    let instance = module.instantiate(limits, services).await.unwrap();
    AdmissionPolicy::new(instance).unwrap()
}

#[tokio::test]
async fn cache_reads_reach_the_host() {
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let mut policy = policy(&host, Duration::from_secs(1)).await;
    assert!(policy.review(&request("present")).await.unwrap().allowed);
    let denied = policy.review(&request("absent")).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(
        denied.status.unwrap().message,
        "ConfigMap absent is not in the cache"
    );
    policy.validate_settings("{}").await.unwrap();
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_at_its_deadline() {
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let mut blocked = policy(&host, Duration::from_millis(200)).await;
    let mut other = policy(&host, Duration::from_secs(1)).await;

    let (stuck, present) = (request("stuck"), request("present"));
    let started = Instant::now();
    let (stuck, meanwhile) = tokio::join!(blocked.review(&stuck), other.review(&present));
    let error = stuck.unwrap_err();
    assert_eq!(
        error.failure,
        Failure::Deadline(Duration::from_millis(200)),
        "{error}"
    );
    assert_eq!(error.plugin, "blocking");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
        "stopped after {elapsed:?}"
    );
    assert!(
        meanwhile.unwrap().allowed,
        "the other instance kept working"
    );
    assert!(blocked.is_poisoned());
}
