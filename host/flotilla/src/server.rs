//! `flotilla up` and `flotilla server`: open the store, make or read the cluster's credentials,
//! serve the API and health endpoints over HTTPS, stop cleanly on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use flotilla_apiserver::authn::Authenticator;
use flotilla_apiserver::pki::Pki;
use flotilla_apiserver::{ApiOptions, ApiServer};
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
    /// Plain HTTP instead of HTTPS; only allowed on loopback.
    pub plain_http: bool,
    /// Extra names and addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Run the scheduler in this process.
    pub scheduler: bool,
    /// Run the controller manager in this process.
    pub controllers: bool,
    /// Built-in admission policies not to run.
    pub disabled_admission_policies: Vec<String>,
    /// Run a node agent in this process, as this node (`up`).
    pub agent: Option<flotilla_node::AgentOptions>,
    /// That node's proxy's DNS and Ingress ports.
    pub proxy_ports: crate::components::ProxyPorts,
    /// Where Services' ClusterIPs and NodePorts come from.
    pub service_ranges: flotilla_apiserver::ServiceRanges,
}

/// The names the serving certificate is made for: loopback, this host, the listen address and
/// whatever the operator adds.
fn certificate_names(config: &ServerConfig) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    names.extend(config.tls_sans.iter().cloned());
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

/// The URL clients reach the server by: the listen address, or loopback when it listens on all.
fn client_url(config: &ServerConfig, address: SocketAddr) -> String {
    let scheme = if config.plain_http { "http" } else { "https" };
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("{scheme}://{address}")
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
    if config.plain_http && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "--plain-http serves the API unencrypted and is only allowed on a loopback address, not {}",
            config.listen
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store = open_store(&config).await?;
    let revision = store.current_revision().await?;
    let (authenticator, admin_token) =
        Authenticator::load_or_create(&config.data_dir.join("tokens"))
            .context("cannot read the API tokens")?;
    // In-process components are API clients with their own identity, made fresh each start.
    let component_token = |user: &str| -> anyhow::Result<String> {
        let token = flotilla_apiserver::authn::new_token()?;
        authenticator.insert(
            &token,
            flotilla_apiserver::authn::UserInfo {
                name: user.into(),
                uid: user.into(),
                groups: vec![flotilla_apiserver::authn::ADMIN_GROUP.into()],
            },
        );
        Ok(token)
    };
    let scheduler_token = component_token("system:kube-scheduler")?;
    let controllers_token = component_token("system:kube-controller-manager")?;
    let admission_token = component_token(flotilla_admission::OWN_USER)?;
    let agent_token = match &config.agent {
        Some(node) => component_token(&format!("system:node:{}", node.node_name))?,
        None => String::new(),
    };
    let pki = Pki::load_or_create(&config.data_dir.join("tls"), &certificate_names(&config))
        .context("cannot make the cluster's certificates")?;
    let tls = (!config.plain_http)
        .then(|| pki.server_config())
        .transpose()?;
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
    let url = client_url(&config, address);
    let kubeconfig_path = std::path::absolute(config.data_dir.join("kubeconfig"))?;
    let ca = tls.is_some().then(|| pki.ca_pem());
    flotilla_apiserver::pki::write_secret_file(
        &kubeconfig_path,
        &flotilla_apiserver::kubeconfig::kubeconfig(&url, ca, &admin_token),
    )
    .with_context(|| format!("cannot write {}", kubeconfig_path.display()))?;
    println!("flotilla: serving on {url} (health: {url}/healthz)");
    println!("flotilla: admin kubeconfig: {}", kubeconfig_path.display());

    let (client_cert, client_key) = pki
        .issue_client("flotilla-apiserver")
        .context("cannot make the API server's client certificate")?;
    let node_client = flotilla_apiserver::nodes::NodeClient::new(&client_cert, &client_key)
        .map_err(|e| anyhow::anyhow!(e))?;
    let admission = flotilla_admission::Admission::new(flotilla_admission::Options {
        disabled_builtins: config.disabled_admission_policies.clone(),
        ..flotilla_admission::Options::new(flotilla_plugin::PluginHost::new(
            flotilla_plugin::EngineConfig {
                cache_dir: Some(config.data_dir.join("plugin-cache")),
                ..flotilla_plugin::EngineConfig::default()
            },
        )?)
    });
    let options = ApiOptions {
        admission: admission.chain(),
        authenticator: Some(Arc::new(authenticator)),
        node_client: Some(Arc::new(node_client)),
        join: tls
            .is_some()
            .then(|| flotilla_apiserver::join::JoinOptions {
                ca_pem: pki.ca_pem().to_owned(),
            }),
        service_ranges: config.service_ranges.clone(),
        advertise: Some(advertised(address, config.agent.as_ref())),
        ..ApiOptions::default()
    };
    let api = ApiServer::with_options(store.clone(), options);
    api.bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!("cannot make the system namespaces: {}", e.0.message))?;
    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(|| async { "ok" }))
        .with_state(store)
        .merge(api.router());
    {
        let kubeconfig = flotilla_apiserver::kubeconfig::kubeconfig(&url, ca, &admission_token);
        let client = flotilla_client::connect(&kubeconfig)
            .await
            .context("cannot make the admission policies' client")?;
        admission.start(client, tokio_util::sync::CancellationToken::new());
    }
    if config.scheduler {
        let kubeconfig = flotilla_apiserver::kubeconfig::kubeconfig(&url, ca, &scheduler_token);
        let cache = config.data_dir.join("plugin-cache");
        tokio::spawn(async move {
            if let Err(error) = crate::components::run_scheduler(&kubeconfig, cache, "up").await {
                tracing::error!("the scheduler stopped: {error:#}");
            }
        });
    }
    if config.controllers {
        let kubeconfig = flotilla_apiserver::kubeconfig::kubeconfig(&url, ca, &controllers_token);
        let cache = config.data_dir.join("plugin-cache");
        tokio::spawn(async move {
            if let Err(error) =
                crate::components::run_controller_manager(&kubeconfig, cache, "up").await
            {
                tracing::error!("the controller manager stopped: {error:#}");
            }
        });
    }
    if let Some(mut options) = config.agent.clone() {
        let kubeconfig = flotilla_apiserver::kubeconfig::kubeconfig(&url, ca, &agent_token);
        options.api_ca_pem = Some(pki.ca_pem().to_owned());
        let ports = config.proxy_ports;
        tokio::spawn(async move {
            if let Err(error) = crate::components::run_agent(&kubeconfig, options, ports).await {
                tracing::error!("the node agent stopped: {error:#}");
            }
        });
    }
    let stopping = async {
        shutdown_signal().await;
        api.close_watches();
    };
    flotilla_apiserver::serve::serve(listener, app, tls, stopping)
        .await
        .context("server failed")?;
    println!("flotilla: stopped");
    Ok(())
}

/// The address pods and nodes reach the API server on: the one it listens on, or, when that is
/// every address, the node's (in `up`) or the loopback address.
fn advertised(listen: SocketAddr, agent: Option<&flotilla_node::AgentOptions>) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = agent.map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), |a| {
        a.node_ip
    });
    SocketAddr::new(ip, listen.port())
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
