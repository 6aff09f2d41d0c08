//! Service names: the table of what `svc`, `svc.ns`, `svc.ns.svc` and
//! `svc.ns.svc.cluster.local` resolve to (the ClusterIP, or a headless Service's ready pod
//! IPs), kept by the proxy's control loop, and the node's DNS server that answers from it over
//! UDP for processes that are not workloads.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Seconds a client may keep an answer: short, as endpoints come and go.
const TTL: u32 = 5;

/// The names of the cluster's Services.
#[derive(Debug, Default)]
pub struct Names {
    /// `name.namespace` → addresses.
    table: RwLock<HashMap<String, Vec<IpAddr>>>,
}

/// What a name is to the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A Service's addresses (none for a headless Service without ready pods).
    Found(Vec<IpAddr>),
    /// Under `svc.cluster.local`, and no such Service: it does not exist anywhere.
    NoSuchService,
    /// Not a cluster name (or a short name no Service has): for other resolvers.
    NotCluster,
}

impl Names {
    /// Sets the addresses of the Service `namespace/name`; none removes it.
    pub fn set(&self, service: &str, addresses: Option<Vec<IpAddr>>) {
        let Some((namespace, name)) = service.split_once('/') else {
            return;
        };
        let key = format!("{name}.{namespace}");
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        match addresses {
            Some(addresses) => table.insert(key, addresses),
            None => table.remove(&key),
        };
    }

    /// Resolves `name` as a workload in `namespace` writes it.
    pub fn resolve(&self, name: &str, namespace: &str) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let full_suffix = format!(".svc.{CLUSTER_DOMAIN}");
        let (short, qualified) = if let Some(rest) = name.strip_suffix(&full_suffix) {
            (rest.to_owned(), true)
        } else if let Some(rest) = name.strip_suffix(".svc") {
            (rest.to_owned(), true)
        } else {
            (name.clone(), false)
        };
        let key = match short.split('.').collect::<Vec<_>>().as_slice() {
            [service] if !qualified && !service.is_empty() => format!("{service}.{namespace}"),
            [service, ns] if !service.is_empty() && !ns.is_empty() => format!("{service}.{ns}"),
            _ if qualified => return Lookup::NoSuchService,
            _ => return Lookup::NotCluster,
        };
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        match table.get(&key) {
            Some(addresses) => Lookup::Found(addresses.clone()),
            None if qualified => Lookup::NoSuchService,
            None => Lookup::NotCluster,
        }
    }
}

/// Binds the node's DNS address (UDP, `SO_REUSEPORT`: every node on one host may serve it).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = crate::forward::shared_socket(addr, socket2::Type::DGRAM)?;
    UdpSocket::from_std(socket.into())
}

/// Answers queries on `socket` until `stop`. Names resolve as from the `default` namespace.
pub fn serve(socket: UdpSocket, names: Arc<Names>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let received = tokio::select! {
                received = socket.recv_from(&mut buffer) => received,
                _ = stop.cancelled() => return,
            };
            let Ok((length, peer)) = received else {
                continue;
            };
            if let Some(answer) = answer(&buffer[..length], &names) {
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    });
}

/// The response to one query message; none for what is not a query at all.
pub fn answer(query: &[u8], names: &Names) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false);
    for query in request.queries() {
        response.add_query(query.clone());
    }
    let code = if request.op_code() != OpCode::Query || request.queries().len() != 1 {
        ResponseCode::NotImp
    } else {
        let query = &request.queries()[0];
        match names.resolve(&query.name().to_ascii(), "default") {
            Lookup::Found(addresses) => {
                response.set_authoritative(true);
                for address in addresses {
                    let data = match (address, query.query_type()) {
                        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(rdata::A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                            RData::AAAA(rdata::AAAA(v6))
                        }
                        _ => continue,
                    };
                    response.add_answer(Record::from_rdata(query.name().clone(), TTL, data));
                }
                ResponseCode::NoError
            }
            Lookup::NoSuchService => {
                response.set_authoritative(true);
                ResponseCode::NXDomain
            }
            // This server knows the cluster only; it forwards nothing.
            Lookup::NotCluster => ResponseCode::Refused,
        }
    };
    response.set_response_code(code);
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn names() -> Names {
        let names = Names::default();
        names.set("shop/web", Some(vec!["127.43.0.9".parse().unwrap()]));
        names.set(
            "shop/db",
            Some(vec![
                "127.1.0.4".parse().unwrap(),
                "127.1.0.5".parse().unwrap(),
            ]),
        );
        names.set("default/api", Some(vec!["127.43.0.2".parse().unwrap()]));
        names
    }

    #[test]
    fn names_resolve_in_every_form_kubernetes_gives_them() {
        let names = names();
        let web = Lookup::Found(vec!["127.43.0.9".parse().unwrap()]);
        for name in [
            "web",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
            "WEB.shop.svc.cluster.local.",
        ] {
            assert_eq!(names.resolve(name, "shop"), web, "{name}");
        }
        assert_eq!(
            names.resolve("web", "default"),
            Lookup::NotCluster,
            "another namespace"
        );
        assert_eq!(
            names.resolve("db.shop", "default"),
            Lookup::Found(vec![
                "127.1.0.4".parse().unwrap(),
                "127.1.0.5".parse().unwrap()
            ])
        );
        assert_eq!(
            names.resolve("nope.shop.svc.cluster.local", "shop"),
            Lookup::NoSuchService
        );
        assert_eq!(names.resolve("example.com", "shop"), Lookup::NotCluster);
        assert_eq!(
            names.resolve("a.b.c.example.com", "shop"),
            Lookup::NotCluster
        );
        names.set("shop/web", None);
        assert_eq!(names.resolve("web.shop.svc", "shop"), Lookup::NoSuchService);
    }

    fn ask(names: &Names, name: &str, kind: RecordType) -> Message {
        let mut query = Message::new();
        query
            .set_id(4242)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        Message::from_vec(&answer(&query.to_vec().unwrap(), names).unwrap()).unwrap()
    }

    #[test]
    fn the_server_answers_a_records_and_says_what_it_does_not_know() {
        let names = names();
        let reply = ask(&names, "db.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        let ips: Vec<String> = reply
            .answers()
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        assert_eq!(ips, ["127.1.0.4", "127.1.0.5"]);
        assert_eq!(
            ask(&names, "api.", RecordType::A).answers().len(),
            1,
            "default namespace"
        );
        assert!(ask(&names, "api.", RecordType::AAAA).answers().is_empty());
        assert_eq!(
            ask(&names, "gone.shop.svc.cluster.local.", RecordType::A).response_code(),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask(&names, "example.com.", RecordType::A).response_code(),
            ResponseCode::Refused
        );
    }
}
