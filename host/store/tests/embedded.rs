//! Behaviour of the embedded backend alone: automatic compaction and space reuse, refusal of
//! foreign or corrupt data directories.

use std::time::Duration;

use bytes::Bytes;
use flotilla_store::embedded::STORE_FILE;
use flotilla_store::{EmbeddedOptions, EmbeddedStore, Store, StoreError, StoreExt};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

/// Value size in the churn test: a typical Kubernetes object.
const VALUE_BYTES: usize = 3000;

/// Writes `count` values over 100 keys with 32 concurrent writers.
async fn churn(store: &EmbeddedStore, count: usize) {
    let writers = 32;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(vec![b'c'; VALUE_BYTES]);
            for i in (w..count).step_by(writers) {
                store
                    .put(&format!("/churn/{}", i % 100), value.clone(), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Waits until automatic compaction has reached `revision` and removed the history below it.
async fn wait_compacted_to(store: &EmbeddedStore, revision: i64) {
    let deadline = Instant::now() + WAIT;
    while store.reclaimed_revision() < revision {
        assert!(
            Instant::now() < deadline,
            "automatic compaction did not reclaim up to {revision} (compacted to {}, reclaimed to {})",
            store.compacted_revision(),
            store.reclaimed_revision()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_keeps_the_file_from_growing() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        compaction_window: Some(Duration::from_millis(200)),
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options).await.unwrap();

    // Each round writes 40 MB of history over 100 live keys (400 KB of live data): 600 MB in
    // all. Without compaction the file would hold all of it; with it, freed pages are reused
    // and the file settles at a small multiple of what the window retains.
    let rounds = 15;
    let per_round = 10_000;
    let mut sizes = Vec::new();
    for round in 0..rounds {
        churn(&store, per_round).await;
        wait_compacted_to(&store, store.current_revision().await.unwrap()).await;
        let stats = store.stats().await.unwrap();
        // Everything below the compacted revision is gone: one record per live key, plus the
        // record at the compacted revision itself.
        assert_eq!(stats.live_keys, 100, "round {round}: {stats:?}");
        assert!(stats.history_records <= 101, "round {round}: {stats:?}");
        assert!(stats.garbage_records <= 1, "round {round}: {stats:?}");
        sizes.push(stats.file_bytes);
    }
    let written = (rounds * per_round * VALUE_BYTES) as u64;
    let last = *sizes.last().unwrap();
    assert!(
        last < written / 3,
        "the file grew to {last} bytes after {written} bytes of churn (sizes by round: {sizes:?})"
    );
    // Live data is intact.
    let page = store
        .range(flotilla_store::RangeRequest::prefix("/churn/"))
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 100);
    let expected_version = (rounds * per_round / 100) as i64;
    assert!(page.kvs.iter().all(|kv| kv.version == expected_version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file was modified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_redb_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("accounts");
            let mut t = txn.open_table(table).unwrap();
            t.insert("alice", "100").unwrap();
        }
        txn.commit().unwrap();
    }
    let err = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("not a Flotilla store"), "{message}");
    assert!(message.contains("accounts"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_open_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap();
    let err = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_lags_behind_the_fanout_reads_the_gap_from_history() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap();
    let mut stream = store.watch("/lag/", 0).await.unwrap();
    // One write per commit: more batches than the in-memory fan-out holds (4096), none read.
    let mut written = Vec::new();
    for i in 0..5000 {
        let key = if i % 3 == 0 { "/other/x" } else { "/lag/x" };
        let outcome = store
            .put(key, Bytes::from(i.to_string()), None)
            .await
            .unwrap();
        if key.starts_with("/lag/") {
            written.push(outcome.revision());
        }
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("watch stalled")
            .expect("watch ended")
            .expect("watch error");
        seen.push(event.revision());
    }
    assert_eq!(seen, written);
    // And it is live again afterwards.
    let next = store.put("/lag/y", Bytes::from("y"), None).await.unwrap();
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.revision(), next.revision());
}
