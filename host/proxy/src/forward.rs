//! The listeners and what they carry: TCP connections spliced to an endpoint (L4), or HTTP/1.1
//! requests forwarded one by one over pooled keep-alive connections (L7). A connect that fails
//! is retried on another endpoint before anything is sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::balance::{Active, Backend, Client, Endpoint, HttpView, Shared};
use crate::pool::{Loan, ProxyBody};

/// How long a connect to an endpoint may take before another is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most endpoints tried for one connection or request.
const MAX_TRIES: usize = 4;

/// Binds a frontend address. `SO_REUSEPORT` lets every node's proxy on one host bind the same
/// ClusterIP port (loopback mode); the kernel spreads connections over them.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = shared_socket(addr, socket2::Type::STREAM)?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A non-blocking socket bound to `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
pub fn shared_socket(addr: SocketAddr, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Accepts on `listener` until `stop`, carrying each connection to the frontend's backend of
/// the moment.
pub fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let Ok(frontend) = listener.local_addr() else {
        return;
    };
    accept(listener, stop, move |stream, client| {
        let shared = shared.clone();
        async move {
            shared.stats.connections.fetch_add(1, Ordering::Relaxed);
            let Some(backend) = shared.backend(frontend) else {
                return;
            };
            if backend.l7 {
                serve_http(stream, client, frontend, shared).await;
            } else {
                splice(stream, client, &backend, &shared).await;
            }
        }
    });
}

/// Accepts on `listener` until `stop`, each connection (without Nagle's delay) handled by
/// `handle` in a task of its own.
pub(crate) fn accept<F, Fut>(listener: TcpListener, stop: CancellationToken, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.cancelled() => return,
            };
            let (stream, client) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!("accept: {error}");
                    // Out of descriptors and the like: let it pass rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(handle(stream, client));
        }
    });
}

/// Serves HTTP/1.1 (keep-alive) on `io`, each request answered by `handle`.
pub(crate) async fn serve_http1<I, F, Fut>(io: I, handle: F)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let answer = handle(request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Connects to an endpoint the backend's strategy picks, trying others when a connect fails.
async fn connect(
    shared: &Shared,
    backend: &Backend,
    client: &Client,
    http: Option<&HttpView<'_>>,
    exclude: &mut Vec<u32>,
) -> Option<(Arc<Endpoint>, TcpStream)> {
    while exclude.len() < MAX_TRIES {
        let endpoint = shared.pick(backend, client, http, exclude).await?;
        if let Some(stream) = dial(endpoint.addr).await {
            return Some((endpoint, stream));
        }
        exclude.push(endpoint.id);
    }
    None
}

/// L4: one connection to one endpoint, bytes copied both ways until either side closes.
async fn splice(mut inbound: TcpStream, client: SocketAddr, backend: &Backend, shared: &Shared) {
    let mut exclude = Vec::new();
    let client = Client::new(client);
    let Some((endpoint, mut outbound)) =
        connect(shared, backend, &client, None, &mut exclude).await
    else {
        shared.stats.unrouted.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _active = Active::on(endpoint);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}

/// L7: serves HTTP/1.1 on the client's connection, each request routed on its own.
async fn serve_http(
    stream: TcpStream,
    client: SocketAddr,
    frontend: SocketAddr,
    shared: Arc<Shared>,
) {
    let client = Arc::new(Client::new(client));
    serve_http1(stream, move |request| {
        route(request, client.clone(), frontend, shared.clone())
    })
    .await;
}

/// The hop-by-hop headers a proxy does not forward (RFC 9110 §7.6.1), plus those the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A response of the proxy's own, in plain text.
pub(crate) fn local(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Routes one request to an endpoint of the frontend's current backend.
async fn route(
    mut request: Request<Incoming>,
    client: Arc<Client>,
    frontend: SocketAddr,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Some(backend) = shared.backend(frontend) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no service is served on {frontend} any more\n"),
        );
    };
    strip_hop_by_hop(request.headers_mut());
    forward(request, &client, &backend, &shared).await
}

/// Sends a request to an endpoint the backend's strategy picks, over an idle pooled connection
/// or a new one.
pub async fn forward(
    mut request: Request<Incoming>,
    client: &Client,
    backend: &Backend,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let mut exclude = Vec::new();
    // A pooled connection the endpoint closed meanwhile gives the request back unsent: it is
    // sent again, on another connection, a bounded number of times.
    let mut stale = 0;
    loop {
        let view = HttpView {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        };
        let endpoint = shared.pick(backend, client, Some(&view), &exclude).await;
        let Some(endpoint) = endpoint else {
            return unrouted(shared, backend, &exclude);
        };
        let pooled = match shared.pool.take(endpoint.id) {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let sender = match pooled {
            Some(sender) => sender,
            None => match open(&endpoint).await {
                Some(sender) => sender,
                None => {
                    exclude.push(endpoint.id);
                    if exclude.len() >= MAX_TRIES {
                        return unrouted(shared, backend, &exclude);
                    }
                    continue;
                }
            },
        };
        let mut sender = sender;
        let active = Active::on(endpoint.clone());
        match sender.try_send_request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let loan = Loan::new(shared.clone(), sender, active);
                let body = if body.is_end_stream() {
                    // Nothing more to read: the connection is free now.
                    loan.give_back();
                    ProxyBody::Upstream { body, loan: None }
                } else {
                    ProxyBody::Upstream {
                        body,
                        loan: Some(loan),
                    }
                };
                return Response::from_parts(parts, body);
            }
            Err(mut error) => {
                let Some(unsent) = error.take_message() else {
                    tracing::debug!(endpoint = %endpoint.addr, "request failed: {}", error.error());
                    return local(
                        StatusCode::BAD_GATEWAY,
                        format!("the endpoint {} failed: {}\n", endpoint.addr, error.error()),
                    );
                };
                request = unsent;
                stale += 1;
                if stale > IDLE_RETRIES {
                    exclude.push(endpoint.id);
                    stale = 0;
                }
            }
        }
    }
}

/// Unsent requests retried on one endpoint before it counts as failed.
const IDLE_RETRIES: usize = 2;

fn unrouted(shared: &Shared, backend: &Backend, exclude: &[u32]) -> Response<ProxyBody> {
    shared.stats.unrouted.fetch_add(1, Ordering::Relaxed);
    if backend.targets.is_empty() || exclude.is_empty() {
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no endpoints available for service {:?}\n", backend.key),
        )
    } else {
        local(
            StatusCode::BAD_GATEWAY,
            format!(
                "no endpoint of service {:?} accepted a connection ({} tried)\n",
                backend.key,
                exclude.len()
            ),
        )
    }
}

/// A TCP connection to an endpoint, or none when it refuses or does not answer in time.
async fn dial(addr: SocketAddr) -> Option<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Ok(Err(error)) => {
            tracing::debug!(endpoint = %addr, "connect: {error}");
            None
        }
        Err(_) => {
            tracing::debug!(endpoint = %addr, "connect timed out");
            None
        }
    }
}

/// A new HTTP/1.1 connection to an endpoint.
async fn open(endpoint: &Endpoint) -> Option<hyper::client::conn::http1::SendRequest<Incoming>> {
    let stream = dial(endpoint.addr).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(sender)
}
