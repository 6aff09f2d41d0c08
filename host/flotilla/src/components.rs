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

#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
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

pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let kubeconfig = args.cluster.read()?;
    let identity = args.identity.unwrap_or_else(default_identity);
    run_scheduler(&kubeconfig, args.plugin_cache, &identity).await
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Register this many simulated nodes: they keep their leases fresh and report the pods
    /// bound to them Running without executing anything.
    #[arg(long)]
    simulate: usize,
    /// Simulated node names are `<prefix><n>`.
    #[arg(long, default_value = "sim-")]
    node_prefix: String,
    /// Each simulated node's cpu.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Each simulated node's memory.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Each simulated node's pod capacity.
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Labels on every simulated node (`key=value`, repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Spread the nodes over this many `topology.kubernetes.io/zone` values.
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// Seconds between lease renewals of each node.
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.simulate > 0,
        "only simulated nodes are available yet: pass --simulate N"
    );
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("label {label:?} is not key=value"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    let client = args.cluster.client().await?;
    let options = flotilla_node::simulate::Options {
        count: args.simulate,
        prefix: args.node_prefix,
        cpu: args.cpu,
        memory: args.memory,
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
    std::future::pending().await
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
