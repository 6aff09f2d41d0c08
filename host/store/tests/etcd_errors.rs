//! etcd faults: an unreachable cluster is a clear error naming the endpoint, after retries with
//! backoff, never a panic.

use std::time::Duration;

use flotilla_store::testing::{EtcdServer, etcd_tests_enabled};
use flotilla_store::{EtcdOptions, EtcdStore, Store, StoreError};

#[tokio::test]
async fn unreachable_etcd_is_an_error_naming_the_endpoint() {
    // A port nothing listens on: bind, note it, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let options = EtcdOptions {
        retry_for: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
    };
    let err = EtcdStore::connect(std::slice::from_ref(&endpoint), options)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test]
async fn etcd_dying_under_a_client_turns_reads_into_unavailable() {
    if !etcd_tests_enabled() {
        eprintln!("etcd tests are disabled: set FLOTILLA_ETCD_TESTS=1 to run them");
        return;
    }
    let server = EtcdServer::start().await.unwrap();
    let endpoints = server.endpoints();
    let options = EtcdOptions {
        retry_for: Duration::from_millis(800),
        request_timeout: Duration::from_secs(1),
    };
    let store = EtcdStore::connect(&endpoints, options).await.unwrap();
    store.current_revision().await.unwrap();
    drop(server);
    let err = store.get("/anything", None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&endpoints[0]), "{err}");
}
