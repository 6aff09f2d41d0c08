//! The REST surface over real HTTP: verbs, metadata, optimistic concurrency, selectors,
//! pagination, watch and errors as `metav1.Status`.

mod common;

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

async fn client() -> (common::Server, Client) {
    let server = common::start().await;
    let client = Client {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let (code, _) = client
        .post("/api/v1/namespaces", json!({"metadata": {"name": "demo"}}))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    (server, client)
}

fn configmap(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "web"}}, "data": data})
}

const CMS: &str = "/api/v1/namespaces/demo/configmaps";

#[tokio::test]
async fn version_and_discovery_describe_the_server() {
    let (_server, c) = client().await;
    let (_, version) = c.get("/version").await;
    assert_eq!(version["major"], "1");
    assert_eq!(version["minor"], "32");
    let (_, core) = c.get("/api/v1").await;
    assert_eq!(core["kind"], "APIResourceList");
    let pods = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods")
        .unwrap();
    assert_eq!(pods["namespaced"], true);
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["categories"], json!(["all"]));
    let (_, groups) = c.get("/apis").await;
    assert!(
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "coordination.k8s.io")
    );
    let (code, status) = c.get("/apis/nope.example/v1").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(status["kind"], "Status");
}

#[tokio::test]
async fn create_sets_metadata_and_errors_are_statuses() {
    let (_server, c) = client().await;
    let (code, created) = c.post(CMS, configmap("app", json!({"k": "v"}))).await;
    assert_eq!(code, StatusCode::CREATED);
    let metadata = &created["metadata"];
    assert_eq!(metadata["namespace"], "demo");
    assert!(metadata["uid"].as_str().unwrap().len() == 36);
    assert!(
        metadata["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(
        metadata["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );

    let (code, got) = c.get(&format!("{CMS}/app")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got, created);

    let (code, status) = c.post(CMS, configmap("app", json!({}))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(status["reason"], "AlreadyExists");
    assert_eq!(status["message"], "configmaps \"app\" already exists");

    let (code, status) = c
        .post(
            "/api/v1/namespaces/missing/configmaps",
            configmap("x", json!({})),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(status["message"], "namespaces \"missing\" not found");

    let (code, status) = c.post(CMS, configmap("Bad_Name", json!({}))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");

    let (code, generated) = c
        .post(
            CMS,
            json!({"metadata": {"generateName": "gen-"}, "data": {}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let name = generated["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let (code, status) = c.get(&format!("{CMS}/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(status["message"], "configmaps \"nope\" not found");

    let (code, status) = c
        .post(CMS, json!({"kind": "Pod", "metadata": {"name": "x"}}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(status["kind"], "Status");

    let raw = reqwest::Client::new()
        .post(format!("{}{CMS}", c.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);

    let huge =
        json!({"metadata": {"name": "huge"}, "data": {"k": "x".repeat(3 * 1024 * 1024 + 1)}});
    let (code, status) = c.post(CMS, huge).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(status["reason"], "RequestEntityTooLarge");
}

#[tokio::test]
async fn updates_are_optimistic_and_no_ops_keep_the_resource_version() {
    let (_server, c) = client().await;
    let (_, created) = c.post(CMS, configmap("app", json!({"k": "1"}))).await;
    let rv = created["metadata"]["resourceVersion"].clone();

    // Nothing changed: same resourceVersion.
    let (code, same) = c.put(&format!("{CMS}/app"), created.clone()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(same["metadata"]["resourceVersion"], rv);

    let mut changed = created.clone();
    changed["data"]["k"] = json!("2");
    let (code, updated) = c.put(&format!("{CMS}/app"), changed.clone()).await;
    assert_eq!(code, StatusCode::OK);
    assert_ne!(updated["metadata"]["resourceVersion"], rv);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

    // The first version's resourceVersion is stale now.
    changed["data"]["k"] = json!("3");
    let (code, status) = c.put(&format!("{CMS}/app"), changed).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(status["reason"], "Conflict");

    // generation follows spec changes only.
    let pods = "/api/v1/namespaces/demo/pods";
    let (_, pod) = c
        .post(pods, json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .await;
    assert_eq!(pod["metadata"]["generation"], 1);
    let mut relabelled = pod.clone();
    relabelled["metadata"]["labels"] = json!({"a": "b"});
    let (_, pod) = c.put(&format!("{pods}/p"), relabelled).await;
    assert_eq!(pod["metadata"]["generation"], 1);
    let mut respecced = pod.clone();
    respecced["spec"]["containers"][0]["image"] = json!("y");
    let (_, pod) = c.put(&format!("{pods}/p"), respecced).await;
    assert_eq!(pod["metadata"]["generation"], 2);

    let (code, deleted) = c.delete(&format!("{pods}/p")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(deleted["metadata"]["name"], "p");
    let (code, _) = c.delete(&format!("{pods}/p")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_select_and_paginate() {
    let (_server, c) = client().await;
    for i in 0..7 {
        let mut cm = configmap(&format!("cm-{i}"), json!({}));
        cm["metadata"]["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
        c.post(CMS, cm).await;
    }
    let (_, all) = c.get(CMS).await;
    assert_eq!(all["kind"], "ConfigMapList");
    assert_eq!(all["items"].as_array().unwrap().len(), 7);
    let (_, even) = c.get(&format!("{CMS}?labelSelector=parity%3Deven")).await;
    assert_eq!(even["items"].as_array().unwrap().len(), 4);
    let (_, one) = c
        .get(&format!("{CMS}?fieldSelector=metadata.name%3Dcm-3"))
        .await;
    assert_eq!(one["items"][0]["metadata"]["name"], "cm-3");
    let (code, status) = c
        .get(&format!("{CMS}?fieldSelector=spec.color%3Dred"))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(status["message"].as_str().unwrap().contains("spec.color"));

    // Pages of 3 from one snapshot: a write in between does not show.
    let (_, page) = c.get(&format!("{CMS}?limit=3")).await;
    let mut names: Vec<String> = Vec::new();
    let mut page = page;
    c.post(CMS, configmap("cm-late", json!({}))).await;
    loop {
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        let Some(token) = page["metadata"]["continue"].as_str() else {
            break;
        };
        page = c.get(&format!("{CMS}?limit=3&continue={token}")).await.1;
    }
    assert_eq!(names, (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>());
    // Across namespaces.
    let (_, everywhere) = c.get("/api/v1/configmaps").await;
    assert_eq!(everywhere["items"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn lists_honour_resource_version_semantics_and_expire_old_continues() {
    let (server, c) = client().await;
    let (_, a) = c.post(CMS, configmap("a", json!({}))).await;
    c.post(CMS, configmap("b", json!({}))).await;
    let rv_a = a["metadata"]["resourceVersion"].as_str().unwrap();
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // Exact: the collection as it was; NotOlderThan and "0": the latest.
    let (code, exact) = c
        .get(&format!(
            "{CMS}?resourceVersion={rv_a}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(code, StatusCode::OK, "{exact}");
    assert_eq!(names(&exact), ["a"]);
    assert_eq!(exact["metadata"]["resourceVersion"], rv_a);
    let (_, newer) = c
        .get(&format!(
            "{CMS}?resourceVersion={rv_a}&resourceVersionMatch=NotOlderThan"
        ))
        .await;
    assert_eq!(names(&newer), ["a", "b"]);
    assert_eq!(
        names(&c.get(&format!("{CMS}?resourceVersion=0")).await.1),
        ["a", "b"]
    );

    // Versions from the future, and contradictory parameters.
    let (code, status) = c.get(&format!("{CMS}?resourceVersion=999999")).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{status}");
    assert_eq!(status["reason"], "Timeout");
    for query in [
        "resourceVersionMatch=Exact",
        "resourceVersion=0&resourceVersionMatch=Exact",
        "resourceVersion=1&resourceVersionMatch=Sometimes",
        "resourceVersion=1&continue=abc",
    ] {
        let (code, status) = c.get(&format!("{CMS}?{query}")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{query}: {status}");
    }

    // Once the snapshot is compacted, its continue token and exact reads are 410 Expired.
    let (_, page) = c.get(&format!("{CMS}?limit=1")).await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    c.post(CMS, configmap("c", json!({}))).await;
    let current = server.store.current_revision().await.unwrap();
    server.store.compact(current).await.unwrap();
    let (code, status) = c.get(&format!("{CMS}?limit=1&continue={token}")).await;
    assert_eq!(code, StatusCode::GONE, "{status}");
    assert_eq!(status["reason"], "Expired");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("continue parameter is too old")
    );
    let (code, status) = c
        .get(&format!(
            "{CMS}?resourceVersion={rv_a}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(code, StatusCode::GONE, "{status}");
}

#[tokio::test]
async fn watches_start_with_current_objects_and_resume_from_a_version() {
    let (_server, c) = client().await;
    let (_, first) = c.post(CMS, configmap("a", json!({"n": "1"}))).await;

    let stream = reqwest::get(format!("{}{CMS}?watch=true", c.url))
        .await
        .unwrap();
    let mut events = lines(stream);
    let event = next(&mut events).await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );

    let mut changed = first.clone();
    changed["data"]["n"] = json!("2");
    let (_, second) = c.put(&format!("{CMS}/a"), changed).await;
    c.delete(&format!("{CMS}/a")).await;
    let modified = next(&mut events).await;
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["data"]["n"], "2");
    let deleted = next(&mut events).await;
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["metadata"]["name"], "a");

    // Resume after the first version: the update and the delete again, nothing before.
    let rv = first["metadata"]["resourceVersion"].as_str().unwrap();
    let resumed = reqwest::get(format!(
        "{}{CMS}?watch=1&resourceVersion={rv}&timeoutSeconds=2",
        c.url
    ))
    .await
    .unwrap();
    let mut resumed = lines(resumed);
    let event = next(&mut resumed).await;
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(
        event["object"]["metadata"]["resourceVersion"],
        second["metadata"]["resourceVersion"]
    );
    assert_eq!(next(&mut resumed).await["type"], "DELETED");
    // timeoutSeconds ends the stream.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .unwrap()
            .is_none()
    );
}

type Lines = futures::stream::BoxStream<'static, Value>;

fn lines(response: reqwest::Response) -> Lines {
    let mut buffer = Vec::new();
    response
        .bytes_stream()
        .flat_map(move |chunk| {
            buffer.extend_from_slice(&chunk.unwrap());
            let mut out = Vec::new();
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                out.push(serde_json::from_slice::<Value>(&line).unwrap());
            }
            futures::stream::iter(out)
        })
        .boxed()
}

async fn next(lines: &mut Lines) -> Value {
    tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("no watch event in time")
        .expect("watch ended")
}

async fn patch(c: &Client, path: &str, content_type: &str, body: Value) -> (StatusCode, Value) {
    let response = c
        .http
        .patch(format!("{}{path}", c.url))
        .header("Content-Type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn merge_json_and_simple_strategic_patches_apply() {
    let (_server, c) = client().await;
    let (_, created) = c
        .post(CMS, configmap("app", json!({"a": "1", "b": "2"})))
        .await;
    let path = format!("{CMS}/app");

    let (code, merged) = patch(
        &c,
        &path,
        "application/merge-patch+json",
        json!({"data": {"a": null, "c": "3"}}),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(merged["data"], json!({"b": "2", "c": "3"}));
    assert_ne!(
        merged["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let (code, patched) = patch(
        &c,
        &path,
        "application/json-patch+json",
        json!([{"op": "add", "path": "/metadata/labels/tier", "value": "front"}, {"op": "remove", "path": "/data/b"}]),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    assert_eq!(patched["data"], json!({"c": "3"}));

    // What kubectl label sends.
    let (code, labelled) = patch(
        &c,
        &path,
        "application/strategic-merge-patch+json",
        json!({"metadata": {"labels": {"env": "prod"}}}),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(labelled["metadata"]["labels"]["env"], "prod");

    // A patch that changes nothing keeps the resourceVersion.
    let (_, same) = patch(
        &c,
        &path,
        "application/merge-patch+json",
        json!({"data": {"c": "3"}}),
    )
    .await;
    assert_eq!(
        same["metadata"]["resourceVersion"],
        labelled["metadata"]["resourceVersion"]
    );

    let (code, status) = patch(
        &c,
        &path,
        "application/json-patch+json",
        json!([{"op": "test", "path": "/data/c", "value": "4"}]),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let (code, _) = patch(
        &c,
        &path,
        "application/json-patch+json",
        json!({"op": "add"}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, status) = patch(
        &c,
        &path,
        "application/strategic-merge-patch+json",
        json!({"data": {"$patch": "explode"}}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"].as_str().unwrap().contains("explode"),
        "{status}"
    );
    let (code, _) = patch(&c, &path, "text/plain", json!({})).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (code, _) = patch(
        &c,
        &format!("{CMS}/missing"),
        "application/merge-patch+json",
        json!({}),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = patch(
        &c,
        &path,
        "application/merge-patch+json",
        json!({"metadata": {"name": "renamed"}}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn field_selectors_follow_each_kind_and_collections_delete_by_selector() {
    let (_server, c) = client().await;
    let pods = "/api/v1/namespaces/demo/pods";
    for (name, node, phase) in [
        ("a", Some("n1"), "Running"),
        ("b", None, "Pending"),
        ("c", Some("n2"), "Failed"),
    ] {
        let mut pod = json!({"metadata": {"name": name, "labels": {"batch": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        assert_eq!(c.post(pods, pod).await.0, StatusCode::CREATED);
        let (code, _) = patch(
            &c,
            &format!("{pods}/{name}/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": phase}}),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
    }
    let names = |list: Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // Unscheduled pods, as the scheduler asks for them.
    assert_eq!(
        names(
            c.get(&format!("{pods}?fieldSelector=spec.nodeName%3D"))
                .await
                .1
        ),
        ["b"]
    );
    assert_eq!(
        names(
            c.get(&format!("{pods}?fieldSelector=spec.nodeName%3Dn2"))
                .await
                .1
        ),
        ["c"]
    );
    // What kubectl describe node asks for.
    assert_eq!(
        names(c.get(&format!("{pods}?fieldSelector=spec.nodeName%3Dn1,status.phase!%3DFailed,status.phase!%3DSucceeded")).await.1),
        ["a"]
    );
    let (code, _) = c
        .get("/api/v1/namespaces/demo/configmaps?fieldSelector=spec.nodeName%3Dn1")
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    let events = "/api/v1/namespaces/demo/events";
    let event = json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "a", "namespace": "demo"}, "reason": "Scheduled", "type": "Normal", "message": "assigned"});
    c.post(events, event).await;
    assert_eq!(
        names(
            c.get(&format!(
                "{events}?fieldSelector=involvedObject.name%3Da,involvedObject.kind%3DPod"
            ))
            .await
            .1
        ),
        ["e1"]
    );
    assert!(
        names(
            c.get(&format!("{events}?fieldSelector=involvedObject.name%3Db"))
                .await
                .1
        )
        .is_empty()
    );

    // deletecollection honours selectors.
    let (code, deleted) = c
        .delete(&format!("{pods}?fieldSelector=status.phase%3DFailed"))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(names(deleted), ["c"]);
    let (_, deleted) = c.delete(&format!("{pods}?labelSelector=batch%3Dx")).await;
    assert_eq!(names(deleted), ["a", "b"]);
    // The pod running on a node stops gracefully; the unscheduled one is gone.
    let (_, left) = c.get(pods).await;
    assert_eq!(names(left.clone()), ["a"]);
    assert!(left["items"][0]["metadata"]["deletionTimestamp"].is_string());
}

#[tokio::test]
async fn status_is_a_subresource() {
    let (_server, c) = client().await;
    let pods = "/api/v1/namespaces/demo/pods";
    let (_, pod) = c
        .post(pods, json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}}))
        .await;
    // Whatever status a client sends on create, a pod starts Pending.
    assert_eq!(pod["status"], json!({"phase": "Pending"}));

    // A status write changes only the status.
    let mut status_write = pod.clone();
    status_write["status"] = json!({"phase": "Running", "podIP": "127.0.1.5"});
    status_write["spec"]["containers"][0]["image"] = json!("ignored");
    let (code, written) = c.put(&format!("{pods}/p/status"), status_write).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(written["status"]["podIP"], "127.0.1.5");
    assert_eq!(written["spec"]["containers"][0]["image"], "i");
    assert_eq!(written["metadata"]["generation"], 1);

    // A write to the object leaves the status alone.
    let mut spec_write = written.clone();
    spec_write["status"] = json!({"phase": "Failed"});
    spec_write["metadata"]["labels"] = json!({"x": "y"});
    let (code, written) = c.put(&format!("{pods}/p"), spec_write).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(written["status"]["phase"], "Running");
    assert_eq!(written["metadata"]["labels"]["x"], "y");

    let (code, got) = c.get(&format!("{pods}/p/status")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got["status"]["phase"], "Running");
    let (code, _) = c.delete(&format!("{pods}/p/status")).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let (code, _) = c.get("/api/v1/namespaces/demo/configmaps/x/status").await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (_, core) = c.get("/api/v1").await;
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"pods/status") && names.contains(&"nodes/status"),
        "{names:?}"
    );
    let (_, ns) = c.get("/api/v1/namespaces/demo").await;
    assert_eq!(ns["status"]["phase"], "Active");
    let (code, _) = c.get("/api/v1/namespaces/demo/status").await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_get_429_with_retry_after() {
    use flotilla_apiserver::{ApiOptions, ApiServer};
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store::EmbeddedStore::open(dir.path(), Default::default())
        .await
        .unwrap();
    // No room for writes at all; reads and watches still served.
    let api = ApiServer::with_options(
        std::sync::Arc::new(store),
        ApiOptions {
            max_requests_inflight: 10,
            max_mutating_requests_inflight: 0,
            ..ApiOptions::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api.router()).await });
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{url}/api/v1/namespaces"))
        .json(&json!({"metadata": {"name": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["reason"], "TooManyRequests");

    assert_eq!(
        http.get(format!("{url}/api/v1/namespaces"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let watch = http
        .get(format!(
            "{url}/api/v1/namespaces?watch=true&timeoutSeconds=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), StatusCode::OK);
}
