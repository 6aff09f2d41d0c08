//! The workload runtime: pods' containers are WASI components, run by wasmtime.
//!
//! A component is compiled once per digest (artifacts cached on disk with the plugin host's
//! artifact cache) and classified by what it exports: `wasi:cli/run` makes a command, run like
//! a process (argv, environment, exit code); `wasi:http/incoming-handler` makes an HTTP
//! handler, served on the pod's IP and container port with a fresh pooled instance per
//! request, as `wasmtime serve` does. Every instance is confined: its own preopens, sockets
//! bound only to its pod's IP, a memory limit whose breach ends it as OOMKilled, and a CPU
//! limit enforced by time slicing at epoch ticks.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use flotilla_plugin::ArtifactCache;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// What went wrong preparing a workload; the message is what the pod's events and statuses say.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

fn runtime_error(context: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError(format!("{context}: {e}"))
}

/// How big the runtime's instance pool is: instances alive at once (running commands plus
/// HTTP requests in flight) and the most linear memory one may have, whatever its pod's limit.
pub type RuntimeConfig = flotilla_plugin::EngineConfig;

/// The runtime's defaults: room for a node's pods and their requests in flight.
pub fn default_config(cache_dir: Option<PathBuf>) -> RuntimeConfig {
    RuntimeConfig {
        cache_dir,
        max_instances: 2_000,
        max_memory_bytes: 4 << 30,
    }
}

/// The wasmtime engine for workloads, its linker (WASI and `wasi:http`) and artifact cache.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<WorkloadState>>,
    cache: Arc<ArtifactCache>,
    _ticker: Arc<flotilla_plugin::Ticker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// What a component is, by what it exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `wasi:cli/run`: runs to an exit code.
    Command,
    /// `wasi:http/incoming-handler`: serves requests.
    Http,
}

/// A compiled component, ready to instantiate.
#[derive(Clone)]
pub struct Workload {
    pub digest: String,
    pub kind: Kind,
    pre: Prepared,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .finish()
    }
}

#[derive(Clone)]
enum Prepared {
    Command(CommandPre<WorkloadState>),
    Http(ProxyPre<WorkloadState>),
}

/// A directory made visible to the guest at `guest` (the volume's mountPath).
#[derive(Clone, Debug)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Where a container's output goes: one line at a time, with its stream.
pub trait OutputSink: Send + Sync + 'static {
    fn write(&self, stream: Stream, bytes: &[u8]);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Everything one container's instances are given and confined to.
#[derive(Clone)]
pub struct Sandbox {
    /// argv, the first being the program's name.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub output: Arc<dyn OutputSink>,
    /// The pod's IP: the only address its sockets may bind or listen on.
    pub pod_ip: IpAddr,
    /// `resources.limits.memory`.
    pub memory_limit: Option<usize>,
    /// `resources.limits.cpu`, in millicores.
    pub cpu_millis: Option<u32>,
    /// The cluster's Service names, and the pod's namespace short names resolve in.
    pub names: Option<(Arc<dyn ServiceNames>, String)>,
}

/// The cluster's Service names, as the node's proxy knows them.
pub trait ServiceNames: Send + Sync + std::fmt::Debug {
    /// The addresses of `name` for a pod in `namespace` (`svc`, `svc.ns`, `svc.ns.svc`,
    /// `svc.ns.svc.cluster.local`): `Some` for a cluster name (empty when it names no Service
    /// with addresses), `None` for other names, which the host's resolver answers.
    fn resolve(&self, name: &str, namespace: &str) -> Option<Vec<IpAddr>>;
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("args", &self.args)
            .field("pod_ip", &self.pod_ip)
            .field("memory_limit", &self.memory_limit)
            .field("cpu_millis", &self.cpu_millis)
            .finish_non_exhaustive()
    }
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It returned or called `exit`.
    Code(i32),
    /// It tried to grow past its memory limit.
    OomKilled { limit: usize },
    /// It trapped (a panic, an unreachable, a stack overflow): exit code 134, as an abort.
    Trapped(String),
}

impl Exit {
    /// The exit code Kubernetes reports.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Code(code) => *code,
            Exit::OomKilled { .. } => 137,
            Exit::Trapped(_) => 134,
        }
    }

    /// The terminated state's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Exit::Code(0) => "Completed",
            Exit::Code(_) | Exit::Trapped(_) => "Error",
            Exit::OomKilled { .. } => "OOMKilled",
        }
    }
}

/// A store's state: WASI, `wasi:http`, and the limits the host enforces.
pub(crate) struct WorkloadState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    memory_limit: usize,
    oom: bool,
    /// Where a bind to the wildcard address lands.
    pod_ip: IpAddr,
    names: Option<(Arc<dyn ServiceNames>, String)>,
    /// Name lookups made: spreads those of multi-address names over their addresses.
    lookups: usize,
}

impl WasiView for WorkloadState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for WorkloadState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

impl ResourceLimiter for WorkloadState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.oom = true;
            wasmtime::bail!(
                "memory would grow to {desired} bytes, over the limit of {} bytes",
                self.memory_limit
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A container's stdout or stderr as WASI sees it.
#[derive(Clone)]
struct Output {
    sink: Arc<dyn OutputSink>,
    stream: Stream,
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (engine, ticker) = flotilla_plugin::pooled_engine(&config)
            .map_err(|e| runtime_error("cannot start wasmtime", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| runtime_error("cannot link WASI", e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| runtime_error("cannot link wasi:http", e))?;
        bind_to_pod_ip(&mut linker).map_err(|e| runtime_error("cannot link wasi:sockets", e))?;
        resolve_service_names(&mut linker)
            .map_err(|e| runtime_error("cannot link wasi:sockets", e))?;
        let cache = ArtifactCache::new(&engine, config.cache_dir)
            .map_err(|e| runtime_error("cannot open the artifact cache", e))?;

        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache: Arc::new(cache),
            _ticker: Arc::new(ticker),
        })
    }

    /// Compiles (or loads the cached artifact of) a component whose bytes were checked against
    /// `digest` (`sha256:<hex>`), and prepares it by kind.
    pub fn prepare(&self, digest: &str, wasm: &[u8]) -> Result<Workload, RuntimeError> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let component = match self.cache.get(&self.engine, hex) {
            Some(component) => component,
            None => self
                .cache
                .compile(&self.engine, hex, wasm)
                .map_err(|e| runtime_error("not a WebAssembly component", format!("{e:#}")))?,
        };
        self.classify(digest, component)
    }

    /// A component already compiled here, by digest alone.
    pub fn prepare_cached(&self, digest: &str) -> Option<Result<Workload, RuntimeError>> {
        let hex = digest.strip_prefix("sha256:")?;
        let component = self.cache.get(&self.engine, hex)?;
        Some(self.classify(digest, component))
    }

    fn classify(&self, digest: &str, component: Component) -> Result<Workload, RuntimeError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports_interface = |prefix: &str| exports.iter().any(|name| name.starts_with(prefix));
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            runtime_error(
                "the component imports what a node does not offer",
                format!("{e:#}"),
            )
        })?;
        let (kind, pre) = if exports_interface("wasi:http/incoming-handler@0.2") {
            let pre = ProxyPre::new(instance_pre)
                .map_err(|e| runtime_error("not a wasi:http handler", format!("{e:#}")))?;
            (Kind::Http, Prepared::Http(pre))
        } else if exports_interface("wasi:cli/run@0.2") {
            let pre = CommandPre::new(instance_pre)
                .map_err(|e| runtime_error("not a wasi:cli command", format!("{e:#}")))?;
            (Kind::Command, Prepared::Command(pre))
        } else {
            return Err(RuntimeError(format!(
                "the component exports neither wasi:cli/run nor wasi:http/incoming-handler (it exports: {})",
                if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                }
            )));
        };
        Ok(Workload {
            digest: digest.to_owned(),
            kind,
            pre,
        })
    }

    /// A store for one instance of a container, confined by its sandbox.
    fn store(&self, sandbox: &Sandbox) -> Result<Store<WorkloadState>, RuntimeError> {
        let mut wasi = WasiCtx::builder();
        wasi.args(&sandbox.args)
            .envs(&sandbox.env)
            .stdout(Output {
                sink: sandbox.output.clone(),
                stream: Stream::Stdout,
            })
            .stderr(Output {
                sink: sandbox.output.clone(),
                stream: Stream::Stderr,
            })
            .inherit_network()
            .allow_ip_name_lookup(true)
            .allow_tcp(true)
            .allow_udp(true);
        let pod_ip = sandbox.pod_ip;
        wasi.socket_addr_check(move |addr: SocketAddr, usage: SocketAddrUse| {
            let allowed = socket_allowed(pod_ip, addr, usage);
            Box::pin(async move { allowed })
        });
        for preopen in &sandbox.preopens {
            let perms = if preopen.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&preopen.host, &preopen.guest, perms)
                .map_err(|e| {
                    runtime_error(
                        &format!(
                            "cannot mount {} at {}",
                            preopen.host.display(),
                            preopen.guest
                        ),
                        e,
                    )
                })?;
        }
        let state = WorkloadState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            memory_limit: sandbox.memory_limit.unwrap_or(usize::MAX),
            oom: false,
            pod_ip: sandbox.pod_ip,
            names: sandbox.names.clone(),
            lookups: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state as &mut dyn ResourceLimiter);
        match sandbox.cpu_millis {
            Some(millis) if millis < 1000 * num_cpus() => {
                let mut throttle = Throttle::new(millis);
                store.epoch_deadline_callback(move |_| Ok(throttle.slice()));
            }
            // Unlimited: still yield at every tick, so one busy guest never holds a thread
            // that other pods' instances need.
            _ => store.epoch_deadline_async_yield_and_update(1),
        }
        store.set_epoch_deadline(1);
        Ok(store)
    }

    /// Runs a command to its end. Dropping the future stops it at its next yield (at most an
    /// epoch tick away): that is how a container is killed.
    pub async fn run_command(&self, workload: &Workload, sandbox: &Sandbox) -> Exit {
        let Prepared::Command(pre) = &workload.pre else {
            return Exit::Trapped("the component is not a wasi:cli command".into());
        };
        let mut store = match self.store(sandbox) {
            Ok(store) => store,
            Err(e) => return Exit::Trapped(e.0),
        };
        let result = match pre.instantiate_async(&mut store).await {
            Ok(command) => command.wasi_cli_run().call_run(&mut store).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Ok(())) => Exit::Code(0),
            Ok(Err(())) => Exit::Code(1),
            Err(error) => {
                if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    return Exit::Code(exit.0);
                }
                if store.data().oom {
                    return Exit::OomKilled {
                        limit: store.data().memory_limit,
                    };
                }
                Exit::Trapped(format!("{error:#}"))
            }
        }
    }

    /// Serves an HTTP handler on `listener` until `stop`, then lets requests in flight finish.
    /// Each request gets a fresh instance; a request whose instance fails is answered 500.
    pub async fn serve_http(
        &self,
        workload: &Workload,
        sandbox: Sandbox,
        listener: TcpListener,
        stop: CancellationToken,
        stats: Arc<HttpStats>,
    ) {
        let Prepared::Http(pre) = workload.pre.clone() else {
            return;
        };
        let server = Arc::new(HttpServer {
            runtime: self.clone(),
            pre,
            sandbox,
            stats,
        });
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            let Ok((stream, _peer)) = accepted else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            let service = hyper::service::service_fn(move |request| {
                let server = server.clone();
                async move { server.handle(request).await }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }
}

/// Request counters of one HTTP container, for probes of liveness and tests.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub served: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// The last failure, for events.
    pub last_error: Mutex<Option<String>>,
}

struct HttpServer {
    runtime: Runtime,
    pre: ProxyPre<WorkloadState>,
    sandbox: Sandbox,
    stats: Arc<HttpStats>,
}

type Response = hyper::Response<HyperOutgoingBody>;

fn plain(status: u16, text: String) -> Response {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response
}

impl HttpServer {
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> Result<Response, std::convert::Infallible> {
        match self.clone().instance_for(request).await {
            Ok(response) => {
                self.stats.served.fetch_add(1, Ordering::Relaxed);
                Ok(response)
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let message = format!("{error:#}");
                self.sandbox.output.write(
                    Stream::Stderr,
                    format!("request failed: {message}\n").as_bytes(),
                );
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                Ok(plain(500, format!("the handler failed: {message}\n")))
            }
        }
    }

    async fn instance_for(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> wasmtime::Result<Response> {
        let mut store = self
            .runtime
            .store(&self.sandbox)
            .map_err(|e| wasmtime::format_err!("{e}"))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        // The guest may go on writing the body after it has sent the head.
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await;
            if result.is_err() && store.data().oom {
                wasmtime::bail!(
                    "the handler ran out of memory (limit {} bytes)",
                    store.data().memory_limit
                );
            }
            result
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(wasmtime::format_err!(
                "the handler answered with an error: {code:?}"
            )),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(wasmtime::format_err!("the handler never set a response")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(wasmtime::format_err!("the handler's task failed: {e}")),
            },
        }
    }
}

/// A pod's sockets live on its IP, as a container's live in its network namespace: a bind to
/// the wildcard address (`0.0.0.0`, `::`) binds the pod's IP instead. WASI's own `start-bind`
/// for TCP and UDP sockets is replaced by one that rewrites the address and then calls it.
fn bind_to_pod_ip(linker: &mut Linker<WorkloadState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::SocketError;
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpSocketAddress, Network};
    use wasmtime_wasi::p2::bindings::sockets::tcp::{HostTcpSocket, TcpSocket};
    use wasmtime_wasi::p2::bindings::sockets::udp::{HostUdpSocket, UdpSocket};
    use wasmtime_wasi::sockets::WasiSocketsView;

    fn on_pod_ip(pod_ip: IpAddr, address: IpSocketAddress) -> IpSocketAddress {
        let address = SocketAddr::from(address);
        if !address.ip().is_unspecified() || address.is_ipv4() != pod_ip.is_ipv4() {
            return address.into();
        }
        SocketAddr::new(pod_ip, address.port()).into()
    }
    fn result(r: Result<(), SocketError>) -> wasmtime::Result<(Result<(), ErrorCode>,)> {
        Ok((match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e.downcast()?),
        },))
    }

    linker.allow_shadowing(true);
    let mut tcp = linker.instance(&format!("wasi:sockets/tcp@{WASI_SOCKETS_VERSION}"))?;
    tcp.func_wrap_async(
        "[method]tcp-socket.start-bind",
        |mut store,
         (this, network, address): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let state = store.data_mut();
                let address = on_pod_ip(state.pod_ip, address);
                let mut view = state.sockets();
                result(HostTcpSocket::start_bind(&mut view, this, network, address).await)
            })
        },
    )?;
    let mut udp = linker.instance(&format!("wasi:sockets/udp@{WASI_SOCKETS_VERSION}"))?;
    udp.func_wrap_async(
        "[method]udp-socket.start-bind",
        |mut store,
         (this, network, address): (Resource<UdpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let state = store.data_mut();
                let address = on_pod_ip(state.pod_ip, address);
                let mut view = state.sockets();
                result(HostUdpSocket::start_bind(&mut view, this, network, address).await)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Service names resolve in the guest as in a pod's cluster DNS: `resolve-addresses` of a
/// cluster name answers the Service's address from the node's proxy (one of a headless
/// Service's ready pod IPs per lookup, taken in turn) or fails as unresolvable when no such
/// Service has one; other names go to WASI's own resolver.
fn resolve_service_names(linker: &mut Linker<WorkloadState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host, ResolveAddressStream};
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Network};
    use wasmtime_wasi::sockets::WasiSocketsView;

    linker.allow_shadowing(true);
    let mut lookup = linker.instance(&format!(
        "wasi:sockets/ip-name-lookup@{WASI_SOCKETS_VERSION}"
    ))?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store,
         (network, name): (Resource<Network>, String)|
         -> wasmtime::Result<(Result<Resource<ResolveAddressStream>, ErrorCode>,)> {
            let state = store.data_mut();
            let cluster = state
                .names
                .as_ref()
                .and_then(|(names, namespace)| names.resolve(&name, namespace));
            let name = match cluster {
                None => name,
                Some(addresses) if addresses.is_empty() => {
                    return Ok((Err(ErrorCode::NameUnresolvable),));
                }
                Some(addresses) => {
                    state.lookups = state.lookups.wrapping_add(1);
                    addresses[state.lookups % addresses.len()].to_string()
                }
            };
            // An address literal resolves to itself.
            let mut view = state.sockets();
            Ok((match Host::resolve_addresses(&mut view, network, name) {
                Ok(stream) => Ok(stream),
                Err(e) => Err(e.downcast()?),
            },))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The wasi:sockets version wasmtime-wasi links (guests of any 0.2.x resolve to it).
const WASI_SOCKETS_VERSION: &str = "0.2.12";

/// The addresses a pod's sockets may use: any destination, but bind and listen only on the
/// pod's IP. A bind to the wildcard address is what WASI reports for the implicit bind of a
/// connect, so it passes the bind check; listening on it does not.
fn socket_allowed(pod_ip: IpAddr, addr: SocketAddr, usage: SocketAddrUse) -> bool {
    match usage {
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            addr.ip() == pod_ip || addr.ip().is_unspecified()
        }
        SocketAddrUse::TcpListen => addr.ip() == pod_ip,
        _ => true,
    }
}

fn num_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// CPU time slicing: after each slice a guest has run, it sleeps long enough that its share of
/// one core is `millis / 1000`.
struct Throttle {
    millis: u32,
    slice_started: Instant,
}

impl Throttle {
    fn new(millis: u32) -> Self {
        Self {
            millis: millis.max(1),
            slice_started: Instant::now(),
        }
    }

    fn slice(&mut self) -> UpdateDeadline {
        let ran = self.slice_started.elapsed();
        let pause = ran.mul_f64(1000.0 / f64::from(self.millis) - 1.0);
        self.slice_started = Instant::now() + pause;
        if pause.is_zero() {
            return UpdateDeadline::Yield(1);
        }
        UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sockets_bind_and_listen_only_on_the_pod_ip() {
        let pod: IpAddr = "127.1.0.5".parse().unwrap();
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 8080);
        assert!(socket_allowed(
            pod,
            at("127.1.0.5"),
            SocketAddrUse::TcpListen
        ));
        assert!(!socket_allowed(
            pod,
            at("0.0.0.0"),
            SocketAddrUse::TcpListen
        ));
        assert!(!socket_allowed(
            pod,
            at("127.1.0.6"),
            SocketAddrUse::TcpBind
        ));
        assert!(socket_allowed(pod, at("0.0.0.0"), SocketAddrUse::TcpBind));
        assert!(socket_allowed(
            pod,
            at("127.9.9.9"),
            SocketAddrUse::TcpConnect
        ));
    }

    #[tokio::test]
    async fn a_quarter_core_runs_one_slice_in_four() {
        let mut throttle = Throttle::new(250);
        std::thread::sleep(Duration::from_millis(4));
        match throttle.slice() {
            UpdateDeadline::YieldCustom(1, _) => {}
            _ => panic!("a throttled guest must pause"),
        }
        // The next slice starts after a pause three times as long as the slice ran.
        let pause = throttle
            .slice_started
            .saturating_duration_since(Instant::now());
        assert!(pause >= Duration::from_millis(10), "{pause:?}");
    }
}
