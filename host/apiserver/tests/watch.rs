//! Watches through the watch cache: selectors that objects enter and leave, bookmarks, initial
//! events, resumes older than the cache, and slow watchers cut off without losing a change.

mod common;

use std::time::Duration;

use flotilla_apiserver::{ApiOptions, WatchCacheOptions};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/demo/configmaps";

use common::Api;

async fn start(watch_cache: WatchCacheOptions) -> Api {
    Api::start_with(ApiOptions {
        watch_cache,
        ..ApiOptions::default()
    })
    .await
}

/// Creates or changes a config map; returns its new resourceVersion.
async fn write(api: &Api, name: &str, labels: Value, data: Value) -> String {
    let object = json!({"metadata": {"name": name, "labels": labels}, "data": data});
    let (code, body) = api
        .send(
            reqwest::Method::PUT,
            &format!("{CMS}/{name}"),
            Some(object.clone()),
        )
        .await;
    let (code, body) = if code == StatusCode::NOT_FOUND {
        api.send(reqwest::Method::POST, CMS, Some(object)).await
    } else {
        (code, body)
    };
    assert!(code.is_success(), "{code}: {body}");
    body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn watch(api: &Api, query: &str) -> Events {
    let response = api
        .http
        .get(format!("{}{CMS}?watch=true&{query}", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    events(response)
}
type Events = futures::stream::BoxStream<'static, Value>;

fn events(response: reqwest::Response) -> Events {
    let mut buffer = Vec::new();
    response
        .bytes_stream()
        .flat_map(move |chunk| {
            let mut out = Vec::new();
            // A connection cut mid-line ends the events.
            if let Ok(chunk) = chunk {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    out.push(serde_json::from_slice::<Value>(&line).unwrap());
                }
            }
            futures::stream::iter(out)
        })
        .boxed()
}

async fn next(events: &mut Events) -> Option<Value> {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("no watch event in time")
}

/// The type and name of the next event.
async fn next_event(events: &mut Events) -> (String, String) {
    let event = next(events).await.expect("watch ended");
    (
        event["type"].as_str().unwrap().to_owned(),
        event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_owned(), name.to_owned())
}

#[tokio::test]
async fn objects_entering_and_leaving_a_selection_are_added_and_deleted() {
    let api = start(WatchCacheOptions::default()).await;
    let mut web = watch(&api, "labelSelector=app%3Dweb").await;
    write(&api, "x", json!({"app": "db"}), json!({"n": "0"})).await;
    write(&api, "x", json!({"app": "web"}), json!({"n": "0"})).await;
    assert_eq!(next_event(&mut web).await, pair("ADDED", "x"));
    write(&api, "x", json!({"app": "web"}), json!({"n": "1"})).await;
    assert_eq!(next_event(&mut web).await, pair("MODIFIED", "x"));
    write(&api, "x", json!({"app": "db"}), json!({"n": "1"})).await;
    let left = next(&mut web).await.unwrap();
    assert_eq!(left["type"], "DELETED");
    assert_eq!(left["object"]["metadata"]["labels"]["app"], "db");
    write(&api, "y", json!({"app": "web"}), json!({})).await;
    assert_eq!(next_event(&mut web).await, pair("ADDED", "y"));
}

#[tokio::test]
async fn initial_events_end_with_a_bookmark_and_bookmarks_follow_progress() {
    let api = start(WatchCacheOptions {
        bookmark_interval: Duration::from_millis(200),
        ..WatchCacheOptions::default()
    })
    .await;
    write(&api, "a", json!({}), json!({})).await;
    let b = write(&api, "b", json!({}), json!({})).await;

    let (code, status) = api
        .send(
            reqwest::Method::GET,
            &format!("{CMS}?watch=1&sendInitialEvents=true"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");

    let mut events = watch(
        &api,
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(next_event(&mut events).await, pair("ADDED", "a"));
    assert_eq!(next_event(&mut events).await, pair("ADDED", "b"));
    let end = next(&mut events).await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["kind"], "ConfigMap");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let end_rv: u64 = end["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(end_rv >= b.parse().unwrap());

    let c = write(&api, "c", json!({}), json!({})).await;
    assert_eq!(next_event(&mut events).await, pair("ADDED", "c"));
    // The next bookmark points at the last change seen.
    let bookmark = next(&mut events).await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        c.as_str()
    );
}

#[tokio::test]
async fn a_resume_older_than_the_cache_reads_the_store_history() {
    let api = start(WatchCacheOptions {
        history: 4,
        ..WatchCacheOptions::default()
    })
    .await;
    // The cache exists (a watcher started it) before the changes, and keeps only the last 4.
    let _cache_user = watch(&api, "").await;
    let first = write(&api, "a", json!({}), json!({"n": "0"})).await;
    for n in 1..=10 {
        write(&api, "a", json!({}), json!({"n": n.to_string()})).await;
    }
    let mut events = watch(&api, &format!("resourceVersion={first}")).await;
    for n in 1..=10 {
        let event = next(&mut events).await.unwrap();
        assert_eq!(event["type"], "MODIFIED");
        assert_eq!(event["object"]["data"]["n"], n.to_string());
    }
}

#[tokio::test]
async fn a_slow_watcher_is_cut_off_and_resumes_without_a_gap() {
    let api = start(WatchCacheOptions {
        history: 8,
        buffer: 8,
        ..WatchCacheOptions::default()
    })
    .await;
    let start = write(&api, "big", json!({}), json!({"n": "0"})).await;
    let mut slow = watch(&api, &format!("resourceVersion={start}")).await;
    // Far more than the socket buffers hold, written while the watcher reads nothing.
    let filler = "x".repeat(256 * 1024);
    const CHANGES: usize = 80;
    for n in 1..=CHANGES {
        write(
            &api,
            "big",
            json!({}),
            json!({"n": n.to_string(), "filler": filler}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut last_rv = start.clone();
    while let Some(event) = next(&mut slow).await {
        assert_eq!(event["type"], "MODIFIED");
        seen.push(
            event["object"]["data"]["n"]
                .as_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        );
        last_rv = event["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert!(
        seen.len() < CHANGES,
        "the slow watcher was cut off, not buffered without bound ({} events)",
        seen.len()
    );
    // It resumes from the last resourceVersion it saw and misses nothing.
    let mut resumed = watch(&api, &format!("resourceVersion={last_rv}")).await;
    while seen.last() != Some(&CHANGES) {
        let event = next(&mut resumed)
            .await
            .expect("the resumed watch continues");
        seen.push(
            event["object"]["data"]["n"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    assert_eq!(seen, (1..=CHANGES).collect::<Vec<_>>());
}

#[tokio::test]
async fn metrics_count_requests_and_watchers() {
    let api = start(WatchCacheOptions::default()).await;
    write(&api, "a", json!({}), json!({})).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut events = watch(&api, "").await;
        assert_eq!(next_event(&mut events).await, pair("ADDED", "a"));
        watchers.push(events);
    }
    let text = api
        .http
        .get(format!("{}/metrics", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"apiserver_registered_watchers{resource="configmaps"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"apiserver_request_total{verb="create",resource="configmaps",code="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"apiserver_request_total{verb="update",resource="configmaps",code="404"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("apiserver_request_duration_seconds_bucket"),
        "{text}"
    );
}
