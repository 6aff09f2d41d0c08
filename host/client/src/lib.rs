//! The client side of Flotilla's own components.
//!
//! The scheduler, controllers, agents and proxies are API clients, even inside one `flotilla
//! up` process: they reach the API server over HTTPS with a token, as any client would. This
//! crate gives them a [`kube::Client`] from a kubeconfig ([`connect`]), leader election
//! through a coordination.k8s.io Lease ([`leader`]), and Flotilla's plugin objects
//! ([`plugins`]): WasmPlugin specs, module bytes fetched and checked by digest (built in,
//! uploaded in chunks through the API, an https URL or an OCI registry, the last two through
//! `flotilla-artifacts`), and status reports.
//!
//! It must not reach the store, and it holds no policy: what a component does with a plugin is
//! the component's business.

pub mod leader;
pub mod plugins;

pub use kube;

use futures::StreamExt;
use kube::runtime::watcher;

/// Sends each event of a watch stream into a component's inputs (wrapped by `wrap`), retrying
/// the watch with kube's default backoff, until `stop` or until the inputs are closed.
pub fn forward_watch<K, S, I>(
    stream: S,
    inputs: tokio::sync::mpsc::Sender<I>,
    wrap: fn(watcher::Event<K>) -> I,
    stop: tokio_util::sync::CancellationToken,
    what: &'static str,
) where
    K: Send + 'static,
    I: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    tokio::spawn(async move {
        let mut stream =
            std::pin::pin!(stream.default_backoff().take_until(stop.cancelled_owned()));
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if inputs.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!("{what} watch: {error}"),
            }
        }
    });
}

/// A client for the cluster a kubeconfig describes (its current context).
pub async fn connect(kubeconfig: &str) -> Result<kube::Client, kube::Error> {
    let config =
        kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(kube::Error::InferKubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    kube::Client::try_from(config)
}

/// The current time as Kubernetes writes it in conditions (`2026-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
}
