//! Services get ClusterIPs and NodePorts from the server's ranges: allocated, kept across
//! updates, refused when taken or out of range, and freed when the Service drops them.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_apiserver::{ApiOptions, ApiServer, ServiceRanges};
use flotilla_store::{EmbeddedOptions, EmbeddedStore};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SERVICES: &str = "/api/v1/namespaces/demo/services";

/// A bootstrapped server (so it frees addresses) whose ranges are small enough to fill:
/// 10.99.0.0/28 has 14 addresses, the first kept for the `kubernetes` Service.
async fn api() -> common::Api {
    let dir = tempfile::tempdir().unwrap();
    let store: flotilla_store::SharedStore = Arc::new(
        EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let options = ApiOptions {
        service_ranges: ServiceRanges::parse("10.99.0.0/28", "30000-30003").unwrap(),
        ..ApiOptions::default()
    };
    let server = ApiServer::with_options(store.clone(), options);
    server.bootstrap().await.unwrap();
    common::Api::on(common::serve(server, store, dir).await).await
}

fn service(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("ports").is_none() {
        spec["ports"] = json!([{"name": "http", "port": 80, "targetPort": 8080}]);
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

async fn create(api: &common::Api, name: &str, spec: Value) -> (StatusCode, Value) {
    api.send(Method::POST, SERVICES, Some(service(name, spec)))
        .await
}

async fn created(api: &common::Api, name: &str, spec: Value) -> Value {
    let (code, body) = create(api, name, spec).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    body
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// Retries `create` until it is accepted: addresses are freed shortly after a Service lets
/// them go.
async fn created_eventually(api: &common::Api, name: &str, spec: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = create(api, name, spec.clone()).await;
        if code == StatusCode::CREATED {
            return body;
        }
        assert!(Instant::now() < deadline, "still refused: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cluster_ips_are_allocated_kept_refused_when_taken_and_freed() {
    let api = api().await;
    let web = created(&api, "web", json!({"selector": {"app": "web"}})).await;
    let ip: std::net::Ipv4Addr = web["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(
        ip.octets()[..3] == [10, 99, 0] && (2..=14).contains(&ip.octets()[3]),
        "{ip}"
    );
    assert_eq!(web["spec"]["clusterIPs"], json!([ip.to_string()]));
    assert_eq!(web["spec"]["ipFamilies"], json!(["IPv4"]));

    // Asked for: given when free, refused when taken or outside the CIDR.
    let taken = ip.to_string();
    let (code, body) = create(&api, "twin", json!({"clusterIP": taken})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        message(&body).contains("provided IP is already allocated"),
        "{body}"
    );
    let (code, body) = create(&api, "far", json!({"clusterIP": "10.98.0.7"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        message(&body).contains("The range of valid IPs is 10.99.0.0/28"),
        "{body}"
    );
    let headless = created(&api, "headless", json!({"clusterIP": "None"})).await;
    assert_eq!(headless["spec"]["clusterIP"], "None");

    // A replace without the address keeps it; one that moves it is refused.
    let mut again = service("web", json!({"selector": {"app": "web", "tier": "front"}}));
    again["metadata"]["resourceVersion"] = web["metadata"]["resourceVersion"].clone();
    let (code, body) = api
        .send(Method::PUT, &format!("{SERVICES}/web"), Some(again))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["clusterIP"], taken.as_str());
    let mut moved = body.clone();
    moved["spec"]["clusterIP"] = json!("10.99.0.3");
    moved["spec"]["clusterIPs"] = json!(["10.99.0.3"]);
    let (code, body) = api
        .send(Method::PUT, &format!("{SERVICES}/web"), Some(moved))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(message(&body).contains("field is immutable"), "{body}");

    // Fill the range: 13 addresses besides the API's; `web` holds one.
    for n in 0..12 {
        created(&api, &format!("filler-{n}"), json!({})).await;
    }
    let (code, body) = create(&api, "one-too-many", json!({})).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(message(&body).contains("range is full"), "{body}");

    // Deleting a Service frees its address for the next one that asks.
    let (code, body) = api
        .send(Method::DELETE, &format!("{SERVICES}/web"), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let reborn = created_eventually(&api, "reborn", json!({"clusterIP": taken})).await;
    assert_eq!(reborn["spec"]["clusterIP"], taken.as_str());
}

#[tokio::test]
async fn node_ports_are_allocated_kept_refused_and_freed_with_the_type() {
    let api = api().await;
    let ports = json!([
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30003},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30003},
    ]);
    let web = created(&api, "web", json!({"type": "NodePort", "ports": ports})).await;
    let given = web["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=30002).contains(&given), "{web}");
    assert_eq!(web["spec"]["ports"][1]["nodePort"], 30003);

    let (code, body) = create(
        &api,
        "clash",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": given}]}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(message(&body).contains("spec.ports[0].nodePort"), "{body}");
    assert!(
        message(&body).contains("provided port is already allocated"),
        "{body}"
    );
    let (code, body) = create(
        &api,
        "low",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        message(&body).contains("The range of valid ports is 30000-30003"),
        "{body}"
    );
    // A refused Service holds nothing: its ClusterIP was given back.
    let (_, list) = api.send(Method::GET, SERVICES, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // Back to ClusterIP: the NodePorts go, and another Service may take them.
    let mut cluster_ip = web.clone();
    cluster_ip["spec"]["type"] = json!("ClusterIP");
    let (code, body) = api
        .send(Method::PUT, &format!("{SERVICES}/web"), Some(cluster_ip))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body["spec"]["ports"][0].get("nodePort").is_none(), "{body}");
    assert_eq!(body["spec"]["clusterIP"], web["spec"]["clusterIP"]);
    let next = created_eventually(
        &api,
        "next",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": given}]}),
    )
    .await;
    assert_eq!(next["spec"]["ports"][0]["nodePort"], given);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_service_names_the_server_and_follows_its_address_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store: flotilla_store::SharedStore = Arc::new(
        EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let options = |port: u16| ApiOptions {
        service_ranges: ServiceRanges::parse("10.99.0.0/28", "30000-30003").unwrap(),
        advertise: Some(([127, 0, 0, 1], port).into()),
        ..ApiOptions::default()
    };
    ApiServer::with_options(store.clone(), options(6443))
        .bootstrap()
        .await
        .unwrap();
    // A restart on another port: the Service stays, its endpoint follows.
    let server = ApiServer::with_options(store.clone(), options(7443));
    server.bootstrap().await.unwrap();
    let api = common::Api::on(common::serve(server, store, dir).await).await;
    let (code, service) = api
        .send(
            Method::GET,
            "/api/v1/namespaces/default/services/kubernetes",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{service}");
    assert_eq!(service["spec"]["clusterIP"], "10.99.0.1");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["name"], "https");
    let (code, slice) = api
        .send(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{slice}");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], 7443);
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
}
