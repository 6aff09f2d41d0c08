//! The data path on real sockets: a frontend listener carries connections (L4) and requests
//! (L7) to endpoints, retries a connect that fails on another endpoint, reuses pooled
//! keep-alive connections to endpoints, and says so when a Service has no endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use flotilla_proxy::balance::{Backend, Endpoint, Shared};
use flotilla_proxy::forward;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn endpoint(id: u32, addr: SocketAddr) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        id,
        addr,
        active: AtomicU32::new(0),
    })
}

/// An address nothing listens on: connects to it are refused.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An HTTP/1.1 server answering `ok` to every request, keeping connections open; counts the
/// connections it accepted.
async fn http_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    // Read one request's head.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A TCP server that writes `hello` on each connection and closes it.
async fn tcp_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"hello").await;
        }
    });
    addr
}

/// A frontend serving `backend`, and the shared state behind it.
fn frontend(backend: Backend, stop: &CancellationToken) -> (SocketAddr, Arc<Shared>) {
    let (failures, _) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(failures));
    let listener = forward::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    shared.set_frontends([(addr, Arc::new(backend))].into());
    forward::serve(listener, shared.clone(), stop.clone());
    (addr, shared)
}

/// `count` GETs on one keep-alive connection: the status line and body of each.
async fn requests(addr: SocketAddr, count: usize) -> Vec<(String, String)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut answers = Vec::new();
    for _ in 0..count {
        stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        answers.push((status.trim().to_owned(), String::from_utf8(body).unwrap()));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_skip_an_endpoint_that_refuses_and_reuse_pooled_connections() {
    let stop = CancellationToken::new();
    let (live, accepted) = http_endpoint().await;
    let backend = Backend::new(
        "test/web:http".into(),
        true,
        None,
        vec![endpoint(1, dead_address().await), endpoint(2, live)],
    );
    let (addr, shared) = frontend(backend, &stop);
    // Two client connections, ten requests each: every one answered by the live endpoint,
    // half of them first picked for the dead one.
    for _ in 0..2 {
        let answers = requests(addr, 10).await;
        assert!(
            answers
                .iter()
                .all(|(status, body)| status == "HTTP/1.1 200 OK" && body == "ok"),
            "{answers:?}"
        );
    }
    assert_eq!(shared.stats.requests.load(Ordering::Relaxed), 20);
    assert_eq!(shared.stats.unrouted.load(Ordering::Relaxed), 0);
    // Sequential requests went over one pooled connection to the endpoint.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(shared.pool.idle(2), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_skip_an_endpoint_that_refuses() {
    let stop = CancellationToken::new();
    let backend = Backend::new(
        "test/raw:81".into(),
        false,
        None,
        vec![
            endpoint(1, dead_address().await),
            endpoint(2, tcp_endpoint().await),
        ],
    );
    let (addr, shared) = frontend(backend, &stop);
    for _ in 0..6 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "hello");
    }
    assert_eq!(shared.stats.unrouted.load(Ordering::Relaxed), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_endpoints_answers_503_and_all_refusing_502() {
    let stop = CancellationToken::new();
    let (empty, _) = frontend(
        Backend::new("test/none:http".into(), true, None, vec![]),
        &stop,
    );
    let answers = requests(empty, 1).await;
    assert_eq!(answers[0].0, "HTTP/1.1 503 Service Unavailable");
    assert!(
        answers[0].1.contains("no endpoints available"),
        "{answers:?}"
    );

    let (refusing, shared) = frontend(
        Backend::new(
            "test/down:http".into(),
            true,
            None,
            vec![
                endpoint(1, dead_address().await),
                endpoint(2, dead_address().await),
            ],
        ),
        &stop,
    );
    let answers = requests(refusing, 1).await;
    assert_eq!(answers[0].0, "HTTP/1.1 502 Bad Gateway");
    assert!(answers[0].1.contains("2 tried"), "{answers:?}");
    assert_eq!(shared.stats.unrouted.load(Ordering::Relaxed), 1);
    stop.cancel();
}
