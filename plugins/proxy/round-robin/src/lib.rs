//! Round-robin, the proxy's plain strategy: each connection (L4) or request (L7) to a Service
//! goes to the next of its ready endpoints in turn, one rotation per service port.
//!
//! Endpoints that are not ready, that are terminating, or that were already tried for this
//! connection are skipped, so a retry after a failed connect goes on to the next endpoint; with
//! none left the pick is none and the proxy refuses the connection. It reads no annotations
//! (`sessionAffinity: ClientIP` is the `client-ip-affinity` strategy's). It is built into the
//! host; to build and push a copy yourself:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/proxy/Cargo.toml -p round-robin
//! flotilla plugin push plugins/proxy/target/wasm32-wasip2/release/round_robin.wasm \
//!     --name round-robin --kind proxy-strategy
//! ```

use std::collections::HashMap;

use flotilla_sdk::proxy::*;
use proxy_common::Rotation;

#[derive(Debug, Default)]
pub struct RoundRobin {
    services: HashMap<String, Rotation>,
}

impl ProxyStrategy for RoundRobin {
    const NAME: &'static str = "round-robin";
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
        self.services
            .get_mut(&request.service)?
            .next(&request.exclude)
    }
}

flotilla_sdk::export_proxy_strategy!(RoundRobin);

#[cfg(test)]
mod tests {
    use proxy_common::testing::*;

    use super::*;

    const WEB: &str = "default/web:http";

    fn strategy() -> RoundRobin {
        let mut strategy = RoundRobin::new("{}").unwrap();
        strategy.update(mixed(WEB));
        strategy
    }

    #[test]
    fn rotates_over_ready_endpoints_only() {
        let mut strategy = strategy();
        let picks: Vec<_> = (0..5).map(|_| strategy.pick(&request(WEB, &[]))).collect();
        assert_eq!(picks, [Some(1), Some(3), Some(5), Some(1), Some(3)]);
    }

    #[test]
    fn a_retry_skips_the_endpoints_already_tried() {
        let mut strategy = strategy();
        assert_eq!(strategy.pick(&request(WEB, &[])), Some(1));
        // The next in turn is 3; it was tried, so 5, and the turn goes on after it.
        assert_eq!(strategy.pick(&request(WEB, &[3])), Some(5));
        assert_eq!(strategy.pick(&request(WEB, &[])), Some(1));
        assert_eq!(strategy.pick(&request(WEB, &[1, 3, 5])), None);
    }

    #[test]
    fn none_without_endpoints_or_service() {
        let mut strategy = strategy();
        assert_eq!(strategy.pick(&request("default/other:http", &[])), None);
        strategy.update(service(WEB, vec![endpoint(1, false)]));
        assert_eq!(strategy.pick(&request(WEB, &[])), None);
        strategy.update(service(WEB, vec![endpoint(1, true), endpoint(5, true)]));
        assert!(strategy.pick(&request(WEB, &[])).is_some());
        strategy.remove(WEB);
        assert_eq!(strategy.pick(&request(WEB, &[])), None);
    }

    #[test]
    fn services_rotate_independently() {
        let mut strategy = strategy();
        let api = "default/api:grpc";
        strategy.update(service(api, vec![endpoint(7, true), endpoint(8, true)]));
        assert_eq!(strategy.pick(&request(WEB, &[])), Some(1));
        assert_eq!(strategy.pick(&request(api, &[])), Some(7));
        assert_eq!(strategy.pick(&request(WEB, &[])), Some(3));
        assert_eq!(strategy.pick(&request(api, &[])), Some(8));
    }
}
