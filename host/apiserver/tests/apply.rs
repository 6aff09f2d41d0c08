//! Server-side apply over real HTTP: create on apply, field ownership in managedFields,
//! conflicts with other managers (409 naming fields and managers) unless forced, and fields a
//! manager stops applying removed.

mod common;

use common::Api;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/demo/configmaps";
const APPLY: &str = "application/apply-patch+yaml";

async fn apply(api: &Api, manager: &str, force: bool, config: &str) -> (StatusCode, Value) {
    let path = format!("{CMS}/settings?fieldManager={manager}&force={force}");
    api.send_as(Method::PATCH, &path, APPLY, config.to_owned())
        .await
}

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_owned(),
                e["operation"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn apply_creates_owns_conflicts_and_removes() {
    let api = Api::start().await;
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n  level: info\n";
    let (code, created) = apply(&api, "deployer", false, config).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(
        managers(&created),
        [("deployer".to_owned(), "Apply".to_owned())]
    );
    assert_eq!(
        created["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {"f:level": {}, "f:mode": {}}})
    );

    // Another writer changes a field: it owns it now.
    let (code, patched) = api
        .send_as(
            Method::PATCH,
            &format!("{CMS}/settings?fieldManager=operator"),
            "application/merge-patch+json",
            r#"{"data":{"mode":"slow"}}"#,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(managers(&patched).contains(&("operator".to_owned(), "Update".to_owned())));

    // Applying the old value conflicts, naming the field and the manager.
    let (code, status) = apply(&api, "deployer", false, config).await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    assert_eq!(status["details"]["causes"][0]["field"], ".data.mode");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"conflict with "operator""#),
        "{status}"
    );

    // Forced: the field is taken over; a field no longer applied is removed.
    let without_level =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n";
    let (code, forced) = apply(&api, "deployer", true, without_level).await;
    assert_eq!(code, StatusCode::OK, "{forced}");
    assert_eq!(forced["data"], json!({"mode": "fast"}));
    assert_eq!(
        managers(&forced),
        [("deployer".to_owned(), "Apply".to_owned())]
    );

    // Applying again what is there changes nothing.
    let rv = forced["metadata"]["resourceVersion"].clone();
    let (_, again) = apply(&api, "deployer", false, without_level).await;
    assert_eq!(again["metadata"]["resourceVersion"], rv);

    let (code, _) = api
        .send_as(
            Method::PATCH,
            &format!("{CMS}/settings"),
            APPLY,
            without_level.to_owned(),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a manager is required");
}
