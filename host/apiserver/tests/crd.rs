//! CustomResourceDefinitions: registering one serves its resources at once — discovery, CRUD,
//! watch, printer columns, status and scale, schema defaulting and validation, several versions
//! over one storage — and deleting it removes its objects, then it.

mod common;

use common::Api;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const V1: &str = "/apis/stable.example.com/v1/namespaces/demo/crontabs";
const V1BETA1: &str = "/apis/stable.example.com/v1beta1/namespaces/demo/crontabs";

fn definition() -> Value {
    let schema = json!({"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "required": ["cronSpec"], "properties": {
            "cronSpec": {"type": "string"},
            "image": {"type": "string", "default": "cron.wasm"},
            "replicas": {"type": "integer", "minimum": 0, "default": 1},
        }},
        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
    }}});
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "crontabs.stable.example.com"},
    "spec": {"group": "stable.example.com", "scope": "Namespaced",
        "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
        "versions": [
            {"name": "v1", "served": true, "storage": true, "schema": schema,
             "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
             "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}]},
            {"name": "v1beta1", "served": true, "storage": false, "schema": schema},
        ]}})
}

async fn registered() -> Api {
    let api = Api::start().await;
    let (code, created) = api.send(Method::POST, CRDS, Some(definition())).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    api
}

#[tokio::test]
async fn a_definition_serves_its_resources_at_once() {
    let api = registered().await;
    let (_, crd) = api
        .get(&format!("{CRDS}/crontabs.stable.example.com"))
        .await;
    let conditions = crd["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True"),
        "{crd}"
    );
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));

    let (_, groups) = api.get("/apis").await;
    let group = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "stable.example.com")
        .unwrap();
    assert_eq!(group["versions"].as_array().unwrap().len(), 2);
    assert_eq!(group["preferredVersion"]["version"], "v1");
    let (_, discovery) = api.get("/apis/stable.example.com/v1").await;
    let names: Vec<&str> = discovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["crontabs", "crontabs/status", "crontabs/scale"]);

    // Defaults from the schema; the object reads back at either version.
    let (code, created) = api
        .send(Method::POST, V1, Some(json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "nightly"}, "spec": {"cronSpec": "0 3 * * *"}})))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["spec"]["image"], "cron.wasm");
    assert_eq!(created["spec"]["replicas"], 1);
    let (_, beta) = api.get(&format!("{V1BETA1}/nightly")).await;
    assert_eq!(beta["apiVersion"], "stable.example.com/v1beta1");
    assert_eq!(beta["spec"]["cronSpec"], "0 3 * * *");

    // Tables carry the printer columns.
    let table: Value = api
        .http
        .get(format!("{}{V1}", api.url))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Name", "Spec"]);
    assert_eq!(table["rows"][0]["cells"], json!(["nightly", "0 3 * * *"]));

    // Status and scale subresources.
    let (code, _) = api
        .send_as(
            Method::PATCH,
            &format!("{V1}/nightly/status"),
            "application/merge-patch+json",
            json!({"status": {"replicas": 1}, "spec": {"cronSpec": "ignored"}}).to_string(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (_, scale) = api.get(&format!("{V1}/nightly/scale")).await;
    assert_eq!(
        (
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["replicas"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let (code, _) = api
        .send_as(
            Method::PATCH,
            &format!("{V1}/nightly/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 4}}).to_string(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (_, stored) = api.get(&format!("{V1}/nightly")).await;
    assert_eq!(
        (
            stored["spec"]["replicas"].as_i64(),
            stored["spec"]["cronSpec"].as_str()
        ),
        (Some(4), Some("0 3 * * *"))
    );

    // Strategic merge is for built-in kinds only, as in Kubernetes.
    let (code, _) = api
        .send_as(
            Method::PATCH,
            &format!("{V1}/nightly"),
            "application/strategic-merge-patch+json",
            "{}",
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn objects_are_validated_against_the_schema() {
    let api = registered().await;
    let (code, status) = api
        .send(
            Method::POST,
            V1,
            Some(json!({"metadata": {"name": "bad"}, "spec": {"replicas": -1}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, ["spec.cronSpec", "spec.replicas"]);

    // A definition Kubernetes would refuse is refused.
    let mut wrong = definition();
    wrong["metadata"]["name"] = json!("crontabs");
    let (code, status) = api.send(Method::POST, CRDS, Some(wrong)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
}

#[tokio::test]
async fn deleting_a_definition_deletes_its_objects_then_itself() {
    let api = registered().await;
    for name in ["a", "b"] {
        let (code, _) = api
            .send(
                Method::POST,
                V1,
                Some(json!({"metadata": {"name": name}, "spec": {"cronSpec": "* * * * *"}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let mut watch = api.watch_from_now(CRDS, "").await;
    let (code, _) = api
        .send(
            Method::DELETE,
            &format!("{CRDS}/crontabs.stable.example.com"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    watch.wait_for("DELETED").await;
    assert_eq!(api.get(V1).await.0, StatusCode::NOT_FOUND);
    assert!(
        api.server
            .store
            .range(flotilla_store::RangeRequest::prefix(
                "/registry/stable.example.com/"
            ))
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
}

#[tokio::test]
async fn scale_follows_the_definitions_paths() {
    let api = Api::start().await;
    let definition = json!({"metadata": {"name": "pools.example.dev"}, "spec": {
        "group": "example.dev", "scope": "Namespaced",
        "names": {"plural": "pools", "kind": "Pool"},
        "versions": [{"name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "subresources": {"status": {}, "scale": {
                "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.ready",
                "labelSelectorPath": ".status.selector"}}}]}});
    let (code, body) = api.send(Method::POST, CRDS, Some(definition)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let pools = "/apis/example.dev/v1/namespaces/demo/pools";
    api.send(
        Method::POST,
        pools,
        Some(json!({"metadata": {"name": "p"}, "spec": {"size": 2}})),
    )
    .await;
    api.send_as(
        Method::PATCH,
        &format!("{pools}/p/status"),
        "application/merge-patch+json",
        json!({"status": {"ready": 1, "selector": "app=p"}}).to_string(),
    )
    .await;
    let (_, scale) = api.get(&format!("{pools}/p/scale")).await;
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"], json!({"replicas": 1, "selector": "app=p"}));
    let (code, _) = api
        .send_as(
            Method::PATCH,
            &format!("{pools}/p/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 5}}).to_string(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(api.get(&format!("{pools}/p")).await.1["spec"]["size"], 5);
}

#[tokio::test]
async fn flotillas_own_kinds_are_installed_at_start_and_kept_across_restarts() {
    use flotilla_apiserver::{ApiOptions, ApiServer};
    let dir = tempfile::tempdir().unwrap();
    let store: flotilla_store::SharedStore = std::sync::Arc::new(
        flotilla_store::EmbeddedStore::open(dir.path(), Default::default())
            .await
            .unwrap(),
    );
    let first = ApiServer::with_options(store.clone(), ApiOptions::default());
    first.bootstrap().await.unwrap();
    let api = Api::on(common::serve(first, store.clone(), dir).await).await;

    let (code, discovery) = api.get("/apis/plugins.flotilla.dev/v1alpha1").await;
    assert_eq!(code, StatusCode::OK, "{discovery}");
    let names: Vec<&str> = discovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for wanted in [
        "wasmplugins",
        "wasmplugins/status",
        "wasmmodules",
        "wasmmodulechunks",
        "schedulerprofiles",
        "admissionpolicies",
        "admissionpolicies/status",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }

    let plugins = "/apis/plugins.flotilla.dev/v1alpha1/wasmplugins";
    let plugin = |kind: &str| {
        json!({"apiVersion": "plugins.flotilla.dev/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "spread"},
            "spec": {"kind": kind, "module": {"digest": format!("sha256:{}", "0".repeat(64))}}})
    };
    let (code, refused) = api
        .send(Method::POST, plugins, Some(plugin("nonsense")))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("spec.kind"),
        "{refused}"
    );
    let (code, created) = api
        .send(Method::POST, plugins, Some(plugin("scheduler-policy")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["spec"]["failurePolicy"], "Fail",
        "defaulted from the schema"
    );

    // A restart installs nothing new: the definitions keep their resourceVersion.
    let path = format!("{CRDS}/wasmplugins.plugins.flotilla.dev");
    let (_, before) = api.get(&path).await;
    let second = ApiServer::with_options(store, ApiOptions::default());
    second.bootstrap().await.unwrap();
    let (_, after) = api.get(&path).await;
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
}
