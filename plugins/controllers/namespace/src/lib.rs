//! The namespace controller, as Kubernetes' has it. The API server marks a deleted namespace
//! `Terminating` (with the `kubernetes` finalizer in `spec.finalizers`) and refuses new content
//! in it; this controller then:
//!
//! - asks the API for every namespaced kind it serves that can be deleted as a collection,
//!   custom resources included, and deletes each collection in the namespace;
//! - while anything is left (pods stopping gracefully, objects held by finalizers), writes the
//!   namespace's deletion conditions — `NamespaceDeletionDiscoveryFailure`,
//!   `NamespaceDeletionContentFailure`, `NamespaceContentRemaining`,
//!   `NamespaceFinalizersRemaining` — with Kubernetes' reasons and messages, and looks again
//!   a second later;
//! - once the namespace is empty, removes its finalizer through `namespaces/<name>/finalize`,
//!   which takes the namespace with it.
//!
//! What the conditions say ([`Tally`], [`conditions`]) is pure and tested natively; the
//! component (`component.rs`) does the calls.

use serde_json::Value;

#[cfg(target_arch = "wasm32")]
mod component;

/// The finalizer this controller owns in a namespace's `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// What one pass over a namespace's content found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Discovery failed with this message: nothing could be deleted.
    pub discovery_failure: Option<String>,
    /// Collections that could not be deleted, with why.
    pub failures: Vec<String>,
    /// `<resource>.<group>` and how many objects of it are left.
    pub remaining: Vec<(String, u32)>,
    /// Finalizers holding objects, and how many objects each holds.
    pub finalizers: Vec<(String, u32)>,
}

impl Tally {
    /// Counts what is left of one collection.
    pub fn left(&mut self, resource: String, count: u32, finalizers: &[(String, u32)]) {
        if count > 0 {
            self.remaining.push((resource, count));
        }
        for (finalizer, held) in finalizers {
            match self.finalizers.iter_mut().find(|(f, _)| f == finalizer) {
                Some((_, n)) => *n += held,
                None => self.finalizers.push((finalizer.clone(), *held)),
            }
        }
    }

    /// Nothing is left and nothing failed: the namespace can be finalized.
    pub fn empty(&self) -> bool {
        self.discovery_failure.is_none() && self.failures.is_empty() && self.remaining.is_empty()
    }
}

/// How Kubernetes names a resource in these messages: `pods.` for the core group,
/// `deployments.apps` otherwise.
pub fn resource_name(api_version: &str, resource: &str) -> String {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    format!("{resource}.{group}")
}

/// The deletion conditions a tally gives: `(type, status, reason, message)`, as Kubernetes'
/// namespace controller writes them.
pub fn conditions(tally: &Tally) -> Vec<(&'static str, &'static str, &'static str, String)> {
    let mut out = Vec::new();
    out.push(match &tally.discovery_failure {
        Some(message) => (
            "NamespaceDeletionDiscoveryFailure",
            "True",
            "DiscoveryFailed",
            format!("Discovery failed for some groups: {message}"),
        ),
        None => (
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered".to_owned(),
        ),
    });
    out.push(if tally.failures.is_empty() {
        (
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_owned(),
        )
    } else {
        (
            "NamespaceDeletionContentFailure",
            "True",
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                tally.failures.len(),
                tally.failures.join(", ")
            ),
        )
    });
    out.push(if tally.remaining.is_empty() {
        (
            "NamespaceContentRemaining",
            "False",
            "ContentRemoved",
            "All content successfully removed".to_owned(),
        )
    } else {
        let mut remaining = tally.remaining.clone();
        remaining.sort();
        (
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            format!(
                "Some resources are remaining: {}",
                remaining
                    .iter()
                    .map(|(r, n)| format!("{r} has {n} resource instances"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    });
    out.push(if tally.finalizers.is_empty() {
        (
            "NamespaceFinalizersRemaining",
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".to_owned(),
        )
    } else {
        let mut finalizers = tally.finalizers.clone();
        finalizers.sort();
        (
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                finalizers
                    .iter()
                    .map(|(f, n)| format!("{f} in {n} resource instances"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    });
    out
}

/// Whether this controller still has work on a namespace: it is being deleted and carries
/// the finalizer.
pub fn terminating(namespace: &Value) -> bool {
    namespace["metadata"]["deletionTimestamp"].is_string()
        && namespace["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_are_named_with_their_group() {
        assert_eq!(resource_name("v1", "pods"), "pods.");
        assert_eq!(resource_name("apps/v1", "deployments"), "deployments.apps");
        assert_eq!(
            resource_name("example.com/v1alpha1", "websites"),
            "websites.example.com"
        );
    }

    #[test]
    fn a_clean_pass_reports_every_condition_false() {
        let tally = Tally::default();
        assert!(tally.empty());
        let all = conditions(&tally);
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|(_, status, _, _)| *status == "False"));
        assert_eq!(all[2].3, "All content successfully removed");
    }

    #[test]
    fn what_is_left_is_counted_by_resource_and_by_finalizer() {
        let mut tally = Tally::default();
        tally.left("pods.".into(), 2, &[]);
        tally.left("configmaps.".into(), 1, &[("example.com/hold".into(), 1)]);
        tally.left(
            "websites.example.com".into(),
            1,
            &[("example.com/hold".into(), 1)],
        );
        tally.left("secrets.".into(), 0, &[]);
        assert!(!tally.empty());
        let all = conditions(&tally);
        assert_eq!(
            all[2],
            (
                "NamespaceContentRemaining",
                "True",
                "SomeResourcesRemain",
                "Some resources are remaining: configmaps. has 1 resource instances, pods. has 2 \
                 resource instances, websites.example.com has 1 resource instances"
                    .to_owned()
            )
        );
        assert_eq!(
            all[3].3,
            "Some content in the namespace has finalizers remaining: example.com/hold in 2 \
             resource instances"
        );
    }

    #[test]
    fn failures_are_reported_and_keep_the_namespace() {
        let tally = Tally {
            failures: vec!["deployments.apps: the server is on fire".into()],
            ..Tally::default()
        };
        assert!(!tally.empty());
        let failure = &conditions(&tally)[1];
        assert_eq!(failure.1, "True");
        assert_eq!(
            failure.3,
            "Failed to delete all resource types, 1 remaining: deployments.apps: the server is on fire"
        );
        let discovery = Tally {
            discovery_failure: Some("apps/v1: timeout".into()),
            ..Tally::default()
        };
        assert!(!discovery.empty());
        assert_eq!(conditions(&discovery)[0].2, "DiscoveryFailed");
    }

    #[test]
    fn only_a_deleted_namespace_with_the_finalizer_is_worked_on() {
        let live = json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["kubernetes"]}});
        assert!(!terminating(&live));
        let deleted = json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"finalizers": ["kubernetes"]}});
        assert!(terminating(&deleted));
        let finalized = json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"finalizers": ["example.com/other"]}});
        assert!(!terminating(&finalized));
    }
}
