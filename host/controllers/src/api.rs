//! What a controller plugin's `cache` and `api` imports reach: reads from the shared informer
//! cache, limited to the kinds the controller declared, and writes through the API server as
//! the controller manager. Every write is remembered with the resourceVersion it produced, so
//! the next reconcile of the same key first waits (briefly) until the cache has seen it: a
//! controller reads its own writes, and never creates a pod twice because the cache lagged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::selector::LabelSelector;
use flotilla_plugin::bindings::api::{ApiResource, Event, PatchType, Remaining};
use flotilla_plugin::bindings::cache::Selection;
use flotilla_plugin::bindings::types::ObjectRef;
use flotilla_plugin::{ApiWriter, CacheReader, Status};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
    PropagationPolicy,
};
use serde_json::{Value, json};

use crate::informer::{Informers, KindKey, ObjectKey, resource_version};

fn status(code: u16, reason: &str, message: impl Into<String>) -> Status {
    Status {
        code,
        reason: reason.into(),
        message: message.into(),
    }
}

fn api_status(error: kube::Error) -> Status {
    match error {
        kube::Error::Api(response) => status(response.code, &response.reason, response.message),
        other => status(503, "ServiceUnavailable", other.to_string()),
    }
}

fn bad_object(message: impl Into<String>) -> Status {
    status(400, "BadRequest", message)
}

/// Cache reads of the kinds a controller declared.
#[derive(Debug)]
pub struct Reader {
    pub informers: Informers,
    pub allowed: HashSet<KindKey>,
}

impl Reader {
    fn informer_of(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Arc<crate::informer::Informer>, Status> {
        let key = KindKey::new(api_version, kind);
        if !self.allowed.contains(&key) {
            return Err(status(
                403,
                "Forbidden",
                format!("the plugin did not declare {key}, so it may not read it"),
            ));
        }
        self.informers.running(&key).ok_or_else(|| {
            status(
                503,
                "ServiceUnavailable",
                format!("no informer for {key} yet"),
            )
        })
    }
}

#[async_trait::async_trait]
impl CacheReader for Reader {
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let informer = self.informer_of(api_version, kind)?;
        let namespace = namespace.filter(|_| informer.namespaced);
        Ok(informer.get(namespace, name).map(|o| o.to_string()))
    }

    async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        let selection = Selection {
            namespace: namespace.map(str::to_owned),
            label_selector: label_selector.to_owned(),
            claimable_by: None,
            fields: Vec::new(),
        };
        self.query(api_version, kind, selection).await
    }

    async fn query(
        &self,
        api_version: &str,
        kind: &str,
        selection: Selection,
    ) -> Result<Vec<String>, Status> {
        let informer = self.informer_of(api_version, kind)?;
        let selector: LabelSelector = selection.label_selector.parse().map_err(|e| {
            bad_object(format!(
                "label selector {:?}: {e}",
                selection.label_selector
            ))
        })?;
        let namespace = selection
            .namespace
            .as_deref()
            .filter(|_| informer.namespaced);
        let matches = |object: &Value| selector.matches(&crate::labels(object));
        let objects = match &selection.claimable_by {
            Some(uid) => informer.claimable_by(uid, namespace, matches),
            None => informer
                .list(namespace)
                .into_iter()
                .filter(|o| matches(o))
                .collect(),
        };
        Ok(objects
            .iter()
            .map(|object| {
                if selection.fields.is_empty() {
                    object.to_string()
                } else {
                    project(object, &selection.fields).to_string()
                }
            })
            .collect())
    }
}

/// The fields of `object` at `paths` (dotted), with what names the object.
fn project(object: &Value, paths: &[String]) -> Value {
    let mut out = json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": {},
    });
    for field in ["name", "namespace", "uid", "resourceVersion"] {
        if let Some(value) = object["metadata"].get(field) {
            out["metadata"][field] = value.clone();
        }
    }
    for path in paths {
        let mut from = object;
        let mut found = true;
        for part in path.split('.') {
            match from.get(part) {
                Some(next) => from = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let mut to = &mut out;
        let parts: Vec<&str> = path.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            if !to.get(*part).is_some_and(Value::is_object) {
                to[*part] = json!({});
            }
            to = &mut to[*part];
        }
        to[parts[parts.len() - 1]] = from.clone();
    }
    out
}

/// A write's effect that the next reconcile of the same key waits to see in the cache.
#[derive(Clone, Debug)]
pub struct Expectation {
    kind: KindKey,
    key: ObjectKey,
    /// Present at this resourceVersion or later; none: gone (or replaced by another uid).
    at_least: Option<u64>,
    uid: Option<String>,
    /// A deletion that left the object in place (finalizers, graceful deletion): its being
    /// gone meets the expectation too.
    gone_is_later: bool,
}

impl Expectation {
    /// Waits until the cache shows the write, for at most `limit`.
    pub async fn met(&self, informers: &Informers, limit: Duration) -> bool {
        let Some(informer) = informers.running(&self.kind) else {
            return true;
        };
        informer
            .wait_until(&self.key, limit, |object| match (self.at_least, object) {
                (Some(rv), Some(object)) => resource_version(object) >= rv,
                (Some(_), None) => self.gone_is_later,
                (None, None) => true,
                (None, Some(object)) => {
                    object["metadata"]["uid"].as_str() != self.uid.as_deref()
                        || object["metadata"].get("deletionTimestamp").is_some()
                }
            })
            .await
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("manager", &self.manager)
            .finish()
    }
}

/// API writes of one controller instance.
pub struct Writer {
    pub client: kube::Client,
    pub informers: Informers,
    /// Where events go: queued and filtered per object, off the reconcile's path.
    pub events: Arc<crate::events::Recorder>,
    /// The field manager and the events' reporting component.
    pub manager: String,
    /// What the current reconcile wrote.
    pub written: Mutex<Vec<Expectation>>,
}

impl Writer {
    async fn api_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<(Api<DynamicObject>, KindKey, bool), Status> {
        let key = KindKey::new(api_version, kind);
        let (resource, namespaced) = match self.informers.running(&key) {
            Some(informer) => (informer.resource.clone(), informer.namespaced),
            None => crate::informer::discover(&self.client, &key)
                .await
                .map_err(|e| status(404, "NotFound", e))?,
        };
        let api = match (namespaced, namespace) {
            (true, Some(namespace)) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            (true, None) => {
                return Err(bad_object(format!(
                    "{key} is namespaced: the object needs a namespace"
                )));
            }
            (false, _) => Api::all_with(self.client.clone(), &resource),
        };
        Ok((api, key, namespaced))
    }

    fn remember(&self, kind: KindKey, object: &DynamicObject) -> Result<String, Status> {
        self.remember_write(kind, object, false)
    }

    /// Records a write; with `gone_is_later`, the object's being gone meets it too (a write
    /// that may take the object with it).
    fn remember_write(
        &self,
        kind: KindKey,
        object: &DynamicObject,
        gone_is_later: bool,
    ) -> Result<String, Status> {
        let json = serde_json::to_value(object).map_err(|e| bad_object(e.to_string()))?;
        let key = (
            object.metadata.namespace.clone(),
            object.metadata.name.clone().unwrap_or_default(),
        );
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Expectation {
                kind,
                key,
                at_least: Some(resource_version(&json)),
                uid: None,
                gone_is_later,
            });
        Ok(json.to_string())
    }

    fn parse(object: &str) -> Result<(DynamicObject, String, String), Status> {
        let value: Value =
            serde_json::from_str(object).map_err(|e| bad_object(format!("not JSON: {e}")))?;
        let api_version = value["apiVersion"]
            .as_str()
            .ok_or_else(|| bad_object("the object has no apiVersion"))?
            .to_owned();
        let kind = value["kind"]
            .as_str()
            .ok_or_else(|| bad_object("the object has no kind"))?
            .to_owned();
        let object: DynamicObject =
            serde_json::from_value(value).map_err(|e| bad_object(e.to_string()))?;
        Ok((object, api_version, kind))
    }

    fn name_of(object: &DynamicObject) -> Result<String, Status> {
        object
            .metadata
            .name
            .clone()
            .ok_or_else(|| bad_object("the object has no name"))
    }

    /// The API, kind and write parameters for a JSON object the plugin handed over.
    async fn target(
        &self,
        object: &str,
    ) -> Result<(DynamicObject, Api<DynamicObject>, KindKey, PostParams), Status> {
        let (object, api_version, kind) = Self::parse(object)?;
        let (api, key, _) = self
            .api_for(&api_version, &kind, object.metadata.namespace.as_deref())
            .await?;
        let params = PostParams {
            field_manager: Some(self.manager.clone()),
            ..PostParams::default()
        };
        Ok((object, api, key, params))
    }

    /// Takes what the reconcile wrote.
    pub fn take_written(&self) -> Vec<Expectation> {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl ApiWriter for Writer {
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        let (api, _, _) = self.api_for(api_version, kind, namespace).await?;
        let found = api.get_opt(name).await.map_err(api_status)?;
        found
            .map(|o| serde_json::to_string(&o).map_err(|e| bad_object(e.to_string())))
            .transpose()
    }

    async fn create(&self, object: String) -> Result<String, Status> {
        let (object, api, key, params) = self.target(&object).await?;
        let created = api.create(&params, &object).await.map_err(api_status)?;
        self.remember(key, &created)
    }

    async fn create_batch(&self, objects: Vec<String>) -> Vec<Result<String, Status>> {
        futures::future::join_all(objects.into_iter().map(|object| self.create(object))).await
    }

    async fn update(&self, object: String) -> Result<String, Status> {
        let (object, api, key, params) = self.target(&object).await?;
        let name = Self::name_of(&object)?;
        let updated = api
            .replace(&name, &params, &object)
            .await
            .map_err(api_status)?;
        self.remember(key, &updated)
    }

    async fn update_status(&self, object: String) -> Result<String, Status> {
        let (object, api, key, params) = self.target(&object).await?;
        let name = Self::name_of(&object)?;
        let body = serde_json::to_vec(&object).map_err(|e| bad_object(e.to_string()))?;
        let updated = api
            .replace_status(&name, &params, body)
            .await
            .map_err(api_status)?;
        self.remember(key, &updated)
    }

    async fn patch(
        &self,
        target: ObjectRef,
        patch_type: PatchType,
        patch: String,
    ) -> Result<String, Status> {
        let (api, key, _) = self
            .api_for(
                &target.api_version,
                &target.kind,
                target.namespace.as_deref(),
            )
            .await?;
        let value: Value = serde_json::from_str(&patch)
            .map_err(|e| bad_object(format!("patch is not JSON: {e}")))?;
        let mut params = PatchParams {
            field_manager: Some(self.manager.clone()),
            ..PatchParams::default()
        };
        let patched = match patch_type {
            PatchType::Json => {
                let operations: json_patch::Patch = serde_json::from_value(value)
                    .map_err(|e| bad_object(format!("not a JSON patch: {e}")))?;
                api.patch(&target.name, &params, &Patch::Json::<()>(operations))
                    .await
            }
            PatchType::Merge => api.patch(&target.name, &params, &Patch::Merge(value)).await,
            PatchType::Strategic => {
                api.patch(&target.name, &params, &Patch::Strategic(value))
                    .await
            }
            PatchType::Apply => {
                params.force = true;
                api.patch(&target.name, &params, &Patch::Apply(value)).await
            }
        }
        .map_err(api_status)?;
        self.remember(key, &patched)
    }

    async fn delete(
        &self,
        target: ObjectRef,
        resource_version: Option<String>,
        uid: Option<String>,
        propagation: Option<String>,
    ) -> Result<(), Status> {
        let (api, key, _) = self
            .api_for(
                &target.api_version,
                &target.kind,
                target.namespace.as_deref(),
            )
            .await?;
        let propagation_policy = match propagation.as_deref() {
            None => None,
            Some("Background") => Some(PropagationPolicy::Background),
            Some("Foreground") => Some(PropagationPolicy::Foreground),
            Some("Orphan") => Some(PropagationPolicy::Orphan),
            Some(other) => {
                return Err(bad_object(format!(
                    "propagation policy {other:?} is not Background, Foreground or Orphan"
                )));
            }
        };
        let params = DeleteParams {
            propagation_policy,
            preconditions: (resource_version.is_some() || uid.is_some()).then(|| Preconditions {
                resource_version: resource_version.clone(),
                uid: uid.clone(),
            }),
            ..DeleteParams::default()
        };
        let deleted = api
            .delete(&target.name, &params)
            .await
            .map_err(api_status)?;
        let expectation = match deleted.left() {
            // Still there (finalizers, graceful deletion): its deletionTimestamp is written.
            Some(object) => {
                let json = serde_json::to_value(&object).map_err(|e| bad_object(e.to_string()))?;
                Expectation {
                    kind: key,
                    key: (target.namespace.clone(), target.name.clone()),
                    at_least: Some(crate::informer::resource_version(&json)),
                    uid: None,
                    gone_is_later: true,
                }
            }
            None => Expectation {
                kind: key,
                key: (target.namespace.clone(), target.name.clone()),
                at_least: None,
                uid,
                gone_is_later: true,
            },
        };
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(expectation);
        Ok(())
    }

    async fn emit_event(&self, event: Event) -> Result<(), Status> {
        let regarding = &event.regarding;
        let uid = self
            .informers
            .running(&KindKey::new(&regarding.api_version, &regarding.kind))
            .and_then(|informer| informer.get(regarding.namespace.as_deref(), &regarding.name))
            .and_then(|object| object["metadata"]["uid"].as_str().map(str::to_owned));
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = flotilla_client::now_rfc3339();
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{}.", regarding.name), "namespace": namespace},
            "involvedObject": {
                "apiVersion": regarding.api_version,
                "kind": regarding.kind,
                "namespace": regarding.namespace,
                "name": regarding.name,
                "uid": uid,
            },
            "type": event.event_type,
            "reason": event.reason,
            "message": event.message,
            "source": {"component": self.manager},
            "reportingComponent": self.manager,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }))
        .map_err(|e| bad_object(e.to_string()))?;
        let spam_key = format!(
            "{}/{}/{}/{}/{}/{}",
            regarding.api_version,
            regarding.kind,
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.name,
            uid.as_deref().unwrap_or_default(),
            event.event_type
        );
        // Dropped by the spam filter or a full queue, as Kubernetes' recorder drops them: an
        // event is not worth failing a reconcile for.
        self.events.record(spam_key, object);
        Ok(())
    }

    async fn resources(&self) -> Result<Vec<ApiResource>, Status> {
        let discovery = kube::Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(api_status)?;
        Ok(discovery
            .groups()
            .flat_map(|group| group.recommended_resources())
            .map(|(resource, capabilities)| ApiResource {
                api_version: resource.api_version,
                kind: resource.kind,
                resource: resource.plural,
                namespaced: capabilities.scope == kube::discovery::Scope::Namespaced,
                verbs: capabilities.operations,
            })
            .collect())
    }

    async fn delete_collection(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Remaining, Status> {
        let key = KindKey::new(api_version, kind);
        let (resource, namespaced) = match self.informers.running(&key) {
            Some(informer) => (informer.resource.clone(), informer.namespaced),
            None => crate::informer::discover(&self.client, &key)
                .await
                .map_err(|e| status(404, "NotFound", e))?,
        };
        let api: Api<DynamicObject> = match namespace.filter(|_| namespaced) {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let list = ListParams::default().labels(label_selector);
        api.delete_collection(&DeleteParams::default(), &list)
            .await
            .map_err(api_status)?;
        let left = api.list(&list).await.map_err(api_status)?;
        let mut finalizers: Vec<(String, u32)> = Vec::new();
        for object in &left.items {
            for finalizer in object.metadata.finalizers.iter().flatten() {
                match finalizers.iter_mut().find(|(f, _)| f == finalizer) {
                    Some((_, count)) => *count += 1,
                    None => finalizers.push((finalizer.clone(), 1)),
                }
            }
        }
        finalizers.sort();
        Ok(Remaining {
            count: left.items.len() as u32,
            finalizers,
        })
    }

    async fn update_subresource(
        &self,
        object: String,
        subresource: &str,
    ) -> Result<String, Status> {
        let (object, api, key, params) = self.target(&object).await?;
        let name = Self::name_of(&object)?;
        let body = serde_json::to_vec(&object).map_err(|e| bad_object(e.to_string()))?;
        let updated = api
            .replace_subresource(subresource, &name, &params, body)
            .await
            .map_err(api_status)?;
        // Removing the last finalizer may take the object with it.
        self.remember_write(key, &updated, subresource == "finalize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_keeps_the_fields_asked_for_and_what_names_the_object() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {"app": "web"}, "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        });
        let fields: Vec<String> = [
            "metadata.labels",
            "spec.nodeName",
            "status.phase",
            "status.missing",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(
            project(&pod, &fields),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                    "labels": {"app": "web"}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running"},
            })
        );
    }
}
