//! OpenAPI v3 documents, field validation against the served schemas, and strategic merge
//! patches as kubectl sends them, over real HTTP.

mod common;

use common::Api;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/demo/deployments";

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
    "selector": {"matchLabels": {"app": name}},
    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
        {"name": "web", "image": "web.wasm", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "log", "image": "log.wasm"},
    ]}}}})
}

#[tokio::test]
async fn documents_are_served_by_group_version_and_cached_by_hash() {
    let api = Api::start().await;
    let (code, index) = api.get("/openapi/v3").await;
    assert_eq!(code, StatusCode::OK);
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(index["paths"]["api/v1"].is_object(), "{index}");

    let response = api
        .http
        .get(format!("{}{url}", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cache = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache.contains("immutable"), "{cache}");
    assert!(response.headers().contains_key("etag"));
    let document: Value = response.json().await.unwrap();
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    assert_eq!(
        schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
        "name"
    );

    // An outdated hash is sent on to the current one; an unknown group version is 404.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let stale = client
        .get(format!("{}/openapi/v3/apis/apps/v1?hash=0000", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(stale.headers()["location"].to_str().unwrap(), url);
    assert_eq!(
        api.get("/openapi/v3/apis/nothing/v1").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unknown_and_duplicate_fields_follow_field_validation() {
    let api = Api::start().await;
    let mut typo = deployment("typo");
    typo["spec"]["replcas"] = json!(3);

    let (code, status) = api
        .send(
            Method::POST,
            &format!("{DEPLOYMENTS}?fieldValidation=Strict"),
            Some(typo.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(r#"strict decoding error: unknown field "spec.replcas""#),
        "{message}"
    );

    // Warn (the default): stored without the field, with a warning.
    let response = api
        .request(
            Method::POST,
            DEPLOYMENTS,
            "application/json",
            typo.to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let warning = response.headers()["warning"].to_str().unwrap().to_owned();
    assert!(
        warning.contains(r#"unknown field \"spec.replcas\""#),
        "{warning}"
    );
    let created: Value = response.json().await.unwrap();
    assert!(created["spec"].get("replcas").is_none());

    let mut quiet = typo.clone();
    quiet["metadata"]["name"] = json!("quiet");
    let response = api
        .request(
            Method::POST,
            &format!("{DEPLOYMENTS}?fieldValidation=Ignore"),
            "application/json",
            quiet.to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("warning"));

    let twice = r#"{"metadata":{"name":"twice","name":"twice"},"data":{}}"#;
    let (code, status) = api
        .send_as(
            Method::POST,
            "/api/v1/namespaces/demo/configmaps?fieldValidation=Strict",
            "application/json",
            twice,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"duplicate field "metadata.name""#),
        "{status}"
    );
    let (code, _) = api
        .send(
            Method::POST,
            &format!("{DEPLOYMENTS}?fieldValidation=Loose"),
            Some(deployment("x")),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn strategic_merge_patches_merge_lists_by_key_as_kubectl_apply_expects() {
    let api = Api::start().await;
    let (code, _) = api
        .send(Method::POST, DEPLOYMENTS, Some(deployment("web")))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    // What kubectl apply sends when the manifest loses the log container and env B, and
    // switches to Recreate.
    let patch = json!({"spec": {
        "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
        "template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [
                {"$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}], "name": "web"},
                {"$patch": "delete", "name": "log"},
            ],
        }},
    }});
    let (code, patched) = api
        .send_as(
            Method::PATCH,
            &format!("{DEPLOYMENTS}/web?fieldValidation=Strict"),
            "application/strategic-merge-patch+json",
            patch.to_string(),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
    let containers = &patched["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1);
    assert_eq!(containers[0]["name"], "web");
    assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));

    // kubectl set image: one container's image, the rest untouched.
    let (_, patched) = api
        .send_as(
            Method::PATCH,
            &format!("{DEPLOYMENTS}/web"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web2.wasm"}]}}}}).to_string(),
        )
        .await;
    let container = &patched["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (
            container["image"].as_str(),
            container["env"][0]["name"].as_str()
        ),
        (Some("web2.wasm"), Some("A"))
    );
}
