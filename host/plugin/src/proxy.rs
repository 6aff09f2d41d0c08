//! The typed handle on a `proxy-strategy` instance.

use crate::bindings::balancing::{PickRequest, Service};
use crate::bindings::{strategy, strategy_inputs};
use crate::{Instance, PluginError, World, within};

/// A proxy strategy instance: service updates and picks, each bounded like every call.
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
    pub async fn reads_http(&mut self) -> Result<bool, PluginError> {
        let Some(inputs) = &self.inputs else {
            return Ok(true);
        };
        let deadline = self.instance.begin(0)?;
        let call = inputs.0.call_reads_http(&mut self.instance.store);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, |_| 1)
    }

    pub fn is_poisoned(&self) -> bool {
        self.instance.is_poisoned()
    }

    /// A service appeared or changed: the strategy gets it whole.
    pub async fn update(&mut self, service: &Service) -> Result<(), PluginError> {
        let deadline = self.instance.begin(service_size(service))?;
        let call = self.guest.0.call_update(&mut self.instance.store, service);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, |_| 0)
    }

    /// A service went away.
    pub async fn remove(&mut self, key: &str) -> Result<(), PluginError> {
        let deadline = self.instance.begin(key.len())?;
        let key = key.to_owned();
        let call = self.guest.0.call_remove(&mut self.instance.store, &key);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, |_| 0)
    }

    /// The endpoint for one connection or request, or none when none fits.
    pub async fn pick(&mut self, request: &PickRequest) -> Result<Option<u32>, PluginError> {
        let deadline = self.instance.begin(request_size(request))?;
        let call = self.guest.0.call_pick(&mut self.instance.store, request);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, |_| 4)
    }
}
