use super::*;
use serde_json::json;

fn pod(spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": spec,
    })
}

fn app(extra: Value) -> Value {
    let mut container = json!({"name": "app", "image": "app.wasm"});
    container
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    container
}

/// The violations of a pod, as they read in the denial.
fn found(pod: &Value) -> Vec<String> {
    violations(pod, false)
        .iter()
        .map(Violation::to_string)
        .collect()
}

fn request(operation: Operation, object: Option<&Value>) -> Request {
    Request {
        uid: "uid".into(),
        kind: GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "Pod".into(),
        },
        resource: GroupVersionResource {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
        },
        sub_resource: String::new(),
        namespace: "team".into(),
        name: "web".into(),
        operation,
        user: UserInfo::default(),
        object: object.map(Value::to_string),
        old_object: None,
        dry_run: false,
        options: None,
        settings: "{}".into(),
    }
}

fn create(pod: &Value) -> Request {
    request(Operation::Create, Some(pod))
}

fn namespace(labels: Value) -> Value {
    json!({"metadata": {"name": "team", "labels": labels}})
}

fn baseline_namespace(ns: &str) -> Result<Option<Value>, String> {
    assert_eq!(ns, "team");
    Ok(Some(namespace(json!({ENFORCE_LABEL: "baseline"}))))
}

fn unread(name: &str) -> Result<Option<Value>, String> {
    panic!("read namespace {name}")
}

fn denial(response: &Response) -> &str {
    assert!(!response.allowed, "allowed: {response:?}");
    let status = response.status.as_ref().expect("a status");
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    &status.message
}

#[test]
fn a_plain_pod_passes() {
    let pod = pod(json!({
        "containers": [app(json!({
            "ports": [{"containerPort": 8080}, {"containerPort": 9090, "hostPort": 0}],
            "securityContext": {
                "capabilities": {"add": ["NET_BIND_SERVICE", "CAP_CHOWN"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "Localhost", "localhostProfile": "mine"},
                "procMount": "Default",
                "seLinuxOptions": {"type": "container_init_t", "level": "s0:c1"},
                "privileged": false,
                "windowsOptions": {"hostProcess": false},
            },
        }))],
        "securityContext": {
            "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
            "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"},
                        {"name": "net.ipv4.tcp_wmem", "value": "4096 87380 16777216"}],
        },
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "hostNetwork": false,
    }));
    assert!(found(&pod).is_empty(), "{:?}", found(&pod));
    assert!(decide(&create(&pod), &Settings::default(), unread).allowed);
}

#[test]
fn host_namespaces() {
    let pod = pod(
        json!({"hostNetwork": true, "hostPID": true, "hostIPC": true, "containers": [app(json!({}))]}),
    );
    assert_eq!(
        found(&pod),
        ["host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"]
    );
    let one = self::pod(json!({"hostPID": true, "containers": [app(json!({}))]}));
    assert_eq!(found(&one), ["host namespaces (hostPID=true)"]);
}

#[test]
fn privileged_containers_of_every_kind() {
    let privileged = json!({"securityContext": {"privileged": true}});
    let pod = pod(json!({
        "initContainers": [{"name": "setup", "securityContext": {"privileged": true}}],
        "containers": [app(privileged.clone()), {"name": "calm"}],
        "ephemeralContainers": [{"name": "debug", "securityContext": {"privileged": true}}],
    }));
    assert_eq!(
        found(&pod),
        [
            r#"privileged (containers "setup", "app", "debug" must not set securityContext.privileged=true)"#
        ]
    );
    let one = self::pod(json!({"containers": [app(privileged)]}));
    assert_eq!(
        found(&one),
        [r#"privileged (container "app" must not set securityContext.privileged=true)"#]
    );
}

#[test]
fn capabilities_beyond_the_baseline_set() {
    let pod = pod(json!({"containers": [
        app(json!({"securityContext": {"capabilities": {"add": ["SYS_ADMIN", "KILL", "CAP_NET_RAW"]}}})),
        {"name": "other", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
        {"name": "fine", "securityContext": {"capabilities": {"add": ["CAP_SETUID", "AUDIT_WRITE"]}}},
    ]}));
    assert_eq!(
        found(&pod),
        [
            r#"non-default capabilities (containers "app", "other" must not include "CAP_NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add)"#
        ]
    );
    for allowed in BASELINE_CAPABILITIES {
        let with = self::pod(json!({"containers": [app(json!({"securityContext":
            {"capabilities": {"add": [allowed, format!("CAP_{allowed}")]}}}))]}));
        assert!(found(&with).is_empty(), "{allowed}");
    }
}

#[test]
fn host_path_volumes() {
    let pod = pod(json!({
        "containers": [app(json!({}))],
        "volumes": [
            {"name": "data", "hostPath": {"path": "/var/data"}},
            {"name": "cache", "emptyDir": {}},
            {"name": "logs", "hostPath": {"path": "/var/log", "type": "Directory"}},
        ],
    }));
    assert_eq!(
        found(&pod),
        [r#"hostPath volumes (volumes "data", "logs")"#]
    );
    assert!(violations(&pod, true).is_empty());
    let one = self::pod(json!({"containers": [app(json!({}))],
        "volumes": [{"name": "data", "hostPath": {"path": "/d"}}]}));
    assert_eq!(found(&one), [r#"hostPath volumes (volume "data")"#]);
}

#[test]
fn host_ports() {
    let one = pod(json!({"containers": [
        {"name": "web", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
    ]}));
    assert_eq!(
        found(&one),
        [r#"hostPort (container "web" uses hostPort 8080)"#]
    );
    let many = pod(json!({"containers": [
        {"name": "web", "ports": [{"hostPort": 8080}, {"hostPort": 443}]},
        {"name": "api", "ports": [{"hostPort": 80}]},
    ]}));
    assert_eq!(
        found(&many),
        [r#"hostPort (containers "web", "api" use hostPorts 443, 80, 8080)"#]
    );
}

#[test]
fn seccomp_profiles_at_pod_and_container_level() {
    let unconfined = json!({"seccompProfile": {"type": "Unconfined"}});
    let pod_level = pod(json!({"securityContext": unconfined, "containers": [app(json!({}))]}));
    assert_eq!(
        found(&pod_level),
        [
            r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#
        ]
    );
    let both = pod(json!({
        "securityContext": unconfined,
        "containers": [app(json!({"securityContext": unconfined})),
                       {"name": "ok", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}],
    }));
    assert_eq!(
        found(&both),
        [
            r#"seccompProfile (pod and container "app" must not set securityContext.seccompProfile.type to "Unconfined")"#
        ]
    );
}

#[test]
fn proc_mount() {
    let pod = pod(json!({"containers": [
        app(json!({"securityContext": {"procMount": "Unmasked"}})),
        {"name": "default", "securityContext": {"procMount": "Default"}},
    ]}));
    assert_eq!(
        found(&pod),
        [r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#]
    );
}

#[test]
fn sysctls_outside_the_safe_set() {
    let pod = pod(
        json!({"containers": [app(json!({}))], "securityContext": {"sysctls": [
            {"name": "kernel.msgmax", "value": "1"},
            {"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"},
            {"name": "net.core.somaxconn", "value": "1024"},
        ]}}),
    );
    assert_eq!(
        found(&pod),
        ["forbidden sysctls (kernel.msgmax, net.core.somaxconn)"]
    );
    for safe in SAFE_SYSCTLS {
        let with = self::pod(json!({"containers": [app(json!({}))],
            "securityContext": {"sysctls": [{"name": safe, "value": "1"}]}}));
        assert!(found(&with).is_empty(), "{safe}");
    }
}

#[test]
fn windows_host_processes() {
    let host = json!({"windowsOptions": {"hostProcess": true}});
    let pod = pod(
        json!({"securityContext": host, "containers": [app(json!({"securityContext": host}))]}),
    );
    assert_eq!(
        found(&pod),
        [
            r#"hostProcess (pod and container "app" must not set securityContext.windowsOptions.hostProcess=true)"#
        ]
    );
    let container_only = self::pod(json!({"containers": [app(json!({"securityContext": host}))]}));
    assert_eq!(
        found(&container_only),
        [
            r#"hostProcess (container "app" must not set securityContext.windowsOptions.hostProcess=true)"#
        ]
    );
}

#[test]
fn app_armor_profiles_and_annotations() {
    let unconfined = json!({"appArmorProfile": {"type": "Unconfined"}});
    let fields = pod(json!({"securityContext": unconfined,
        "containers": [app(json!({"securityContext": unconfined}))]}));
    assert_eq!(
        found(&fields),
        [
            r#"forbidden AppArmor profile (pod and container "app" must not set AppArmor profile type to "Unconfined")"#
        ]
    );
    let mut annotated = pod(json!({"containers": [app(json!({})), {"name": "b"}, {"name": "c"}]}));
    annotated["metadata"]["annotations"] = json!({
        "container.apparmor.security.beta.kubernetes.io/app": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/b": "runtime/default",
        "container.apparmor.security.beta.kubernetes.io/c": "localhost/mine",
        "other": "unconfined",
    });
    assert_eq!(
        found(&annotated),
        [
            r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/app="unconfined"")"#
        ]
    );
    annotated["spec"]["containers"][1]["securityContext"] = unconfined;
    annotated["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/c"] =
        json!("unconfined");
    assert_eq!(
        found(&annotated),
        [concat!(
            r#"forbidden AppArmor profiles (container "b" and annotations must not set AppArmor profile type to "#,
            r#""Unconfined", "container.apparmor.security.beta.kubernetes.io/app="unconfined"", "#,
            r#""container.apparmor.security.beta.kubernetes.io/c="unconfined"")"#
        )]
    );
}

#[test]
fn se_linux_options() {
    let pod_level = pod(json!({
        "securityContext": {"seLinuxOptions": {"type": "spc_t"}},
        "containers": [app(json!({"securityContext": {"seLinuxOptions": {"type": "container_t"}}}))],
    }));
    assert_eq!(
        found(&pod_level),
        [r#"seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "spc_t")"#]
    );
    let containers = pod(json!({"containers": [
        app(json!({"securityContext": {"seLinuxOptions": {"type": "spc_t", "user": "root"}}})),
        {"name": "b", "securityContext": {"seLinuxOptions": {"type": "unconfined_t", "role": "sysadm_r"}}},
        {"name": "c", "securityContext": {"seLinuxOptions": {"type": "container_engine_t", "level": "s0"}}},
    ]}));
    assert_eq!(
        found(&containers),
        [concat!(
            r#"seLinuxOptions (containers "app", "b" set forbidden securityContext.seLinuxOptions: "#,
            r#"types "spc_t", "unconfined_t"; user may not be set; role may not be set)"#
        )]
    );
    let user_only = pod(
        json!({"securityContext": {"seLinuxOptions": {"user": "system_u"}},
        "containers": [app(json!({}))]}),
    );
    assert_eq!(
        found(&user_only),
        ["seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: user may not be set)"]
    );
}

#[test]
fn every_violation_is_named_in_podsecurity_order() {
    let pod = pod(json!({
        "hostNetwork": true,
        "hostPID": true,
        "containers": [
            {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN"]}},
             "ports": [{"hostPort": 80}]},
        ],
        "volumes": [{"name": "data", "hostPath": {"path": "/d"}}, {"name": "logs", "hostPath": {"path": "/l"}}],
        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
    }));
    let response = decide(&create(&pod), &Settings::default(), baseline_namespace);
    assert_eq!(
        denial(&response),
        concat!(
            r#"violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true, hostPID=true), "#,
            r#"hostPath volumes (volumes "data", "logs"), hostPort (container "a" uses hostPort 80), "#,
            r#"privileged (container "a" must not set securityContext.privileged=true), "#,
            r#"non-default capabilities (container "a" must not include "NET_ADMIN" in securityContext.capabilities.add), "#,
            r#"seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")"#
        )
    );
}

fn host_path_pod() -> Value {
    pod(json!({
        "containers": [app(json!({}))],
        "volumes": [{"name": "data", "hostPath": {"path": "/d"}}],
    }))
}

#[test]
fn exempt_namespaces_skip_every_check() {
    let settings = settings(r#"{"exemptNamespaces": ["team"]}"#).unwrap();
    let mut pod = host_path_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    assert!(decide(&create(&pod), &settings, unread).allowed);
    let elsewhere = self::settings(r#"{"exemptNamespaces": ["other"]}"#).unwrap();
    assert!(!decide(&create(&pod), &elsewhere, baseline_namespace).allowed);
}

#[test]
fn host_path_namespaces_lift_only_the_host_path_check() {
    let settings = settings(r#"{"hostPathNamespaces": ["team"]}"#).unwrap();
    assert!(decide(&create(&host_path_pod()), &settings, unread).allowed);
    let mut pod = host_path_pod();
    pod["spec"]["hostIPC"] = json!(true);
    assert_eq!(
        denial(&decide(&create(&pod), &settings, baseline_namespace)),
        r#"violates PodSecurity "baseline:latest": host namespaces (hostIPC=true)"#
    );
}

#[test]
fn a_privileged_namespace_is_exempt() {
    let pod = host_path_pod();
    let privileged = |_: &str| Ok(Some(namespace(json!({ENFORCE_LABEL: "privileged"}))));
    assert!(decide(&create(&pod), &Settings::default(), privileged).allowed);
    for other in [
        json!({ENFORCE_LABEL: "baseline"}),
        json!({ENFORCE_LABEL: "restricted"}),
        json!({"team": "privileged"}),
    ] {
        let ns = namespace(other);
        assert!(!decide(&create(&pod), &Settings::default(), |_| Ok(Some(ns))).allowed);
    }
    assert!(!decide(&create(&pod), &Settings::default(), |_| Ok(None)).allowed);
}

#[test]
fn a_failed_namespace_read_enforces_with_a_warning() {
    let response = decide(&create(&host_path_pod()), &Settings::default(), |_| {
        Err("kind v1/Namespace is not in spec.reads".into())
    });
    assert!(denial(&response).starts_with("violates PodSecurity"));
    assert_eq!(
        response.warnings,
        [format!(
            "unable to read namespace team for its {ENFORCE_LABEL} label: kind v1/Namespace is not in spec.reads"
        )]
    );
}

#[test]
fn updates_are_checked_only_when_the_spec_changes() {
    let old = host_path_pod();
    let mut relabelled = old.clone();
    relabelled["metadata"]["labels"] = json!({"tier": "web"});
    let mut update = request(Operation::Update, Some(&relabelled));
    update.old_object = Some(old.to_string());
    assert!(decide(&update, &Settings::default(), unread).allowed);

    let mut changed = old.clone();
    changed["spec"]["containers"][0]["image"] = json!("app2.wasm");
    let mut update = request(Operation::Update, Some(&changed));
    update.old_object = Some(old.to_string());
    assert!(!decide(&update, &Settings::default(), baseline_namespace).allowed);
}

#[test]
fn ephemeral_containers_are_checked_other_subresources_pass() {
    let old = pod(json!({"containers": [app(json!({}))]}));
    let mut debugged = old.clone();
    debugged["spec"]["ephemeralContainers"] =
        json!([{"name": "debug", "securityContext": {"privileged": true}}]);
    let mut update = request(Operation::Update, Some(&debugged));
    update.sub_resource = "ephemeralcontainers".into();
    update.old_object = Some(old.to_string());
    assert_eq!(
        denial(&decide(&update, &Settings::default(), baseline_namespace)),
        r#"violates PodSecurity "baseline:latest": privileged (container "debug" must not set securityContext.privileged=true)"#
    );
    for sub in ["status", "binding", "eviction"] {
        let mut r = create(&host_path_pod());
        r.sub_resource = sub.into();
        assert!(decide(&r, &Settings::default(), unread).allowed, "{sub}");
    }
}

#[test]
fn other_kinds_and_operations_pass() {
    let bad = host_path_pod();
    let mut template = create(&bad);
    template.kind.kind = "PodTemplate".into();
    let mut other_group = create(&bad);
    other_group.kind.group = "example.com".into();
    for r in [
        template,
        other_group,
        request(Operation::Delete, None),
        request(Operation::Connect, None),
        request(Operation::Create, None),
    ] {
        assert!(decide(&r, &Settings::default(), unread).allowed, "{r:?}");
    }
}

#[test]
fn settings_are_validated() {
    let policy = PodSecurity;
    for fine in [
        "{}",
        "",
        r#"{"exemptNamespaces": []}"#,
        r#"{"exemptNamespaces": ["a"], "hostPathNamespaces": ["b", "c"]}"#,
    ] {
        assert!(policy.validate_settings(fine).is_ok(), "{fine}");
    }
    assert_eq!(
        settings(r#"{"hostPathNamespaces": ["b"]}"#).unwrap(),
        Settings {
            exempt_namespaces: vec![],
            host_path_namespaces: vec!["b".into()],
        }
    );
    for (bad, says) in [
        ("[]", "must be a JSON object"),
        ("{", "not JSON"),
        (
            r#"{"exemptNamespaces": "team"}"#,
            "exemptNamespaces must be a list",
        ),
        (
            r#"{"hostPathNamespaces": {"a": 1}}"#,
            "hostPathNamespaces must be a list",
        ),
        (r#"{"exemptNamespaces": [""]}"#, "non-empty strings"),
        (r#"{"hostPathNamespaces": [3]}"#, "non-empty strings"),
        (
            r#"{"level": "restricted", "exempt": []}"#,
            "unknown settings exempt, level",
        ),
    ] {
        let error = policy.validate_settings(bad).unwrap_err();
        assert!(error.contains(says), "{bad}: {error}");
    }
    let mut r = create(&host_path_pod());
    r.settings = r#"{"nope": 1}"#.into();
    assert!(denial(&PodSecurity.review(r)).starts_with("invalid settings: unknown settings nope"));
}
