//! `flotilla scheduler`, `flotilla agent` and `flotilla plugin`: the components and client
//! commands that reach a cluster through a kubeconfig, and the scheduler `up` runs in process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use flotilla_plugin::{EngineConfig, PluginHost, World};

/// Where a command finds the cluster.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig to use.
    #[arg(long, env = "KUBECONFIG", default_value = "flotilla-data/kubeconfig")]
    kubeconfig: PathBuf,
}

impl ClusterArgs {
    fn read(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.kubeconfig)
            .with_context(|| format!("cannot read {}", self.kubeconfig.display()))
    }

    async fn client(&self) -> anyhow::Result<kube::Client> {
        flotilla_client::connect(&self.read()?)
            .await
            .context("cannot make a client from the kubeconfig")
    }
}

/// What a replica of a leader-elected component (the scheduler, the controller manager) is
/// started with.
#[derive(Debug, clap::Args)]
pub struct ReplicaArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// This replica's name in the leader Lease and in plugin status (default: host name and
    /// process id).
    #[arg(long)]
    identity: Option<String>,
    /// Where compiled plugins are cached.
    #[arg(long, default_value = "flotilla-data/plugin-cache")]
    plugin_cache: PathBuf,
}

impl ReplicaArgs {
    /// The kubeconfig, the plugin cache and the identity.
    fn take(self) -> anyhow::Result<(String, PathBuf, String)> {
        Ok((
            self.cluster.read()?,
            self.plugin_cache,
            self.identity.unwrap_or_else(default_identity),
        ))
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "scheduler".into());
    format!("{host}-{}", std::process::id())
}

/// Runs a scheduler until the process stops; retries while the API server is not up yet.
pub async fn run_scheduler(kubeconfig: &str, cache: PathBuf, identity: &str) -> anyhow::Result<()> {
    let host = PluginHost::new(EngineConfig {
        cache_dir: Some(cache),
        ..EngineConfig::default()
    })?;
    let client = flotilla_client::connect(kubeconfig).await?;
    let options = flotilla_scheduler::Options::new(identity, host);
    let mut delay = Duration::from_millis(100);
    loop {
        match flotilla_scheduler::start(client.clone(), options.clone()).await {
            Ok(_) => break,
            Err(error) => {
                tracing::info!("scheduler waiting for the API server: {error}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    println!("flotilla: scheduler {identity} running");
    std::future::pending().await
}

pub async fn scheduler(args: ReplicaArgs) -> anyhow::Result<()> {
    let (kubeconfig, cache, identity) = args.take()?;
    run_scheduler(&kubeconfig, cache, &identity).await
}

/// Runs a controller manager until the process stops.
pub async fn run_controller_manager(
    kubeconfig: &str,
    cache: PathBuf,
    identity: &str,
) -> anyhow::Result<()> {
    let client = flotilla_client::connect(kubeconfig).await?;
    let mut options = flotilla_controllers::ManagerOptions::new(identity);
    options.cache_dir = Some(cache);
    println!("flotilla: controller manager {identity} running");
    flotilla_controllers::run(client, options, tokio_util::sync::CancellationToken::new()).await;
    Ok(())
}

pub async fn controller_manager(args: ReplicaArgs) -> anyhow::Result<()> {
    let (kubeconfig, cache, identity) = args.take()?;
    run_controller_manager(&kubeconfig, cache, &identity).await
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Join the cluster at this URL (with --token) instead of using a kubeconfig.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// The join token (`flotilla token create` makes one).
    #[arg(
        long,
        env = "FLOTILLA_TOKEN",
        requires = "server",
        hide_env_values = true
    )]
    token: Option<String>,
    /// This node's name (default: the host's name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where the agent keeps modules, compiled artifacts, pod volumes and logs.
    #[arg(long, default_value = "flotilla-agent")]
    data_dir: PathBuf,
    /// The node's pod CIDR; pods get their IPs from it. In loopback mode (every node on one
    /// host) it lies in 127.0.0.0/8 and differs per node.
    #[arg(long, default_value = "127.1.0.0/16")]
    pod_cidr: String,
    #[command(flatten)]
    node: NodeArgs,
    /// The port of the agent's endpoint, which the API server reaches for logs (0: any free
    /// port).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Seconds between lease renewals (of each node, with --simulate).
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
    /// Labels on the node, or on every simulated node (`key=value`, repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Register this many simulated nodes instead: they keep their leases fresh and report
    /// the pods bound to them Running without executing anything.
    #[arg(long, default_value_t = 0)]
    simulate: usize,
    /// Simulated node names are `<prefix><n>`.
    #[arg(long, default_value = "sim-")]
    node_prefix: String,
    /// The node's cpu (default: the machine's, or 32 for simulated nodes).
    #[arg(long)]
    cpu: Option<String>,
    /// The node's memory (default: the machine's, or 256Gi for simulated nodes).
    #[arg(long)]
    memory: Option<String>,
    /// The node's pod capacity.
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Spread simulated nodes over this many `topology.kubernetes.io/zone` values.
    #[arg(long, default_value_t = 0)]
    zones: usize,
}

/// How a node (an agent's, or the one `up` runs) reaches the network and refreshes volumes.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's address (its InternalIP).
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: std::net::IpAddr,
    /// Pod networking: `loopback` (every node on one host, no privileges) or `routed` (each
    /// node's pod CIDR routed via its node IP, like flannel's host-gw; needs CAP_NET_ADMIN).
    #[arg(long, default_value = "loopback")]
    pub network: flotilla_node::NetworkMode,
    /// How often running pods' configMap and secret volumes are refreshed.
    #[arg(long, default_value = "1m")]
    pub sync_frequency: humantime::Duration,
    /// The UDP port of the node's DNS server for Service names, on the node's address (0: no
    /// server; workloads resolve Service names either way).
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// The port of the node's plain-HTTP Ingress entry, on the node's address (0: none).
    #[arg(long, default_value_t = 80)]
    pub ingress_http_port: u16,
    /// The port of the node's HTTPS Ingress entry, on the node's address (0: none).
    #[arg(long, default_value_t = 443)]
    pub ingress_https_port: u16,
}

/// The ports of a node's proxy: its DNS server and Ingress entries (0: not served).
#[derive(Clone, Copy, Debug)]
pub struct ProxyPorts {
    pub dns: u16,
    pub ingress_http: u16,
    pub ingress_https: u16,
}

impl NodeArgs {
    pub fn proxy_ports(&self) -> ProxyPorts {
        ProxyPorts {
            dns: self.dns_port,
            ingress_http: self.ingress_http_port,
            ingress_https: self.ingress_https_port,
        }
    }
}

impl NodeArgs {
    /// Sets these on `options` and checks that the addresses fit the network mode.
    pub fn apply(&self, options: &mut flotilla_node::AgentOptions) -> anyhow::Result<()> {
        options.node_ip = self.node_ip;
        options.network = self.network;
        options.sync_frequency = self.sync_frequency.into();
        flotilla_node::network::check(options.network, options.pod_cidr, options.node_ip)
            .map_err(anyhow::Error::msg)
    }
}

/// The host's name, the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_lowercase())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "flotilla".into())
}

pub fn parse_cidr(text: &str) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
    let (base, prefix) = text
        .split_once('/')
        .with_context(|| format!("pod CIDR {text:?} is not address/prefix"))?;
    let base = base
        .parse()
        .with_context(|| format!("pod CIDR {text:?}: not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("pod CIDR {text:?}: bad prefix"))?;
    anyhow::ensure!(
        (8..=30).contains(&prefix),
        "pod CIDR {text:?}: the prefix must be 8 to 30"
    );
    Ok((base, prefix))
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("label {label:?} is not key=value"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    if args.simulate > 0 {
        let client = args.cluster.client().await?;
        let options = flotilla_node::simulate::Options {
            count: args.simulate,
            prefix: args.node_prefix,
            cpu: args.cpu.unwrap_or_else(|| "32".into()),
            memory: args.memory.unwrap_or_else(|| "256Gi".into()),
            pods: args.pods,
            labels,
            zones: args.zones,
            lease_interval: Duration::from_secs(args.lease_interval.max(1)),
            ..Default::default()
        };
        flotilla_node::simulate::start(client, options)
            .await
            .context("cannot register the simulated nodes")?;
        println!("flotilla: {} simulated nodes running", args.simulate);
        return std::future::pending().await;
    }
    let node = args.node_name.clone().unwrap_or_else(host_name);
    let mut options = flotilla_node::AgentOptions::new(&node, std::path::absolute(&args.data_dir)?);
    options.pod_cidr = parse_cidr(&args.pod_cidr)?;
    args.node.apply(&mut options)?;
    options.lease_interval = Duration::from_secs(args.lease_interval.max(1));
    options.labels = labels;
    options.cpu = args.cpu;
    options.memory = args.memory;
    options.max_pods = args.pods;
    options.port = args.port;
    let kubeconfig = match (&args.server, &args.token) {
        (Some(server), Some(token)) => {
            // A node that joined before keeps its credentials.
            let path = options.data_dir.join("kubeconfig");
            if !path.exists() {
                let token = crate::join::parse(token)?;
                crate::join::join(server, &token, &node, &path).await?;
                println!("flotilla: node {node} joined {server}");
            }
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
        }
        _ => args.cluster.read()?,
    };
    options.api_ca_pem = crate::join::cluster_ca(&kubeconfig);
    run_agent(&kubeconfig, options, args.node.proxy_ports()).await
}

/// Retries `start` while the API server is not up yet (in `up` it may still be starting).
async fn retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut start: impl FnMut() -> F,
    keep_trying: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut delay = Duration::from_millis(100);
    loop {
        match start().await {
            Ok(started) => return Ok(started),
            Err(error) if delay < Duration::from_secs(5) && keep_trying(&error) => {
                tracing::debug!("{what} failed, retrying: {error}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The proxy's Service names, as the agent's workloads look them up.
#[derive(Debug)]
struct ProxyNames(std::sync::Arc<flotilla_proxy::dns::Names>);

impl flotilla_node::runtime::ServiceNames for ProxyNames {
    fn resolve(&self, name: &str, namespace: &str) -> Option<Vec<std::net::IpAddr>> {
        match self.0.resolve(name, namespace) {
            flotilla_proxy::dns::Lookup::Found(addresses) => Some(addresses),
            flotilla_proxy::dns::Lookup::NoSuchService => Some(Vec::new()),
            flotilla_proxy::dns::Lookup::NotCluster => None,
        }
    }
}

/// Runs a node agent and its service proxy (with its DNS server and Ingress entries on the
/// node's address, on the ports that are not 0) until the process ends.
pub async fn run_agent(
    kubeconfig: &str,
    mut options: flotilla_node::AgentOptions,
    ports: ProxyPorts,
) -> anyhow::Result<()> {
    let client = flotilla_client::connect(kubeconfig)
        .await
        .context("cannot make a client from the kubeconfig")?;
    let node = options.node_name.clone();
    let cidr = format!("{}/{}", options.pod_cidr.0, options.pod_cidr.1);
    let plugin_host = PluginHost::new(EngineConfig {
        cache_dir: Some(options.data_dir.join("plugin-cache")),
        ..EngineConfig::default()
    })?;
    let mut proxy_options = flotilla_proxy::Options::new(&node, options.node_ip, plugin_host);
    let on_node = |port: u16| (port != 0).then(|| std::net::SocketAddr::new(options.node_ip, port));
    proxy_options.dns = on_node(ports.dns);
    proxy_options.ingress_http = on_node(ports.ingress_http);
    proxy_options.ingress_https = on_node(ports.ingress_https);
    let proxy = retrying(
        "starting the service proxy",
        || flotilla_proxy::start(client.clone(), proxy_options.clone()),
        |_| true,
    )
    .await
    .context("cannot start the service proxy")?;
    options.service_names = Some(std::sync::Arc::new(ProxyNames(proxy.names())));
    let agent = retrying(
        "node registration",
        || flotilla_node::start(client.clone(), options.clone()),
        |e| matches!(e, flotilla_node::AgentError::Register { .. }),
    )
    .await?;
    println!("flotilla: node {node} running pods (pod CIDR {cidr})");
    println!("flotilla: node {node} proxying services");
    let _running = (agent, proxy);
    std::future::pending().await
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a join token: `flotilla agent --server URL --token TOKEN` joins with it.
    Create {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// How long the token may be used to join (e.g. 24h, 30m).
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
    },
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { cluster, ttl } = command;
    let kubeconfig = cluster.read()?;
    let ca = crate::join::cluster_ca(&kubeconfig).context(
        "the kubeconfig names no cluster CA: join tokens need a cluster served over TLS",
    )?;
    let token = crate::join::create(cluster.client().await?, &ca, ttl.into()).await?;
    println!("{token}");
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Upload a module through the API server and make a WasmPlugin run it (created, or updated
    /// in place: a hot swap).
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// The WasmPlugin's name.
        #[arg(long)]
        name: String,
        /// scheduler-policy, controller, admission-policy or proxy-strategy.
        #[arg(long)]
        kind: String,
        /// Configuration passed to the plugin (JSON); kept as it is when omitted.
        #[arg(long)]
        config: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

pub async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Push {
            file,
            name,
            kind,
            config,
            cluster,
        } => {
            let world = World::from_name(&kind)
                .filter(|w| *w != World::Probe)
                .with_context(|| {
                    format!("unknown kind {kind:?}: scheduler-policy, controller, admission-policy or proxy-strategy")
                })?;
            let config = config
                .map(|c| serde_json::from_str(&c))
                .transpose()
                .context("--config is not JSON")?;
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Refuse what cannot load here before anything reaches the cluster.
            let host = PluginHost::new(EngineConfig::default())?;
            host.load(&name, world, &wasm, None)?;
            let client = cluster.client().await?;
            let digest = flotilla_client::plugins::push(&client, &name, world, &wasm, config)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("wasmplugin.plugins.flotilla.dev/{name} runs {digest}");
            Ok(())
        }
    }
}
