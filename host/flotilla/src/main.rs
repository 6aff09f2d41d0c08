//! `flotilla`: the one host binary. It parses the command line and wires libraries together —
//! the store, and (as they land) the API server, scheduler, controllers and node agent. Logic
//! that is not process wiring belongs in a library crate, not here.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod bench;
mod bench_admission;
mod bench_api;
mod bench_deployment;
mod bench_pods;
mod bench_proxy;
mod bench_reconcile;
mod bench_schedule;
mod components;
mod join;
mod server;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A Kubernetes-compatible orchestrator whose policy layer is WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `up` and `server` share: where state lives and how the API is served.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where the cluster keeps its state: the embedded store, certificates, tokens, kubeconfig.
    #[arg(long, default_value = "flotilla-data", env = "FLOTILLA_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the server's endpoint.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Keep this many seconds of history; older revisions are compacted. 0 keeps all.
    #[arg(long, default_value_t = 300)]
    compaction_window: u64,
    /// Serve plain HTTP instead of HTTPS (only on a loopback address).
    #[arg(long)]
    plain_http: bool,
    /// More names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    disable_scheduler: bool,
    /// Do not run the controller manager in this process.
    #[arg(long)]
    disable_controllers: bool,
    /// A built-in admission policy not to run (namespace-lifecycle, limit-ranger,
    /// resource-quota, pod-security; repeatable): it is not installed, and deleted if it was.
    #[arg(long = "disable-admission-policy", value_parser = clap::builder::PossibleValuesParser::new(flotilla_admission::builtins::BUILTIN_POLICIES))]
    disabled_admission_policies: Vec<String>,
    /// The name of the node `up` runs (default: the host's name).
    #[arg(long)]
    node_name: Option<String>,
    /// Do not run a node agent in this process (`up` runs one).
    #[arg(long)]
    disable_agent: bool,
    /// The pod CIDR of the node `up` runs (loopback mode: within 127.0.0.0/8).
    #[arg(long, default_value = "127.1.0.0/16")]
    pod_cidr: String,
    #[command(flatten)]
    node: components::NodeArgs,
    /// The port of the node agent's endpoint, which the API server reaches for logs (0: any
    /// free port).
    #[arg(long, default_value_t = 10250)]
    agent_port: u16,
    /// How many pods the node `up` runs takes.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Services' ClusterIPs come from this CIDR; its first address is the `kubernetes`
    /// Service's. Within 127.0.0.0/8 every node's proxy serves them without privileges.
    #[arg(long, default_value = "127.43.0.0/16")]
    service_cidr: String,
    /// NodePorts come from this range.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
}

impl ServeArgs {
    fn config(
        self,
        datastore: flotilla_store::Datastore,
        agent: bool,
    ) -> anyhow::Result<server::ServerConfig> {
        let agent = match agent && !self.disable_agent {
            true => {
                let name = self.node_name.clone().unwrap_or_else(components::host_name);
                let mut options = flotilla_node::AgentOptions::new(
                    &name,
                    std::path::absolute(self.data_dir.join("agent"))?,
                );
                options.pod_cidr = components::parse_cidr(&self.pod_cidr)?;
                options.port = self.agent_port;
                options.max_pods = self.max_pods;
                self.node.apply(&mut options)?;
                Some(options)
            }
            false => None,
        };
        Ok(server::ServerConfig {
            agent,
            proxy_ports: self.node.proxy_ports(),
            data_dir: self.data_dir,
            datastore,
            listen: self.listen,
            compaction_window: window(self.compaction_window),
            plain_http: self.plain_http,
            tls_sans: self.tls_sans,
            scheduler: !self.disable_scheduler,
            controllers: !self.disable_controllers,
            disabled_admission_policies: self.disabled_admission_policies,
            service_ranges: flotilla_apiserver::ServiceRanges::parse(
                &self.service_cidr,
                &self.service_node_port_range,
            )
            .map_err(anyhow::Error::msg)?,
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole single-machine cluster on the embedded store.
    Up(ServeArgs),
    /// Run the control plane on the embedded store or an etcd cluster.
    Server {
        #[command(flatten)]
        serve: ServeArgs,
        /// `embedded`, or `etcd://host:port[,host:port...]`.
        #[arg(long, default_value = "embedded")]
        datastore: flotilla_store::Datastore,
    },
    /// Run a scheduler against a cluster (a second replica, or a control plane started with
    /// --disable-scheduler). Replicas elect a leader; only it schedules.
    Scheduler(components::ReplicaArgs),
    /// Run a controller manager against a cluster (a second replica, or a control plane
    /// started with --disable-controllers). Replicas elect a leader; only it reconciles.
    ControllerManager(components::ReplicaArgs),
    /// Run a node agent: this machine as a node, or simulated nodes (--simulate N).
    Agent(components::AgentArgs),
    /// Join tokens for nodes.
    Token {
        #[command(subcommand)]
        what: components::TokenCommand,
    },
    /// Manage WasmPlugins.
    Plugin {
        #[command(subcommand)]
        what: components::PluginCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Store benchmark: the embedded store and a real etcd, side by side.
    Store(bench::StoreBenchArgs),
    /// API server benchmark: pod creates and watch fan-out against raw etcd, side by side.
    Api(bench_api::ApiBenchArgs),
    /// Scheduler benchmark (W3): simulated nodes, WASM policies against the same policies
    /// compiled natively, and a hot swap under load.
    Schedule(bench_schedule::ScheduleBenchArgs),
    /// Workload benchmark (W4, W5): pod bursts on a real and a simulated node, cold starts in
    /// the agent's runtime against raw wasmtime, memory per idle pod.
    Pods(bench_pods::PodsBenchArgs),
    /// Service proxy benchmark (W6): HTTP keep-alive to a pod directly, through the node's
    /// proxy (native round-robin and a WASM strategy) and through nginx, side by side.
    Proxy(bench_proxy::ProxyBenchArgs),
    /// Controller benchmark (W9): a Deployment burst on simulated nodes through the built-in
    /// controllers, next to the same pods created directly.
    Deployment(bench_deployment::DeploymentBenchArgs),
    /// Reconcile cost (W9): the built-in ReplicaSet controller in WASM next to the same crate
    /// linked natively, over one informer cache.
    Reconcile(bench_reconcile::ReconcileBenchArgs),
    /// Admission cost (W7): one review by a WASM policy next to the same crate linked
    /// natively, and the API's create rate with 0, 1 and 5 policies and with the built-ins.
    Admission(bench_admission::AdmissionBenchArgs),
}

/// `--compaction-window` in seconds; 0 turns automatic compaction off.
fn window(seconds: u64) -> Option<std::time::Duration> {
    (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(serve) => {
                server::run(serve.config(flotilla_store::Datastore::Embedded, true)?).await
            }
            Command::Server { serve, datastore } => {
                server::run(serve.config(datastore, false)?).await
            }
            Command::Scheduler(args) => components::scheduler(args).await,
            Command::ControllerManager(args) => components::controller_manager(args).await,
            Command::Agent(args) => components::agent(args).await,
            Command::Token { what } => components::token(what).await,
            Command::Plugin { what } => components::plugin(what).await,
            Command::Bench {
                what: BenchCommand::Store(args),
            } => bench::store(args).await,
            Command::Bench {
                what: BenchCommand::Api(args),
            } => bench_api::api(args).await,
            Command::Bench {
                what: BenchCommand::Schedule(args),
            } => bench_schedule::schedule(args).await,
            Command::Bench {
                what: BenchCommand::Deployment(args),
            } => bench_deployment::deployment(args).await,
            Command::Bench {
                what: BenchCommand::Pods(args),
            } => bench_pods::pods(args).await,
            Command::Bench {
                what: BenchCommand::Proxy(args),
            } => bench_proxy::proxy(args).await,
            Command::Bench {
                what: BenchCommand::Reconcile(args),
            } => bench_reconcile::reconcile(args).await,
            Command::Bench {
                what: BenchCommand::Admission(args),
            } => bench_admission::admission(args).await,
        }
    })
}
