//! Deletion as Kubernetes users see it: finalizers hold objects, pods on nodes stop gracefully,
//! preconditions guard deletes, and a deleted namespace takes everything in it along. Also the
//! bodies deletes and writes may carry: YAML, and the formats refused.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::json;

use common::Api;

async fn namespace(api: &Api, name: &str) -> StatusCode {
    api.send(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": name}})),
    )
    .await
    .0
}

const CMS: &str = "/api/v1/namespaces/demo/configmaps";
const PODS: &str = "/api/v1/namespaces/demo/pods";

#[tokio::test]
async fn finalizers_hold_an_object_until_the_last_one_is_removed() {
    let api = Api::start().await;
    let held =
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {}});
    assert_eq!(
        api.send(Method::POST, CMS, Some(held)).await.0,
        StatusCode::CREATED
    );

    let (code, deleting) = api.send(Method::DELETE, &format!("{CMS}/held"), None).await;
    assert_eq!(code, StatusCode::OK, "{deleting}");
    assert!(
        deleting["metadata"]["deletionTimestamp"].is_string(),
        "{deleting}"
    );
    let (code, still) = api.get(&format!("{CMS}/held")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        still["metadata"]["deletionTimestamp"],
        deleting["metadata"]["deletionTimestamp"]
    );

    // No new finalizers on an object being deleted.
    let mut more = still.clone();
    more["metadata"]["finalizers"] = json!(["example.com/hold", "example.com/more"]);
    let (code, status) = api
        .send(Method::PUT, &format!("{CMS}/held"), Some(more))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "metadata.finalizers"
    );

    // Removing the last finalizer completes the deletion.
    let mut released = still.clone();
    released["metadata"]["finalizers"] = json!([]);
    let (code, _) = api
        .send(Method::PUT, &format!("{CMS}/held"), Some(released))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        api.get(&format!("{CMS}/held")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn pods_on_a_node_stop_gracefully_and_unscheduled_ones_go_at_once() {
    let api = Api::start().await;
    let pod = |name: &str, node: Option<&str>| {
        let mut pod = json!({"metadata": {"name": name}, "spec": {
            "containers": [{"name": "c", "image": "app.wasm"}],
            "terminationGracePeriodSeconds": 45}});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        pod
    };
    api.send(Method::POST, PODS, Some(pod("running", Some("n1"))))
        .await;
    api.send(Method::POST, PODS, Some(pod("pending", None)))
        .await;

    let (code, _) = api
        .send(Method::DELETE, &format!("{PODS}/pending"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        api.get(&format!("{PODS}/pending")).await.0,
        StatusCode::NOT_FOUND
    );

    let (_, stopping) = api
        .send(Method::DELETE, &format!("{PODS}/running"), None)
        .await;
    assert_eq!(stopping["metadata"]["deletionGracePeriodSeconds"], 45);
    assert!(stopping["metadata"]["deletionTimestamp"].is_string());
    // A shorter grace period may follow; a longer one changes nothing.
    let (_, shorter) = api
        .send(
            Method::DELETE,
            &format!("{PODS}/running?gracePeriodSeconds=5"),
            None,
        )
        .await;
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5);
    let (_, same) = api
        .send(
            Method::DELETE,
            &format!("{PODS}/running"),
            Some(json!({"gracePeriodSeconds": 60})),
        )
        .await;
    assert_eq!(same["metadata"]["deletionGracePeriodSeconds"], 5);
    assert_eq!(
        same["metadata"]["resourceVersion"],
        shorter["metadata"]["resourceVersion"]
    );
    assert_eq!(api.get(&format!("{PODS}/running")).await.0, StatusCode::OK);
    // What the node agent sends once the containers have stopped.
    let (code, _) = api
        .send(
            Method::DELETE,
            &format!("{PODS}/running"),
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        api.get(&format!("{PODS}/running")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_options_are_checked() {
    let api = Api::start().await;
    let (_, created) = api
        .send(Method::POST, CMS, Some(json!({"metadata": {"name": "a"}})))
        .await;
    let (code, status) = api
        .send(
            Method::DELETE,
            &format!("{CMS}/a"),
            Some(json!({"preconditions": {"uid": "not-it"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: UID")
    );
    let (code, _) = api
        .send(
            Method::DELETE,
            &format!("{CMS}/a?propagationPolicy=Sometimes"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let uid = created["metadata"]["uid"].clone();
    let (code, _) = api
        .send(
            Method::DELETE,
            &format!("{CMS}/a"),
            Some(json!({"preconditions": {"uid": uid}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
}

/// The API server marks a deleted namespace Terminating (refusing new content in it is the
/// `namespace-lifecycle` admission policy's, tested end to end); the namespace controller (a plugin) empties it and then removes its finalizer through
/// `namespaces/<name>/finalize`, which takes the namespace with it.
#[tokio::test]
async fn a_deleted_namespace_terminates_and_goes_when_finalized() {
    let api = Api::start().await;
    assert_eq!(namespace(&api, "doomed").await, StatusCode::CREATED);
    let (_, created) = api.get("/api/v1/namespaces/doomed").await;
    assert_eq!(created["spec"]["finalizers"], json!(["kubernetes"]));
    let (code, _) = api
        .send(
            Method::POST,
            "/api/v1/namespaces/doomed/configmaps",
            Some(json!({"metadata": {"name": "a"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);

    // Only finalize changes spec.finalizers.
    let mut edited = created.clone();
    edited["spec"]["finalizers"] = json!([]);
    edited["metadata"]["labels"] = json!({"team": "a"});
    let (code, updated) = api
        .send(Method::PUT, "/api/v1/namespaces/doomed", Some(edited))
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(updated["metadata"]["labels"]["team"], "a");

    let mut watch = api
        .watch_from_now("/api/v1/namespaces", "fieldSelector=metadata.name%3Ddoomed")
        .await;
    let (code, terminating) = api
        .send(Method::DELETE, "/api/v1/namespaces/doomed", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(terminating["status"]["phase"], "Terminating");
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());

    // A stale finalize is a conflict; a finalize that leaves other finalizers keeps it.
    let mut stale = terminating.clone();
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
    stale["spec"]["finalizers"] = json!([]);
    let (code, _) = api
        .send(
            Method::PUT,
            "/api/v1/namespaces/doomed/finalize",
            Some(stale),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    let mut other = terminating.clone();
    other["spec"]["finalizers"] = json!(["example.com/last"]);
    other["status"]["phase"] = json!("Active");
    let (code, kept) = api
        .send(
            Method::PUT,
            "/api/v1/namespaces/doomed/finalize",
            Some(other),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{kept}");
    assert_eq!(kept["spec"]["finalizers"], json!(["example.com/last"]));
    assert_eq!(
        kept["status"]["phase"], "Terminating",
        "finalize leaves the status"
    );

    let mut last = kept.clone();
    last["spec"]["finalizers"] = json!([]);
    let (code, _) = api
        .send(
            Method::PUT,
            "/api/v1/namespaces/doomed/finalize",
            Some(last),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    watch.wait_for("DELETED").await;
    assert_eq!(
        api.get("/api/v1/namespaces/doomed").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn yaml_bodies_are_read_and_other_formats_refused() {
    let api = Api::start().await;
    let yaml =
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n".to_vec();
    let (code, created) = api
        .send_as(Method::POST, CMS, "application/yaml", yaml)
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["data"]["k"], "v");
    let (code, status) = api
        .send_as(
            Method::POST,
            CMS,
            "application/vnd.kubernetes.protobuf",
            b"k8s\0".to_vec(),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{status}");
    let mut bomb = format!(
        "metadata: {{name: bomb}}\ndata: {{big: &big \"{}\"}}\nlist:\n",
        "x".repeat(512 * 1024)
    );
    for _ in 0..200 {
        bomb.push_str("- *big\n");
    }
    let (code, status) = api
        .send_as(Method::POST, CMS, "application/yaml", bomb.into_bytes())
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    let (code, _) = api
        .send_as(
            Method::POST,
            CMS,
            "application/json",
            b"{\"metadata\":".to_vec(),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}
