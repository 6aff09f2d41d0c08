//! The typed handle on a `controller` instance.

use crate::bindings::reconciler::{self, Registration};
use crate::bindings::types::ObjectRef;
use crate::{Instance, PluginError, World, within};

/// A controller instance: its registration, custom key mappings and reconciles, each bounded
/// like every call.
#[derive(Debug)]
pub struct Controller {
    instance: Instance,
    guest: crate::Exports<reconciler::Guest>,
}

fn ref_size(key: &ObjectRef) -> usize {
    key.api_version.len()
        + key.kind.len()
        + key.namespace.as_ref().map_or(0, String::len)
        + key.name.len()
}

fn registration_size(registration: &Registration) -> usize {
    registration.primary_api_version.len()
        + registration.primary_kind.len()
        + registration
            .watches
            .iter()
            .map(|w| w.api_version.len() + w.kind.len() + w.label_selector.len() + 64)
            .sum::<usize>()
}

impl Controller {
    pub fn new(mut instance: Instance) -> Result<Self, PluginError> {
        let guest = instance.guest(World::Controller, |pre, store, instance| {
            reconciler::GuestIndices::new(pre)?.load(store, instance)
        })?;
        Ok(Self {
            instance,
            guest: crate::Exports(guest),
        })
    }

    pub fn is_poisoned(&self) -> bool {
        self.instance.is_poisoned()
    }

    /// What the controller reconciles and watches.
    pub async fn register(&mut self) -> Result<Registration, PluginError> {
        let deadline = self.instance.begin(0)?;
        let call = self.guest.0.call_register(&mut self.instance.store);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, registration_size)
    }

    /// The keys an event on `object` of watch number `watch` concerns.
    pub async fn keys_for(
        &mut self,
        watch: u32,
        object: &str,
    ) -> Result<Vec<ObjectRef>, PluginError> {
        let deadline = self.instance.begin(object.len())?;
        let object = object.to_owned();
        let call = self
            .guest
            .0
            .call_keys_for(&mut self.instance.store, watch, &object);
        let outcome = within(deadline, call).await;
        self.instance
            .finish(outcome, |keys| keys.iter().map(ref_size).sum())
    }

    /// Reconciles one key: `Ok(Ok(Some(ms)))` asks to be called again after that delay,
    /// `Ok(Err(message))` is the controller's own failure, to be retried with backoff.
    pub async fn reconcile(
        &mut self,
        key: &ObjectRef,
    ) -> Result<Result<Option<u64>, String>, PluginError> {
        let deadline = self.instance.begin(ref_size(key))?;
        let call = self.guest.0.call_reconcile(&mut self.instance.store, key);
        let outcome = within(deadline, call).await;
        self.instance
            .finish(outcome, |r| r.as_ref().err().map_or(8, String::len))
    }
}
