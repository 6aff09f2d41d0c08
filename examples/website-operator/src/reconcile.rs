//! A reconcile of a Website against the host: its Deployment and Service read from the cache
//! and made, corrected or left as `plan` decides, then its status.

use std::time::Duration;

use controller_common::{controller_ref, failed, now_rfc3339, object_ref, owner_reference, parse};
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::Value;

use crate::plan::{self, Config, Observed, Readiness, Spec};

#[derive(Debug)]
pub struct WebsiteOperator {
    config: Config,
}

/// An object the Website owns, after its reconcile.
enum Owned {
    /// In place as the Website says.
    Serving(Value),
    /// Not serving yet, for the reason given.
    Blocked(Readiness),
}

fn event(website: &Value, reason: &str, message: String) {
    // An event that cannot be recorded is not worth failing the reconcile for.
    let _ = api::emit_event(&Event {
        regarding: object_ref(website),
        event_type: "Normal".into(),
        reason: reason.into(),
        message,
    });
}

/// Makes `desired` exist as it says, owned by `website`.
fn keep(website: &Value, desired: Value) -> Result<Owned, String> {
    let target = object_ref(&desired);
    let what = format!("{} {}", target.kind, target.name);
    let existing = cache::get(
        &target.api_version,
        &target.kind,
        target.namespace.as_deref(),
        &target.name,
    )
    .map_err(|s| failed(&format!("reading {what}"), s))?;
    let Some(existing) = existing else {
        return match api::create(&desired.to_string()) {
            Ok(created) => {
                event(website, "Created", format!("Created {what}"));
                Ok(Owned::Serving(parse(&created)?))
            }
            // The cache has not seen it yet: its event brings the Website back.
            Err(status) if status.code == 409 => Ok(Owned::Blocked(Readiness::waiting(format!(
                "{what} is being created"
            )))),
            Err(status) => Err(failed(&format!("creating {what}"), status)),
        };
    };
    let existing = parse(&existing)?;
    if controller_ref(&existing).map(|owner| &owner["uid"]) != Some(&website["metadata"]["uid"]) {
        return Ok(Owned::Blocked(Readiness::name_taken(
            &target.kind,
            &target.name,
        )));
    }
    if existing["metadata"].get("deletionTimestamp").is_some() {
        // Its removal brings the Website back, to make it again.
        return Ok(Owned::Blocked(Readiness::waiting(format!(
            "{what} is being deleted"
        ))));
    }
    let drift = plan::drift(&existing, &desired);
    if drift.is_empty() {
        return Ok(Owned::Serving(existing));
    }
    let updated = api::update(&plan::corrected(&existing, &desired).to_string())
        .map_err(|s| failed(&format!("updating {what}"), s))?;
    event(
        website,
        "Updated",
        format!("Updated {what}: {}", drift.join(", ")),
    );
    Ok(Owned::Serving(parse(&updated)?))
}

impl WebsiteOperator {
    /// Writes the status `observed` gives, unless the Website already has it.
    fn report(&self, website: &Value, observed: &Observed) -> Result<(), String> {
        let status = plan::status(website, &self.config, observed, &now_rfc3339());
        if website["status"] == status {
            return Ok(());
        }
        let mut updated = website.clone();
        updated["status"] = status;
        api::update_status(&updated.to_string())
            .map(|_| ())
            .map_err(|s| failed("writing the Website's status", s))
    }
}

impl Controller for WebsiteOperator {
    const NAME: &'static str = "website-operator";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        Ok(Self {
            config: Config::parse(config, Self::VERSION)?,
        })
    }

    fn register(&self) -> Registration {
        Registration::new(plan::API_VERSION, plan::KIND)
            .owns("apps/v1", "Deployment")
            .owns("v1", "Service")
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(website) = cache::get(
            plan::API_VERSION,
            plan::KIND,
            key.namespace.as_deref(),
            &key.name,
        )
        .map_err(|s| failed("reading the Website", s))?
        else {
            // Gone: the garbage collector removes what it owned.
            return Ok(None);
        };
        let website = parse(&website)?;
        if website["metadata"].get("deletionTimestamp").is_some() {
            return Ok(None);
        }
        let spec = match Spec::of(&website) {
            Ok(spec) => spec,
            Err(message) => {
                let observed = Observed {
                    ready_replicas: 0,
                    url: None,
                    readiness: Readiness::invalid_spec(message),
                };
                return self.report(&website, &observed).map(|()| None);
            }
        };
        let owner = owner_reference(&website);
        let deployment = keep(
            &website,
            plan::deployment(&website, &spec, &self.config, owner.clone()),
        )?;
        let service = keep(
            &website,
            plan::service(&website, &spec, &self.config, owner),
        )?;
        let observed = Observed {
            ready_replicas: match &deployment {
                Owned::Serving(deployment) => plan::ready_replicas(deployment),
                Owned::Blocked(_) => 0,
            },
            url: matches!(service, Owned::Serving(_)).then(|| plan::url(&website, &spec)),
            readiness: match (deployment, service) {
                (Owned::Blocked(readiness), _) | (_, Owned::Blocked(readiness)) => readiness,
                (Owned::Serving(deployment), Owned::Serving(_)) => {
                    Readiness::of_deployment(&deployment, spec.replicas)
                }
            },
        };
        self.report(&website, &observed)?;
        Ok(None)
    }
}

flotilla_sdk::export_controller!(WebsiteOperator);
