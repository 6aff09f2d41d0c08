//! The embedded backend: a durable, crash-safe store in one data directory, built on redb.
//!
//! Layout (all in `<data-dir>/store.redb`):
//! - `history`: revision → record (key, value or tombstone, create revision, version, lease). Every
//!   write takes exactly one revision, so the history is also the watch log.
//! - `latest`: key → revision of its live record (deleted keys are absent).
//! - `key_revisions`: (key, revision) → (), to read a key as it was at an older revision.
//! - `leases`: lease → TTL in ms; `lease_keys`: (lease, key) → ().
//! - `garbage`: (superseding revision, superseded revision) → (): every record made obsolete by a
//!   later write, and every tombstone (superseded by itself). Compaction to revision C removes
//!   the records listed here below C, so its work is proportional to the garbage, never to the
//!   live data.
//! - `flotilla_meta`: format marker, current revision, compacted revision, next lease id.
//!
//! One writer thread owns every write. It takes all requests waiting in its queue, applies them in
//! one redb transaction and commits once (`Durability::Immediate`: fsync before any caller is told
//! the write happened), so concurrent writers share fsyncs (group commit). After a commit it
//! publishes the batch's events to watchers; a watcher that falls behind the in-memory fan-out
//! reads the rest from `history`, so slow watchers cost disk reads, not memory.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use tokio::sync::{broadcast, oneshot};

use crate::compaction::CompactionPlanner;
use crate::{
    Condition, EventKind, KeyValue, LeaseId, Op, RangeRequest, RangeResponse, Result, Revision,
    Store, StoreError, TxnOutcome, WatchEvent, WatchStream, check_write, prefix_end,
};

const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const LATEST: TableDefinition<&[u8], u64> = TableDefinition::new("latest");
const KEY_REVISIONS: TableDefinition<(&[u8], u64), ()> = TableDefinition::new("key_revisions");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("lease_keys");
const GARBAGE: TableDefinition<(u64, u64), ()> = TableDefinition::new("garbage");
const META: TableDefinition<&str, u64> = TableDefinition::new("flotilla_meta");

/// "FLOTILLA" as a number, then the format version. A file without it is not ours.
const FORMAT_MARKER: u64 = 0x464c_4f54_494c_0001;
const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// The file inside the data directory.
pub const STORE_FILE: &str = "store.redb";

/// Most requests applied in one transaction (one fsync).
const MAX_BATCH: usize = 4096;
/// History entries examined per compaction step when no write is waiting.
const COMPACTION_CHUNK: usize = 2048;
/// Batches of events held for live watchers before a slow one must read history instead.
const FANOUT_CAPACITY: usize = 4096;
/// History entries read per catch-up step of a watcher.
const CATCH_UP_CHUNK: usize = 1024;

/// How the embedded store runs.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Compact history older than this, automatically; `None` disables automatic compaction.
    pub compaction_window: Option<Duration>,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            compaction_window: Some(Duration::from_secs(300)),
            lease_check_interval: Duration::from_millis(100),
        }
    }
}

/// Sizes of an embedded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Size of the store's file.
    pub file_bytes: u64,
    /// Keys that exist now.
    pub live_keys: u64,
    /// Records in the history: live values plus what compaction has not yet removed.
    pub history_records: u64,
    /// Superseded records and tombstones waiting for compaction.
    pub garbage_records: u64,
}

/// A handle to an open embedded store. Cheap to clone; the store closes when the last handle is
/// dropped (the drop waits for the writer to finish what it has accepted).
#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has answered everything it accepted.
        if let Ok(mut requests) = self.requests.lock() {
            requests.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
    }
}

/// State shared by the writer, readers and watchers.
#[derive(Debug)]
struct Shared {
    db: Database,
    path: PathBuf,
    /// The newest committed revision.
    revision: AtomicI64,
    /// Revisions below this one are gone.
    compacted: AtomicI64,
    /// History below this revision has been removed from the file (compaction runs in steps, so
    /// this trails `compacted`).
    reclaimed: AtomicI64,
    events: broadcast::Sender<Arc<Vec<Arc<WatchEvent>>>>,
    /// Live leases: TTL and deadline. Deadlines are in memory only: after a restart every lease
    /// gets a full TTL again, as etcd does after a leader change.
    leases: Mutex<HashMap<LeaseId, LeaseState>>,
}

#[derive(Clone, Copy, Debug)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Request {
    Txn {
        key: String,
        condition: Condition,
        op: Op,
        reply: Reply<TxnOutcome>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
    GrantLease {
        ttl: Duration,
        reply: Reply<LeaseId>,
    },
    RevokeLease {
        lease: LeaseId,
        reply: Option<Reply<()>>,
    },
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Refuses a file that is not a Flotilla store, one of
    /// an unknown format version, or one another process has open. Must be called inside a tokio
    /// runtime: lease expiry and automatic compaction run as tasks on it.
    pub async fn open(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let (shared, next_lease) = tokio::task::spawn_blocking(move || open_database(&dir))
            .await
            .map_err(|e| StoreError::Backend(format!("open task failed: {e}")))??;
        let shared = Arc::new(shared);

        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("flotilla-store-writer".into())
            .spawn(move || Writer::new(writer_shared, next_lease).run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        let inner = Arc::new(Inner {
            requests: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            shared,
        });

        tokio::spawn(expire_leases(
            Arc::downgrade(&inner),
            options.lease_check_interval,
        ));
        if let Some(window) = options.compaction_window {
            tokio::spawn(compact_automatically(Arc::downgrade(&inner), window));
        }
        Ok(Self { inner })
    }

    /// Where the store's file is.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// The oldest revision still readable.
    pub fn compacted_revision(&self) -> Revision {
        self.inner.shared.compacted.load(Ordering::Acquire)
    }

    /// History below this revision has been removed from the file; equal to
    /// [`Self::compacted_revision`] once a compaction has finished its steps.
    pub fn reclaimed_revision(&self) -> Revision {
        self.inner.shared.reclaimed.load(Ordering::Acquire)
    }

    /// Sizes of the store, for metrics and tests.
    pub async fn stats(&self) -> Result<EmbeddedStats> {
        self.read(|shared| {
            let txn = shared.db.begin_read().map_err(backend)?;
            let count = |n: Result<u64, redb::StorageError>| n.map_err(backend);
            Ok(EmbeddedStats {
                file_bytes: std::fs::metadata(&shared.path).map_err(backend)?.len(),
                live_keys: count(txn.open_table(LATEST).map_err(backend)?.len())?,
                history_records: count(txn.open_table(HISTORY).map_err(backend)?.len())?,
                garbage_records: count(txn.open_table(GARBAGE).map_err(backend)?.len())?,
            })
        })
        .await
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        send_request(&self.inner, make).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

async fn send_request<T>(inner: &Inner, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    {
        let requests = inner.requests.lock().map_err(|_| StoreError::Closed)?;
        let sender = requests.as_ref().ok_or(StoreError::Closed)?;
        sender.send(make(reply)).map_err(|_| StoreError::Closed)?;
    }
    answer.await.map_err(|_| StoreError::Closed)?
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        let key = key.to_owned();
        self.read(move |shared| {
            let txn = shared.db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let current = meta_get(&meta, META_REVISION)? as Revision;
            let compacted = meta_get(&meta, META_COMPACTED)? as Revision;
            let history = txn.open_table(HISTORY).map_err(backend)?;
            let kv = match revision {
                None => {
                    let latest = txn.open_table(LATEST).map_err(backend)?;
                    read_latest(&latest, &history, key.as_bytes())?
                }
                Some(at) => {
                    check_readable(at, current, compacted)?;
                    let revisions = txn.open_table(KEY_REVISIONS).map_err(backend)?;
                    read_at(&revisions, &history, key.as_bytes(), at as u64)?
                }
            };
            Ok((kv, revision.unwrap_or(current)))
        })
        .await
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        self.read(move |shared| range_blocking(shared, &request))
            .await
    }

    async fn txn(&self, key: &str, condition: Condition, op: Op) -> Result<TxnOutcome> {
        check_write(key, condition, &op)?;
        let key = key.to_owned();
        self.request(|reply| Request::Txn {
            key,
            condition,
            op,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let shared = &self.inner.shared;
        // Subscribe before looking at the revision, so that nothing committed from now on can
        // slip between the history read and the live feed.
        let live = shared.events.subscribe();
        let current = shared.revision.load(Ordering::Acquire);
        let compacted = shared.compacted.load(Ordering::Acquire);
        let start = if from <= 0 { current + 1 } else { from };
        if start < compacted {
            return Err(StoreError::Compacted {
                requested: start,
                compacted: Some(compacted),
            });
        }
        let watcher = Watcher {
            shared: Arc::downgrade(shared),
            live,
            prefix: prefix.as_bytes().to_vec(),
            next: start,
            ready: VecDeque::new(),
            catch_up_to: Some(current),
            done: false,
        };
        Ok(watcher.into_stream())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.shared.revision.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.request(|reply| Request::Compact { revision, reply })
            .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl < Duration::from_secs(1) {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL {ttl:?} is below the minimum of 1s"
            )));
        }
        self.request(|reply| Request::GrantLease { ttl, reply })
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let mut leases = self
            .inner
            .shared
            .leases
            .lock()
            .map_err(|_| StoreError::Closed)?;
        let state = leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        state.deadline = Instant::now() + state.ttl;
        Ok(state.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.request(|reply| Request::RevokeLease {
            lease,
            reply: Some(reply),
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// Opens or creates the store file; returns the shared state and the next lease id.
fn open_database(dir: &Path) -> Result<(Shared, u64)> {
    let refuse = |reason: String| StoreError::Refused {
        path: dir.join(STORE_FILE).display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| refuse(format!("cannot create the directory: {e}")))?;
    let path = dir.join(STORE_FILE);
    let db = Database::create(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            refuse("the store is already open in another process".into())
        }
        other => refuse(format!("not a readable Flotilla store ({other})")),
    })?;

    // A file with our marker is ours; an empty database becomes ours; anything else is refused.
    let tables: Vec<String> = {
        let txn = db.begin_read().map_err(backend)?;
        txn.list_tables()
            .map_err(backend)?
            .map(|t| t.name().to_owned())
            .collect()
    };
    if tables.iter().any(|t| t == META.name()) {
        let txn = db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(|e| refuse(e.to_string()))?;
        let format = meta
            .get(META_FORMAT)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        if format != FORMAT_MARKER {
            return Err(refuse(format!(
                "its format marker is {format:#x}, this build reads {FORMAT_MARKER:#x}"
            )));
        }
    } else if tables.is_empty() {
        let txn = db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_FORMAT, FORMAT_MARKER).map_err(backend)?;
            meta.insert(META_REVISION, 1).map_err(backend)?;
            meta.insert(META_COMPACTED, 0).map_err(backend)?;
            meta.insert(META_NEXT_LEASE, 1).map_err(backend)?;
            txn.open_table(HISTORY).map_err(backend)?;
            txn.open_table(LATEST).map_err(backend)?;
            txn.open_table(KEY_REVISIONS).map_err(backend)?;
            txn.open_table(LEASES).map_err(backend)?;
            txn.open_table(LEASE_KEYS).map_err(backend)?;
            txn.open_table(GARBAGE).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
    } else {
        return Err(refuse(format!(
            "it is a redb database but not a Flotilla store (tables: {})",
            tables.join(", ")
        )));
    }

    let (revision, compacted, reclaimed, next_lease, leases) = {
        let txn = db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let compacted = meta_get(&meta, META_COMPACTED)?;
        let now = Instant::now();
        let mut leases = HashMap::new();
        for entry in txn
            .open_table(LEASES)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (id, ttl_ms) = entry.map_err(backend)?;
            let ttl = Duration::from_millis(ttl_ms.value());
            leases.insert(
                id.value() as LeaseId,
                LeaseState {
                    ttl,
                    deadline: now + ttl,
                },
            );
        }
        (
            meta_get(&meta, META_REVISION)? as Revision,
            compacted as Revision,
            reclaimed_through(&txn.open_table(GARBAGE).map_err(backend)?, compacted)? as Revision,
            meta_get(&meta, META_NEXT_LEASE)?,
            leases,
        )
    };
    let (events, _) = broadcast::channel(FANOUT_CAPACITY);
    let shared = Shared {
        db,
        path,
        revision: AtomicI64::new(revision),
        compacted: AtomicI64::new(compacted),
        reclaimed: AtomicI64::new(reclaimed),
        events,
        leases: Mutex::new(leases),
    };
    Ok((shared, next_lease))
}

/// How far compaction has removed garbage: `compacted`, or the superseding revision of the first
/// garbage still waiting below it.
fn reclaimed_through(garbage: &impl ReadableTable<(u64, u64), ()>, compacted: u64) -> Result<u64> {
    let first = garbage.first().map_err(backend)?.map(|(k, _)| k.value().0);
    Ok(match first {
        Some(superseded_at) if superseded_at < compacted => superseded_at,
        _ => compacted,
    })
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    meta.get(name)
        .map_err(backend)?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::Backend(format!("store metadata lacks {name:?}")))
}

fn check_readable(at: Revision, current: Revision, compacted: Revision) -> Result<()> {
    if at > current {
        return Err(StoreError::FutureRevision {
            requested: at,
            current: Some(current),
        });
    }
    if at < compacted {
        return Err(StoreError::Compacted {
            requested: at,
            compacted: Some(compacted),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Records

/// One history entry: a key's state after the write at some revision.
struct Record {
    key: Vec<u8>,
    deleted: bool,
    create_revision: u64,
    version: u64,
    lease: u64,
    value: Bytes,
}

const RECORD_HEADER: usize = 1 + 8 + 8 + 8 + 4;

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + self.key.len() + self.value.len());
        out.push(u8::from(self.deleted));
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || StoreError::Backend("corrupt history record".into());
        if bytes.len() < RECORD_HEADER {
            return Err(corrupt());
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let key_len = u32::from_le_bytes(bytes[25..29].try_into().unwrap_or_default()) as usize;
        let key_end = RECORD_HEADER + key_len;
        if bytes.len() < key_end {
            return Err(corrupt());
        }
        Ok(Record {
            deleted: bytes[0] != 0,
            create_revision: u64_at(1),
            version: u64_at(9),
            lease: u64_at(17),
            key: bytes[RECORD_HEADER..key_end].to_vec(),
            value: Bytes::copy_from_slice(&bytes[key_end..]),
        })
    }

    fn key_value(self, revision: u64) -> Result<KeyValue> {
        let key = String::from_utf8(self.key)
            .map_err(|_| StoreError::Backend("history record key is not UTF-8".into()))?;
        Ok(KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision as Revision,
            mod_revision: revision as Revision,
            version: self.version as i64,
            lease: (self.lease != 0).then_some(self.lease as LeaseId),
        })
    }
}

fn read_record(history: &impl ReadableTable<u64, &'static [u8]>, revision: u64) -> Result<Record> {
    let bytes = history
        .get(revision)
        .map_err(backend)?
        .ok_or_else(|| StoreError::Backend(format!("history lacks revision {revision}")))?;
    Record::decode(bytes.value())
}

fn read_latest(
    latest: &impl ReadableTable<&'static [u8], u64>,
    history: &impl ReadableTable<u64, &'static [u8]>,
    key: &[u8],
) -> Result<Option<KeyValue>> {
    let Some(revision) = latest.get(key).map_err(backend)?.map(|v| v.value()) else {
        return Ok(None);
    };
    read_record(history, revision)?
        .key_value(revision)
        .map(Some)
}

/// The key as it was at `at`: its newest record at or below `at`, unless that is a tombstone.
fn read_at(
    revisions: &impl ReadableTable<(&'static [u8], u64), ()>,
    history: &impl ReadableTable<u64, &'static [u8]>,
    key: &[u8],
    at: u64,
) -> Result<Option<KeyValue>> {
    let newest = revisions
        .range((key, 0u64)..=(key, at))
        .map_err(backend)?
        .next_back()
        .transpose()
        .map_err(backend)?
        .map(|(k, _)| k.value().1);
    let Some(revision) = newest else {
        return Ok(None);
    };
    let record = read_record(history, revision)?;
    if record.deleted {
        return Ok(None);
    }
    record.key_value(revision).map(Some)
}

fn range_blocking(shared: &Shared, request: &RangeRequest) -> Result<RangeResponse> {
    let prefix = request.prefix.as_bytes();
    // A continuation may start anywhere inside the prefix; before it means the prefix itself.
    let start = match &request.start {
        Some(start) if start.as_bytes() > prefix => start.as_bytes().to_vec(),
        _ => prefix.to_vec(),
    };
    let end = prefix_end(prefix);
    if end.as_ref().is_some_and(|end| start >= *end) {
        return Ok(RangeResponse {
            kvs: Vec::new(),
            more: false,
            revision: request
                .revision
                .unwrap_or_else(|| shared.revision.load(Ordering::Acquire)),
        });
    }
    let limit = if request.limit == 0 {
        usize::MAX
    } else {
        request.limit
    };

    let txn = shared.db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let current = meta_get(&meta, META_REVISION)? as Revision;
    let compacted = meta_get(&meta, META_COMPACTED)? as Revision;
    let history = txn.open_table(HISTORY).map_err(backend)?;
    let mut kvs = Vec::new();
    let mut more = false;

    match request.revision {
        Some(at) if at != current => {
            check_readable(at, current, compacted)?;
            let revisions = txn.open_table(KEY_REVISIONS).map_err(backend)?;
            let lower = (start.as_slice(), 0u64);
            let iter = match &end {
                Some(end) => revisions.range(lower..(end.as_slice(), 0u64)),
                None => revisions.range(lower..),
            }
            .map_err(backend)?;
            // Entries are sorted by key, then revision: remember the newest revision <= at of the
            // key being walked, and emit it when the key changes.
            let mut pending: Option<(Vec<u8>, u64)> = None;
            let emit = |pending: Option<(Vec<u8>, u64)>, kvs: &mut Vec<KeyValue>| -> Result<bool> {
                if let Some((_, revision)) = pending {
                    let record = read_record(&history, revision)?;
                    if !record.deleted {
                        if kvs.len() == limit {
                            return Ok(false);
                        }
                        kvs.push(record.key_value(revision)?);
                    }
                }
                Ok(true)
            };
            for entry in iter {
                let (k, _) = entry.map_err(backend)?;
                let (key, revision) = k.value();
                if pending.as_ref().is_some_and(|(p, _)| p.as_slice() != key)
                    && !emit(pending.take(), &mut kvs)?
                {
                    more = true;
                    break;
                }
                if revision <= at as u64 {
                    pending = Some((key.to_vec(), revision));
                }
            }
            if !more && !emit(pending.take(), &mut kvs)? {
                more = true;
            }
        }
        _ => {
            let latest = txn.open_table(LATEST).map_err(backend)?;
            let iter = match &end {
                Some(end) => latest.range(start.as_slice()..end.as_slice()),
                None => latest.range(start.as_slice()..),
            }
            .map_err(backend)?;
            for entry in iter {
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                let (_, revision) = entry.map_err(backend)?;
                let revision = revision.value();
                kvs.push(read_record(&history, revision)?.key_value(revision)?);
            }
        }
    }
    Ok(RangeResponse {
        kvs,
        more,
        revision: request.revision.unwrap_or(current),
    })
}

// ---------------------------------------------------------------------------------------------
// The writer

struct Writer {
    shared: Arc<Shared>,
    revision: u64,
    compacted: u64,
    /// Garbage below `compacted` may remain to be removed.
    compaction_pending: bool,
    next_lease: u64,
}

/// All tables, open inside one write transaction.
struct Tables<'txn> {
    history: redb::Table<'txn, u64, &'static [u8]>,
    latest: redb::Table<'txn, &'static [u8], u64>,
    revisions: redb::Table<'txn, (&'static [u8], u64), ()>,
    leases: redb::Table<'txn, u64, u64>,
    lease_keys: redb::Table<'txn, (u64, &'static [u8]), ()>,
    garbage: redb::Table<'txn, (u64, u64), ()>,
    meta: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            history: txn.open_table(HISTORY).map_err(backend)?,
            latest: txn.open_table(LATEST).map_err(backend)?,
            revisions: txn.open_table(KEY_REVISIONS).map_err(backend)?,
            leases: txn.open_table(LEASES).map_err(backend)?,
            lease_keys: txn.open_table(LEASE_KEYS).map_err(backend)?,
            garbage: txn.open_table(GARBAGE).map_err(backend)?,
            meta: txn.open_table(META).map_err(backend)?,
        })
    }
}

/// A reply to send once the batch that produced it is durable.
enum Answer {
    Txn(Reply<TxnOutcome>, Result<TxnOutcome>),
    Unit(Reply<()>, Result<()>),
    Lease(Reply<LeaseId>, Result<LeaseId>),
    None,
}

impl Answer {
    fn send(self) {
        // A caller that gave up waiting is not an error.
        match self {
            Answer::Txn(reply, result) => drop(reply.send(result)),
            Answer::Unit(reply, result) => drop(reply.send(result)),
            Answer::Lease(reply, result) => drop(reply.send(result)),
            Answer::None => {}
        }
    }

    fn fail(self, error: &str) {
        let err = || StoreError::Backend(error.to_owned());
        match self {
            Answer::Txn(reply, _) => drop(reply.send(Err(err()))),
            Answer::Unit(reply, _) => drop(reply.send(Err(err()))),
            Answer::Lease(reply, _) => drop(reply.send(Err(err()))),
            Answer::None => {}
        }
    }
}

/// Lease changes to apply to the in-memory deadlines after a commit.
enum LeaseChange {
    Granted(LeaseId, Duration),
    Revoked(LeaseId),
}

impl Writer {
    /// A writer starting from the state `open_database` read.
    fn new(shared: Arc<Shared>, next_lease: u64) -> Self {
        let revision = shared.revision.load(Ordering::Acquire) as u64;
        let compacted = shared.compacted.load(Ordering::Acquire) as u64;
        let compaction_pending = (shared.reclaimed.load(Ordering::Acquire) as u64) < compacted;
        Self {
            shared,
            revision,
            compacted,
            compaction_pending,
            next_lease,
        }
    }

    fn run(mut self, requests: mpsc::Receiver<Request>) {
        loop {
            let first = if self.compaction_pending {
                match requests.try_recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            } else {
                match requests.recv() {
                    Ok(request) => Some(request),
                    Err(_) => return,
                }
            };
            let Some(first) = first else {
                if let Err(e) = self.compaction_step() {
                    tracing::error!(error = %e, "compaction step failed");
                    // Do not spin on a persistent error; the next compaction retries.
                    self.compaction_pending = false;
                }
                continue;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch);
        }
    }

    fn apply_batch(&mut self, batch: Vec<Request>) {
        let start = (
            self.revision,
            self.compacted,
            self.compaction_pending,
            self.next_lease,
        );
        let requests = batch.len();
        let mut answers = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut lease_changes = Vec::new();
        let result = (|| -> Result<()> {
            let txn = self.shared.db.begin_write().map_err(backend)?;
            {
                let mut tables = Tables::open(&txn)?;
                for request in batch {
                    answers.push(self.apply(
                        &mut tables,
                        request,
                        &mut events,
                        &mut lease_changes,
                    )?);
                }
                // Under a steady stream of writes the writer is never idle; removing at least
                // twice as much history per batch as the batch adds keeps compaction ahead.
                if self.compaction_pending {
                    self.compact_chunk(&mut tables, (2 * requests).max(256))?;
                }
                tables
                    .meta
                    .insert(META_REVISION, self.revision)
                    .map_err(backend)?;
                tables
                    .meta
                    .insert(META_COMPACTED, self.compacted)
                    .map_err(backend)?;
                tables
                    .meta
                    .insert(META_NEXT_LEASE, self.next_lease)
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })();

        match result {
            Ok(()) => {
                self.shared
                    .revision
                    .store(self.revision as Revision, Ordering::Release);
                self.shared
                    .compacted
                    .store(self.compacted as Revision, Ordering::Release);
                if !self.compaction_pending {
                    self.shared
                        .reclaimed
                        .store(self.compacted as Revision, Ordering::Release);
                }
                if let Ok(mut leases) = self.shared.leases.lock() {
                    let now = Instant::now();
                    for change in lease_changes {
                        match change {
                            LeaseChange::Granted(id, ttl) => {
                                leases.insert(
                                    id,
                                    LeaseState {
                                        ttl,
                                        deadline: now + ttl,
                                    },
                                );
                            }
                            LeaseChange::Revoked(id) => {
                                leases.remove(&id);
                            }
                        }
                    }
                }
                if !events.is_empty() {
                    // No receivers is fine: nobody is watching.
                    let _ = self.shared.events.send(Arc::new(events));
                }
                for answer in answers {
                    answer.send();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                (
                    self.revision,
                    self.compacted,
                    self.compaction_pending,
                    self.next_lease,
                ) = start;
                let message = format!("commit failed: {e}");
                for answer in answers {
                    answer.fail(&message);
                }
            }
        }
    }

    /// Applies one request inside the batch's transaction. A domain error (condition failed, lease
    /// missing) is the request's answer; only storage errors abort the batch.
    fn apply(
        &mut self,
        tables: &mut Tables<'_>,
        request: Request,
        events: &mut Vec<Arc<WatchEvent>>,
        lease_changes: &mut Vec<LeaseChange>,
    ) -> Result<Answer> {
        Ok(match request {
            Request::Txn {
                key,
                condition,
                op,
                reply,
            } => {
                let outcome = self.apply_txn(tables, &key, condition, op, events)?;
                Answer::Txn(reply, outcome)
            }
            Request::Compact { revision, reply } => {
                let outcome = self.start_compaction(revision);
                Answer::Unit(reply, outcome)
            }
            Request::GrantLease { ttl, reply } => {
                let id = self.next_lease;
                self.next_lease += 1;
                tables
                    .leases
                    .insert(id, ttl.as_millis() as u64)
                    .map_err(backend)?;
                lease_changes.push(LeaseChange::Granted(id as LeaseId, ttl));
                Answer::Lease(reply, Ok(id as LeaseId))
            }
            Request::RevokeLease { lease, reply } => {
                let outcome = self.revoke(tables, lease, events)?;
                if outcome.is_ok() {
                    lease_changes.push(LeaseChange::Revoked(lease));
                }
                match reply {
                    Some(reply) => Answer::Unit(reply, outcome),
                    None => Answer::None,
                }
            }
        })
    }

    fn apply_txn(
        &mut self,
        tables: &mut Tables<'_>,
        key: &str,
        condition: Condition,
        op: Op,
        events: &mut Vec<Arc<WatchEvent>>,
    ) -> Result<Result<TxnOutcome>> {
        let prev = read_latest(&tables.latest, &tables.history, key.as_bytes())?;
        let holds = match condition {
            Condition::Absent => prev.is_none(),
            Condition::ModRevision(expected) => {
                prev.as_ref().is_some_and(|p| p.mod_revision == expected)
            }
            Condition::Exists => prev.is_some(),
            Condition::Always => op != Op::Delete || prev.is_some(),
        };
        if !holds {
            return Ok(Ok(TxnOutcome::NotApplied {
                revision: self.revision as Revision,
                current: prev,
            }));
        }
        let event = match op {
            Op::Put { value, lease } => {
                if let Some(lease) = lease
                    && tables.leases.get(lease as u64).map_err(backend)?.is_none()
                {
                    return Ok(Err(StoreError::LeaseNotFound(lease)));
                }
                self.write(tables, key, Some((value, lease)), prev)?
            }
            Op::Delete => self.write(tables, key, None, prev)?,
        };
        let outcome = TxnOutcome::Applied {
            revision: self.revision as Revision,
            prev: event.prev.clone(),
            kv: (event.kind == EventKind::Put).then(|| event.kv.clone()),
        };
        events.push(Arc::new(event));
        Ok(Ok(outcome))
    }

    /// Writes the key's next record: its new value and lease, or (with `None`) its deletion.
    fn write(
        &mut self,
        tables: &mut Tables<'_>,
        key: &str,
        value: Option<(Bytes, Option<LeaseId>)>,
        prev: Option<KeyValue>,
    ) -> Result<WatchEvent> {
        let revision = self.revision + 1;
        let (record, lease) = match value {
            Some((value, lease)) => (
                Record {
                    key: key.as_bytes().to_vec(),
                    deleted: false,
                    create_revision: prev.as_ref().map_or(revision, |p| p.create_revision as u64),
                    version: prev.as_ref().map_or(1, |p| p.version as u64 + 1),
                    lease: lease.unwrap_or(0) as u64,
                    value,
                },
                lease,
            ),
            None => (
                Record {
                    key: key.as_bytes().to_vec(),
                    deleted: true,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                    value: Bytes::new(),
                },
                None,
            ),
        };
        tables
            .history
            .insert(revision, record.encode().as_slice())
            .map_err(backend)?;
        tables
            .revisions
            .insert((key.as_bytes(), revision), ())
            .map_err(backend)?;
        // The record this write replaces, and a tombstone itself, are garbage once compaction
        // passes this revision.
        if let Some(prev) = &prev {
            tables
                .garbage
                .insert((revision, prev.mod_revision as u64), ())
                .map_err(backend)?;
        }
        if record.deleted {
            tables
                .garbage
                .insert((revision, revision), ())
                .map_err(backend)?;
            tables.latest.remove(key.as_bytes()).map_err(backend)?;
        } else {
            tables
                .latest
                .insert(key.as_bytes(), revision)
                .map_err(backend)?;
        }
        let old_lease = prev.as_ref().and_then(|p| p.lease);
        if old_lease != lease {
            if let Some(old) = old_lease {
                tables
                    .lease_keys
                    .remove((old as u64, key.as_bytes()))
                    .map_err(backend)?;
            }
            if let Some(new) = lease {
                tables
                    .lease_keys
                    .insert((new as u64, key.as_bytes()), ())
                    .map_err(backend)?;
            }
        }
        self.revision = revision;
        let kind = if record.deleted {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        Ok(WatchEvent {
            kind,
            kv: record.key_value(revision)?,
            prev,
        })
    }

    fn revoke(
        &mut self,
        tables: &mut Tables<'_>,
        lease: LeaseId,
        events: &mut Vec<Arc<WatchEvent>>,
    ) -> Result<Result<()>> {
        if tables
            .leases
            .remove(lease as u64)
            .map_err(backend)?
            .is_none()
        {
            return Ok(Err(StoreError::LeaseNotFound(lease)));
        }
        let id = lease as u64;
        let keys: Vec<String> = tables
            .lease_keys
            .range((id, &[][..])..(id + 1, &[][..]))
            .map_err(backend)?
            .map(|entry| {
                entry
                    .map_err(backend)
                    .map(|(k, _)| String::from_utf8_lossy(k.value().1).into_owned())
            })
            .collect::<Result<_>>()?;
        for key in keys {
            let prev = read_latest(&tables.latest, &tables.history, key.as_bytes())?;
            if prev.is_some() {
                events.push(Arc::new(self.write(tables, &key, None, prev)?));
            }
        }
        Ok(Ok(()))
    }

    fn start_compaction(&mut self, revision: Revision) -> Result<()> {
        let current = self.revision as Revision;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: Some(current),
            });
        }
        if revision <= self.compacted as Revision {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: Some(self.compacted as Revision),
            });
        }
        // From this commit on, reads below `revision` fail; the garbage below it is removed in
        // steps, inside later batches and between them.
        self.compacted = revision as u64;
        self.compaction_pending = true;
        Ok(())
    }

    /// Removes one chunk of history below the compacted revision in its own transaction; runs
    /// when no write is waiting.
    fn compaction_step(&mut self) -> Result<()> {
        let txn = self.shared.db.begin_write().map_err(backend)?;
        {
            let mut tables = Tables::open(&txn)?;
            self.compact_chunk(&mut tables, COMPACTION_CHUNK)?;
        }
        txn.commit().map_err(backend)?;
        if !self.compaction_pending {
            self.shared
                .reclaimed
                .store(self.compacted as Revision, Ordering::Release);
        }
        Ok(())
    }

    /// Removes up to `max` garbage records superseded below the compacted revision: their
    /// history, their key-revision index entry, and the garbage entry itself.
    fn compact_chunk(&mut self, tables: &mut Tables<'_>, max: usize) -> Result<()> {
        let victims: Vec<(u64, u64)> = tables
            .garbage
            .range((0u64, 0u64)..(self.compacted, 0u64))
            .map_err(backend)?
            .take(max)
            .map(|entry| entry.map(|(k, _)| k.value()).map_err(backend))
            .collect::<Result<_>>()?;
        for &(superseded_at, revision) in &victims {
            let key = match tables.history.remove(revision).map_err(backend)? {
                Some(bytes) => Some(Record::decode(bytes.value())?.key),
                None => None,
            };
            if let Some(key) = key {
                tables
                    .revisions
                    .remove((key.as_slice(), revision))
                    .map_err(backend)?;
            }
            tables
                .garbage
                .remove((superseded_at, revision))
                .map_err(backend)?;
        }
        self.compaction_pending = victims.len() == max;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

/// The state of one watch. It is its own stream: the consumer's poll reads the fan-out directly
/// (no task or channel per watcher), and falls back to history when it fell behind.
struct Watcher {
    shared: Weak<Shared>,
    live: broadcast::Receiver<Arc<Vec<Arc<WatchEvent>>>>,
    prefix: Vec<u8>,
    /// The next revision this watcher has not yet looked at.
    next: Revision,
    /// Read but not yet yielded.
    ready: VecDeque<Arc<WatchEvent>>,
    /// Read history up to this revision before listening to the fan-out again.
    catch_up_to: Option<Revision>,
    done: bool,
}

impl Watcher {
    fn into_stream(self) -> WatchStream {
        Box::pin(futures::stream::unfold(self, |mut watcher| async move {
            let item = watcher.next_item().await?;
            Some((item, watcher))
        }))
    }

    /// The next event; an error ends the watch.
    async fn next_item(&mut self) -> Option<Result<Arc<WatchEvent>>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if let Some(upto) = self.catch_up_to {
                if self.next > upto {
                    self.catch_up_to = None;
                } else if let Err(e) = self.read_history(upto).await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => self.take_batch(&batch),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // The fan-out dropped batches this watcher had not read: history has them.
                    let Some(shared) = self.shared.upgrade() else {
                        self.done = true;
                        return Some(Err(StoreError::Closed));
                    };
                    self.catch_up_to = Some(shared.revision.load(Ordering::Acquire));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(StoreError::Closed));
                }
            }
        }
    }

    /// Takes the events of one committed batch (consecutive revisions) that this watcher has not
    /// seen yet; a batch that starts past `next` means a gap, which history fills.
    fn take_batch(&mut self, batch: &[Arc<WatchEvent>]) {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return;
        };
        if last.revision() < self.next {
            return;
        }
        if first.revision() > self.next {
            self.catch_up_to = Some(last.revision());
            return;
        }
        for event in batch.iter().filter(|e| e.revision() >= self.next) {
            if event.kv.key.as_bytes().starts_with(&self.prefix) {
                self.ready.push_back(event.clone());
            }
        }
        self.next = last.revision() + 1;
    }

    /// Reads one chunk of history from `next` towards `upto`.
    async fn read_history(&mut self, upto: Revision) -> Result<()> {
        let shared = self.shared.upgrade().ok_or(StoreError::Closed)?;
        let (from, prefix) = (self.next, self.prefix.clone());
        let (events, next) = tokio::task::spawn_blocking(move || {
            read_history(&shared, &prefix, from, upto, CATCH_UP_CHUNK)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("watch read failed: {e}")))??;
        self.ready.extend(events);
        self.next = next;
        Ok(())
    }
}

/// Reads up to `max` history entries in `[from, upto]`, keeping those under `prefix`; returns
/// them with the next revision to read.
fn read_history(
    shared: &Shared,
    prefix: &[u8],
    from: Revision,
    upto: Revision,
    max: usize,
) -> Result<(Vec<Arc<WatchEvent>>, Revision)> {
    let txn = shared.db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let compacted = meta_get(&meta, META_COMPACTED)? as Revision;
    if from < compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compacted: Some(compacted),
        });
    }
    let history = txn.open_table(HISTORY).map_err(backend)?;
    let revisions = txn.open_table(KEY_REVISIONS).map_err(backend)?;
    let mut events = Vec::new();
    let mut next = upto + 1;
    for (seen, entry) in history
        .range(from as u64..=upto as u64)
        .map_err(backend)?
        .enumerate()
    {
        let (revision, bytes) = entry.map_err(backend)?;
        let revision = revision.value();
        if seen == max {
            next = revision as Revision;
            break;
        }
        let record = Record::decode(bytes.value())?;
        if !record.key.starts_with(prefix) {
            continue;
        }
        let prev = if revision > 1 {
            read_at(&revisions, &history, &record.key, revision - 1)?
        } else {
            None
        };
        let kind = if record.deleted {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        events.push(Arc::new(WatchEvent {
            kind,
            kv: record.key_value(revision)?,
            prev,
        }));
    }
    Ok((events, next))
}

// ---------------------------------------------------------------------------------------------
// Background tasks

async fn expire_leases(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<LeaseId> = match inner.shared.leases.lock() {
            Ok(mut leases) => {
                let expired: Vec<LeaseId> = leases
                    .iter()
                    .filter(|(_, state)| state.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                // Forget them now so a late keep-alive gets LeaseNotFound, not a revival.
                for id in &expired {
                    leases.remove(id);
                }
                expired
            }
            Err(_) => return,
        };
        for lease in expired {
            tracing::debug!(lease, "lease expired");
            if let Ok(requests) = inner.requests.lock()
                && let Some(sender) = requests.as_ref()
            {
                let _ = sender.send(Request::RevokeLease { lease, reply: None });
            }
        }
    }
}

/// Compacts, every so often, to the revision that was current `window` ago.
async fn compact_automatically(inner: Weak<Inner>, window: Duration) {
    let mut planner = CompactionPlanner::new(window);
    let mut tick = tokio::time::interval(planner.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let revision = inner.shared.revision.load(Ordering::Acquire);
        let Some(target) = planner.observe(Instant::now(), revision) else {
            continue;
        };
        if target <= inner.shared.compacted.load(Ordering::Acquire) {
            continue;
        }
        match send_request(&inner, |reply| Request::Compact {
            revision: target,
            reply,
        })
        .await
        {
            Ok(()) => tracing::debug!(revision = target, "compacted"),
            Err(StoreError::Compacted { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "automatic compaction failed"),
        }
    }
}
