//! The data path on real sockets: a frontend listener carries connections (L4) and requests
//! (L7) to endpoints, retries a connect that fails on another endpoint, reuses pooled
//! keep-alive connections to endpoints, and says so when a Service has no endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use flotilla_plugin::bindings::balancing::{Endpoint as WitEndpoint, Service};
use flotilla_plugin::{EngineConfig, Limits, PluginHost, ProxyStrategy, Services, World};
use flotilla_proxy::balance::{Backend, Endpoint, Live, Shared, Strategy};
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
    let (addr, accepted, _) = counting_http_endpoint().await;
    (addr, accepted)
}

/// [`http_endpoint`], counting the requests it answered too.
async fn counting_http_endpoint() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let requests = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let requests = requests.clone();
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
                    requests.fetch_add(1, Ordering::SeqCst);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, answered)
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

/// `count` GETs of `/` on one keep-alive connection: the status line and body of each.
async fn requests(addr: SocketAddr, count: usize) -> Vec<(String, String)> {
    requests_of(addr, "/", count).await
}

/// `count` GETs of `path` on one keep-alive connection: the status line and body of each.
async fn requests_of(addr: SocketAddr, path: &str, count: usize) -> Vec<(String, String)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut answers = Vec::new();
    for _ in 0..count {
        stream
            .get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
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

/// A strategy's live instance from a built-in module, given the service it balances.
async fn strategy(name: &str, service: &Service) -> Live {
    let wasm = flotilla_builtins::find(name).unwrap().wasm;
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let module = host.load(name, World::ProxyStrategy, wasm, None).unwrap();
    let instance = module
        .instantiate(Limits::default(), Services::default())
        .await
        .unwrap();
    let mut instance = ProxyStrategy::new(instance).unwrap();
    instance.update(service).unwrap();
    Live::new(instance).unwrap()
}

/// A strategy that routes on the request — one built against 0.1.2, before strategies could
/// say what they read, so the proxy sends it every request's line and headers — picks by
/// path on the data path; the built-in round-robin, which says it does not read the request,
/// takes turns whatever the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_that_reads_the_request_routes_it_by_path() {
    let stop = CancellationToken::new();
    let (first, _, first_answered) = counting_http_endpoint().await;
    let (second, _, second_answered) = counting_http_endpoint().await;
    let answered = || {
        (
            first_answered.load(Ordering::SeqCst),
            second_answered.load(Ordering::SeqCst),
        )
    };
    let key = "test/web:http";
    let service = Service {
        key: key.into(),
        endpoints: [(1, first), (2, second)]
            .into_iter()
            .map(|(id, addr)| WitEndpoint {
                id,
                ip: addr.ip().to_string(),
                port: addr.port(),
                node: None,
                zone: None,
                ready: true,
                terminating: false,
            })
            .collect(),
        annotations: vec![],
        client_ip_affinity_seconds: None,
    };
    let live = strategy("released-strategy", &service).await;
    assert!(live.reads_http, "a 0.1.2 strategy cannot say it does not");
    let backend = Backend::new(
        key.into(),
        true,
        Some("picker".into()),
        vec![endpoint(1, first), endpoint(2, second)],
    );
    let (addr, shared) = frontend(backend, &stop);
    shared.set_strategy("picker", Some(Arc::new(Strategy::new(live))));

    // `/1` is the second endpoint's, every time; `/0` the first's.
    let ok = |answers: &[(String, String)]| {
        answers
            .iter()
            .all(|(s, b)| s == "HTTP/1.1 200 OK" && b == "ok")
    };
    let answers = requests_of(addr, "/1", 6).await;
    assert!(ok(&answers), "{answers:?}");
    assert_eq!(answered(), (0, 6));
    let answers = requests_of(addr, "/0", 2).await;
    assert!(ok(&answers), "{answers:?}");
    assert_eq!(answered(), (2, 6));
    // A path it routes nowhere: the strategy's "none" is honoured, not overridden.
    let answers = requests_of(addr, "/other", 1).await;
    assert_eq!(
        answers[0].0, "HTTP/1.1 503 Service Unavailable",
        "{answers:?}"
    );
    assert_eq!(answered(), (2, 6));
    assert_eq!(shared.stats.fallbacks.load(Ordering::Relaxed), 0);

    // Swapped for the built-in round-robin: it gets no request, and takes turns.
    let round_robin = strategy("round-robin", &service).await;
    assert!(!round_robin.reads_http);
    shared.set_strategy("picker", Some(Arc::new(Strategy::new(round_robin))));
    let answers = requests_of(addr, "/1", 4).await;
    assert!(ok(&answers), "{answers:?}");
    assert_eq!(answered(), (4, 8));
    assert_eq!(shared.stats.fallbacks.load(Ordering::Relaxed), 0);
    stop.cancel();
}
