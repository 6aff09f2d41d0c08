//! The `flotilla` binary as a user runs it: `up` serves health on the embedded store and stops
//! cleanly on SIGTERM, refuses a data directory in use, `server` runs on a real etcd, and the
//! store benchmark produces its report.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flotilla_store::testing::{EtcdServer, etcd_tests_enabled};
use flotilla_store::{Store, StoreError, StoreExt};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// A running `flotilla` process, the URL it serves on and the admin kubeconfig it wrote.
struct Running {
    child: Child,
    url: String,
    kubeconfig: PathBuf,
    output: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `flotilla ARGS --listen 127.0.0.1:0` and waits for the lines naming its URL and its
/// kubeconfig.
fn start(args: &[&str]) -> Running {
    start_with(Command::new(FLOTILLA), args, "127.0.0.1:0")
}

/// Starts `command ARGS --listen LISTEN` (`command` runs flotilla) and waits for the lines
/// naming its URL and its kubeconfig.
fn start_with(mut command: Command, args: &[&str], listen: &str) -> Running {
    let mut child = command
        .args(args)
        .args(["--listen", listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flotilla");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let mut url = None;
    let kubeconfig = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("flotilla exited early; printed {output:?}"))
            .unwrap();
        output.push(line.clone());
        if let Some(rest) = line.strip_prefix("flotilla: serving on ") {
            url = Some(rest.split_whitespace().next().unwrap().to_owned());
        }
        if let Some(path) = line.strip_prefix("flotilla: admin kubeconfig: ") {
            break PathBuf::from(path);
        }
    };
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Running {
        child,
        url: url.expect("the URL is printed before the kubeconfig"),
        kubeconfig,
        output,
    }
}

/// The CA and token of a kubeconfig that `flotilla` wrote.
fn credentials(kubeconfig: &Path) -> (Option<String>, String) {
    let config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let ca = config["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .map(|data| {
            use base64::Engine;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            String::from_utf8(pem).unwrap()
        });
    let token = config["users"][0]["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (ca, token)
}

/// GETs `path` from a running server, trusting only the CA in its kubeconfig, with or without
/// its admin token. Returns the status code and the body.
fn get(running: &Running, path: &str, with_token: bool) -> (u16, String) {
    let url = format!("{}{path}", running.url);
    let (ca, token) = credentials(&running.kubeconfig);
    // A thread of its own, so async tests may call it too.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut client = reqwest::Client::builder().tls_built_in_root_certs(false);
            if let Some(ca) = ca {
                client = client
                    .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
            }
            let mut request = client.build().unwrap().get(&url);
            if with_token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("the server answers");
            (response.status().as_u16(), response.text().await.unwrap())
        })
    })
    .join()
    .unwrap()
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
    assert!(up.url.starts_with("https://127.0.0.1:"), "{}", up.url);
    // Health and the version answer anyone; the API only a known token, over TLS that the
    // kubeconfig's CA verifies.
    assert_eq!(get(&up, "/healthz", false), (200, "ok".to_owned()));
    assert_eq!(get(&up, "/livez", false).0, 200);
    assert_eq!(get(&up, "/version", false).0, 200);
    let (code, body) = get(&up, "/api/v1/namespaces", false);
    assert_eq!(code, 401, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Unauthorized");
    let (code, body) = get(&up, "/api/v1/namespaces", true);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"kube-system\""), "{body}");
    assert!(data.join("store.redb").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&up.kubeconfig)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the kubeconfig holds a secret: owner only");

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

    // A restart keeps the CA and the token: what the first kubeconfig holds still works.
    let first = credentials(&up.kubeconfig);
    let again = start(&["up", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(credentials(&again.kubeconfig), first);
    assert_eq!(get(&again, "/api/v1/namespaces/default", true).0, 200);
}

#[test]
fn plain_http_is_only_served_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Command::new(FLOTILLA)
        .args(["up", "--plain-http", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("only allowed on a loopback address"),
        "{stderr}"
    );

    let up = start(&["up", "--plain-http", "--data-dir", data.to_str().unwrap()]);
    assert!(up.url.starts_with("http://127.0.0.1:"), "{}", up.url);
    assert_eq!(get(&up, "/api/v1/namespaces", false).0, 401);
    assert_eq!(get(&up, "/api/v1/namespaces", true).0, 200);
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
    let data = dir.path().to_str().unwrap().to_owned();
    let flag = etcd.datastore_flag();
    let mut server = tokio::task::spawn_blocking(move || {
        start(&[
            "server",
            "--data-dir",
            &data,
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
    assert_eq!(get(&server, "/healthz", false).0, 200);

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
    let (code, health) = get(&server, "/healthz", false);
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("store:"), "{health}");
    // A request that cannot finish in the time it asked for is a 504 Timeout.
    let (code, body) = get(&server, "/api/v1/namespaces?timeout=1s", true);
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("\"Timeout\""), "{body}");
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

#[test]
fn api_benchmark_reports_creates_and_fan_out_next_to_etcd() {
    if !etcd_tests_enabled() {
        eprintln!("etcd tests are disabled: set FLOTILLA_ETCD_TESTS=1 to run them");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(FLOTILLA)
        .args(["bench", "api", "--backend", "both", "--dir"])
        .arg(dir.path())
        .args([
            "--serial-creates",
            "20",
            "--concurrent-creates",
            "64",
            "--clients",
            "4",
        ])
        .args([
            "--watchers",
            "6",
            "--watch-connections",
            "2",
            "--watch-rate",
            "100",
        ])
        .args(["--watch-seconds", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for row in [
        "| etcd raw put (peer) |",
        "| API server on embedded |",
        "| API server on etcd |",
    ] {
        assert!(stdout.contains(row), "{row} in {stdout}");
    }
    // Every watcher saw every write: 6 watchers x 100 writes, none missing, on both backends.
    let fan_out: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| API server on") && l.contains("| 600 (0) | 0 |"))
        .collect();
    assert_eq!(fan_out.len(), 2, "{stdout}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the scratch data is removed"
    );
}

/// A running `kubectl get -w`, and its output lines as they come.
struct KubectlWatch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    errors: PathBuf,
}

impl KubectlWatch {
    fn start(kubeconfig: &Path, args: &[&str], errors: PathBuf) -> Self {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            errors,
        }
    }

    /// The next line's words.
    fn next(&self) -> Vec<String> {
        let line = self
            .lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "kubectl get -w printed nothing in time: {}",
                    std::fs::read_to_string(&self.errors).unwrap_or_default()
                )
            });
        line.split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for KubectlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the real kubectl with the admin kubeconfig a server wrote, and nothing else.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
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
fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl(kubeconfig, args);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

/// `flotilla up` in a temporary directory, and the kubeconfig it wrote.
fn cluster_for_kubectl() -> (tempfile::TempDir, Running, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // No node agent: these tests place pods on simulated nodes, or on none.
    let up = start(&[
        "up",
        "--disable-agent",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let kubeconfig = up.kubeconfig.clone();
    (dir, up, kubeconfig)
}

#[test]
fn kubectl_drives_the_api_server_in_up() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);

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
        run(&["create", "-f", namespace.to_str().unwrap()]).trim(),
        "namespace/demo created"
    );
    let configmap = dir.path().join("cm.yaml");
    std::fs::write(
        &configmap,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: demo\n  labels: {app: web}\ndata:\n  k: v\n",
    )
    .unwrap();
    assert_eq!(
        run(&["create", "-f", configmap.to_str().unwrap()]).trim(),
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
    let (ok, _, stderr) = kubectl(&kubeconfig, &["create", "-f", configmap.to_str().unwrap()]);
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
fn kubectl_workflows_scale_describe_select_and_delete() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let manifest = dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {tier: front}
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web}
spec:
  containers:
  - name: web
    image: registry.example/web:1.0
",
    )
    .unwrap();
    let created = run(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(created.contains("deployment.apps/web created"), "{created}");

    // Tables with Kubernetes' columns, labels shown, YAML out.
    let table = run(&["get", "deploy", "-n", "shop", "--show-labels"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "LABELS"],
        "{table}"
    );
    assert!(table.contains("tier=front"), "{table}");
    let yaml = run(&["get", "deploy", "web", "-n", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("maxSurge: 25%"),
        "{yaml}"
    );

    // Scale through the scale subresource.
    assert_eq!(
        run(&["scale", "deployment", "web", "-n", "shop", "--replicas=3"]).trim(),
        "deployment.apps/web scaled"
    );
    assert_eq!(
        run(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );

    // Label, annotate, and patch both ways.
    run(&["label", "pod", "web-1", "-n", "shop", "stage=canary"]);
    run(&["annotate", "pod", "web-1", "-n", "shop", "owner=team-a"]);
    run(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReadySeconds":5}}"#,
    ]);
    run(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
    ]);
    let patched = run(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.minReadySeconds}/{.spec.replicas}",
    ]);
    assert_eq!(patched, "5/2");
    assert_eq!(
        run(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-l",
            "stage=canary",
            "--field-selector=status.phase=Pending",
            "-o",
            "name"
        ])
        .trim(),
        "pod/web-1"
    );
    assert_eq!(
        run(&[
            "get",
            "pods",
            "-n",
            "shop",
            "--field-selector=status.phase=Running",
            "-o",
            "name"
        ])
        .trim(),
        ""
    );

    // describe lists the pod's events.
    let uid = run(&[
        "get",
        "pod",
        "web-1",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        format!(
            r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"web-1.1","namespace":"shop"}},
            "involvedObject":{{"apiVersion":"v1","kind":"Pod","name":"web-1","namespace":"shop","uid":"{uid}"}},
            "reason":"Scheduled","message":"Successfully assigned shop/web-1 to node-a","type":"Normal",
            "source":{{"component":"default-scheduler"}},"count":1,
            "firstTimestamp":"2026-01-01T00:00:00Z","lastTimestamp":"2026-01-01T00:00:00Z"}}"#
        ),
    )
    .unwrap();
    run(&["create", "-f", event.to_str().unwrap()]);
    let described = run(&["describe", "pod", "web-1", "-n", "shop"]);
    assert!(described.contains("owner: team-a"), "{described}");
    assert!(described.contains("Events:"), "{described}");
    assert!(
        described.contains("Successfully assigned shop/web-1 to node-a"),
        "{described}"
    );

    // Deleting the namespace waits until everything in it, then it, is gone.
    let deleted = run(&["delete", "namespace", "shop", "--timeout=60s"]);
    assert_eq!(deleted.trim(), "namespace \"shop\" deleted");
    let (ok, _, stderr) = kubectl(&kubeconfig, &["get", "namespace", "shop"]);
    assert!(!ok && stderr.contains("not found"), "{stderr}");
    assert_eq!(run(&["get", "deploy", "-A", "-o", "name"]).trim(), "");
}

#[test]
fn kubectl_apply_diff_edit_set_and_explain() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let app = manifests.join("app.yaml");
    let deployment = |containers: &str, strategy: &str| {
        format!(
            "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  strategy:
{strategy}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
{containers}"
        )
    };
    let two_containers = "      - name: web
        image: registry.example/web:1.0
        env:
        - {name: A, value: \"1\"}
        - {name: B, value: \"2\"}
      - name: log
        image: registry.example/log:1.0
";
    let rolling = "    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1}";
    std::fs::write(&app, deployment(two_containers, rolling)).unwrap();
    std::fs::write(
        manifests.join("settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\ndata:\n  mode: fast\n",
    )
    .unwrap();
    let dir_arg = manifests.to_str().unwrap();
    let applied = run(&["apply", "-f", dir_arg]);
    assert!(applied.contains("deployment.apps/web created"), "{applied}");
    assert!(applied.contains("configmap/settings created"), "{applied}");

    // The manifest loses a container and an env var and switches strategy: the stored
    // deployment is what Kubernetes would store.
    let one_container = "      - name: web
        image: registry.example/web:1.0
        env:
        - {name: A, value: \"1\"}
";
    std::fs::write(&app, deployment(one_container, "    type: Recreate")).unwrap();
    let (ok, diff, _) = kubectl(&kubeconfig, &["diff", "-f", dir_arg]);
    assert!(!ok, "kubectl diff exits 1 when something would change");
    assert!(
        diff.contains("-      - name: log")
            || diff.contains("-  - name: log")
            || diff.contains("name: log"),
        "{diff}"
    );
    let applied = run(&["apply", "-f", dir_arg]);
    assert!(
        applied.contains("deployment.apps/web configured"),
        "{applied}"
    );
    assert!(
        applied.contains("configmap/settings unchanged"),
        "{applied}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&run(&["get", "deploy", "web", "-n", "shop", "-o", "json"])).unwrap();
    assert_eq!(
        stored["spec"]["strategy"],
        serde_json::json!({"type": "Recreate"})
    );
    let containers = stored["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers[0]["env"],
        serde_json::json!([{"name": "A", "value": "1"}])
    );
    let (ok, _, _) = kubectl(&kubeconfig, &["diff", "-f", dir_arg]);
    assert!(ok, "nothing left to change");

    // edit with a scripted editor, set image, rollout restart.
    let edited = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBE_EDITOR", "sed -i s/replicas:\\ 2/replicas:\\ 4/")
        .args(["edit", "deployment", "web", "-n", "shop"])
        .output()
        .unwrap();
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    run(&[
        "set",
        "image",
        "deployment/web",
        "-n",
        "shop",
        "web=registry.example/web:2.0",
    ]);
    run(&["rollout", "restart", "deployment/web", "-n", "shop"]);
    let summary = run(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    ]);
    let parts: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(parts[..2], ["4", "registry.example/web:2.0"], "{summary}");
    assert_eq!(parts.len(), 3, "restartedAt is set: {summary}");

    let explained = run(&["explain", "pod.spec.containers.env"]);
    assert!(explained.contains("FIELD: env <[]EnvVar>"), "{explained}");
    assert!(explained.contains("DESCRIPTION:"), "{explained}");
}

#[test]
fn kubectl_applies_a_custom_resource_definition_and_its_resources() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let crd = dir.path().join("crd.yaml");
    std::fs::write(
        &crd,
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Image, type: string, jsonPath: .spec.image}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec: {type: string}
              image: {type: string, default: cron.wasm}
",
    )
    .unwrap();
    let applied = run(&["apply", "-f", crd.to_str().unwrap()]);
    assert!(
        applied.contains(
            "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created"
        ),
        "{applied}"
    );

    let tab = dir.path().join("tab.yaml");
    let write_tab = |spec: &str| {
        std::fs::write(
            &tab,
            format!("apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: nightly\nspec:\n  cronSpec: \"{spec}\"\n"),
        )
        .unwrap()
    };
    write_tab("0 3 * * *");
    assert_eq!(
        run(&["apply", "-f", tab.to_str().unwrap()]).trim(),
        "crontab.stable.example.com/nightly created"
    );

    // get -w while it changes: the printer columns, on each event.
    let watch = KubectlWatch::start(
        &kubeconfig,
        &["get", "ct", "-w", "--output-watch-events"],
        dir.path().join("watch.err"),
    );
    let next = || watch.next();
    assert_eq!(next(), ["EVENT", "NAME", "SPEC", "IMAGE"]);
    assert_eq!(
        next(),
        ["ADDED", "nightly", "0", "3", "*", "*", "*", "cron.wasm"]
    );
    write_tab("0 4 * * *");
    assert_eq!(
        run(&["apply", "-f", tab.to_str().unwrap()]).trim(),
        "crontab.stable.example.com/nightly configured"
    );
    assert_eq!(
        next(),
        ["MODIFIED", "nightly", "0", "4", "*", "*", "*", "cron.wasm"]
    );
    drop(watch);

    // An invalid object is refused naming the field; deleting the definition takes its objects.
    std::fs::write(
        &tab,
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: broken\nspec: {}\n",
    )
    .unwrap();
    let (ok, _, stderr) = kubectl(&kubeconfig, &["apply", "-f", tab.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("spec.cronSpec: Required value"),
        "{stderr}"
    );
    run(&["delete", "-f", crd.to_str().unwrap(), "--timeout=60s"]);
    // kubectl may still have the resource in its discovery cache; the server has not.
    let (ok, _, stderr) = kubectl(&kubeconfig, &["get", "crontabs"]);
    assert!(
        !ok && (stderr.contains("doesn't have a resource type")
            || stderr.contains("could not find the requested resource")),
        "{stderr}"
    );
}

#[test]
fn kubectl_create_generators_send_protobuf_and_work() {
    let (_dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let commands: [(&[&str], &str); 7] = [
        (&["create", "namespace", "shop"], "namespace/shop created"),
        (
            &[
                "create",
                "deployment",
                "web",
                "--image=registry.example/web:1.0",
                "--replicas=2",
                "--port=8080",
                "-n",
                "shop",
            ],
            "deployment.apps/web created",
        ),
        (
            &[
                "create",
                "configmap",
                "settings",
                "--from-literal=mode=fast",
                "-n",
                "shop",
            ],
            "configmap/settings created",
        ),
        (
            &[
                "create",
                "secret",
                "generic",
                "creds",
                "--from-literal=password=s3cret",
                "-n",
                "shop",
            ],
            "secret/creds created",
        ),
        (
            &[
                "create",
                "service",
                "clusterip",
                "web",
                "--tcp=80:8080",
                "-n",
                "shop",
            ],
            "service/web created",
        ),
        (
            // In the default namespace: the object names none.
            &["create", "job", "once", "--image=registry.example/job:1"],
            "job.batch/once created",
        ),
        (
            &[
                "create",
                "cronjob",
                "tick",
                "--image=registry.example/tick:1",
                "--schedule=*/5 * * * *",
                "-n",
                "shop",
            ],
            "cronjob.batch/tick created",
        ),
    ];
    for (args, expected) in commands {
        assert_eq!(run(args).trim(), expected);
    }
    let deployment: serde_json::Value =
        serde_json::from_str(&run(&["get", "deploy", "web", "-n", "shop", "-o", "json"])).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/web:1.0");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        run(&[
            "get",
            "secret",
            "creds",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "czNjcmV0"
    );
    assert_eq!(
        run(&[
            "get",
            "svc",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "8080"
    );
    assert_eq!(
        run(&[
            "get",
            "cronjob",
            "tick",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.schedule}"
        ]),
        "*/5 * * * *"
    );
}

#[test]
fn kubectl_server_side_apply_conflicts_force_and_migration() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let manifest = dir.path().join("api.yaml");
    let write = |replicas: u32| {
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: api}}
  template:
    metadata:
      labels: {{app: api}}
    spec:
      containers:
      - name: api
        image: registry.example/api:1.0
"
            ),
        )
        .unwrap()
    };
    let path = manifest.to_str().unwrap();
    write(2);
    assert_eq!(
        run(&["apply", "--server-side", "-f", path]).trim(),
        "deployment.apps/api serverside-applied"
    );
    run(&[
        "patch",
        "deploy",
        "api",
        "--field-manager=autoscaler",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ]);
    write(3);
    let (ok, _, stderr) = kubectl(&kubeconfig, &["apply", "--server-side", "-f", path]);
    assert!(!ok, "a conflicting apply fails");
    assert!(
        stderr.contains(r#"conflict with "autoscaler""#) && stderr.contains(".spec.replicas"),
        "{stderr}"
    );
    run(&["apply", "--server-side", "--force-conflicts", "-f", path]);
    assert_eq!(
        run(&["get", "deploy", "api", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );

    // From client-side to server-side apply: kubectl hands the fields over, and a field the
    // manifest no longer has goes.
    let settings = dir.path().join("settings.yaml");
    std::fs::write(&settings, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n  level: info\n").unwrap();
    run(&["apply", "-f", settings.to_str().unwrap()]);
    std::fs::write(
        &settings,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n",
    )
    .unwrap();
    run(&["apply", "--server-side", "-f", settings.to_str().unwrap()]);
    let stored: serde_json::Value = serde_json::from_str(&run(&[
        "get",
        "cm",
        "settings",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    assert_eq!(stored["data"], serde_json::json!({"mode": "fast"}));
    let managers: Vec<&str> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"kubectl") && !managers.contains(&"kubectl-client-side-apply"),
        "{managers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_rust_client_lists_applies_and_watches() {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").to_str().unwrap().to_owned();
    let up =
        tokio::task::spawn_blocking(move || start(&["up", "--disable-agent", "--data-dir", &data]))
            .await
            .unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&up.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_owned()), "{names:?}");

    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let start_version = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = maps
        .watch(&WatchParams::default(), &start_version)
        .await
        .unwrap()
        .boxed();
    let applied = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "from-rust"}, "data": {"k": "v"},
    });
    let params = PatchParams::apply("rust-test");
    let stored = maps
        .patch("from-rust", &params, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(stored.data.unwrap()["k"], "v");
    let managers: Vec<String> = stored
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["rust-test"]);

    let event = tokio::time::timeout(std::time::Duration::from_secs(20), events.try_next())
        .await
        .expect("the watch delivers")
        .unwrap()
        .expect("the watch continues");
    match event {
        WatchEvent::Added(map) => assert_eq!(map.metadata.name.as_deref(), Some("from-rust")),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[test]
fn the_official_python_client_works_against_up() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(&[
        "up",
        "--disable-agent",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/client_test.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&up.kubeconfig)
        .output()
        .expect("python3 runs; scripts/deps installs the kubernetes client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("python client: ok"), "{stdout}{stderr}");
}

#[test]
fn kubectl_get_watch_prints_each_change() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let manifest = dir.path().join("objects.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo"}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"demo"},"spec":{"containers":[{"name":"c","image":"x"}]}}]}"#,
    )
    .unwrap();
    // kubectl validates a `kind: List` on the client, against /openapi/v2.
    run(&["create", "-f", manifest.to_str().unwrap()]);
    let typo = dir.path().join("typo.json");
    std::fs::write(
        &typo,
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"t","namespace":"demo"},"dataa":{}}]}"#,
    )
    .unwrap();
    let (ok, _, stderr) = kubectl(&kubeconfig, &["create", "-f", typo.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains(r#"unknown field "dataa""#),
        "{stderr}"
    );

    // get -w: table rows for each change, with the event type.
    let watch = KubectlWatch::start(
        &kubeconfig,
        &["get", "pods", "-n", "demo", "-w", "--output-watch-events"],
        dir.path().join("watch.err"),
    );
    let next_event = || watch.next()[..4].join(" ");
    assert_eq!(next_event(), "EVENT NAME READY STATUS");
    assert_eq!(next_event(), "ADDED web 0/1 Pending");
    run(&["label", "pod", "web", "-n", "demo", "watched=yes"]);
    assert_eq!(next_event(), "MODIFIED web 0/1 Pending");
    run(&["delete", "pod", "web", "-n", "demo"]);
    assert_eq!(next_event(), "DELETED web 0/1 Pending");
}

/// `flotilla agent --simulate` in its own process, until dropped.
fn simulated_nodes(kubeconfig: &Path, args: &[&str]) -> Running {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut running = agent_process(&all, "simulated nodes running");
    running.kubeconfig = kubeconfig.to_owned();
    running
}

/// `flotilla agent ARGS` in its own process, once it printed a line ending in `ready`.
fn agent_process(args: &[&str], ready: &str) -> Running {
    agent_process_with(Command::new(FLOTILLA), args, ready)
}

/// [`agent_process`] run by `command` (which runs flotilla).
fn agent_process_with(mut command: Command, args: &[&str], ready: &str) -> Running {
    let mut child = command
        .arg("agent")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flotilla agent");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("flotilla agent exited early; printed {output:?}"))
            .unwrap();
        output.push(line.clone());
        if line.contains(ready) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Running {
        child,
        url: String::new(),
        kubeconfig: PathBuf::new(),
        output,
    }
}

/// Creates a pod of app `web` for the `zones` scheduler and returns the zone it was placed in.
fn place_web_pod(kubeconfig: &Path, name: &str) -> (String, String) {
    kubectl_ok(
        kubeconfig,
        &[
            "run",
            name,
            "--image=web.wasm",
            "--labels=app=web",
            r#"--overrides={"spec":{"schedulerName":"zones"}}"#,
        ],
    );
    kubectl_ok(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=30s",
        ],
    );
    let node = kubectl_ok(
        kubeconfig,
        &["get", "pod", name, "-o", "jsonpath={.spec.nodeName}"],
    );
    let zone = kubectl_ok(
        kubeconfig,
        &[
            "get",
            "node",
            &node,
            "-o",
            r"jsonpath={.metadata.labels.topology\.kubernetes\.io/zone}",
        ],
    );
    (node, zone)
}

/// Waits until the scheduler in `up` reports running `digest` for a WasmPlugin.
fn wait_for_digest(kubeconfig: &Path, plugin: &str, digest: &str) {
    wait_for_component_digest(kubeconfig, plugin, "scheduler/up", digest);
}

/// Waits until `component` reports running `digest` on the WasmPlugin `plugin`.
fn wait_for_component_digest(kubeconfig: &Path, plugin: &str, component: &str, digest: &str) {
    kubectl_ok(
        kubeconfig,
        &[
            "wait",
            &format!("--for=jsonpath={{.status.components['{component}'].digest}}={digest}"),
            &format!("wasmplugin/{plugin}"),
            "--timeout=30s",
        ],
    );
}

#[test]
fn a_policy_from_examples_is_pushed_and_hot_swapped_on_a_live_cluster() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let _nodes = simulated_nodes(
        &kubeconfig,
        // Small nodes, so one pod's share of a node shows in the (integer) scores.
        &[
            "--simulate",
            "6",
            "--zones",
            "3",
            "--node-prefix",
            "n-",
            "--cpu",
            "1",
            "--memory",
            "2Gi",
        ],
    );
    let nodes = kubectl_ok(&kubeconfig, &["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 6, "{nodes}");

    // A profile whose scoring plugin packs pods (MostAllocated, built in).
    let packing = flotilla_plugin::digest(flotilla_builtins::find("most-allocated").unwrap().wasm);
    let manifest = dir.path().join("zones.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: plugins.flotilla.dev/v1alpha1
kind: WasmPlugin
metadata:
  name: placement
spec:
  kind: scheduler-policy
  module:
    digest: {packing}
    builtin: most-allocated
---
apiVersion: plugins.flotilla.dev/v1alpha1
kind: SchedulerProfile
metadata:
  name: zones
spec:
  plugins:
    - name: node-resources-fit
    - name: placement
      weight: 1
"
        ),
    )
    .unwrap();
    kubectl_ok(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    wait_for_digest(&kubeconfig, "placement", &packing);
    let packed: Vec<(String, String)> = (0..3)
        .map(|i| place_web_pod(&kubeconfig, &format!("web-{i}")))
        .collect();
    assert!(
        packed.iter().all(|(node, _)| *node == packed[0].0),
        "MostAllocated packs: {packed:?}"
    );

    // Push the zone-spread example over it: a hot swap, nothing restarts.
    let wasm = builtin_module(dir.path(), "zone-spread");
    let output = Command::new(FLOTILLA)
        .args(["plugin", "push"])
        .arg(&wasm)
        .args([
            "--name",
            "placement",
            "--kind",
            "scheduler-policy",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let spreading = flotilla_plugin::digest(&std::fs::read(&wasm).unwrap());
    assert_eq!(
        printed.trim(),
        format!("wasmplugin.plugins.flotilla.dev/placement runs {spreading}")
    );
    wait_for_digest(&kubeconfig, "placement", &spreading);
    let listed = kubectl_ok(&kubeconfig, &["get", "wasmplugin", "placement"]);
    assert!(listed.contains(&spreading), "{listed}");
    assert!(
        listed.lines().nth(1).unwrap().contains("True"),
        "Ready: {listed}"
    );

    // New pods of the app now go to the zones that have none of it.
    let (_, first) = place_web_pod(&kubeconfig, "web-3");
    let (_, second) = place_web_pod(&kubeconfig, "web-4");
    let mut zones = vec![packed[0].1.clone(), first, second];
    zones.sort();
    zones.dedup();
    assert_eq!(
        zones.len(),
        3,
        "one web pod zone before the swap, two new ones after: {zones:?}"
    );
    let events = kubectl_ok(
        &kubeconfig,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web-4",
        ],
    );
    assert!(events.contains("Scheduled"), "{events}");
}

/// `flotilla bench ARGS --dir DIR` run to success: its report.
fn bench_report(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(FLOTILLA)
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The report's table row that starts with `start`.
fn report_row<'a>(report: &'a str, start: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("{start} in {report}"))
}

#[test]
fn schedule_benchmark_reports_wasm_next_to_native() {
    let stdout = bench_report(&["schedule", "--nodes", "20", "--pods", "40"]);
    for row in [
        "| WASM |",
        "| native (peer) |",
        "| WASM, scoring hot-swapped at 50% |",
    ] {
        let line = report_row(&stdout, row);
        // Every pod bound, none failed, no binding refused.
        assert!(line.contains("| 40 | 0 | 0 |"), "{line}");
    }
    assert!(stdout.contains("\nHot swap: "), "{stdout}");
}

#[test]
fn deployment_benchmark_reports_the_controllers_next_to_direct_creates() {
    let stdout = bench_report(&["deployment", "--nodes", "10", "--replicas", "60"]);
    for row in [
        "| Deployment (WASM controllers) |",
        "| pods created by the clients (peer) |",
    ] {
        let line = report_row(&stdout, row);
        let rate: f64 = line.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(rate > 0.0, "{line}");
    }
}

/// `bench reconcile` times steady-state reconciles of the WASM ReplicaSet controller and of
/// the same crate linked natively (each must write nothing), for every size asked.
#[test]
fn reconcile_benchmark_reports_wasm_next_to_native() {
    let stdout = bench_report(&["reconcile", "--pods", "5,30", "--rounds", "3"]);
    for size in ["| 5 |", "| 30 |"] {
        let line = report_row(&stdout, size);
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for cell in [cells[2], cells[3]] {
            let p50: f64 = cell.split(" / ").next().unwrap().parse().unwrap();
            assert!(p50 > 0.0, "{line}");
        }
        let ratio: f64 = cells[4].parse().unwrap();
        assert!(ratio > 0.0, "{line}");
    }
}

/// Polls `probe` until it gives a value or `limit` passes, then fails naming `what`.
fn eventually<T>(
    limit: std::time::Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn pod_json(kubeconfig: &Path, name: &str) -> serde_json::Value {
    object_json(kubeconfig, "pod", name)
}

/// `flotilla up` with its node agent on a pod CIDR of its own (tests run side by side).
fn cluster_with_node(dir: &Path) -> (Running, PathBuf, String) {
    cluster_with_node_and(dir, &[])
}

/// [`cluster_with_node`] with more arguments to `up`.
fn cluster_with_node_and(dir: &Path, more: &[&str]) -> (Running, PathBuf, String) {
    // Every cluster's pods bind addresses of their own.
    cluster_with_node_on(dir, cluster_cidr(), more)
}

/// [`cluster_with_node_and`] with the node's pods on `cidr`.
fn cluster_with_node_on(dir: &Path, cidr: String, more: &[&str]) -> (Running, PathBuf, String) {
    let data = dir.join("data");
    let mut args = vec![
        "up",
        "--node-name",
        "node-a",
        "--pod-cidr",
        &cidr,
        "--agent-port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let up = start(&args);
    let kubeconfig = up.kubeconfig.clone();
    (up, kubeconfig, cidr)
}

fn get_http(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn up_runs_pods_as_wasi_components_on_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let hello = modules.join("hello_http.wasm");
    std::fs::write(&hello, flotilla_builtins::find("hello-http").unwrap().wasm).unwrap();
    let workload = modules.join("workload.wasm");
    std::fs::write(&workload, flotilla_builtins::find("workload").unwrap().wasm).unwrap();
    let (hello, workload) = (hello.display(), workload.display());

    // The node registered with its pod CIDR and is Ready; its Lease is renewed.
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });
    run(&[
        "wait",
        "--for=condition=Ready",
        "node/node-a",
        "--timeout=60s",
    ]);
    let node: serde_json::Value =
        serde_json::from_str(&run(&["get", "node", "node-a", "-o", "json"])).unwrap();
    assert_eq!(node["spec"]["podCIDR"], cidr.as_str());
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "wasip2");
    assert!(node["status"]["allocatable"]["cpu"].is_string(), "{node}");
    eventually(
        std::time::Duration::from_secs(30),
        "the node's lease",
        || {
            kubectl(
                &kubeconfig,
                &["get", "lease", "node-a", "-n", "kube-node-lease"],
            )
            .0
            .then_some(())
        },
    );

    let manifest = dir.path().join("pods.yaml");
    let mut yaml = String::new();
    for n in 0..3 {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hello-{n}, labels: {{app: hello}}}}\nspec:\n  containers:\n  - name: web\n    image: {hello}\n    ports: [{{containerPort: 8080}}]\n    env: [{{name: GREETING_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n---\n"
        ));
    }
    yaml.push_str(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hi, mode: fast}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hungry}}
spec:
  restartPolicy: Never
  containers:
  - name: eat
    image: {workload}
    args: [alloc, "64"]
    resources: {{limits: {{memory: 32Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: steps}}
spec:
  restartPolicy: Never
  initContainers:
  - name: prep
    image: {workload}
    args: [write, /work/ready, prepared]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: main
    image: {workload}
    args: [cat, /work/ready, print, "", cat, /config/greeting, print, "", env, MODE, write, /config/x, "y"]
    env: [{{name: MODE, valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}}}]
    volumeMounts: [{{name: work, mountPath: /work}}, {{name: cfg, mountPath: /config, readOnly: true}}]
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: settings}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  restartPolicy: OnFailure
  containers:
  - name: boom
    image: {workload}
    args: [eprint, boom, exit, "1"]
"#
    ));
    std::fs::write(&manifest, yaml).unwrap();
    run(&["apply", "-f", manifest.to_str().unwrap()]);

    // wasi:http handlers answer on every pod's own IP.
    run(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=hello",
        "--timeout=60s",
    ]);
    let mut addresses = Vec::new();
    for n in 0..3 {
        let pod = pod_json(&kubeconfig, &format!("hello-{n}"));
        let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
        assert!(
            ip.starts_with(cidr.trim_end_matches("0/24")),
            "{ip} is in {cidr}"
        );
        assert_eq!(pod["status"]["phase"], "Running");
        let answer = get_http(&format!("{ip}:8080")).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with(&format!("Hello from hello-{n}!\n")),
            "{answer}"
        );
        addresses.push(format!("{ip}:8080"));
    }
    let unique: std::collections::BTreeSet<_> = addresses.iter().collect();
    assert_eq!(unique.len(), 3, "every pod has its own IP: {addresses:?}");

    // Past its memory limit a container ends OOMKilled.
    run(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].state.terminated.reason}=OOMKilled",
        "pod/hungry",
        "--timeout=60s",
    ]);
    let hungry = pod_json(&kubeconfig, "hungry");
    assert_eq!(hungry["status"]["phase"], "Failed");
    assert_eq!(
        hungry["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        137
    );

    // An init container prepares an emptyDir; the container reads it, a configMap volume and
    // a configMapKeyRef, and cannot write to a read-only mount.
    run(&[
        "wait",
        "--for=jsonpath={.status.phase}=Failed",
        "pod/steps",
        "--timeout=60s",
    ]);
    let steps = pod_json(&kubeconfig, "steps");
    assert_eq!(
        steps["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let uid = steps["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(
        dir.path()
            .join(format!("data/agent/pods/{uid}/logs/main/0.log")),
    )
    .unwrap();
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap())
        .collect();
    assert_eq!(lines[..3], ["prepared", "hi", "MODE=fast"], "{log}");
    assert!(lines[3].starts_with("write /config/x:"), "{log}");

    // A crashing command restarts with a growing back-off: 10 s after the first failure,
    // doubling with each restart. Whichever back-off is seen first, the next one is twice it.
    let crash_state =
        |restarts: Option<i64>| {
            let kubeconfig = &kubeconfig;
            move || {
                let pod = pod_json(kubeconfig, "crash");
                let status = &pod["status"]["containerStatuses"][0];
                let message = status["state"]["waiting"]["message"].as_str()?.to_owned();
                let count = status["restartCount"].as_i64()?;
                (message.starts_with("back-off") && restarts.is_none_or(|n| n == count))
                    .then_some((count, message, status.clone()))
            }
        };
    let back_off = |restarts: i64| (10 << restarts.min(5)).min(300);
    let limit = std::time::Duration::from_secs(120);
    let (restarts, first, _) = eventually(limit, "a back-off", crash_state(None));
    assert!(
        first.starts_with(&format!(
            "back-off {}s restarting failed container=boom pod=crash_default(",
            back_off(restarts)
        )),
        "{first}"
    );
    let (_, second, status) =
        eventually(limit, "the next back-off", crash_state(Some(restarts + 1)));
    assert!(
        second.starts_with(&format!("back-off {}s", back_off(restarts + 1))),
        "{second}"
    );
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 1);
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
    ]);
    assert!(
        events.contains("BackOff") && events.contains("Started"),
        "{events}"
    );

    // `logs -f` streams a running container's output and ends when the run ends.
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "counter.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: counter}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: count, image: {workload}, args: [count, \"20\", \"100\"]}}\n"
        ),
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "pod/counter",
        "--timeout=60s",
    ]);
    let followed = run(&["logs", "-f", "counter"]);
    let expected: String = (0..20).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(followed, expected);
    assert_eq!(run(&["logs", "counter", "--tail=2"]), "tick 18\ntick 19\n");

    // Probes: readiness gates Ready and never restarts; a failing liveness probe restarts.
    let probes = dir.path().join("probes.yaml");
    std::fs::write(
        &probes,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: ready}}
spec:
  containers:
  - name: web
    image: {hello}
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
    livenessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: unready}}
spec:
  containers:
  - name: web
    image: {hello}
    readinessProbe: {{tcpSocket: {{port: 9999}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: dying}}
spec:
  containers:
  - name: cmd
    image: {workload}
    args: [forever]
    readinessProbe: {{exec: {{command: [print, ok]}}, periodSeconds: 1}}
    livenessProbe: {{exec: {{command: [exit, "1"]}}, periodSeconds: 1, failureThreshold: 2}}
"#
        ),
    )
    .unwrap();
    run(&["apply", "-f", probes.to_str().unwrap()]);
    run(&[
        "wait",
        "--for=condition=Ready",
        "pod/ready",
        "--timeout=60s",
    ]);
    let limit = std::time::Duration::from_secs(60);
    eventually(limit, "a failed readiness probe", || {
        run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=unready,reason=Unhealthy",
        ])
        .contains("Readiness probe failed: dial tcp")
        .then_some(())
    });
    let unready = pod_json(&kubeconfig, "unready");
    assert_eq!(unready["status"]["phase"], "Running");
    assert_eq!(unready["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(unready["status"]["containerStatuses"][0]["restartCount"], 0);
    eventually(limit, "a restart after failed liveness probes", || {
        let pod = pod_json(&kubeconfig, "dying");
        let status = &pod["status"]["containerStatuses"][0];
        (status["restartCount"].as_i64() >= Some(1)).then_some(())
    });
    let killing = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=dying,reason=Killing",
    ]);
    assert!(
        killing.contains("Container cmd failed liveness probe, will be restarted"),
        "{killing}"
    );
    assert_eq!(
        pod_json(&kubeconfig, "ready")["status"]["containerStatuses"][0]["restartCount"],
        0
    );

    // Deleting a pod stops it gracefully; the agent confirms the deletion and the address
    // stops answering.
    run(&["delete", "pod", "hello-0", "--timeout=60s"]);
    assert!(
        get_http(&addresses[0]).is_err(),
        "a deleted pod no longer answers"
    );
    assert!(
        get_http(&addresses[1])
            .unwrap()
            .contains("Hello from hello-1!")
    );
}

#[test]
fn images_are_pulled_from_an_oci_registry_and_a_wrong_digest_is_refused() {
    let registry = flotilla_artifacts::testing::Registry::anonymous();
    let reference = format!("{}/apps/hello:v1", registry.address);
    let wasm = flotilla_builtins::find("hello-http").unwrap().wasm;
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(flotilla_artifacts::oci::push(
            &reference,
            wasm,
            &flotilla_artifacts::oci::Credentials::Anonymous,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let wrong = format!("{}/apps/hello@sha256:{}", registry.address, "0".repeat(64));
    run(&[
        "run",
        "pulled",
        &format!("--image={reference}"),
        "--port=8080",
    ]);
    run(&["run", "wrong", &format!("--image={wrong}")]);
    run(&[
        "wait",
        "--for=condition=Ready",
        "pod/pulled",
        "--timeout=60s",
    ]);
    let pulled = pod_json(&kubeconfig, "pulled");
    assert_eq!(
        pulled["status"]["containerStatuses"][0]["imageID"],
        flotilla_artifacts::digest(wasm)
    );
    let ip = pulled["status"]["podIP"].as_str().unwrap();
    assert!(
        get_http(&format!("{ip}:8080"))
            .unwrap()
            .contains("Hello from Flotilla!")
    );

    let reason = eventually(
        std::time::Duration::from_secs(60),
        "the pull failure",
        || {
            let pod = pod_json(&kubeconfig, "wrong");
            let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
            let reason = waiting["reason"].as_str()?;
            (reason != "ContainerCreating").then(|| (reason.to_owned(), waiting["message"].clone()))
        },
    );
    assert!(
        reason.0 == "ErrImagePull" || reason.0 == "CrashLoopBackOff",
        "{reason:?}"
    );
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=wrong",
    ]);
    assert!(events.contains("Failed to pull image"), "{events}");
}

#[test]
fn agents_join_with_a_token_and_re_adopt_their_pods_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(&[
        "up",
        "--disable-agent",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let kubeconfig = up.kubeconfig.clone();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let created = Command::new(FLOTILLA)
        .args(["token", "create", "--ttl", "1h", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("K10"), "{token}");

    // A token pinning another CA is refused before anything secret is sent.
    let forged = format!(
        "K10{}::{}",
        "a".repeat(64),
        token.split_once("::").unwrap().1
    );
    let refused = Command::new(FLOTILLA)
        .args([
            "agent",
            "--server",
            &up.url,
            "--token",
            &forged,
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path().join("forged"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("refusing to join"),
        "{stderr}"
    );

    let cidr = cluster_cidr();
    let agent_dir = dir.path().join("agent");
    let args = [
        "--server",
        &up.url,
        "--token",
        &token,
        "--node-name",
        "joined",
        "--pod-cidr",
        &cidr,
        "--port",
        "0",
        "--data-dir",
        agent_dir.to_str().unwrap(),
    ];
    let mut agent = agent_process(&args, "running pods");
    run(&[
        "wait",
        "--for=condition=Ready",
        "node/joined",
        "--timeout=60s",
    ]);

    let workload = builtin_module(dir.path(), "workload");
    let hello = builtin_module(dir.path(), "hello-http");
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "pods.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - {{name: web, image: {}, ports: [{{containerPort: 8080}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: counter}}\nspec:\n  containers:\n  - {{name: count, image: {}, args: [count, \"100000\", \"100\"]}}\n",
            hello.display(),
            workload.display()
        ),
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "pod/counter",
        "--timeout=60s",
    ]);
    // Logs come from the joined agent, which trusts the API server by the cluster CA.
    eventually(
        std::time::Duration::from_secs(30),
        "the counter's logs",
        || run(&["logs", "counter"]).contains("tick 0").then_some(()),
    );
    let web = pod_json(&kubeconfig, "web");
    let address = format!("{}:8080", web["status"]["podIP"].as_str().unwrap());
    assert!(get_http(&address).unwrap().contains("Hello from Flotilla!"));

    // The agent is killed: its workloads die with it. A pod deleted meanwhile waits for it.
    terminate_hard(&mut agent);
    assert!(
        get_http(&address).is_err(),
        "the pod's workload ran in the agent"
    );
    run(&["delete", "pod", "counter", "--wait=false"]);

    // Back with the credentials it got when it joined: the pod runs again, once, on the same
    // address, its restart counted; the deletion completes.
    let _agent = agent_process(&args, "running pods");
    run(&[
        "wait",
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
        "pod/web",
        "--timeout=60s",
    ]);
    let again = pod_json(&kubeconfig, "web");
    assert_eq!(again["status"]["podIP"], web["status"]["podIP"]);
    eventually(
        std::time::Duration::from_secs(30),
        "the web pod answering",
        || {
            get_http(&address)
                .ok()
                .filter(|a| a.contains("Hello from Flotilla!"))
        },
    );
    run(&["wait", "--for=delete", "pod/counter", "--timeout=60s"]);
}

/// The logs of a pod's only container, once they hold `wanted`.
fn logs_holding(kubeconfig: &Path, pod: &str, wanted: &str) -> String {
    eventually(
        std::time::Duration::from_secs(60),
        &format!("{wanted:?} in the logs of {pod}"),
        || {
            let (ok, logs, _) = kubectl(kubeconfig, &["logs", pod]);
            (ok && logs.contains(wanted)).then_some(logs)
        },
    )
}

#[test]
fn pod_sandboxes_own_their_ip_share_the_cpu_and_see_their_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node_and(dir.path(), &["--sync-frequency", "1s"]);
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let workload = builtin_module(dir.path(), "workload");
    let workload = workload.display();
    let host = dir.path().join("host");
    std::fs::create_dir_all(host.join("ro")).unwrap();
    std::fs::write(host.join("in.txt"), "from the host").unwrap();
    let host = host.display();
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });

    let manifest = dir.path().join("pods.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: listener}}
spec:
  containers:
  - name: serve
    image: {workload}
    args: [serve, "7000"]
---
apiVersion: v1
kind: Pod
metadata: {{name: fast}}
spec:
  restartPolicy: Never
  containers:
  - {{name: work, image: {workload}, args: [work, "60"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  restartPolicy: Never
  containers:
  - name: work
    image: {workload}
    args: [work, "60"]
    resources: {{limits: {{cpu: 100m}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: live}}
data: {{greeting: first}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  containers:
  - name: poll
    image: {workload}
    args: [poll, /cfg/greeting, "50"]
    volumeMounts: [{{name: cfg, mountPath: /cfg}}]
  volumes:
  - {{name: cfg, configMap: {{name: live}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hostfs}}
spec:
  restartPolicy: Never
  containers:
  - name: files
    image: {workload}
    args: [cat, /host/in.txt, print, "", write, /host/out.txt, written by the pod, write, /ro/x, refused]
    volumeMounts: [{{name: host, mountPath: /host}}, {{name: host, mountPath: /ro, subPath: ro, readOnly: true}}]
  volumes:
  - {{name: host, hostPath: {{path: {host}, type: Directory}}}}
"#
        ),
    )
    .unwrap();
    // hostPath volumes are refused by the pod-security baseline unless the namespace is
    // privileged; the policy sees the label once its cache has the namespace's update.
    run(&[
        "label",
        "namespace",
        "default",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    eventually(
        std::time::Duration::from_secs(30),
        "the pods applied",
        || {
            let (ok, _, stderr) =
                kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
            assert!(ok || stderr.contains("PodSecurity"), "{stderr}");
            ok.then_some(())
        },
    );

    // A wildcard listen lands on the pod's own IP, where clients and other pods reach it.
    run(&[
        "wait",
        "--for=condition=Ready",
        "pod/listener",
        "--timeout=60s",
    ]);
    let listener_ip = pod_json(&kubeconfig, "listener")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_owned();
    logs_holding(
        &kubeconfig,
        "listener",
        &format!("listening on {listener_ip}:7000"),
    );
    let answer = eventually(
        std::time::Duration::from_secs(30),
        "the listener's answer",
        || {
            use std::io::Read;
            let mut stream = std::net::TcpStream::connect((listener_ip.as_str(), 7000)).ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            Some(answer)
        },
    );
    assert!(
        answer.starts_with(&format!("{listener_ip}:7000 from ")),
        "{answer}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 7000)).is_err(),
        "the pod listens on its IP only"
    );
    std::fs::write(
        dir.path().join("fetcher.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fetcher}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: fetch, image: {workload}, args: [fetch, \"{listener_ip}:7000\"]}}\n"
        ),
    )
    .unwrap();
    run(&[
        "apply",
        "-f",
        dir.path().join("fetcher.yaml").to_str().unwrap(),
    ]);
    run(&[
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        "pod/fetcher",
        "--timeout=60s",
    ]);
    let fetched = run(&["logs", "fetcher"]);
    assert!(
        fetched.starts_with(&format!("{listener_ip}:7000 from ")),
        "{fetched}"
    );

    // A tenth of a core makes the same work take several times as long.
    for pod in ["fast", "slow"] {
        run(&[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{pod}"),
            "--timeout=120s",
        ]);
    }
    let took = |pod: &str| -> f64 {
        let logs = run(&["logs", pod]);
        logs.trim()
            .strip_prefix("worked ")
            .and_then(|rest| rest.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("{pod} printed {logs:?}"))
    };
    let (fast, slow) = (took("fast"), took("slow"));
    assert!(
        slow >= 3.0 * fast.max(1.0),
        "100m of cpu took {slow} ms, unlimited {fast} ms"
    );

    // A configMap volume follows its object while the pod runs.
    logs_holding(&kubeconfig, "reader", "first");
    run(&[
        "patch",
        "configmap",
        "live",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"second"}}"#,
    ]);
    logs_holding(&kubeconfig, "reader", "second");
    assert_eq!(
        pod_json(&kubeconfig, "reader")["status"]["containerStatuses"][0]["restartCount"],
        0,
        "the update reached the running container"
    );

    // A hostPath volume is the host's directory; readOnly holds.
    run(&[
        "wait",
        "--for=jsonpath={.status.phase}=Failed",
        "pod/hostfs",
        "--timeout=60s",
    ]);
    let logs = run(&["logs", "hostfs"]);
    assert!(logs.starts_with("from the host\n"), "{logs}");
    assert!(logs.contains("write /ro/x"), "{logs}");
    let host = dir.path().join("host");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).unwrap(),
        "written by the pod"
    );
    assert!(
        !host.join("ro/x").exists(),
        "a readOnly mount stays unwritten"
    );
}

/// Two hosts on one machine: network namespaces `<prefix>a` and `<prefix>b`, joined by a veth
/// pair with 10.99.0.1 on a and 10.99.0.2 on b. Removed when dropped.
struct TwoHosts {
    prefix: String,
}

impl TwoHosts {
    const ADDRESSES: [&str; 2] = ["10.99.0.1", "10.99.0.2"];

    fn new() -> Self {
        let prefix = format!("fl{}", std::process::id());
        let hosts = Self { prefix };
        let (a, b) = (hosts.name('a'), hosts.name('b'));
        let ip = |args: &[&str]| {
            let output = Command::new("ip")
                .args(args)
                .output()
                .expect("iproute2's ip");
            assert!(
                output.status.success(),
                "ip {args:?}: {} (network namespaces need root or CAP_SYS_ADMIN and CAP_NET_ADMIN)",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        ip(&[
            "link", "add", "va", "netns", &a, "type", "veth", "peer", "name", "vb", "netns", &b,
        ]);
        for (ns, dev, address) in [
            (&a, "va", Self::ADDRESSES[0]),
            (&b, "vb", Self::ADDRESSES[1]),
        ] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn name(&self, host: char) -> String {
        format!("{}{host}", self.prefix)
    }

    /// A command that runs `program` on `host`.
    fn command(&self, host: char, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name(host), program]);
        command
    }

    /// The routes Flotilla made on `host`.
    fn routes(&self, host: char) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.name(host), "route", "show", "proto", "73"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for host in ['a', 'b'] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(host)])
                .status();
        }
    }
}

#[test]
fn routed_nodes_on_two_hosts_reach_each_others_pods() {
    let hosts = TwoHosts::new();
    let [ip_a, ip_b] = TwoHosts::ADDRESSES;
    let dir = tempfile::tempdir().unwrap();
    let mut up = start_with(
        hosts.command('a', FLOTILLA),
        &[
            "up",
            "--node-name",
            "node-a",
            "--network",
            "routed",
            "--node-ip",
            ip_a,
            "--pod-cidr",
            "10.42.0.0/24",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &format!("{ip_a}:6443"),
    );
    let kubeconfig = up.kubeconfig.clone();
    // The API is on host a: kubectl runs there.
    let kubectl_a = |args: &[&str]| -> String {
        let output = hosts
            .command('a', "kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let created = hosts
        .command('a', FLOTILLA)
        .args(["token", "create", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let agent_dir = dir.path().join("agent-b");
    let mut agent_b = agent_process_with(
        hosts.command('b', FLOTILLA),
        &[
            "--server",
            &up.url,
            "--token",
            &token,
            "--node-name",
            "node-b",
            "--network",
            "routed",
            "--node-ip",
            ip_b,
            "--pod-cidr",
            "10.42.1.0/24",
            "--data-dir",
            agent_dir.to_str().unwrap(),
        ],
        "running pods",
    );
    for node in ["node-a", "node-b"] {
        eventually(std::time::Duration::from_secs(60), node, || {
            let output = hosts
                .command('a', "kubectl")
                .env("KUBECONFIG", &kubeconfig)
                .args(["get", "node", node])
                .output()
                .unwrap();
            output.status.success().then_some(())
        });
        kubectl_a(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{node}"),
            "--timeout=60s",
        ]);
    }
    // Each host routes the other's pod CIDR via the other's address.
    eventually(std::time::Duration::from_secs(30), "the routes", || {
        (hosts
            .routes('a')
            .contains(&format!("10.42.1.0/24 via {ip_b}"))
            && hosts
                .routes('b')
                .contains(&format!("10.42.0.0/24 via {ip_a}")))
        .then_some(())
    });

    let workload = builtin_module(dir.path(), "workload");
    let pod = |name: &str, node: &str, args: &str, restart: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  restartPolicy: {restart}\n  containers:\n  - {{name: main, image: {}, args: [{args}]}}\n---\n",
            workload.display()
        )
    };
    let servers = dir.path().join("servers.yaml");
    std::fs::write(
        &servers,
        pod("server-a", "node-a", "serve, \"7000\"", "Always")
            + &pod("server-b", "node-b", "serve, \"7000\"", "Always"),
    )
    .unwrap();
    kubectl_a(&["apply", "-f", servers.to_str().unwrap()]);
    let mut server_ips = Vec::new();
    for (name, cidr) in [("server-a", "10.42.0."), ("server-b", "10.42.1.")] {
        kubectl_a(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=60s",
        ]);
        let ip = kubectl_a(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
        assert!(ip.starts_with(cidr), "{name} got {ip}");
        server_ips.push(ip);
    }

    // A pod on each host reaches the pod on the other, whose wildcard listen is on its own IP.
    let fetchers = dir.path().join("fetchers.yaml");
    std::fs::write(
        &fetchers,
        pod(
            "fetch-a",
            "node-a",
            &format!("fetch, \"{}:7000\"", server_ips[1]),
            "Never",
        ) + &pod(
            "fetch-b",
            "node-b",
            &format!("fetch, \"{}:7000\"", server_ips[0]),
            "Never",
        ),
    )
    .unwrap();
    kubectl_a(&["apply", "-f", fetchers.to_str().unwrap()]);
    for (name, server, from) in [
        ("fetch-a", &server_ips[1], ip_a),
        ("fetch-b", &server_ips[0], ip_b),
    ] {
        kubectl_a(&[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{name}"),
            "--timeout=60s",
        ]);
        let answer = kubectl_a(&["logs", name]);
        assert!(
            answer.starts_with(&format!("{server}:7000 from {from}:")),
            "{name} was answered {answer:?}"
        );
    }

    // A node that leaves takes its route with it.
    terminate_hard(&mut agent_b);
    kubectl_a(&["delete", "node", "node-b"]);
    eventually(
        std::time::Duration::from_secs(30),
        "the route's removal",
        || (!hosts.routes('a').contains("10.42.1.0/24")).then_some(()),
    );
    terminate(&mut up);
}

#[test]
fn the_replicaset_controller_keeps_replicas_adopts_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let workload = builtin_module(dir.path(), "workload");
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "rs.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: web}}\nspec:\n  replicas: 3\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web, tier: front}}}}\n    spec:\n      containers:\n      - {{name: main, image: {}, args: [forever]}}\n",
            workload.display()
        ),
    );
    let wait_ready = |n: usize| {
        run(&[
            "wait",
            &format!("--for=jsonpath={{.status.readyReplicas}}={n}"),
            "rs/web",
            "--timeout=60s",
        ]);
    };
    // The pods that count: the replica set's, not being deleted.
    let pods = || -> Vec<String> {
        live_pods(&kubeconfig, "web")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_ready(3);
    assert_eq!(pods().len(), 3);
    let rs: serde_json::Value =
        serde_json::from_str(&run(&["get", "rs", "web", "-o", "json"])).unwrap();
    assert_eq!(rs["status"]["replicas"], 3, "{rs}");
    assert_eq!(rs["status"]["fullyLabeledReplicas"], 3, "{rs}");
    assert_eq!(rs["status"]["availableReplicas"], 3, "{rs}");
    assert_eq!(
        rs["status"]["observedGeneration"],
        rs["metadata"]["generation"]
    );
    let owner: serde_json::Value = serde_json::from_str(&run(&[
        "get",
        "pod",
        &pods()[0],
        "-o",
        "jsonpath={.metadata.ownerReferences[0]}",
    ]))
    .unwrap();
    assert_eq!(owner["kind"], "ReplicaSet");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["uid"], rs["metadata"]["uid"]);

    // Scaling up and down.
    run(&["scale", "rs", "web", "--replicas=5"]);
    wait_ready(5);
    run(&["scale", "rs", "web", "--replicas=2"]);
    eventually(std::time::Duration::from_secs(60), "two pods", || {
        (pods().len() == 2).then_some(())
    });
    wait_ready(2);

    // A pod relabelled out of the selector is released and replaced.
    let released = pods()[0].clone();
    run(&["label", "pod", &released, "app=elsewhere", "--overwrite"]);
    eventually(std::time::Duration::from_secs(60), "the release", || {
        let refs = run(&[
            "get",
            "pod",
            &released,
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ]);
        (refs.trim().is_empty() || refs.trim() == "[]").then_some(())
    });
    eventually(std::time::Duration::from_secs(60), "a replacement", || {
        (pods().len() == 2 && !pods().contains(&released)).then_some(())
    });
    // Relabelled back, it is adopted again, and one pod too many goes.
    run(&["label", "pod", &released, "app=web", "--overwrite"]);
    eventually(std::time::Duration::from_secs(60), "the adoption", || {
        let kind = run(&[
            "get",
            "pod",
            &released,
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}",
        ]);
        (kind == "ReplicaSet" && pods().len() == 2).then_some(())
    });
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains("SuccessfulCreate") && events.contains("SuccessfulDelete"),
        "{events}"
    );
    // The built-in controller reports itself on its WasmPlugin.
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/replicaset-controller",
        "--timeout=30s",
    ]);
}

#[test]
fn the_statefulset_controller_orders_updates_and_scales_its_pods() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let workload = builtin_module(dir.path(), "workload");
    let stateful_set = |name: &str, policy: &str, min_ready_seconds: u32| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}}}\nspec:\n  replicas: 3\n  serviceName: {name}\n  podManagementPolicy: {policy}\n  minReadySeconds: {min_ready_seconds}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - {{name: main, image: {}, args: [forever], env: [{{name: ROUND, value: one}}]}}\n",
            workload.display()
        )
    };
    let pod = |name: &str| object_json(&kubeconfig, "pod", name);
    // Timestamps to the second (RFC 3339 prefixes of one width compare as times do).
    let created = |pod: &serde_json::Value| {
        pod["metadata"]["creationTimestamp"].as_str().unwrap()[..19].to_owned()
    };
    let ready_since = |pod: &serde_json::Value| {
        let conditions = pod["status"]["conditions"].as_array().unwrap();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        ready["lastTransitionTime"].as_str().unwrap()[..19].to_owned()
    };
    let live = |app: &str| -> Vec<String> {
        let mut names: Vec<String> = live_pods(&kubeconfig, app)
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let revisions = || -> Vec<serde_json::Value> {
        let list: serde_json::Value = serde_json::from_str(&run(&[
            "get",
            "controllerrevisions",
            "-l",
            "app=web",
            "-o",
            "json",
        ]))
        .unwrap();
        list["items"].as_array().unwrap().clone()
    };
    eventually(Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });

    // OrderedReady: web-0, web-1, web-2, each once the one below has been available for
    // minReadySeconds (which also needs the controller to come back by itself when it elapses).
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "web.yaml",
        &stateful_set("web", "OrderedReady", 2),
    );
    let status = run(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    assert!(status.contains("complete"), "{status}");
    assert_eq!(live("web"), ["web-0", "web-1", "web-2"]);
    let first: Vec<serde_json::Value> = ["web-0", "web-1", "web-2"].map(pod).to_vec();
    for below in 0..2 {
        assert!(
            created(&first[below + 1]) > ready_since(&first[below]),
            "web-{} was created before web-{below} was available",
            below + 1
        );
    }
    // `rollout status` waits for ready pods; available ones follow minReadySeconds later.
    run(&[
        "wait",
        "--for=jsonpath={.status.availableReplicas}=3",
        "statefulset/web",
        "--timeout=30s",
    ]);
    let set = object_json(&kubeconfig, "statefulset", "web");
    let first_revision = set["status"]["updateRevision"].as_str().unwrap().to_owned();
    assert_eq!(
        set["status"]["currentRevision"],
        first_revision.as_str(),
        "{set}"
    );
    assert_eq!(set["status"]["replicas"], 3, "{set}");
    assert_eq!(set["status"]["readyReplicas"], 3, "{set}");
    assert_eq!(set["status"]["availableReplicas"], 3, "{set}");
    assert_eq!(set["status"]["updatedReplicas"], 3, "{set}");
    assert_eq!(
        set["status"]["observedGeneration"],
        set["metadata"]["generation"]
    );
    // Stable identity: name, hostname, subdomain, labels, owner.
    let web_1 = &first[1];
    assert_eq!(web_1["spec"]["hostname"], "web-1");
    assert_eq!(web_1["spec"]["subdomain"], "web");
    let labels = &web_1["metadata"]["labels"];
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-1");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "1");
    assert_eq!(labels["controller-revision-hash"], first_revision.as_str());
    let owner = &web_1["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StatefulSet");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["uid"], set["metadata"]["uid"]);
    // The revision is a ControllerRevision the set owns.
    let history = revisions();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["metadata"]["name"], first_revision.as_str());
    assert_eq!(history[0]["revision"], 1);
    assert_eq!(
        history[0]["metadata"]["ownerReferences"][0]["kind"],
        "StatefulSet"
    );
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    for ordinal in 0..3 {
        assert!(
            events.contains(&format!(
                "create Pod web-{ordinal} in StatefulSet web successful"
            )),
            "{events}"
        );
    }

    // A new template rolls out from the highest ordinal down, one pod at a time.
    run(&["set", "env", "statefulset/web", "ROUND=two"]);
    let status = run(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    assert!(status.contains("complete"), "{status}");
    let second: Vec<serde_json::Value> = ["web-0", "web-1", "web-2"].map(pod).to_vec();
    let second_revision = eventually(Duration::from_secs(30), "the current revision", || {
        let set = object_json(&kubeconfig, "statefulset", "web");
        let update = set["status"]["updateRevision"].as_str()?.to_owned();
        (set["status"]["currentRevision"] == update.as_str() && update != first_revision)
            .then_some(update)
    });
    for (old, new) in first.iter().zip(&second) {
        assert_ne!(old["metadata"]["uid"], new["metadata"]["uid"], "replaced");
        assert_eq!(
            new["metadata"]["labels"]["controller-revision-hash"],
            second_revision.as_str()
        );
        assert_eq!(new["spec"]["containers"][0]["env"][0]["value"], "two");
    }
    assert!(
        created(&second[2]) < created(&second[1]) && created(&second[1]) < created(&second[0]),
        "replaced from the highest ordinal down: {:?}",
        second.iter().map(created).collect::<Vec<_>>()
    );
    assert_eq!(revisions().len(), 2);
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains("delete Pod web-2 in StatefulSet web successful"),
        "{events}"
    );

    // Undo puts the first template back: its revision becomes the newest.
    run(&["rollout", "undo", "statefulset/web"]);
    run(&["rollout", "status", "statefulset/web", "--timeout=120s"]);
    eventually(Duration::from_secs(30), "the first revision again", || {
        let set = object_json(&kubeconfig, "statefulset", "web");
        (set["status"]["currentRevision"] == first_revision.as_str()).then_some(())
    });
    let history = revisions();
    assert_eq!(history.len(), 2, "the first revision is reused");
    let renumbered = history
        .iter()
        .find(|r| r["metadata"]["name"] == first_revision.as_str())
        .unwrap();
    assert_eq!(renumbered["revision"], 3);

    // A deleted pod comes back under its name.
    let deleted_uid = pod("web-1")["metadata"]["uid"].clone();
    run(&["delete", "pod", "web-1"]);
    eventually(Duration::from_secs(60), "web-1 again", || {
        // Absent for a moment: read it without failing.
        let (found, json, _) = kubectl(&kubeconfig, &["get", "pod", "web-1", "-o", "json"]);
        let again: serde_json::Value = serde_json::from_str(&json).ok().filter(|_| found)?;
        (again["metadata"]["uid"] != deleted_uid
            && again["status"]["phase"] == "Running"
            && again["metadata"]["deletionTimestamp"].is_null())
        .then_some(())
    });
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=3",
        "statefulset/web",
        "--timeout=60s",
    ]);

    // Scaling down removes the highest ordinals, the higher one first: every look at the pods
    // (terminating ones included) sees a prefix web-0..web-k.
    run(&["scale", "statefulset/web", "--replicas=1"]);
    eventually(Duration::from_secs(60), "web-0 alone", || {
        let names = run(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        let mut names: Vec<&str> = names.split_whitespace().collect();
        names.sort();
        let prefix: Vec<String> = (0..names.len()).map(|o| format!("web-{o}")).collect();
        assert_eq!(names, prefix, "pods beyond a gap");
        (names == ["web-0"]).then_some(())
    });
    run(&[
        "wait",
        "--for=jsonpath={.status.replicas}=1",
        "statefulset/web",
        "--timeout=60s",
    ]);

    // Parallel: all three at once, long before the first has been ready for minReadySeconds.
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "par.yaml",
        &stateful_set("par", "Parallel", 60),
    );
    eventually(Duration::from_secs(30), "three parallel pods", || {
        (live("par") == ["par-0", "par-1", "par-2"]).then_some(())
    });
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=3",
        "statefulset/par",
        "--timeout=60s",
    ]);
    let par = object_json(&kubeconfig, "statefulset", "par");
    assert_ne!(par["status"]["availableReplicas"], 3, "{par}");
    // And scaled to zero, all of them go.
    run(&["scale", "statefulset/par", "--replicas=0"]);
    eventually(Duration::from_secs(60), "no parallel pods", || {
        live("par").is_empty().then_some(())
    });

    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/statefulset-controller",
        "--timeout=30s",
    ]);
}

/// The nodes the pods of `app` are bound to, sorted.
fn nodes_of(kubeconfig: &Path, app: &str) -> Vec<String> {
    let mut nodes: Vec<String> = live_pods(kubeconfig, app)
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn a_daemon_set_follows_nodes_as_they_join_leave_and_change() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let _first = simulated_nodes(&kubeconfig, &["--simulate", "2", "--node-prefix", "a-"]);
    let yaml = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      containers: [{name: main, image: /nowhere.wasm}]\n";
    apply_manifest(&kubeconfig, dir.path(), "ds.yaml", yaml);
    let on_nodes = |wanted: &[&str]| {
        eventually(
            std::time::Duration::from_secs(60),
            &format!("daemon pods on {wanted:?}"),
            || (nodes_of(&kubeconfig, "agent") == wanted).then_some(()),
        );
    };
    let settled = |desired: usize| {
        for field in [
            "desiredNumberScheduled",
            "numberAvailable",
            "updatedNumberScheduled",
        ] {
            run(&[
                "wait",
                &format!("--for=jsonpath={{.status.{field}}}={desired}"),
                "ds/agent",
                "--timeout=60s",
            ]);
        }
    };
    on_nodes(&["a-0", "a-1"]);
    settled(2);
    let pod = &live_pods(&kubeconfig, "agent")[0];
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unreachable"),
        "{tolerations}"
    );
    let pinned = pod["spec"]["affinity"]["nodeAffinity"].to_string();
    assert!(pinned.contains("metadata.name"), "{pinned}");

    // A node joins, one leaves.
    let _second = simulated_nodes(&kubeconfig, &["--simulate", "1", "--node-prefix", "b-"]);
    on_nodes(&["a-0", "a-1", "b-0"]);
    settled(3);
    run(&["delete", "node", "b-0"]);
    on_nodes(&["a-0", "a-1"]);
    settled(2);

    // A NoExecute taint the pods do not tolerate removes the pod; a NoSchedule one keeps it;
    // a selector the node stops matching removes it too.
    run(&["taint", "node", "a-1", "dedicated=db:NoExecute"]);
    on_nodes(&["a-0"]);
    settled(1);
    run(&["taint", "node", "a-1", "dedicated=db:NoExecute-"]);
    on_nodes(&["a-0", "a-1"]);
    run(&["taint", "node", "a-1", "dedicated=db:NoSchedule"]);
    settled(1);
    let ds = object_json(&kubeconfig, "ds", "agent");
    assert_eq!(ds["status"]["numberMisscheduled"], 1, "{ds}");
    assert_eq!(nodes_of(&kubeconfig, "agent"), ["a-0", "a-1"]);
    run(&["taint", "node", "a-1", "dedicated=db:NoSchedule-"]);
    run(&["label", "node", "a-0", "role=edge"]);
    run(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"role":"edge"}}}}}"#,
    ]);
    run(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    on_nodes(&["a-0"]);

    // A rolling update replaces the pods with the new revision; undo brings the old one back.
    run(&[
        "patch",
        "ds",
        "agent",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
    ]);
    run(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    on_nodes(&["a-0", "a-1"]);
    let hashes = || -> Vec<String> {
        live_pods(&kubeconfig, "agent")
            .iter()
            .map(|p| {
                p["metadata"]["labels"]["controller-revision-hash"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let before = hashes();
    assert_eq!(before[0], before[1]);
    run(&["set", "env", "ds/agent", "MODE=two"]);
    run(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    settled(2);
    let after = hashes();
    assert!(
        after.iter().all(|h| *h == after[0] && *h != before[0]),
        "{before:?} {after:?}"
    );
    let history = run(&["rollout", "history", "ds/agent"]);
    assert!(history.lines().count() >= 4, "{history}");
    run(&["rollout", "undo", "ds/agent"]);
    run(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    eventually(
        std::time::Duration::from_secs(60),
        "the old revision back",
        || {
            let now = hashes();
            (now.len() == 2 && now.iter().all(|h| *h == before[0])).then_some(())
        },
    );
    let env = object_json(&kubeconfig, "ds", "agent")["spec"]["template"]["spec"]["containers"][0]
        ["env"]
        .clone();
    assert!(env.is_null(), "{env}");
}

/// The greeting of every Running pod the website operator made for `website`.
fn website_greetings(kubeconfig: &Path, website: &str) -> Vec<String> {
    let selector =
        format!("app.kubernetes.io/name={website},app.kubernetes.io/managed-by=website-operator");
    let list: serde_json::Value = serde_json::from_str(&kubectl_ok(
        kubeconfig,
        &["get", "pods", "-l", &selector, "-o", "json"],
    ))
    .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            let ip = p["status"]["podIP"].as_str().unwrap();
            let answer = get_http(&format!("{ip}:8080")).unwrap_or_default();
            answer
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

#[test]
fn an_operator_from_examples_serves_its_custom_resource_and_is_hot_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let hello = builtin_module(dir.path(), "hello-http");
    let operator = builtin_module(dir.path(), "website-operator");
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });

    // The kind first; the garbage collector follows every custom resource by itself, so a
    // Website's objects go with it.
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/website-operator/website-crd.yaml"
    );
    run(&["apply", "-f", crd]);
    run(&[
        "wait",
        "--for=condition=Established",
        "crd/websites.example.flotilla.dev",
        "--timeout=30s",
    ]);

    let image = hello.to_str().unwrap();
    push_plugin(
        &kubeconfig,
        &operator,
        "website-operator",
        "controller",
        Some(&serde_json::json!({"image": image}).to_string()),
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/website-operator",
        "--timeout=60s",
    ]);

    apply_manifest(
        &kubeconfig,
        dir.path(),
        "website.yaml",
        "apiVersion: example.flotilla.dev/v1\nkind: Website\nmetadata: {name: hello}\nspec:\n  replicas: 2\n  greeting: the operator\n",
    );
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=2",
        "website/hello",
        "--timeout=120s",
    ]);
    run(&[
        "wait",
        "--for=condition=Ready",
        "website/hello",
        "--timeout=60s",
    ]);
    let website = object_json(&kubeconfig, "website", "hello");
    // The CRD's default.
    assert_eq!(website["spec"]["port"], 8080, "{website}");
    let status = &website["status"];
    assert_eq!(status["url"], "http://hello.default.svc:8080", "{status}");
    assert_eq!(status["operatorVersion"], "1.0.0", "{status}");
    assert_eq!(
        status["observedGeneration"], website["metadata"]["generation"],
        "{status}"
    );

    // A Deployment and a Service, owned by the Website, labelled and annotated.
    let deployment = object_json(&kubeconfig, "deployment", "hello");
    let service = object_json(&kubeconfig, "service", "hello");
    for object in [&deployment, &service] {
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Website", "{object}");
        assert_eq!(owner["controller"], true, "{object}");
        assert_eq!(owner["uid"], website["metadata"]["uid"], "{object}");
        let metadata = &object["metadata"];
        assert_eq!(
            metadata["labels"]["app.kubernetes.io/managed-by"], "website-operator",
            "{object}"
        );
        assert_eq!(
            metadata["annotations"]["example.flotilla.dev/operator-version"], "1.0.0",
            "{object}"
        );
    }
    assert_eq!(deployment["spec"]["replicas"], 2, "{deployment}");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080, "{service}");
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/name"], "hello",
        "{service}"
    );
    eventually(
        std::time::Duration::from_secs(60),
        "the pods' greetings",
        || {
            let answers = website_greetings(&kubeconfig, "hello");
            (answers.len() == 2 && answers.iter().all(|a| a == "Hello from the operator!"))
                .then_some(())
        },
    );

    // Scaled through the Website.
    run(&[
        "patch",
        "website",
        "hello",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=3",
        "website/hello",
        "--timeout=120s",
    ]);
    assert_eq!(
        object_json(&kubeconfig, "deployment", "hello")["spec"]["replicas"],
        3
    );

    // A deleted Deployment comes back.
    let deleted = deployment["metadata"]["uid"].clone();
    run(&["delete", "deployment", "hello"]);
    eventually(
        std::time::Duration::from_secs(120),
        "the Deployment made again, its pods ready",
        || {
            let (found, stdout, _) =
                kubectl(&kubeconfig, &["get", "deployment", "hello", "-o", "json"]);
            let made: serde_json::Value = serde_json::from_str(&stdout).ok().filter(|_| found)?;
            let website = object_json(&kubeconfig, "website", "hello");
            (made["metadata"]["uid"] != deleted
                && made["status"]["readyReplicas"] == 3
                && website["status"]["readyReplicas"] == 3)
                .then_some(())
        },
    );
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Website,involvedObject.name=hello",
    ]);
    assert!(events.contains("Created Deployment hello"), "{events}");
    assert!(
        events.contains("Updated Deployment hello: spec.replicas"),
        "{events}"
    );

    // Hot swap: the same module with another configuration. The Website does not change; the
    // new version reports itself and rolls the pods out to its greeting.
    let before = object_json(&kubeconfig, "website", "hello");
    push_plugin(
        &kubeconfig,
        &operator,
        "website-operator",
        "controller",
        Some(
            &serde_json::json!({"image": image, "greetingSuffix": " (v2)", "version": "2.0.0"})
                .to_string(),
        ),
    );
    run(&[
        "wait",
        "--for=jsonpath={.status.operatorVersion}=2.0.0",
        "website/hello",
        "--timeout=60s",
    ]);
    eventually(
        std::time::Duration::from_secs(120),
        "the new greeting from every pod",
        || {
            let answers = website_greetings(&kubeconfig, "hello");
            (answers.len() == 3 && answers.iter().all(|a| a == "Hello from the operator (v2)!"))
                .then_some(())
        },
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "website/hello",
        "--timeout=120s",
    ]);
    let after = object_json(&kubeconfig, "website", "hello");
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    let deployment = object_json(&kubeconfig, "deployment", "hello");
    assert_eq!(
        deployment["metadata"]["annotations"]["example.flotilla.dev/operator-version"],
        "2.0.0"
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/website-operator",
        "--timeout=30s",
    ]);

    // The printer columns.
    let listed = run(&["get", "websites"]);
    let mut lines = listed.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "URL", "OPERATOR", "AGE"],
        "{listed}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["hello", "3", "3", "http://hello.default.svc:8080", "2.0.0"],
        "{listed}"
    );

    // Deleting the Website deletes what it owned.
    run(&["delete", "website", "hello"]);
    eventually(
        std::time::Duration::from_secs(60),
        "the Deployment and Service collected",
        || {
            let gone = |kind: &str| !kubectl(&kubeconfig, &["get", kind, "hello"]).0;
            (gone("deployment") && gone("service")).then_some(())
        },
    );
}

/// The pods of a Job, as kubectl lists them.
fn job_pods(kubeconfig: &Path, job: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&kubectl_ok(
        kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            &format!("job-name={job}"),
            "-o",
            "json",
        ],
    ))
    .unwrap();
    list["items"].as_array().unwrap().clone()
}

#[test]
fn jobs_complete_fail_index_suspend_and_expire_with_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let workload = builtin_module(dir.path(), "workload");
    let job = |name: &str, spec: &str, args: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - {{name: main, image: {}, args: {args}}}\n---\n",
            workload.display()
        )
    };
    let manifest = [
        job(
            "count",
            "  completions: 3\n  parallelism: 2\n",
            "[print, done]",
        ),
        job("fails", "  backoffLimit: 2\n", "[exit, \"1\"]"),
        job(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
            "[env, JOB_COMPLETION_INDEX]",
        ),
        job(
            "late",
            "  activeDeadlineSeconds: 3\n",
            "[sleep, \"600000\"]",
        ),
        job("paused", "  suspend: true\n", "[print, resumed]"),
        job("brief", "  ttlSecondsAfterFinished: 2\n", "[print, brief]"),
    ]
    .concat();
    apply_manifest(&kubeconfig, dir.path(), "jobs.yaml", &manifest);
    let wait = |job: &str, condition: &str, timeout: &str| {
        run(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("job/{job}"),
            &format!("--timeout={timeout}"),
        ]);
    };

    // Three completions, two at a time: each pod counted once, every finalizer released.
    wait("count", "Complete", "90s");
    let count = object_json(&kubeconfig, "job", "count");
    assert_eq!(count["status"]["succeeded"], 3, "{count}");
    assert!(count["status"]["completionTime"].is_string(), "{count}");
    let pods = job_pods(&kubeconfig, "count");
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    eventually(
        std::time::Duration::from_secs(30),
        "finalizers released",
        || {
            job_pods(&kubeconfig, "count")
                .iter()
                .all(|p| {
                    p["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty())
                })
                .then_some(())
        },
    );
    let listed = run(&["get", "job", "count"]);
    assert!(
        listed.contains("3/3") && listed.contains("Complete"),
        "{listed}"
    );

    // Past backoffLimit: three failed pods (the first and two retries after a back-off), then
    // Failed with Kubernetes' reason.
    wait("fails", "Failed", "150s");
    let fails = object_json(&kubeconfig, "job", "fails");
    assert_eq!(fails["status"]["failed"], 3, "{fails}");
    let failed = fails["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{fails}");
    assert_eq!(job_pods(&kubeconfig, "fails").len(), 3);
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fails",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");

    // Indexed: one pod per index, each told its index.
    wait("indexed", "Complete", "90s");
    let indexed = object_json(&kubeconfig, "job", "indexed");
    assert_eq!(indexed["status"]["completedIndexes"], "0-2", "{indexed}");
    let mut seen: Vec<String> = job_pods(&kubeconfig, "indexed")
        .iter()
        .map(|p| {
            let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap()
                .to_owned();
            let name = p["metadata"]["name"].as_str().unwrap();
            assert!(name.starts_with(&format!("indexed-{index}-")), "{name}");
            let logs = logs_holding(&kubeconfig, name, "JOB_COMPLETION_INDEX=");
            assert_eq!(logs.trim(), format!("JOB_COMPLETION_INDEX={index}"));
            index
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // Past activeDeadlineSeconds: failed, its running pod stopped.
    wait("late", "Failed", "60s");
    let late = object_json(&kubeconfig, "job", "late");
    assert!(late.to_string().contains("DeadlineExceeded"), "{late}");
    eventually(
        std::time::Duration::from_secs(60),
        "the late pod gone",
        || job_pods(&kubeconfig, "late").is_empty().then_some(()),
    );

    // Suspended: no pods until resumed.
    wait("paused", "Suspended", "30s");
    assert!(job_pods(&kubeconfig, "paused").is_empty());
    run(&[
        "patch",
        "job",
        "paused",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait("paused", "Complete", "90s");

    // ttlSecondsAfterFinished: the finished Job and its pod are deleted.
    eventually(
        std::time::Duration::from_secs(90),
        "the brief job deleted",
        || {
            let (found, _, _) = kubectl(&kubeconfig, &["get", "job", "brief"]);
            (!found && job_pods(&kubeconfig, "brief").is_empty()).then_some(())
        },
    );
}

/// Seconds since the epoch of an RFC 3339 time, `Z` or with an offset
/// (`2026-03-29T03:00:00+02:00`).
fn epoch_seconds(text: &str) -> i64 {
    let (local, offset) = match text.strip_suffix('Z') {
        Some(local) => (local, 0),
        None => {
            let (local, offset) = text.split_at(text.len() - 6);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let hours: i64 = offset[1..3].parse().unwrap();
            let minutes: i64 = offset[4..6].parse().unwrap();
            (local, sign * (hours * 3600 + minutes * 60))
        }
    };
    let utc = humantime::parse_rfc3339(&format!("{local}Z")).unwrap();
    utc.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - offset
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The Jobs a CronJob controls, by name (so by scheduled minute).
fn jobs_of(kubeconfig: &Path, cron_job: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&kubectl_ok(kubeconfig, &["get", "jobs", "-o", "json"])).unwrap();
    let mut jobs: Vec<serde_json::Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|job| {
            job["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|owners| {
                    owners.iter().any(|owner| {
                        owner["kind"] == "CronJob"
                            && owner["name"] == cron_job
                            && owner["controller"] == true
                    })
                })
        })
        .cloned()
        .collect();
    jobs.sort_by_key(|job| job["metadata"]["name"].as_str().unwrap().to_owned());
    jobs
}

fn has_condition(object: &serde_json::Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// The scheduled minute (since the epoch) in a CronJob's Job name.
fn scheduled_minute(job: &serde_json::Value, cron_job: &str) -> i64 {
    let name = job["metadata"]["name"].as_str().unwrap();
    name.strip_prefix(&format!("{cron_job}-"))
        .and_then(|minute| minute.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not named by its minute"))
}

#[test]
fn cron_jobs_run_each_minute_in_their_zone_keep_history_forbid_overlaps_and_suspend() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let events_of = |name: &str| {
        run(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ])
    };
    // Scheduled times are only met on time once the controller runs (its WasmPlugin is made
    // by the controller manager once it starts).
    eventually(
        std::time::Duration::from_secs(60),
        "the built-in WasmPlugin",
        || {
            kubectl(&kubeconfig, &["get", "wasmplugin", "cronjob-controller"])
                .0
                .then_some(())
        },
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/cronjob-controller",
        "--timeout=60s",
    ]);
    let workload = builtin_module(dir.path(), "workload");
    let cron_job = |name: &str, spec: &str, args: &str| {
        format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: \"* * * * *\"\n{spec}  jobTemplate:\n    metadata:\n      labels: {{cron: {name}}}\n      annotations: {{team: batch}}\n    spec:\n      backoffLimit: 0\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - {{name: main, image: {}, args: {args}}}\n---\n",
            workload.display()
        )
    };
    let manifest = [
        cron_job(
            "tick",
            "  timeZone: Europe/Paris\n  successfulJobsHistoryLimit: 2\n",
            "[print, tick]",
        ),
        cron_job("fails", "  failedJobsHistoryLimit: 1\n", "[exit, \"1\"]"),
        // Runs across the next two minute boundaries, so Forbid has times to skip.
        cron_job(
            "slow",
            "  concurrencyPolicy: Forbid\n",
            "[sleep, \"150000\"]",
        ),
    ]
    .concat();
    apply_manifest(&kubeconfig, dir.path(), "cronjobs.yaml", &manifest);
    let tick = object_json(&kubeconfig, "cronjob", "tick");
    let created = epoch_seconds(tick["metadata"]["creationTimestamp"].as_str().unwrap());
    let a_minute_and_more = std::time::Duration::from_secs(150);

    // The first Job comes at the next minute boundary, named by its minute since the epoch,
    // made from the template and stamped with its scheduled time in Paris.
    let first = eventually(a_minute_and_more, "tick's first job", || {
        jobs_of(&kubeconfig, "tick").into_iter().next()
    });
    let first_name = first["metadata"]["name"].as_str().unwrap().to_owned();
    let scheduled = scheduled_minute(&first, "tick") * 60;
    assert!(
        scheduled > created && scheduled <= created + 60,
        "{first_name} for a cronjob created at {created}"
    );
    let made = epoch_seconds(first["metadata"]["creationTimestamp"].as_str().unwrap());
    assert!(made - scheduled < 15, "{first_name} made at {made}");
    let annotations = &first["metadata"]["annotations"];
    let stamp = annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap();
    assert!(
        stamp.ends_with("+01:00") || stamp.ends_with("+02:00"),
        "{stamp} is not Paris time"
    );
    assert_eq!(epoch_seconds(stamp), scheduled, "{stamp}");
    assert_eq!(annotations["team"], "batch");
    assert_eq!(first["metadata"]["labels"]["cron"], "tick");
    let owner = &first["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "CronJob");
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["uid"], tick["metadata"]["uid"]);
    let status = eventually(a_minute_and_more, "tick's first job done", || {
        let status = object_json(&kubeconfig, "cronjob", "tick")["status"].clone();
        status["lastSuccessfulTime"].is_string().then_some(status)
    });
    assert!(epoch_seconds(status["lastScheduleTime"].as_str().unwrap()) >= scheduled);
    let events = events_of("tick");
    assert!(
        events.contains(&format!("Created job {first_name}")) && events.contains("SawCompletedJob"),
        "{events}"
    );

    // Forbid: while the first slow Job runs, the next minute starts none.
    let events = eventually(a_minute_and_more, "slow's next minute skipped", || {
        let events = events_of("slow");
        events.contains("JobAlreadyActive").then_some(events)
    });
    let slow = jobs_of(&kubeconfig, "slow");
    assert_eq!(slow.len(), 1, "{events}\n{slow:?}");
    assert!(!has_condition(&slow[0], "Complete"), "{slow:?}");
    let slow_first = slow[0]["metadata"]["name"].as_str().unwrap().to_owned();

    // History: of tick's successful Jobs the two newest stay, of fails' failed ones the newest.
    let kept = eventually(
        std::time::Duration::from_secs(240),
        "tick's history pruned to two",
        || {
            let jobs = jobs_of(&kubeconfig, "tick");
            let settled = jobs.len() == 2
                && jobs.iter().all(|job| has_condition(job, "Complete"))
                && jobs[0]["metadata"]["name"] != first_name.as_str();
            settled.then_some(jobs)
        },
    );
    assert_eq!(
        scheduled_minute(&kept[1], "tick") - scheduled_minute(&kept[0], "tick"),
        1,
        "{kept:?}"
    );
    assert!(
        events_of("tick").contains(&format!("Deleted job {first_name}")),
        "{}",
        events_of("tick")
    );
    eventually(
        std::time::Duration::from_secs(150),
        "fails' history pruned to one",
        || {
            let jobs = jobs_of(&kubeconfig, "fails");
            let settled = jobs.len() == 1
                && has_condition(&jobs[0], "Failed")
                && events_of("fails").contains("SuccessfulDelete");
            settled.then_some(())
        },
    );

    // Once the first slow Job finished, the latest time it skipped starts: never two at once.
    let slow = eventually(
        std::time::Duration::from_secs(200),
        "slow's skipped time started late",
        || {
            let jobs = jobs_of(&kubeconfig, "slow");
            (jobs.len() == 2 && jobs[1]["status"]["startTime"].is_string()).then_some(jobs)
        },
    );
    assert_eq!(slow[0]["metadata"]["name"], slow_first.as_str());
    assert!(scheduled_minute(&slow[1], "slow") > scheduled_minute(&slow[0], "slow") + 1);
    let finished = epoch_seconds(slow[0]["status"]["completionTime"].as_str().unwrap());
    let started = epoch_seconds(slow[1]["status"]["startTime"].as_str().unwrap());
    assert!(started >= finished, "{slow:?}");

    // Suspended, tick starts nothing past the next minute boundary.
    run(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let suspended = unix_now();
    let after_boundary = (suspended / 60 + 1) * 60 + 20;
    std::thread::sleep(std::time::Duration::from_secs(
        (after_boundary - unix_now()).max(0) as u64,
    ));
    // A little slack: the patch reaches the controller's cache a moment later.
    let latest = jobs_of(&kubeconfig, "tick")
        .iter()
        .map(|job| scheduled_minute(job, "tick") * 60)
        .max()
        .unwrap();
    assert!(
        latest <= suspended + 5,
        "a job for {latest} after suspending at {suspended}"
    );
    let status = object_json(&kubeconfig, "cronjob", "tick")["status"].clone();
    assert!(epoch_seconds(status["lastScheduleTime"].as_str().unwrap()) <= suspended + 5);

    // A Job made from the CronJob by hand runs, and counts in its history: the oldest goes.
    run(&["create", "job", "--from=cronjob/tick", "tick-manual"]);
    run(&[
        "wait",
        "--for=condition=Complete",
        "job/tick-manual",
        "--timeout=90s",
    ]);
    let manual = object_json(&kubeconfig, "job", "tick-manual");
    assert_eq!(
        manual["metadata"]["ownerReferences"][0]["uid"],
        tick["metadata"]["uid"]
    );
    assert_eq!(manual["metadata"]["labels"]["cron"], "tick");
    assert_eq!(
        manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    eventually(
        std::time::Duration::from_secs(60),
        "tick's oldest job pruned for the manual one",
        || {
            let names: Vec<String> = jobs_of(&kubeconfig, "tick")
                .iter()
                .map(|job| job["metadata"]["name"].as_str().unwrap().to_owned())
                .collect();
            (names.len() == 2 && names.contains(&"tick-manual".to_owned())).then_some(())
        },
    );
}

/// The pods of `app` that are not being deleted.
fn live_pods(kubeconfig: &Path, app: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&kubectl_ok(
        kubeconfig,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    ))
    .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

/// The greeting of every Running pod of `app`, by pod IP.
fn greetings(kubeconfig: &Path, app: &str) -> Vec<(String, String)> {
    live_pods(kubeconfig, app)
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            let ip = p["status"]["podIP"].as_str().unwrap().to_owned();
            let answer = get_http(&format!("{ip}:8080")).unwrap_or_default();
            let body = answer
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_owned();
            (ip, body)
        })
        .collect()
}

#[test]
fn deployments_roll_out_roll_back_pause_and_scale_with_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let hello = builtin_module(dir.path(), "hello-http");
    let manifest = dir.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: hello}}}}
  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      containers:
      - name: web
        image: {}
        ports: [{{containerPort: 8080}}]
        env: [{{name: GREETING_NAME, value: one}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#,
            hello.display()
        ),
    )
    .unwrap();
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });
    run(&["apply", "-f", manifest.to_str().unwrap()]);
    let status = run(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    // Every pod of the Deployment answers on its own IP.
    let answers = greetings(&kubeconfig, "hello");
    assert_eq!(answers.len(), 3, "{answers:?}");
    let mut ips: Vec<&String> = answers.iter().map(|(ip, _)| ip).collect();
    ips.dedup();
    assert_eq!(ips.len(), 3, "{answers:?}");
    assert!(
        answers.iter().all(|(_, body)| body == "Hello from one!"),
        "{answers:?}"
    );

    // A new template rolls out; the history records it.
    run(&[
        "annotate",
        "deployment/hello",
        "kubernetes.io/change-cause=greet two",
    ]);
    run(&["set", "env", "deployment/hello", "GREETING_NAME=two"]);
    let status = run(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert!(
        greetings(&kubeconfig, "hello")
            .iter()
            .all(|(_, b)| b == "Hello from two!")
    );
    let history = run(&["rollout", "history", "deployment/hello"]);
    assert!(
        history.contains("1 ") && history.contains("2         greet two"),
        "{history}"
    );
    let replica_sets = run(&[
        "get",
        "rs",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].spec.replicas}",
    ]);
    let mut sizes: Vec<&str> = replica_sets.split_whitespace().collect();
    sizes.sort();
    assert_eq!(
        sizes,
        ["0", "3"],
        "the old replica set is scaled to zero and kept"
    );

    // Undo goes back to revision 1's template, which becomes revision 3.
    run(&["rollout", "undo", "deployment/hello"]);
    run(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    assert!(
        greetings(&kubeconfig, "hello")
            .iter()
            .all(|(_, b)| b == "Hello from one!")
    );
    let history = run(&["rollout", "history", "deployment/hello"]);
    assert!(
        history.contains("3 ") && !history.contains("\n1 "),
        "{history}"
    );
    assert_eq!(
        run(&["get", "rs", "-l", "app=hello", "-o", "name"])
            .lines()
            .count(),
        2,
        "the rollback reused the first replica set"
    );

    // Paused, a template change waits; scaling does not.
    run(&["rollout", "pause", "deployment/hello"]);
    run(&["set", "env", "deployment/hello", "GREETING_NAME=three"]);
    run(&["scale", "deployment/hello", "--replicas=5"]);
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=5",
        "deployment/hello",
        "--timeout=90s",
    ]);
    let reason = run(&[
        "get",
        "deployment",
        "hello",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
    ]);
    assert_eq!(reason, "DeploymentPaused");
    assert!(
        greetings(&kubeconfig, "hello")
            .iter()
            .all(|(_, b)| b == "Hello from one!")
    );
    // Resumed, it rolls out, and scaling down in the middle of it lands on the new size.
    run(&["rollout", "resume", "deployment/hello"]);
    run(&["scale", "deployment/hello", "--replicas=2"]);
    let status = run(&["rollout", "status", "deployment/hello", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    eventually(
        std::time::Duration::from_secs(60),
        "two pods of three",
        || {
            let answers = greetings(&kubeconfig, "hello");
            (answers.len() == 2 && answers.iter().all(|(_, b)| b == "Hello from three!"))
                .then_some(())
        },
    );
    let deployment = object_json(&kubeconfig, "deployment", "hello");
    assert_eq!(deployment["status"]["updatedReplicas"], 2, "{deployment}");
    assert_eq!(deployment["status"]["availableReplicas"], 2, "{deployment}");
    assert_eq!(
        deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "4"
    );
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=hello",
    ]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");
}

/// One object as JSON.
fn object_json(kubeconfig: &Path, kind: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl_ok(kubeconfig, &["get", kind, name, "-o", "json"])).unwrap()
}

/// Writes `yaml` to `dir/file` and `kubectl apply`s it.
fn apply_manifest(kubeconfig: &Path, dir: &Path, file: &str, yaml: &str) {
    let (ok, _, stderr) = try_apply(kubeconfig, dir, file, yaml, &[]);
    assert!(ok, "kubectl apply of {file} failed: {stderr}");
}

/// Writes `yaml` to `dir/file` and `kubectl apply`s it with `more` arguments: whether it
/// succeeded, and what kubectl printed.
fn try_apply(
    kubeconfig: &Path,
    dir: &Path,
    file: &str,
    yaml: &str,
    more: &[&str],
) -> (bool, String, String) {
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec!["apply", "-f", path.to_str().unwrap()];
    args.extend_from_slice(more);
    kubectl(kubeconfig, &args)
}

/// A built-in component written to `dir` as `<name>.wasm`.
fn builtin_module(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, flotilla_builtins::find(name).unwrap().wasm).unwrap();
    path
}

/// `flotilla plugin push FILE --name NAME --kind KIND [--config JSON]`.
fn push_plugin(kubeconfig: &Path, wasm: &Path, name: &str, kind: &str, config: Option<&str>) {
    let mut command = Command::new(FLOTILLA);
    command
        .args(["plugin", "push"])
        .arg(wasm)
        .args(["--name", name, "--kind", kind, "--kubeconfig"])
        .arg(kubeconfig);
    if let Some(config) = config {
        command.args(["--config", config]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The same component with a custom section appended: valid, and of another digest.
fn another_build_of(wasm: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                return;
            }
        }
    }
    let name = b"flotilla-rebuild";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(b"2");
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

const MANAGER: &str = "controller-manager/up";

#[test]
fn a_misbehaving_controller_is_contained_and_the_others_keep_working() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let wasm = dir.path().join("misbehaving.wasm");
    std::fs::write(
        &wasm,
        flotilla_builtins::find("misbehaving-controller")
            .unwrap()
            .wasm,
    )
    .unwrap();
    push_plugin(
        &kubeconfig,
        &wasm,
        "misbehave",
        "controller",
        Some(r#"{"mode":"panic"}"#),
    );
    run(&["create", "configmap", "bad"]);
    run(&["label", "configmap", "bad", "misbehave=yes"]);
    let degraded = |what: &str| {
        run(&[
            "wait",
            "--for=condition=Degraded",
            "wasmplugin/misbehave",
            "--timeout=60s",
        ]);
        // The condition and the message are written together, but a later report (after a
        // reload, say) may clear the message until the next failure: wait for it.
        eventually(
            std::time::Duration::from_secs(60),
            &format!("the manager to report {what:?}"),
            || {
                let message = run(&[
                    "get",
                    "wasmplugin",
                    "misbehave",
                    "-o",
                    &format!("jsonpath={{.status.components['{MANAGER}'].message}}"),
                ]);
                message.contains(what).then_some(())
            },
        );
    };
    degraded("asked to panic on bad");

    // The built-in controllers keep working next to it.
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "rs.yaml",
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: main, image: /nowhere.wasm}]\n",
    );
    run(&[
        "wait",
        "--for=jsonpath={.status.replicas}=2",
        "rs/web",
        "--timeout=60s",
    ]);

    // A controller that never returns is stopped at its deadline, again and again.
    push_plugin(
        &kubeconfig,
        &wasm,
        "misbehave",
        "controller",
        Some(r#"{"mode":"loop"}"#),
    );
    run(&["label", "configmap", "bad", "again=1"]);
    degraded("deadline");
    run(&["scale", "rs", "web", "--replicas=3"]);
    run(&[
        "wait",
        "--for=jsonpath={.status.replicas}=3",
        "rs/web",
        "--timeout=60s",
    ]);
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/replicaset-controller",
        "--timeout=30s",
    ]);
}

#[test]
fn the_deployment_controller_is_hot_swapped_in_the_middle_of_a_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let hello = builtin_module(dir.path(), "hello-http");
    let manifest = dir.path().join("hello.yaml");
    // Each new pod is ready two seconds after it starts: the rollout takes a while.
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: hello}}\nspec:\n  replicas: 4\n  selector: {{matchLabels: {{app: hello}}}}\n  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}\n  template:\n    metadata: {{labels: {{app: hello}}}}\n    spec:\n      containers:\n      - name: web\n        image: {}\n        ports: [{{containerPort: 8080}}]\n        env: [{{name: GREETING_NAME, value: one}}]\n        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, initialDelaySeconds: 2, periodSeconds: 1}}\n",
            hello.display()
        ),
    )
    .unwrap();
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });
    run(&["apply", "-f", manifest.to_str().unwrap()]);
    run(&["rollout", "status", "deployment/hello", "--timeout=120s"]);
    run(&["set", "env", "deployment/hello", "GREETING_NAME=two"]);
    // Mid-rollout: some pods updated, not all.
    eventually(
        std::time::Duration::from_secs(60),
        "the rollout's middle",
        || {
            let d = object_json(&kubeconfig, "deployment", "hello");
            let updated = d["status"]["updatedReplicas"].as_i64().unwrap_or(0);
            (d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && (1..4).contains(&updated))
            .then_some(())
        },
    );
    let builtin = flotilla_builtins::find("deployment-controller")
        .unwrap()
        .wasm;
    let swapped = dir.path().join("deployment_controller.wasm");
    std::fs::write(&swapped, another_build_of(builtin)).unwrap();
    let digest = flotilla_plugin::digest(&std::fs::read(&swapped).unwrap());
    assert_ne!(digest, flotilla_plugin::digest(builtin));
    push_plugin(
        &kubeconfig,
        &swapped,
        "deployment-controller",
        "controller",
        None,
    );
    run(&[
        "wait",
        &format!("--for=jsonpath={{.status.components['{MANAGER}'].digest}}={digest}"),
        "wasmplugin/deployment-controller",
        "--timeout=30s",
    ]);
    // The new version finishes what the old one started.
    let status = run(&["rollout", "status", "deployment/hello", "--timeout=120s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let answers = greetings(&kubeconfig, "hello");
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert!(
        answers.iter().all(|(_, b)| b == "Hello from two!"),
        "{answers:?}"
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/deployment-controller",
        "--timeout=30s",
    ]);
}

#[test]
fn controllers_resume_after_a_restart_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "up",
        "--disable-agent",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut up = start(&args);
    let kubeconfig = up.kubeconfig.clone();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "rs.yaml",
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: main, image: /nowhere.wasm}]\n",
    );
    run(&[
        "wait",
        "--for=jsonpath={.status.replicas}=3",
        "rs/web",
        "--timeout=60s",
    ]);
    assert!(terminate(&mut up).success());
    let _up = start(&args);
    // After the restart the controller picks up where it was: one more replica is one more
    // pod, and nothing was created twice.
    run(&["scale", "rs", "web", "--replicas=4"]);
    run(&[
        "wait",
        "--for=jsonpath={.status.replicas}=4",
        "rs/web",
        "--timeout=60s",
    ]);
    let pods = run(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(pods.lines().count(), 4, "{pods}");
    // Events are written after the pods they report: wait for the fourth, and see no fifth.
    let count_creates = || {
        run(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web,reason=SuccessfulCreate",
            "-o",
            "name",
        ])
        .lines()
        .count()
    };
    eventually(
        std::time::Duration::from_secs(30),
        "the fourth SuccessfulCreate event",
        || (count_creates() >= 4).then_some(()),
    );
    assert_eq!(count_creates(), 4, "a pod was created twice");
}

#[test]
fn deleting_a_deployment_cascades_in_the_background_the_foreground_or_orphans() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: main, image: /nowhere.wasm}]\n";
    let count = |kind: &str| {
        run(&["get", kind, "-l", "app=web", "-o", "name"])
            .lines()
            .count()
    };
    let deploy = || {
        apply_manifest(&kubeconfig, dir.path(), "web.yaml", yaml);
        run(&[
            "wait",
            "--for=jsonpath={.status.replicas}=2",
            "deployment/web",
            "--timeout=60s",
        ]);
        assert_eq!(count("rs"), 1);
        assert_eq!(count("pods"), 2);
    };

    // Background (kubectl's default): the owner goes at once, its dependents after it.
    deploy();
    run(&["delete", "deployment", "web"]);
    eventually(
        std::time::Duration::from_secs(60),
        "the dependents' collection",
        || (count("rs") == 0 && count("pods") == 0).then_some(()),
    );

    // Foreground: the owner stays until its dependents are gone; kubectl waits for it.
    deploy();
    run(&[
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert_eq!(count("rs"), 0, "dependents go before the owner");
    assert_eq!(count("pods"), 0);

    // Orphan: the dependents stay, released.
    deploy();
    run(&[
        "delete",
        "deployment",
        "web",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    assert_eq!(count("rs"), 1);
    assert_eq!(count("pods"), 2);
    let owners = run(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences}",
    ]);
    assert!(
        owners.trim().is_empty() || owners.trim() == "[]",
        "{owners}"
    );
    // The released replica set still keeps its pods.
    run(&["delete", "pod", "-l", "app=web", "--wait=false"]);
    eventually(
        std::time::Duration::from_secs(60),
        "the replacement pods",
        || (live_pods(&kubeconfig, "web").len() == 2).then_some(()),
    );
}

/// The namespace controller (a plugin) empties a deleted namespace of every kind the API
/// serves, custom resources included; while a finalizer holds something it says so in the
/// namespace's conditions, and the namespace goes once that is released.
#[test]
fn deleting_a_namespace_empties_it_of_every_kind_and_reports_what_holds_it() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let manifest = dir.path().join("team.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
",
    )
    .unwrap();
    run(&["apply", "-f", manifest.to_str().unwrap()]);
    run(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ]);
    let content = dir.path().join("content.yaml");
    std::fs::write(
        &content,
        "apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: team}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: held, namespace: team, finalizers: [example.com/hold]}
---
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: team}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web.wasm}]}
",
    )
    .unwrap();
    run(&["apply", "-f", content.to_str().unwrap()]);
    run(&[
        "wait",
        "--for=jsonpath={.status.replicas}=2",
        "deploy/web",
        "-n",
        "team",
        "--timeout=60s",
    ]);
    assert_eq!(
        run(&[
            "get",
            "namespace",
            "team",
            "-o",
            "jsonpath={.spec.finalizers}"
        ]),
        r#"["kubernetes"]"#
    );

    run(&["delete", "namespace", "team", "--wait=false"]);
    let condition = |kind: &str| {
        run(&[
            "get",
            "namespace",
            "team",
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].message}}"),
        ])
    };
    let held = eventually(
        std::time::Duration::from_secs(60),
        "the held namespace's conditions",
        || {
            let message = condition("NamespaceFinalizersRemaining");
            message.contains("example.com/hold").then_some(message)
        },
    );
    assert_eq!(
        held,
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        condition("NamespaceContentRemaining"),
        "Some resources are remaining: configmaps. has 1 resource instances"
    );
    assert_eq!(
        run(&["get", "namespace", "team", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    for kind in ["widgets", "secrets", "deployments", "replicasets", "pods"] {
        assert_eq!(
            run(&["get", kind, "-n", "team", "-o", "name"]).trim(),
            "",
            "{kind} are left in the terminating namespace"
        );
    }
    let (ok, _, stderr) = kubectl(&kubeconfig, &["create", "configmap", "late", "-n", "team"]);
    assert!(!ok && stderr.contains("being terminated"), "{stderr}");

    run(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    run(&["wait", "--for=delete", "namespace/team", "--timeout=60s"]);
}

#[test]
fn services_get_endpoints_and_slices_from_their_selector() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _cidr) = cluster_with_node(dir.path());
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    let hello = builtin_module(dir.path(), "hello-http");
    let pod = |name: &str, probe: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: hello}}}}\nspec:\n  containers:\n  - name: web\n    image: {}\n    ports: [{{containerPort: 8080, name: web}}]\n    readinessProbe: {{{probe}, periodSeconds: 1}}\n---\n",
            hello.display()
        )
    };
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });
    // Two pods that become ready, one whose readiness probe always fails (nothing listens on
    // the port it checks).
    let serving = "httpGet: {path: /healthz, port: 8080}";
    let yaml = pod("a", serving)
        + &pod("b", serving)
        + &pod("stuck", "tcpSocket: {port: 9999}")
        + "apiVersion: v1\nkind: Service\nmetadata: {name: hello, labels: {tier: web}}\nspec:\n  selector: {app: hello}\n  ports: [{name: http, port: 80, targetPort: web}]\n";
    apply_manifest(&kubeconfig, dir.path(), "hello.yaml", &yaml);
    for name in ["a", "b"] {
        run(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=60s",
        ]);
    }
    let ip = |name: &str| {
        object_json(&kubeconfig, "pod", name)["status"]["podIP"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut ready = vec![ip("a"), ip("b")];
    ready.sort();
    let endpoints = eventually(std::time::Duration::from_secs(60), "the endpoints", || {
        let e = object_json(&kubeconfig, "endpoints", "hello");
        let subset = &e["subsets"][0];
        let mut ips: Vec<String> = subset["addresses"]
            .as_array()?
            .iter()
            .map(|a| a["ip"].as_str().unwrap().to_owned())
            .collect();
        ips.sort();
        let not_ready = subset["notReadyAddresses"].as_array().map_or(0, Vec::len);
        (ips == ready && not_ready == 1).then_some(e)
    });
    let subset = &endpoints["subsets"][0];
    assert_eq!(
        subset["notReadyAddresses"][0]["targetRef"]["name"], "stuck",
        "{endpoints}"
    );
    // The named target port is the pods' port called `web`.
    assert_eq!(
        subset["ports"][0],
        serde_json::json!({"name": "http", "port": 8080, "protocol": "TCP"})
    );
    assert_eq!(endpoints["metadata"]["labels"]["tier"], "web");
    let slices: serde_json::Value = serde_json::from_str(&run(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=hello",
        "-o",
        "json",
    ]))
    .unwrap();
    let slice = &slices["items"][0];
    assert_eq!(slice["ports"][0]["port"], 8080);
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    let ready_in_slice = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["conditions"]["ready"] == true)
        .count();
    assert_eq!(ready_in_slice, 2, "{slice}");

    // A deleted pod leaves the Endpoints; a deleted Service takes its Endpoints and slices.
    run(&["delete", "pod", "a"]);
    eventually(
        std::time::Duration::from_secs(60),
        "the pod's removal",
        || {
            let e = object_json(&kubeconfig, "endpoints", "hello");
            (e["subsets"][0]["addresses"].as_array()?.len() == 1).then_some(())
        },
    );
    run(&["delete", "service", "hello"]);
    eventually(std::time::Duration::from_secs(60), "the clean-up", || {
        let left = run(&["get", "endpoints,endpointslices", "-o", "name"]);
        (!left.contains("hello")).then_some(())
    });
}

#[test]
fn an_unreachable_node_is_tainted_and_its_pods_are_replaced_elsewhere() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    // Short periods, through the built-in controller's configuration (its WasmPlugin is
    // made by the controller manager once it starts).
    eventually(
        std::time::Duration::from_secs(60),
        "the built-in WasmPlugin",
        || {
            kubectl(
                &kubeconfig,
                &["get", "wasmplugin", "node-lifecycle-controller"],
            )
            .0
            .then_some(())
        },
    );
    run(&[
        "wait",
        "--for=condition=Ready",
        "wasmplugin/node-lifecycle-controller",
        "--timeout=60s",
    ]);
    run(&[
        "patch",
        "wasmplugin",
        "node-lifecycle-controller",
        "--type=merge",
        "-p",
        r#"{"spec":{"config":{"nodeMonitorGracePeriodSeconds":3,"defaultTolerationSeconds":2}}}"#,
    ]);
    let _staying = simulated_nodes(
        &kubeconfig,
        &[
            "--simulate",
            "1",
            "--node-prefix",
            "stay-",
            "--lease-interval",
            "1",
        ],
    );
    let mut leaving = simulated_nodes(
        &kubeconfig,
        &[
            "--simulate",
            "1",
            "--node-prefix",
            "gone-",
            "--lease-interval",
            "1",
        ],
    );
    // A pod that tolerates the unreachable taint for ever stays bound to the node.
    let yaml = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: main, image: /nowhere.wasm}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: patient}\nspec:\n  nodeName: gone-0\n  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}]\n  containers: [{name: main, image: /nowhere.wasm}]\n";
    apply_manifest(&kubeconfig, dir.path(), "web.yaml", yaml);
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=4",
        "rs/web",
        "--timeout=60s",
    ]);
    let nodes_of_pods = || -> Vec<String> {
        live_pods(&kubeconfig, "web")
            .iter()
            .map(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert!(
        nodes_of_pods().iter().any(|n| n == "gone-0"),
        "{:?}",
        nodes_of_pods()
    );

    terminate_hard(&mut leaving);
    run(&[
        "wait",
        "--for=condition=Ready=Unknown",
        "node/gone-0",
        "--timeout=60s",
    ]);
    let node = object_json(&kubeconfig, "node", "gone-0");
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_owned()),
        "{taints:?}"
    );
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_owned()),
        "{taints:?}"
    );
    // Its pods are evicted and the replica set makes them again on the node that stayed.
    eventually(
        std::time::Duration::from_secs(60),
        "the replacements",
        || {
            let nodes = nodes_of_pods();
            (nodes.len() == 4 && nodes.iter().all(|n| n == "stay-0")).then_some(())
        },
    );
    run(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=4",
        "rs/web",
        "--timeout=60s",
    ]);
    assert!(object_json(&kubeconfig, "pod", "patient")["metadata"]["deletionTimestamp"].is_null());
    let events = run(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty());
}

/// A pod CIDR of its own for each cluster a test starts.
fn cluster_cidr() -> String {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = std::process::id().wrapping_mul(7).wrapping_add(call);
    format!("127.{}.{}.0/24", 100 + (id >> 8) % 100, id % 256)
}

/// SIGKILL, and wait for the process to be gone.
fn terminate_hard(running: &mut Running) {
    let _ = running.child.kill();
    let _ = running.child.wait();
}

#[test]
fn pods_benchmark_reports_the_agent_next_to_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(FLOTILLA)
        .args([
            "bench",
            "pods",
            "--burst",
            "5",
            "--starts",
            "20",
            "--idle-pods",
            "10",
            "--http-seconds",
            "1",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for row in [
        "| real node (hello-http component, listener bound) |",
        "| simulated node, same cluster (runs nothing) |",
        "| agent runtime (sandbox, log sinks, run to exit) |",
        "| raw wasmtime (empty WASI context) |",
        "| agent overhead |",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "{row} in {stdout}"
        );
    }
    // Both HTTP servers answered every request wrk sent.
    for row in [
        "| flotilla agent (pod IP, instance per request) |",
        "| wasmtime serve -O pooling-allocator=y (instance per request) |",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row} in {stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells[2].parse::<f64>().unwrap() > 0.0, "{line}");
        assert_eq!(cells[6], "0", "no failed requests: {line}");
    }
    assert!(
        stdout.contains("Idle pods: 10 `wasi:cli` pods asleep"),
        "{stdout}"
    );
}

/// Addresses no other test uses: a pod CIDR, a service CIDR and a node IP in one /24 of the
/// loopback range.
fn service_addresses() -> (String, String, String) {
    let pods = cluster_cidr();
    let block = pods.trim_end_matches(".0/24").to_owned();
    (
        format!("{block}.0/25"),
        format!("{block}.128/26"),
        format!("{block}.250"),
    )
}

/// One HTTP/1.1 GET on a connection of its own from `source` (any address when none):
/// the status code and the body.
fn http_get_from(address: &str, source: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let target: std::net::SocketAddr = address.parse().map_err(std::io::Error::other)?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(source) = source {
        let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        socket.bind(&from.into())?;
    }
    socket.connect_timeout(&target.into(), std::time::Duration::from_secs(5))?;
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok((status, body.trim().to_owned()))
}

/// Which pod answered: `Hello from <pod>!…` gives `<pod>`.
fn greeter(body: &str) -> String {
    let greeting = body.trim_start_matches("Hello from ");
    greeting.split('!').next().unwrap_or(greeting).to_owned()
}

/// How many of `count` requests to `address` each pod answered; panics on a failed request.
fn answers_by_pod(
    address: &str,
    source: Option<&str>,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut by_pod = std::collections::BTreeMap::new();
    for _ in 0..count {
        let (status, body) =
            http_get_from(address, source).unwrap_or_else(|e| panic!("GET {address}: {e}"));
        assert_eq!(status, 200, "GET {address}: {body}");
        *by_pod.entry(greeter(&body)).or_insert(0) += 1;
    }
    by_pod
}

/// A Deployment `web` of `replicas` hello-http pods, each greeting with its pod name, with
/// `pod_spec` (indented YAML) added to the pod spec.
fn web_deployment(hello: &Path, replicas: u32, pod_spec: &str) -> String {
    app_deployment("web", hello, replicas, pod_spec)
}

/// [`web_deployment`] for the app (and Deployment) `app`.
fn app_deployment(app: &str, hello: &Path, replicas: u32, pod_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
{pod_spec}      containers:
      - name: web
        image: {}
        ports: [{{name: web, containerPort: 8080}}]
        env: [{{name: GREETING_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#,
        hello.display()
    )
}

/// The names of the Running, ready pods of `app`.
fn ready_pod_names(kubeconfig: &Path, app: &str) -> std::collections::BTreeSet<String> {
    live_pods(kubeconfig, app)
        .iter()
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until requests to `address` reach every ready pod of `app` and only those.
fn wait_until_served_by_ready_pods(kubeconfig: &Path, address: &str, app: &str) {
    eventually(
        std::time::Duration::from_secs(60),
        &format!("{address} served by every ready pod of {app}"),
        || {
            let ready = ready_pod_names(kubeconfig, app);
            let answered: std::collections::BTreeSet<String> = (0..ready.len() * 4)
                .filter_map(|_| http_get_from(address, None).ok())
                .filter(|(status, _)| *status == 200)
                .map(|(_, body)| greeter(&body))
                .collect();
            (!ready.is_empty() && answered == ready).then_some(())
        },
    );
}

/// The ClusterIP and the NodePorts (by port name) of a Service.
fn service_addresses_of(
    kubeconfig: &Path,
    name: &str,
) -> (String, std::collections::BTreeMap<String, u16>) {
    let service = object_json(kubeconfig, "service", name);
    let ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let node_ports = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["nodePort"].as_u64()? as u16,
            ))
        })
        .collect();
    (ip, node_ports)
}

/// Waits until this node's proxy runs the WasmPlugin `plugin` and says it is ready.
fn wait_for_proxy_strategy(kubeconfig: &Path, plugin: &str, node: &str) {
    kubectl_ok(
        kubeconfig,
        &[
            "wait",
            &format!("--for=jsonpath={{.status.components['proxy/{node}'].ready}}=true"),
            &format!("wasmplugin/{plugin}"),
            "--timeout=60s",
        ],
    );
}

/// `flotilla up` (node `node-a`) on addresses of its own, with `more` arguments: the process,
/// the kubeconfig, the node's IP and the service CIDR.
fn cluster_on_own_addresses(dir: &Path, more: &[&str]) -> (Running, PathBuf, String, String) {
    let (pods, services, node_ip) = service_addresses();
    let mut args = vec!["--service-cidr", &services, "--node-ip", &node_ip];
    args.extend_from_slice(more);
    let (up, kubeconfig, _) = cluster_with_node_on(dir, pods, &args);
    eventually(std::time::Duration::from_secs(60), "the node", || {
        kubectl(&kubeconfig, &["get", "node", "node-a"])
            .0
            .then_some(())
    });
    (up, kubeconfig, node_ip, services)
}

#[test]
fn services_carry_traffic_to_ready_pods_by_cluster_ip_and_node_port() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, node_ip, services) =
        cluster_on_own_addresses(dir.path(), &["--dns-port", "5353"]);
    let hello = builtin_module(dir.path(), "hello-http");
    let manifest = format!(
        "{}---\n{}",
        web_deployment(&hello, 3, ""),
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: raw, port: 81, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: pods}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{name: http, port: 80}]
"#
    );
    apply_manifest(&kubeconfig, dir.path(), "web.yaml", &manifest);
    let status = kubectl_ok(
        &kubeconfig,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let (cluster_ip, node_ports) = service_addresses_of(&kubeconfig, "web");
    assert!(
        cluster_ip.starts_with(services.trim_end_matches(".128/26")),
        "{cluster_ip}"
    );
    let http = format!("{cluster_ip}:80");
    let raw = format!("{cluster_ip}:81");
    let node_http = format!("{node_ip}:{}", node_ports["http"]);
    let node_raw = format!("{node_ip}:{}", node_ports["raw"]);
    wait_until_served_by_ready_pods(&kubeconfig, &http, "web");
    let pods = ready_pod_names(&kubeconfig, "web");
    assert_eq!(pods.len(), 3, "{pods:?}");

    // The native round-robin: per request at L7, per connection at L4, on the ClusterIP and
    // on the NodePort alike.
    for address in [&http, &raw, &node_http, &node_raw] {
        let by_pod = answers_by_pod(address, None, 30);
        assert_eq!(
            by_pod
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            pods,
            "{address}: {by_pod:?}"
        );
        assert!(by_pod.values().all(|n| *n == 10), "{address}: {by_pod:?}");
    }

    // The node's DNS server knows the Services by name; a headless one by its pods' IPs.
    let dns = format!("{node_ip}:5353");
    assert_eq!(
        dns_lookup(&dns, "web.default.svc.cluster.local."),
        (0, vec![cluster_ip.clone()])
    );
    assert_eq!(
        dns_lookup(&dns, "web.default."),
        (0, vec![cluster_ip.clone()])
    );
    assert_eq!(
        dns_lookup(&dns, "absent.default.svc.cluster.local.").0,
        3,
        "NXDOMAIN"
    );
    let mut pod_ips: Vec<String> = live_pods(&kubeconfig, "web")
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_owned())
        .collect();
    pod_ips.sort();
    eventually(
        std::time::Duration::from_secs(30),
        "the headless Service's pods in DNS",
        || {
            let (code, mut ips) = dns_lookup(&dns, "pods.default.svc.cluster.local.");
            ips.sort();
            (code == 0 && ips == pod_ips).then_some(())
        },
    );
    // The `kubernetes` Service carries clients to the API server.
    let (api_ip, _) = service_addresses_of(&kubeconfig, "kubernetes");
    assert_eq!(
        dns_lookup(&dns, "kubernetes.default.svc.cluster.local.").1,
        vec![api_ip.clone()]
    );
    let api = std::net::TcpStream::connect(format!("{api_ip}:443"));
    assert!(api.is_ok(), "{api:?}");

    // Workloads resolve Service names in their own lookups, short and qualified.
    let workload = builtin_module(dir.path(), "workload");
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "echo.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: echo, labels: {{app: echo}}}}
spec:
  containers: [{{name: echo, image: {workload}, args: [serve, "9000"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 9000}}]
"#,
            workload = workload.display()
        ),
    );
    let (echo_cluster_ip, _) = service_addresses_of(&kubeconfig, "echo");
    eventually(
        std::time::Duration::from_secs(60),
        "the echo Service",
        || {
            use std::io::Read;
            let mut stream =
                std::net::TcpStream::connect(format!("{echo_cluster_ip}:9000")).ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).ok()?;
            answer.contains(" from ").then_some(())
        },
    );
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "client.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  restartPolicy: OnFailure
  containers:
  - name: client
    image: {workload}
    args: [fetch, "echo:9000", fetch, "echo.default.svc.cluster.local:9000", print, done]
"#,
            workload = workload.display()
        ),
    );
    let logs = logs_holding(&kubeconfig, "client", "done");
    let echo_ip = pod_json(&kubeconfig, "echo")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        logs.matches(&format!("{echo_ip}:9000 from ")).count(),
        2,
        "{logs}"
    );

    // A Service without endpoints says so.
    let (nobody_ip, _) = service_addresses_of(&kubeconfig, "nobody");
    let (status, body) = http_get_from(&format!("{nobody_ip}:80"), None).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no endpoints available"), "{body}");

    // ClientIP affinity: each client stays with one pod.
    wait_for_proxy_strategy(&kubeconfig, "client-ip-affinity", "node-a");
    let (sticky_ip, _) = service_addresses_of(&kubeconfig, "sticky");
    let sticky = format!("{sticky_ip}:80");
    for source in ["127.0.0.1", node_ip.as_str()] {
        let by_pod = answers_by_pod(&sticky, Some(source), 20);
        assert_eq!(by_pod.len(), 1, "from {source}: {by_pod:?}");
    }

    // A deleted pod gets no more requests, and none fails meanwhile.
    let gone = pods.iter().next().unwrap().clone();
    kubectl_ok(&kubeconfig, &["delete", "pod", &gone, "--wait=false"]);
    eventually(
        std::time::Duration::from_secs(30),
        "the deleted pod out of the endpoints",
        || {
            let slices = kubectl_ok(
                &kubeconfig,
                &[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "json",
                ],
            );
            let slices: serde_json::Value = serde_json::from_str(&slices).unwrap();
            let still_ready = slices["items"].as_array().unwrap().iter().any(|slice| {
                slice["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| {
                        e["targetRef"]["name"] == gone.as_str() && e["conditions"]["ready"] == true
                    })
            });
            (!still_ready).then_some(())
        },
    );
    let by_pod = answers_by_pod(&http, None, 30);
    assert!(
        !by_pod.contains_key(&gone),
        "{gone} still answered: {by_pod:?}"
    );
    kubectl_ok(
        &kubeconfig,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    wait_until_served_by_ready_pods(&kubeconfig, &http, "web");
}

#[test]
fn a_strategy_is_swapped_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, _, _) = cluster_on_own_addresses(dir.path(), &[]);
    let hello = builtin_module(dir.path(), "hello-http");
    let manifest = format!(
        "{}---\n{}",
        web_deployment(&hello, 3, ""),
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  annotations: {proxy.flotilla.dev/strategy: round-robin}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
"#
    );
    apply_manifest(&kubeconfig, dir.path(), "web.yaml", &manifest);
    kubectl_ok(
        &kubeconfig,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    wait_for_proxy_strategy(&kubeconfig, "round-robin", "node-a");
    let (cluster_ip, _) = service_addresses_of(&kubeconfig, "web");
    let url = format!("http://{cluster_ip}:80/");
    wait_until_served_by_ready_pods(&kubeconfig, &format!("{cluster_ip}:80"), "web");

    // The WASM round-robin takes turns exactly, as the native one does.
    let by_pod = answers_by_pod(&format!("{cluster_ip}:80"), None, 30);
    assert!(
        by_pod.len() == 3 && by_pod.values().all(|n| *n == 10),
        "{by_pod:?}"
    );

    // Keep-alive load while the WasmPlugin's module is replaced (by `random`'s).
    let load = Command::new("hey")
        .args(["-z", "8s", "-c", "8", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hey (scripts/deps installs it)");
    let random = builtin_module(dir.path(), "random");
    let digest = flotilla_plugin::digest(&std::fs::read(&random).unwrap());
    push_plugin(&kubeconfig, &random, "round-robin", "proxy-strategy", None);
    wait_for_component_digest(&kubeconfig, "round-robin", "proxy/node-a", &digest);
    let output = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let codes = report
        .split("Status code distribution:")
        .nth(1)
        .unwrap_or_else(|| panic!("no status codes in {report}"));
    let codes: Vec<&str> = codes
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| l.starts_with('['))
        .collect();
    assert!(
        codes.len() == 1 && codes[0].starts_with("[200]"),
        "{report}"
    );
    assert!(!report.contains("Error distribution"), "{report}");
    let served: u64 = codes[0]
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(served > 1000, "{report}");
    // The swap landed while the load ran: the proxy says so, and picks are random now.
    let plugin = object_json(&kubeconfig, "wasmplugin", "round-robin");
    assert_eq!(
        plugin["status"]["components"]["proxy/node-a"]["digest"],
        digest.as_str()
    );
    let by_pod = answers_by_pod(&format!("{cluster_ip}:80"), None, 60);
    assert_eq!(by_pod.len(), 3, "{by_pod:?}");
}

#[test]
fn traffic_entering_one_node_reaches_pods_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (pods_a, services, node_a) = service_addresses();
    let (pods_b, _, node_b) = service_addresses();
    let up = start(&[
        "up",
        "--disable-agent",
        "--service-cidr",
        &services,
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let kubeconfig = up.kubeconfig.clone();
    let agent = |name: &str, pods: &str, ip: &str| {
        let data = dir.path().join(name);
        agent_process(
            &[
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--node-name",
                name,
                "--pod-cidr",
                pods,
                "--node-ip",
                ip,
                "--port",
                "0",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            "proxying services",
        )
    };
    let _a = agent("node-a", &pods_a, &node_a);
    let _b = agent("node-b", &pods_b, &node_b);
    for node in ["node-a", "node-b"] {
        kubectl_ok(
            &kubeconfig,
            &[
                "wait",
                "--for=condition=Ready",
                &format!("node/{node}"),
                "--timeout=60s",
            ],
        );
    }
    let hello = builtin_module(dir.path(), "hello-http");
    let manifest = format!(
        "{}---\n{}",
        web_deployment(
            &hello,
            2,
            "      nodeSelector: {kubernetes.io/hostname: node-a}\n"
        ),
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
"#
    );
    apply_manifest(&kubeconfig, dir.path(), "web.yaml", &manifest);
    kubectl_ok(
        &kubeconfig,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    for pod in live_pods(&kubeconfig, "web") {
        assert_eq!(pod["spec"]["nodeName"], "node-a");
        assert!(
            pod["status"]["podIP"]
                .as_str()
                .unwrap()
                .starts_with(pods_a.trim_end_matches(".0/25"))
        );
    }
    let (cluster_ip, node_ports) = service_addresses_of(&kubeconfig, "web");
    // Node B runs none of the pods; its NodePort and the ClusterIP (which both nodes' proxies
    // serve) reach them on node A.
    for address in [
        format!("{node_b}:{}", node_ports["http"]),
        format!("{node_a}:{}", node_ports["http"]),
        format!("{cluster_ip}:80"),
    ] {
        wait_until_served_by_ready_pods(&kubeconfig, &address, "web");
    }
    let by_pod = answers_by_pod(&format!("{node_b}:{}", node_ports["http"]), None, 20);
    assert!(
        by_pod.len() == 2 && by_pod.values().all(|n| *n == 10),
        "{by_pod:?}"
    );
}

/// Asks the DNS server at `server` for `name`'s A records: the response code and addresses.
fn dns_lookup(server: &str, name: &str) -> (u16, Vec<String>) {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut query = Message::new();
    query
        .set_id(7)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&query.to_vec().unwrap(), server).unwrap();
    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).unwrap();
    let reply = Message::from_vec(&buffer[..length]).unwrap();
    assert_eq!(reply.id(), 7);
    let ips = reply
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    (u16::from(reply.response_code()), ips)
}

/// `curl` of `url`, with `host:port` resolved to `ip` and `ca` trusted: the status and the body.
fn curl(url: &str, resolve: &str, ca: &Path) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", resolve, "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {url}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.trim().to_owned())
}

#[test]
fn an_ingress_routes_by_host_and_path_over_http_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, kubeconfig, node_ip, _) = cluster_on_own_addresses(
        dir.path(),
        &[
            "--ingress-http-port",
            "8080",
            "--ingress-https-port",
            "8443",
        ],
    );
    // A certificate for shop.test signed by a CA of the test's own.
    let tls = dir.path().join("tls");
    flotilla_apiserver::pki::Pki::load_or_create(&tls, &["shop.test".into()]).unwrap();
    kubectl_ok(
        &kubeconfig,
        &[
            "create",
            "secret",
            "tls",
            "shop-tls",
            "--cert",
            tls.join("server.crt").to_str().unwrap(),
            "--key",
            tls.join("server.key").to_str().unwrap(),
        ],
    );
    let class = object_json(&kubeconfig, "ingressclass", "flotilla");
    assert_eq!(class["spec"]["controller"], "flotilla.dev/ingress-proxy");
    let hello = builtin_module(dir.path(), "hello-http");
    let manifest = format!(
        "{}---\n{}---\n{}",
        app_deployment("web", &hello, 2, ""),
        app_deployment("api", &hello, 1, ""),
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{port: 9000, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop}
spec:
  ingressClassName: flotilla
  defaultBackend: {service: {name: web, port: {name: http}}}
  tls: [{hosts: [shop.test], secretName: shop-tls}]
  rules:
  - host: shop.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 9000}}}}
  - host: "*.other.test"
    http:
      paths:
      - {path: /exact, pathType: Exact, backend: {service: {name: api, port: {number: 9000}}}}
      - {path: /missing, pathType: Prefix, backend: {service: {name: absent, port: {number: 80}}}}
"#
    );
    apply_manifest(&kubeconfig, dir.path(), "shop.yaml", &manifest);
    for app in ["web", "api"] {
        kubectl_ok(
            &kubeconfig,
            &[
                "rollout",
                "status",
                &format!("deployment/{app}"),
                "--timeout=90s",
            ],
        );
    }
    let ca = tls.join("ca.crt");
    let https = |host: &str, path: &str| {
        curl(
            &format!("https://{host}:8443{path}"),
            &format!("{host}:8443:{node_ip}"),
            &ca,
        )
    };
    let http = |host: &str, path: &str| {
        curl(
            &format!("http://{host}:8080{path}"),
            &format!("{host}:8080:{node_ip}"),
            &ca,
        )
    };
    let app_of = |(status, body): (u16, String)| {
        assert_eq!(status, 200, "{body}");
        greeter(&body).split('-').next().unwrap().to_owned()
    };
    eventually(
        std::time::Duration::from_secs(60),
        "the Ingress routes",
        || {
            let (status, body) = http("shop.test", "/api/items");
            (status == 200 && greeter(&body).starts_with("api-")).then_some(())
        },
    );
    // Over TLS, the certificate is the Secret's, chosen by SNI (curl checks it against the
    // test's CA and the name).
    assert_eq!(app_of(https("shop.test", "/")), "web");
    assert_eq!(app_of(https("shop.test", "/cart")), "web");
    assert_eq!(app_of(https("shop.test", "/api")), "api");
    assert_eq!(app_of(https("shop.test", "/api/items")), "api");
    assert_eq!(
        app_of(https("shop.test", "/apiary")),
        "web",
        "prefixes match by element"
    );
    // Plain HTTP, a wildcard host, Exact paths and the default backend.
    assert_eq!(app_of(http("shop.test", "/api/items")), "api");
    assert_eq!(app_of(http("a.other.test", "/exact")), "api");
    assert_eq!(
        app_of(http("a.other.test", "/exact/more")),
        "web",
        "default backend"
    );
    assert_eq!(app_of(http("unknown.test", "/")), "web", "default backend");
    let (status, body) = http("a.other.test", "/missing");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("absent"), "{body}");
    // Both web pods take requests through the Ingress.
    let webs: std::collections::BTreeSet<String> = (0..8)
        .map(|_| greeter(&https("shop.test", "/").1))
        .collect();
    assert_eq!(webs.len(), 2, "{webs:?}");

    // An Ingress of another class is not served here.
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "other.yaml",
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: elsewhere}
spec:
  ingressClassName: nginx
  rules:
  - host: elsewhere.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 9000}}}}
"#,
    );
    // A later change to a served Ingress shows the proxy has seen the other one meanwhile.
    kubectl_ok(
        &kubeconfig,
        &[
            "patch",
            "ingress",
            "shop",
            "--type=json",
            "-p",
            r#"[{"op": "add", "path": "/spec/rules/-", "value": {"host": "later.test", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 9000}}}}]}}}]"#,
        ],
    );
    eventually(
        std::time::Duration::from_secs(30),
        "the patched rule",
        || (app_of(http("later.test", "/")) == "api").then_some(()),
    );
    assert_eq!(
        app_of(http("elsewhere.test", "/")),
        "web",
        "default backend, not api"
    );
}

#[test]
fn proxy_benchmark_reports_the_proxy_next_to_direct_and_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(FLOTILLA)
        .args(["bench", "proxy", "--seconds", "1", "--rounds", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every path carried load and answered every request wrk sent.
    for row in [
        "| direct to the pod |",
        "| Flotilla proxy, native round-robin |",
        "| Flotilla proxy, WASM strategy",
        "| nginx reverse proxy",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row} in {stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells[2].parse::<f64>().unwrap() > 0.0, "{line}");
        assert_eq!(cells[8], "0", "no failed requests: {line}");
    }
    assert!(stdout.contains("WASM strategy cost:"), "{stdout}");
}

/// An AdmissionPolicy of `examples/require-labels` on ConfigMaps, with `extra` spec lines.
fn label_policy(name: &str, plugin: &str, settings: &str, extra: &str) -> String {
    format!(
        "apiVersion: plugins.flotilla.dev/v1alpha1
kind: AdmissionPolicy
metadata:
  name: {name}
spec:
  plugin: {plugin}
  mode: Validating
  rules:
  - operations: [CREATE, UPDATE]
    apiGroups: [\"\"]
    apiVersions: [v1]
    resources: [configmaps]
  settings: {settings}
{extra}"
    )
}

#[test]
fn admission_policies_deny_warn_and_check_their_settings_with_kubectl() {
    use std::time::Duration;
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let wasm = builtin_module(dir.path(), "require-labels");
    push_plugin(
        &kubeconfig,
        &wasm,
        "require-labels",
        "admission-policy",
        None,
    );

    // Settings the plugin refuses refuse the policy, naming the field and the plugin's reason.
    let (ok, _, refused) = try_apply(
        &kubeconfig,
        dir.path(),
        "bad.yaml",
        &label_policy("bad", "require-labels", "{labels: team}", ""),
        &[],
    );
    assert!(!ok);
    assert!(
        refused.contains("spec.settings") && refused.contains("a list of label keys"),
        "{refused}"
    );
    let (ok, _, refused) = try_apply(
        &kubeconfig,
        dir.path(),
        "missing.yaml",
        &label_policy("missing", "no-such-plugin", "{}", ""),
        &[],
    );
    assert!(!ok);
    assert!(
        refused.contains("WasmPlugin \"no-such-plugin\" not found"),
        "{refused}"
    );

    apply_manifest(
        &kubeconfig,
        dir.path(),
        "team.yaml",
        &label_policy("team-label", "require-labels", "{labels: [team]}", ""),
    );
    kubectl_ok(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "admissionpolicy/team-label",
            "--timeout=30s",
        ],
    );
    // The policy's verdict is what kubectl prints, and nothing is stored.
    let (ok, _, denied) = kubectl(&kubeconfig, &["create", "configmap", "plain"]);
    assert!(!ok);
    assert!(
        denied.contains(
            "admission policy \"team-label\" denied the request: ConfigMap plain is missing required label(s): team"
        ),
        "{denied}"
    );
    let (ok, _, _) = kubectl(&kubeconfig, &["get", "configmap", "plain"]);
    assert!(!ok, "a denied object was stored");
    // A dry run is admitted by the same policies and leaves nothing behind.
    let labelled = |name: &str, team: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    team: \"{team}\"\n"
        )
    };
    let (ok, _, error) = try_apply(
        &kubeconfig,
        dir.path(),
        "dry.yaml",
        &labelled("dry", "a"),
        &["--dry-run=server"],
    );
    assert!(ok, "{error}");
    let (ok, _, _) = kubectl(&kubeconfig, &["get", "configmap", "dry"]);
    assert!(!ok, "a dry run stored its object");
    // A warning from the policy reaches kubectl.
    let (ok, _, warned) = try_apply(
        &kubeconfig,
        dir.path(),
        "empty.yaml",
        &labelled("empty", ""),
        &[],
    );
    assert!(ok, "{warned}");
    assert!(warned.contains("Warning: label team is empty"), "{warned}");
    // The system namespaces are exempt.
    kubectl_ok(
        &kubeconfig,
        &["-n", "kube-system", "create", "configmap", "system"],
    );

    // A policy whose plugin cannot serve refuses what it matches with Fail, admits with Ignore.
    kubectl_ok(&kubeconfig, &["delete", "admissionpolicy", "team-label"]);
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "strict.yaml",
        &label_policy(
            "strict",
            "require-labels",
            "{labels: [team]}",
            "  failurePolicy: Fail\n",
        ),
    );
    let lenient = label_policy(
        "lenient",
        "require-labels",
        "{labels: [team]}",
        "  failurePolicy: Ignore\n",
    )
    .replace("[configmaps]", "[secrets]");
    apply_manifest(&kubeconfig, dir.path(), "lenient.yaml", &lenient);
    for policy in ["strict", "lenient"] {
        kubectl_ok(
            &kubeconfig,
            &[
                "wait",
                "--for=condition=Ready",
                &format!("admissionpolicy/{policy}"),
                "--timeout=30s",
            ],
        );
    }
    let (ok, _, denied) = kubectl(&kubeconfig, &["create", "secret", "generic", "first"]);
    assert!(
        !ok && denied.contains("admission policy \"lenient\" denied"),
        "{denied}"
    );
    kubectl_ok(&kubeconfig, &["delete", "wasmplugin", "require-labels"]);
    let failing = eventually(Duration::from_secs(30), "the policy to fail closed", || {
        let (ok, _, error) = kubectl(&kubeconfig, &["create", "configmap", "closed"]);
        assert!(!ok, "a Fail policy without its plugin admitted a write");
        error.contains("not found").then_some(error)
    });
    assert!(
        failing.contains("admission policy \"strict\" failed"),
        "{failing}"
    );
    kubectl_ok(&kubeconfig, &["create", "secret", "generic", "open"]);
}

/// An AdmissionPolicy of the misbehaving test plugin on `resource`, doing `settings`.
fn misbehaving_policy(
    name: &str,
    resource: &str,
    failure: &str,
    timeout: u32,
    settings: &str,
) -> String {
    format!(
        "apiVersion: plugins.flotilla.dev/v1alpha1
kind: AdmissionPolicy
metadata:
  name: {name}
spec:
  plugin: misbehave
  mode: Validating
  failurePolicy: {failure}
  timeoutSeconds: {timeout}
  rules:
  - operations: [CREATE]
    apiGroups: [\"\"]
    apiVersions: [v1]
    resources: [{resource}]
  settings: {settings}
"
    )
}

#[test]
fn a_policy_past_its_timeout_is_refused_or_ignored_and_the_server_keeps_serving() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let wasm = builtin_module(dir.path(), "admission-misbehave");
    push_plugin(&kubeconfig, &wasm, "misbehave", "admission-policy", None);
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "sleepy.yaml",
        &misbehaving_policy(
            "sleepy",
            "configmaps",
            "Fail",
            1,
            "{mode: sleep, seconds: 20}",
        ),
    );
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "spinning.yaml",
        &misbehaving_policy("spinning", "secrets", "Ignore", 3, "{mode: loop}"),
    );
    for policy in ["sleepy", "spinning"] {
        kubectl_ok(
            &kubeconfig,
            &[
                "wait",
                "--for=condition=Ready",
                &format!("admissionpolicy/{policy}"),
                "--timeout=30s",
            ],
        );
    }

    // Fail: the request is refused with a message naming the policy, long before the plugin's
    // 20 s sleep would end.
    let (ok, _, refused) = kubectl(&kubeconfig, &["create", "configmap", "slow"]);
    assert!(!ok, "a Fail policy past its timeout admitted a write");
    assert!(
        refused.contains("admission policy \"sleepy\" failed") && refused.contains("1s"),
        "{refused}"
    );
    let (ok, _, _) = kubectl(&kubeconfig, &["get", "configmap", "slow"]);
    assert!(!ok, "a refused object was stored");

    // Ignore: requests whose policy computes forever are admitted at its timeout; while four of
    // them keep the plugin busy on both cores, the server answers other requests.
    let spinning: Vec<Child> = (0..4)
        .map(|i| {
            Command::new("kubectl")
                .args([
                    "create",
                    "secret",
                    "generic",
                    &format!("spun-{i}"),
                    "--kubeconfig",
                ])
                .arg(&kubeconfig)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    kubectl_ok(&kubeconfig, &["get", "namespaces"]);
    let mut spinning = spinning;
    let unanswered = spinning
        .iter_mut()
        .map(|child| child.try_wait().unwrap().is_none())
        .filter(|running| *running)
        .count();
    assert_eq!(
        unanswered, 4,
        "the server answered a read only after spinning admissions had ended"
    );
    for child in spinning {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "an Ignore policy past its timeout refused a write: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    kubectl_ok(&kubeconfig, &["get", "secret", "spun-0", "spun-3"]);
}

#[test]
fn a_mutating_policy_changes_the_stored_object_and_allowed_images_denies_with_kubectl() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    for name in ["inject-env", "allowed-images"] {
        let wasm = builtin_module(dir.path(), name);
        push_plugin(&kubeconfig, &wasm, name, "admission-policy", None);
    }
    let policy = |name: &str, mode: &str, settings: &str| {
        format!(
            "apiVersion: plugins.flotilla.dev/v1alpha1
kind: AdmissionPolicy
metadata:
  name: {name}
spec:
  plugin: {name}
  mode: {mode}
  rules:
  - operations: [CREATE]
    apiGroups: [\"\"]
    apiVersions: [v1]
    resources: [pods]
  settings: {settings}
"
        )
    };
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "inject.yaml",
        &policy(
            "inject-env",
            "Mutating",
            "{name: CLUSTER_REGION, value: eu-west}",
        ),
    );
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "images.yaml",
        &policy(
            "allowed-images",
            "Validating",
            "{prefixes: [\"registry.local:5000/\"]}",
        ),
    );
    for name in ["inject-env", "allowed-images"] {
        kubectl_ok(
            &kubeconfig,
            &[
                "wait",
                "--for=condition=Ready",
                &format!("admissionpolicy/{name}"),
                "--timeout=30s",
            ],
        );
    }
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n  - name: side\n    image: {image}\n    env:\n    - {{name: CLUSTER_REGION, value: mine}}\n"
        )
    };
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "allowed.yaml",
        &pod("allowed", "registry.local:5000/app.wasm"),
    );
    let env = kubectl_ok(
        &kubeconfig,
        &[
            "get",
            "pod",
            "allowed",
            "-o",
            "jsonpath={range .spec.containers[*]}{.env[*].value};{end}",
        ],
    );
    assert_eq!(env, "eu-west;mine;", "the stored pod's env");

    let (ok, _, denied) = try_apply(
        &kubeconfig,
        dir.path(),
        "other.yaml",
        &pod("other", "elsewhere.example/app.wasm"),
        &[],
    );
    assert!(!ok);
    assert!(
        denied.contains("admission policy \"allowed-images\" denied the request")
            && denied.contains("app (elsewhere.example/app.wasm)"),
        "{denied}"
    );
}

/// A policy of the misbehaving plugin: `mode` Validating or Mutating, `extra` spec lines.
fn misbehave_policy(name: &str, mode: &str, resource: &str, settings: &str, extra: &str) -> String {
    format!(
        "apiVersion: plugins.flotilla.dev/v1alpha1
kind: AdmissionPolicy
metadata:
  name: {name}
spec:
  plugin: misbehave
  mode: {mode}
  rules:
  - operations: [CREATE]
    apiGroups: [\"\"]
    apiVersions: [v1]
    resources: [{resource}]
  settings: {settings}
{extra}"
    )
}

fn wait_ready(kubeconfig: &Path, policies: &[&str]) {
    for policy in policies {
        eventually(
            std::time::Duration::from_secs(60),
            &format!("AdmissionPolicy {policy}"),
            || {
                kubectl(kubeconfig, &["get", "admissionpolicy", policy])
                    .0
                    .then_some(())
            },
        );
    }
    let mut args = vec!["wait", "--for=condition=Ready", "--timeout=60s"];
    let named: Vec<String> = policies
        .iter()
        .map(|p| format!("admissionpolicy/{p}"))
        .collect();
    args.extend(named.iter().map(String::as_str));
    kubectl_ok(kubeconfig, &args);
}

#[test]
fn a_policy_swapped_while_a_review_is_in_flight_finishes_it_on_the_old_version() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let wasm = builtin_module(dir.path(), "admission-misbehave");
    push_plugin(
        &kubeconfig,
        &wasm,
        "misbehave",
        "admission-policy",
        Some(r#"{"version":"one"}"#),
    );
    kubectl_ok(
        &kubeconfig,
        &["create", "service", "clusterip", "signal", "--tcp=80:80"],
    );
    // Creates of `slow-*` ConfigMaps sleep 4 s in the plugin, after telling the Service.
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "slow.yaml",
        &misbehave_policy(
            "slow",
            "Validating",
            "configmaps",
            "{mode: sleep, seconds: 4, prefix: slow, signal: {namespace: default, service: signal}}",
            "  timeoutSeconds: 15\n  writes:\n  - {apiVersion: v1, kind: Service}\n",
        ),
    );
    wait_ready(&kubeconfig, &["slow"]);
    let signal = || {
        kubectl_ok(
            &kubeconfig,
            &[
                "get",
                "service",
                "signal",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].hostname}",
            ],
        )
    };

    let finished = Arc::new(AtomicBool::new(false));
    let in_flight = {
        let kubeconfig = kubeconfig.clone();
        let finished = finished.clone();
        std::thread::spawn(move || {
            let answer = kubectl(&kubeconfig, &["create", "configmap", "slow-a"]);
            finished.store(true, Ordering::SeqCst);
            answer
        })
    };
    eventually(
        Duration::from_secs(30),
        "the slow review to start on version one",
        || (signal() == "reviewing-one").then_some(()),
    );
    kubectl_ok(
        &kubeconfig,
        &[
            "patch",
            "wasmplugin",
            "misbehave",
            "--type=merge",
            "-p",
            r#"{"spec":{"config":{"version":"two"}}}"#,
        ],
    );
    // Version two answers new requests while the slow one is still in version one.
    let mut probe = 0;
    eventually(Duration::from_secs(30), "version two to answer", || {
        probe += 1;
        let (ok, _, stderr) = kubectl(
            &kubeconfig,
            &[
                "create",
                "configmap",
                &format!("probe-{probe}"),
                "--dry-run=server",
            ],
        );
        assert!(ok, "{stderr}");
        stderr.contains("version=two").then_some(())
    });
    assert!(
        !finished.load(Ordering::SeqCst),
        "the slow review ended before the swap took effect; nothing was in flight across it"
    );
    let (ok, _, stderr) = in_flight.join().unwrap();
    assert!(ok, "the in-flight request failed across the swap: {stderr}");
    assert!(
        stderr.contains("admission-misbehave version=one") && !stderr.contains("version=two"),
        "the in-flight request was not finished by the version it started on: {stderr}"
    );
    kubectl_ok(&kubeconfig, &["get", "configmap", "slow-a"]);

    // New slow requests run on version two.
    let (ok, _, stderr) = kubectl(&kubeconfig, &["create", "configmap", "slow-b"]);
    assert!(ok && stderr.contains("version=two"), "{stderr}");
    assert_eq!(signal(), "reviewing-two");
}

#[test]
fn mutating_policies_run_in_order_and_are_reinvoked_once_when_a_later_one_changed_the_object() {
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let wasm = builtin_module(dir.path(), "admission-misbehave");
    push_plugin(&kubeconfig, &wasm, "misbehave", "admission-policy", None);
    // m3 answers the whole changed object, the others a JSON Patch.
    for (name, order, reinvocation, whole) in [
        ("m1", 1, "IfNeeded", false),
        ("m2", 2, "Never", false),
        ("m3", 3, "Never", true),
    ] {
        apply_manifest(
            &kubeconfig,
            dir.path(),
            &format!("{name}.yaml"),
            &misbehave_policy(
                name,
                "Mutating",
                "configmaps",
                &format!("{{mode: stamp, as: {name}, whole: {whole}}}"),
                &format!("  order: {order}\n  reinvocationPolicy: {reinvocation}\n"),
            ),
        );
    }
    wait_ready(&kubeconfig, &["m1", "m2", "m3"]);
    kubectl_ok(&kubeconfig, &["create", "configmap", "stamped"]);
    let stamps = kubectl_ok(
        &kubeconfig,
        &[
            "get",
            "configmap",
            "stamped",
            "-o",
            "jsonpath={.metadata.annotations.flotilla\\.dev/stamps}",
        ],
    );
    // In order, then m1 once more (IfNeeded) because m2 and m3 changed the object after it;
    // m2 and m3 are Never reinvoked.
    assert_eq!(stamps, "m1,m2,m3,m1");

    // A dry run is admitted and mutated without side effects: nothing is stored.
    let (ok, out, stderr) = kubectl(
        &kubeconfig,
        &[
            "create",
            "configmap",
            "dry",
            "--dry-run=server",
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
    );
    assert!(ok && out.contains("m1,m2,m3,m1"), "{out}{stderr}");
    let (ok, _, _) = kubectl(&kubeconfig, &["get", "configmap", "dry"]);
    assert!(!ok, "a dry run stored its object");

    // Bindings and evictions are admitted as creates of their pod subresource.
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "guard.yaml",
        &misbehave_policy(
            "guard",
            "Validating",
            "pods/binding, pods/eviction",
            "{mode: panic}",
            "",
        ),
    );
    wait_ready(&kubeconfig, &["guard"]);
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "idle.yaml",
        &bare_pod("idle", "", ""),
    );
    for (subresource, body) in [
        (
            "binding",
            r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"idle"},"target":{"kind":"Node","name":"elsewhere"}}"#,
        ),
        (
            "eviction",
            r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"idle"}}"#,
        ),
    ] {
        let file = dir.path().join(format!("{subresource}.json"));
        std::fs::write(&file, body).unwrap();
        let (ok, _, refused) = kubectl(
            &kubeconfig,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/idle/{subresource}"),
                "-f",
                file.to_str().unwrap(),
            ],
        );
        assert!(
            !ok && refused.contains("admission policy \"guard\" failed"),
            "{subresource}: {refused}"
        );
    }
    let idle = pod_json(&kubeconfig, "idle");
    assert!(
        idle["spec"]["nodeName"].is_null(),
        "a refused binding bound the pod: {idle}"
    );
}

/// One object in a namespace as JSON.
fn namespaced_json(
    kubeconfig: &Path,
    namespace: &str,
    kind: &str,
    name: &str,
) -> serde_json::Value {
    serde_json::from_str(&kubectl_ok(
        kubeconfig,
        &["get", kind, name, "-n", namespace, "-o", "json"],
    ))
    .unwrap()
}

fn bare_pod(name: &str, extra_spec: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  containers:\n  - name: app\n    image: registry.local/app.wasm\n{resources}"
    )
}

#[test]
fn builtin_policies_default_limits_charge_quotas_guard_namespaces_and_pod_security() {
    use std::time::Duration;
    let (dir, _up, kubeconfig) = cluster_for_kubectl();
    let run = |args: &[&str]| kubectl_ok(&kubeconfig, args);
    // A cluster starts with Kubernetes' admission plugins as built-in policies.
    wait_ready(
        &kubeconfig,
        &[
            "namespace-lifecycle",
            "limit-ranger",
            "resource-quota",
            "pod-security",
        ],
    );
    run(&["create", "namespace", "team"]);
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "limits.yaml",
        "apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 200m, memory: 64Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: \"1\"}
",
    );
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "quota.yaml",
        "apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: \"2\", requests.cpu: 300m, limits.memory: 512Mi}
",
    );
    let used = |resource: &str| {
        namespaced_json(&kubeconfig, "team", "resourcequota", "compute")["status"]["used"][resource]
            .as_str()
            .map(str::to_owned)
    };
    // The quota controller counts what is there before anything is charged.
    eventually(Duration::from_secs(60), "the quota's first count", || {
        (used("pods").as_deref() == Some("0")).then_some(())
    });
    let apply_pod = |name: &str, extra: &str, resources: &str, more: &[&str]| {
        let mut args = vec!["-n", "team"];
        args.extend_from_slice(more);
        try_apply(
            &kubeconfig,
            dir.path(),
            &format!("{name}.yaml"),
            &bare_pod(name, extra, resources),
            &args,
        )
    };

    // LimitRanger: a pod without resources gets the defaults, and says so.
    let (ok, _, stderr) = apply_pod("first", "", "", &[]);
    assert!(ok, "{stderr}");
    let first = namespaced_json(&kubeconfig, "team", "pod", "first");
    assert_eq!(
        first["spec"]["containers"][0]["resources"],
        serde_json::json!({"limits": {"cpu": "200m", "memory": "64Mi"},
                           "requests": {"cpu": "100m", "memory": "64Mi"}}),
        "{first}"
    );
    assert!(
        first["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
            .as_str()
            .is_some_and(|a| a.starts_with("LimitRanger plugin set:")),
        "{first}"
    );
    // ResourceQuota: the admitted pod was charged when it was admitted.
    assert_eq!(used("pods").as_deref(), Some("1"));
    assert_eq!(used("requests.cpu").as_deref(), Some("100m"));
    assert_eq!(used("limits.memory").as_deref(), Some("64Mi"));
    // A dry run is checked but not charged.
    let (ok, _, stderr) = apply_pod("second", "", "", &["--dry-run=server"]);
    assert!(ok, "{stderr}");
    assert_eq!(used("pods").as_deref(), Some("1"));
    // Bounds: a container over the LimitRange's max is refused.
    let (ok, _, denied) = apply_pod("greedy", "", "    resources: {limits: {cpu: \"2\"}}\n", &[]);
    assert!(!ok);
    assert!(
        denied.contains("admission policy \"limit-ranger\" denied the request")
            && denied.contains("maximum cpu usage per Container is 1, but limit is 2"),
        "{denied}"
    );
    let (ok, _, stderr) = apply_pod("second", "", "", &[]);
    assert!(ok, "{stderr}");
    assert_eq!(used("pods").as_deref(), Some("2"));
    let (ok, _, denied) = apply_pod("third", "", "", &[]);
    assert!(!ok);
    assert!(
        denied.contains("admission policy \"resource-quota\" denied the request")
            && denied.contains(
                "exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
            ),
        "{denied}"
    );
    let quota = run(&["get", "quota", "-n", "team"]);
    assert!(
        quota.contains("pods: 2/2") && quota.contains("requests.cpu: 200m/300m"),
        "{quota}"
    );
    // A deleted pod's usage is released by the quota controller; then the third fits.
    run(&["delete", "pod", "first", "-n", "team"]);
    eventually(Duration::from_secs(60), "the deleted pod's release", || {
        (used("pods").as_deref() == Some("1")).then_some(())
    });
    let (ok, _, stderr) = apply_pod("third", "", "", &[]);
    assert!(ok, "{stderr}");

    // Pod security (baseline): host namespaces and hostPath are refused outside the system
    // namespaces.
    let (ok, _, denied) = apply_pod(
        "host",
        "  hostNetwork: true\n  volumes:\n  - name: data\n    hostPath: {path: /var/lib/data}\n",
        "",
        &["--dry-run=server"],
    );
    assert!(!ok);
    assert!(
        denied.contains("violates PodSecurity \"baseline:latest\"")
            && denied.contains("hostNetwork=true")
            && denied.contains("hostPath volumes"),
        "{denied}"
    );
    let (ok, _, stderr) = try_apply(
        &kubeconfig,
        dir.path(),
        "system-host.yaml",
        &bare_pod("host", "  hostNetwork: true\n", ""),
        &["-n", "kube-system", "--dry-run=server"],
    );
    assert!(ok, "the system namespaces are exempt: {stderr}");

    // NamespaceLifecycle: the cluster's namespaces cannot be deleted, and a terminating
    // namespace takes nothing new.
    let (ok, _, denied) = kubectl(&kubeconfig, &["delete", "namespace", "kube-public"]);
    assert!(!ok && denied.contains("may not be deleted"), "{denied}");
    run(&["create", "namespace", "doomed"]);
    apply_manifest(
        &kubeconfig,
        dir.path(),
        "held.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: doomed, finalizers: [example.com/hold]}\n",
    );
    run(&["delete", "namespace", "doomed", "--wait=false"]);
    // The policy reads the namespace from the shared cache, which sees the deletion a moment
    // after it is made.
    let mut attempt = 0;
    eventually(
        Duration::from_secs(30),
        "a refused create in doomed",
        || {
            attempt += 1;
            let late = format!("late-{attempt}");
            let (ok, _, denied) =
                kubectl(&kubeconfig, &["create", "configmap", &late, "-n", "doomed"]);
            if ok {
                return None;
            }
            assert!(
                denied.contains("admission policy \"namespace-lifecycle\" denied the request")
                    && denied.contains("because it is being terminated"),
                "{denied}"
            );
            Some(())
        },
    );
    run(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "doomed",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}
