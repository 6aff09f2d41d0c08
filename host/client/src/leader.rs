//! Leader election through a coordination.k8s.io/v1 Lease, as Kubernetes' components do it.
//!
//! A candidate takes the Lease when it is free or its holder stopped renewing it for longer
//! than its duration, then renews it. Every write carries the Lease's resourceVersion, so two
//! candidates racing for it cannot both win. The outcome is published on a watch channel:
//! components act only while it says `true`, and their own writes are guarded by
//! resourceVersion too, so a deposed leader that has not noticed yet cannot corrupt state.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Timings, with Kubernetes' defaults.
#[derive(Clone, Debug)]
pub struct Timings {
    /// How long a lease is valid without renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often the holder renews and a candidate retries.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs leader election for `identity` on the Lease `namespace/name` until the returned
/// receiver is dropped; the receiver says whether `identity` leads right now.
pub fn elect(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: &str,
    timings: Timings,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let name = name.to_owned();
    let identity = identity.to_owned();
    tokio::spawn(async move {
        loop {
            let leading = match try_acquire_or_renew(&api, &name, &identity, &timings).await {
                Ok(leading) => leading,
                Err(error) => {
                    tracing::warn!(lease = name, "leader election: {error}");
                    false
                }
            };
            if *tx.borrow() != leading {
                tracing::info!(lease = name, identity, leading, "leadership changed");
            }
            if tx.send(leading).is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(timings.retry_period) => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// One round: takes or renews the lease; whether `identity` holds it afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    timings: &Timings,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Utc::now());
    let duration = timings.lease_duration.as_secs().max(1) as i32;
    let current = match api.get_opt(name).await? {
        Some(lease) => lease,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.to_owned()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        let valid = i64::from(spec.lease_duration_seconds.unwrap_or(duration));
        Utc::now().signed_duration_since(renewed.0).num_seconds() > valid
    });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let mut lease = current;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if holder != identity {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(now);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else wrote the lease first (resourceVersion precondition).
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
