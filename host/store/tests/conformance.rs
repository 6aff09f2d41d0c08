//! One conformance suite, run against both backends: the embedded store in a temporary
//! directory, and a real etcd started on free loopback ports (enabled by FLOTILLA_ETCD_TESTS=1,
//! which CI sets).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_store::testing::{EtcdServer, etcd_tests_enabled};
use flotilla_store::{
    EmbeddedOptions, EmbeddedStore, EventKind, KeyValue, MAX_KEY_BYTES, MAX_VALUE_BYTES,
    RangeRequest, Revision, SharedStore, StoreError, StoreExt, TxnOutcome, WatchEvent, WatchStream,
};
use futures::StreamExt;
use tokio::time::{Instant, timeout};

/// How long any single wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

enum Kind {
    Embedded(tempfile::TempDir),
    Etcd(EtcdServer),
}

struct Backend {
    store: SharedStore,
    kind: Kind,
}

impl Backend {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open_embedded(dir.path()).await;
        Backend {
            store,
            kind: Kind::Embedded(dir),
        }
    }

    async fn etcd() -> Option<Self> {
        if !etcd_tests_enabled() {
            eprintln!("etcd tests are disabled: set FLOTILLA_ETCD_TESTS=1 to run them");
            return None;
        }
        let server = EtcdServer::start().await.expect("start etcd");
        let store = Arc::new(server.connect().await.expect("connect to etcd"));
        Some(Backend {
            store,
            kind: Kind::Etcd(server),
        })
    }

    /// Stops the store (for etcd: SIGKILL) and opens it again on the same data.
    async fn restart(self) -> Self {
        let Backend { store, kind } = self;
        drop(store);
        match kind {
            Kind::Embedded(dir) => {
                let store = open_embedded(dir.path()).await;
                Backend {
                    store,
                    kind: Kind::Embedded(dir),
                }
            }
            Kind::Etcd(mut server) => {
                server.restart().await.expect("restart etcd");
                let store = Arc::new(server.connect().await.expect("reconnect to etcd"));
                Backend {
                    store,
                    kind: Kind::Etcd(server),
                }
            }
        }
    }
}

async fn open_embedded(dir: &std::path::Path) -> SharedStore {
    let options = EmbeddedOptions {
        compaction_window: None,
        ..EmbeddedOptions::default()
    };
    // A handle dropped just before may still be closing in a background task; wait for the
    // file to be free rather than fail on the lock.
    let deadline = Instant::now() + WAIT;
    loop {
        match EmbeddedStore::open(dir, options.clone()).await {
            Ok(store) => return Arc::new(store),
            Err(StoreError::Refused { reason, .. })
                if reason.contains("already open") && Instant::now() < deadline =>
            {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("open embedded store: {e}"),
        }
    }
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn applied_kv(outcome: TxnOutcome) -> KeyValue {
    match outcome {
        TxnOutcome::Applied { kv: Some(kv), .. } => kv,
        other => panic!("expected an applied put, got {other:?}"),
    }
}

/// Reads `count` events from a watch, failing the test if they do not come in time.
async fn next_events(stream: &mut WatchStream, count: usize) -> Vec<Arc<WatchEvent>> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let event = timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {count} events", events.len()))
            .expect("watch ended early")
            .expect("watch error");
        events.push(event);
    }
    events
}

// ---------------------------------------------------------------------------------------------

async fn crud_and_revisions(b: Backend) {
    let s = &b.store;
    let start = s.current_revision().await.unwrap();

    let created = applied_kv(s.create("/c/a", bytes("1"), None).await.unwrap());
    assert!(created.mod_revision > start);
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(created.version, 1);
    assert_eq!(s.current_revision().await.unwrap(), created.mod_revision);

    // Creating an existing key does nothing and shows what is there.
    match s.create("/c/a", bytes("2"), None).await.unwrap() {
        TxnOutcome::NotApplied { current, .. } => assert_eq!(current.unwrap().value, bytes("1")),
        other => panic!("create of an existing key applied: {other:?}"),
    }

    let updated = applied_kv(
        s.update("/c/a", bytes("2"), created.mod_revision, None)
            .await
            .unwrap(),
    );
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.version, 2);

    // A stale revision loses and sees the current value.
    match s
        .update("/c/a", bytes("3"), created.mod_revision, None)
        .await
        .unwrap()
    {
        TxnOutcome::NotApplied { current, .. } => {
            assert_eq!(current.unwrap().mod_revision, updated.mod_revision)
        }
        other => panic!("stale update applied: {other:?}"),
    }
    assert!(
        !s.update("/c/missing", bytes("x"), 1, None)
            .await
            .unwrap()
            .applied()
    );

    let (got, read_at) = s.get("/c/a", None).await.unwrap();
    assert_eq!(got.as_ref().unwrap().value, bytes("2"));
    assert_eq!(read_at, updated.mod_revision);
    // The old value is still readable at its revision.
    let (old, _) = s.get("/c/a", Some(created.mod_revision)).await.unwrap();
    assert_eq!(old.unwrap().value, bytes("1"));

    assert!(
        !s.delete("/c/a", Some(created.mod_revision))
            .await
            .unwrap()
            .applied()
    );
    match s.delete("/c/a", Some(updated.mod_revision)).await.unwrap() {
        TxnOutcome::Applied { revision, prev, kv } => {
            assert!(revision > updated.mod_revision);
            assert_eq!(prev.unwrap().value, bytes("2"));
            assert!(kv.is_none());
        }
        other => panic!("delete not applied: {other:?}"),
    }
    assert!(s.get("/c/a", None).await.unwrap().0.is_none());
    assert!(!s.delete("/c/a", None).await.unwrap().applied());

    // Re-creating starts a new life: new create revision, version 1.
    let again = applied_kv(s.create("/c/a", bytes("4"), None).await.unwrap());
    assert_eq!(again.version, 1);
    assert_eq!(again.create_revision, again.mod_revision);
}

async fn concurrent_cas_has_one_winner_per_revision(b: Backend) {
    let s = b.store.clone();
    let first = applied_kv(s.create("/cas/key", bytes("0"), None).await.unwrap());
    let writers = 64;
    let rounds = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for r in 0..rounds {
                let (current, _) = s.get("/cas/key", None).await.unwrap();
                let current = current.unwrap();
                let value = bytes(&format!("{w}-{r}"));
                match s
                    .update("/cas/key", value, current.mod_revision, None)
                    .await
                    .unwrap()
                {
                    TxnOutcome::Applied { prev, kv, .. } => {
                        assert_eq!(prev.unwrap().mod_revision, current.mod_revision);
                        wins.push((current.mod_revision, kv.unwrap().mod_revision));
                    }
                    TxnOutcome::NotApplied { current: now, .. } => {
                        assert_ne!(now.unwrap().mod_revision, current.mod_revision);
                    }
                }
            }
            wins
        }));
    }
    let mut wins: Vec<(Revision, Revision)> = Vec::new();
    for task in tasks {
        wins.extend(task.await.unwrap());
    }
    // Exactly one winner per base revision, and the winners form one unbroken chain.
    let mut by_base = BTreeMap::new();
    for (base, new) in &wins {
        assert!(
            by_base.insert(*base, *new).is_none(),
            "two writers won from revision {base}"
        );
    }
    let mut at = first.mod_revision;
    let mut chain = 0;
    while let Some(next) = by_base.get(&at) {
        at = *next;
        chain += 1;
    }
    assert_eq!(chain, wins.len(), "winners do not form one chain");
    let (last, _) = s.get("/cas/key", None).await.unwrap();
    let last = last.unwrap();
    assert_eq!(last.mod_revision, at);
    assert_eq!(last.version as usize, wins.len() + 1);
}

/// Writes a mix of creates, updates and deletes inside and outside `/w/`; returns the events
/// expected under `/w/`, in revision order.
async fn write_history(s: &SharedStore) -> Vec<WatchEvent> {
    let mut expected = Vec::new();
    let mut live: BTreeMap<String, KeyValue> = BTreeMap::new();
    for i in 0..60u32 {
        let key = format!("/w/{}", i % 7);
        let outside = format!("/x/{i}");
        if i % 5 == 0 {
            s.put(&outside, bytes("noise"), None).await.unwrap();
        }
        let prev = live.get(&key).cloned();
        if i % 9 == 8 && prev.is_some() {
            let outcome = s.delete(&key, None).await.unwrap();
            let revision = outcome.revision();
            live.remove(&key);
            expected.push(WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: revision,
                    version: 0,
                    lease: None,
                },
                prev,
            });
        } else {
            let kv = applied_kv(s.put(&key, bytes(&format!("v{i}")), None).await.unwrap());
            live.insert(key.clone(), kv.clone());
            expected.push(WatchEvent {
                kind: EventKind::Put,
                kv,
                prev,
            });
        }
    }
    expected
}

async fn watch_resumes_from_every_revision(b: Backend) {
    let s = &b.store;
    let mut expected = write_history(s).await;
    let first = expected.first().unwrap().revision();
    let last = expected.last().unwrap().revision();
    let mut marker_prev = None;
    for from in first..=last + 1 {
        let want: Vec<&WatchEvent> = expected.iter().filter(|e| e.revision() >= from).collect();
        let mut stream = s.watch("/w/", from).await.unwrap();
        let got = next_events(&mut stream, want.len()).await;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.kind, w.kind, "from {from}: kind at {}", w.revision());
            assert_eq!(g.kv.key, w.kv.key, "from {from}");
            assert_eq!(g.kv.mod_revision, w.kv.mod_revision, "from {from}");
            assert_eq!(g.kv.value, w.kv.value, "from {from}");
            assert_eq!(
                g.prev.as_ref().map(|p| (&p.value, p.mod_revision)),
                w.prev.as_ref().map(|p| (&p.value, p.mod_revision)),
                "from {from}: prev at {}",
                w.revision()
            );
        }
        // Nothing more than expected: the next event is a fresh write, not a duplicate.
        let marker = applied_kv(s.put("/w/marker", bytes("m"), None).await.unwrap());
        let after = next_events(&mut stream, 1).await;
        assert_eq!(after[0].kv.mod_revision, marker.mod_revision, "from {from}");
        expected.push(WatchEvent {
            kind: EventKind::Put,
            kv: marker.clone(),
            prev: marker_prev.replace(marker),
        });
    }
}

async fn live_watch_is_ordered_and_carries_prev(b: Backend) {
    let s = &b.store;
    let mut all = s.watch("", 0).await.unwrap();
    let mut pods = s.watch("/registry/pods/", 0).await.unwrap();
    let a = applied_kv(
        s.create("/registry/pods/a", bytes("1"), None)
            .await
            .unwrap(),
    );
    s.create("/registry/services/s", bytes("svc"), None)
        .await
        .unwrap();
    let a2 = applied_kv(
        s.update("/registry/pods/a", bytes("2"), a.mod_revision, None)
            .await
            .unwrap(),
    );
    s.delete("/registry/pods/a", None).await.unwrap();

    let events = next_events(&mut pods, 3).await;
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Put, EventKind::Put, EventKind::Delete]
    );
    assert!(events[0].prev.is_none());
    assert_eq!(events[1].prev.as_ref().unwrap().value, bytes("1"));
    assert_eq!(
        events[2].prev.as_ref().unwrap().mod_revision,
        a2.mod_revision
    );
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));

    let everything = next_events(&mut all, 4).await;
    assert_eq!(everything[1].kv.key, "/registry/services/s");
}

async fn compaction_refuses_old_revisions(b: Backend) {
    let s = &b.store;
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(applied_kv(
            s.put("/k/a", bytes(&format!("{i}")), None).await.unwrap(),
        ));
    }
    s.put("/k/b", bytes("b"), None).await.unwrap();
    let gone = applied_kv(s.put("/k/gone", bytes("g"), None).await.unwrap());
    let deleted = s.delete("/k/gone", None).await.unwrap().revision();
    s.compact(deleted).await.unwrap();
    let old = revisions[2].mod_revision;

    let is_compacted = |e: StoreError| matches!(e, StoreError::Compacted { .. });
    assert!(is_compacted(s.get("/k/a", Some(old)).await.unwrap_err()));
    assert!(is_compacted(
        s.range(RangeRequest::prefix("/k/").at(old))
            .await
            .unwrap_err()
    ));
    match s.watch("/k/", old).await {
        Err(e) => assert!(is_compacted(e)),
        Ok(mut stream) => {
            let first = timeout(WAIT, stream.next()).await.unwrap().unwrap();
            assert!(is_compacted(first.unwrap_err()));
        }
    }
    assert!(is_compacted(s.compact(deleted).await.unwrap_err()));
    assert!(matches!(
        s.compact(deleted + 100).await.unwrap_err(),
        StoreError::FutureRevision { .. }
    ));

    // The compacted revision itself is still readable, and every key keeps its latest value.
    let page = s
        .range(RangeRequest::prefix("/k/").at(deleted))
        .await
        .unwrap();
    let keys: Vec<&str> = page.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/k/a", "/k/b"]);
    assert_eq!(page.kvs[0].value, bytes("9"));
    let latest = s.range(RangeRequest::prefix("/k/")).await.unwrap();
    assert_eq!(latest.kvs.len(), 2);
    assert!(gone.mod_revision < deleted);
    // Watching from the compacted revision works and sees what comes after.
    let mut stream = s.watch("/k/", deleted + 1).await.unwrap();
    let next = applied_kv(s.put("/k/c", bytes("c"), None).await.unwrap());
    assert_eq!(
        next_events(&mut stream, 1).await[0].kv.mod_revision,
        next.mod_revision
    );
}

async fn lease_expiry_deletes_keys_and_is_watched(b: Backend) {
    let s = &b.store;
    let mut stream = s.watch("/leased/", 0).await.unwrap();
    let lease = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    s.create("/leased/a", bytes("a"), Some(lease))
        .await
        .unwrap();
    s.create("/leased/b", bytes("b"), Some(lease))
        .await
        .unwrap();
    let kept = s.grant_lease(Duration::from_secs(2)).await.unwrap();
    s.create("/leased/kept", bytes("k"), Some(kept))
        .await
        .unwrap();
    let (a, _) = s.get("/leased/a", None).await.unwrap();
    assert_eq!(a.unwrap().lease, Some(lease));

    // Keep one lease alive while the other expires.
    let puts = next_events(&mut stream, 3).await;
    assert!(puts.iter().all(|e| e.kind == EventKind::Put));
    let keeper = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                if s.keep_alive(kept).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let deletes = next_events(&mut stream, 2).await;
    let mut deleted: Vec<&str> = deletes.iter().map(|e| e.kv.key.as_str()).collect();
    deleted.sort();
    assert_eq!(deleted, ["/leased/a", "/leased/b"]);
    assert!(
        deletes
            .iter()
            .all(|e| e.kind == EventKind::Delete && e.prev.is_some())
    );
    assert!(s.get("/leased/a", None).await.unwrap().0.is_none());
    assert!(s.get("/leased/kept", None).await.unwrap().0.is_some());
    let err = s.keep_alive(lease).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
    assert!(matches!(
        s.create("/leased/late", bytes("x"), Some(lease))
            .await
            .unwrap_err(),
        StoreError::LeaseNotFound(_)
    ));

    // Revoking deletes at once.
    keeper.abort();
    s.revoke_lease(kept).await.unwrap();
    let revoked = next_events(&mut stream, 1).await;
    assert_eq!(revoked[0].kv.key, "/leased/kept");
    assert_eq!(revoked[0].kind, EventKind::Delete);
}

async fn large_values_and_limits(b: Backend) {
    let s = &b.store;
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let big = Bytes::from(big);
    s.create("/big/1", big.clone(), None).await.unwrap();
    let (got, _) = s.get("/big/1", None).await.unwrap();
    assert_eq!(got.unwrap().value, big);
    let mut stream = s.watch("/big/", 0).await.unwrap();
    s.put("/big/2", big.clone(), None).await.unwrap();
    assert_eq!(next_events(&mut stream, 1).await[0].kv.value, big);
    let page = s.range(RangeRequest::prefix("/big/")).await.unwrap();
    assert_eq!(page.kvs.len(), 2);

    let over = Bytes::from(vec![0u8; MAX_VALUE_BYTES + 1]);
    let err = s.create("/big/over", over, None).await.unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&MAX_VALUE_BYTES.to_string()));
    let err = s
        .create(&"k".repeat(MAX_KEY_BYTES + 1), bytes("v"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::KeyTooLarge { .. }), "{err}");
}

async fn hundred_thousand_keys_paginate_from_one_snapshot(b: Backend) {
    let s = b.store.clone();
    let total = 100_000;
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(writers) {
                s.create(&format!("/many/{i:06}"), bytes("v"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let snapshot = s.current_revision().await.unwrap();
    // Writes after the snapshot must not show in pages read at it.
    s.create("/many/000000x", bytes("late"), None)
        .await
        .unwrap();
    s.delete("/many/050000", None).await.unwrap();

    let mut request = RangeRequest::prefix("/many/").limit(1000).at(snapshot);
    let mut seen = 0;
    let mut previous: Option<String> = None;
    loop {
        let page = s.range(request.clone()).await.unwrap();
        assert!(page.kvs.len() <= 1000);
        for kv in &page.kvs {
            assert_eq!(kv.key, format!("/many/{seen:06}"));
            if let Some(p) = &previous {
                assert!(p < &kv.key);
            }
            previous = Some(kv.key.clone());
            seen += 1;
        }
        match page.continue_from() {
            Some(next) => request = request.start(next),
            None => break,
        }
    }
    assert_eq!(seen, total);
    let latest = s
        .range(RangeRequest::prefix("/many/05000").limit(0))
        .await
        .unwrap();
    assert_eq!(latest.kvs.len(), 9, "050000 deleted from the latest state");
}

async fn writes_survive_restart(b: Backend) {
    let mut written = Vec::new();
    for i in 0..50 {
        written.push(applied_kv(
            b.store
                .put(&format!("/persist/{i:02}"), bytes(&format!("v{i}")), None)
                .await
                .unwrap(),
        ));
    }
    let before = b.store.current_revision().await.unwrap();
    let b = b.restart().await;
    let s = &b.store;
    assert_eq!(s.current_revision().await.unwrap(), before);
    let page = s.range(RangeRequest::prefix("/persist/")).await.unwrap();
    assert_eq!(page.kvs, written);
    let next = applied_kv(s.put("/persist/after", bytes("x"), None).await.unwrap());
    assert!(next.mod_revision > before);
    // History written before the restart is still watchable.
    let mut stream = s.watch("/persist/", written[0].mod_revision).await.unwrap();
    let events = next_events(&mut stream, 51).await;
    assert_eq!(events[50].kv.mod_revision, next.mod_revision);
}

async fn slow_watcher_misses_nothing(b: Backend) {
    let s = b.store.clone();
    // A watcher that reads nothing while far more events are written than any in-memory buffer
    // holds, then reads them all: every revision once, in order.
    let mut stream = s.watch("/slow/", 0).await.unwrap();
    let total = 6000;
    let writers = 32;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in (w..total).step_by(writers) {
                let outcome = s
                    .put(&format!("/slow/{}", i % 100), bytes(&i.to_string()), None)
                    .await
                    .unwrap();
                revisions.push(outcome.revision());
            }
            revisions
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    written.sort();
    let events = next_events(&mut stream, total).await;
    let seen: Vec<Revision> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(seen, written);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::embedded().await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = super::Backend::etcd().await {
                        super::$name(backend).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    crud_and_revisions,
    concurrent_cas_has_one_winner_per_revision,
    watch_resumes_from_every_revision,
    live_watch_is_ordered_and_carries_prev,
    compaction_refuses_old_revisions,
    lease_expiry_deletes_keys_and_is_watched,
    large_values_and_limits,
    hundred_thousand_keys_paginate_from_one_snapshot,
    writes_survive_restart,
    slow_watcher_misses_nothing,
);
