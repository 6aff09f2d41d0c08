//! ClientIP session affinity, as kube-proxy has it: a Service with `sessionAffinity: ClientIP`
//! sends every connection (L4) or request (L7) from one client IP to the same endpoint, for
//! `sessionAffinity.clientIP.timeoutSeconds` (Kubernetes' default is 10800) after the client's
//! last connection; each pick refreshes the timeout.
//!
//! A client's first pick, and any pick after its endpoint stopped being ready, went away, or was
//! already tried for this connection (a failed connect retries), goes round-robin over the ready,
//! non-terminating endpoints not yet tried, and the client keeps the new endpoint. A Service
//! without session affinity (or with a zero timeout) is plain round-robin. It reads no
//! annotations, only the Service's session affinity. Memory stays bounded: expired clients are
//! forgotten (the picked service's on each pick, every service's once a minute), and a service
//! remembers at most 65,536 clients, forgetting the least recently seen first. It is built into
//! the host; to build and push a copy yourself:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/proxy/Cargo.toml -p client-ip-affinity
//! flotilla plugin push plugins/proxy/target/wasm32-wasip2/release/client_ip_affinity.wasm \
//!     --name client-ip-affinity --kind proxy-strategy
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use flotilla_sdk::host;
use flotilla_sdk::proxy::*;
use proxy_common::Rotation;

/// The most clients one service port remembers.
const MAX_CLIENTS: usize = 65_536;
/// How often every service's expired clients are forgotten, in nanoseconds.
const SWEEP_EVERY: u64 = 60 * NANOS;
const NANOS: u64 = 1_000_000_000;

/// When a client was last seen: the time, and a sequence number that keeps the order total.
type Seen = (u64, u64);

/// The clients of one service port with affinity, and their endpoints.
#[derive(Debug, Default)]
struct Affinity {
    /// How long a client keeps its endpoint after its last pick, in nanoseconds.
    timeout: u64,
    clients: HashMap<IpAddr, (u32, Seen)>,
    /// The same clients, least recently seen first.
    by_age: BTreeMap<Seen, IpAddr>,
}

impl Affinity {
    /// Forgets the clients not seen within the timeout.
    fn sweep(&mut self, now: u64) {
        while let Some(oldest) = self.by_age.first_entry() {
            if now.saturating_sub(oldest.key().0) <= self.timeout {
                break;
            }
            self.clients.remove(&oldest.remove());
        }
    }

    /// The endpoint a client keeps, if it is remembered.
    fn endpoint(&self, client: IpAddr) -> Option<u32> {
        self.clients.get(&client).map(|&(endpoint, _)| endpoint)
    }

    /// Remembers that `client` uses `endpoint`, as seen at `seen`, making room when full.
    fn remember(&mut self, client: IpAddr, endpoint: u32, seen: Seen) {
        match self.clients.insert(client, (endpoint, seen)) {
            Some((_, before)) => {
                self.by_age.remove(&before);
            }
            None if self.clients.len() > MAX_CLIENTS => {
                // The client just added is the most recent: never the one forgotten.
                if let Some((_, oldest)) = self.by_age.pop_first() {
                    self.clients.remove(&oldest);
                }
            }
            None => {}
        }
        self.by_age.insert(seen, client);
    }
}

#[derive(Debug, Default)]
struct Port {
    rotation: Rotation,
    /// None when the service has no session affinity.
    affinity: Option<Affinity>,
}

#[derive(Debug, Default)]
pub struct ClientIpAffinity {
    services: HashMap<String, Port>,
    /// The latest time seen: the clock as this strategy uses it never goes back.
    clock: u64,
    /// Orders the picks made at one time.
    sequence: u64,
    /// When every service is swept next.
    next_sweep: u64,
}

impl ClientIpAffinity {
    /// [`ProxyStrategy::pick`] at `now` (nanoseconds since the Unix epoch).
    fn pick_at(&mut self, request: &PickRequest, now: u64) -> Option<u32> {
        self.clock = self.clock.max(now);
        let now = self.clock;
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(SWEEP_EVERY);
            for affinity in self
                .services
                .values_mut()
                .filter_map(|p| p.affinity.as_mut())
            {
                affinity.sweep(now);
            }
        }
        let port = self.services.get_mut(&request.service)?;
        let exclude = &request.exclude;
        let (Some(affinity), Ok(client)) =
            (&mut port.affinity, request.client_ip.parse::<IpAddr>())
        else {
            return port.rotation.next(exclude);
        };
        // `::ffff:10.0.0.1` and `10.0.0.1` are one client.
        let client = client.to_canonical();
        affinity.sweep(now);
        let endpoint = match affinity.endpoint(client) {
            Some(kept) if port.rotation.offers(kept) && !exclude.contains(&kept) => kept,
            _ => port.rotation.next(exclude)?,
        };
        self.sequence += 1;
        affinity.remember(client, endpoint, (now, self.sequence));
        Some(endpoint)
    }
}

impl ProxyStrategy for ClientIpAffinity {
    const NAME: &'static str = "client-ip-affinity";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const READS_HTTP: bool = false;

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn update(&mut self, service: Service) {
        let port = self.services.entry(service.key.clone()).or_default();
        port.rotation.update(&service);
        match service.client_ip_affinity_seconds.filter(|&s| s > 0) {
            // A changed timeout applies to the clients already remembered.
            Some(seconds) => {
                port.affinity.get_or_insert_with(Affinity::default).timeout =
                    u64::from(seconds) * NANOS;
            }
            None => port.affinity = None,
        }
    }

    fn remove(&mut self, key: &str) {
        self.services.remove(key);
    }

    fn pick(&mut self, request: &PickRequest) -> Option<u32> {
        self.pick_at(request, host::now())
    }
}

flotilla_sdk::export_proxy_strategy!(ClientIpAffinity);

#[cfg(test)]
mod tests {
    use proxy_common::testing::*;

    use super::*;

    const WEB: &str = "default/web:http";
    /// Some time, in nanoseconds.
    const T0: u64 = 1_700_000_000 * NANOS;

    fn strategy(affinity_seconds: Option<u32>) -> ClientIpAffinity {
        let mut strategy = ClientIpAffinity::new("{}").unwrap();
        strategy.update(web(affinity_seconds, &[1, 2, 3]));
        strategy
    }

    fn web(affinity_seconds: Option<u32>, ready: &[u32]) -> Service {
        let mut web = service(
            WEB,
            (1..=4)
                .map(|id| endpoint(id, ready.contains(&id)))
                .collect(),
        );
        web.client_ip_affinity_seconds = affinity_seconds;
        web
    }

    fn from(client: &str, exclude: &[u32]) -> PickRequest {
        let mut request = request(WEB, exclude);
        request.client_ip = client.into();
        request
    }

    fn remembered(strategy: &ClientIpAffinity) -> usize {
        let affinity = strategy.services[WEB].affinity.as_ref().unwrap();
        assert_eq!(affinity.clients.len(), affinity.by_age.len());
        affinity.clients.len()
    }

    #[test]
    fn a_client_keeps_its_endpoint_while_others_go_round_robin() {
        let mut strategy = strategy(Some(10_800));
        let a = strategy.pick_at(&from("10.1.0.1", &[]), T0);
        assert_eq!(a, Some(1));
        for i in 1..5 {
            assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0 + i), a);
        }
        assert_eq!(strategy.pick_at(&from("10.1.0.2", &[]), T0), Some(2));
        assert_eq!(strategy.pick_at(&from("10.1.0.3", &[]), T0), Some(3));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0 + 9), a);
        assert_eq!(strategy.pick_at(&from("10.1.0.2", &[]), T0 + 9), Some(2));
        // The clock as the host has it works too.
        assert!(strategy.pick(&from("10.1.0.3", &[])).is_some());
    }

    #[test]
    fn affinity_lasts_the_timeout_after_the_last_pick() {
        let mut strategy = strategy(Some(10));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0), Some(1));
        // Each pick within the timeout refreshes it: long after the first, the client keeps 1.
        for seconds in [9, 18, 27, 36] {
            let at = T0 + seconds * NANOS;
            assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), at), Some(1));
        }
        // Exactly the timeout after the last pick: still kept; a moment later: forgotten, and
        // the next in turn.
        assert_eq!(
            strategy.pick_at(&from("10.1.0.1", &[]), T0 + 46 * NANOS),
            Some(1)
        );
        let later = T0 + 56 * NANOS + 1;
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), later), Some(2));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), later + 1), Some(2));
    }

    #[test]
    fn an_endpoint_gone_unready_or_tried_is_replaced_and_the_new_one_kept() {
        let mut strategy = strategy(Some(10_800));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0), Some(1));
        // The connect to 1 failed: the retry goes on to 2, which the client keeps.
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[1]), T0 + 1), Some(2));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0 + 2), Some(2));
        // 2 stops being ready: the client moves, and stays.
        strategy.update(web(Some(10_800), &[1, 3]));
        let moved = strategy.pick_at(&from("10.1.0.1", &[]), T0 + 3).unwrap();
        assert_ne!(moved, 2);
        assert_eq!(
            strategy.pick_at(&from("10.1.0.1", &[]), T0 + 4),
            Some(moved)
        );
        // Its new endpoint goes away: it moves again, and stays.
        let mut gone = web(Some(10_800), &[1, 2, 3]);
        gone.endpoints.retain(|e| e.id != moved);
        strategy.update(gone);
        let again = strategy.pick_at(&from("10.1.0.1", &[]), T0 + 5).unwrap();
        assert_ne!(again, moved);
        assert_eq!(
            strategy.pick_at(&from("10.1.0.1", &[]), T0 + 6),
            Some(again)
        );
        // Everything tried, or nothing ready: none.
        assert_eq!(
            strategy.pick_at(&from("10.1.0.1", &[1, 2, 3]), T0 + 6),
            None
        );
        strategy.update(web(Some(10_800), &[]));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0 + 7), None);
        strategy.remove(WEB);
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0 + 8), None);
    }

    #[test]
    fn without_session_affinity_it_is_round_robin() {
        for seconds in [None, Some(0)] {
            let mut strategy = strategy(seconds);
            let picks: Vec<_> = (0..4)
                .map(|i| strategy.pick_at(&from("10.1.0.1", &[]), T0 + i))
                .collect();
            assert_eq!(picks, [Some(1), Some(2), Some(3), Some(1)]);
            assert_eq!(strategy.pick_at(&from("10.1.0.1", &[2]), T0), Some(3));
        }
        // Turning affinity off forgets the clients; turning it on starts afresh.
        let mut strategy = strategy(Some(10_800));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0), Some(1));
        strategy.update(web(None, &[1, 2, 3]));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0), Some(2));
        strategy.update(web(Some(10_800), &[1, 2, 3]));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0), Some(3));
        assert_eq!(strategy.pick_at(&from("10.1.0.1", &[]), T0), Some(3));
    }

    #[test]
    fn an_address_in_either_form_is_one_client() {
        let mut strategy = strategy(Some(10_800));
        assert_eq!(strategy.pick_at(&from("10.1.0.9", &[]), T0), Some(1));
        assert_eq!(strategy.pick_at(&from("::ffff:10.1.0.9", &[]), T0), Some(1));
        assert_eq!(strategy.pick_at(&from("fd00::9", &[]), T0), Some(2));
        assert_eq!(strategy.pick_at(&from("fd00:0::9", &[]), T0), Some(2));
        // A client address that does not parse gets no affinity.
        assert_eq!(strategy.pick_at(&from("unknown", &[]), T0), Some(3));
        assert_eq!(strategy.pick_at(&from("unknown", &[]), T0), Some(1));
    }

    #[test]
    fn expired_clients_are_forgotten_in_every_service() {
        let mut strategy = strategy(Some(10));
        let api = "default/api:grpc";
        let mut other = service(api, vec![endpoint(7, true)]);
        other.client_ip_affinity_seconds = Some(10);
        strategy.update(other);
        for i in 0..100 {
            strategy.pick_at(&from(&format!("10.1.0.{i}"), &[]), T0);
        }
        assert_eq!(remembered(&strategy), 100);
        // A pick on another service, a minute on, forgets them too.
        strategy.pick_at(&request(api, &[]), T0 + SWEEP_EVERY);
        assert_eq!(remembered(&strategy), 0);
    }

    #[test]
    fn a_full_service_forgets_the_least_recently_seen_client() {
        let mut strategy = strategy(Some(10_800));
        let client = |i: usize| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        for i in 0..MAX_CLIENTS {
            strategy.pick_at(&from(&client(i), &[]), T0 + i as u64);
        }
        assert_eq!(remembered(&strategy), MAX_CLIENTS);
        // Client 0 comes back, so client 1 is now the least recently seen.
        let first = strategy.pick_at(&from(&client(0), &[]), T0 + NANOS);
        strategy.pick_at(&from("192.168.0.1", &[]), T0 + NANOS);
        assert_eq!(remembered(&strategy), MAX_CLIENTS);
        let affinity = strategy.services[WEB].affinity.as_ref().unwrap();
        let known = |c: &str| affinity.clients.contains_key(&c.parse::<IpAddr>().unwrap());
        assert!(known(&client(0)) && known("192.168.0.1") && known(&client(2)));
        assert!(!known(&client(1)));
        assert_eq!(strategy.pick_at(&from(&client(0), &[]), T0 + NANOS), first);
    }
}
