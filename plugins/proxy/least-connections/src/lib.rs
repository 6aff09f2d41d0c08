//! Least connections: each connection (L4) or request (L7) to a Service goes to the ready
//! endpoint with the fewest active ones, as the node's proxy counts them (connections open at
//! L4, requests in flight at L7).
//!
//! Endpoints that are not ready, that are terminating, or that were already tried for this
//! connection are skipped; with none left the pick is none and the proxy refuses the
//! connection. Equal loads take turns (round-robin), so an idle service still spreads its
//! load. It reads no annotations and puts no cap on an endpoint's load (the `least-loaded`
//! example shows one). It is built into the host; to build and push a copy yourself:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/proxy/Cargo.toml -p least-connections
//! flotilla plugin push plugins/proxy/target/wasm32-wasip2/release/least_connections.wasm \
//!     --name least-connections --kind proxy-strategy
//! ```

use std::collections::HashMap;

use flotilla_sdk::proxy::*;
use proxy_common::Rotation;

#[derive(Debug, Default)]
pub struct LeastConnections {
    services: HashMap<String, Rotation>,
}

impl LeastConnections {
    /// [`ProxyStrategy::pick`] with the load given: `load` has the active connections of the
    /// candidates it is given, in their order.
    fn pick_with(
        &mut self,
        request: &PickRequest,
        load: impl FnOnce(&[u32]) -> Vec<u32>,
    ) -> Option<u32> {
        self.services
            .get_mut(&request.service)?
            .next_least(&request.exclude, load)
    }
}

impl ProxyStrategy for LeastConnections {
    const NAME: &'static str = "least-connections";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const READS_HTTP: bool = false;

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn update(&mut self, service: Service) {
        self.services
            .entry(service.key.clone())
            .or_default()
            .update(&service);
    }

    fn remove(&mut self, key: &str) {
        self.services.remove(key);
    }

    fn pick(&mut self, request: &PickRequest) -> Option<u32> {
        self.pick_with(request, |ids| active(&request.service, ids))
    }
}

flotilla_sdk::export_proxy_strategy!(LeastConnections);

#[cfg(test)]
mod tests {
    use proxy_common::testing::*;

    use super::*;

    const WEB: &str = "default/web:http";

    fn strategy() -> LeastConnections {
        let mut strategy = LeastConnections::new("{}").unwrap();
        strategy.update(mixed(WEB));
        strategy
    }

    /// Active connections per endpoint id, as the proxy would report them.
    fn load(active: &[(u32, u32)]) -> impl FnOnce(&[u32]) -> Vec<u32> + '_ {
        move |ids| {
            ids.iter()
                .map(|id| active.iter().find(|(a, _)| a == id).map_or(0, |&(_, n)| n))
                .collect()
        }
    }

    #[test]
    fn the_least_loaded_ready_endpoint_wins_however_loaded() {
        let mut strategy = strategy();
        // Endpoints 2 and 4 are idle, but not ready or terminating.
        let busy = [(1, 900), (2, 0), (3, 40), (4, 0), (5, 41)];
        assert_eq!(strategy.pick_with(&request(WEB, &[]), load(&busy)), Some(3));
        assert_eq!(strategy.pick_with(&request(WEB, &[]), load(&busy)), Some(3));
        // No cap: the least loaded is picked even when every endpoint is very busy.
        let swamped = [(1, 100_000), (3, 100_001), (5, 100_002)];
        assert_eq!(
            strategy.pick_with(&request(WEB, &[]), load(&swamped)),
            Some(1)
        );
    }

    #[test]
    fn equal_loads_take_turns() {
        let mut strategy = strategy();
        // Outside a component the proxy's load is all zero: a round-robin over ready endpoints.
        let picks: Vec<_> = (0..4).map(|_| strategy.pick(&request(WEB, &[]))).collect();
        assert_eq!(picks, [Some(1), Some(3), Some(5), Some(1)]);
        let tied = [(1, 9), (3, 2), (5, 2)];
        let picks: Vec<_> = (0..3)
            .map(|_| strategy.pick_with(&request(WEB, &[]), load(&tied)))
            .collect();
        assert_eq!(picks, [Some(3), Some(5), Some(3)]);
    }

    #[test]
    fn a_retry_skips_the_endpoints_already_tried() {
        let mut strategy = strategy();
        let busy = [(1, 5), (3, 0), (5, 2)];
        assert_eq!(
            strategy.pick_with(&request(WEB, &[3]), load(&busy)),
            Some(5)
        );
        assert_eq!(
            strategy.pick_with(&request(WEB, &[3, 5]), load(&busy)),
            Some(1)
        );
        assert_eq!(strategy.pick(&request(WEB, &[1, 3, 5])), None);
    }

    #[test]
    fn none_without_endpoints_or_service() {
        let mut strategy = strategy();
        assert_eq!(strategy.pick(&request("default/other:http", &[])), None);
        strategy.update(service(WEB, vec![endpoint(1, false)]));
        assert_eq!(strategy.pick(&request(WEB, &[])), None);
        strategy.remove(WEB);
        assert_eq!(strategy.pick(&request(WEB, &[])), None);
    }
}
