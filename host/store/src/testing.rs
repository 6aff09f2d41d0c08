//! Test support: a real etcd server on free loopback ports in a temporary directory.
//!
//! Tests and benchmarks start one [`EtcdServer`] each; dropping it kills the process and removes
//! its data. The `etcd` binary comes from Debian's `etcd-server` package (installed by
//! `scripts/deps`), or from `FLOTILLA_ETCD_BIN`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdOptions, EtcdStore, StoreError};

/// A running etcd server owned by a test.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    client_url: String,
    peer_url: String,
}

/// The environment variable that enables tests needing a real etcd. CI sets it; without it
/// those tests say so and return.
pub const ETCD_TESTS_ENV: &str = "FLOTILLA_ETCD_TESTS";

/// Whether tests that need a real etcd should run.
pub fn etcd_tests_enabled() -> bool {
    std::env::var(ETCD_TESTS_ENV).is_ok_and(|v| v == "1")
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("FLOTILLA_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

fn start_failed(what: String) -> StoreError {
    StoreError::Backend(format!("cannot start etcd: {what}"))
}

fn spawn_etcd(
    dir: &std::path::Path,
    client_url: &str,
    peer_url: &str,
) -> Result<Child, StoreError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .map_err(|e| start_failed(e.to_string()))?;
    Command::new(etcd_binary())
        .arg("--name=flotilla-test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=flotilla-test={peer_url}"))
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            start_failed(format!(
                "{} ({e}); install Debian's etcd-server (scripts/deps does)",
                etcd_binary().display()
            ))
        })
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it serves requests.
    pub async fn start() -> Result<Self, StoreError> {
        let dir = tempfile::tempdir().map_err(|e| start_failed(e.to_string()))?;
        let client_port = free_port().map_err(|e| start_failed(e.to_string()))?;
        let peer_port = free_port().map_err(|e| start_failed(e.to_string()))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = spawn_etcd(dir.path(), &client_url, &peer_url)?;
        let mut server = Self {
            child,
            dir,
            client_url,
            peer_url,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Kills etcd with SIGKILL and starts it again on the same data and ports.
    pub async fn restart(&mut self) -> Result<(), StoreError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_etcd(self.dir.path(), &self.client_url, &self.peer_url)?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                return Err(StoreError::Backend(format!(
                    "etcd exited with {status}: {log}"
                )));
            }
            let options = EtcdOptions {
                retry_for: Duration::from_millis(200),
                request_timeout: Duration::from_secs(2),
            };
            match EtcdStore::connect(&self.endpoints(), options).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The client endpoints, as `EtcdStore::connect` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url.clone()]
    }

    /// The `--datastore` flag value for this server.
    pub fn datastore_flag(&self) -> String {
        format!("etcd://{}", self.client_url.trim_start_matches("http://"))
    }

    /// Connects a store to this server.
    pub async fn connect(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(&self.endpoints(), EtcdOptions::default()).await
    }

    /// The process id, for tests that kill it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
