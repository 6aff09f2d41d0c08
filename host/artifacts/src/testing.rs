//! A real OCI registry for tests: Debian's `docker-registry` on a free loopback port with its
//! storage in a temporary directory, optionally behind htpasswd basic auth. Stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:<port>`, the registry part of references to it.
    pub address: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry open to anyone.
    pub fn anonymous() -> Self {
        Self::start(None)
    }

    /// Starts a registry that lets in only `username` with `password`.
    pub fn with_user(username: &str, password: &str) -> Self {
        Self::start(Some((username, password)))
    }

    fn start(user: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let auth = match user {
            Some((username, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", username, password])
                    .output()
                    .expect("htpasswd (Debian apache2-utils) runs");
                assert!(out.status.success(), "htpasswd failed");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, out.stdout).expect("htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log file"))
            .spawn()
            .expect("docker-registry (Debian docker-registry) starts");
        let registry = Registry {
            address,
            child,
            _dir: dir,
        };
        registry.wait_until_serving();
        registry
    }

    /// Polls `/v2/` until the registry answers (200, or 401 behind auth).
    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/v2/", self.address);
        loop {
            if status_of(&url).is_some_and(|s| s == 200 || s == 401) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not serve {url} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The status of a plain GET, or None when nothing answered.
fn status_of(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
