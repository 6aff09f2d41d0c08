//! `flotilla up` and `flotilla server`: open the store, serve health endpoints, stop cleanly on
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use flotilla_store::{
    Datastore, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, SharedStore,
};

#[derive(Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub datastore: Datastore,
    pub listen: SocketAddr,
    /// History kept before automatic compaction; `None` keeps all.
    pub compaction_window: Option<Duration>,
}

/// Opens the configured store.
pub async fn open_store(config: &ServerConfig) -> anyhow::Result<SharedStore> {
    Ok(match &config.datastore {
        Datastore::Embedded => {
            let options = EmbeddedOptions {
                compaction_window: config.compaction_window,
                ..EmbeddedOptions::default()
            };
            Arc::new(
                EmbeddedStore::open(&config.data_dir, options)
                    .await
                    .context("cannot open the embedded store")?,
            )
        }
        Datastore::Etcd { endpoints } => {
            let store: SharedStore = Arc::new(
                EtcdStore::connect(endpoints, EtcdOptions::default())
                    .await
                    .context("cannot connect to etcd")?,
            );
            // etcd keeps all history until told otherwise; compact it as the Kubernetes API
            // server does.
            if let Some(window) = config.compaction_window {
                tokio::spawn(flotilla_store::compact_periodically(store.clone(), window));
            }
            store
        }
    })
}

pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let revision = store.current_revision().await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    match &config.datastore {
        Datastore::Embedded => println!(
            "flotilla: store embedded in {} at revision {revision}",
            config.data_dir.display()
        ),
        Datastore::Etcd { endpoints } => println!(
            "flotilla: store on etcd {} at revision {revision}",
            endpoints.join(",")
        ),
    }
    println!("flotilla: serving on http://{address} (health: http://{address}/healthz)");

    let api = flotilla_apiserver::ApiServer::new(store.clone());
    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(|| async { "ok" }))
        .with_state(store)
        .merge(api.router());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    println!("flotilla: stopped");
    Ok(())
}

/// How long a health check waits for the store.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Healthy when the store answers in time.
async fn health(State(store): State<SharedStore>) -> (StatusCode, String) {
    match tokio::time::timeout(HEALTH_TIMEOUT, store.current_revision()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: no answer within {HEALTH_TIMEOUT:?}"),
        ),
    }
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
