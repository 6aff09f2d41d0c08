//! The Store: Flotilla's only persistence layer, with etcd v3 semantics.
//!
//! This crate owns the [`Store`] trait and its two backends: [`embedded::EmbeddedStore`] (the
//! default, a durable, crash-safe store on redb in one data directory) and [`etcd::EtcdStore`] (a
//! real etcd cluster through `etcd-client`). Both give a global, strictly increasing revision;
//! per-key create/mod revision and version; reads at a revision with pagination; compare-and-swap
//! writes; ordered, gap-free watches that carry the previous value; compaction with a distinct
//! [`StoreError::Compacted`] error; and leases. One conformance suite (`tests/conformance.rs`)
//! runs against both.
//!
//! It must not know HTTP or Kubernetes object kinds: keys are opaque strings (the API server lays
//! them out as Kubernetes does, `/registry/pods/<ns>/<name>`) and values are opaque bytes. Only the
//! API server may hold a `Store`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

pub mod compaction;
pub mod embedded;
pub mod etcd;
#[cfg(feature = "testing")]
pub mod testing;

pub use compaction::compact_periodically;
pub use embedded::{EmbeddedOptions, EmbeddedStats, EmbeddedStore};
pub use etcd::{EtcdOptions, EtcdStore};

/// A position in the store's history. Every successful write gets the next revision; the first
/// revision of an empty store is 1, as in etcd.
pub type Revision = i64;

/// Identifies a lease. Never zero.
pub type LeaseId = i64;

/// The largest key the store accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// The largest value the store accepts, in bytes. etcd refuses requests above 1.5 MiB by default
/// (`--max-request-bytes`); both backends apply the same limit so they behave alike.
pub const MAX_VALUE_BYTES: usize = 1_500_000;

/// One key with its value and metadata, as stored at some revision.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// The revision that created the key (reset when the key is deleted and created again).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since the key was created; 1 after the create.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .field("lease", &self.lease)
            .finish()
    }
}

/// A read over every key that starts with `prefix`.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub prefix: String,
    /// Start at this key (inclusive) instead of the first key of the prefix; must be inside the
    /// prefix. A continuation from [`RangeResponse::continue_from`] goes here.
    pub start: Option<String>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read the store as it was at this revision; `None` reads the latest state.
    pub revision: Option<Revision>,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    pub fn at(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the answer short.
    pub more: bool,
    /// The revision the read saw: pass it as `revision` to continue from the same snapshot.
    pub revision: Revision,
}

impl RangeResponse {
    /// Where the next page starts, when there is one.
    pub fn continue_from(&self) -> Option<String> {
        match (self.more, self.kvs.last()) {
            (true, Some(last)) => Some(key_successor(&last.key)),
            _ => None,
        }
    }
}

/// What must hold for a [`Store::txn`] to apply its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The key does not exist.
    Absent,
    /// The key exists and was last written at this revision.
    ModRevision(Revision),
    /// The key exists, whatever its revision.
    Exists,
    /// Always apply (for a delete: the key must still exist for anything to happen).
    Always,
}

/// The operation a [`Store::txn`] applies when its condition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Delete,
}

/// What a [`Store::txn`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The condition held and the operation was applied at `revision`.
    Applied {
        revision: Revision,
        /// The key as it was before the write.
        prev: Option<KeyValue>,
        /// The key as written; `None` after a delete.
        kv: Option<KeyValue>,
    },
    /// The condition did not hold; nothing was written. `current` is the key as it is now.
    NotApplied {
        revision: Revision,
        current: Option<KeyValue>,
    },
}

impl TxnOutcome {
    pub fn applied(&self) -> bool {
        matches!(self, TxnOutcome::Applied { .. })
    }

    /// The revision of the write, or the store's revision when nothing was written.
    pub fn revision(&self) -> Revision {
        match self {
            TxnOutcome::Applied { revision, .. } | TxnOutcome::NotApplied { revision, .. } => {
                *revision
            }
        }
    }
}

/// Whether an event wrote or removed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value, and the deletion's
    /// revision as `mod_revision`.
    pub kv: KeyValue,
    /// The key before the change, for updates and deletes.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// An ordered stream of changes: every revision after the start exactly once, in order. It ends
/// with an error (then nothing more) when the store cannot continue it, for example
/// [`StoreError::Compacted`] after a consumer fell behind the retained history. Events are
/// shared: a thousand watchers of one change hold one copy of it.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Arc<WatchEvent>, StoreError>> + Send>>;

/// Errors of the store. Each names what was wrong and, where one applies, the limit or endpoint.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The revision is older than the retained history. `compacted` is the oldest retained
    /// revision when the backend reports it.
    #[error("revision {requested} has been compacted{}", compacted.map(|c| format!(" (oldest retained revision is {c})")).unwrap_or_default())]
    Compacted {
        requested: Revision,
        compacted: Option<Revision>,
    },
    /// The revision has not happened yet. `current` is the store's revision when the backend
    /// reports it.
    #[error("revision {requested} is in the future{}", current.map(|c| format!(" (current revision is {c})")).unwrap_or_default())]
    FutureRevision {
        requested: Revision,
        current: Option<Revision>,
    },
    #[error("key is {size} bytes, over the limit of {limit} bytes")]
    KeyTooLarge { size: usize, limit: usize },
    #[error("value for key {key:?} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("etcd at {endpoints} is unreachable: {message}")]
    Unavailable { endpoints: String, message: String },
    #[error("refusing to open {path}: {reason}")]
    Refused { path: String, reason: String },
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("the store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage interface every Flotilla component reaches through the API server.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads one key, at `revision` or (if `None`) the latest state. Returns the key if present and
    /// the revision the read saw.
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)>;

    /// Reads the keys under a prefix in key order.
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;

    /// Applies `op` to `key` if `condition` holds, atomically.
    async fn txn(&self, key: &str, condition: Condition, op: Op) -> Result<TxnOutcome>;

    /// Watches every key under `prefix`, starting with the change at revision `from` (inclusive);
    /// `from == 0` starts with the next change.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;

    /// The current revision of the store.
    async fn current_revision(&self) -> Result<Revision>;

    /// Drops history at and below `revision`, keeping each key's latest value. Reads and watches
    /// below it then fail with [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Grants a lease that expires `ttl` after its grant or last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease; returns its TTL.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Revokes a lease now, deleting the keys attached to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// A short name for logs and benchmarks: "embedded" or "etcd".
    fn backend(&self) -> &'static str;
}

/// Convenience forms of [`Store::txn`].
#[async_trait::async_trait]
pub trait StoreExt: Store {
    /// Creates `key` if it does not exist.
    async fn create(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<TxnOutcome> {
        self.txn(key, Condition::Absent, Op::Put { value, lease })
            .await
    }

    /// Replaces `key` if it was last written at `expected`.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<TxnOutcome> {
        self.txn(
            key,
            Condition::ModRevision(expected),
            Op::Put { value, lease },
        )
        .await
    }

    /// Writes `key` whatever its state.
    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<TxnOutcome> {
        self.txn(key, Condition::Always, Op::Put { value, lease })
            .await
    }

    /// Deletes `key` if it was last written at `expected` (or whatever its revision, if `None`).
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<TxnOutcome> {
        let condition = match expected {
            Some(revision) => Condition::ModRevision(revision),
            None => Condition::Exists,
        };
        self.txn(key, condition, Op::Delete).await
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// A shared handle to some store.
pub type SharedStore = Arc<dyn Store>;

/// Which backend to open, parsed from the `--datastore` flag: `embedded` or
/// `etcd://host:port[,host:port…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datastore {
    Embedded,
    Etcd { endpoints: Vec<String> },
}

impl std::str::FromStr for Datastore {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        if s == "embedded" {
            return Ok(Datastore::Embedded);
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(StoreError::InvalidRequest(format!(
                "datastore {s:?} is neither \"embedded\" nor \"etcd://host:port[,host:port...]\""
            )));
        };
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| format!("http://{e}"))
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError::InvalidRequest(format!(
                "datastore {s:?} names no etcd endpoint"
            )));
        }
        Ok(Datastore::Etcd { endpoints })
    }
}

/// Checks a write against the size limits, and refuses a meaningless one, before either backend
/// sees it.
pub(crate) fn check_write(key: &str, condition: Condition, op: &Op) -> Result<()> {
    if condition == Condition::Absent && *op == Op::Delete {
        return Err(StoreError::InvalidRequest(
            "deleting a key on condition that it is absent does nothing".into(),
        ));
    }
    if key.is_empty() {
        return Err(StoreError::InvalidRequest("empty key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge {
            size: key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    if let Op::Put { value, .. } = op
        && value.len() > MAX_VALUE_BYTES
    {
        return Err(StoreError::ValueTooLarge {
            key: key.to_owned(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The smallest key greater than `key`: where a continuation starts.
pub fn key_successor(key: &str) -> String {
    let mut next = String::with_capacity(key.len() + 1);
    next.push_str(key);
    next.push('\0');
    next
}

/// The first byte string after every key with this prefix, or `None` if no such bound exists (an
/// empty prefix, or one of only 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn datastore_flag_parses() {
        assert_eq!(
            "embedded".parse::<Datastore>().unwrap(),
            Datastore::Embedded
        );
        assert_eq!(
            "etcd://127.0.0.1:2379,10.0.0.2:2379"
                .parse::<Datastore>()
                .unwrap(),
            Datastore::Etcd {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://10.0.0.2:2379".into()
                ]
            }
        );
        let err = "mysql://x".parse::<Datastore>().unwrap_err().to_string();
        assert!(err.contains("neither"), "{err}");
        assert!("etcd://".parse::<Datastore>().is_err());
    }

    #[test]
    fn size_limits_name_the_limit() {
        let big = Op::Put {
            value: Bytes::from(vec![0u8; MAX_VALUE_BYTES + 1]),
            lease: None,
        };
        let err = check_write("/k", Condition::Always, &big)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&MAX_VALUE_BYTES.to_string()), "{err}");
        let key = "k".repeat(MAX_KEY_BYTES + 1);
        let err = check_write(&key, Condition::Always, &Op::Delete)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&MAX_KEY_BYTES.to_string()), "{err}");
    }
}
