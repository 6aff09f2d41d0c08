//! `flotilla bench pods`: workloads on a node, in one run.
//!
//! - W4: a burst of pods created at once, from each create being sent to the pod being seen
//!   Running by a watch, on the real node agent of a `flotilla up` child process (the pods are
//!   the `hello-http` component: a listener bound on the pod's IP before Running is reported),
//!   against the same burst on a simulated node in the same cluster, which reports pods Running
//!   without running anything: the difference is what running a component costs.
//! - W5: cold start of a cached component inside the agent's runtime (store, WASI context with
//!   argv, env and log sinks, instantiation from the pool, `wasi:cli/run` to its exit) against
//!   raw wasmtime instantiating and running the same component with an empty WASI context.
//! - HTTP: keep-alive throughput and latency (wrk) of one `hello-http` pod served by the agent,
//!   against `wasmtime serve` of the same component (pooling and on-demand allocation), both
//!   with a fresh instance per request.
//! - Memory: the `up` process's resident memory with N idle pods (`wasi:cli` commands asleep)
//!   on its node, per pod.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

use crate::bench;
use crate::bench_api::ServerProcess;

#[derive(Debug, Clone, clap::Args)]
pub struct PodsBenchArgs {
    /// Where the cluster keeps its state (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Pods in each burst (W4).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Cold starts measured on each side (W5).
    #[arg(long, default_value_t = 2000)]
    starts: usize,
    /// Idle pods for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle_pods: usize,
    /// Seconds of load on each HTTP server.
    #[arg(long, default_value_t = 10)]
    http_seconds: u64,
    /// Keep-alive connections wrk holds open to each HTTP server.
    #[arg(long, default_value_t = 16)]
    http_connections: u32,
}

/// What wrk measured against one server.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub(crate) requests_per_second: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Socket errors and non-2xx/3xx answers.
    pub(crate) errors: u64,
}

/// wrk's latency figure (`812.00us`, `2.40ms`, `1.02s`) in ms.
fn wrk_millis(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(report: &str) -> Option<Load> {
    let mut load = Load {
        requests_per_second: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    let mut seen = 0;
    for line in report.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => {
                load.requests_per_second = n.parse().ok()?;
                seen += 1;
            }
            ["50%", v] => {
                load.p50_ms = wrk_millis(v)?;
                seen += 1;
            }
            ["99%", v] => {
                load.p99_ms = wrk_millis(v)?;
                seen += 1;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                // `connect 0, read 0, write 0, timeout 0`
                load.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (seen == 3).then_some(load)
}

/// Drives `url` with wrk (one thread, `connections` keep-alive connections) for `seconds`.
pub(crate) async fn wrk(url: &str, seconds: u64, connections: u32) -> anyhow::Result<Load> {
    wrk_on(url, seconds, connections, None).await
}

/// [`wrk`], run on `cpus` only when given.
pub(crate) async fn wrk_on(
    url: &str,
    seconds: u64,
    connections: u32,
    cpus: Option<&[usize]>,
) -> anyhow::Result<Load> {
    let mut command = tokio::process::Command::new("wrk");
    if let Some(cpus) = cpus {
        bench::pin_child(&mut command, cpus.to_vec());
    }
    let output = command
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .await
        .context("cannot run wrk (scripts/deps installs it)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_wrk(&report).with_context(|| format!("cannot read wrk's report:\n{report}"))
}

/// `wasmtime serve` of `wasm` on a free loopback port, until dropped.
struct WasmtimeServe {
    child: tokio::process::Child,
    url: String,
}

impl WasmtimeServe {
    async fn start(wasm: &std::path::Path, pooling: bool) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = tokio::process::Command::new("wasmtime");
        command
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "-S",
                "cli=y",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if pooling {
            command.args(["-O", "pooling-allocator=y"]);
        }
        let child = command
            .arg(wasm)
            .spawn()
            .context("cannot run the wasmtime CLI (scripts/deps installs it)")?;
        bench::wait_for_listener(&format!("127.0.0.1:{port}"), "wasmtime serve").await?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The agent's HTTP path and `wasmtime serve` of the same component, one after the other.
async fn http_throughput(
    client: &kube::Client,
    namespace: &str,
    image: &str,
    wasm: &std::path::Path,
    args: &PodsBenchArgs,
) -> anyhow::Result<Vec<(&'static str, Load)>> {
    let (_, _) = burst(client, namespace, "http", 1, |name| {
        pod(name, "bench-node", image, &[])
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let ip = pods
        .get("http-0")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("the HTTP pod has no IP")?;
    let agent_url = format!("http://{ip}:8080/");
    // The pod is Running once its listener is bound.
    let mut loads = vec![(
        "flotilla agent (pod IP, instance per request)",
        wrk(&agent_url, args.http_seconds, args.http_connections).await?,
    )];
    for (what, pooling) in [
        (
            "wasmtime serve -O pooling-allocator=y (instance per request)",
            true,
        ),
        (
            "wasmtime serve, on-demand allocation (instance per request)",
            false,
        ),
    ] {
        let serve = WasmtimeServe::start(wasm, pooling).await?;
        loads.push((
            what,
            wrk(&serve.url, args.http_seconds, args.http_connections).await?,
        ));
    }
    delete_all(client, namespace).await?;
    Ok(loads)
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn pod(name: &str, node: &str, image: &str, args: &[&str]) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "w4"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "app", "image": image, "args": args,
                "ports": [{"containerPort": 8080}]}],
        },
    }))?)
}

/// Creates `count` pods at once and returns create → Running (seen by a watch) per pod, in µs,
/// and the whole burst's wall time.
async fn burst(
    client: &kube::Client,
    namespace: &str,
    prefix: &str,
    count: usize,
    make: impl Fn(&str) -> anyhow::Result<Pod>,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (running_tx, mut running_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    let watch = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut listed_tx = Some(listed_tx);
            let mut events =
                std::pin::pin!(watcher(pods, watcher::Config::default().labels("bench=w4")));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::InitDone) = event
                    && let Some(listed) = listed_tx.take()
                {
                    let _ = listed.send(());
                }
                let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                    continue;
                };
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if running_tx.send((name, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        })
    };
    // The watch is established before the burst.
    listed.await.context("the watch ended before listing")?;
    let started = Instant::now();
    let creates = (0..count).map(|n| {
        let pods = pods.clone();
        let sent = sent.clone();
        let name = format!("{prefix}-{n}");
        let object = make(&name);
        async move {
            let object = object?;
            sent.lock().unwrap().insert(name, Instant::now());
            pods.create(&PostParams::default(), &object).await?;
            anyhow::Ok(())
        }
    });
    // At most 100 creates in flight, as a client that respects the server's limits keeps.
    let mut created = futures::stream::iter(creates).buffer_unordered(100);
    while let Some(result) = created.next().await {
        result?;
    }
    drop(created);
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < count {
        let (name, at) = tokio::time::timeout_at(deadline, running_rx.recv())
            .await
            .context("pods did not all reach Running within 120 s")?
            .context("the watch ended")?;
        if !name.starts_with(prefix) || !seen.insert(name.clone()) {
            continue;
        }
        let sent = sent.lock().unwrap()[&name];
        latencies.record(at.duration_since(sent).as_micros() as u64)?;
    }
    let wall = started.elapsed();
    watch.abort();
    Ok((latencies, wall))
}

async fn delete_all(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.delete_collection(&Default::default(), &Default::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&Default::default()).await?.items.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods were not deleted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// W5: one cold start per iteration, sequentially, on each side.
async fn cold_starts(
    wasm: &[u8],
    starts: usize,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    use flotilla_node::runtime::{OutputSink, Runtime, Sandbox, Stream, default_config};
    #[derive(Debug)]
    struct Discard;
    impl OutputSink for Discard {
        fn write(&self, _stream: Stream, _bytes: &[u8]) {}
    }
    let digest = flotilla_artifacts::digest(wasm);
    let runtime = Runtime::new(default_config(None)).map_err(anyhow::Error::msg)?;
    let workload = runtime.prepare(&digest, wasm).map_err(anyhow::Error::msg)?;
    let sandbox = Sandbox {
        args: vec!["app".into()],
        env: vec![("POD_NAME".into(), "bench".into())],
        preopens: vec![],
        output: Arc::new(Discard),
        pod_ip: "127.0.0.1".parse()?,
        memory_limit: Some(64 << 20),
        cpu_millis: None,
        names: None,
    };
    let mut agent = Histogram::<u64>::new(3)?;
    for _ in 0..starts {
        let t = Instant::now();
        let exit = runtime.run_command(&workload, &sandbox).await;
        agent.record(t.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(
            exit == flotilla_node::runtime::Exit::Code(0),
            "the command failed: {exit:?}"
        );
    }

    // The peer: raw wasmtime, same engine settings, nothing around the call.
    struct Raw {
        wasi: wasmtime_wasi::WasiCtx,
        table: wasmtime::component::ResourceTable,
    }
    impl wasmtime_wasi::WasiView for Raw {
        fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
            wasmtime_wasi::WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    pooling
        .total_component_instances(100)
        .total_core_instances(800)
        .total_memories(200)
        .total_tables(800);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    let engine = wasmtime::Engine::new(&config)?;
    let component = wasmtime::component::Component::new(&engine, wasm)?;
    let mut linker = wasmtime::component::Linker::<Raw>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let pre = wasmtime_wasi::p2::bindings::CommandPre::new(linker.instantiate_pre(&component)?)?;
    let mut raw = Histogram::<u64>::new(3)?;
    for _ in 0..starts {
        let t = Instant::now();
        let mut store = wasmtime::Store::new(
            &engine,
            Raw {
                wasi: wasmtime_wasi::WasiCtx::builder().build(),
                table: wasmtime::component::ResourceTable::new(),
            },
        );
        let command = pre.instantiate_async(&mut store).await?;
        let result = command.wasi_cli_run().call_run(&mut store).await?;
        raw.record(t.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(result.is_ok(), "the command failed");
    }
    Ok((agent, raw))
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn pods(args: PodsBenchArgs) -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let hello = dir.join("hello_http.wasm");
    let hello_wasm = flotilla_builtins::find("hello-http")
        .context("hello-http is built in")?
        .wasm;
    std::fs::write(&hello, hello_wasm)?;
    let workload = dir.join("workload.wasm");
    let workload_wasm = flotilla_builtins::find("workload")
        .context("workload is built in")?
        .wasm;
    std::fs::write(&workload, workload_wasm)?;

    // W5 first, while nothing else runs.
    let (agent, raw) = cold_starts(workload_wasm, args.starts).await?;
    println!(
        "W5 cold start: agent p50 {:.1} µs p99 {:.1} µs, raw wasmtime p50 {:.1} µs p99 {:.1} µs",
        micros(&agent, 0.5),
        micros(&agent, 0.99),
        micros(&raw, 0.5),
        micros(&raw, 0.99)
    );

    let max_pods = (args.idle_pods + args.burst + 10).to_string();
    let server = ServerProcess::start_with(
        &dir.join("data"),
        &[
            "up",
            "--node-name",
            "bench-node",
            "--pod-cidr",
            "127.201.0.0/16",
            "--agent-port",
            "0",
            "--max-pods",
            &max_pods,
        ],
    )?;
    let client = flotilla_client::connect(&server.kubeconfig).await?;
    let simulation = flotilla_node::simulate::start(
        client.clone(),
        flotilla_node::simulate::Options {
            count: 1,
            prefix: "bench-sim-".into(),
            pods: 2000,
            ..Default::default()
        },
    )
    .await?;
    // Wait for the real node.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes.get_opt("bench-node").await?.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the node did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let namespace = "default";
    let image = hello.display().to_string();
    // A warm-up pod, so the component is compiled and cached before the burst, as W4 asks.
    let (_, _) = burst(&client, namespace, "warm", 1, |name| {
        pod(name, "bench-node", &image, &[])
    })
    .await?;
    delete_all(&client, namespace).await?;
    let (real, real_wall) = burst(&client, namespace, "real", args.burst, |name| {
        pod(name, "bench-node", &image, &[])
    })
    .await?;
    delete_all(&client, namespace).await?;
    let (simulated, simulated_wall) = burst(&client, namespace, "sim", args.burst, |name| {
        pod(name, "bench-sim-0", &image, &[])
    })
    .await?;
    delete_all(&client, namespace).await?;
    simulation.stop();
    println!(
        "W4 real node: {}; simulated node: {}",
        percentiles(&real),
        percentiles(&simulated)
    );

    let loads = http_throughput(&client, namespace, &image, &hello, &args).await?;
    for (what, load) in &loads {
        println!(
            "HTTP {what}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            load.requests_per_second, load.p50_ms, load.p99_ms, load.errors
        );
    }

    // Memory per idle pod.
    let (before, _) = server.memory_kib();
    let idle_image = workload.display().to_string();
    let (idle, idle_wall) = burst(&client, namespace, "idle", args.idle_pods, |name| {
        pod(name, "bench-node", &idle_image, &["forever"])
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = server.memory_kib();
    let per_pod = (after.saturating_sub(before)) as f64 / args.idle_pods as f64;
    println!(
        "idle pods: {} Running in {:.1} s ({}); up RSS {before} KiB → {after} KiB, {per_pod:.1} KiB per pod",
        args.idle_pods,
        idle_wall.as_secs_f64(),
        percentiles(&idle)
    );

    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}", bench::machine());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| W4: burst of {} pods, create → Running seen by a watch | p50 | p99 | max | burst wall time |",
        args.burst
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (what, h, wall) in [
        (
            "real node (hello-http component, listener bound)",
            &real,
            real_wall,
        ),
        (
            "simulated node, same cluster (runs nothing)",
            &simulated,
            simulated_wall,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} s |",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            wall.as_secs_f64()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| W5: cold start of a cached component ({} starts each, sequential) | p50 | p99 | starts/s |",
        args.starts
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for (what, h) in [
        ("agent runtime (sandbox, log sinks, run to exit)", &agent),
        ("raw wasmtime (empty WASI context)", &raw),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {:.1} µs | {:.1} µs | {:.0} |",
            micros(h, 0.5),
            micros(h, 0.99),
            1e9 / h.mean().max(1.0)
        );
    }
    let _ = writeln!(
        out,
        "| agent overhead | {:.1} µs | {:.1} µs | |",
        micros(&agent, 0.5) - micros(&raw, 0.5),
        micros(&agent, 0.99) - micros(&raw, 0.99)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| HTTP: hello-http, wrk -t1 -c{} for {} s, keep-alive | req/s | vs wasmtime serve (pooling) | p50 | p99 | errors |",
        args.http_connections, args.http_seconds
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let peer = loads
        .get(1)
        .map_or(1.0, |(_, l)| l.requests_per_second.max(1.0));
    for (what, load) in &loads {
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.2}x | {:.2} ms | {:.2} ms | {} |",
            load.requests_per_second,
            load.requests_per_second / peer,
            load.p50_ms,
            load.p99_ms,
            load.errors
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Idle pods: {} `wasi:cli` pods asleep on one node: `flotilla up` RSS {before} KiB → {after} KiB, {per_pod:.1} KiB per pod; all Running {:.1} s after the burst began ({}).",
        args.idle_pods,
        idle_wall.as_secs_f64(),
        percentiles(&idle)
    );
    println!("\n{out}");
    delete_all(&client, namespace).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let report = "Running 3s test @ http://127.0.0.1:18080/
  1 threads and 16 connections
  Latency Distribution
     50%  812.00us
     75%    3.14ms
     99%    1.02s
  20377 requests in 3.10s, 2.68MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   6572.63
";
        let load = parse_wrk(report).unwrap();
        assert_eq!(load.requests_per_second, 6572.63);
        assert!((load.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(load.p99_ms, 1020.0);
        assert_eq!(load.errors, 7);
        assert!(parse_wrk("wrk: connection refused").is_none());
    }
}
