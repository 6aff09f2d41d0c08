//! The built-in NamespaceLifecycle policy, as Kubernetes' admission plugin of that name: no new
//! content in a namespace that is being terminated, and the cluster's protected namespaces
//! cannot be deleted.
//!
//! A create of a namespaced object is denied while its Namespace, read from the host's cache
//! (the policy reads v1 Namespace), has a `metadata.deletionTimestamp` or `status.phase`
//! `Terminating`. Events (core and `events.k8s.io`), local access reviews and every request on a
//! subresource (`serviceaccounts/token`, `pods/eviction`, …) pass, so a namespace can still be
//! drained and reported on while it goes. A Namespace the cache does not have is not this
//! policy's to refuse: the API server's store refuses a create into a namespace that does not
//! exist. The deletion of a protected Namespace is denied; settings
//! `{"protectedNamespaces": ["default", ...]}` replace the default list (`default`,
//! `kube-system`, `kube-public`, `kube-node-lease`), and any other key is refused.
//!
//! It must not block anything else: updates and deletions of content, cluster-scoped objects,
//! and Namespaces themselves (but protected deletions) always pass.

use flotilla_sdk::admission::*;
use serde_json::Value;

#[derive(Debug)]
pub struct NamespaceLifecycle;

/// The namespaces no one may delete unless the settings say otherwise.
pub const DEFAULT_PROTECTED: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// A policy's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub protected_namespaces: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            protected_namespaces: DEFAULT_PROTECTED.map(str::to_owned).to_vec(),
        }
    }
}

/// Reads settings: a JSON object whose optional `protectedNamespaces` lists non-empty names.
pub fn settings(text: &str) -> Result<Settings, String> {
    let map = admission_common::settings_object(text, &["protectedNamespaces"])?;
    let mut settings = Settings::default();
    if map.contains_key("protectedNamespaces") {
        settings.protected_namespaces = admission_common::names(&map, "protectedNamespaces")?;
    }
    Ok(settings)
}

/// Whether a Namespace object is being terminated.
pub fn is_terminating(namespace: &Value) -> bool {
    let deleting = !matches!(namespace["metadata"]["deletionTimestamp"], Value::Null);
    deleting || namespace["status"]["phase"] == "Terminating"
}

fn is_namespace(request: &Request) -> bool {
    request.resource.group.is_empty() && request.resource.resource == "namespaces"
}

/// Whether a request puts new content into its namespace, so a terminating namespace refuses
/// it: a create of a namespaced resource other than the exceptions Kubernetes makes.
pub fn creates_content(request: &Request) -> bool {
    let resource = &request.resource;
    let exempt = matches!(
        (resource.group.as_str(), resource.resource.as_str()),
        ("" | "events.k8s.io", "events") | ("authorization.k8s.io", "localsubjectaccessreviews")
    );
    request.operation == Operation::Create
        && !request.namespace.is_empty()
        && request.sub_resource.is_empty()
        && !is_namespace(request)
        && !exempt
}

/// The verdict on `request`, with `namespace` reading a Namespace from the cache.
pub fn decide(
    request: &Request,
    settings: &Settings,
    namespace: impl FnOnce(&str) -> Result<Option<Value>, String>,
) -> Response {
    if request.operation == Operation::Delete && is_namespace(request) {
        if settings.protected_namespaces.contains(&request.name) {
            return Response::deny(format!(
                "namespace {} is protected by the cluster: this namespace may not be deleted",
                request.name
            ));
        }
        return Response::allow();
    }
    if !creates_content(request) {
        return Response::allow();
    }
    match namespace(&request.namespace) {
        Ok(Some(ns)) if is_terminating(&ns) => Response::deny(format!(
            "unable to create new content in namespace {} because it is being terminated",
            request.namespace
        )),
        Ok(_) => Response::allow(),
        Err(error) => Response::deny(format!(
            "unable to read namespace {} to check its lifecycle: {error}",
            request.namespace
        )),
    }
}

impl AdmissionPolicy for NamespaceLifecycle {
    const NAME: &'static str = "namespace-lifecycle";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        self::settings(settings).map(|_| ())
    }

    fn review(&mut self, request: Request) -> Response {
        match settings(&request.settings) {
            Ok(settings) => decide(&request, &settings, admission_common::cached_namespace),
            Err(error) => Response::deny(format!("invalid settings: {error}")),
        }
    }
}

flotilla_sdk::export_admission_policy!(NamespaceLifecycle);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(operation: Operation, group: &str, resource: &str, namespace: &str) -> Request {
        Request {
            uid: "uid".into(),
            kind: GroupVersionKind::default(),
            resource: GroupVersionResource {
                group: group.into(),
                version: "v1".into(),
                resource: resource.into(),
            },
            sub_resource: String::new(),
            namespace: namespace.into(),
            name: "thing".into(),
            operation,
            user: UserInfo::default(),
            object: Some("{}".into()),
            old_object: None,
            dry_run: false,
            options: None,
            settings: "{}".into(),
        }
    }

    fn create(resource: &str, namespace: &str) -> Request {
        request(Operation::Create, "", resource, namespace)
    }

    fn delete_namespace(name: &str) -> Request {
        let mut r = request(Operation::Delete, "", "namespaces", "");
        r.name = name.into();
        r.object = None;
        r
    }

    fn terminating() -> Value {
        json!({"metadata": {"name": "doomed"}, "status": {"phase": "Terminating"}})
    }

    fn active() -> Value {
        json!({"metadata": {"name": "live"}, "status": {"phase": "Active"}})
    }

    /// A cache read that must not happen.
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
    fn creates_in_a_terminating_namespace_are_denied() {
        let response = decide(&create("pods", "doomed"), &Settings::default(), |ns| {
            assert_eq!(ns, "doomed");
            Ok(Some(terminating()))
        });
        assert_eq!(
            denial(&response),
            "unable to create new content in namespace doomed because it is being terminated"
        );
    }

    #[test]
    fn a_deletion_timestamp_alone_means_terminating() {
        let ns = json!({"metadata": {"name": "doomed", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Active"}});
        assert!(is_terminating(&ns));
        assert!(is_terminating(&terminating()));
        assert!(!is_terminating(&active()));
        assert!(!is_terminating(&json!({"metadata": {"name": "new"}})));
        let response = decide(
            &request(Operation::Create, "apps", "deployments", "doomed"),
            &Settings::default(),
            |_| Ok(Some(ns)),
        );
        assert!(!response.allowed);
    }

    #[test]
    fn creates_in_an_active_or_unknown_namespace_pass() {
        let settings = Settings::default();
        assert!(decide(&create("pods", "live"), &settings, |_| Ok(Some(active()))).allowed);
        assert!(decide(&create("pods", "missing"), &settings, |_| Ok(None)).allowed);
    }

    #[test]
    fn events_access_reviews_and_subresources_pass_in_a_terminating_namespace() {
        let settings = Settings::default();
        let events = [
            create("events", "doomed"),
            request(Operation::Create, "events.k8s.io", "events", "doomed"),
            request(
                Operation::Create,
                "authorization.k8s.io",
                "localsubjectaccessreviews",
                "doomed",
            ),
        ];
        for r in &events {
            assert!(decide(r, &settings, unread).allowed, "{:?}", r.resource);
        }
        for (resource, sub) in [("serviceaccounts", "token"), ("pods", "eviction")] {
            let mut r = create(resource, "doomed");
            r.sub_resource = sub.into();
            assert!(decide(&r, &settings, unread).allowed, "{resource}/{sub}");
        }
        // Events of another group are content like any other.
        let other = request(Operation::Create, "example.com", "events", "doomed");
        assert!(!decide(&other, &settings, |_| Ok(Some(terminating()))).allowed);
    }

    #[test]
    fn other_operations_and_cluster_scoped_objects_pass() {
        let settings = Settings::default();
        for operation in [Operation::Update, Operation::Delete, Operation::Connect] {
            let r = request(operation, "", "pods", "doomed");
            assert!(decide(&r, &settings, unread).allowed, "{operation:?}");
        }
        assert!(decide(&create("nodes", ""), &settings, unread).allowed);
        assert!(decide(&create("namespaces", ""), &settings, unread).allowed);
        let mut update = request(Operation::Update, "", "namespaces", "");
        update.name = "kube-system".into();
        assert!(decide(&update, &settings, unread).allowed);
    }

    #[test]
    fn a_failed_cache_read_denies_with_the_reason() {
        let response = decide(&create("pods", "ns"), &Settings::default(), |_| {
            Err("kind v1/Namespace is not in spec.reads".into())
        });
        assert_eq!(
            denial(&response),
            "unable to read namespace ns to check its lifecycle: kind v1/Namespace is not in spec.reads"
        );
    }

    #[test]
    fn protected_namespaces_may_not_be_deleted() {
        let settings = Settings::default();
        for name in DEFAULT_PROTECTED {
            let response = decide(&delete_namespace(name), &settings, unread);
            assert_eq!(
                denial(&response),
                format!(
                    "namespace {name} is protected by the cluster: this namespace may not be deleted"
                )
            );
        }
        assert!(decide(&delete_namespace("team-a"), &settings, unread).allowed);
    }

    #[test]
    fn settings_replace_the_protected_list() {
        let settings = settings(r#"{"protectedNamespaces": ["prod"]}"#).unwrap();
        assert_eq!(settings.protected_namespaces, ["prod"]);
        assert!(!decide(&delete_namespace("prod"), &settings, unread).allowed);
        assert!(decide(&delete_namespace("kube-system"), &settings, unread).allowed);
        let none = self::settings(r#"{"protectedNamespaces": []}"#).unwrap();
        assert!(decide(&delete_namespace("default"), &none, unread).allowed);
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(settings("{}").unwrap(), Settings::default());
        assert_eq!(settings("").unwrap(), Settings::default());
        let policy = NamespaceLifecycle;
        assert!(policy.validate_settings("{}").is_ok());
        assert!(
            policy
                .validate_settings(r#"{"protectedNamespaces": ["a", "b"]}"#)
                .is_ok()
        );
        for (bad, says) in [
            ("[]", "must be a JSON object"),
            ("\"x\"", "must be a JSON object"),
            ("{", "not JSON"),
            (r#"{"protectedNamespaces": "default"}"#, "must be a list"),
            (r#"{"protectedNamespaces": [""]}"#, "non-empty strings"),
            (r#"{"protectedNamespaces": [1]}"#, "non-empty strings"),
            (
                r#"{"protected": [], "extra": 1}"#,
                "unknown settings extra, protected",
            ),
        ] {
            let error = policy.validate_settings(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn invalid_settings_at_review_deny() {
        let mut r = create("pods", "ns");
        r.settings = r#"{"nope": true}"#.into();
        let response = NamespaceLifecycle.review(r);
        assert!(denial(&response).starts_with("invalid settings: unknown settings nope"));
    }
}
