//! The write path between decoding and storage: defaults as Kubernetes sets them, validation
//! that names the fields, the admission seam (mutating, then validating, with warnings), and dry
//! runs that go through all of it without storing anything.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use flotilla_api::{Status, StatusReason};
use flotilla_apiserver::admission::{
    AdmissionChain, AdmissionRequest, MutatingAdmission, Operation, ValidatingAdmission,
};
use flotilla_apiserver::{ApiError, ApiOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::Api;

async fn start(admission: AdmissionChain) -> Api {
    Api::start_with(ApiOptions {
        admission,
        ..ApiOptions::default()
    })
    .await
}

/// Sends `body` as JSON, or nothing for `null`.
async fn send(api: &Api, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    api.send(method, path, (!body.is_null()).then_some(body))
        .await
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/demo/deployments";
const PODS: &str = "/api/v1/namespaces/demo/pods";
const CMS: &str = "/api/v1/namespaces/demo/configmaps";

fn deployment(app: &str) -> Value {
    json!({"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": app}},
        "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}}})
}

fn fields(status: &Value) -> Vec<String> {
    status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn objects_are_defaulted_and_invalid_ones_refused_naming_the_fields() {
    let api = start(AdmissionChain::default()).await;
    let (code, created) = send(&api, Method::POST, DEPLOYMENTS, deployment("web")).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(created["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        created["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    let template = &created["spec"]["template"]["spec"];
    assert_eq!(template["restartPolicy"], "Always");
    assert_eq!(template["containers"][0]["imagePullPolicy"], "Always");

    // The selector cannot change.
    let mut moved = created.clone();
    moved["spec"]["selector"] = json!({"matchLabels": {"app": "db"}});
    moved["spec"]["template"]["metadata"]["labels"] = json!({"app": "db"});
    let (code, status) = send(&api, Method::PUT, &format!("{DEPLOYMENTS}/web"), moved).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        fields(&status).contains(&"spec.selector".to_owned()),
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("field is immutable"),
        "{status}"
    );

    // A missing selector and a template its selector does not match.
    let mut no_selector = deployment("x");
    no_selector["metadata"]["name"] = json!("other");
    no_selector["spec"]["selector"] = Value::Null;
    let (code, status) = send(&api, Method::POST, DEPLOYMENTS, no_selector).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        fields(&status).contains(&"spec.selector".to_owned()),
        "{status}"
    );

    let pod = json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": ""}]}});
    let (code, status) = send(&api, Method::POST, PODS, pod).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let named = fields(&status);
    assert!(named.contains(&"spec.restartPolicy".to_owned()), "{status}");
    assert!(
        named.contains(&"spec.containers[0].image".to_owned()),
        "{status}"
    );
    assert_eq!(status["reason"], "Invalid");
}

#[tokio::test]
async fn dry_runs_answer_as_a_write_would_and_store_nothing() {
    let api = start(AdmissionChain::default()).await;
    let (code, created) = send(
        &api,
        Method::POST,
        &format!("{CMS}?dryRun=All"),
        json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(created["data"]["k"], "v");
    assert_eq!(
        send(&api, Method::GET, &format!("{CMS}/a"), Value::Null)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let (_, stored) = send(
        &api,
        Method::POST,
        CMS,
        json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
    )
    .await;
    let mut changed = stored.clone();
    changed["data"]["k"] = json!("w");
    let (code, answered) = send(&api, Method::PUT, &format!("{CMS}/a?dryRun=All"), changed).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(answered["data"]["k"], "w");
    let (code, _) = send(
        &api,
        Method::DELETE,
        &format!("{CMS}/a?dryRun=All"),
        Value::Null,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (_, after) = send(&api, Method::GET, &format!("{CMS}/a"), Value::Null).await;
    assert_eq!(after, stored, "nothing changed");

    let (code, _) = send(
        &api,
        Method::POST,
        &format!("{CMS}?dryRun=Some"),
        json!({"metadata": {"name": "b"}}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

/// Labels every config map it admits and warns about it.
#[derive(Debug)]
struct LabelEverything;

#[async_trait]
impl MutatingAdmission for LabelEverything {
    async fn admit(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if request.resource.plural == "configmaps" {
            object["metadata"]["labels"]["admitted"] =
                json!(request.operation.as_str().to_lowercase());
            flotilla_apiserver::admission::warn(format!("labelled {}", request.name));
        }
        Ok(())
    }
}

/// Refuses objects named `forbidden`, and deletes of objects labelled `keep`.
#[derive(Debug)]
struct RefuseForbidden;

#[async_trait]
impl ValidatingAdmission for RefuseForbidden {
    async fn validate(
        &self,
        request: &AdmissionRequest<'_>,
        object: Option<&Value>,
    ) -> Result<(), ApiError> {
        let refuse = |message: &str| {
            Err(ApiError::from(Status::new(
                StatusReason::Forbidden,
                message,
            )))
        };
        match request.operation {
            Operation::Create if request.name == "forbidden" => {
                refuse("objects may not be named forbidden")
            }
            Operation::Create | Operation::Update => {
                // Validating admission sees the mutated object.
                assert!(
                    object.is_none_or(|o| request.resource.plural != "configmaps"
                        || o["metadata"]["labels"]["admitted"].is_string())
                );
                Ok(())
            }
            Operation::Delete
                if request
                    .old_object
                    .is_some_and(|o| o["metadata"]["labels"]["keep"] == "yes") =>
            {
                refuse("kept objects may not be deleted")
            }
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn the_admission_seam_mutates_then_validates_and_passes_warnings_on() {
    let chain = AdmissionChain {
        mutating: vec![Arc::new(LabelEverything)],
        validating: vec![Arc::new(RefuseForbidden)],
    };
    let api = start(chain).await;
    let response = api
        .request(
            Method::POST,
            CMS,
            "application/json",
            json!({"metadata": {"name": "a", "labels": {"keep": "yes"}}}).to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let warning = response
        .headers()
        .get("warning")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(warning, "299 - \"labelled a\"");
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["metadata"]["labels"]["admitted"], "create");

    let (code, status) = send(
        &api,
        Method::POST,
        CMS,
        json!({"metadata": {"name": "forbidden"}}),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(status["message"], "objects may not be named forbidden");
    let (code, status) = send(&api, Method::DELETE, &format!("{CMS}/a"), Value::Null).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{status}");
    assert_eq!(
        send(&api, Method::GET, &format!("{CMS}/a"), Value::Null)
            .await
            .0,
        StatusCode::OK
    );
}
