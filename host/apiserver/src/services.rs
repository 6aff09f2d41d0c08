//! Service addresses: ClusterIPs from the service CIDR and NodePorts from the node-port range,
//! allocated when a Service is written and released when it no longer holds them.
//!
//! Each allocated address is a key of its own (`/registry/flotilla/serviceips/<ip>`,
//! `/registry/flotilla/servicenodeports/<port>`) created only if absent, so two writers can
//! never hold one address, whichever API server they reach. A write reserves what it needs
//! before the Service is stored and gives it back if the store refuses the Service. Releases
//! follow the store's watch of Services (every way a Service goes or changes passes there), and
//! a repair at start makes the keys agree with the Services again after a crash between the two
//! writes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use bytes::Bytes;
use flotilla_api::{Status, StatusCause, StatusReason};
use flotilla_store::{EventKind, KeyValue, RangeRequest, SharedStore, StoreExt, TxnOutcome};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::ApiError;

const IP_PREFIX: &str = "/registry/flotilla/serviceips/";
const PORT_PREFIX: &str = "/registry/flotilla/servicenodeports/";
const SERVICE_PREFIX: &str = "/registry/services/";

/// Where Service addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRanges {
    /// The service CIDR (IPv4). Its first address is the `kubernetes` Service's.
    pub cidr: (Ipv4Addr, u8),
    /// The NodePort range, inclusive.
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    /// Service IPs within 127.0.0.0/8, as pod IPs in loopback mode: every node's proxy can
    /// bind them without privileges, and traffic to them never leaves a node.
    fn default() -> Self {
        Self {
            cidr: (Ipv4Addr::new(127, 43, 0, 0), 16),
            node_ports: (30000, 32767),
        }
    }
}

impl ServiceRanges {
    /// Parses `10.43.0.0/16` and `30000-32767`.
    pub fn parse(cidr: &str, node_ports: &str) -> Result<Self, String> {
        let (base, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {cidr:?} is not address/prefix"))?;
        let base: Ipv4Addr = base
            .parse()
            .map_err(|_| format!("service CIDR {cidr:?}: not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=28).contains(p))
            .ok_or_else(|| format!("service CIDR {cidr:?}: the prefix must be 8 to 28"))?;
        let mask = u32::MAX << (32 - prefix);
        let (low, high) = node_ports
            .split_once('-')
            .and_then(|(l, h)| Some((l.trim().parse().ok()?, h.trim().parse().ok()?)))
            .filter(|(l, h): &(u16, u16)| l <= h && *l > 0)
            .ok_or_else(|| format!("node-port range {node_ports:?} is not low-high"))?;
        Ok(Self {
            cidr: (Ipv4Addr::from(u32::from(base) & mask), prefix),
            node_ports: (low, high),
        })
    }

    fn cidr_text(&self) -> String {
        format!("{}/{}", self.cidr.0, self.cidr.1)
    }

    /// The CIDR's addresses that can be given out: not the network or broadcast address.
    fn hosts(&self) -> (u32, u32) {
        let base = u32::from(self.cidr.0);
        let size = 1u32 << (32 - self.cidr.1);
        (base + 1, base + size - 2)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.hosts();
        (first..=last).contains(&u32::from(ip))
    }

    /// The `kubernetes` Service's address: the CIDR's first.
    pub fn api_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.hosts().0)
    }

    fn node_port_text(&self) -> String {
        format!("{}-{}", self.node_ports.0, self.node_ports.1)
    }
}

/// What a Service holds: its ClusterIP and NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Held {
    ip: Option<Ipv4Addr>,
    node_ports: BTreeSet<u16>,
}

impl Held {
    fn of(service: &Value) -> Self {
        let spec = &service["spec"];
        let ip = spec["clusterIP"].as_str().and_then(|ip| ip.parse().ok());
        let node_ports = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .collect();
        Self { ip, node_ports }
    }

    fn keys(&self) -> Vec<String> {
        self.ip
            .map(ip_key)
            .into_iter()
            .chain(self.node_ports.iter().map(|p| port_key(*p)))
            .collect()
    }
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IP_PREFIX}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{PORT_PREFIX}{port}")
}

fn owner_of(service: &Value) -> String {
    format!(
        "{}/{}",
        service["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default(),
        service["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn service_type(service: &Value) -> &str {
    service["spec"]["type"].as_str().unwrap_or("ClusterIP")
}

fn has_node_ports(service: &Value) -> bool {
    matches!(service_type(service), "NodePort" | "LoadBalancer")
}

fn is_set(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.is_empty())
}

/// Before validation: an update keeps what the Service was given (a ClusterIP, NodePorts of
/// the same port) when the new object leaves them out, as Kubernetes does, so `kubectl apply`
/// and `replace` of a manifest without them work; a type that no longer has NodePorts drops
/// the ones it was given.
pub(crate) fn keep_allocated(object: &mut Value, old: Option<&Value>) {
    let spec = &mut object["spec"];
    if !is_set(&spec["clusterIP"])
        && let Some(first) = spec["clusterIPs"].get(0).filter(|v| is_set(v)).cloned()
    {
        spec["clusterIP"] = first;
    }
    let Some(old) = old else {
        return;
    };
    let new_type = object["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_owned();
    let old_spec = &old["spec"];
    let spec = &mut object["spec"];
    if new_type != "ExternalName" && !is_set(&spec["clusterIP"]) && is_set(&old_spec["clusterIP"]) {
        spec["clusterIP"] = old_spec["clusterIP"].clone();
        if !spec["clusterIPs"].is_array() {
            spec["clusterIPs"] = old_spec["clusterIPs"].clone();
        }
    }
    let old_ports = old_spec["ports"].as_array().cloned().unwrap_or_default();
    let had_node_ports = has_node_ports(old);
    let external = matches!(new_type.as_str(), "NodePort" | "LoadBalancer");
    if had_node_ports && !external {
        // Fields only external types have go with the type, unless the client changed them.
        for field in [
            "externalTrafficPolicy",
            "healthCheckNodePort",
            "allocateLoadBalancerNodePorts",
        ] {
            if spec.get(field).is_some()
                && spec[field] == old_spec[field]
                && let Some(spec) = spec.as_object_mut()
            {
                spec.remove(field);
            }
        }
    }
    let Some(ports) = spec["ports"].as_array_mut() else {
        return;
    };
    for port in ports {
        let given = port["nodePort"].as_u64().unwrap_or(0);
        let same = old_ports.iter().find(|p| {
            p["port"] == port["port"]
                && p["protocol"].as_str().unwrap_or("TCP")
                    == port["protocol"].as_str().unwrap_or("TCP")
        });
        match (
            matches!(new_type.as_str(), "NodePort" | "LoadBalancer"),
            same,
        ) {
            (true, Some(same)) if given == 0 && same["nodePort"].as_u64().unwrap_or(0) > 0 => {
                port["nodePort"] = same["nodePort"].clone();
            }
            // Leaving NodePort: the ports it was given go with it, unless the client changed
            // them (then validation says they may not be set).
            (false, Some(same))
                if had_node_ports && given > 0 && same["nodePort"] == port["nodePort"] =>
            {
                if let Some(port) = port.as_object_mut() {
                    port.remove("nodePort");
                }
            }
            _ => {}
        }
    }
}

/// Addresses reserved for one write, given back if the write does not happen.
#[derive(Debug, Default)]
#[must_use = "reservations are given back unless the write is kept"]
pub(crate) struct Reserved {
    keys: Vec<String>,
}

impl Reserved {
    /// The write failed: free what it reserved.
    pub(crate) async fn release(self, store: &SharedStore) {
        for key in self.keys {
            if let Err(error) = store.delete(&key, None).await {
                tracing::warn!(key, "cannot free a service address: {error}");
            }
        }
    }

    /// The write happened: the Service holds them now.
    pub(crate) fn keep(self) {}
}

fn invalid(name: &str, field: &str, value: Value, detail: &str) -> ApiError {
    ApiError::from(Status::invalid(
        "",
        "Service",
        name,
        vec![StatusCause::invalid(field, &value, detail)],
    ))
}

/// After validation, before the store: reserves the ClusterIP and NodePorts the Service asks
/// for and allocates the ones it leaves to the server. Requested addresses outside the ranges
/// or held by another Service are refused with 422 naming the field.
pub(crate) async fn allocate(
    store: &SharedStore,
    ranges: &ServiceRanges,
    object: &mut Value,
    old: Option<&Value>,
) -> Result<Reserved, ApiError> {
    let mut reserved = Reserved::default();
    match reserve_all(store, ranges, object, old, &mut reserved).await {
        Ok(()) => Ok(reserved),
        Err(error) => {
            reserved.release(store).await;
            Err(error)
        }
    }
}

async fn reserve_all(
    store: &SharedStore,
    ranges: &ServiceRanges,
    object: &mut Value,
    old: Option<&Value>,
    reserved: &mut Reserved,
) -> Result<(), ApiError> {
    let owner = Bytes::from(json!({"service": owner_of(object)}).to_string());
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let held = old.map(Held::of).unwrap_or_default();
    if service_type(object) == "ExternalName" {
        return Ok(());
    }
    let spec = &mut object["spec"];
    let requested = spec["clusterIP"].as_str().unwrap_or_default().to_owned();
    if requested != "None" {
        let ip = if requested.is_empty() {
            allocate_ip(store, ranges, &owner, reserved).await?
        } else {
            let ip: Ipv4Addr = requested.parse().map_err(|_| {
                invalid(
                    &name,
                    "spec.clusterIP",
                    json!(requested),
                    "must be a valid IPv4 address",
                )
            })?;
            if held.ip != Some(ip) {
                reserve_ip(store, ranges, ip, &owner, reserved)
                    .await
                    .map_err(|detail| {
                        invalid(
                            &name,
                            "spec.clusterIPs",
                            json!([requested]),
                            &format!("failed to allocate IP {ip}: {detail}"),
                        )
                    })?;
            }
            ip
        };
        spec["clusterIP"] = json!(ip.to_string());
    }
    spec["clusterIPs"] = json!([spec["clusterIP"]]);
    if !spec["ipFamilies"].is_array() {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if !is_set(&spec["ipFamilyPolicy"]) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if !has_node_ports(object) {
        return Ok(());
    }
    let Some(ports) = object["spec"]["ports"].as_array_mut() else {
        return Ok(());
    };
    // One port number may serve TCP and UDP of one Service: reserve it once. The ports asked
    // for are reserved first, so an allocated one never takes a port asked for further on.
    let mut mine: BTreeSet<u16> = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let given = port["nodePort"].as_u64().unwrap_or(0);
        if given == 0 {
            continue;
        }
        let field = format!("spec.ports[{i}].nodePort");
        let refuse = |detail: String| invalid(&name, &field, json!(given), &detail);
        let Ok(given) = u16::try_from(given) else {
            return Err(refuse(format!(
                "provided port is not in the valid range. The range of valid ports is {}",
                ranges.node_port_text()
            )));
        };
        if held.node_ports.contains(&given) || !mine.insert(given) {
            continue;
        }
        reserve_port(store, ranges, given, &owner, reserved)
            .await
            .map_err(refuse)?;
    }
    for port in ports.iter_mut() {
        if port["nodePort"].as_u64().unwrap_or(0) == 0 {
            let port_number = allocate_port(store, ranges, &owner, reserved).await?;
            port["nodePort"] = json!(port_number);
        }
    }
    Ok(())
}

/// Creates `key` if absent: true when this call made it.
async fn claim(store: &SharedStore, key: &str, owner: &Bytes) -> Result<bool, ApiError> {
    match store.create(key, owner.clone(), None).await? {
        TxnOutcome::Applied { .. } => Ok(true),
        _ => Ok(false),
    }
}

async fn reserve_ip(
    store: &SharedStore,
    ranges: &ServiceRanges,
    ip: Ipv4Addr,
    owner: &Bytes,
    reserved: &mut Reserved,
) -> Result<(), String> {
    if !ranges.contains(ip) {
        return Err(format!(
            "provided IP is not in the valid range. The range of valid IPs is {}",
            ranges.cidr_text()
        ));
    }
    reserve(store, ip_key(ip), "IP", owner, reserved).await
}

async fn reserve_port(
    store: &SharedStore,
    ranges: &ServiceRanges,
    port: u16,
    owner: &Bytes,
    reserved: &mut Reserved,
) -> Result<(), String> {
    if !(ranges.node_ports.0..=ranges.node_ports.1).contains(&port) {
        return Err(format!(
            "provided port is not in the valid range. The range of valid ports is {}",
            ranges.node_port_text()
        ));
    }
    reserve(store, port_key(port), "port", owner, reserved).await
}

/// Reserves the address `key` asked for; `what` names it in the refusal.
async fn reserve(
    store: &SharedStore,
    key: String,
    what: &str,
    owner: &Bytes,
    reserved: &mut Reserved,
) -> Result<(), String> {
    match claim(store, &key, owner).await {
        Ok(true) => {
            reserved.keys.push(key);
            Ok(())
        }
        Ok(false) => Err(format!("provided {what} is already allocated")),
        Err(error) => Err(error.0.message),
    }
}

fn random_below(n: u32) -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    u32::from_le_bytes(bytes) % n.max(1)
}

/// Which of `first..=last` are taken, read from the keys under `prefix`.
async fn taken(store: &SharedStore, prefix: &str) -> Result<BTreeSet<String>, ApiError> {
    let mut names = BTreeSet::new();
    let mut request = RangeRequest::prefix(prefix).limit(4096);
    loop {
        let page = store.range(request.clone()).await?;
        names.extend(
            page.kvs
                .iter()
                .map(|kv| kv.key.trim_start_matches(prefix).to_owned()),
        );
        match page.continue_from() {
            Some(next) => request = request.start(next).at(page.revision),
            None => return Ok(names),
        }
    }
}

/// Tries random candidates (cheap while the range is sparse), then the free ones in order.
async fn allocate_in(
    store: &SharedStore,
    (first, last): (u32, u32),
    prefix: &str,
    key_of: impl Fn(u32) -> String,
    owner: &Bytes,
    reserved: &mut Reserved,
) -> Result<Option<u32>, ApiError> {
    let size = last - first + 1;
    for _ in 0..16 {
        let candidate = first + random_below(size);
        let key = key_of(candidate);
        if claim(store, &key, owner).await? {
            reserved.keys.push(key);
            return Ok(Some(candidate));
        }
    }
    let taken = taken(store, prefix).await?;
    for candidate in first..=last {
        let key = key_of(candidate);
        if taken.contains(key.trim_start_matches(prefix)) {
            continue;
        }
        if claim(store, &key, owner).await? {
            reserved.keys.push(key);
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

async fn allocate_ip(
    store: &SharedStore,
    ranges: &ServiceRanges,
    owner: &Bytes,
    reserved: &mut Reserved,
) -> Result<Ipv4Addr, ApiError> {
    let (first, last) = ranges.hosts();
    // The first address is the `kubernetes` Service's; Kubernetes also keeps the lower part
    // of the range for addresses users ask for, and allocates from the upper part first.
    let size = last - first + 1;
    let low_band = (size / 16).clamp(16.min(size - 1), 256);
    let bands = [(first + low_band, last), (first + 1, first + low_band - 1)];
    for band in bands {
        if band.0 > band.1 {
            continue;
        }
        let found = allocate_in(
            store,
            band,
            IP_PREFIX,
            |n| ip_key(Ipv4Addr::from(n)),
            owner,
            reserved,
        )
        .await?;
        if let Some(ip) = found {
            return Ok(Ipv4Addr::from(ip));
        }
    }
    Err(ApiError::from(Status::new(
        StatusReason::InternalError,
        format!(
            "failed to allocate a serviceIP: range is full (the service CIDR is {})",
            ranges.cidr_text()
        ),
    )))
}

async fn allocate_port(
    store: &SharedStore,
    ranges: &ServiceRanges,
    owner: &Bytes,
    reserved: &mut Reserved,
) -> Result<u16, ApiError> {
    let (low, high) = ranges.node_ports;
    let found = allocate_in(
        store,
        (u32::from(low), u32::from(high)),
        PORT_PREFIX,
        |n| port_key(n as u16),
        owner,
        reserved,
    )
    .await?;
    found.map(|p| p as u16).ok_or_else(|| {
        ApiError::from(Status::new(
            StatusReason::InternalError,
            format!(
                "failed to allocate a nodePort: range is full (the node-port range is {})",
                ranges.node_port_text()
            ),
        ))
    })
}

fn decode(kv: &KeyValue) -> Option<Value> {
    serde_json::from_slice(&kv.value).ok()
}

/// Frees the addresses `before` held that `after` does not, when they are still `owner`'s.
async fn release_dropped(store: &SharedStore, owner: &str, before: &Held, after: &Held) {
    let keep: BTreeSet<String> = after.keys().into_iter().collect();
    for key in before.keys() {
        if keep.contains(&key) {
            continue;
        }
        let Ok((Some(kv), _)) = store.get(&key, None).await else {
            continue;
        };
        let held_by = decode(&kv).map(|v| v["service"].clone());
        if held_by.as_ref().and_then(Value::as_str) != Some(owner) {
            continue;
        }
        if let Err(error) = store.delete(&key, Some(kv.mod_revision)).await {
            tracing::warn!(key, "cannot free a service address: {error}");
        }
    }
}

/// Makes the address keys agree with the stored Services: addresses a Service holds get their
/// key, keys no Service holds go. Returns the revision the Services were read at.
async fn repair(store: &SharedStore) -> Result<flotilla_store::Revision, ApiError> {
    let mut services = Vec::new();
    let mut request = RangeRequest::prefix(SERVICE_PREFIX).limit(1024);
    let revision = loop {
        let page = store.range(request.clone()).await?;
        services.extend(page.kvs.iter().filter_map(decode));
        match page.continue_from() {
            Some(next) => request = request.start(next).at(page.revision),
            None => break page.revision,
        }
    };
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for service in &services {
        let owner = Bytes::from(json!({"service": owner_of(service)}).to_string());
        for key in Held::of(service).keys() {
            store.create(&key, owner.clone(), None).await?;
            wanted.insert(key);
        }
    }
    for prefix in [IP_PREFIX, PORT_PREFIX] {
        let page = store.range(RangeRequest::prefix(prefix)).await?;
        for kv in page.kvs {
            // A key newer than the read may belong to a write in flight on another server.
            if kv.mod_revision <= revision && !wanted.contains(&kv.key) {
                store.delete(&kv.key, Some(kv.mod_revision)).await?;
            }
        }
    }
    Ok(revision)
}

/// Repairs the address keys, then frees addresses as Services drop them, until the store's
/// watch ends (the server is stopping); a compacted watch repairs again and goes on.
pub(crate) fn spawn_releaser(store: SharedStore) {
    tokio::spawn(async move {
        loop {
            let revision = match repair(&store).await {
                Ok(revision) => revision,
                Err(error) => {
                    tracing::warn!("cannot repair service addresses: {}", error.0.message);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Ok(mut events) = store.watch(SERVICE_PREFIX, revision + 1).await else {
                return;
            };
            while let Some(event) = events.next().await {
                let Ok(event) = event else {
                    break;
                };
                let Some(prev) = event.prev.as_ref().and_then(decode) else {
                    continue;
                };
                let after = match event.kind {
                    EventKind::Delete => Held::default(),
                    EventKind::Put => decode(&event.kv).map(|s| Held::of(&s)).unwrap_or_default(),
                };
                release_dropped(&store, &owner_of(&prev), &Held::of(&prev), &after).await;
            }
            if store.current_revision().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_keep_their_first_address_for_the_api() {
        let ranges = ServiceRanges::parse("10.43.7.9/16", "30000-32767").unwrap();
        assert_eq!(ranges.cidr, (Ipv4Addr::new(10, 43, 0, 0), 16));
        assert_eq!(ranges.api_service_ip(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(ranges.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!ranges.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!ranges.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(ServiceRanges::parse("10.43.0.0", "30000-32767").is_err());
        assert!(ServiceRanges::parse("10.43.0.0/16", "32767-30000").is_err());
    }

    #[test]
    fn an_update_keeps_what_the_service_was_given() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut new = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81}]}});
        keep_allocated(&mut new, Some(&old));
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.9");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert!(new["spec"]["ports"][1].get("nodePort").is_none());
        // Back to ClusterIP: the NodePorts go with the type.
        let mut back = old.clone();
        back["spec"]["type"] = json!("ClusterIP");
        keep_allocated(&mut back, Some(&old));
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
    }
}
