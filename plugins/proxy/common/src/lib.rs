//! What the built-in proxy strategies share: the endpoints a strategy may offer ([`offered`]:
//! ready, not terminating, in the order the proxy sent them) and [`Rotation`], a round-robin
//! cursor over them that skips the endpoints a request already tried. [`testing`] builds the
//! records the strategies' unit tests feed them.

use flotilla_sdk::proxy::Service;

/// The endpoints a strategy may offer: ready and not terminating, in the proxy's order.
pub fn offered(service: &Service) -> Vec<u32> {
    service
        .endpoints
        .iter()
        .filter(|e| e.ready && !e.terminating)
        .map(|e| e.id)
        .collect()
}

/// The offered endpoints of one service port, and where the next pick starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    endpoints: Vec<u32>,
    /// Index into `endpoints` (modulo its length) where the next pick starts looking.
    next: usize,
}

impl Rotation {
    /// The rotation over a service's offered endpoints, starting at the first.
    pub fn new(service: &Service) -> Self {
        Self {
            endpoints: offered(service),
            next: 0,
        }
    }

    /// Takes a changed service's endpoints; the rotation goes on from where it was.
    pub fn update(&mut self, service: &Service) {
        self.endpoints = offered(service);
    }

    /// The offered endpoints, in the proxy's order.
    pub fn endpoints(&self) -> &[u32] {
        &self.endpoints
    }

    /// Whether `id` is offered (ready, not terminating, still present).
    pub fn offers(&self, id: u32) -> bool {
        self.endpoints.contains(&id)
    }

    /// Whether some offered endpoint is not in `exclude`.
    pub fn has_candidate(&self, exclude: &[u32]) -> bool {
        self.endpoints.iter().any(|id| !exclude.contains(id))
    }

    /// The positions of the offered endpoints not in `exclude`, in rotation order: from where
    /// the next pick starts, wrapping around.
    fn order<'a>(&'a self, exclude: &'a [u32]) -> impl Iterator<Item = usize> + 'a {
        let len = self.endpoints.len();
        let start = self.next % len.max(1);
        (0..len)
            .map(move |i| (start + i) % len)
            .filter(move |&at| !exclude.contains(&self.endpoints[at]))
    }

    /// The next offered endpoint not in `exclude`; the rotation moves past it. None when every
    /// offered endpoint is excluded, or none is offered.
    pub fn next(&mut self, exclude: &[u32]) -> Option<u32> {
        let at = self.order(exclude).next()?;
        self.next = at + 1;
        Some(self.endpoints[at])
    }

    /// Of the offered endpoints not in `exclude`, the first in rotation order with the least
    /// cost; the rotation moves past it, so equal costs take turns. `cost` gets the candidates
    /// in rotation order and gives one figure each (a missing figure counts as zero).
    pub fn next_least(
        &mut self,
        exclude: &[u32],
        cost: impl FnOnce(&[u32]) -> Vec<u32>,
    ) -> Option<u32> {
        let positions: Vec<usize> = self.order(exclude).collect();
        let candidates: Vec<u32> = positions.iter().map(|&at| self.endpoints[at]).collect();
        let costs = cost(&candidates);
        // `min_by_key` keeps the first of equal minima: the one the rotation reaches first.
        let (at, _) = positions
            .iter()
            .enumerate()
            .map(|(i, &at)| (at, costs.get(i).copied().unwrap_or(0)))
            .min_by_key(|&(_, cost)| cost)?;
        self.next = at + 1;
        Some(self.endpoints[at])
    }
}

/// Records for the strategies' unit tests.
pub mod testing {
    use flotilla_sdk::proxy::{Endpoint, PickRequest, Service};

    /// Endpoint `id` at `127.0.10.<id>:8080`, not terminating.
    pub fn endpoint(id: u32, ready: bool) -> Endpoint {
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

    /// Service port `key` with `endpoints`, no annotations and no session affinity.
    pub fn service(key: &str, endpoints: Vec<Endpoint>) -> Service {
        Service {
            key: key.into(),
            endpoints,
            annotations: vec![],
            client_ip_affinity_seconds: None,
        }
    }

    /// Service port `key` with endpoints 1, 3 and 5 ready, 2 not ready and 4 ready but
    /// terminating: 1, 3 and 5 are offered.
    pub fn mixed(key: &str) -> Service {
        let mut terminating = endpoint(4, true);
        terminating.terminating = true;
        service(
            key,
            vec![
                endpoint(1, true),
                endpoint(2, false),
                endpoint(3, true),
                terminating,
                endpoint(5, true),
            ],
        )
    }

    /// An L4 connection to `service` from `10.1.0.1:40000`, with `exclude` already tried.
    pub fn request(service: &str, exclude: &[u32]) -> PickRequest {
        PickRequest {
            service: service.into(),
            client_ip: "10.1.0.1".into(),
            client_port: 40000,
            http: None,
            exclude: exclude.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn rotation() -> Rotation {
        Rotation::new(&mixed("default/web:http"))
    }

    #[test]
    fn only_ready_endpoints_that_are_not_terminating_are_offered() {
        let rotation = rotation();
        assert_eq!(rotation.endpoints(), [1, 3, 5]);
        assert!(rotation.offers(3) && !rotation.offers(2) && !rotation.offers(4));
    }

    #[test]
    fn next_rotates_and_skips_what_was_tried() {
        let mut rotation = rotation();
        let picks: Vec<_> = (0..4).map(|_| rotation.next(&[])).collect();
        assert_eq!(picks, [Some(1), Some(3), Some(5), Some(1)]);
        // The next is 3; tried already, so 5, and the rotation goes on after it.
        assert_eq!(rotation.next(&[3]), Some(5));
        assert_eq!(rotation.next(&[]), Some(1));
        assert_eq!(rotation.next(&[1, 3, 5]), None);
        assert!(!rotation.has_candidate(&[1, 3, 5]) && rotation.has_candidate(&[1, 3]));
        assert_eq!(Rotation::default().next(&[]), None);
    }

    #[test]
    fn next_least_takes_the_cheapest_and_equal_costs_take_turns() {
        let mut rotation = rotation();
        let picks: Vec<_> = (0..3)
            .map(|_| rotation.next_least(&[], |c| vec![0; c.len()]))
            .collect();
        assert_eq!(picks, [Some(1), Some(3), Some(5)]);
        let cost = |c: &[u32]| c.iter().map(|&id| if id == 3 { 0 } else { 7 }).collect();
        assert_eq!(rotation.next_least(&[], cost), Some(3));
        assert_eq!(rotation.next_least(&[3], cost), Some(5));
        assert_eq!(rotation.next_least(&[1, 3, 5], cost), None);
    }
}
