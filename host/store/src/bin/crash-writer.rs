//! The child process of the store's crash test (`tests/crash.rs`): opens the embedded store in
//! the directory given as its first argument and writes keys `/crash/<n>` from the index given as
//! the second, with several concurrent writers, printing `ack <n> <revision>` for each write
//! only after the store acknowledged it. It runs until it is killed.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use flotilla_store::{EmbeddedOptions, EmbeddedStore, StoreExt};

const WRITERS: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: crash-writer DIR FIRST-INDEX");
    let first: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: crash-writer DIR FIRST-INDEX");
    let store = EmbeddedStore::open(&dir, EmbeddedOptions::default())
        .await
        .expect("open store");
    let next = Arc::new(AtomicU64::new(first));
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<(u64, i64)>();
    for _ in 0..WRITERS {
        let store = store.clone();
        let next = next.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let value = Bytes::from(format!("value-{n}-{}", "x".repeat(500)));
                let outcome = store
                    .create(&format!("/crash/{n:010}"), value, None)
                    .await
                    .expect("write");
                assert!(outcome.applied(), "key {n} existed before its write");
                if acks.send((n, outcome.revision())).is_err() {
                    return;
                }
            }
        });
    }
    let mut stdout = std::io::stdout().lock();
    while let Some((n, revision)) = acked.recv().await {
        writeln!(stdout, "ack {n} {revision}").expect("stdout");
        stdout.flush().expect("stdout");
    }
}
