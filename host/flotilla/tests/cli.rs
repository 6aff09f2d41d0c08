//! The `flotilla` binary as a user runs it: `up` serves health on the embedded store and stops
//! cleanly on SIGTERM, refuses a data directory in use, `server` runs on a real etcd, and the
//! store benchmark produces its report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use flotilla_store::testing::{EtcdServer, etcd_tests_enabled};
use flotilla_store::{Store, StoreError, StoreExt};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// A running `flotilla` process and the address it printed.
struct Running {
    child: Child,
    address: String,
    output: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `flotilla ARGS --listen 127.0.0.1:0` and waits for the line naming its address.
fn start(args: &[&str]) -> Running {
    let mut child = Command::new(FLOTILLA)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flotilla");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let address = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("flotilla exited early; printed {output:?}"))
            .unwrap();
        output.push(line.clone());
        if let Some(rest) = line.strip_prefix("flotilla: serving on http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running {
        child,
        address,
        output,
    }
}

fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn terminate(running: &mut Running) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    running.child.wait().unwrap()
}

#[test]
fn up_serves_health_on_the_embedded_store_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = start(&["up", "--data-dir", data.to_str().unwrap()]);
    assert!(
        up.output[0].contains("store embedded in") && up.output[0].contains("at revision 1"),
        "{:?}",
        up.output
    );
    let health = http_get(&up.address, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");
    assert!(http_get(&up.address, "/livez").starts_with("HTTP/1.1 200"));
    assert!(data.join("store.redb").exists());

    // A second cluster on the same data directory is refused with a clear message.
    let second = Command::new(FLOTILLA)
        .args([
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already open"), "{stderr}");

    let status = terminate(&mut up);
    assert!(status.success(), "{status}");
}

#[test]
fn server_refuses_an_unknown_datastore() {
    let output = Command::new(FLOTILLA)
        .args(["server", "--datastore", "postgres://db"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("etcd://host:port"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_runs_on_etcd() {
    if !etcd_tests_enabled() {
        eprintln!("etcd tests are disabled: set FLOTILLA_ETCD_TESTS=1 to run them");
        return;
    }
    let etcd = EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = etcd.datastore_flag();
    let mut server = tokio::task::spawn_blocking(move || {
        start(&[
            "server",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--datastore",
            &flag,
            "--compaction-window",
            "1",
        ])
    })
    .await
    .unwrap();
    assert!(
        server.output[0].contains("store on etcd"),
        "{:?}",
        server.output
    );
    let health = http_get(&server.address, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // The server compacts etcd's history older than its window.
    let store = etcd.connect().await.unwrap();
    let first = store.put("/x", "1".into(), None).await.unwrap().revision();
    store.put("/x", "2".into(), None).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match store.get("/x", Some(first)).await {
            Err(StoreError::Compacted { .. }) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            other => panic!("etcd was not compacted: {other:?}"),
        }
    }

    // With etcd gone, health says so instead of lying.
    drop(etcd);
    let health = http_get(&server.address, "/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("store:"), "{health}");
    terminate(&mut server);
}

#[test]
fn store_benchmark_reports_both_backends() {
    let backend = if etcd_tests_enabled() {
        "both"
    } else {
        "embedded"
    };
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(FLOTILLA)
        .args(["bench", "store", "--backend", backend])
        .args([
            "--serial-writes",
            "20",
            "--concurrent-writes",
            "128",
            "--writers",
            "8",
        ])
        .args([
            "--range-keys",
            "200",
            "--watchers",
            "10",
            "--watch-rate",
            "200",
        ])
        .args([
            "--watch-seconds",
            "1",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Disk fdatasync"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| embedded |"))
        .unwrap_or_else(|| panic!("no embedded row in {stdout}"));
    // Every watcher saw every write: 10 watchers x 200 writes, none missing.
    assert!(row.ends_with("| 2000 (0) | 0 |"), "{row}");
    if backend == "both" {
        let row = stdout.lines().find(|l| l.starts_with("| etcd |")).unwrap();
        assert!(row.ends_with("| 2000 (0) | 0 |"), "{row}");
        assert!(stdout.contains("embedded / etcd"), "{stdout}");
    }
    // The scratch data is removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Runs the real kubectl against `server`, with an empty kubeconfig so nothing else leaks in.
fn kubectl(server: &str, kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .arg(format!("--server=http://{server}"))
        .args(args)
        .output()
        .expect("kubectl is on the machine image (/usr/bin/kubectl); it must be installed");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs kubectl and returns its output, failing the test if kubectl fails.
fn kubectl_ok(server: &str, kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl(server, kubeconfig, args);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

/// `flotilla up` in a temporary directory, and an empty kubeconfig for kubectl to use with it.
fn cluster_for_kubectl() -> (tempfile::TempDir, Running, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let up = start(&[
        "up",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "").unwrap();
    (dir, up, kubeconfig)
}

#[test]
fn kubectl_drives_the_api_server_in_up() {
    let (dir, up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&up.address, &kubeconfig, args);

    let version: serde_json::Value =
        serde_json::from_str(&run(&["version", "-o", "json"])).unwrap();
    assert_eq!(version["serverVersion"]["minor"], "32");
    let resources = run(&["api-resources"]);
    assert!(
        resources
            .lines()
            .any(|l| l.starts_with("configmaps") && l.contains(" cm ")),
        "{resources}"
    );

    let namespace = dir.path().join("ns.json");
    std::fs::write(
        &namespace,
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo"}}"#,
    )
    .unwrap();
    assert_eq!(
        run(&[
            "create",
            "--validate=false",
            "-f",
            namespace.to_str().unwrap()
        ])
        .trim(),
        "namespace/demo created"
    );
    let configmap = dir.path().join("cm.yaml");
    std::fs::write(
        &configmap,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: demo\n  labels: {app: web}\ndata:\n  k: v\n",
    )
    .unwrap();
    assert_eq!(
        run(&[
            "create",
            "--validate=false",
            "-f",
            configmap.to_str().unwrap()
        ])
        .trim(),
        "configmap/app created"
    );

    assert_eq!(
        run(&["get", "cm", "-n", "demo", "-o", "name"]).trim(),
        "configmap/app"
    );
    let selected: serde_json::Value = serde_json::from_str(&run(&[
        "get",
        "configmaps",
        "-n",
        "demo",
        "-l",
        "app=web",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(selected["items"][0]["data"]["k"], "v");
    assert_eq!(
        run(&["get", "cm", "-n", "demo", "-l", "app=db", "-o", "name"]).trim(),
        ""
    );
    assert_eq!(
        run(&["get", "cm", "-A", "-o", "name"]).trim(),
        "configmap/app"
    );

    // A duplicate is refused with Kubernetes' message.
    let (ok, _, stderr) = kubectl(
        &up.address,
        &kubeconfig,
        &[
            "create",
            "--validate=false",
            "-f",
            configmap.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("configmaps \"app\" already exists"),
        "{stderr}"
    );

    assert_eq!(
        run(&["delete", "cm", "app", "-n", "demo"]).trim(),
        "configmap \"app\" deleted"
    );
    assert_eq!(run(&["get", "cm", "-n", "demo", "-o", "name"]).trim(), "");
}

#[test]
fn the_official_python_client_works_against_up() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(&[
        "up",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/client_test.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(format!("http://{}", up.address))
        .output()
        .expect("python3 runs; scripts/deps installs the kubernetes client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("python client: ok"), "{stdout}{stderr}");
}

#[test]
fn kubectl_get_watch_prints_each_change() {
    let (dir, up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&up.address, &kubeconfig, args);
    let manifest = dir.path().join("objects.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo"}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"demo"},"spec":{"containers":[{"name":"c","image":"x"}]}}]}"#,
    )
    .unwrap();
    run(&[
        "create",
        "--validate=false",
        "-f",
        manifest.to_str().unwrap(),
    ]);

    // get -w: table rows for each change, with the event type.
    let mut watcher = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .arg(format!("--server=http://{}", up.address))
        .args(["get", "pods", "-n", "demo", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_event = || {
        let line = lines_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "kubectl get -w printed nothing in time: {}",
                    std::fs::read_to_string(dir.path().join("watch.err")).unwrap_or_default()
                )
            });
        line.split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(next_event(), "EVENT NAME READY STATUS");
    assert_eq!(next_event(), "ADDED web 0/1 Pending");
    run(&["label", "pod", "web", "-n", "demo", "watched=yes"]);
    assert_eq!(next_event(), "MODIFIED web 0/1 Pending");
    run(&["delete", "pod", "web", "-n", "demo"]);
    assert_eq!(next_event(), "DELETED web 0/1 Pending");
    let _ = watcher.kill();
    let _ = watcher.wait();
}
