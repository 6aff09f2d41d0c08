//! Canary: splits a Service's traffic between its own (stable) endpoints and those of a canary
//! Service in the same namespace, by weight and, at L7, by a request header. Annotations on the
//! stable Service set it up:
//!
//! - `canary.flotilla.dev/service: <name>`: the canary Service. Its port with the same name as
//!   the stable port supplies the canary endpoints; the canary Service must select this strategy
//!   too, so the proxy sends it here.
//! - `canary.flotilla.dev/weight: "<0-100>"`: the percentage of connections (L4) or requests (L7)
//!   sent to the canary, spread evenly: exactly that many of every 100 picks, not in bursts.
//!   A trailing `%` is allowed; above 100 counts as 100; missing or not a number, as 0.
//! - `canary.flotilla.dev/header: <name>` and optionally `canary.flotilla.dev/header-value:
//!   <value>`: a request carrying the header (with that value, when one is given) always goes to
//!   the canary; one carrying it with another value always goes to stable. Requests without the
//!   header, and L4 connections, are split by weight.
//!
//! When the canary Service is unknown or has no ready endpoint left to try, everything goes to
//! stable. Within each side endpoints take turns (round-robin), skipping those not ready,
//! terminating, or already tried for this connection. A Service without the annotations —
//! the canary Service itself, typically — is plain round-robin. It is built into the host; to
//! build and push a copy yourself:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/proxy/Cargo.toml -p canary
//! flotilla plugin push plugins/proxy/target/wasm32-wasip2/release/canary.wasm \
//!     --name canary --kind proxy-strategy
//! ```

use std::collections::HashMap;

use flotilla_sdk::host::{self, Level};
use flotilla_sdk::proxy::*;
use proxy_common::Rotation;

const SERVICE: &str = "canary.flotilla.dev/service";
const WEIGHT: &str = "canary.flotilla.dev/weight";
const HEADER: &str = "canary.flotilla.dev/header";
const HEADER_VALUE: &str = "canary.flotilla.dev/header-value";

/// How a stable service port splits its traffic.
#[derive(Debug)]
struct Split {
    /// The canary's service port key, `namespace/<canary>:<port-name>`.
    canary: String,
    /// Percent of the weighted picks that go to the canary, 0 to 100.
    weight: u64,
    header: Option<String>,
    header_value: Option<String>,
    /// Weighted picks made so far.
    picks: u64,
}

impl Split {
    /// The split a service's annotations ask for; none without a canary service.
    fn of(service: &Service) -> Option<Self> {
        let name = service.annotation(SERVICE)?.trim();
        let (namespace, rest) = service.key.split_once('/')?;
        let (own_name, port) = rest.split_once(':')?;
        if name.is_empty() || name == own_name {
            return None;
        }
        let weight = match service.annotation(WEIGHT).map(str::trim) {
            None => 0,
            Some(text) => match text.strip_suffix('%').unwrap_or(text).trim().parse::<u64>() {
                Ok(weight) => weight.min(100),
                Err(_) => {
                    host::log(
                        Level::Warn,
                        &format!("{}: {WEIGHT} is not a number: {text:?}", service.key),
                    );
                    0
                }
            },
        };
        let header = service
            .annotation(HEADER)
            .map(str::trim)
            .filter(|h| !h.is_empty());
        Some(Self {
            canary: format!("{namespace}/{name}:{port}"),
            weight,
            header: header.map(str::to_owned),
            header_value: header
                .and(service.annotation(HEADER_VALUE))
                .map(str::to_owned),
            picks: 0,
        })
    }

    /// Whether a request goes to the canary.
    fn goes_to_canary(&mut self, request: &PickRequest) -> bool {
        let header = self
            .header
            .as_deref()
            .and_then(|name| request.http.as_ref()?.header(name));
        match (header, &self.header_value) {
            (Some(_), None) => true,
            (Some(value), Some(wanted)) => value == wanted,
            (None, _) => {
                // Pick n of each 100 goes to the canary when it crosses a multiple of 100 on
                // the weight's scale: exactly `weight` of every 100, evenly spaced.
                let n = self.picks % 100;
                self.picks = self.picks.wrapping_add(1);
                (n + 1) * self.weight / 100 > n * self.weight / 100
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Canary {
    services: HashMap<String, Rotation>,
    /// The splits, by stable service port key.
    splits: HashMap<String, Split>,
}

impl ProxyStrategy for Canary {
    const NAME: &'static str = "canary";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn update(&mut self, service: Service) {
        match Split::of(&service) {
            Some(mut split) => {
                // The count goes on, so an endpoint change does not restart the spread.
                if let Some(before) = self.splits.get(&service.key) {
                    split.picks = before.picks;
                }
                self.splits.insert(service.key.clone(), split);
            }
            None => {
                self.splits.remove(&service.key);
            }
        }
        self.services
            .entry(service.key.clone())
            .or_default()
            .update(&service);
    }

    fn remove(&mut self, key: &str) {
        self.services.remove(key);
        self.splits.remove(key);
    }

    fn pick(&mut self, request: &PickRequest) -> Option<u32> {
        let exclude = &request.exclude;
        if let Some(split) = self.splits.get_mut(&request.service) {
            let canary = self
                .services
                .get_mut(&split.canary)
                .filter(|canary| canary.has_candidate(exclude));
            if let Some(canary) = canary
                && split.goes_to_canary(request)
            {
                return canary.next(exclude);
            }
        }
        self.services.get_mut(&request.service)?.next(exclude)
    }
}

flotilla_sdk::export_proxy_strategy!(Canary);

#[cfg(test)]
mod tests {
    use proxy_common::testing::*;

    use super::*;

    const WEB: &str = "shop/web:http";
    const WEB_CANARY: &str = "shop/web-canary:http";
    /// The stable endpoints.
    const STABLE: [u32; 2] = [1, 2];
    /// The canary endpoints.
    const CANARY: [u32; 2] = [11, 12];

    fn stable(annotations: &[(&str, &str)]) -> Service {
        let mut web = service(WEB, STABLE.iter().map(|&id| endpoint(id, true)).collect());
        web.annotations = annotations
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        web
    }

    fn canary_with(annotations: &[(&str, &str)]) -> Canary {
        let mut strategy = Canary::new("{}").unwrap();
        strategy.update(stable(annotations));
        strategy.update(service(
            WEB_CANARY,
            CANARY.iter().map(|&id| endpoint(id, true)).collect(),
        ));
        strategy
    }

    fn http(headers: &[(&str, &str)]) -> PickRequest {
        let mut request = request(WEB, &[]);
        request.http = Some(HttpRequest {
            method: "GET".into(),
            authority: "web.shop".into(),
            path: "/".into(),
            headers: headers
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        });
        request
    }

    /// Of `picks` picks of `request`, how many went to the canary; every pick is an endpoint of
    /// one side or the other.
    fn to_canary(strategy: &mut Canary, request: &PickRequest, picks: usize) -> usize {
        (0..picks)
            .map(|_| strategy.pick(request).unwrap())
            .inspect(|id| assert!(STABLE.contains(id) || CANARY.contains(id), "{id}"))
            .filter(|id| CANARY.contains(id))
            .count()
    }

    #[test]
    fn the_weight_is_the_share_of_picks_evenly_spread() {
        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, "25")]);
        let picks: Vec<bool> = (0..400)
            .map(|_| CANARY.contains(&strategy.pick(&request(WEB, &[])).unwrap()))
            .collect();
        assert_eq!(picks.iter().filter(|&&c| c).count(), 100);
        // One in every four, not a burst of 25.
        assert!(
            picks
                .chunks(4)
                .all(|four| four.iter().filter(|&&c| c).count() == 1)
        );
        for (weight, expected) in [("0", 0), ("100", 200), ("7", 14), (" 60% ", 120)] {
            let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, weight)]);
            let canary = to_canary(&mut strategy, &request(WEB, &[]), 200);
            assert_eq!(canary, expected, "weight {weight:?}");
        }
        for weight in ["lots", "-5"] {
            let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, weight)]);
            assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 100), 0);
        }
        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, "250")]);
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 100), 100);
    }

    #[test]
    fn each_side_takes_turns_over_its_ready_endpoints() {
        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, "50")]);
        let picks: Vec<_> = (0..8)
            .map(|_| strategy.pick(&request(WEB, &[])).unwrap())
            .collect();
        assert_eq!(picks, [1, 11, 2, 12, 1, 11, 2, 12]);
        strategy.update(service(
            WEB_CANARY,
            vec![endpoint(11, false), endpoint(12, true)],
        ));
        let picks: Vec<_> = (0..4)
            .map(|_| strategy.pick(&request(WEB, &[])).unwrap())
            .collect();
        assert_eq!(picks, [1, 12, 2, 12]);
    }

    #[test]
    fn the_header_decides_before_the_weight() {
        let annotations = [
            (SERVICE, "web-canary"),
            (WEIGHT, "50"),
            (HEADER, "X-Canary"),
            (HEADER_VALUE, "always"),
        ];
        let mut strategy = canary_with(&annotations);
        assert_eq!(
            to_canary(&mut strategy, &http(&[("x-canary", "always")]), 20),
            20
        );
        assert_eq!(
            to_canary(&mut strategy, &http(&[("X-Canary", "never")]), 20),
            0
        );
        assert_eq!(
            to_canary(&mut strategy, &http(&[("other", "always")]), 20),
            10
        );
        // At L4 there are no headers: the weight.
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 20), 10);

        // Without a value, the header's presence sends to the canary, even at weight 0.
        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (HEADER, "x-canary")]);
        assert_eq!(to_canary(&mut strategy, &http(&[("x-canary", "")]), 20), 20);
        assert_eq!(
            to_canary(&mut strategy, &http(&[("x-canary", "no")]), 20),
            20
        );
        assert_eq!(to_canary(&mut strategy, &http(&[]), 20), 0);
    }

    #[test]
    fn everything_goes_to_stable_without_a_usable_canary() {
        let header = (HEADER, "x-canary");
        let mut strategy = canary_with(&[(SERVICE, "web-next"), (WEIGHT, "100"), header]);
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 10), 0);
        assert_eq!(to_canary(&mut strategy, &http(&[("x-canary", "1")]), 10), 0);

        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, "100"), header]);
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 10), 10);
        // Both canary endpoints tried: the retry goes to stable.
        let retry = request(WEB, &CANARY);
        assert!(STABLE.contains(&strategy.pick(&retry).unwrap()));
        // No ready canary endpoint.
        strategy.update(service(WEB_CANARY, vec![endpoint(11, false)]));
        assert_eq!(to_canary(&mut strategy, &http(&[("x-canary", "1")]), 10), 0);
        // The canary service goes away.
        strategy.update(service(WEB_CANARY, vec![endpoint(11, true)]));
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 10), 10);
        strategy.remove(WEB_CANARY);
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 10), 0);
        // A canary of another port name is not this port's canary.
        strategy.update(service("shop/web-canary:metrics", vec![endpoint(21, true)]));
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 10), 0);
    }

    #[test]
    fn the_canary_side_honours_exclusion_and_none_when_nothing_is_left() {
        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, "100")]);
        assert_eq!(strategy.pick(&request(WEB, &[11])), Some(12));
        assert_eq!(strategy.pick(&request(WEB, &[11, 12, 1])), Some(2));
        assert_eq!(strategy.pick(&request(WEB, &[11, 12, 1, 2])), None);
        assert_eq!(strategy.pick(&request("shop/other:http", &[])), None);
    }

    #[test]
    fn without_annotations_it_is_round_robin() {
        let mut strategy = canary_with(&[]);
        let picks: Vec<_> = (0..3).map(|_| strategy.pick(&request(WEB, &[]))).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(1)]);
        // The canary service itself: its own endpoints in turn.
        let picks: Vec<_> = (0..3)
            .map(|_| strategy.pick(&request(WEB_CANARY, &[])))
            .collect();
        assert_eq!(picks, [Some(11), Some(12), Some(11)]);
        // Annotations removed: the split goes.
        let mut strategy = canary_with(&[(SERVICE, "web-canary"), (WEIGHT, "100")]);
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 4), 4);
        strategy.update(stable(&[]));
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 4), 0);
        // A service naming itself as its canary has none.
        let mut strategy = canary_with(&[(SERVICE, "web"), (WEIGHT, "100")]);
        assert_eq!(to_canary(&mut strategy, &request(WEB, &[]), 4), 0);
    }
}
