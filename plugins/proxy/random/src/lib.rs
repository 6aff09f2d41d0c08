//! Random: each connection (L4) or request (L7) to a Service goes to one of its ready endpoints
//! chosen uniformly at random, with no state shared between picks but the generator's.
//!
//! Endpoints that are not ready, that are terminating, or that were already tried for this
//! connection are never chosen; with none left the pick is none and the proxy refuses the
//! connection. It reads no annotations. The generator is SplitMix64, seeded from the clock
//! when the strategy starts and stirred with the clock and the client's port on every pick.
//! It is built into the host; to build and push a copy yourself:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/proxy/Cargo.toml -p random
//! flotilla plugin push plugins/proxy/target/wasm32-wasip2/release/random.wasm \
//!     --name random --kind proxy-strategy
//! ```

use std::collections::HashMap;

use flotilla_sdk::host;
use flotilla_sdk::proxy::*;

/// SplitMix64's increment: the golden ratio in 64 bits.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug)]
pub struct Random {
    /// Offered endpoint ids per service port.
    services: HashMap<String, Vec<u32>>,
    state: u64,
}

impl Random {
    /// A strategy whose generator starts at `seed`.
    fn seeded(seed: u64) -> Self {
        Self {
            services: HashMap::new(),
            state: mix(seed),
        }
    }

    /// [`ProxyStrategy::pick`] with the entropy given: the same seed and entropy give the same
    /// picks.
    fn pick_with(&mut self, request: &PickRequest, entropy: u64) -> Option<u32> {
        let offered = self.services.get(&request.service)?;
        let candidates = || {
            offered
                .iter()
                .copied()
                .filter(|id| !request.exclude.contains(id))
        };
        let count = candidates().count();
        if count == 0 {
            return None;
        }
        let draw = next_u64(&mut self.state, entropy);
        // A draw in [0, count): the high half of the product, without modulo bias to speak of.
        let nth = ((u128::from(draw) * count as u128) >> 64) as usize;
        candidates().nth(nth)
    }
}

/// The generator's next number, stirred with `entropy`.
fn next_u64(state: &mut u64, entropy: u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    mix(*state ^ mix(entropy))
}

impl ProxyStrategy for Random {
    const NAME: &'static str = "random";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const READS_HTTP: bool = false;

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::seeded(host::now()))
    }

    fn update(&mut self, service: Service) {
        let offered = proxy_common::offered(&service);
        self.services.insert(service.key, offered);
    }

    fn remove(&mut self, key: &str) {
        self.services.remove(key);
    }

    fn pick(&mut self, request: &PickRequest) -> Option<u32> {
        let entropy = host::now() ^ (u64::from(request.client_port) << 48);
        self.pick_with(request, entropy)
    }
}

flotilla_sdk::export_proxy_strategy!(Random);

#[cfg(test)]
mod tests {
    use proxy_common::testing::*;

    use super::*;

    const WEB: &str = "default/web:http";

    fn strategy() -> Random {
        let mut strategy = Random::seeded(42);
        strategy.update(mixed(WEB));
        strategy
    }

    /// How often each endpoint is picked in `picks` picks.
    fn tally(strategy: &mut Random, exclude: &[u32], picks: u64) -> HashMap<u32, u64> {
        let mut counts = HashMap::new();
        for i in 0..picks {
            let id = strategy.pick_with(&request(WEB, exclude), i).unwrap();
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn picks_ready_endpoints_uniformly() {
        let counts = tally(&mut strategy(), &[], 30_000);
        let mut ids: Vec<_> = counts.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, [1, 3, 5], "only ready, non-terminating endpoints");
        for (id, count) in counts {
            assert!(
                (9_000..=11_000).contains(&count),
                "{id} picked {count} times"
            );
        }
    }

    #[test]
    fn the_same_entropy_still_varies_the_picks() {
        let mut strategy = strategy();
        let picks: std::collections::HashSet<_> = (0..100)
            .map(|_| strategy.pick_with(&request(WEB, &[]), 7).unwrap())
            .collect();
        assert_eq!(picks.len(), 3);
        // And the real clock gives picks too.
        assert!(strategy.pick(&request(WEB, &[])).is_some());
    }

    #[test]
    fn excluded_endpoints_are_never_picked() {
        let counts = tally(&mut strategy(), &[3], 1_000);
        assert_eq!(counts.get(&3), None);
        assert_eq!(counts.values().sum::<u64>(), 1_000);
        assert!(counts[&1] > 400 && counts[&5] > 400, "{counts:?}");
    }

    #[test]
    fn none_without_endpoints_or_service() {
        let mut strategy = strategy();
        assert_eq!(strategy.pick_with(&request(WEB, &[1, 3, 5]), 0), None);
        assert_eq!(strategy.pick(&request("default/other:http", &[])), None);
        strategy.update(service(WEB, vec![endpoint(1, false)]));
        assert_eq!(strategy.pick(&request(WEB, &[])), None);
        strategy.update(service(WEB, vec![endpoint(1, true)]));
        assert_eq!(strategy.pick(&request(WEB, &[])), Some(1));
        strategy.remove(WEB);
        assert_eq!(strategy.pick(&request(WEB, &[])), None);
    }
}
