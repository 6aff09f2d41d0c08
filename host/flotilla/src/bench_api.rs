//! `flotilla bench api`: the API server as clients see it, against the raw store it runs on, in
//! one run. The server is a real `flotilla server` child process (HTTPS, token auth) on the
//! embedded store or on a real etcd; the peers are raw etcd puts and raw etcd watches measured
//! in the same run, with the same sizes.
//!
//! - W1: pod creates (2–4 KB pods) from 1 and from 64 clients, each client its own connection.
//! - W2: watch fan-out: many watchers of one kind (spread over a few HTTP/2 connections, as
//!   informers share a client's connection) while writes arrive at a steady rate; delivery
//!   latency from the write being sent to the event being read, and the server's memory per
//!   watcher.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use flotilla_apiserver::kubeconfig::Credentials;
use flotilla_store::SharedStore;
use flotilla_store::testing::EtcdServer;
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::bench::{self, WatchFigures, WatchLoad};

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    /// Which stores the API server runs on.
    #[arg(long, default_value = "both", value_parser = ["both", "embedded", "etcd"])]
    backend: String,
    /// Pods created by one client.
    #[arg(long, default_value_t = 2000)]
    serial_creates: usize,
    /// Pods created by the concurrent clients together.
    #[arg(long, default_value_t = 20000)]
    concurrent_creates: usize,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Size of each pod as JSON.
    #[arg(long, default_value_t = 3000)]
    pod_bytes: usize,
    /// Watchers in the fan-out run.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// HTTP/2 connections the watchers share.
    #[arg(long, default_value_t = 10)]
    watch_connections: usize,
    /// Writes per second during the fan-out run.
    #[arg(long, default_value_t = 1000)]
    watch_rate: u64,
    /// How long the fan-out run writes.
    #[arg(long, default_value_t = 5)]
    watch_seconds: u64,
    /// How long watchers may still take to receive everything once the writes are done.
    #[arg(long, default_value_t = 30)]
    watch_drain_seconds: u64,
    /// Directory for the servers' data (a temporary directory inside it is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A `flotilla server` child process (without its scheduler) and how to reach it.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) url: String,
    token: String,
    ca_pem: String,
    pub(crate) kubeconfig: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    pub(crate) fn start(data_dir: &Path, datastore: &str) -> anyhow::Result<Self> {
        Self::start_with(
            data_dir,
            &["server", "--datastore", datastore, "--disable-scheduler"],
        )
    }

    /// Starts `flotilla ARGS --listen 127.0.0.1:0 --data-dir DIR`.
    pub(crate) fn start_with(data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start flotilla server")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let kubeconfig = loop {
            let line = lines
                .next()
                .context("flotilla server exited before serving")??;
            if let Some(path) = line.strip_prefix("flotilla: admin kubeconfig: ") {
                break PathBuf::from(path);
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let kubeconfig = std::fs::read_to_string(&kubeconfig)?;
        let credentials = Credentials::parse(&kubeconfig).map_err(anyhow::Error::msg)?;
        Ok(Self {
            child,
            url: credentials.server,
            token: credentials.token.context("the kubeconfig has no token")?,
            ca_pem: credentials.ca_pem.context("the kubeconfig has no CA")?,
            kubeconfig,
        })
    }

    /// A client with a connection of its own.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
            .pool_max_idle_per_host(1)
            .build()?)
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the server process has used.
    pub(crate) fn cpu(&self) -> Duration {
        cpu_time(&self.child.id().to_string())
    }

    /// Resident and peak memory of the server process, in KiB.
    pub(crate) fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// POSTs a JSON body with the token.
async fn post_json(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(url)
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
}

/// User plus system CPU time of a process (`self` or a pid), from /proc.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // Linux reports CPU time in clock ticks of 1/100 s.
    Duration::from_millis(ticks * 10)
}

/// A pod of about `bytes` bytes as JSON, its name left as `__NAME__`.
fn pod_template(bytes: usize) -> String {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "__NAME__",
            "labels": {"app": "bench", "tier": "backend", "pod-template-hash": "5d8c9f7b6"},
            "annotations": {"bench.flotilla.dev/padding": ""},
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/bench/app:1.0",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": [{"name": "MODE", "value": "bench"}, {"name": "LEVEL", "value": "info"}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
            }],
        },
    });
    let base = pod.to_string().len();
    let mut pod = pod;
    pod["metadata"]["annotations"]["bench.flotilla.dev/padding"] =
        serde_json::json!("p".repeat(bytes.saturating_sub(base)));
    pod.to_string()
}

/// W1's figures for one backend.
#[derive(Debug, Default)]
pub(crate) struct CreateFigures {
    pub(crate) rate: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
}

impl CreateFigures {
    fn new(rate: f64, latencies: &Histogram<u64>) -> Self {
        Self {
            rate,
            p50_us: latencies.value_at_quantile(0.5),
            p99_us: latencies.value_at_quantile(0.99),
        }
    }
}

/// One backend's run.
#[derive(Debug, Default)]
struct ApiFigures {
    serial: CreateFigures,
    concurrent: CreateFigures,
    watch: WatchFigures,
    /// Times watchers were cut off for being slow and resumed.
    resumes: u64,
    /// CPU used during the fan-out run's writes, as a share of one core: server, and the
    /// benchmark's own clients.
    server_cores: f64,
    client_cores: f64,
    idle_kib: u64,
    with_watchers_kib: u64,
    peak_kib: u64,
}

/// Pods created by `clients` clients (each its own connection), `total` in all.
async fn api_creates(
    server: &ServerProcess,
    namespace: &str,
    clients: usize,
    total: usize,
    template: &str,
) -> anyhow::Result<CreateFigures> {
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    creates_at(server, &path, clients, total, template).await
}

/// Objects POSTed to the collection at `path` by `clients` clients (each its own connection),
/// `total` in all; `template` is the JSON body with `__NAME__` where each one's name goes.
pub(crate) async fn creates_at(
    server: &ServerProcess,
    path: &str,
    clients: usize,
    total: usize,
    template: &str,
) -> anyhow::Result<CreateFigures> {
    let per_client = total.div_ceil(clients.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = server.client()?;
        let url = format!("{}{path}", server.url);
        let token = server.token.clone();
        let template = template.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3)?;
            for i in 0..per_client {
                let body = template.replace("__NAME__", &format!("obj-{c:03}-{i:06}"));
                let t = Instant::now();
                let response = post_json(&client, &url, &token, body).await?;
                anyhow::ensure!(
                    response.status() == reqwest::StatusCode::CREATED,
                    "create answered {}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
                response.bytes().await?;
                latencies.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let latencies = bench::merge(tasks).await?;
    let rate = (per_client * clients) as f64 / started.elapsed().as_secs_f64();
    Ok(CreateFigures::new(rate, &latencies))
}

async fn create_namespace(server: &ServerProcess, name: &str) -> anyhow::Result<()> {
    let client = server.client()?;
    let body = format!(r#"{{"metadata":{{"name":"{name}"}}}}"#);
    let url = format!("{}/api/v1/namespaces", server.url);
    let response = post_json(&client, &url, &server.token, body).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "namespace {name}: {}",
        response.status()
    );
    Ok(())
}

/// W2 through the API server: watchers of config maps while creates carrying their send time
/// arrive at a steady rate.
async fn api_watch(
    server: &ServerProcess,
    args: &ApiBenchArgs,
    figures: &mut ApiFigures,
) -> anyhow::Result<()> {
    create_namespace(server, "bench-watch").await?;
    let epoch = Instant::now();
    let writes = (args.watch_rate * args.watch_seconds) as usize;
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(args.watch_seconds + args.watch_drain_seconds);
    let connections: Vec<reqwest::Client> = (0..args.watch_connections.max(1))
        .map(|_| server.client())
        .collect::<anyhow::Result<_>>()?;
    let list: serde_json::Value = connections[0]
        .get(format!(
            "{}/api/v1/namespaces/bench-watch/configmaps",
            server.url
        ))
        .bearer_auth(&server.token)
        .send()
        .await?
        .json()
        .await?;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    figures.idle_kib = server.memory_kib().0;
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(writes);
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        let client = connections[w % connections.len()].clone();
        let url = format!(
            "{}/api/v1/namespaces/bench-watch/configmaps?watch=1",
            server.url
        );
        let token = server.token.clone();
        let mut body = open_watch(&client, &url, &token, &from).await?;
        let mut expected = expected_rx.clone();
        let mut last_version = from.clone();
        watchers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3)?;
            let mut seen = 0usize;
            let mut resumes = 0u64;
            let mut pending = Vec::new();
            while seen < *expected.borrow_and_update() {
                let chunk = tokio::select! {
                    chunk = tokio::time::timeout_at(deadline, body.next()) => match chunk {
                        Ok(Some(chunk)) => chunk?,
                        // Cut off as a slow watcher: resume from the last version seen, as
                        // clients do.
                        Ok(None) => {
                            resumes += 1;
                            pending.clear();
                            body = open_watch(&client, &url, &token, &last_version).await?;
                            continue;
                        }
                        Err(_) => break,
                    },
                    _ = expected.changed() => continue,
                };
                let now = epoch.elapsed().as_micros() as u64;
                pending.extend_from_slice(&chunk);
                let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
                    continue;
                };
                let lines: Vec<u8> = pending.drain(..=end).collect();
                for sent in sent_times(&lines) {
                    latencies.record(now.saturating_sub(sent))?;
                    seen += 1;
                }
                if let Some(version) = last_resource_version(&lines) {
                    last_version = version;
                }
            }
            anyhow::Ok((latencies, seen, resumes))
        }));
    }
    figures.with_watchers_kib = server.memory_kib().0;

    // Each write is its own task so the rate holds while some writes wait for a commit.
    let writers: Vec<reqwest::Client> = (0..16)
        .map(|_| server.client())
        .collect::<anyhow::Result<_>>()?;
    let interval = Duration::from_nanos(1_000_000_000 / args.watch_rate.max(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(writes);
    let url = format!("{}/api/v1/namespaces/bench-watch/configmaps", server.url);
    let (server_cpu, client_cpu, started) = (server.cpu(), cpu_time("self"), Instant::now());
    for i in 0..writes {
        tick.tick().await;
        let client = writers[i % writers.len()].clone();
        let url = url.clone();
        let token = server.token.clone();
        tasks.push(tokio::spawn(async move {
            let sent = epoch.elapsed().as_micros() as u64;
            let body =
                format!(r#"{{"metadata":{{"name":"w-{i:06}"}},"data":{{"sent":"{sent}"}}}}"#);
            let response = post_json(&client, &url, &token, body).await?;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::CREATED,
                "write: {}",
                response.status()
            );
            anyhow::Ok(())
        }));
    }
    let mut failed = 0u64;
    for task in tasks {
        if let Err(e) = task.await? {
            if failed == 0 {
                eprintln!("api: a write failed during the fan-out run: {e}");
            }
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    figures.server_cores = (server.cpu() - server_cpu).as_secs_f64() / elapsed;
    figures.client_cores = (cpu_time("self") - client_cpu).as_secs_f64() / elapsed;
    let acknowledged = writes - failed as usize;
    let _ = expected_tx.send(acknowledged);
    let mut latencies = Histogram::<u64>::new(3)?;
    for watcher in watchers {
        let (histogram, seen, resumes) = watcher.await??;
        latencies.add(histogram)?;
        figures.resumes += resumes;
        figures.watch.delivered += seen as u64;
        figures.watch.missing += acknowledged.saturating_sub(seen) as u64;
    }
    figures.watch.failed_writes = failed;
    figures.watch.p50_us = latencies.value_at_quantile(0.5);
    figures.watch.p99_us = latencies.value_at_quantile(0.99);
    figures.peak_kib = server.memory_kib().1;
    Ok(())
}

type Body = futures::stream::BoxStream<'static, reqwest::Result<Bytes>>;

/// A watch of `url` from `version`, as a stream of body chunks.
async fn open_watch(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    version: &str,
) -> anyhow::Result<Body> {
    let response = client
        .get(format!("{url}&resourceVersion={version}"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "watch: {}",
        response.status()
    );
    Ok(response.bytes_stream().boxed())
}

/// The resourceVersion of the last event in some complete watch lines.
fn last_resource_version(lines: &[u8]) -> Option<String> {
    const MARK: &[u8] = br#""resourceVersion":""#;
    let found = lines.windows(MARK.len()).rposition(|w| w == MARK)?;
    let start = found + MARK.len();
    let digits = lines[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    (digits > 0).then(|| String::from_utf8_lossy(&lines[start..start + digits]).into_owned())
}

/// The send times in a chunk of watch events (`"sent":"<µs>"` in each object).
fn sent_times(chunk: &[u8]) -> Vec<u64> {
    const MARK: &[u8] = br#""sent":""#;
    let mut times = Vec::new();
    let mut at = 0;
    while let Some(found) = chunk[at..].windows(MARK.len()).position(|w| w == MARK) {
        let start = at + found + MARK.len();
        let digits = chunk[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if let Some(sent) = std::str::from_utf8(&chunk[start..start + digits])
            .ok()
            .and_then(|d| d.parse().ok())
        {
            times.push(sent);
        }
        at = start + digits;
    }
    times
}

async fn run_api(
    server: &ServerProcess,
    args: &ApiBenchArgs,
    template: &str,
) -> anyhow::Result<ApiFigures> {
    let mut figures = ApiFigures::default();
    create_namespace(server, "bench").await?;
    // Warm the connections and the server's caches before measuring.
    api_creates(
        server,
        "bench",
        1,
        50,
        &template.replace("__NAME__", "warm-__NAME__"),
    )
    .await?;
    figures.serial = api_creates(server, "bench", 1, args.serial_creates, template).await?;
    figures.concurrent = api_creates(
        server,
        "bench",
        args.clients,
        args.concurrent_creates,
        &template.replace("__NAME__", "c-__NAME__"),
    )
    .await?;
    api_watch(server, args, &mut figures).await?;
    Ok(figures)
}

pub async fn api(args: ApiBenchArgs) -> anyhow::Result<()> {
    let scratch = bench::scratch_dir(args.dir.as_deref())?;
    let fsync = bench::measure_fsync(scratch.path())?;
    let template = pod_template(args.pod_bytes);
    let value = Bytes::from(template.clone());
    let watch_value_bytes = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"w-000000","namespace":"bench-watch","uid":"00000000-0000-0000-0000-000000000000","creationTimestamp":"2026-01-01T00:00:00Z","generation":1},"data":{"sent":"0000000000"}}"#.len();

    // The peers: raw etcd puts and watches, with the same sizes.
    let etcd = EtcdServer::start().await?;
    let raw: SharedStore = Arc::new(etcd.connect().await?);
    let (rate, latencies) =
        bench::serial_creates(&raw, "/peer/serial/", args.serial_creates, &value).await?;
    let peer_serial = CreateFigures::new(rate, &latencies);
    let (rate, latencies) = bench::concurrent_creates(
        &raw,
        "/peer/concurrent/",
        args.clients,
        args.concurrent_creates,
        &value,
    )
    .await?;
    let peer_concurrent = CreateFigures::new(rate, &latencies);
    eprintln!(
        "etcd raw put: 1 writer {:.0}/s (p99 {} µs), {} writers {:.0}/s",
        peer_serial.rate, peer_serial.p99_us, args.clients, peer_concurrent.rate
    );
    let load = WatchLoad {
        watchers: args.watchers,
        rate: args.watch_rate,
        seconds: args.watch_seconds,
        value_bytes: watch_value_bytes,
        drain_seconds: args.watch_drain_seconds,
    };
    let peer_watch = bench::watch_latency(&raw, &load).await?;
    eprintln!(
        "etcd raw watch: p50 {} µs, p99 {} µs, {} missing, {} failed writes",
        peer_watch.p50_us, peer_watch.p99_us, peer_watch.missing, peer_watch.failed_writes
    );

    let mut results = Vec::new();
    if args.backend == "both" || args.backend == "embedded" {
        let server = ServerProcess::start(&scratch.path().join("embedded"), "embedded")?;
        let figures = run_api(&server, &args, &template).await?;
        print_progress("embedded", &figures);
        results.push(("embedded", figures));
    }
    if args.backend == "both" || args.backend == "etcd" {
        // A fresh etcd, so the API server's etcd starts as empty as the peer's did.
        let backing = EtcdServer::start().await?;
        let server = ServerProcess::start(&scratch.path().join("etcd"), &backing.datastore_flag())?;
        let figures = run_api(&server, &args, &template).await?;
        print_progress("etcd", &figures);
        results.push(("etcd", figures));
    }
    let peers = (peer_serial, peer_concurrent, peer_watch);
    println!(
        "{}",
        report(
            &args,
            &fsync,
            template.len(),
            watch_value_bytes,
            &peers,
            &results
        )
    );
    Ok(())
}

fn print_progress(backend: &str, f: &ApiFigures) {
    eprintln!(
        "api on {backend}: 1 client {:.0}/s (p99 {} µs), many {:.0}/s; watch p50 {} µs p99 {} µs, {} missing",
        f.serial.rate,
        f.serial.p99_us,
        f.concurrent.rate,
        f.watch.p50_us,
        f.watch.p99_us,
        f.watch.missing
    );
}

fn report(
    args: &ApiBenchArgs,
    fsync: &Histogram<u64>,
    pod_bytes: usize,
    watch_bytes: usize,
    (serial, concurrent, watch): &(CreateFigures, CreateFigures, WatchFigures),
    results: &[(&str, ApiFigures)],
) -> String {
    let mut out = bench::report_header(fsync);
    let _ = writeln!(
        out,
        "Pods of {pod_bytes} bytes: {} by 1 client, {} by {} clients. Fan-out: {} watchers over {} HTTP/2 connections, {} creates/s of {watch_bytes}-byte config maps for {} s.\n",
        args.serial_creates,
        args.concurrent_creates,
        args.clients,
        args.watchers,
        args.watch_connections,
        args.watch_rate,
        args.watch_seconds
    );
    let _ = writeln!(out, "W1: creates\n");
    let _ = writeln!(
        out,
        "| what | 1 client (creates/s) | p50 / p99 (µs) | {} clients (creates/s) | p50 / p99 (µs) | vs etcd put, 1 / {} |",
        args.clients, args.clients
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| etcd raw put (peer) | {:.0} | {} / {} | {:.0} | {} / {} | 1.00 / 1.00 |",
        serial.rate,
        serial.p50_us,
        serial.p99_us,
        concurrent.rate,
        concurrent.p50_us,
        concurrent.p99_us
    );
    for (backend, f) in results {
        let _ = writeln!(
            out,
            "| API server on {backend} | {:.0} | {} / {} | {:.0} | {} / {} | {:.2} / {:.2} |",
            f.serial.rate,
            f.serial.p50_us,
            f.serial.p99_us,
            f.concurrent.rate,
            f.concurrent.p50_us,
            f.concurrent.p99_us,
            f.serial.rate / serial.rate,
            f.concurrent.rate / concurrent.rate
        );
    }
    let _ = writeln!(
        out,
        "\nW2: watch fan-out ({} watchers, {} writes/s)\n",
        args.watchers, args.watch_rate
    );
    let _ = writeln!(
        out,
        "| what | delivery p50 / p99 (µs) | deliveries (missing) | failed writes | slow-watcher resumes | CPU cores: server / clients | server RSS idle → with watchers (MiB) | per watcher (KiB) | peak RSS (MiB) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| etcd raw watch (peer) | {} / {} | {} ({}) | {} | | | | | |",
        watch.p50_us, watch.p99_us, watch.delivered, watch.missing, watch.failed_writes
    );
    for (backend, f) in results {
        let per_watcher =
            f.with_watchers_kib.saturating_sub(f.idle_kib) as f64 / args.watchers.max(1) as f64;
        let _ = writeln!(
            out,
            "| API server on {backend} | {} / {} | {} ({}) | {} | {} | {:.2} / {:.2} | {:.1} → {:.1} | {:.1} | {:.1} |",
            f.watch.p50_us,
            f.watch.p99_us,
            f.watch.delivered,
            f.watch.missing,
            f.watch.failed_writes,
            f.resumes,
            f.server_cores,
            f.client_cores,
            f.idle_kib as f64 / 1024.0,
            f.with_watchers_kib as f64 / 1024.0,
            per_watcher,
            f.peak_kib as f64 / 1024.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_are_found_in_a_chunk_of_events() {
        let chunk = br#"{"type":"ADDED","object":{"data":{"sent":"12"}}}
{"type":"ADDED","object":{"data":{"sent":"345"}}}
"#;
        assert_eq!(sent_times(chunk), [12, 345]);
        let lines = br#"{"object":{"metadata":{"resourceVersion":"7"}}}
{"object":{"metadata":{"resourceVersion":"19"}}}
"#;
        assert_eq!(last_resource_version(lines).as_deref(), Some("19"));
        assert!(sent_times(b"{}").is_empty());
    }

    #[test]
    fn pods_have_the_size_asked_for() {
        let pod = pod_template(3000);
        assert!((2990..=3010).contains(&pod.len()), "{}", pod.len());
        assert!(pod.contains("__NAME__"));
    }
}
