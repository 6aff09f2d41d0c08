//! A proxy strategy built with the SDK (`examples/least-loaded`) is built from source and
//! driven through the host's strategy handle, reading the proxy's live load figures through
//! the `endpoint-load` import.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

#[async_trait::async_trait]
impl EndpointLoad for Load {
    async fn active(&self, service: &str, ids: &[u32]) -> Vec<u32> {
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
        strategy.pick(&pick(vec![])).await.unwrap(),
        None,
        "unknown service"
    );
    strategy.update(&service(vec![])).await.unwrap();

    // Idle: ready endpoints take turns; the unready and the terminating get nothing.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(strategy.pick(&pick(vec![])).await.unwrap());
    }
    assert_eq!(idle, [Some(1), Some(3), Some(1), Some(3)]);

    load.set(&[(1, 5), (3, 2)]);
    assert_eq!(strategy.pick(&pick(vec![])).await.unwrap(), Some(3));
    // A failed connect to 3 retries elsewhere.
    assert_eq!(strategy.pick(&pick(vec![3])).await.unwrap(), Some(1));
    assert_eq!(strategy.pick(&pick(vec![1, 3])).await.unwrap(), None);
    load.set(&[(1, 5), (3, 9)]);
    assert_eq!(strategy.pick(&pick(vec![])).await.unwrap(), Some(1));

    // A cap on active connections per endpoint, from the service's annotation.
    let cap = vec![("least-loaded.flotilla.dev/max-active".into(), "5".into())];
    strategy.update(&service(cap)).await.unwrap();
    assert_eq!(strategy.pick(&pick(vec![])).await.unwrap(), None);
    load.set(&[(1, 4), (3, 9)]);
    assert_eq!(strategy.pick(&pick(vec![])).await.unwrap(), Some(1));

    strategy.remove(KEY).await.unwrap();
    assert_eq!(strategy.pick(&pick(vec![])).await.unwrap(), None);
    assert!(!strategy.is_poisoned());
}

/// A built-in strategy's instance, with the proxy's load figures behind it.
async fn builtin(name: &str, load: Arc<Load>) -> ProxyStrategy {
    let wasm = flotilla_builtins::find(name).unwrap().wasm;
    let host = PluginHost::new(EngineConfig::default()).unwrap();
    let module = host.load(name, World::ProxyStrategy, wasm, None).unwrap();
    let services = Services {
        load: Some(load),
        ..Services::default()
    };
    let mut instance = module
        .instantiate(Limits::default(), services)
        .await
        .unwrap();
    assert_eq!(instance.info().await.unwrap().name, name);
    instance.self_check().await.unwrap();
    ProxyStrategy::new(instance).unwrap()
}

async fn picks(strategy: &mut ProxyStrategy, request: &PickRequest, n: usize) -> Vec<Option<u32>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(strategy.pick(request).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_strategies_balance_as_their_names_say() {
    let load = Arc::new(Load::default());

    let mut round_robin = builtin("round-robin", load.clone()).await;
    round_robin.update(&service(vec![])).await.unwrap();
    let turns = picks(&mut round_robin, &pick(vec![]), 4).await;
    assert_eq!(turns, [Some(1), Some(3), Some(1), Some(3)]);
    assert_eq!(round_robin.pick(&pick(vec![1])).await.unwrap(), Some(3));
    assert_eq!(round_robin.pick(&pick(vec![1, 3])).await.unwrap(), None);

    let mut random = builtin("random", load.clone()).await;
    random.update(&service(vec![])).await.unwrap();
    let spread = picks(&mut random, &pick(vec![]), 200).await;
    assert!(
        spread.iter().all(|p| matches!(p, Some(1) | Some(3))),
        "{spread:?}"
    );
    for id in [1, 3] {
        let share = spread.iter().filter(|p| **p == Some(id)).count();
        assert!((50..=150).contains(&share), "{id}: {share} of 200");
    }

    let mut least = builtin("least-connections", load.clone()).await;
    least.update(&service(vec![])).await.unwrap();
    load.set(&[(1, 5), (3, 2)]);
    assert_eq!(least.pick(&pick(vec![])).await.unwrap(), Some(3));
    assert_eq!(least.pick(&pick(vec![3])).await.unwrap(), Some(1));

    // ClientIP affinity: one client keeps its endpoint; another client may get another.
    let mut affinity = builtin("client-ip-affinity", load.clone()).await;
    let mut sticky = service(vec![]);
    sticky.client_ip_affinity_seconds = Some(10_800);
    affinity.update(&sticky).await.unwrap();
    let first = affinity.pick(&pick(vec![])).await.unwrap().unwrap();
    let kept = picks(&mut affinity, &pick(vec![]), 5).await;
    assert!(kept.iter().all(|p| *p == Some(first)), "{kept:?}");
    let moved = affinity.pick(&pick(vec![first])).await.unwrap().unwrap();
    assert_ne!(moved, first);
    let mut other = pick(vec![]);
    other.client_ip = "127.0.0.2".into();
    assert!(affinity.pick(&other).await.unwrap().is_some());

    // Canary: a quarter of the picks go to the canary Service's endpoints, and a request
    // with the header always does.
    let mut canary = builtin("canary", load.clone()).await;
    let annotations = vec![
        ("canary.flotilla.dev/service".into(), "web-canary".into()),
        ("canary.flotilla.dev/weight".into(), "25".into()),
        ("canary.flotilla.dev/header".into(), "x-canary".into()),
    ];
    canary.update(&service(annotations)).await.unwrap();
    canary
        .update(&Service {
            key: "default/web-canary:http".into(),
            endpoints: vec![endpoint(10, true, false)],
            annotations: vec![],
            client_ip_affinity_seconds: None,
        })
        .await
        .unwrap();
    let split = picks(&mut canary, &pick(vec![]), 100).await;
    assert_eq!(split.iter().filter(|p| **p == Some(10)).count(), 25);
    let mut flagged = pick(vec![]);
    flagged.http = Some(flotilla_plugin::bindings::balancing::HttpRequest {
        method: "GET".into(),
        authority: "web".into(),
        path: "/".into(),
        headers: vec![("x-canary".into(), "1".into())],
    });
    assert_eq!(picks(&mut canary, &flagged, 3).await, [Some(10); 3]);

    // Only the canary reads the HTTP request (its header rule): the proxy spares the others
    // lowering it for every request.
    assert!(canary.reads_http().await.unwrap());
    for strategy in [&mut round_robin, &mut random, &mut least, &mut affinity] {
        assert!(!strategy.reads_http().await.unwrap());
    }
}

/// A strategy built against the released 0.1.2 files, which predate `strategy-inputs`, loads
/// in this host, counts as reading the HTTP request, and routes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_built_before_strategy_inputs_gets_the_http_request() {
    let mut released = builtin("released-strategy", Arc::new(Load::default())).await;
    assert!(released.reads_http().await.unwrap());
    assert_ne!(flotilla_plugin::WIT_VERSION, "0.1.2");
    released.update(&service(vec![])).await.unwrap();
    let mut request = pick(vec![]);
    assert_eq!(
        released.pick(&request).await.unwrap(),
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
        assert_eq!(released.pick(&request).await.unwrap(), id, "{path}");
    }
}
