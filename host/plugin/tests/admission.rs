//! An admission policy built with the SDK (`examples/require-labels`, its own workspace since a
//! component exports one world) is built from source here and driven through the host's
//! admission handle: it denies with a message, warns, and refuses bad settings.

mod common;

use flotilla_plugin::bindings::admission::{
    GroupVersionKind, GroupVersionResource, Operation, Request, UserInfo,
};
use flotilla_plugin::{
    AdmissionPolicy, EngineConfig, Failure, Limits, PluginHost, Services, World,
};

fn request(object: Option<&str>, settings: &str) -> Request {
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
        name: "settings".into(),
        operation: Operation::Create,
        user_info: UserInfo {
            username: "admin".into(),
            uid: "admin".into(),
            groups: vec![],
            extra: vec![],
        },
        object: object.map(str::to_owned),
        old_object: None,
        dry_run: false,
        options: None,
        settings: settings.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_admission_policy_denies_warns_and_checks_settings() {
    let wasm = common::build_example("require-labels");
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let module = host
        .load("require-labels", World::AdmissionPolicy, &wasm, None)
        .unwrap();
    let mut instance = module
        .instantiate(Limits::default(), Services::default())
        .await
        .unwrap();
    assert_eq!(instance.info().await.unwrap().name, "require-labels");
    instance.self_check().await.unwrap();
    let mut policy = AdmissionPolicy::new(instance).unwrap();

    let settings = r#"{"labels": ["team", "tier"]}"#;
    policy.validate_settings(settings).await.unwrap();
    let refused = policy
        .validate_settings(r#"{"labels": "team"}"#)
        .await
        .unwrap_err();
    assert_eq!(
        refused.failure,
        Failure::Reported("settings need \"labels\": a list of label keys".into())
    );

    let unlabelled = r#"{"metadata": {"name": "settings", "labels": {"team": "a"}}}"#;
    let denied = policy
        .review(&request(Some(unlabelled), settings))
        .await
        .unwrap();
    assert!(!denied.allowed);
    let status = denied.status.unwrap();
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "ConfigMap settings is missing required label(s): tier"
    );

    let labelled = r#"{"metadata": {"name": "settings", "labels": {"team": "", "tier": "web"}}}"#;
    let admitted = policy
        .review(&request(Some(labelled), settings))
        .await
        .unwrap();
    assert!(admitted.allowed);
    assert_eq!(admitted.warnings, ["label team is empty"]);
}
