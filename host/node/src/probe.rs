//! Container probes as the kubelet runs them: startup, liveness and readiness, each an
//! `httpGet`, `tcpSocket` or `exec` handler with Kubernetes' defaults (period 10 s, timeout
//! 1 s, success threshold 1, failure threshold 3, no initial delay).
//!
//! `exec` runs the probe's command in the pod's context: the container's own component,
//! instantiated afresh with the command as its argv and the container's environment and
//! mounts; exit status 0 is success.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::{Exit, Runtime, Sandbox, Workload};

/// Which probe it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A probe's timing, with Kubernetes' defaults.
#[derive(Clone, Debug)]
pub(crate) struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub(crate) fn of(probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: u64| {
            Duration::from_secs(value.map_or(default, |v| v.max(0) as u64))
        };
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
            failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
        }
    }
}

/// What a probe needs of its container.
pub(crate) struct Target<'a> {
    pub pod_ip: IpAddr,
    pub container: &'a Container,
    pub runtime: &'a Runtime,
    pub workload: &'a Workload,
    pub sandbox: &'a Sandbox,
}

fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("the container has no port named {name:?}"))
        }
    }
}

/// Runs a probe once: Ok when it succeeded, the failure's message otherwise.
pub(crate) async fn check(
    probe: &Probe,
    timing: &Timing,
    target: &Target<'_>,
) -> Result<(), String> {
    let run = async {
        if let Some(http) = &probe.http_get {
            let port = port(target.container, &http.port)?;
            let host = http
                .host
                .as_deref()
                .and_then(|h| h.parse::<IpAddr>().ok())
                .unwrap_or(target.pod_ip);
            if http.scheme.as_deref() == Some("HTTPS") {
                return Err("HTTPS probes are not supported; use HTTP".to_owned());
            }
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            http_get(
                host,
                port,
                &path,
                http.http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.as_str(), h.value.as_str())),
            )
            .await
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = port(target.container, &tcp.port)?;
            tokio::net::TcpStream::connect((target.pod_ip, port))
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {}:{port}: {e}", target.pod_ip))
        } else if let Some(exec) = &probe.exec {
            let mut sandbox = target.sandbox.clone();
            let command = exec.command.clone().unwrap_or_default();
            sandbox.args = std::iter::once(target.container.name.clone())
                .chain(command.iter().cloned())
                .collect();
            match target.runtime.run_command(target.workload, &sandbox).await {
                Exit::Code(0) => Ok(()),
                Exit::Code(code) => Err(format!("command {command:?} exited with {code}")),
                Exit::OomKilled { limit } => Err(format!(
                    "command {command:?} ran out of memory ({limit} bytes)"
                )),
                Exit::Trapped(trap) => Err(format!("command {command:?} failed: {trap}")),
            }
        } else if probe.grpc.is_some() {
            Err("gRPC probes are not supported".to_owned())
        } else {
            Err("the probe has no handler".to_owned())
        }
    };
    match tokio::time::timeout(timing.timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}s", timing.timeout.as_secs())),
    }
}

async fn http_get<'h>(
    host: IpAddr,
    port: u16,
    path: &str,
    headers: impl Iterator<Item = (&'h str, &'h str)>,
) -> Result<(), String> {
    let address = format!("{host}:{port}");
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| format!("Get \"http://{address}{path}\": dial tcp {address}: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"http://{address}{path}\": {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| format!("Get \"http://{address}{path}\": {e}"))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{address}{path}\": malformed response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_default_as_kubernetes_does() {
        let timing = Timing::of(&Probe::default());
        assert_eq!(timing.period, Duration::from_secs(10));
        assert_eq!(timing.timeout, Duration::from_secs(1));
        assert_eq!((timing.success_threshold, timing.failure_threshold), (1, 3));
        assert_eq!(timing.initial_delay, Duration::ZERO);
    }

    #[test]
    fn named_ports_are_the_container_s() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(
            port(&container, &IntOrString::String("http".into())),
            Ok(8080)
        );
        assert_eq!(port(&container, &IntOrString::Int(9000)), Ok(9000));
        assert!(port(&container, &IntOrString::String("grpc".into())).is_err());
    }
}
