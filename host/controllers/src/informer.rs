//! Informers: one list + watch per kind (resumed by kube's watcher, relisting on 410), feeding
//! one shared cache that every controller reads and subscribes to. An informer starts when
//! the first controller asks for its kind and runs for as long as the manager does.

use std::collections::HashMap;
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

/// The cache of one kind and the stream of its changes.
pub struct Informer {
    pub kind: KindKey,
    pub resource: ApiResource,
    pub namespaced: bool,
    objects: RwLock<HashMap<ObjectKey, Arc<Value>>>,
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
    fn objects(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ObjectKey, Arc<Value>>> {
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
        let mut items: Vec<Arc<Value>> = objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none() || ns.as_deref() == namespace)
            .map(|(_, object)| object.clone())
            .collect();
        items.sort_by_key(|a| object_key(a));
        items
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
