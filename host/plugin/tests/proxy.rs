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
