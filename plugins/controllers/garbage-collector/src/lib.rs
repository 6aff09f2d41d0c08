//! The garbage collector, with Kubernetes' three propagation policies, through
//! `ownerReferences`:
//!
//! - **Background**: an object all of whose owners are gone (absent, or replaced by an object
//!   of another uid) is deleted; owners that are gone are dropped from an object that still has
//!   a live one.
//! - **Foreground**: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted (foreground too), and loses the finalizer — and so goes — once no
//!   dependent with `blockOwnerDeletion` is left.
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its references removed
//!   from its dependents, then loses the finalizer.
//!
//! Every kind the API serves built in is watched, and every custom resource discovery lists
//! (the host registers the collector again when CustomResourceDefinitions change), plus `kinds`
//! from the configuration: `{"kinds": [{"apiVersion": "example.com/v1", "kind": "Website"}]}`. An
//! object whose owner is not in the cache yet is looked at again a few seconds after it was
//! made before it is collected, so an owner and its dependent created together survive the
//! informers' race.

use std::time::Duration;

use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
/// How old an object must be before a missing owner counts as gone.
const GRACE_SECONDS: i64 = 3;

/// The built-in kinds, as `(apiVersion, kind)`.
const KINDS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "Endpoints"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "Namespace"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ControllerRevision"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("networking.k8s.io/v1", "Ingress"),
];

/// Whether discovery's `resource` is a custom resource the collector follows: one a
/// CustomResourceDefinition serves (its group is neither built in, nor Kubernetes' own
/// `*.k8s.io`, nor Flotilla's `plugins.flotilla.dev`), that can be listed, watched and deleted.
fn custom_resource(resource: &ApiResource) -> bool {
    let group = resource
        .api_version
        .rsplit_once('/')
        .map_or("", |(group, _)| group);
    let built_in = matches!(group, "" | "apps" | "batch" | "policy" | "autoscaling")
        || group == "k8s.io"
        || group.ends_with(".k8s.io")
        || group == "plugins.flotilla.dev";
    !built_in
        && ["list", "watch", "delete"]
            .iter()
            .all(|verb| resource.verbs.iter().any(|v| v == verb))
}

#[derive(Debug)]
pub struct GarbageCollector {
    kinds: Vec<(String, String)>,
}

fn meta<'a>(object: &'a Value, field: &str) -> &'a Value {
    &object["metadata"][field]
}

fn has_finalizer(object: &Value, name: &str) -> bool {
    meta(object, "finalizers")
        .as_array()
        .is_some_and(|f| f.iter().any(|v| v == name))
}

fn deleting(object: &Value) -> bool {
    meta(object, "deletionTimestamp").is_string()
}

impl GarbageCollector {
    /// Objects of every watched kind that name `owner` (by uid) among their owners.
    fn dependents(&self, owner: &Value) -> Result<Vec<Value>, String> {
        let uid = meta(owner, "uid");
        // Namespaced owners own within their namespace; cluster-scoped ones anywhere.
        let namespace = meta(owner, "namespace").as_str();
        let mut found = Vec::new();
        for (api_version, kind) in &self.kinds {
            let objects = match cache::list(api_version, kind, namespace, "") {
                Ok(objects) => objects,
                // A kind served since this version registered: the next one watches it.
                Err(s) if s.code == 403 => continue,
                Err(s) => return Err(failed(&format!("listing {kind}"), s)),
            };
            for object in objects {
                let object = parse(&object)?;
                if meta(&object, "ownerReferences")
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
                {
                    found.push(object);
                }
            }
        }
        Ok(found)
    }

    /// The owner a reference names, if the cache has it with that uid.
    fn owner_of(&self, object: &Value, reference: &Value) -> Option<Result<Value, String>> {
        let api_version = reference["apiVersion"].as_str()?;
        let kind = reference["kind"].as_str()?;
        let name = reference["name"].as_str()?;
        if !self
            .kinds
            .iter()
            .any(|(a, k)| a == api_version && k == kind)
        {
            // A kind not watched: assume it lives.
            return Some(Ok(json!({"metadata": {"uid": reference["uid"]}})));
        }
        match cache::get(api_version, kind, meta(object, "namespace").as_str(), name) {
            Ok(Some(owner)) => match parse(&owner) {
                Ok(owner) if meta(&owner, "uid") == &reference["uid"] => Some(Ok(owner)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
            Ok(None) => None,
            // A kind served since this version registered: not watched yet, so it lives.
            Err(s) if s.code == 403 => Some(Ok(json!({"metadata": {"uid": reference["uid"]}}))),
            Err(s) => Some(Err(failed("reading an owner", s))),
        }
    }

    fn delete(&self, object: &Value, propagation: &str) -> Result<(), String> {
        let options = DeleteOptions {
            uid: meta(object, "uid").as_str().map(str::to_owned),
            propagation: Some(propagation.into()),
            ..DeleteOptions::default()
        };
        match api::delete(&object_ref(object), &options) {
            Ok(()) => Ok(()),
            Err(s) if s.code == 404 || s.code == 409 => Ok(()),
            Err(s) => Err(failed("deleting a dependent", s)),
        }
    }

    fn remove_finalizer(&self, object: &Value, name: &str) -> Result<(), String> {
        let finalizers = meta(object, "finalizers")
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(index) = finalizers.iter().position(|f| f == name) else {
            return Ok(());
        };
        let patch = json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": name},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]);
        match api::patch(&object_ref(object), PatchType::Json, &patch.to_string()) {
            Ok(_) => Ok(()),
            Err(s) if s.code == 404 => Ok(()),
            Err(s) => Err(failed("removing a finalizer", s)),
        }
    }

    /// An owner being deleted in the foreground or with its dependents orphaned.
    fn finish_owner(&self, owner: &Value) -> Result<Option<Duration>, String> {
        let dependents = self.dependents(owner)?;
        if has_finalizer(owner, ORPHAN) {
            for dependent in &dependents {
                if let Some(patch) = release_patch(dependent, meta(owner, "uid")) {
                    match api::patch(&object_ref(dependent), PatchType::Json, &patch) {
                        Ok(_) => {}
                        Err(s) if s.code == 404 => {}
                        Err(s) => return Err(failed("orphaning a dependent", s)),
                    }
                }
            }
            self.remove_finalizer(owner, ORPHAN)?;
            return Ok(None);
        }
        let uid = meta(owner, "uid");
        let mut blocking = 0;
        for dependent in &dependents {
            let blocks = meta(dependent, "ownerReferences")
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == *uid && r["blockOwnerDeletion"] == true);
            if blocks {
                blocking += 1;
            }
            if !deleting(dependent) {
                self.delete(dependent, "Foreground")?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(owner, FOREGROUND)?;
            return Ok(None);
        }
        // Dependents' deletions bring it back; this is a safety net.
        Ok(Some(Duration::from_secs(5)))
    }

    /// An object with owners: collected when they are all gone.
    fn collect(&self, object: &Value) -> Result<Option<Duration>, String> {
        let refs = meta(object, "ownerReferences")
            .as_array()
            .cloned()
            .unwrap_or_default();
        if refs.is_empty() {
            return Ok(None);
        }
        let mut dangling = Vec::new();
        let mut foreground_owner = false;
        for reference in &refs {
            match self.owner_of(object, reference) {
                Some(Ok(owner)) => {
                    if deleting(&owner) && has_finalizer(&owner, FOREGROUND) {
                        foreground_owner = true;
                    }
                }
                Some(Err(error)) => return Err(error),
                None => dangling.push(reference.clone()),
            }
        }
        if dangling.is_empty() {
            if foreground_owner && !deleting(object) {
                self.delete(object, "Foreground")?;
            }
            return Ok(None);
        }
        let age = now()
            - meta(object, "creationTimestamp")
                .as_str()
                .and_then(parse_time)
                .unwrap_or(0);
        if age < GRACE_SECONDS {
            return Ok(Some(Duration::from_secs(
                (GRACE_SECONDS - age).max(1) as u64
            )));
        }
        if dangling.len() == refs.len() {
            if !deleting(object) {
                self.delete(object, "Background")?;
            }
            return Ok(None);
        }
        // Some owners live: only the references to the gone ones go.
        for reference in dangling.iter().rev() {
            if let Some(patch) = release_patch(object, &reference["uid"]) {
                let _ = api::patch(&object_ref(object), PatchType::Json, &patch);
                // Indices shift: one at a time, the next reconcile does the rest.
                break;
            }
        }
        Ok(None)
    }
}

impl Controller for GarbageCollector {
    const NAME: &'static str = "garbage-collector";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        let config = parse(config).map_err(|e| format!("configuration is {e}"))?;
        let mut kinds: Vec<(String, String)> = KINDS
            .iter()
            .map(|(a, k)| ((*a).to_owned(), (*k).to_owned()))
            .collect();
        for extra in config["kinds"].as_array().into_iter().flatten() {
            let (Some(api_version), Some(kind)) =
                (extra["apiVersion"].as_str(), extra["kind"].as_str())
            else {
                return Err(format!("kinds: {extra} needs apiVersion and kind"));
            };
            kinds.push((api_version.to_owned(), kind.to_owned()));
        }
        // The custom resources the API serves now; the host registers the collector again
        // (with fresh instances) when definitions change. Without the API (a host that does not
        // serve `api.resources`), the built-in and configured kinds are all there is.
        if let Ok(resources) = api::resources() {
            for resource in resources.iter().filter(|r| custom_resource(r)) {
                let known = kinds
                    .iter()
                    .any(|(a, k)| *a == resource.api_version && *k == resource.kind);
                if !known {
                    kinds.push((resource.api_version.clone(), resource.kind.clone()));
                }
            }
        }
        Ok(Self { kinds })
    }

    fn register(&self) -> Registration {
        let mut registration = Registration::new("v1", "Pod").workers(5);
        for (api_version, kind) in &self.kinds {
            registration = registration.watch(Watch::new(api_version, kind, KeyMapping::Custom));
        }
        registration
    }

    /// An object concerns itself (its owners may be gone, or it is an owner being deleted),
    /// and, once deleted or being deleted, every object it owns.
    fn keys_for(&mut self, _watch: u32, object: &str) -> Vec<ObjectRef> {
        let Ok(object) = parse(object) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        let has_owners = meta(&object, "ownerReferences")
            .as_array()
            .is_some_and(|r| !r.is_empty());
        let finishing = deleting(&object)
            && (has_finalizer(&object, FOREGROUND) || has_finalizer(&object, ORPHAN));
        if has_owners || finishing {
            keys.push(object_ref(&object));
        }
        let me = object_ref(&object);
        let gone = cache::get(&me.api_version, &me.kind, me.namespace.as_deref(), &me.name)
            .ok()
            .flatten()
            .and_then(|o| parse(&o).ok())
            .is_none_or(|o| meta(&o, "uid") != meta(&object, "uid"));
        if (gone || deleting(&object))
            && let Ok(dependents) = self.dependents(&object)
        {
            keys.extend(dependents.iter().map(object_ref));
        }
        keys
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(object) = cache::get(
            &key.api_version,
            &key.kind,
            key.namespace.as_deref(),
            &key.name,
        )
        .map_err(|s| failed("reading the object", s))?
        else {
            return Ok(None);
        };
        let object = parse(&object)?;
        if deleting(&object)
            && (has_finalizer(&object, FOREGROUND) || has_finalizer(&object, ORPHAN))
        {
            let owner_done = self.finish_owner(&object)?;
            let dependent_done = self.collect(&object)?;
            return Ok(owner_done.or(dependent_done));
        }
        self.collect(&object)
    }
}

flotilla_sdk::export_controller!(GarbageCollector);
