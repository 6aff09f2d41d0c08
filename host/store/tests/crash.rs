//! Crash safety of the embedded store: a child process writes and acknowledges keys while it is
//! SIGKILLed again and again; after each kill every acknowledged write is present and the
//! revision never goes backwards.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use flotilla_store::{EmbeddedOptions, EmbeddedStore, RangeRequest, Store};
use rand::Rng;

const ROUNDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut acked: Vec<(u64, i64)> = Vec::new();
    let mut next_index = 0u64;
    let mut last_revision = 0i64;

    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(dir.path())
            .arg(next_index.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start crash-writer");
        // Let it acknowledge a random number of writes, then kill it mid-flight.
        let wanted = rng.random_range(20..400);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        while this_round < wanted {
            let line = lines
                .next()
                .expect("crash-writer ended early")
                .expect("read crash-writer output");
            let mut parts = line.split_whitespace().skip(1);
            let n: u64 = parts.next().unwrap().parse().unwrap();
            let revision: i64 = parts.next().unwrap().parse().unwrap();
            acked.push((n, revision));
            this_round += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        // Acks printed between our last read and the kill are acknowledged too.
        for line in lines.map_while(Result::ok) {
            let mut parts = line.split_whitespace().skip(1);
            if let (Some(n), Some(revision)) = (parts.next(), parts.next()) {
                acked.push((n.parse().unwrap(), revision.parse().unwrap()));
            }
        }

        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
            .await
            .expect("reopen after SIGKILL");
        let revision = store.current_revision().await.unwrap();
        assert!(
            revision >= last_revision,
            "round {round}: revision went back from {last_revision} to {revision}"
        );
        let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap_or(0);
        assert!(
            revision >= max_acked,
            "round {round}: revision {revision} < acked {max_acked}"
        );
        last_revision = revision;

        let present = store.range(RangeRequest::prefix("/crash/")).await.unwrap();
        let keys: std::collections::HashMap<String, i64> = present
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
        for (n, revision) in &acked {
            let key = format!("/crash/{n:010}");
            assert_eq!(
                keys.get(&key),
                Some(revision),
                "round {round}: acknowledged write {key} at revision {revision} is missing"
            );
        }
        // Next child starts past every index any earlier child may have used.
        next_index = present
            .kvs
            .iter()
            .filter_map(|kv| kv.key.trim_start_matches("/crash/").parse::<u64>().ok())
            .max()
            .map_or(0, |m| m + 1)
            .max(acked.iter().map(|(n, _)| n + 1).max().unwrap_or(0))
            + 1000;
        drop(store);
    }
    assert!(acked.len() >= ROUNDS * 20);
}
