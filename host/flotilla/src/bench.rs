//! `flotilla bench store`: the embedded store and a real etcd measured side by side in one run,
//! through the same `Store` trait, on the same disk. Prints a Markdown report for BENCHMARKS.md.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use flotilla_store::testing::EtcdServer;
use flotilla_store::{EmbeddedOptions, EmbeddedStore, RangeRequest, SharedStore, StoreExt};
use futures::StreamExt;
use hdrhistogram::Histogram;

#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Which backends to measure.
    #[arg(long, default_value = "both", value_parser = ["both", "embedded", "etcd"])]
    backend: String,
    /// Writes measured with one writer.
    #[arg(long, default_value_t = 2000)]
    serial_writes: usize,
    /// Writes measured with 64 concurrent writers.
    #[arg(long, default_value_t = 20000)]
    concurrent_writes: usize,
    /// Concurrent writers in the concurrent run.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Value size in bytes (Kubernetes pods are 2-4 KB).
    #[arg(long, default_value_t = 3000)]
    value_bytes: usize,
    /// Keys ranged over in the range benchmark.
    #[arg(long, default_value_t = 10000)]
    range_keys: usize,
    /// Watchers on one prefix in the watch benchmark.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Writes per second during the watch benchmark.
    #[arg(long, default_value_t = 1000)]
    watch_rate: u64,
    /// How long the watch benchmark writes.
    #[arg(long, default_value_t = 5)]
    watch_seconds: u64,
    /// Value size in the watch benchmark: it measures delivery latency, not bandwidth (1,000
    /// watchers of 3 KB values at 1,000 writes/s would be 3 GB/s of fan-out).
    #[arg(long, default_value_t = 256)]
    watch_value_bytes: usize,
    /// How long watchers may still take to receive everything once the writes are done.
    #[arg(long, default_value_t = 30)]
    watch_drain_seconds: u64,
    /// Directory for the stores' data (a temporary directory inside it is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One backend's figures.
#[derive(Debug, Default)]
struct Figures {
    serial_rate: f64,
    serial_p50_us: u64,
    serial_p99_us: u64,
    concurrent_rate: f64,
    concurrent_p99_us: u64,
    range_keys_per_s: f64,
    watch: WatchFigures,
}

pub async fn store(args: StoreBenchArgs) -> anyhow::Result<()> {
    let scratch = scratch_dir(args.dir.as_deref())?;
    let fsync = measure_fsync(scratch.path())?;
    eprintln!(
        "disk: fdatasync p50 {} µs, p99 {} µs",
        fsync.value_at_quantile(0.5),
        fsync.value_at_quantile(0.99)
    );

    let mut results: Vec<(&'static str, Figures)> = Vec::new();
    if args.backend == "both" || args.backend == "embedded" {
        let options = EmbeddedOptions {
            compaction_window: None,
            ..EmbeddedOptions::default()
        };
        let store: SharedStore =
            Arc::new(EmbeddedStore::open(scratch.path().join("embedded"), options).await?);
        results.push(("embedded", run_backend(store, &args).await?));
    }
    if args.backend == "both" || args.backend == "etcd" {
        // etcd's data directory is a temporary one on the same filesystem as the default tmp;
        // FLOTILLA_BENCH_TMP can point TMPDIR elsewhere to keep both on one disk.
        let server = EtcdServer::start().await?;
        let store: SharedStore = Arc::new(server.connect().await?);
        results.push(("etcd", run_backend(store, &args).await?));
    }

    println!("{}", report(&args, &fsync, &results));
    Ok(())
}

async fn run_backend(store: SharedStore, args: &StoreBenchArgs) -> anyhow::Result<Figures> {
    let name = store.backend();
    let value = Bytes::from(vec![b'x'; args.value_bytes]);
    let mut figures = Figures::default();

    // One writer.
    let (rate, latencies) =
        serial_creates(&store, "/bench/serial/", args.serial_writes, &value).await?;
    figures.serial_rate = rate;
    figures.serial_p50_us = latencies.value_at_quantile(0.5);
    figures.serial_p99_us = latencies.value_at_quantile(0.99);
    eprintln!(
        "{name}: 1 writer: {:.0} writes/s, p50 {} µs, p99 {} µs",
        figures.serial_rate, figures.serial_p50_us, figures.serial_p99_us
    );

    // Many writers.
    let (rate, latencies) = concurrent_creates(
        &store,
        "/bench/concurrent/",
        args.writers,
        args.concurrent_writes,
        &value,
    )
    .await?;
    figures.concurrent_rate = rate;
    figures.concurrent_p99_us = latencies.value_at_quantile(0.99);
    eprintln!(
        "{name}: {} writers: {:.0} writes/s, p99 {} µs",
        args.writers, figures.concurrent_rate, figures.concurrent_p99_us
    );

    // Range throughput: page through the prefix 500 keys at a time, from one snapshot.
    let prefix = "/bench/range/";
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let store = store.clone();
        let value = value.clone();
        let count = args.range_keys;
        let writers = args.writers;
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(writers) {
                store
                    .create(&format!("{prefix}{i:08}"), value.clone(), None)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let started = Instant::now();
    let mut ranged = 0usize;
    let rounds = 5;
    for _ in 0..rounds {
        let mut request = RangeRequest::prefix(prefix).limit(500);
        loop {
            let page = store.range(request.clone()).await?;
            ranged += page.kvs.len();
            match page.continue_from() {
                Some(next) => {
                    request = request.start(next).at(page.revision);
                }
                None => break,
            }
        }
    }
    anyhow::ensure!(
        ranged == rounds * args.range_keys,
        "ranged {ranged} keys, expected {}",
        rounds * args.range_keys
    );
    figures.range_keys_per_s = ranged as f64 / started.elapsed().as_secs_f64();
    eprintln!("{name}: range: {:.0} keys/s", figures.range_keys_per_s);

    // Watch fan-out: many watchers on one prefix, paced writes carrying their send time.
    let watch = watch_latency(&store, &WatchLoad::from(args)).await?;
    eprintln!(
        "{name}: watch: {} watchers, {} deliveries, {} missing, {} failed writes, p50 {} µs, p99 {} µs",
        args.watchers,
        watch.delivered,
        watch.missing,
        watch.failed_writes,
        watch.p50_us,
        watch.p99_us
    );
    figures.watch = watch;
    Ok(figures)
}

/// Creates `count` keys under `prefix` one after another; the rate and the latencies (µs).
pub(crate) async fn serial_creates(
    store: &SharedStore,
    prefix: &str,
    count: usize,
    value: &Bytes,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let mut latencies = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let outcome = store
            .create(&format!("{prefix}{i:08}"), value.clone(), None)
            .await?;
        anyhow::ensure!(outcome.applied(), "serial create {i} was not applied");
        latencies.record(t.elapsed().as_micros() as u64)?;
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), latencies))
}

/// Creates `total` keys under `prefix` from `writers` concurrent writers; the rate and the
/// latencies (µs).
pub(crate) async fn concurrent_creates(
    store: &SharedStore,
    prefix: &str,
    writers: usize,
    total: usize,
    value: &Bytes,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let per_writer = total.div_ceil(writers.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3)?;
            for i in 0..per_writer {
                let t = Instant::now();
                let outcome = store
                    .create(&format!("{prefix}{w:03}/{i:08}"), value.clone(), None)
                    .await?;
                anyhow::ensure!(outcome.applied(), "concurrent create was not applied");
                latencies.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let latencies = merge(tasks).await?;
    let rate = (per_writer * writers) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, latencies))
}

/// The latencies of every task, merged.
pub(crate) async fn merge(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new(3)?;
    for task in tasks {
        latencies.add(task.await??)?;
    }
    Ok(latencies)
}

/// The load of a watch fan-out run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchLoad {
    pub watchers: usize,
    /// Writes per second.
    pub rate: u64,
    pub seconds: u64,
    pub value_bytes: usize,
    /// How long watchers may still take once the writes are done.
    pub drain_seconds: u64,
}

impl From<&StoreBenchArgs> for WatchLoad {
    fn from(args: &StoreBenchArgs) -> Self {
        Self {
            watchers: args.watchers,
            rate: args.watch_rate,
            seconds: args.watch_seconds,
            value_bytes: args.watch_value_bytes,
            drain_seconds: args.watch_drain_seconds,
        }
    }
}

/// What the watch phase measured.
#[derive(Debug, Default)]
pub(crate) struct WatchFigures {
    pub p50_us: u64,
    pub p99_us: u64,
    pub delivered: u64,
    pub missing: u64,
    pub failed_writes: u64,
}

/// Store watchers on one prefix while writes carrying their send time run at a steady rate.
pub(crate) async fn watch_latency(
    store: &SharedStore,
    load: &WatchLoad,
) -> anyhow::Result<WatchFigures> {
    let prefix = "/bench/watch/";
    let epoch = Instant::now();
    let writes = (load.rate * load.seconds) as usize;
    // Watchers stop once they have every acknowledged write, or at the deadline; what they
    // miss is reported, not hidden.
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(load.seconds + load.drain_seconds);
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(writes);
    let mut watchers = Vec::new();
    for _ in 0..load.watchers {
        let mut stream = store.watch(prefix, 0).await?;
        let mut expected = expected_rx.clone();
        watchers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3)?;
            let mut seen = 0usize;
            while seen < *expected.borrow_and_update() {
                let event = tokio::select! {
                    event = tokio::time::timeout_at(deadline, stream.next()) => match event {
                        Ok(Some(event)) => event?,
                        _ => break,
                    },
                    _ = expected.changed() => continue,
                };
                let sent = u64::from_le_bytes(event.kv.value[..8].try_into()?);
                let now = epoch.elapsed().as_micros() as u64;
                latencies.record(now.saturating_sub(sent))?;
                seen += 1;
            }
            anyhow::Ok((latencies, seen))
        }));
    }
    // Each write is its own task so the rate holds even when one write takes longer than the
    // interval (a write waits for an fsync).
    let interval = Duration::from_nanos(1_000_000_000 / load.rate.max(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let padding = Bytes::from(vec![b'w'; load.value_bytes.saturating_sub(8)]);
    let mut writers = Vec::with_capacity(writes);
    for i in 0..writes {
        tick.tick().await;
        let store = store.clone();
        let padding = padding.clone();
        writers.push(tokio::spawn(async move {
            let mut value = Vec::with_capacity(8 + padding.len());
            value.extend_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
            value.extend_from_slice(&padding);
            store
                .put(&format!("{prefix}{:04}", i % 100), Bytes::from(value), None)
                .await
        }));
    }
    let mut figures = WatchFigures::default();
    for writer in writers {
        if let Err(e) = writer.await? {
            if figures.failed_writes == 0 {
                eprintln!(
                    "{}: a write failed during the watch benchmark: {e}",
                    store.backend()
                );
            }
            figures.failed_writes += 1;
        }
    }
    let acknowledged = writes - figures.failed_writes as usize;
    let _ = expected_tx.send(acknowledged);
    let mut latencies = Histogram::<u64>::new(3)?;
    for watcher in watchers {
        let (histogram, seen) = watcher.await??;
        latencies.add(histogram)?;
        figures.delivered += seen as u64;
        figures.missing += acknowledged.saturating_sub(seen) as u64;
    }
    figures.p50_us = latencies.value_at_quantile(0.5);
    figures.p99_us = latencies.value_at_quantile(0.99);
    Ok(figures)
}

/// A scratch directory for a benchmark's data inside `dir` (default: the current directory),
/// removed when dropped.
pub(crate) fn scratch_dir(dir: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let base = match dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_dir()?,
    };
    tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a scratch directory in {}", base.display()))
}

/// fdatasync latency of the disk under `dir`, for the report.
pub(crate) fn measure_fsync(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0u8; 4096];
    let mut histogram = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_data()?;
        histogram.record(t.elapsed().as_micros() as u64)?;
    }
    std::fs::remove_file(path)?;
    Ok(histogram)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{:.1} GiB", kb as f64 / 1048576.0),
        );
    format!("{cpu}, {cores} cores, {memory} RAM")
}

/// The first lines of every report: the machine and its disk.
pub(crate) fn report_header(fsync: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}", machine());
    let _ = writeln!(
        out,
        "Disk fdatasync (4 KiB): p50 {} µs, p99 {} µs",
        fsync.value_at_quantile(0.5),
        fsync.value_at_quantile(0.99)
    );
    out
}

fn report(args: &StoreBenchArgs, fsync: &Histogram<u64>, results: &[(&str, Figures)]) -> String {
    let mut out = report_header(fsync);
    let _ = writeln!(
        out,
        "Values {} bytes; {} serial writes; {} writes over {} writers; {} keys ranged 5x in pages of 500; {} watchers at {} writes/s of {}-byte values for {} s.\n",
        args.value_bytes,
        args.serial_writes,
        args.concurrent_writes,
        args.writers,
        args.range_keys,
        args.watchers,
        args.watch_rate,
        args.watch_value_bytes,
        args.watch_seconds
    );
    let _ = writeln!(
        out,
        "Watch latency is from the write being issued to the event reaching the watcher, so it includes the write's commit.\n"
    );
    let _ = writeln!(
        out,
        "| backend | 1 writer (writes/s) | p50 / p99 (µs) | {} writers (writes/s) | p99 (µs) | range (keys/s) | watch p50 / p99 (µs) | deliveries (missing) | failed writes |",
        args.writers
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (name, f) in results {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {} / {} | {:.0} | {} | {:.0} | {} / {} | {} ({}) | {} |",
            f.serial_rate,
            f.serial_p50_us,
            f.serial_p99_us,
            f.concurrent_rate,
            f.concurrent_p99_us,
            f.range_keys_per_s,
            f.watch.p50_us,
            f.watch.p99_us,
            f.watch.delivered,
            f.watch.missing,
            f.watch.failed_writes
        );
    }
    if let [(_, embedded), (_, etcd)] = results {
        let _ = writeln!(
            out,
            "\nembedded / etcd: 1 writer {:.2}x, {} writers {:.2}x, range {:.2}x",
            embedded.serial_rate / etcd.serial_rate,
            args.writers,
            embedded.concurrent_rate / etcd.concurrent_rate,
            embedded.range_keys_per_s / etcd.range_keys_per_s
        );
    }
    out
}

/// scheduler_perf's nodes, simulated: 4 cpu, 32Gi, 110 pods, over 10 zones, pods left unrun
/// (only their placement counts).
pub(crate) fn perf_nodes(count: usize) -> flotilla_node::simulate::Options {
    flotilla_node::simulate::Options {
        count,
        prefix: "node-".into(),
        cpu: "4".into(),
        memory: "32Gi".into(),
        pods: 110,
        zones: 10,
        lease_interval: Duration::from_secs(60),
        concurrency: 64,
        run_pods: false,
        ..Default::default()
    }
}

/// Waits up to 30 s until something accepts connections on `address`.
pub(crate) async fn wait_for_listener(address: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not listen on {address} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
    // its size.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
pub(crate) fn pin_thread(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: the set is built with the libc macros and passed with its own size.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restricts every thread of process `pid` to `cpus`. Threads it starts later inherit the
/// affinity of the thread that starts them; the pass is made twice so a thread started
/// during the first is caught by the second.
pub(crate) fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    for _ in 0..2 {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
            match pin_thread(tid, cpus) {
                Ok(()) => {}
                // The thread ended between the listing and the call.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot pin thread {tid}")),
            }
        }
    }
    Ok(())
}

/// Makes a child process start restricted to `cpus` (its threads and children inherit it).
pub(crate) fn pin_child(command: &mut tokio::process::Command, cpus: Vec<usize>) {
    // SAFETY: the closure only calls sched_setaffinity, which is async-signal-safe, and
    // allocates nothing (the set is built from the captured vector without growing it).
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || pin_thread(0, &cpus));
    }
}
