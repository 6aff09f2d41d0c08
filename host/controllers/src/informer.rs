//! Informers: one list + watch per kind (resumed by kube's watcher, relisting on 410), feeding
//! one shared cache that every controller reads and subscribes to. An informer starts when
//! the first controller asks for its kind and runs for as long as the manager does.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// A kind, as `(apiVersion, kind)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindKey {
    pub api_version: String,
    pub kind: String,
}

impl KindKey {
    pub fn new(api_version: &str, kind: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    fn gvk(&self) -> GroupVersionKind {
        let (group, version) = self
            .api_version
            .split_once('/')
            .unwrap_or(("", &self.api_version));
        GroupVersionKind::gvk(group, version, &self.kind)
    }
}

impl std::fmt::Display for KindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version, self.kind)
    }
}

/// An object's place: namespace (none for cluster-scoped kinds) and name.
pub type ObjectKey = (Option<String>, String);

/// One change an informer saw: the object before (none when added) and after (none when
/// deleted).
#[derive(Clone, Debug)]
pub struct Change {
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

fn object_key(object: &Value) -> ObjectKey {
    let metadata = &object["metadata"];
    (
        metadata["namespace"].as_str().map(str::to_owned),
        metadata["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The store revision an object was read at.
pub fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// The uid of an object's controller (its owner reference with `controller: true`).
pub fn controller_uid(object: &Value) -> Option<&str> {
    crate::controller_of(object)?["uid"].as_str()
}

/// The objects of one kind, and an index of them by controller uid (`None`: no controller).
#[derive(Default)]
struct Objects {
    all: HashMap<ObjectKey, Arc<Value>>,
    by_controller: HashMap<Option<String>, BTreeSet<ObjectKey>>,
}

impl Objects {
    fn unindex(&mut self, key: &ObjectKey, object: &Value) {
        let controller = controller_uid(object).map(str::to_owned);
        if let Some(keys) = self.by_controller.get_mut(&controller) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_controller.remove(&controller);
            }
        }
    }

    fn insert(&mut self, key: ObjectKey, object: Arc<Value>) -> Option<Arc<Value>> {
        let old = self.all.insert(key.clone(), object.clone());
        if let Some(old) = &old {
            self.unindex(&key, old);
        }
        self.by_controller
            .entry(controller_uid(&object).map(str::to_owned))
            .or_default()
            .insert(key);
        old
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<Value>> {
        let old = self.all.remove(key)?;
        self.unindex(key, &old);
        Some(old)
    }

    fn get(&self, key: &ObjectKey) -> Option<&Arc<Value>> {
        self.all.get(key)
    }

    /// The objects `controller` controls (or that no controller owns), in one namespace or
    /// all, in key order.
    fn controlled_by<'a>(
        &'a self,
        controller: Option<&str>,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Arc<Value>)> + 'a {
        self.by_controller
            .get(&controller.map(str::to_owned))
            .into_iter()
            .flatten()
            .filter(move |(ns, _)| namespace.is_none() || ns.as_deref() == namespace)
            .filter_map(|key| Some((key, self.all.get(key)?)))
    }
}

/// The cache of one kind and the stream of its changes.
pub struct Informer {
    pub kind: KindKey,
    pub resource: ApiResource,
    pub namespaced: bool,
    objects: RwLock<Objects>,
    changes: broadcast::Sender<Change>,
    /// Counts changes applied to `objects`; waiters for a write's effect watch it.
    generation: watch::Sender<u64>,
    synced: watch::Sender<bool>,
}

impl std::fmt::Debug for Informer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &self.kind)
            .finish()
    }
}

/// Changes buffered per subscriber; one further behind is told it lagged and resyncs.
const CHANGES_BUFFER: usize = 16 * 1024;

impl Informer {
    fn objects(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.objects()
            .get(&(namespace.map(str::to_owned), name.to_owned()))
            .cloned()
    }

    /// Every object, or those of one namespace.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let objects = self.objects();
        let mut items: Vec<(&ObjectKey, &Arc<Value>)> = objects
            .all
            .iter()
            .filter(|((ns, _), _)| namespace.is_none() || ns.as_deref() == namespace)
            .collect();
        items.sort_unstable_by(|a, b| a.0.cmp(b.0));
        items
            .into_iter()
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// The objects a controller may claim, in key order: those it controls, and those no
    /// controller owns for which `orphan` holds.
    pub fn claimable_by(
        &self,
        uid: &str,
        namespace: Option<&str>,
        orphan: impl Fn(&Value) -> bool,
    ) -> Vec<Arc<Value>> {
        let objects = self.objects();
        let mut items: Vec<(&ObjectKey, &Arc<Value>)> = objects
            .controlled_by(Some(uid), namespace)
            .chain(
                objects
                    .controlled_by(None, namespace)
                    .filter(|(_, o)| orphan(o)),
            )
            .collect();
        items.sort_unstable_by(|a, b| a.0.cmp(b.0));
        items
            .into_iter()
            .map(|(_, object)| object.clone())
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Waits until the first list has been read.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Waits (at most `limit`) until `holds` is true of the cached object at `key`.
    pub async fn wait_until(
        &self,
        key: &ObjectKey,
        limit: Duration,
        holds: impl Fn(Option<&Value>) -> bool,
    ) -> bool {
        let mut generation = self.generation.subscribe();
        let check = |informer: &Self| holds(informer.objects().get(key).map(|o| &**o));
        let waited = tokio::time::timeout(limit, async {
            loop {
                if check(self) {
                    return;
                }
                if generation.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok() && check(self)
    }

    fn apply(&self, object: Value) {
        let key = object_key(&object);
        let new = Arc::new(object);
        let old = self
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, new.clone());
        if old
            .as_ref()
            .is_some_and(|old| resource_version(old) == resource_version(&new))
        {
            return;
        }
        self.generation.send_modify(|g| *g += 1);
        let _ = self.changes.send(Change {
            old,
            new: Some(new),
        });
    }

    fn delete(&self, key: &ObjectKey) {
        let old = self
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(old) = old {
            self.generation.send_modify(|g| *g += 1);
            let _ = self.changes.send(Change {
                old: Some(old),
                new: None,
            });
        }
    }

    /// A relist: objects not listed are gone.
    fn replace(&self, listed: HashMap<ObjectKey, Value>) {
        let gone: Vec<ObjectKey> = self
            .objects()
            .all
            .keys()
            .filter(|key| !listed.contains_key(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.delete(key);
        }
        for (_, object) in listed {
            self.apply(object);
        }
        self.synced.send_replace(true);
    }

    async fn run(self: Arc<Self>, client: kube::Client) {
        let api: Api<DynamicObject> = Api::all_with(client, &self.resource);
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        let mut listing: Option<HashMap<ObjectKey, Value>> = None;
        while let Some(event) = events.next().await {
            let to_json = |object: DynamicObject| {
                let mut json = serde_json::to_value(object).ok()?;
                // List items may come without their type.
                json["apiVersion"] = Value::from(self.kind.api_version.as_str());
                json["kind"] = Value::from(self.kind.kind.as_str());
                Some(json)
            };
            match event {
                Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    if let (Some(listing), Some(object)) = (&mut listing, to_json(object)) {
                        listing.insert(object_key(&object), object);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listing.take() {
                        self.replace(listed);
                    }
                }
                Ok(watcher::Event::Apply(object)) => {
                    if let Some(object) = to_json(object) {
                        self.apply(object);
                    }
                }
                Ok(watcher::Event::Delete(object)) => {
                    if let Some(object) = to_json(object) {
                        self.delete(&object_key(&object));
                    }
                }
                Err(error) => {
                    tracing::warn!(kind = %self.kind, "watch failed, retrying: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The API resource serving `kind`, and whether it is namespaced.
pub async fn discover(
    client: &kube::Client,
    kind: &KindKey,
) -> Result<(ApiResource, bool), String> {
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &kind.gvk())
        .await
        .map_err(|e| format!("the API serves no {kind}: {e}"))?;
    Ok((resource, capabilities.scope == Scope::Namespaced))
}

/// An informer once its kind has been looked up and its watch started.
type Starting = tokio::sync::OnceCell<Arc<Informer>>;

/// The informers of one manager, by kind.
#[derive(Clone)]
pub struct Informers {
    client: kube::Client,
    kinds: Arc<Mutex<HashMap<KindKey, Arc<Starting>>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers").finish()
    }
}

impl Informers {
    pub fn new(client: kube::Client, stop: tokio_util::sync::CancellationToken) -> Self {
        Self {
            client,
            kinds: Arc::default(),
            stop,
        }
    }

    /// The informer of `kind`, started (and its kind looked up in discovery) on first use.
    pub async fn informer(&self, kind: &KindKey) -> Result<Arc<Informer>, String> {
        let cell = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let (resource, namespaced) = discover(&self.client, kind).await?;
            let informer = Arc::new(Informer {
                kind: kind.clone(),
                resource,
                namespaced,
                objects: RwLock::default(),
                changes: broadcast::channel(CHANGES_BUFFER).0,
                generation: watch::channel(0).0,
                synced: watch::channel(false).0,
            });
            tokio::spawn(
                self.stop
                    .clone()
                    .run_until_cancelled_owned(informer.clone().run(self.client.clone())),
            );
            Ok(informer)
        })
        .await
        .cloned()
    }

    /// The informer of `kind` if one runs already.
    pub fn running(&self, kind: &KindKey) -> Option<Arc<Informer>> {
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .and_then(|cell| cell.get().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, namespace: &str, controller: Option<&str>) -> (ObjectKey, Arc<Value>) {
        let mut pod = json!({"metadata": {"name": name, "namespace": namespace}});
        if let Some(uid) = controller {
            pod["metadata"]["ownerReferences"] =
                json!([{"uid": "other", "controller": false}, {"uid": uid, "controller": true}]);
        }
        ((Some(namespace.to_owned()), name.to_owned()), Arc::new(pod))
    }

    fn names<'a>(items: impl Iterator<Item = (&'a ObjectKey, &'a Arc<Value>)>) -> Vec<String> {
        items.map(|(key, _)| key.1.clone()).collect()
    }

    #[test]
    fn the_controller_index_follows_adoption_release_and_deletion() {
        let mut objects = Objects::default();
        for (key, object) in [
            pod("b", "ns", Some("rs-1")),
            pod("a", "ns", Some("rs-1")),
            pod("c", "other", Some("rs-1")),
            pod("d", "ns", None),
            pod("e", "ns", Some("rs-2")),
        ] {
            objects.insert(key, object);
        }
        assert_eq!(
            names(objects.controlled_by(Some("rs-1"), Some("ns"))),
            ["a", "b"]
        );
        assert_eq!(
            names(objects.controlled_by(Some("rs-1"), None)),
            ["a", "b", "c"]
        );
        assert_eq!(names(objects.controlled_by(None, Some("ns"))), ["d"]);

        // Released from rs-1 (the reference removed), adopted by rs-2, then deleted.
        let (key, released) = pod("a", "ns", None);
        objects.insert(key, released);
        assert_eq!(
            names(objects.controlled_by(Some("rs-1"), Some("ns"))),
            ["b"]
        );
        assert_eq!(names(objects.controlled_by(None, Some("ns"))), ["a", "d"]);
        let (key, adopted) = pod("a", "ns", Some("rs-2"));
        objects.insert(key.clone(), adopted);
        assert_eq!(
            names(objects.controlled_by(Some("rs-2"), Some("ns"))),
            ["a", "e"]
        );
        assert_eq!(names(objects.controlled_by(None, Some("ns"))), ["d"]);
        objects.remove(&key);
        assert_eq!(
            names(objects.controlled_by(Some("rs-2"), Some("ns"))),
            ["e"]
        );
        objects.remove(&(Some("ns".into()), "e".into()));
        assert!(!objects.by_controller.contains_key(&Some("rs-2".to_owned())));
    }
}
