//! Pod networking. Two modes, as the brief describes:
//!
//! - **loopback** (no privileges; the default of `flotilla up`): pod CIDRs lie in 127.0.0.0/8,
//!   whose every address Linux already treats as local, so every node on one host can bind its
//!   pods' IPs and reach every other node's.
//! - **routed** (multi-host, like flannel's host-gw): the node makes its own pod CIDR local
//!   (`local <cidr> dev lo` in the `local` table, so guests bind any of its addresses and
//!   traffic for them is delivered here), and routes every peer's pod CIDR via that peer's
//!   InternalIP, watching Nodes as they come, change and go. The routes carry the protocol
//!   number [`ROUTE_PROTOCOL`], so the agent finds and removes the ones it no longer wants,
//!   including those left by an earlier run. Needs CAP_NET_ADMIN and iproute2's `ip`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;

/// How pods' addresses reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    #[default]
    Loopback,
    Routed,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "loopback" => Ok(Self::Loopback),
            "routed" => Ok(Self::Routed),
            other => Err(format!(
                "network mode {other:?} is neither loopback nor routed"
            )),
        }
    }
}

/// The routing protocol number on the routes the agent makes (unassigned in iproute2's
/// `rt_protos`): `ip route show proto 73` lists them.
pub const ROUTE_PROTOCOL: u8 = 73;

/// A pod CIDR in text form.
pub(crate) fn cidr_text((base, prefix): (Ipv4Addr, u8)) -> String {
    format!("{base}/{prefix}")
}

fn in_loopback((base, _): (Ipv4Addr, u8)) -> bool {
    base.is_loopback()
}

/// Checks that the node's addresses fit the mode.
pub fn check(mode: NetworkMode, pod_cidr: (Ipv4Addr, u8), node_ip: IpAddr) -> Result<(), String> {
    let cidr = cidr_text(pod_cidr);
    match mode {
        NetworkMode::Loopback if !in_loopback(pod_cidr) => Err(format!(
            "loopback mode: the pod CIDR {cidr} must lie in 127.0.0.0/8 (routed mode takes other ranges)"
        )),
        NetworkMode::Routed if in_loopback(pod_cidr) => Err(format!(
            "routed mode: the pod CIDR {cidr} lies in 127.0.0.0/8, which other hosts cannot route to"
        )),
        NetworkMode::Routed if node_ip.is_loopback() || node_ip.is_unspecified() => Err(format!(
            "routed mode: the node IP {node_ip} is not an address peers can route through (give --node-ip)"
        )),
        _ => Ok(()),
    }
}

/// Runs `ip` with these arguments.
async fn ip(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Makes the node's own pod CIDR local (routed mode).
pub async fn claim(pod_cidr: (Ipv4Addr, u8)) -> Result<(), String> {
    let cidr = cidr_text(pod_cidr);
    let proto = ROUTE_PROTOCOL.to_string();
    ip(&[
        "route", "replace", "local", &cidr, "dev", "lo", "table", "local", "proto", &proto,
    ])
    .await
    .map(drop)
}

/// The peer routes the agent made: destination CIDR → gateway.
async fn installed() -> Result<BTreeMap<String, String>, String> {
    let proto = ROUTE_PROTOCOL.to_string();
    let text = ip(&["-j", "route", "show", "proto", &proto]).await?;
    let routes: Vec<serde_json::Value> = serde_json::from_str(text.trim())
        .map_err(|e| format!("cannot read `ip -j route show`: {e}"))?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            Some((
                r["dst"].as_str()?.to_owned(),
                r["gateway"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// A peer's pod CIDR and the address its traffic goes through.
fn peer_route(node: &Node, own: &str) -> Option<(String, String)> {
    if node.metadata.name.as_deref() == Some(own) {
        return None;
    }
    let cidr = node.spec.as_ref()?.pod_cidr.clone()?;
    let address = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    // A peer in loopback mode shares this host's 127.0.0.0/8: nothing to route.
    let ip: IpAddr = address.parse().ok()?;
    (!ip.is_loopback()).then_some((cidr, address))
}

/// Makes the installed peer routes what `wanted` says.
async fn converge(wanted: &BTreeMap<String, String>) -> Result<(), String> {
    let proto = ROUTE_PROTOCOL.to_string();
    let have = installed().await?;
    for (cidr, via) in &have {
        if wanted.get(cidr) != Some(via) {
            ip(&["route", "del", cidr, "proto", &proto]).await?;
            tracing::info!(cidr, via, "removed the route to a peer's pods");
        }
    }
    for (cidr, via) in wanted {
        if have.get(cidr) != Some(via) {
            ip(&["route", "replace", cidr, "via", via, "proto", &proto]).await?;
            tracing::info!(cidr, via, "routing a peer's pods");
        }
    }
    Ok(())
}

/// Keeps a route to every peer's pod CIDR via its InternalIP, for as long as the agent runs.
pub async fn route_peers(client: kube::Client, own: String) {
    let nodes: Api<Node> = Api::all(client);
    let mut events = std::pin::pin!(watcher(nodes, watcher::Config::default()));
    let mut peers: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, (String, String)>> = None;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(node)) => {
                if let (Some(listing), Some(route)) = (&mut listing, peer_route(&node, &own)) {
                    listing.insert(node.metadata.name.clone().unwrap_or_default(), route);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                peers = listing.take().unwrap_or_default();
                true
            }
            Ok(watcher::Event::Apply(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                match peer_route(&node, &own) {
                    Some(route) => peers.insert(name, route.clone()) != Some(route),
                    None => peers.remove(&name).is_some(),
                }
            }
            Ok(watcher::Event::Delete(node)) => peers
                .remove(node.metadata.name.as_deref().unwrap_or_default())
                .is_some(),
            Err(error) => {
                tracing::warn!("node watch failed, retrying: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        };
        if changed {
            let wanted: BTreeMap<String, String> = peers.values().cloned().collect();
            if let Err(error) = converge(&wanted).await {
                tracing::warn!("cannot route to peers' pods: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_fit_the_mode() {
        let loopback = (Ipv4Addr::new(127, 1, 0, 0), 16);
        let routed = (Ipv4Addr::new(10, 42, 1, 0), 24);
        let node: IpAddr = "10.0.0.5".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(check(NetworkMode::Loopback, loopback, local).is_ok());
        assert!(check(NetworkMode::Routed, routed, node).is_ok());
        let error = check(NetworkMode::Loopback, routed, node).unwrap_err();
        assert!(error.contains("must lie in 127.0.0.0/8"), "{error}");
        let error = check(NetworkMode::Routed, loopback, node).unwrap_err();
        assert!(error.contains("cannot route"), "{error}");
        let error = check(NetworkMode::Routed, routed, local).unwrap_err();
        assert!(error.contains("--node-ip"), "{error}");
        assert_eq!(
            "routed".parse::<NetworkMode>(),
            Ok(NetworkMode::Routed),
            "modes parse by name"
        );
        assert!("bridge".parse::<NetworkMode>().is_err());
    }

    #[test]
    fn peers_are_routed_via_their_internal_ip_but_not_ourselves() {
        let node = |name: &str, cidr: &str, ip: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "Hostname", "address": name},
                                         {"type": "InternalIP", "address": ip}]},
            }))
            .unwrap()
        };
        assert_eq!(
            peer_route(&node("b", "10.42.1.0/24", "10.99.0.2"), "a"),
            Some(("10.42.1.0/24".into(), "10.99.0.2".into()))
        );
        assert_eq!(
            peer_route(&node("a", "10.42.0.0/24", "10.99.0.1"), "a"),
            None
        );
        assert_eq!(
            peer_route(&node("c", "127.2.0.0/16", "127.0.0.1"), "a"),
            None,
            "loopback peers share this host"
        );
    }
}
