//! The agent's own endpoint, which the API server reaches for `pods/log`: HTTPS with a
//! certificate the agent makes itself (its SHA-256 goes into the Node's
//! `flotilla.dev/serving-certificate-sha256` annotation, which is how the API server knows it),
//! and only clients with a certificate signed by the cluster CA are served.
//!
//! `GET /containerLogs/<namespace>/<pod>/<container>` answers the container's log as
//! `kubectl logs` shows it, with the kubelet's parameters: `follow`, `previous`, `timestamps`,
//! `tailLines`, `sinceSeconds`, `sinceTime`, `limitBytes`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use k8s_openapi::chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::logs::{Record, parse_record};

/// The agent's serving identity.
pub(crate) struct Identity {
    pub cert_der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the certificate (DER), hex.
    pub fingerprint: String,
}

/// Makes a self-signed serving certificate for the node's name and address.
pub(crate) fn identity(node: &str, address: &str) -> Result<Identity, String> {
    let names = vec![node.to_owned(), address.to_owned()];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| e.to_string())?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = name;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let cert_der = cert.der().clone();
    let fingerprint = hex::encode(Sha256::digest(cert_der.as_ref()));
    let key =
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
    Ok(Identity {
        cert_der,
        key,
        fingerprint,
    })
}

/// Which log file each running pod's containers write, and who is writing now.
#[derive(Debug, Default)]
pub(crate) struct LogIndex {
    /// (namespace, pod) → the pod's log directory.
    pods: Mutex<HashMap<(String, String), PathBuf>>,
    /// Log files being written, with a signal that more was written or the run ended.
    active: Mutex<HashMap<PathBuf, tokio::sync::watch::Receiver<bool>>>,
}

impl LogIndex {
    pub(crate) fn add_pod(&self, namespace: &str, name: &str, dir: PathBuf) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_owned(), name.to_owned()), dir);
    }

    pub(crate) fn remove_pod(&self, namespace: &str, name: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// A run started writing `path`; `written` changes at each write and ends when it ends.
    pub(crate) fn writing(&self, path: PathBuf, written: tokio::sync::watch::Receiver<bool>) {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path, written);
    }

    pub(crate) fn finished(&self, path: &Path) {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path);
    }

    fn dir(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn watch(&self, path: &Path) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: u16, message: String) -> hyper::Response<Body> {
    let mut response =
        hyper::Response::new(http_body_util::Full::new(Bytes::from(message + "\n")).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response
}

/// Serves the agent's endpoint on `listener` until `stop`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    identity: Identity,
    api_ca_pem: Option<String>,
    logs: Arc<LogIndex>,
    stop: CancellationToken,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder,
        Err(error) => {
            tracing::error!("the agent's TLS configuration: {error}");
            return;
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in api_ca_pem
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
        .flatten()
    {
        let _ = roots.add(cert);
    }
    let config = if roots.is_empty() {
        tracing::warn!(
            "the agent does not know the cluster CA: it cannot tell the API server from anyone else and serves no logs"
        );
        None
    } else {
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tracing::error!("the agent's client verifier: {e}"))
            .ok()
            .and_then(|verifier| {
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(vec![identity.cert_der.clone()], identity.key.clone_key())
                    .map_err(|e| tracing::error!("the agent's certificate: {e}"))
                    .ok()
            })
    };
    let Some(mut config) = config else {
        stop.cancelled().await;
        return;
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let logs = logs.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let logs = logs.clone();
                let stop = stop.clone();
                async move { Ok::<_, Infallible>(route(request, &logs, stop).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// What `kubectl logs` asked for.
#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<usize>,
    since: Option<DateTime<Utc>>,
    limit_bytes: Option<usize>,
}

fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> Result<LogQuery, String> {
    let mut parsed = LogQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        let value = decode_component(value);
        let flag = || value == "true" || value == "1";
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key} must be a non-negative integer, not {value:?}"))
        };
        match key {
            "follow" => parsed.follow = flag(),
            "previous" => parsed.previous = flag(),
            "timestamps" => parsed.timestamps = flag(),
            "tailLines" => parsed.tail_lines = Some(number()? as usize),
            "limitBytes" => parsed.limit_bytes = Some(number()? as usize),
            "sinceSeconds" => {
                parsed.since =
                    Some(Utc::now() - k8s_openapi::chrono::Duration::seconds(number()? as i64));
            }
            "sinceTime" => {
                parsed.since = Some(
                    DateTime::parse_from_rfc3339(&value)
                        .map_err(|e| format!("sinceTime {value:?}: {e}"))?
                        .with_timezone(&Utc),
                );
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// The runs of a container that have logs, oldest first.
fn runs(dir: &Path, container: &str) -> Vec<u32> {
    let mut runs: Vec<u32> = std::fs::read_dir(dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    runs.sort_unstable();
    runs
}

/// How one record is shown.
fn show(record: &Record, timestamps: bool) -> String {
    let mut line = String::new();
    if timestamps {
        line.push_str(&record.timestamp);
        line.push(' ');
    }
    line.push_str(&record.text);
    if !record.partial {
        line.push('\n');
    }
    line
}

fn selected(record: &Record, query: &LogQuery) -> bool {
    query.since.is_none_or(|since| {
        DateTime::parse_from_rfc3339(&record.timestamp)
            .is_ok_and(|t| t.with_timezone(&Utc) >= since)
    })
}

async fn route(
    request: hyper::Request<hyper::body::Incoming>,
    logs: &LogIndex,
    stop: CancellationToken,
) -> hyper::Response<Body> {
    if request.method() != hyper::Method::GET {
        return text(405, "only GET is served".into());
    }
    let path = request.uri().path().to_owned();
    if path == "/healthz" {
        return text(200, "ok".into());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", namespace, pod, container] = parts[..] else {
        return text(404, format!("{path} is not served"));
    };
    let query = match parse_query(request.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(message) => return text(400, message),
    };
    let Some(dir) = logs.dir(namespace, pod) else {
        return text(
            404,
            format!("pod {namespace}/{pod} is not running on this node"),
        );
    };
    let runs = runs(&dir, container);
    let run = if query.previous {
        match runs.len() {
            0 | 1 => {
                return text(
                    400,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                );
            }
            n => runs[n - 2],
        }
    } else {
        match runs.last() {
            Some(run) => *run,
            None => {
                return text(
                    400,
                    format!("container \"{container}\" in pod \"{pod}\" is waiting to start"),
                );
            }
        }
    };
    let file = crate::logs::log_path(&dir, container, run);
    stream(
        file,
        query,
        logs.watch(&crate::logs::log_path(&dir, container, run)),
        stop,
    )
    .await
}

/// Answers a log file: its selected records, then (following) what is written after them
/// until the run ends.
async fn stream(
    path: PathBuf,
    query: LogQuery,
    written: Option<tokio::sync::watch::Receiver<bool>>,
    stop: CancellationToken,
) -> hyper::Response<Body> {
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(error) => return text(500, format!("cannot read the log: {error}")),
    };
    let mut content = String::new();
    if let Err(error) = file.read_to_string(&mut content).await {
        return text(500, format!("cannot read the log: {error}"));
    }
    // Only whole lines; a line still being written is read when it ends.
    let whole = content.rfind('\n').map_or(0, |i| i + 1);
    let mut offset = whole as u64;
    let records: Vec<Record> = content[..whole]
        .lines()
        .filter_map(parse_record)
        .filter(|r| selected(r, &query))
        .collect();
    let skip = query
        .tail_lines
        .map_or(0, |tail| records.len().saturating_sub(tail));
    let first: String = records[skip..]
        .iter()
        .map(|r| show(r, query.timestamps))
        .collect();
    let mut budget = query.limit_bytes.unwrap_or(usize::MAX);
    let cut = |text: String, budget: &mut usize| {
        let mut text = text;
        if text.len() > *budget {
            let mut end = *budget;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        *budget -= text.len();
        text
    };
    let first = cut(first, &mut budget);
    let Some(mut written) = written.filter(|_| query.follow && budget > 0) else {
        return hyper::Response::new(http_body_util::Full::new(Bytes::from(first)).boxed());
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        if sender
            .send(Ok(Frame::data(Bytes::from(first))))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let ended = tokio::select! {
                changed = written.changed() => changed.is_err() || !*written.borrow(),
                () = stop.cancelled() => true,
                () = sender.closed() => return,
            };
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return;
            }
            let mut more = String::new();
            if file.read_to_string(&mut more).await.is_err() {
                return;
            }
            let whole = more.rfind('\n').map_or(0, |i| i + 1);
            offset += whole as u64;
            let shown: String = more[..whole]
                .lines()
                .filter_map(parse_record)
                .map(|r| show(&r, query.timestamps))
                .collect();
            if !shown.is_empty() {
                let shown = cut(shown, &mut budget);
                if sender
                    .send(Ok(Frame::data(Bytes::from(shown))))
                    .await
                    .is_err()
                    || budget == 0
                {
                    return;
                }
            }
            if ended {
                return;
            }
        }
    });
    hyper::Response::new(
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_as_the_kubelet_reads_them() {
        let query = parse_query("follow=true&tailLines=3&timestamps=true&limitBytes=10").unwrap();
        assert!(query.follow && query.timestamps && !query.previous);
        assert_eq!((query.tail_lines, query.limit_bytes), (Some(3), Some(10)));
        assert!(parse_query("tailLines=-1").is_err());
        let since = parse_query("sinceTime=2026-01-02T03%3A04%3A05Z")
            .unwrap()
            .since
            .unwrap();
        assert_eq!(since.to_rfc3339(), "2026-01-02T03:04:05+00:00");
    }
}
