//! Optimistic concurrency under contention: 64 clients race updates of one object. Every update
//! the server accepts is in the object's history, in order, exactly once; every other attempt
//! is a 409 Conflict. Run on the embedded store and on a real etcd.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_apiserver::ApiOptions;
use flotilla_store::testing::{EtcdServer, etcd_tests_enabled};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CLIENTS: usize = 64;
const ATTEMPTS: usize = 8;
const CM: &str = "/api/v1/namespaces/demo/configmaps/counter";

async fn race(server: common::Server) {
    let http = reqwest::Client::new();
    let url = server.url.clone();
    let send = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{url}{path}"))
            .json(&body)
            .send()
    };
    let ok = send(
        reqwest::Method::POST,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "demo"}}),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let created: Value = send(
        reqwest::Method::POST,
        "/api/v1/namespaces/demo/configmaps",
        json!({"metadata": {"name": "counter"}, "data": {}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let start = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    // Each client: read, then write its mark over what it read, ATTEMPTS times.
    let tasks = (0..CLIENTS).map(|client| {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut conflicts = 0;
            for attempt in 0..ATTEMPTS {
                let mut object: Value = http
                    .get(format!("{url}{CM}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let mark = format!("{client}-{attempt}");
                object["data"]["mark"] = json!(mark);
                let response = http
                    .put(format!("{url}{CM}"))
                    .json(&object)
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::OK => {
                        let stored: Value = response.json().await.unwrap();
                        let rv: u64 = stored["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        accepted.push((rv, mark));
                    }
                    StatusCode::CONFLICT => {
                        let status: Value = response.json().await.unwrap();
                        assert_eq!(status["reason"], "Conflict");
                        conflicts += 1;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (accepted, conflicts)
        })
    });
    let mut accepted = BTreeMap::new();
    let mut conflicts = 0;
    for task in futures::future::join_all(tasks).await {
        let (mine, lost) = task.unwrap();
        conflicts += lost;
        for (rv, mark) in mine {
            assert!(
                accepted.insert(rv, mark).is_none(),
                "two updates accepted at one resourceVersion"
            );
        }
    }
    assert_eq!(accepted.len() + conflicts, CLIENTS * ATTEMPTS);
    assert!(conflicts > 0, "64 racing clients must collide");

    // The history holds exactly the accepted updates, in resourceVersion order.
    let watch = http
        .get(format!("{url}/api/v1/namespaces/demo/configmaps?watch=1&resourceVersion={start}&fieldSelector=metadata.name%3Dcounter"))
        .send()
        .await
        .unwrap();
    let mut body = watch.bytes_stream();
    let mut buffer = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < accepted.len() {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), body.next())
            .await
            .expect("the history arrives")
            .expect("the watch continues")
            .unwrap();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(event["type"], "MODIFIED");
            let rv: u64 = event["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            seen.push((
                rv,
                event["object"]["data"]["mark"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert_eq!(seen, accepted.into_iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_on_the_embedded_store_are_all_in_order_or_409() {
    race(common::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_on_etcd_are_all_in_order_or_409() {
    if !etcd_tests_enabled() {
        eprintln!("etcd tests are disabled: set FLOTILLA_ETCD_TESTS=1 to run them");
        return;
    }
    let etcd = EtcdServer::start().await.unwrap();
    let store = Arc::new(etcd.connect().await.unwrap());
    let server = common::start_on(store, ApiOptions::default(), tempfile::tempdir().unwrap()).await;
    race(server).await;
    drop(etcd);
}
