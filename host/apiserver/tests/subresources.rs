//! Subresources over real HTTP: deployments' scale, pods' binding, eviction and log, and how
//! discovery lists them.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::Api;

/// Sends `body` as JSON, or as `content_type`.
async fn send(
    api: &Api,
    method: Method,
    path: &str,
    body: Value,
    content_type: Option<&str>,
) -> (StatusCode, Value) {
    api.send_as(
        method,
        path,
        content_type.unwrap_or("application/json"),
        body.to_string(),
    )
    .await
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/demo/deployments";
const PODS: &str = "/api/v1/namespaces/demo/pods";

#[tokio::test]
async fn discovery_lists_subresources_with_their_kinds() {
    let api = Api::start().await;
    let (_, apps) = api.get("/apis/apps/v1").await;
    let scale = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .expect("deployments/scale is listed");
    assert_eq!(
        (
            scale["group"].as_str(),
            scale["version"].as_str(),
            scale["kind"].as_str()
        ),
        (Some("autoscaling"), Some("v1"), Some("Scale"))
    );
    let (_, core) = api.get("/api/v1").await;
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for sub in [
        "pods/status",
        "pods/binding",
        "pods/eviction",
        "pods/log",
        "services/status",
    ] {
        assert!(names.contains(&sub), "{sub} in {names:?}");
    }
}

#[tokio::test]
async fn scale_reads_and_writes_a_deployments_replicas() {
    let api = Api::start().await;
    let deployment = json!({"metadata": {"name": "web"}, "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}}});
    let (code, created) = send(&api, Method::POST, DEPLOYMENTS, deployment, None).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");

    let (code, scale) = api.get(&format!("{DEPLOYMENTS}/web/scale")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");

    let mut bigger = scale.clone();
    bigger["spec"]["replicas"] = json!(5);
    let (code, scaled) = send(
        &api,
        Method::PUT,
        &format!("{DEPLOYMENTS}/web/scale"),
        bigger,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{scaled}");
    assert_eq!(scaled["spec"]["replicas"], 5);
    let (_, stored) = api.get(&format!("{DEPLOYMENTS}/web")).await;
    assert_eq!(stored["spec"]["replicas"], 5);
    assert_eq!(stored["metadata"]["generation"], 2);

    // kubectl scale sends a merge patch to the subresource.
    let (code, patched) = send(
        &api,
        Method::PATCH,
        &format!("{DEPLOYMENTS}/web/scale"),
        json!({"spec": {"replicas": 2}}),
        Some("application/merge-patch+json"),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert_eq!(
        api.get(&format!("{DEPLOYMENTS}/web")).await.1["spec"]["replicas"],
        2
    );

    // A stale Scale and a negative count are refused.
    let (code, _) = send(
        &api,
        Method::PUT,
        &format!("{DEPLOYMENTS}/web/scale"),
        scale.clone(),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, status) = send(
        &api,
        Method::PATCH,
        &format!("{DEPLOYMENTS}/web/scale"),
        json!({"spec": {"replicas": -1}}),
        Some("application/merge-patch+json"),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");
    // Only scalable kinds have it.
    let (code, _) = api.get("/api/v1/namespaces/demo/configmaps/x/scale").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn binding_assigns_a_pod_once_and_eviction_deletes_it() {
    let api = Api::start().await;
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "app.wasm"}]}});
    send(&api, Method::POST, PODS, pod, None).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let (code, status) = send(
        &api,
        Method::POST,
        &format!("{PODS}/p/binding"),
        binding.clone(),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{status}");
    assert_eq!(status["status"], "Success");
    let (_, bound) = api.get(&format!("{PODS}/p")).await;
    assert_eq!(bound["spec"]["nodeName"], "n1");
    assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
    assert_eq!(bound["status"]["conditions"][0]["status"], "True");
    let (code, status) = send(
        &api,
        Method::POST,
        &format!("{PODS}/p/binding"),
        binding,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("already assigned to node")
    );

    // Eviction of a pod on a node: graceful deletion with the eviction's options.
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}, "deleteOptions": {"gracePeriodSeconds": 0}});
    let (code, status) = send(
        &api,
        Method::POST,
        &format!("{PODS}/p/eviction"),
        eviction,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{status}");
    assert_eq!(api.get(&format!("{PODS}/p")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn logs_name_what_is_missing() {
    let api = Api::start().await;
    let pod = json!({"metadata": {"name": "two"}, "spec": {"containers": [{"name": "a", "image": "a.wasm"}, {"name": "b", "image": "b.wasm"}]}});
    send(&api, Method::POST, PODS, pod, None).await;
    let (code, status) = api.get(&format!("{PODS}/two/log")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("choose one of: [a b]"),
        "{status}"
    );
    let (code, status) = api.get(&format!("{PODS}/two/log?container=c")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("container c is not valid"),
        "{status}"
    );
    let (code, status) = api.get(&format!("{PODS}/two/log?container=a")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("does not have a host assigned"),
        "{status}"
    );
}
