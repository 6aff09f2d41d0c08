//! `flotilla bench proxy` (W6): HTTP keep-alive load (wrk) on one `hello-http` pod of a
//! `flotilla up` child process, four ways in one run: straight to the pod's IP, through the
//! node's service proxy with the native round-robin, through it with the built-in WASM
//! `round-robin` strategy (a pick per request), and through nginx (Debian's) configured as a
//! reverse proxy with upstream keep-alive to the same pod. Each path is measured once per
//! round, in turn (every other round in reverse order), so drift spreads over all of them;
//! the report takes each path's median round by throughput, and the WASM strategy's cost as
//! the median of its per-round ratios to the native path measured next to it, in throughput
//! and in the server process's CPU time per request.
//!
//! On a machine with two or more CPUs the load generator and the system under test are kept
//! apart: wrk runs on the first CPU, and the `flotilla up` process (proxy and pod) and nginx
//! (one worker) on the last, so neither side steals the other's time and every path gets the
//! same single core. After the rounds come short back-to-back pairs of the native and the WASM
//! path in alternating order: the machine's drift moves a path by up to 15% between rounds,
//! far more than the strategy costs, and within a pair of short runs it mostly cancels, so the
//! median pair gives the strategy's cost. Last, with the cluster gone, the bench times the
//! WASM strategy's pick alone in this process, so its own cost can be told from the machine's
//! noise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};

use crate::bench;
use crate::bench_api::ServerProcess;
use crate::bench_pods::{Load, wrk_on};

#[derive(Debug, Clone, clap::Args)]
pub struct ProxyBenchArgs {
    /// Where the cluster keeps its state (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds of load on each path per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections wrk holds open.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Rounds over the four paths.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Short back-to-back runs of the native and the WASM path, after the rounds, for the
    /// strategy's cost (0: none).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Seconds of load on each path of a pair.
    #[arg(long, default_value_t = 3)]
    pair_seconds: u64,
    /// Let wrk, the cluster and nginx run on any CPU instead of pinning the load generator
    /// and the system under test to CPUs of their own.
    #[arg(long)]
    no_pin: bool,
}

/// Where the load generator and the system under test run.
struct Placement {
    load: Option<Vec<usize>>,
    served: Option<Vec<usize>>,
}

impl Placement {
    fn new(pin: bool) -> Self {
        let cpus = bench::allowed_cpus();
        match (cpus.first(), cpus.last()) {
            (Some(&first), Some(&last)) if pin && first != last => Self {
                load: Some(vec![first]),
                served: Some(vec![last]),
            },
            _ => Self {
                load: None,
                served: None,
            },
        }
    }

    fn describe(&self) -> String {
        match (&self.load, &self.served) {
            (Some(load), Some(served)) => format!(
                "wrk pinned to CPU {load:?}, the flotilla process (proxy and pod) and nginx (one worker) to CPU {served:?}"
            ),
            _ => {
                "unpinned: wrk, the flotilla process and nginx (a worker per core) share every CPU"
                    .to_owned()
            }
        }
    }
}

/// nginx as a reverse proxy on a free loopback port, until dropped.
struct Nginx {
    child: tokio::process::Child,
    url: String,
}

impl Nginx {
    /// Proxies to `upstream` (`ip:port`) with HTTP/1.1 keep-alive to it: one worker on `cpus`
    /// when given, else one worker per core.
    async fn start(dir: &Path, upstream: &str, cpus: Option<&[usize]>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::path::absolute(dir)?;
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream pod {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pod;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
                dir = dir.display(),
                workers = if cpus.is_some() { "1" } else { "auto" },
            ),
        )?;
        let binary = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let mut command = tokio::process::Command::new(binary);
        if let Some(cpus) = cpus {
            bench::pin_child(&mut command, cpus.to_vec());
        }
        let child = command
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run nginx (scripts/deps installs nginx-light)")?;
        bench::wait_for_listener(&format!("127.0.0.1:{port}"), "nginx").await?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One GET on a connection of its own: whether it was answered 200.
async fn answers(address: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let request = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer.starts_with(b"HTTP/1.1 200")
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(value)?)
}

/// The pod, its two Services, and when all of them serve: the pod's address and the
/// ClusterIP addresses of the native and the WASM Service.
async fn deploy(client: &kube::Client, image: &str) -> anyhow::Result<(String, String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &object(serde_json::json!({
            "metadata": {"name": "backend", "labels": {"app": "bench-proxy"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": "bench-node"},
                "containers": [{"name": "web", "image": image,
                    "ports": [{"name": "web", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                        "periodSeconds": 1}}],
            },
        }))?,
    )
    .await?;
    let mut addresses = Vec::new();
    for (name, strategy) in [("native", None), ("wasm", Some("round-robin"))] {
        let mut service = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "bench-proxy"},
                "ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
        });
        if let Some(strategy) = strategy {
            let mut annotations = serde_json::Map::new();
            annotations.insert(
                flotilla_proxy::model::STRATEGY_ANNOTATION.to_owned(),
                strategy.into(),
            );
            service["metadata"]["annotations"] = annotations.into();
        }
        let created = services
            .create(&PostParams::default(), &object(service)?)
            .await?;
        let ip = created
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service has no ClusterIP")?;
        addresses.push(format!("{ip}:80"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let pod_address = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pod and its Services did not serve within 120 s"
        );
        let ip = pods.get("backend").await?.status.and_then(|s| s.pod_ip);
        if let Some(ip) = ip {
            let direct = format!("{ip}:8080");
            let mut all = answers(&direct).await;
            for address in &addresses {
                all = all && answers(address).await;
            }
            if all && strategy_ready(client).await? {
                break direct;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wasm = addresses.pop().expect("two Services");
    let native = addresses.pop().expect("two Services");
    Ok((pod_address, native, wasm))
}

/// The node's proxy runs the `round-robin` WasmPlugin.
async fn strategy_ready(client: &kube::Client) -> anyhow::Result<bool> {
    let plugin = flotilla_client::plugins::api(client, "WasmPlugin")
        .get_opt("round-robin")
        .await?;
    Ok(plugin.is_some_and(|p| p.data["status"]["components"]["proxy/bench-node"]["ready"] == true))
}

/// One pick by the built-in WASM round-robin, in this process: p50 and p99 in nanoseconds of
/// `calls` picks with an HTTP request (method, authority, path and a Host header: what a
/// strategy that reads it gets at L7) and as many without (L4, and L7 for a strategy that does
/// not read it, as round-robin), each through `ProxyStrategy::pick` as the proxy
/// calls it (the epoch deadline, the boundary budget, the call into the instance).
async fn pick_cost(calls: usize) -> anyhow::Result<[(u64, u64); 2]> {
    use flotilla_plugin::bindings::balancing::{Endpoint, HttpRequest, PickRequest, Service};
    let builtin = flotilla_builtins::find("round-robin").context("round-robin is built in")?;
    let host = flotilla_plugin::PluginHost::new(flotilla_plugin::EngineConfig::default())?;
    let module = host.load(
        "round-robin",
        flotilla_plugin::World::ProxyStrategy,
        builtin.wasm,
        None,
    )?;
    let instance = module
        .instantiate(
            flotilla_plugin::Limits::default(),
            flotilla_plugin::Services::default(),
        )
        .await?;
    let mut strategy = flotilla_plugin::ProxyStrategy::new(instance)?;
    let key = "default/wasm:http".to_owned();
    strategy.update(&Service {
        key: key.clone(),
        endpoints: vec![Endpoint {
            id: 1,
            ip: "127.202.0.2".into(),
            port: 8080,
            node: Some("bench-node".into()),
            zone: None,
            ready: true,
            terminating: false,
        }],
        annotations: Vec::new(),
        client_ip_affinity_seconds: None,
    })?;
    let l7 = PickRequest {
        service: key.clone(),
        client_ip: "127.0.0.1".into(),
        client_port: 40_000,
        http: Some(HttpRequest {
            method: "GET".into(),
            authority: "127.44.0.11".into(),
            path: "/".into(),
            headers: vec![("host".into(), "127.44.0.11".into())],
        }),
        exclude: Vec::new(),
    };
    let l4 = PickRequest {
        http: None,
        ..l7.clone()
    };
    let mut out = [(0, 0); 2];
    for (slot, request) in out.iter_mut().zip([&l7, &l4]) {
        for _ in 0..calls / 10 {
            strategy.pick(request)?;
        }
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        for _ in 0..calls {
            let t = Instant::now();
            let pick = strategy.pick(request)?;
            histogram.record(t.elapsed().as_nanos() as u64)?;
            anyhow::ensure!(pick == Some(1), "the strategy picked {pick:?}");
        }
        *slot = (
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
        );
    }
    Ok(out)
}

/// One wrk run on `url`, and the server process's CPU time per request it served, in µs.
async fn measure(
    server: &ServerProcess,
    url: &str,
    seconds: u64,
    connections: u32,
    cpus: Option<&[usize]>,
) -> anyhow::Result<(Load, f64)> {
    let before = server.cpu();
    let load = wrk_on(url, seconds, connections, cpus).await?;
    let used = server.cpu().saturating_sub(before);
    let requests = load.requests_per_second * seconds as f64;
    Ok((load, used.as_secs_f64() * 1e6 / requests.max(1.0)))
}

/// The round with the median throughput.
fn median(mut loads: Vec<Load>) -> Load {
    loads.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    loads[loads.len() / 2].clone()
}

pub async fn proxy(args: ProxyBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let scratch = bench::scratch_dir(args.dir.as_deref())?;
    let dir = scratch.path().to_owned();
    let hello = dir.join("hello_http.wasm");
    std::fs::write(
        &hello,
        flotilla_builtins::find("hello-http")
            .context("hello-http is built in")?
            .wasm,
    )?;
    let server = ServerProcess::start_with(
        &dir.join("data"),
        &[
            "up",
            "--node-name",
            "bench-node",
            "--pod-cidr",
            "127.202.0.0/16",
            "--service-cidr",
            "127.44.0.0/16",
            "--agent-port",
            "0",
            "--dns-port",
            "0",
            "--ingress-http-port",
            "0",
            "--ingress-https-port",
            "0",
        ],
    )?;
    let client = flotilla_client::connect(&server.kubeconfig).await?;
    let (direct, native, wasm) = deploy(&client, &hello.display().to_string()).await?;
    let placement = Placement::new(!args.no_pin);
    if let Some(cpus) = &placement.served {
        bench::pin_process(server.pid(), cpus)?;
    }
    let load_cpus = placement.load.as_deref();
    let nginx = Nginx::start(&dir.join("nginx"), &direct, placement.served.as_deref()).await?;
    let paths = [
        ("direct to the pod", format!("http://{direct}/")),
        (
            "Flotilla proxy, native round-robin",
            format!("http://{native}/"),
        ),
        (
            "Flotilla proxy, WASM strategy (built-in round-robin, a pick per request)",
            format!("http://{wasm}/"),
        ),
        (
            "nginx reverse proxy (Debian nginx-light, upstream keep-alive)",
            nginx.url.clone(),
        ),
    ];
    // Warm-up: connections pooled, code paths hot.
    for (_, url) in &paths {
        wrk_on(url, 2, args.connections, load_cpus).await?;
    }
    let mut rounds: Vec<Vec<Load>> = vec![Vec::new(); paths.len()];
    // The server process's CPU time per request on each path in each round (the proxy and the
    // pod; nginx's own time is not in it).
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..args.rounds {
        // Every other round runs the paths in reverse, so no path always follows the same one.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..paths.len()).collect()
        } else {
            (0..paths.len()).rev().collect()
        };
        for index in order {
            let (what, url) = &paths[index];
            let (load, per_request) =
                measure(&server, url, args.seconds, args.connections, load_cpus).await?;
            println!(
                "{what}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors, server CPU {per_request:.0} µs a request",
                load.requests_per_second, load.p50_ms, load.p99_ms, load.errors
            );
            rounds[index].push(load);
            cpu[index].push(per_request);
        }
    }
    // Pairs: the native and the WASM path back to back, in alternating order, each pair short
    // enough that the machine's drift (which moves a path by up to 15% between rounds) stays
    // out of its ratio.
    let mut paired: Vec<f64> = Vec::new();
    let mut paired_cpu: Vec<f64> = Vec::new();
    for pair in 0..args.pairs {
        let order = if pair % 2 == 0 { [1, 2] } else { [2, 1] };
        let mut figures = [(0.0, 0.0); 3];
        for index in order {
            let (load, per_request) = measure(
                &server,
                &paths[index].1,
                args.pair_seconds,
                args.connections,
                load_cpus,
            )
            .await?;
            figures[index] = (load.requests_per_second, per_request);
        }
        let ((native, native_cpu), (wasm, wasm_cpu)) = (figures[1], figures[2]);
        paired.push((1.0 - wasm / native.max(1.0)) * 100.0);
        paired_cpu.push((wasm_cpu / native_cpu.max(1.0) - 1.0) * 100.0);
    }
    paired.sort_by(f64::total_cmp);
    paired_cpu.sort_by(f64::total_cmp);
    // The WASM strategy's cost in each round, against the native path measured next to it:
    // in throughput, and in the server's CPU time per request.
    let mut costs: Vec<f64> = rounds[1]
        .iter()
        .zip(&rounds[2])
        .map(|(native, wasm)| {
            (1.0 - wasm.requests_per_second / native.requests_per_second.max(1.0)) * 100.0
        })
        .collect();
    costs.sort_by(f64::total_cmp);
    let mut cpu_costs: Vec<f64> = cpu[1]
        .iter()
        .zip(&cpu[2])
        .map(|(native, wasm)| (wasm / native.max(1.0) - 1.0) * 100.0)
        .collect();
    cpu_costs.sort_by(f64::total_cmp);
    let cpu_medians: Vec<f64> = cpu
        .into_iter()
        .map(|mut rounds| {
            rounds.sort_by(f64::total_cmp);
            rounds[rounds.len() / 2]
        })
        .collect();
    let loads: Vec<Load> = rounds.into_iter().map(median).collect();
    let direct = &loads[0];
    drop(nginx);
    drop(server);
    let [(l7_p50, l7_p99), (l4_p50, l4_p99)] = pick_cost(100_000).await?;
    let quartiles = |sorted: &[f64]| {
        let at = |q: usize| sorted[(sorted.len() - 1) * q / 4];
        (at(2), at(1), at(3))
    };
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}", bench::machine());
    let _ = writeln!(out, "Placement: {}", placement.describe());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| W6: hello-http pod, wrk -t1 -c{} for {} s, keep-alive; median of {} rounds | req/s | vs direct | p50 | p99 | added p50 | added p99 | errors | server CPU a request |",
        args.connections, args.seconds, args.rounds
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (index, ((what, _), load)) in paths.iter().zip(&loads).enumerate() {
        // nginx runs outside the server process: its path's figure would leave nginx out.
        let server_cpu = if index == 3 {
            "—".to_owned()
        } else {
            format!("{:.0} µs", cpu_medians[index])
        };
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.2}x | {:.3} ms | {:.3} ms | {:+.0} µs | {:+.0} µs | {} | {server_cpu} |",
            load.requests_per_second,
            load.requests_per_second / direct.requests_per_second.max(1.0),
            load.p50_ms,
            load.p99_ms,
            (load.p50_ms - direct.p50_ms) * 1000.0,
            (load.p99_ms - direct.p99_ms) * 1000.0,
            load.errors
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "WASM strategy cost: {:.1}% of the native round-robin's throughput (median of the per-round ratios; rounds {:.1}% to {:.1}%); Flotilla native vs nginx: {:.2}x.",
        costs[costs.len() / 2],
        costs[0],
        costs[costs.len() - 1],
        loads[1].requests_per_second / loads[3].requests_per_second.max(1.0)
    );
    let _ = writeln!(
        out,
        "WASM strategy cost in the server's CPU time a request: {:+.1}% (median of the per-round ratios; rounds {:+.1}% to {:+.1}%).",
        cpu_costs[cpu_costs.len() / 2],
        cpu_costs[0],
        cpu_costs[cpu_costs.len() - 1]
    );
    if !paired.is_empty() {
        let (median, low, high) = quartiles(&paired);
        let (cpu_median, cpu_low, cpu_high) = quartiles(&paired_cpu);
        let _ = writeln!(
            out,
            "WASM strategy cost over {} back-to-back pairs of {} s (alternating order): {median:.1}% of the native path's throughput (median; quartiles {low:.1}% to {high:.1}%), {cpu_median:+.1}% server CPU a request (quartiles {cpu_low:+.1}% to {cpu_high:+.1}%).",
            args.pairs, args.pair_seconds
        );
    }
    let _ = writeln!(
        out,
        "One WASM round-robin pick in process (100,000 each): with the HTTP request p50 {:.2} µs, p99 {:.2} µs; without it (L4, and L7 for strategies that do not read it, round-robin among them) p50 {:.2} µs, p99 {:.2} µs.",
        l7_p50 as f64 / 1000.0,
        l7_p99 as f64 / 1000.0,
        l4_p50 as f64 / 1000.0,
        l4_p99 as f64 / 1000.0
    );
    println!("\n{out}");
    Ok(())
}
