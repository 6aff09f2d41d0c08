//! A proxy strategy built with the SDK (`examples/least-loaded`) is built from source and
//! driven through the host's strategy handle, reading the proxy's live load figures through
//! the `endpoint-load` import.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_plugin::bindings::balancing::{Endpoint, PickRequest, Service};
use flotilla_plugin::{
    EndpointLoad, EngineConfig, Failure, Limits, PluginHost, ProxyStrategy, Services, World,
};

const KEY: &str = "default/web:http";

/// Active connections per endpoint, as the proxy would count them.
#[derive(Default)]
struct Load(Mutex<HashMap<u32, u32>>);

impl Load {
    fn set(&self, figures: &[(u32, u32)]) {
        *self.0.lock().unwrap() = figures.iter().copied().collect();
    }
}

impl EndpointLoad for Load {
    fn active(&self, service: &str, ids: &[u32]) -> Vec<u32> {
        assert_eq!(service, KEY);
        let load = self.0.lock().unwrap();
        ids.iter()
            .map(|id| load.get(id).copied().unwrap_or(0))
            .collect()
    }
}

fn endpoint(id: u32, ready: bool, terminating: bool) -> Endpoint {
    Endpoint {
        id,
        ip: format!("127.0.10.{id}"),
        port: 8080,
        node: Some("node-a".into()),
        zone: None,
        ready,
        terminating,
    }
}

fn service(annotations: Vec<(String, String)>) -> Service {
    Service {
        key: KEY.into(),
        endpoints: vec![
            endpoint(1, true, false),
            endpoint(2, false, false),
            endpoint(3, true, false),
            endpoint(4, true, true),
        ],
        annotations,
        client_ip_affinity_seconds: None,
    }
}

fn pick(exclude: Vec<u32>) -> PickRequest {
    PickRequest {
        service: KEY.into(),
        client_ip: "127.0.0.1".into(),
        client_port: 40_000,
        http: None,
        exclude,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_proxy_strategy_picks_the_least_loaded_ready_endpoint() {
    let wasm = common::build_example("least-loaded");
    let host = PluginHost::new(EngineConfig::default()).unwrap();

    // A strategy is not a controller: refused before it is instantiated, with the reason.
    let refused = host
        .load("least-loaded", World::Controller, &wasm, None)
        .unwrap_err();
    assert!(
        matches!(refused.failure, Failure::WrongWorld { .. }),
        "{refused}"
    );

    let module = host
        .load("least-loaded", World::ProxyStrategy, &wasm, None)
        .unwrap();
    let load = Arc::new(Load::default());
    let services = Services {
        load: Some(load.clone()),
        ..Services::default()
    };
    let mut instance = module
        .instantiate(Limits::default(), services)
        .await
        .unwrap();
    assert_eq!(instance.info().await.unwrap().name, "least-loaded");
    instance.self_check().await.unwrap();
    let mut strategy = ProxyStrategy::new(instance).unwrap();

    assert_eq!(
        strategy.pick(&pick(vec![])).unwrap(),
        None,
        "unknown service"
    );
    strategy.update(&service(vec![])).unwrap();

    // Idle: ready endpoints take turns; the unready and the terminating get nothing.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(strategy.pick(&pick(vec![])).unwrap());
    }
    assert_eq!(idle, [Some(1), Some(3), Some(1), Some(3)]);

    load.set(&[(1, 5), (3, 2)]);
    assert_eq!(strategy.pick(&pick(vec![])).unwrap(), Some(3));
    // A failed connect to 3 retries elsewhere.
    assert_eq!(strategy.pick(&pick(vec![3])).unwrap(), Some(1));
    assert_eq!(strategy.pick(&pick(vec![1, 3])).unwrap(), None);
    load.set(&[(1, 5), (3, 9)]);
    assert_eq!(strategy.pick(&pick(vec![])).unwrap(), Some(1));

    // A cap on active connections per endpoint, from the service's annotation.
    let cap = vec![("least-loaded.flotilla.dev/max-active".into(), "5".into())];
    strategy.update(&service(cap)).unwrap();
    assert_eq!(strategy.pick(&pick(vec![])).unwrap(), None);
    load.set(&[(1, 4), (3, 9)]);
    assert_eq!(strategy.pick(&pick(vec![])).unwrap(), Some(1));

    strategy.remove(KEY).unwrap();
    assert_eq!(strategy.pick(&pick(vec![])).unwrap(), None);
    assert!(!strategy.is_poisoned());
}

/// A built-in strategy's instance, with the proxy's load figures behind it.
async fn builtin(name: &str, load: Arc<Load>) -> ProxyStrategy {
    let services = Services {
        load: Some(load),
        ..Services::default()
    };
    instance_of(name, services, Limits::default()).await
}

/// An instance of a built-in module, checked as the proxy checks one before it serves.
async fn instance_of(name: &str, services: Services, limits: Limits) -> ProxyStrategy {
    let wasm = flotilla_builtins::find(name).unwrap().wasm;
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let module = host.load(name, World::ProxyStrategy, wasm, None).unwrap();
    let mut instance = module.instantiate(limits, services).await.unwrap();
    assert_eq!(instance.info().await.unwrap().name, name);
    instance.self_check().await.unwrap();
    ProxyStrategy::new(instance).unwrap()
}

fn picks(strategy: &mut ProxyStrategy, request: &PickRequest, n: usize) -> Vec<Option<u32>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(strategy.pick(request).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_strategies_balance_as_their_names_say() {
    let load = Arc::new(Load::default());

    let mut round_robin = builtin("round-robin", load.clone()).await;
    round_robin.update(&service(vec![])).unwrap();
    let turns = picks(&mut round_robin, &pick(vec![]), 4);
    assert_eq!(turns, [Some(1), Some(3), Some(1), Some(3)]);
    assert_eq!(round_robin.pick(&pick(vec![1])).unwrap(), Some(3));
    assert_eq!(round_robin.pick(&pick(vec![1, 3])).unwrap(), None);

    let mut random = builtin("random", load.clone()).await;
    random.update(&service(vec![])).unwrap();
    let spread = picks(&mut random, &pick(vec![]), 200);
    assert!(
        spread.iter().all(|p| matches!(p, Some(1) | Some(3))),
        "{spread:?}"
    );
    for id in [1, 3] {
        let share = spread.iter().filter(|p| **p == Some(id)).count();
        assert!((50..=150).contains(&share), "{id}: {share} of 200");
    }

    let mut least = builtin("least-connections", load.clone()).await;
    least.update(&service(vec![])).unwrap();
    load.set(&[(1, 5), (3, 2)]);
    assert_eq!(least.pick(&pick(vec![])).unwrap(), Some(3));
    assert_eq!(least.pick(&pick(vec![3])).unwrap(), Some(1));

    // ClientIP affinity: one client keeps its endpoint; another client may get another.
    let mut affinity = builtin("client-ip-affinity", load.clone()).await;
    let mut sticky = service(vec![]);
    sticky.client_ip_affinity_seconds = Some(10_800);
    affinity.update(&sticky).unwrap();
    let first = affinity.pick(&pick(vec![])).unwrap().unwrap();
    let kept = picks(&mut affinity, &pick(vec![]), 5);
    assert!(kept.iter().all(|p| *p == Some(first)), "{kept:?}");
    let moved = affinity.pick(&pick(vec![first])).unwrap().unwrap();
    assert_ne!(moved, first);
    let mut other = pick(vec![]);
    other.client_ip = "127.0.0.2".into();
    assert!(affinity.pick(&other).unwrap().is_some());

    // Canary: a quarter of the picks go to the canary Service's endpoints, and a request
    // with the header always does.
    let mut canary = builtin("canary", load.clone()).await;
    let annotations = vec![
        ("canary.flotilla.dev/service".into(), "web-canary".into()),
        ("canary.flotilla.dev/weight".into(), "25".into()),
        ("canary.flotilla.dev/header".into(), "x-canary".into()),
    ];
    canary.update(&service(annotations)).unwrap();
    canary
        .update(&Service {
            key: "default/web-canary:http".into(),
            endpoints: vec![endpoint(10, true, false)],
            annotations: vec![],
            client_ip_affinity_seconds: None,
        })
        .unwrap();
    let split = picks(&mut canary, &pick(vec![]), 100);
    assert_eq!(split.iter().filter(|p| **p == Some(10)).count(), 25);
    let mut flagged = pick(vec![]);
    flagged.http = Some(flotilla_plugin::bindings::balancing::HttpRequest {
        method: "GET".into(),
        authority: "web".into(),
        path: "/".into(),
        headers: vec![("x-canary".into(), "1".into())],
    });
    assert_eq!(picks(&mut canary, &flagged, 3), [Some(10); 3]);

    // Only the canary reads the HTTP request (its header rule): the proxy spares the others
    // lowering it for every request.
    assert!(canary.reads_http().unwrap());
    for strategy in [&mut round_robin, &mut random, &mut least, &mut affinity] {
        assert!(!strategy.reads_http().unwrap());
    }
}

/// A strategy built against the released 0.1.2 files, which predate `strategy-inputs`, loads
/// in this host, counts as reading the HTTP request, and routes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_built_before_strategy_inputs_gets_the_http_request() {
    let mut released = builtin("released-strategy", Arc::new(Load::default())).await;
    assert!(released.reads_http().unwrap());
    assert_ne!(flotilla_plugin::WIT_VERSION, "0.1.2");
    released.update(&service(vec![])).unwrap();
    let mut request = pick(vec![]);
    assert_eq!(
        released.pick(&request).unwrap(),
        None,
        "no request, no route"
    );
    for (path, id) in [("/0", Some(1)), ("/2", Some(3)), ("/9", None)] {
        request.http = Some(flotilla_plugin::bindings::balancing::HttpRequest {
            method: "GET".into(),
            authority: "web".into(),
            path: path.into(),
            headers: vec![],
        });
        assert_eq!(released.pick(&request).unwrap(), id, "{path}");
    }
}

/// Strategies are called without a fiber, on the proxy's own threads: whatever a pick does
/// ends at once or at its deadline, as an error that names the cause and poisons the
/// instance, and never takes the host down or waits. Writing to stderr is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_pick_is_stopped_without_holding_the_thread() {
    let deadline = Duration::from_millis(100);
    let limits = Limits {
        call_deadline: deadline,
        ..Limits::default()
    };
    let strategy = |mode: &str| {
        let services = Services {
            config: format!("\"{mode}\""),
            ..Services::default()
        };
        let limits = limits.clone();
        async move {
            let mut strategy = instance_of("misbehaving-strategy", services, limits).await;
            strategy.update(&service(vec![])).unwrap();
            strategy
        }
    };

    let mut chatty = strategy("stderr").await;
    for _ in 0..3 {
        assert_eq!(chatty.pick(&pick(vec![])).unwrap(), Some(1));
    }

    // Sockets are refused, as to every plugin: the pick goes on without one.
    for mode in ["tcp", "udp"] {
        let mut networked = strategy(mode).await;
        assert_eq!(networked.pick(&pick(vec![])).unwrap(), None, "{mode}");
        assert!(!networked.is_poisoned());
    }

    let mut panicking = strategy("panic").await;
    let error = panicking.pick(&pick(vec![])).unwrap_err();
    match &error.failure {
        Failure::Trap(message) => assert!(
            message.contains("refusing to pick for default/web:http"),
            "{message}"
        ),
        other => panic!("a panic gave {other:?}"),
    }
    assert!(panicking.is_poisoned());
    assert!(matches!(
        panicking.pick(&pick(vec![])).unwrap_err().failure,
        Failure::Poisoned(_)
    ));

    // Sleeping would hold the thread: the pick is stopped at once instead.
    let mut sleeping = strategy("sleep").await;
    let started = Instant::now();
    let error = sleeping.pick(&pick(vec![])).unwrap_err();
    assert!(started.elapsed() < deadline, "{:?}", started.elapsed());
    match &error.failure {
        Failure::Trap(message) => assert!(message.contains("may not wait"), "{message}"),
        other => panic!("a sleep gave {other:?}"),
    }

    // Computing without end is stopped by the epoch at the deadline.
    let mut spinning = strategy("loop").await;
    let started = Instant::now();
    let error = spinning.pick(&pick(vec![])).unwrap_err();
    let took = started.elapsed();
    assert_eq!(error.failure, Failure::Deadline(deadline));
    assert!(took >= deadline && took < deadline * 5, "{took:?}");
}
