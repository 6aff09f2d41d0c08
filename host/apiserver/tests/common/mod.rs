//! A real API server on a free loopback port over an embedded store in a temporary directory.

use std::sync::Arc;

use flotilla_apiserver::{ApiOptions, ApiServer};
use flotilla_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

pub struct Server {
    pub url: String,
    /// The store under the server, for tests that compact it.
    #[allow(dead_code, reason = "not every test file uses every field")]
    pub store: SharedStore,
    _dir: tempfile::TempDir,
}

#[allow(dead_code, reason = "not every test file uses every helper")]
pub async fn start() -> Server {
    start_with(ApiOptions::default()).await
}

pub async fn start_with(options: ApiOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap();
    start_on(Arc::new(store), options, dir).await
}

/// A server over `store`; `dir` lives as long as the server.
pub async fn start_on(store: SharedStore, options: ApiOptions, dir: tempfile::TempDir) -> Server {
    let api = ApiServer::with_options(store.clone(), options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api.router()).await });
    Server {
        url,
        store,
        _dir: dir,
    }
}
