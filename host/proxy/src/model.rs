//! What a Service and its EndpointSlices ask of the proxy, as plain values: one [`PortSpec`]
//! per TCP service port, with the addresses it is reached on, whether it is proxied at L7, the
//! endpoints behind it and the strategy that picks among them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The annotation naming the WasmPlugin (of kind `proxy-strategy`) that balances a Service.
pub const STRATEGY_ANNOTATION: &str = "proxy.flotilla.dev/strategy";
/// The strategy a Service with `sessionAffinity: ClientIP` gets when it names none.
pub const AFFINITY_STRATEGY: &str = "client-ip-affinity";
/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of a service port, as its EndpointSlice says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One TCP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `namespace/name:port`, the port's name or, when unnamed, its number.
    pub key: String,
    /// `clusterIP:port`; none for headless Services.
    pub cluster: Option<SocketAddr>,
    pub node_port: Option<u16>,
    /// Proxied per HTTP request rather than per connection.
    pub l7: bool,
    pub endpoints: Vec<EndpointSpec>,
    pub annotations: Vec<(String, String)>,
    /// `sessionAffinity: ClientIP` and its timeout.
    pub affinity_seconds: Option<u32>,
    /// The WasmPlugin that picks endpoints; none for the native round-robin.
    pub strategy: Option<String>,
}

/// An L7 port: `appProtocol: http` (Kubernetes' convention), or, without an appProtocol, a
/// port named `http` or `http-…` (Istio's).
pub fn is_http(port: &ServicePort) -> bool {
    match port.app_protocol.as_deref() {
        Some(protocol) => protocol.eq_ignore_ascii_case("http"),
        None => port
            .name
            .as_deref()
            .is_some_and(|n| n == "http" || n.starts_with("http-")),
    }
}

fn port_key(namespace: &str, name: &str, port: &ServicePort) -> String {
    match port.name.as_deref().filter(|n| !n.is_empty()) {
        Some(port_name) => format!("{namespace}/{name}:{port_name}"),
        None => format!("{namespace}/{name}:{}", port.port),
    }
}

/// The endpoints the slices give for the service port named `port_name` (empty for the one
/// unnamed port), deduplicated by address.
fn endpoints_of(slices: &[&EndpointSlice], port_name: &str) -> Vec<EndpointSpec> {
    let mut found: BTreeMap<SocketAddr, EndpointSpec> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(number) = slice.ports.iter().flatten().find_map(|p| {
            let name = p.name.as_deref().unwrap_or_default();
            let tcp = p.protocol.as_deref().unwrap_or("TCP") == "TCP";
            (name == port_name && tcp).then_some(p.port).flatten()
        }) else {
            continue;
        };
        let Ok(number) = u16::try_from(number) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Kubernetes: a nil `ready` means ready; `serving` defaults to `ready`.
            let ready = conditions.ready.unwrap_or(true);
            let spec = |ip: IpAddr| EndpointSpec {
                addr: SocketAddr::new(ip, number),
                node: endpoint.node_name.clone(),
                zone: endpoint.zone.clone(),
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
            };
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    let candidate = spec(ip);
                    // The same address in two slices (a move in progress): ready wins.
                    match found.get(&candidate.addr) {
                        Some(existing) if existing.ready && !candidate.ready => {}
                        _ => {
                            found.insert(candidate.addr, candidate);
                        }
                    }
                }
            }
        }
    }
    found.into_values().collect()
}

/// The ports of a Service the proxy carries, with their endpoints from `slices`. ExternalName
/// Services and non-TCP ports carry nothing.
pub fn ports(service: &Service, slices: &[&EndpointSlice]) -> Vec<PortSpec> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ip: Option<IpAddr> = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse().ok());
    let annotations: Vec<(String, String)> = service
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|s| u32::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let strategy = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STRATEGY_ANNOTATION))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| affinity_seconds.map(|_| AFFINITY_STRATEGY.to_owned()));
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|port| {
            let number = u16::try_from(port.port).ok()?;
            Some(PortSpec {
                key: port_key(namespace, name, port),
                cluster: cluster_ip.map(|ip| SocketAddr::new(ip, number)),
                node_port: port.node_port.and_then(|p| u16::try_from(p).ok()),
                l7: is_http(port),
                endpoints: endpoints_of(slices, port.name.as_deref().unwrap_or_default()),
                annotations: annotations.clone(),
                affinity_seconds,
                strategy: strategy.clone(),
            })
        })
        .collect()
}

/// The addresses a Service's name resolves to: its ClusterIP, or for a headless Service the
/// ready addresses of its endpoints. None for ExternalName Services (and Services without a spec).
pub fn addresses(service: &Service, slices: &[&EndpointSlice]) -> Option<Vec<IpAddr>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    match spec.cluster_ip.as_deref() {
        Some("None") => {
            let mut ready: Vec<IpAddr> = slices
                .iter()
                .flat_map(|slice| &slice.endpoints)
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .flat_map(|e| &e.addresses)
                .filter_map(|a| a.parse().ok())
                .collect();
            ready.sort();
            ready.dedup();
            Some(ready)
        }
        Some(ip) => Some(ip.parse().ok().into_iter().collect()),
        None => Some(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn each_tcp_port_gets_its_endpoints_by_port_name() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "127.43.0.9", "type": "NodePort", "ports": [
                {"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                {"name": "metrics", "port": 9090, "appProtocol": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "http-admin", "port": 81, "appProtocol": "kubernetes.io/h2c"},
            ]}
        }));
        let a = slice(json!({
            "metadata": {"name": "web-a"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}],
            "endpoints": [
                {"addresses": ["127.1.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["127.1.0.3"], "conditions": {"ready": false, "serving": true,
                    "terminating": true}},
            ]
        }));
        let b = slice(json!({
            "metadata": {"name": "web-b"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8081}],
            "endpoints": [{"addresses": ["127.2.0.2"]}]
        }));
        let ports = ports(&svc, &[&a, &b]);
        assert_eq!(ports.len(), 3, "UDP is not proxied");
        let http = &ports[0];
        assert_eq!(http.key, "shop/web:http");
        assert_eq!(http.cluster, Some("127.43.0.9:80".parse().unwrap()));
        assert_eq!(http.node_port, Some(30080));
        assert!(http.l7);
        let addrs: Vec<String> = http.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["127.1.0.2:8080", "127.1.0.3:8080", "127.2.0.2:8081"]
        );
        assert!(http.endpoints[0].ready && http.endpoints[2].ready);
        assert!(!http.endpoints[1].ready && http.endpoints[1].terminating);
        assert_eq!(http.endpoints[0].node.as_deref(), Some("n1"));
        assert_eq!(ports[1].key, "shop/web:metrics");
        assert!(ports[1].l7, "appProtocol http");
        assert_eq!(ports[1].endpoints.len(), 2);
        assert!(
            !ports[2].l7,
            "an appProtocol other than http wins over the name"
        );
        assert!(ports[2].endpoints.is_empty());
        assert_eq!(http.strategy, None);
    }

    #[test]
    fn the_strategy_comes_from_the_annotation_or_client_ip_affinity() {
        let mut svc = service(json!({
            "metadata": {"name": "api", "namespace": "default"},
            "spec": {"clusterIP": "None", "sessionAffinity": "ClientIP",
                "ports": [{"port": 7000}]}
        }));
        let ports_now = ports(&svc, &[]);
        assert_eq!(ports_now[0].key, "default/api:7000");
        assert_eq!(ports_now[0].cluster, None, "headless");
        assert!(!ports_now[0].l7);
        assert_eq!(
            ports_now[0].affinity_seconds,
            Some(DEFAULT_AFFINITY_SECONDS)
        );
        assert_eq!(ports_now[0].strategy.as_deref(), Some(AFFINITY_STRATEGY));

        svc.metadata.annotations =
            Some([(STRATEGY_ANNOTATION.to_owned(), "canary".to_owned())].into());
        svc.spec.as_mut().unwrap().session_affinity_config =
            Some(serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 30}})).unwrap());
        let ports_now = ports(&svc, &[]);
        assert_eq!(ports_now[0].strategy.as_deref(), Some("canary"));
        assert_eq!(ports_now[0].affinity_seconds, Some(30));
        assert!(
            ports_now[0]
                .annotations
                .contains(&(STRATEGY_ANNOTATION.into(), "canary".into()))
        );

        let ready = slice(json!({
            "metadata": {"name": "api-a"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.1.0.7"]}, {"addresses": ["127.1.0.3"]},
                {"addresses": ["127.1.0.5"], "conditions": {"ready": false}}]
        }));
        let headless: Vec<String> = addresses(&svc, &[&ready])
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(headless, ["127.1.0.3", "127.1.0.7"], "ready pods only");

        svc.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(ports(&svc, &[]).is_empty());
        assert_eq!(addresses(&svc, &[]), None);
    }
}
