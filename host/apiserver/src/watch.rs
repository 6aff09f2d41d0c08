//! Watches and the watch cache.
//!
//! Each kind has one store watch, started by its first watcher, that decodes every change once
//! into a [`Change`] and keeps the most recent ones in a ring. Watchers of the kind read the ring
//! (to resume from a resourceVersion) and then a broadcast channel of new changes, so a thousand
//! watchers cost one store watch, one decode per change and, for watchers without selectors or
//! tables, one encoding per change. A watcher that falls more than the channel's capacity behind
//! is cut off: its stream ends cleanly and it resumes from the last resourceVersion it saw, as
//! clients do when Kubernetes closes a slow watch. Memory stays bounded whatever the watchers do.
//!
//! A resume from a revision older than the ring falls back to a watch of its own on the store,
//! which replays the retained history or answers 410 Expired.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flotilla_api::{FieldSelector, LabelSelector, Status};
use flotilla_store::{EventKind, Revision, SharedStore, StoreError, WatchEvent, WatchStream};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::resources::ResourceDef;
use crate::{ApiError, Output, decode};

/// Sizes of the watch cache.
#[derive(Debug, Clone, Copy)]
pub struct WatchCacheOptions {
    /// Changes kept per kind for watchers resuming from a recent resourceVersion.
    pub history: usize,
    /// How far (in changes) a watcher may fall behind before it is cut off.
    pub buffer: usize,
    /// How often a watcher that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for WatchCacheOptions {
    fn default() -> Self {
        Self {
            history: 1024,
            buffer: 1024,
            bookmark_interval: Duration::from_secs(30),
        }
    }
}

/// What a change did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One change to one object, decoded once and shared by every watcher.
#[derive(Debug)]
pub(crate) struct Change {
    kind: ChangeKind,
    revision: Revision,
    key: String,
    /// The object after the change; for a deletion, its last state. Its resourceVersion is the
    /// change's revision.
    object: Value,
    /// The object before a modification, to tell which watchers' selectors it enters or leaves.
    prev: Option<Value>,
    /// The watch event line for watchers that see every change as it is, encoded once.
    line: OnceLock<Bytes>,
}

impl Change {
    /// The change a store event describes; `None` for events that are not changes to objects.
    fn from_event(event: &WatchEvent) -> Option<Result<Self, ApiError>> {
        let revision = event.revision();
        let (kind, source, prev) = match (event.kind, &event.prev) {
            (EventKind::Delete, Some(prev)) => (ChangeKind::Deleted, prev, None),
            (EventKind::Put, Some(prev)) => (ChangeKind::Modified, &event.kv, Some(prev)),
            (EventKind::Put, None) => (ChangeKind::Added, &event.kv, None),
            (EventKind::Delete, None) => return None,
        };
        let decoded = decode(source).and_then(|mut object| {
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            let prev = prev.map(decode).transpose()?;
            Ok(Self {
                kind,
                revision,
                key: event.kv.key.clone(),
                object,
                prev,
                line: OnceLock::new(),
            })
        });
        Some(decoded)
    }

    fn line(&self) -> Bytes {
        self.line
            .get_or_init(|| watch_line(self.kind.as_str(), &self.object))
            .clone()
    }
}

/// One watch event line: `{"type": …, "object": …}` and a newline.
pub(crate) fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The watch cache of one kind.
#[derive(Debug)]
struct KindCache {
    state: Mutex<CacheState>,
    watchers: AtomicUsize,
}

#[derive(Debug)]
struct CacheState {
    ring: VecDeque<Arc<Change>>,
    /// Every change with a revision at or above this is in the ring or still to come.
    covered_from: Revision,
    /// `None` once the store watch has ended: watchers drain and go, the next one restarts it.
    sender: Option<broadcast::Sender<Arc<Change>>>,
}

/// The watch caches of every kind, started on first use.
#[derive(Debug)]
pub(crate) struct WatchCaches {
    store: SharedStore,
    options: WatchCacheOptions,
    /// By the kind's storage prefix (versions of a custom resource share one).
    caches: tokio::sync::Mutex<HashMap<String, Arc<KindCache>>>,
    /// Cancelled when the server stops: every watch ends.
    closing: CancellationToken,
}

/// Counts a watcher for as long as it lives.
struct WatcherGuard(Arc<KindCache>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a watcher's changes come from.
enum Source {
    Cache {
        replay: VecDeque<Arc<Change>>,
        receiver: broadcast::Receiver<Arc<Change>>,
        _guard: WatcherGuard,
    },
    Store(WatchStream),
}

/// A change that was ready without waiting, or the end of the source.
enum Ready {
    Change(Result<Arc<Change>, ApiError>),
    Ended,
}

impl Source {
    /// A change available now, if any.
    fn ready(&mut self) -> Option<Ready> {
        match self {
            Source::Cache {
                replay, receiver, ..
            } => {
                if let Some(change) = replay.pop_front() {
                    return Some(Ready::Change(Ok(change)));
                }
                match receiver.try_recv() {
                    Ok(change) => Some(Ready::Change(Ok(change))),
                    Err(broadcast::error::TryRecvError::Empty) => None,
                    Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                        tracing::info!(missed, "watcher too slow: closing it to be resumed");
                        Some(Ready::Ended)
                    }
                    Err(broadcast::error::TryRecvError::Closed) => Some(Ready::Ended),
                }
            }
            Source::Store(stream) => loop {
                match stream.next().now_or_never()? {
                    None => return Some(Ready::Ended),
                    Some(Ok(event)) => match Change::from_event(&event) {
                        Some(change) => return Some(Ready::Change(change.map(Arc::new))),
                        None => continue,
                    },
                    Some(Err(error)) => return Some(Ready::Change(Err(error.into()))),
                }
            },
        }
    }

    /// The next change; `None` when the source has ended (or cut the watcher off).
    async fn next(&mut self) -> Option<Result<Arc<Change>, ApiError>> {
        match self {
            Source::Cache {
                replay, receiver, ..
            } => {
                if let Some(change) = replay.pop_front() {
                    return Some(Ok(change));
                }
                match receiver.recv().await {
                    Ok(change) => Some(Ok(change)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::info!(missed, "watcher too slow: closing it to be resumed");
                        None
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            }
            Source::Store(stream) => loop {
                match stream.next().await? {
                    Ok(event) => match Change::from_event(&event) {
                        Some(change) => return Some(change.map(Arc::new)),
                        None => continue,
                    },
                    Err(error) => return Some(Err(error.into())),
                }
            },
        }
    }
}

/// What one watcher wants.
pub(crate) struct WatchSpec {
    pub resource: ResourceDef,
    /// The store prefix of the watched collection (one namespace or all).
    pub prefix: String,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub output: Output,
    /// Changes at or after this revision are sent.
    pub from: Revision,
    /// Events sent before any change (the current objects as ADDED).
    pub initial: Vec<Bytes>,
    /// Send a bookmark marking the end of the initial events, at this revision.
    pub initial_events_end: Option<Revision>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

impl WatchSpec {
    /// Whether this watcher sees every change as it is stored: no selectors, no table, and not
    /// a custom resource (whose objects are shown at the version watched).
    fn everything(&self) -> bool {
        self.labels.is_empty()
            && self.fields.is_empty()
            && self.output.table.is_none()
            && self.resource.custom.is_none()
    }

    fn matches(&self, object: &Value) -> bool {
        crate::matches(object, &self.labels, &self.fields)
    }

    /// The event this watcher sees for a change, if any: a modification that moves an object
    /// into the watcher's selection is ADDED to it, one that moves it out is DELETED.
    fn event(&self, change: &Change) -> Option<Bytes> {
        if !change.key.starts_with(&self.prefix) {
            return None;
        }
        if self.everything() {
            return Some(change.line());
        }
        let now = self.matches(&change.object);
        let kind = match change.kind {
            ChangeKind::Modified => {
                let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => ChangeKind::Modified,
                    (false, true) => ChangeKind::Added,
                    (true, false) => ChangeKind::Deleted,
                    (false, false) => return None,
                }
            }
            kind if now => kind,
            _ => return None,
        };
        let object = self.output.one(&self.resource, change.object.clone());
        Some(watch_line(kind.as_str(), &object))
    }

    fn bookmark(&self, revision: Revision, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version(),
            "metadata": metadata,
        });
        watch_line("BOOKMARK", &object)
    }
}

impl WatchCaches {
    pub fn new(store: SharedStore, options: WatchCacheOptions) -> Self {
        Self {
            store,
            options,
            caches: tokio::sync::Mutex::new(HashMap::new()),
            closing: CancellationToken::new(),
        }
    }

    /// Ends every watch, now and from now on.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// How many watchers each kind has, by resource (`pods`, `crontabs.stable.example.com`).
    pub async fn watchers(&self) -> Vec<(String, usize)> {
        let caches = self.caches.lock().await;
        let mut counts: Vec<_> = caches
            .iter()
            .map(|(prefix, cache)| {
                let stored = prefix
                    .trim_start_matches("/registry/")
                    .trim_end_matches('/');
                let resource = match stored.split_once('/') {
                    Some((group, plural)) => format!("{plural}.{group}"),
                    None => stored.to_owned(),
                };
                (resource, cache.watchers.load(Ordering::Relaxed))
            })
            .collect();
        counts.sort();
        counts
    }

    /// The cache of `resource`, starting its store watch if it has none running.
    async fn cache(&self, resource: &ResourceDef) -> Result<Arc<KindCache>, ApiError> {
        let mut caches = self.caches.lock().await;
        let prefix = resource.prefix(None);
        if let Some(cache) = caches.get(&prefix)
            && cache.state.lock().expect("cache lock").sender.is_some()
        {
            return Ok(cache.clone());
        }
        let from = self.store.current_revision().await? + 1;
        let events = self.store.watch(&prefix, from).await?;
        let (sender, _) = broadcast::channel(self.options.buffer.max(1));
        let cache = Arc::new(KindCache {
            state: Mutex::new(CacheState {
                ring: VecDeque::new(),
                covered_from: from,
                sender: Some(sender),
            }),
            watchers: AtomicUsize::new(0),
        });
        tokio::spawn(feed(
            cache.clone(),
            events,
            self.options.history,
            self.closing.clone(),
        ));
        caches.insert(prefix, cache.clone());
        Ok(cache)
    }

    /// Makes sure `resource` has a running cache, so that a snapshot read afterwards is covered
    /// by it.
    pub async fn prepare(&self, resource: &ResourceDef) -> Result<(), ApiError> {
        self.cache(resource).await.map(drop)
    }

    /// The stream of watch event lines for `spec`.
    pub async fn watch(&self, spec: WatchSpec) -> Result<BoxStream<'static, Bytes>, ApiError> {
        let cache = self.cache(&spec.resource).await?;
        let source = {
            let state = cache.state.lock().expect("cache lock");
            match &state.sender {
                Some(sender) if spec.from >= state.covered_from => {
                    cache.watchers.fetch_add(1, Ordering::Relaxed);
                    Some(Source::Cache {
                        replay: state
                            .ring
                            .iter()
                            .filter(|c| c.revision >= spec.from)
                            .cloned()
                            .collect(),
                        receiver: sender.subscribe(),
                        _guard: WatcherGuard(cache.clone()),
                    })
                }
                _ => None,
            }
        };
        let source = match source {
            Some(source) => source,
            // Older than the ring: the store's own history, or 410.
            None => match self.store.watch(&spec.prefix, spec.from).await {
                Ok(events) => Source::Store(events),
                Err(StoreError::Compacted { .. }) => {
                    let status = Status::expired(format!(
                        "too old resource version: {}",
                        spec.from.saturating_sub(1)
                    ));
                    let line = watch_line("ERROR", &status.to_json());
                    return Ok(futures::stream::iter([line]).boxed());
                }
                Err(error) => return Err(error.into()),
            },
        };
        Ok(stream(
            spec,
            source,
            self.options.bookmark_interval,
            self.closing.clone(),
        ))
    }
}

/// Feeds one kind's cache from its store watch until the watch ends or the server stops.
async fn feed(
    cache: Arc<KindCache>,
    mut events: WatchStream,
    history: usize,
    closing: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = closing.cancelled() => None,
        };
        let change = match event {
            Some(Ok(event)) => match Change::from_event(&event) {
                Some(Ok(change)) => Arc::new(change),
                Some(Err(error)) => {
                    tracing::warn!(error = %error.0.message, "watch cache skips an undecodable object");
                    continue;
                }
                None => continue,
            },
            Some(Err(error)) => {
                tracing::warn!(%error, "watch cache's store watch failed; watchers will resume");
                break;
            }
            None => break,
        };
        let mut state = cache.state.lock().expect("cache lock");
        if state.ring.len() >= history.max(1)
            && let Some(evicted) = state.ring.pop_front()
        {
            state.covered_from = evicted.revision + 1;
        }
        state.ring.push_back(change.clone());
        if let Some(sender) = &state.sender {
            // No receivers is fine: the ring keeps the change for later ones.
            let _ = sender.send(change);
        }
    }
    cache.state.lock().expect("cache lock").sender = None;
}

/// One watcher's state between events.
struct Watcher {
    spec: WatchSpec,
    source: Source,
    /// The newest revision seen, sent or not: where a bookmark points.
    seen: Revision,
    bookmarks: Option<tokio::time::Interval>,
    deadline: Option<tokio::time::Instant>,
    closing: CancellationToken,
    /// Set after an ERROR event: nothing follows it.
    done: bool,
}

/// At most this many events, or this many bytes, go out in one chunk.
const BATCH_EVENTS: usize = 64;
const BATCH_BYTES: usize = 256 * 1024;

impl Watcher {
    /// `first` and whatever else is ready now, as one chunk: a watcher that has fallen behind
    /// catches up in few writes instead of one per event.
    fn batch(&mut self, first: Bytes) -> Bytes {
        let mut batch: Option<BytesMut> = None;
        let mut events = 1;
        while events < BATCH_EVENTS
            && batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH_BYTES
        {
            let line = match self.source.ready() {
                None => break,
                Some(Ready::Ended) => {
                    self.done = true;
                    break;
                }
                Some(Ready::Change(Ok(change))) => {
                    if change.revision < self.spec.from {
                        continue;
                    }
                    self.seen = change.revision;
                    match self.spec.event(&change) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                Some(Ready::Change(Err(error))) => {
                    self.done = true;
                    watch_line("ERROR", &error.0.to_json())
                }
            };
            batch
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&line);
            events += 1;
        }
        batch.map_or(first, BytesMut::freeze)
    }
}

fn stream(
    mut spec: WatchSpec,
    source: Source,
    bookmark_interval: Duration,
    closing: CancellationToken,
) -> BoxStream<'static, Bytes> {
    let mut initial = std::mem::take(&mut spec.initial);
    if let Some(revision) = spec.initial_events_end.filter(|_| spec.bookmarks) {
        initial.push(spec.bookmark(revision, true));
    }
    let bookmarks = spec.bookmarks.then(|| {
        let start = tokio::time::Instant::now() + bookmark_interval;
        tokio::time::interval_at(start, bookmark_interval)
    });
    let watcher = Watcher {
        seen: spec.from.saturating_sub(1),
        deadline: spec.timeout.map(|t| tokio::time::Instant::now() + t),
        spec,
        source,
        bookmarks,
        closing,
        done: false,
    };
    let changes = futures::stream::unfold(watcher, |mut watcher| async move {
        loop {
            if watcher.done {
                return None;
            }
            let deadline = async {
                match watcher.deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let bookmark = async {
                match &mut watcher.bookmarks {
                    Some(interval) => interval.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = watcher.source.next() => match next? {
                    Ok(change) => {
                        if change.revision < watcher.spec.from {
                            continue;
                        }
                        watcher.seen = change.revision;
                        if let Some(line) = watcher.spec.event(&change) {
                            let batch = watcher.batch(line);
                            return Some((batch, watcher));
                        }
                    }
                    Err(error) => {
                        // Sent, then the watch ends: the client resumes or relists.
                        watcher.done = true;
                        return Some((watch_line("ERROR", &error.0.to_json()), watcher));
                    }
                },
                _ = bookmark => {
                    let line = watcher.spec.bookmark(watcher.seen, false);
                    return Some((line, watcher));
                }
                () = deadline => return None,
                () = watcher.closing.cancelled() => return None,
            }
        }
    });
    futures::stream::iter(initial).chain(changes).boxed()
}
