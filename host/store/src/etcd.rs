//! The etcd backend: the same [`Store`] semantics on a real etcd cluster, through `etcd-client`.
//!
//! Every conditional write is one etcd transaction (`compare` on create or mod revision, then put
//! or delete, else get), as Kubernetes' own etcd3 storage does. Reads retry with backoff while the
//! cluster is unreachable; writes do not (a retried write could apply twice), they fail with
//! [`StoreError::Unavailable`] naming the endpoints.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::{
    Condition, EventKind, KeyValue, LeaseId, Op, RangeRequest, RangeResponse, Result, Revision,
    Store, StoreError, TxnOutcome, WatchEvent, WatchStream, check_write, prefix_end,
};

/// How the etcd backend connects.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// How long to keep retrying before a connect or a read gives up.
    pub retry_for: Duration,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A connection to an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: String,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

const WATCH_BUFFER: usize = 1024;
/// gRPC's default 4 MiB cap on received messages is too small for a page of 1.5 MB values.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port`), retrying with backoff for
    /// [`EtcdOptions::retry_for`]; the error names the endpoints and the last failure.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self> {
        let joined = endpoints.join(",");
        let deadline = tokio::time::Instant::now() + options.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match Self::try_connect(endpoints, &joined, &options).await {
                Ok(store) => return Ok(store),
                Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(endpoints = %joined, error = %e, "etcd not reachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_connect(
        endpoints: &[String],
        joined: &str,
        options: &EtcdOptions,
    ) -> Result<Self> {
        let connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let unavailable = |e: etcd_client::Error| StoreError::Unavailable {
            endpoints: joined.to_owned(),
            message: e.to_string(),
        };
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(unavailable)?;
        let store = Self {
            client,
            endpoints: joined.to_owned(),
            options: options.clone(),
        };
        // The client connects lazily; one read proves the cluster answers.
        store
            .kv()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(unavailable)?;
        Ok(store)
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Maps an etcd error to the store's error vocabulary.
    fn error(&self, e: etcd_client::Error, requested: Revision) -> StoreError {
        let message = match &e {
            etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
            other => other.to_string(),
        };
        if message.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested,
                compacted: None,
            };
        }
        if message.contains("required revision is a future revision") {
            return StoreError::FutureRevision {
                requested,
                current: None,
            };
        }
        // "requested lease not found" from the server, "lease not found" from the keep-alive.
        if message.contains("lease not found") {
            return StoreError::LeaseNotFound(0);
        }
        let transient = match &e {
            etcd_client::Error::GRpcStatus(status) => {
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) && !message.contains("etcdserver: request is too large")
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            _ => false,
        };
        if transient {
            StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                message,
            }
        } else {
            StoreError::Backend(format!("etcd at {}: {message}", self.endpoints))
        }
    }

    /// Like [`Self::error`], naming the lease: etcd's message does not.
    fn lease_error(&self, e: etcd_client::Error, lease: LeaseId) -> StoreError {
        match self.error(e, 0) {
            StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
            other => other,
        }
    }

    /// Runs a read, retrying with backoff while etcd is unavailable.
    async fn retry_read<T, F, Fut>(&self, mut read: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match read().await {
                Err(StoreError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key().to_vec())
            .map_err(|_| StoreError::Backend("etcd returned a key that is not UTF-8".into()))?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// The range end for a prefix in etcd's terms: "\0" means "to the end of the keyspace".
fn etcd_range_end(prefix: &str) -> Vec<u8> {
    prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0])
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        self.retry_read(|| async {
            let options = GetOptions::new().with_revision(revision.unwrap_or(0));
            let response = self
                .kv()
                .get(key, Some(options))
                .await
                .map_err(|e| self.error(e, revision.unwrap_or(0)))?;
            let kv = response.kvs().first().map(key_value).transpose()?;
            Ok((kv, revision.unwrap_or(header_revision(response.header()))))
        })
        .await
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let start = match &request.start {
            Some(start) if start.as_str() > request.prefix.as_str() => start.clone(),
            _ => request.prefix.clone(),
        };
        let start = if start.is_empty() {
            "\0".to_owned()
        } else {
            start
        };
        self.retry_read(|| async {
            let mut options = GetOptions::new()
                .with_range(etcd_range_end(&request.prefix))
                .with_revision(request.revision.unwrap_or(0));
            if request.limit > 0 {
                options = options.with_limit(request.limit as i64);
            }
            let response = self
                .kv()
                .get(start.as_str(), Some(options))
                .await
                .map_err(|e| self.error(e, request.revision.unwrap_or(0)))?;
            let kvs = response
                .kvs()
                .iter()
                .map(key_value)
                .collect::<Result<Vec<_>>>()?;
            Ok(RangeResponse {
                kvs,
                more: response.more(),
                revision: request
                    .revision
                    .unwrap_or(header_revision(response.header())),
            })
        })
        .await
    }

    async fn txn(&self, key: &str, condition: Condition, op: Op) -> Result<TxnOutcome> {
        check_write(key, condition, &op)?;
        let compare = match condition {
            Condition::Absent => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
            Condition::ModRevision(revision) => {
                vec![Compare::mod_revision(key, CompareOp::Equal, revision)]
            }
            Condition::Exists => vec![Compare::create_revision(key, CompareOp::Greater, 0)],
            Condition::Always => match op {
                Op::Put { .. } => vec![],
                Op::Delete => vec![Compare::create_revision(key, CompareOp::Greater, 0)],
            },
        };
        let lease = match &op {
            Op::Put { lease, .. } => *lease,
            Op::Delete => None,
        };
        let then = match op {
            Op::Put { value, lease } => {
                let mut options = PutOptions::new().with_prev_key();
                if let Some(lease) = lease {
                    options = options.with_lease(lease);
                }
                vec![
                    TxnOp::put(key, value.to_vec(), Some(options)),
                    TxnOp::get(key, None),
                ]
            }
            Op::Delete => vec![TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )],
        };
        let txn = Txn::new()
            .when(compare)
            .and_then(then)
            .or_else(vec![TxnOp::get(key, None)]);
        let response = self
            .kv()
            .txn(txn)
            .await
            .map_err(|e| self.lease_error(e, lease.unwrap_or(0)))?;
        let revision = header_revision(response.header());
        let mut prev = None;
        let mut kv = None;
        let mut current = None;
        for op_response in response.op_responses() {
            match op_response {
                TxnOpResponse::Put(put) => prev = put.prev_key().map(key_value).transpose()?,
                TxnOpResponse::Delete(delete) => {
                    prev = delete.prev_kvs().first().map(key_value).transpose()?
                }
                TxnOpResponse::Get(get) => {
                    let found = get.kvs().first().map(key_value).transpose()?;
                    if response.succeeded() {
                        kv = found;
                    } else {
                        current = found;
                    }
                }
                TxnOpResponse::Txn(_) => {}
            }
        }
        Ok(if response.succeeded() {
            TxnOutcome::Applied { revision, prev, kv }
        } else {
            TxnOutcome::NotApplied { revision, current }
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let key = if prefix.is_empty() { "\0" } else { prefix };
        let options = WatchOptions::new()
            .with_range(etcd_range_end(prefix))
            .with_start_revision(from.max(0))
            .with_prev_key();
        let mut client = self.client.watch_client();
        let stream = client
            .watch(key, Some(options))
            .await
            .map_err(|e| self.error(e, from))?;
        let (sender, mut responses) = stream.split();

        // The first response confirms the watch, or says its start is compacted.
        let first = responses
            .message()
            .await
            .map_err(|e| self.error(e, from))?
            .ok_or_else(|| StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                message: "watch stream closed before it was created".into(),
            })?;
        if first.canceled() {
            return Err(compacted_or_cancelled(&first, from));
        }

        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            // The sender half keeps the watch open on the server.
            let _sender = sender;
            let mut pending = Some(first);
            loop {
                let response = match pending.take() {
                    Some(response) => response,
                    None => match responses.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) => {
                            let _ = tx
                                .send(Err(StoreError::Unavailable {
                                    endpoints: this.endpoints.clone(),
                                    message: "watch stream ended".into(),
                                }))
                                .await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(this.error(e, from))).await;
                            return;
                        }
                    },
                };
                if response.canceled() {
                    let _ = tx.send(Err(compacted_or_cancelled(&response, from))).await;
                    return;
                }
                for event in response.events() {
                    let converted = convert_event(event);
                    let failed = converted.is_err();
                    if tx.send(converted).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.retry_read(|| async {
            let response = self
                .kv()
                .get("/", Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| self.error(e, 0))?;
            Ok(header_revision(response.header()))
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let current = self.current_revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: Some(current),
            });
        }
        self.kv()
            .compact(revision, None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, revision))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl < Duration::from_secs(1) {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL {ttl:?} is below the minimum of 1s"
            )));
        }
        let response = self
            .client
            .lease_client()
            .grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| self.error(e, 0))?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(|e| self.lease_error(e, lease))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| self.lease_error(e, lease))?;
        let response = responses
            .message()
            .await
            .map_err(|e| self.lease_error(e, lease))?
            .ok_or_else(|| StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                message: "keep-alive stream closed".into(),
            })?;
        // etcd answers a keep-alive of an unknown lease with TTL 0.
        if response.ttl() <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(Duration::from_secs(response.ttl() as u64))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.client
            .lease_client()
            .revoke(lease)
            .await
            .map(|_| ())
            .map_err(|e| self.lease_error(e, lease))
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

fn compacted_or_cancelled(response: &etcd_client::WatchResponse, from: Revision) -> StoreError {
    if response.compact_revision() > 0 {
        StoreError::Compacted {
            requested: from,
            compacted: Some(response.compact_revision()),
        }
    } else {
        StoreError::Backend(format!(
            "etcd cancelled the watch: {}",
            response.cancel_reason()
        ))
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<Arc<WatchEvent>> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::Backend("etcd watch event without a key".into()))?;
    let mut kv = key_value(kv)?;
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => {
            kv.create_revision = 0;
            kv.version = 0;
            kv.lease = None;
            EventKind::Delete
        }
    };
    Ok(Arc::new(WatchEvent {
        kind,
        kv,
        prev: event.prev_kv().map(key_value).transpose()?,
    }))
}
