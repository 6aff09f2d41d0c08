//! The typed handle on a `proxy-strategy` instance.

use crate::bindings::balancing::{PickRequest, Service};
use crate::bindings::{strategy, strategy_inputs};
use crate::{Instance, PluginError, World};

/// A proxy strategy instance: service updates and picks, each bounded like every call. They
/// run synchronously on the caller's thread, without a fiber (the instance is linked with
/// imports that never wait, see `nowait`); one that computes past its deadline is stopped by
/// the epoch, holding the caller's thread until then.
#[derive(Debug)]
pub struct ProxyStrategy {
    instance: Instance,
    guest: crate::Exports<strategy::Guest>,
    /// `strategy-inputs`, exported since 0.1.3.
    inputs: Option<crate::Exports<strategy_inputs::Guest>>,
}

fn service_size(service: &Service) -> usize {
    service.key.len()
        + service
            .endpoints
            .iter()
            .map(|e| {
                e.ip.len()
                    + e.node.as_ref().map_or(0, String::len)
                    + e.zone.as_ref().map_or(0, String::len)
                    + 16
            })
            .sum::<usize>()
        + service
            .annotations
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn request_size(request: &PickRequest) -> usize {
    request.service.len()
        + request.client_ip.len()
        + request.exclude.len() * 4
        + request.http.as_ref().map_or(0, |h| {
            h.method.len()
                + h.authority.len()
                + h.path.len()
                + h.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        })
}

impl ProxyStrategy {
    pub fn new(mut instance: Instance) -> Result<Self, PluginError> {
        let guest = instance.guest(World::ProxyStrategy, |pre, store, instance| {
            strategy::GuestIndices::new(pre)?.load(store, instance)
        })?;
        // A strategy built against 0.1.0–0.1.2 does not export it.
        let inputs = instance
            .guest(World::ProxyStrategy, |pre, store, instance| {
                strategy_inputs::GuestIndices::new(pre)?.load(store, instance)
            })
            .ok();
        Ok(Self {
            instance,
            guest: crate::Exports(guest),
            inputs: inputs.map(crate::Exports),
        })
    }

    /// Whether its picks at L7 should carry the HTTP request: its own answer, or yes for a
    /// strategy that does not say (built against an earlier 0.1.x).
    pub fn reads_http(&mut self) -> Result<bool, PluginError> {
        let Some(inputs) = &self.inputs else {
            return Ok(true);
        };
        self.instance
            .call_direct(0, |store| inputs.0.call_reads_http(store), |_| 1)
    }

    pub fn is_poisoned(&self) -> bool {
        self.instance.is_poisoned()
    }

    /// A service appeared or changed: the strategy gets it whole.
    pub fn update(&mut self, service: &Service) -> Result<(), PluginError> {
        let guest = &self.guest.0;
        self.instance.call_direct(
            service_size(service),
            |store| guest.call_update(store, service),
            |_| 0,
        )
    }

    /// A service went away.
    pub fn remove(&mut self, key: &str) -> Result<(), PluginError> {
        let guest = &self.guest.0;
        self.instance
            .call_direct(key.len(), |store| guest.call_remove(store, key), |_| 0)
    }

    /// The endpoint for one connection or request, or none when none fits.
    pub fn pick(&mut self, request: &PickRequest) -> Result<Option<u32>, PluginError> {
        let guest = &self.guest.0;
        self.instance.call_direct(
            request_size(request),
            |store| guest.call_pick(store, request),
            |_| 4,
        )
    }
}
