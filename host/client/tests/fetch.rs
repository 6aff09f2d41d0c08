//! Module sources: an https URL (plain http on loopback only), never following redirects, an
//! OCI registry, and digests checked for their form before anything is fetched.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use flotilla_client::plugins::{ModuleRef, fetch};

async fn serve() -> String {
    let app = axum::Router::new()
        .route(
            "/probe.wasm",
            get(|| async { flotilla_builtins::find("probe").unwrap().wasm }),
        )
        .route(
            "/moved.wasm",
            get(|| async { Redirect::temporary("/probe.wasm") }),
        )
        .route(
            "/gone.wasm",
            get(|| async { StatusCode::NOT_FOUND.into_response() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn client() -> kube::Client {
    // Not reached by URL sources; any client will do.
    kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap()
}

fn module(url: &str) -> ModuleRef {
    ModuleRef {
        digest: flotilla_plugin::digest(flotilla_builtins::find("probe").unwrap().wasm),
        url: Some(url.to_owned()),
        ..ModuleRef::default()
    }
}

#[tokio::test]
async fn a_module_is_fetched_from_a_url_without_following_redirects() {
    let base = serve().await;
    let bytes = fetch(&client(), &module(&format!("{base}/probe.wasm")))
        .await
        .unwrap();
    assert_eq!(bytes, flotilla_builtins::find("probe").unwrap().wasm);

    let redirected = fetch(&client(), &module(&format!("{base}/moved.wasm")))
        .await
        .unwrap_err();
    assert!(redirected.contains("307"), "{redirected}");
    let missing = fetch(&client(), &module(&format!("{base}/gone.wasm")))
        .await
        .unwrap_err();
    assert!(missing.contains("404"), "{missing}");

    let plain = fetch(&client(), &module("http://example.invalid/probe.wasm"))
        .await
        .unwrap_err();
    assert!(plain.contains("must be https"), "{plain}");

    let mut bad = module(&format!("{base}/probe.wasm"));
    bad.digest = "sha256:ABC".into();
    let refused = fetch(&client(), &bad).await.unwrap_err();
    assert!(
        refused.contains("is not sha256:<64 lowercase hex digits>"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_module_is_pulled_from_an_oci_registry() {
    let registry = flotilla_artifacts::testing::Registry::anonymous();
    let wasm = flotilla_builtins::find("probe").unwrap().wasm;
    let reference = format!("{}/flotilla/probe:v1", registry.address);
    flotilla_artifacts::oci::push(&reference, wasm, &Default::default())
        .await
        .unwrap();
    let mut source = module("unused");
    source.url = None;
    source.oci = Some(reference.clone());
    assert_eq!(fetch(&client(), &source).await.unwrap(), wasm);

    source.oci = Some(format!("{}/flotilla/probe:v2", registry.address));
    let missing = fetch(&client(), &source).await.unwrap_err();
    assert!(missing.starts_with("cannot pull"), "{missing}");
}
