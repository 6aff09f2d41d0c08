//! Services, Endpoints, EndpointSlices, Ingresses and IngressClasses.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

use super::pod::PROTOCOLS;
use super::{
    Causes, Check, Field, UniqueNames, check_str, immutable, invalid_each, is_set, items, labels,
    one_of, port_number, port_number_or_name,
};
use crate::status::StatusCause;
use crate::validation;

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
/// The most seconds a ClientIP session affinity may last.
const MAX_AFFINITY_SECONDS: i64 = 86400;

pub(super) fn service(service: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(service, "spec");
    one_of(&spec.child("type"), SERVICE_TYPES, out);
    let service_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if service_type == "ExternalName" {
        external_name(&spec, out);
    } else {
        cluster_ip(&spec.child("clusterIP"), service_type, out);
        let ports = spec.child("ports");
        if items(&ports).is_empty() && spec["clusterIP"] != "None" {
            out.push(ports.required());
        }
    }
    service_ports(&spec.child("ports"), service_type, out);
    labels(&spec.child("selector"), out);
    session_affinity(&spec, out);
    traffic_policies(&spec, service_type, out);
    if let Some(old) = old {
        cluster_ip_unchanged(&spec, &old["spec"], out);
    }
}

fn external_name(spec: &Field, out: &mut Causes) {
    let cluster_ip = spec.child("clusterIP");
    if cluster_ip.is_set() {
        out.push(cluster_ip.forbidden("may not be set for ExternalName services"));
    }
    let name = spec.child("externalName");
    match name.as_str().filter(|name| !name.is_empty()) {
        None => out.push(name.required()),
        Some(text) => {
            let errors = validation::dns1123_subdomain(text.strip_suffix('.').unwrap_or(text));
            invalid_each(&name.path, &name, errors, out);
        }
    }
}

fn cluster_ip(ip: &Field, service_type: &str, out: &mut Causes) {
    match ip.as_str() {
        Some("None") if matches!(service_type, "NodePort" | "LoadBalancer") => {
            out.push(ip.invalid(&format!(
                "may not be set to 'None' for {service_type} services"
            )));
        }
        Some("None" | "") => {}
        _ => check_str(ip, validation::ip_address, out),
    }
}

/// Names, ports and protocols as every port list has them; target ports; node ports only where
/// the type has them; no port and protocol twice.
fn service_ports(ports: &Field, service_type: &str, out: &mut Causes) {
    named_ports(ports, out);
    let mut seen = BTreeSet::new();
    for port in ports.items() {
        let target = port.child("targetPort");
        if !target.is_null() {
            port_number_or_name(&target, out);
        }
        let node_port = port.child("nodePort");
        if node_port.is_set() && *node_port != 0 {
            if matches!(service_type, "NodePort" | "LoadBalancer") {
                port_number(&node_port, out);
            } else {
                let message = format!("may not be used when `type` is '{service_type}'");
                out.push(node_port.forbidden(&message));
            }
        }
        let key = json!({"port": port["port"], "protocol": port["protocol"]});
        if !seen.insert(key.to_string()) {
            out.push(StatusCause::duplicate(&port.path, &key));
        }
    }
}

/// Ports of services and endpoints: a name (a DNS label, required and unique when there are
/// several), a port number and a protocol.
fn named_ports(ports: &Field, out: &mut Causes) {
    let several = items(ports).len() > 1;
    let mut names = UniqueNames::new(validation::dns1123_label, several);
    for port in ports.items() {
        names.check(&port, out);
        port_number(&port.child("port"), out);
        one_of(&port.child("protocol"), PROTOCOLS, out);
    }
}

fn session_affinity(spec: &Field, out: &mut Causes) {
    let affinity = spec.child("sessionAffinity");
    one_of(&affinity, &["ClientIP", "None"], out);
    let config = spec.child("sessionAffinityConfig");
    if *affinity == "None" && !config.is_null() {
        out.push(config.forbidden("must not be set when session affinity is None"));
    } else if *affinity == "ClientIP" {
        let timeout = config.child("clientIP").child("timeoutSeconds");
        let in_range = |seconds| (1..=MAX_AFFINITY_SECONDS).contains(&seconds);
        if !timeout.is_null() && !timeout.as_i64().is_some_and(in_range) {
            let message = format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}");
            out.push(timeout.invalid(&message));
        }
    }
}

fn traffic_policies(spec: &Field, service_type: &str, out: &mut Causes) {
    let external = spec.child("externalTrafficPolicy");
    let reachable = matches!(service_type, "NodePort" | "LoadBalancer")
        || (service_type == "ClusterIP" && is_set(&spec["externalIPs"]));
    if !reachable && external.is_set() {
        out.push(external.invalid("may only be set for externally-accessible services"));
    } else {
        one_of(&external, TRAFFIC_POLICIES, out);
    }
    one_of(&spec.child("internalTrafficPolicy"), TRAFFIC_POLICIES, out);
    one_of(&spec.child("ipFamilyPolicy"), IP_FAMILY_POLICIES, out);
}

/// A cluster IP, once allocated, stays: an update may leave it out but not change it.
fn cluster_ip_unchanged(spec: &Field, old: &Value, out: &mut Causes) {
    let external_name = |spec: &Value| spec["type"] == "ExternalName";
    let ip = spec.child("clusterIP");
    if !external_name(spec) && !external_name(old) && ip.is_set() && is_set(&old["clusterIP"]) {
        immutable(&ip, &old["clusterIP"], out);
    }
}

pub(super) fn endpoints(endpoints: &Value, out: &mut Causes) {
    for subset in Field::of(endpoints, "subsets").items() {
        let (addresses, not_ready) = (subset.child("addresses"), subset.child("notReadyAddresses"));
        if items(&addresses).is_empty() && items(&not_ready).is_empty() {
            out.push(subset.required_with("must specify `addresses` or `notReadyAddresses`"));
        }
        for address in addresses.items().chain(not_ready.items()) {
            endpoint_address(&address, out);
        }
        named_ports(&subset.child("ports"), out);
    }
}

fn endpoint_address(address: &Field, out: &mut Causes) {
    let ip = address.child("ip");
    if ip.is_set() {
        check_str(&ip, validation::ip_address, out);
    } else {
        out.push(ip.required());
    }
    check_str(&address.child("hostname"), validation::dns1123_label, out);
}

pub(super) fn endpoint_slice(slice: &Value, out: &mut Causes) {
    let address_type = Field::of(slice, "addressType");
    if address_type.is_set() {
        one_of(&address_type, ADDRESS_TYPES, out);
    } else {
        out.push(address_type.required());
    }
    let check: Check = match address_type.as_str() {
        Some("IPv4") => ipv4_address,
        Some("IPv6") => ipv6_address,
        _ => validation::dns1123_subdomain,
    };
    for endpoint in Field::of(slice, "endpoints").items() {
        let addresses = endpoint.child("addresses");
        if items(&addresses).is_empty() {
            out.push(addresses.required_with("must contain at least 1 address"));
        }
        for address in addresses.items() {
            check_str(&address, check, out);
        }
    }
    for port in Field::of(slice, "ports").items() {
        check_str(&port.child("name"), validation::dns1123_label, out);
        let number = port.child("port");
        if !number.is_null() {
            port_number(&number, out);
        }
        one_of(&port.child("protocol"), PROTOCOLS, out);
    }
}

fn ipv4_address(text: &str) -> Vec<String> {
    match text.parse::<Ipv4Addr>() {
        Ok(_) => Vec::new(),
        Err(_) => vec!["must be a valid IPv4 address".to_owned()],
    }
}

fn ipv6_address(text: &str) -> Vec<String> {
    match text.parse::<Ipv6Addr>() {
        Ok(_) => Vec::new(),
        Err(_) => vec!["must be a valid IPv6 address".to_owned()],
    }
}

/// An IngressClass: `spec.controller` is a domain-prefixed path, immutable once set.
pub(super) fn ingress_class(class: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(class, "spec");
    let controller = spec.child("controller");
    match controller.value.as_str() {
        None | Some("") => out.push(controller.required()),
        Some(name) => {
            let (domain, path) = name.split_once('/').unwrap_or((name, ""));
            if name.len() > 250 {
                out.push(controller.invalid("must be no more than 250 characters"));
            } else if path.is_empty() || !validation::dns1123_subdomain(domain).is_empty() {
                out.push(
                    controller.invalid("must be a domain-prefixed path (such as \"acme.io/foo\")"),
                );
            }
        }
    }
    if let Some(old) = old {
        immutable(&controller, &old["spec"]["controller"], out);
    }
}

pub(super) fn ingress(ingress: &Value, out: &mut Causes) {
    let spec = Field::of(ingress, "spec");
    let rules = spec.child("rules");
    let default_backend = spec.child("defaultBackend");
    if items(&rules).is_empty() && default_backend.is_null() {
        let message = "either `defaultBackend` or `rules` must be specified";
        out.push(StatusCause::invalid(&spec.path, &json!([]), message));
    }
    if !default_backend.is_null() {
        backend(&default_backend, out);
    }
    let class = spec.child("ingressClassName");
    check_str(&class, validation::dns1123_subdomain, out);
    for rule in rules.items() {
        host(&rule.child("host"), out);
        let http = rule.child("http");
        if http.is_null() {
            continue;
        }
        let paths = http.child("paths");
        if items(&paths).is_empty() {
            out.push(paths.required());
        }
        for http_path in paths.items() {
            self::http_path(&http_path, out);
        }
    }
    for tls in spec.child("tls").items() {
        for name in tls.child("hosts").items() {
            host(&name, out);
        }
    }
}

/// A host name, possibly a wildcard (`*.example.com`), never an IP address.
fn host(host: &Field, out: &mut Causes) {
    let Some(text) = host.as_str().filter(|text| !text.is_empty()) else {
        return;
    };
    if text.parse::<IpAddr>().is_ok() {
        out.push(host.invalid("must be a DNS name, not an IP address"));
    }
    let check = if text.contains('*') {
        validation::wildcard_dns1123_subdomain
    } else {
        validation::dns1123_subdomain
    };
    check_str(host, check, out);
}

fn http_path(http_path: &Field, out: &mut Causes) {
    let (path, path_type) = (http_path.child("path"), http_path.child("pathType"));
    let text = path.as_str().unwrap_or_default();
    let mut invalid = |message: &str| out.push(path.invalid(message));
    match path_type.as_str() {
        None | Some("") => {
            out.push(path_type.required_with("pathType must be specified"));
            return;
        }
        Some("Exact" | "Prefix") => {
            if !text.starts_with('/') {
                invalid("must be an absolute path");
            }
            for sequence in ["//", "/./", "/../", "%2f", "%2F"] {
                if text.contains(sequence) {
                    invalid(&format!("must not contain '{sequence}'"));
                }
            }
            for suffix in ["/..", "/."] {
                if text.ends_with(suffix) {
                    invalid(&format!("cannot end with '{suffix}'"));
                }
            }
        }
        Some("ImplementationSpecific") => {
            if !text.is_empty() && !text.starts_with('/') {
                invalid("must be an absolute path");
            }
        }
        Some(_) => out.push(path_type.not_supported(PATH_TYPES)),
    }
    backend(&http_path.child("backend"), out);
}

/// A backend is a service (name and port number or name) or a resource (kind and name).
fn backend(backend: &Field, out: &mut Causes) {
    let (service, resource) = (backend.child("service"), backend.child("resource"));
    let invalid = |message: &str| StatusCause::invalid(&backend.path, &json!(""), message);
    match (service.is_null(), resource.is_null()) {
        (false, false) => out.push(invalid("cannot set both resource and service backends")),
        (true, false) => {
            for name in ["kind", "name"] {
                let field = resource.child(name);
                if !field.is_set() {
                    out.push(field.required());
                }
            }
        }
        (false, true) => service_backend(backend, &service, out),
        (true, true) => out.push(invalid("resource or service backend is required")),
    }
}

fn service_backend(backend: &Field, service: &Field, out: &mut Causes) {
    let name = service.child("name");
    if name.is_set() {
        check_str(&name, validation::dns1035_label, out);
    } else {
        out.push(name.required());
    }
    let port = service.child("port");
    let (port_name, number) = (port.child("name"), port.child("number"));
    match (port_name.is_set(), number.is_set() && *number != 0) {
        (true, true) => {
            let message = "cannot set both port name & port number";
            out.push(StatusCause::invalid(&backend.path, &json!(""), message));
        }
        (true, false) => check_str(&port_name, validation::port_name, out),
        (false, true) => port_number(&number, out),
        (false, false) => out.push(backend.required_with("port name or number is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{problems, update_problems};
    use serde_json::{Value, json};

    fn service(spec: Value) -> Vec<String> {
        problems(
            "",
            "Service",
            json!({"metadata": {"name": "web"}, "spec": spec}),
        )
    }

    #[test]
    fn a_plain_service_is_valid() {
        let spec = json!({"selector": {"app": "web"}, "ports": [{"port": 80}]});
        assert!(service(spec).is_empty());
        assert!(service(json!({"clusterIP": "None", "selector": {"app": "db"}})).is_empty());
        assert!(
            service(json!({"type": "ExternalName", "externalName": "db.example.com."})).is_empty()
        );
    }

    #[test]
    fn services_need_ports_types_and_names() {
        assert_eq!(service(json!({})), ["spec.ports: Required value"]);
        assert_eq!(
            service(json!({"type": "Internal", "ports": [{"port": 80}]})),
            [
                "spec.type: Unsupported value: \"Internal\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ]
        );
        assert_eq!(
            service(json!({"type": "ExternalName", "clusterIP": "10.0.0.1"})),
            [
                "spec.clusterIP: Forbidden: may not be set for ExternalName services",
                "spec.externalName: Required value",
            ]
        );
        let problems = service(json!({"ports": [
            {"port": 80},
            {"name": "web", "port": 0, "protocol": "HTTP", "targetPort": "-web"},
            {"name": "web", "port": 81, "nodePort": 30080},
        ]}));
        assert_eq!(
            problems,
            [
                "spec.ports[0].name: Required value",
                "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "spec.ports[2].name: Duplicate value: \"web\"",
                "spec.ports[1].targetPort: Invalid value: \"-web\": must not begin or end with a hyphen (-)",
                "spec.ports[2].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            ]
        );
        let twice =
            service(json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}));
        assert_eq!(
            twice,
            ["spec.ports[1]: Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}"]
        );
    }

    #[test]
    fn session_affinity_and_traffic_policies() {
        assert_eq!(
            service(json!({"ports": [{"port": 80}], "sessionAffinity": "Cookie"})),
            [
                "spec.sessionAffinity: Unsupported value: \"Cookie\": supported values: \"ClientIP\", \"None\""
            ]
        );
        assert_eq!(
            service(
                json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}})
            ),
            [
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"
            ]
        );
        assert_eq!(
            service(json!({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"})),
            [
                "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services"
            ]
        );
        assert!(service(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}], "externalTrafficPolicy": "Local"})).is_empty());
        assert_eq!(
            service(json!({"type": "LoadBalancer", "clusterIP": "None", "ports": [{"port": 80}]})),
            [
                "spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services"
            ]
        );
        assert_eq!(
            service(json!({"clusterIP": "10.0.0.300", "ports": [{"port": 80}]})),
            [
                "spec.clusterIP: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
            ]
        );
    }

    #[test]
    fn a_cluster_ip_is_kept() {
        let old = json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}});
        let omitted = json!({"spec": {"ports": [{"port": 8080}]}});
        assert!(update_problems("", "Service", omitted, Some(old.clone())).is_empty());
        let same = json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}});
        assert!(update_problems("", "Service", same, Some(old.clone())).is_empty());
        let moved = json!({"spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}});
        assert_eq!(
            update_problems("", "Service", moved, Some(old)),
            ["spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable"]
        );
    }

    #[test]
    fn endpoints_and_slices() {
        let ok = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]});
        assert!(problems("", "Endpoints", ok).is_empty());
        let bad = json!({"subsets": [
            {"ports": [{"port": 80}]},
            {"addresses": [{"hostname": "a"}, {"ip": "x"}]},
        ]});
        assert_eq!(
            problems("", "Endpoints", bad),
            [
                "subsets[0]: Required value: must specify `addresses` or `notReadyAddresses`",
                "subsets[1].addresses[0].ip: Required value",
                "subsets[1].addresses[1].ip: Invalid value: \"x\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ]
        );
        let slice = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"name": "http", "port": 80}]});
        assert!(problems("discovery.k8s.io", "EndpointSlice", slice).is_empty());
        let bad_slice = json!({"addressType": "IPv4", "endpoints": [{"addresses": []}, {"addresses": ["::1"]}]});
        assert_eq!(
            problems("discovery.k8s.io", "EndpointSlice", bad_slice),
            [
                "endpoints[0].addresses: Required value: must contain at least 1 address",
                "endpoints[1].addresses[0]: Invalid value: \"::1\": must be a valid IPv4 address",
            ]
        );
        assert_eq!(
            problems("discovery.k8s.io", "EndpointSlice", json!({})),
            ["addressType: Required value"]
        );
    }

    fn ingress(spec: Value) -> Vec<String> {
        problems("networking.k8s.io", "Ingress", json!({"spec": spec}))
    }

    #[test]
    fn ingress_rules_paths_and_backends() {
        let ok = json!({"rules": [{"host": "*.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            {"path": "/api", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"name": "http"}}}},
        ]}}]});
        assert!(ingress(ok).is_empty());
        assert_eq!(
            ingress(json!({})),
            ["spec: Invalid value: []: either `defaultBackend` or `rules` must be specified"]
        );
        let problems = ingress(json!({"rules": [
            {"host": "10.0.0.1", "http": {"paths": [
                {"path": "api", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "api//x", "pathType": "Prefix", "backend": {"service": {"name": "web"}}},
                {"path": "/", "pathType": "Regex", "backend": {}},
            ]}},
            {"host": "*.*.example.com", "http": {"paths": []}},
        ]}));
        assert_eq!(
            problems,
            [
                "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
                "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
                "spec.rules[0].http.paths[1].path: Invalid value: \"api//x\": must be an absolute path",
                "spec.rules[0].http.paths[1].path: Invalid value: \"api//x\": must not contain '//'",
                "spec.rules[0].http.paths[1].backend: Required value: port name or number is required",
                "spec.rules[0].http.paths[2].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"",
                "spec.rules[0].http.paths[2].backend: Invalid value: \"\": resource or service backend is required",
                "spec.rules[1].host: Invalid value: \"*.*.example.com\": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "spec.rules[1].http.paths: Required value",
            ]
        );
        let resource = json!({"defaultBackend": {"resource": {"kind": "Bucket"}}});
        assert_eq!(
            ingress(resource),
            ["spec.defaultBackend.resource.name: Required value"]
        );
    }
}
