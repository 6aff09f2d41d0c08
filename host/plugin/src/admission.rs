//! The typed handle on an `admission-policy` instance.

use crate::bindings::admission::{self, Request, Response};
use crate::{Failure, Instance, PluginError, World, within};

/// An admission policy instance: settings validation and reviews, each bounded like every call.
#[derive(Debug)]
pub struct AdmissionPolicy {
    instance: Instance,
    guest: crate::Exports<admission::Guest>,
}

fn request_size(request: &Request) -> usize {
    request.uid.len()
        + request.name.len()
        + request.namespace.len()
        + request.object.as_ref().map_or(0, String::len)
        + request.old_object.as_ref().map_or(0, String::len)
        + request.options.as_ref().map_or(0, String::len)
        + request.settings.len()
        + 128
}

fn response_size(response: &Response) -> usize {
    response.status.as_ref().map_or(0, |s| s.message.len())
        + response.patch.as_ref().map_or(0, String::len)
        + response.warnings.iter().map(String::len).sum::<usize>()
        + response
            .audit_annotations
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl AdmissionPolicy {
    pub fn new(mut instance: Instance) -> Result<Self, PluginError> {
        let guest = instance.guest(World::AdmissionPolicy, |pre, store, instance| {
            admission::GuestIndices::new(pre)?.load(store, instance)
        })?;
        Ok(Self {
            instance,
            guest: crate::Exports(guest),
        })
    }

    pub fn is_poisoned(&self) -> bool {
        self.instance.is_poisoned()
    }

    /// The plugin's verdict on a policy's settings.
    pub async fn validate_settings(&mut self, settings: &str) -> Result<(), PluginError> {
        let deadline = self.instance.begin(settings.len())?;
        let settings = settings.to_owned();
        let call = self
            .guest
            .0
            .call_validate_settings(&mut self.instance.store, &settings);
        let outcome = within(deadline, call).await;
        self.instance
            .finish(outcome, |r| r.as_ref().err().map_or(0, String::len))?
            .map_err(|message| self.instance.error(Failure::Reported(message)))
    }

    pub async fn review(&mut self, request: &Request) -> Result<Response, PluginError> {
        let deadline = self.instance.begin(request_size(request))?;
        let call = self.guest.0.call_review(&mut self.instance.store, request);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, response_size)
    }
}
