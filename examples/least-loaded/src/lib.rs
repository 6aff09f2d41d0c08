//! An example proxy strategy, written with the Flotilla SDK: each connection (L4) or request
//! (L7) goes to the ready endpoint with the fewest active ones, as the node's proxy counts them.
//!
//! Endpoints that are not ready, that are terminating, or that were already tried for this
//! connection are skipped. Ties go round-robin, so an idle service still spreads its load.
//! The service annotation `least-loaded.flotilla.dev/max-active` caps the load of one endpoint:
//! when every candidate has that many, the pick is none and the proxy refuses the connection
//! rather than overload a backend.
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path examples/least-loaded/Cargo.toml
//! flotilla plugin push examples/least-loaded/target/wasm32-wasip2/release/least_loaded.wasm \
//!     --name least-loaded --kind proxy-strategy
//! ```

use std::collections::HashMap;

use flotilla_sdk::proxy::*;

const MAX_ACTIVE: &str = "least-loaded.flotilla.dev/max-active";

#[derive(Debug, Default)]
struct Backends {
    /// Ready, non-terminating endpoint ids, in the order the proxy sent them.
    ready: Vec<u32>,
    max_active: Option<u32>,
    /// Where the next tie-break starts.
    next: usize,
}

#[derive(Debug, Default)]
pub struct LeastLoaded {
    services: HashMap<String, Backends>,
}

impl ProxyStrategy for LeastLoaded {
    const NAME: &'static str = "least-loaded";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    // It routes on load alone: the proxy need not send it the HTTP request.
    const READS_HTTP: bool = false;

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn update(&mut self, service: Service) {
        let max_active = service
            .annotation(MAX_ACTIVE)
            .and_then(|v| v.trim().parse().ok());
        let ready = service
            .endpoints
            .iter()
            .filter(|e| e.ready && !e.terminating)
            .map(|e| e.id)
            .collect();
        let backends = self.services.entry(service.key).or_default();
        backends.ready = ready;
        backends.max_active = max_active;
    }

    fn remove(&mut self, key: &str) {
        self.services.remove(key);
    }

    fn pick(&mut self, request: &PickRequest) -> Option<u32> {
        let backends = self.services.get_mut(&request.service)?;
        let candidates: Vec<u32> = backends
            .ready
            .iter()
            .copied()
            .filter(|id| !request.exclude.contains(id))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let load = active(&request.service, &candidates);
        let start = backends.next % candidates.len();
        backends.next = backends.next.wrapping_add(1);
        // The least loaded, scanning from the rotating start so equal loads take turns.
        let (id, least) = (0..candidates.len())
            .map(|i| (start + i) % candidates.len())
            .map(|i| (candidates[i], load.get(i).copied().unwrap_or(0)))
            .min_by_key(|&(_, active)| active)?;
        match backends.max_active {
            Some(cap) if least >= cap => None,
            _ => Some(id),
        }
    }
}

flotilla_sdk::export_proxy_strategy!(LeastLoaded);

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: u32, ready: bool) -> Endpoint {
        Endpoint {
            id,
            ip: format!("127.0.10.{id}"),
            port: 8080,
            node: None,
            zone: None,
            ready,
            terminating: false,
        }
    }

    fn request(exclude: Vec<u32>) -> PickRequest {
        PickRequest {
            service: "default/web:http".into(),
            client_ip: "127.0.0.1".into(),
            client_port: 40000,
            http: None,
            exclude,
        }
    }

    #[test]
    fn idle_endpoints_take_turns_and_unready_ones_get_nothing() {
        let mut strategy = LeastLoaded::new("{}").unwrap();
        strategy.update(Service {
            key: "default/web:http".into(),
            endpoints: vec![endpoint(1, true), endpoint(2, false), endpoint(3, true)],
            annotations: vec![],
            client_ip_affinity_seconds: None,
        });
        // Outside a component the load is all zero: a pure round-robin over ready endpoints.
        let picks: Vec<_> = (0..4).map(|_| strategy.pick(&request(vec![]))).collect();
        assert_eq!(picks, [Some(1), Some(3), Some(1), Some(3)]);
        assert_eq!(strategy.pick(&request(vec![1, 3])), None);
        strategy.remove("default/web:http");
        assert_eq!(strategy.pick(&request(vec![])), None);
    }
}
