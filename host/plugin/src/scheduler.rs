//! The typed handle on a `scheduler-policy` instance.

use crate::bindings::scheduler;
use crate::bindings::scheduling::{Capabilities, Change, FilterResult, Pod, Prepared, Resources};
use crate::{Failure, Instance, PluginError, World, within};

/// A scheduling policy instance: its capabilities, and calls that check what the policy
/// returns (node indexes it was given, scores within 0..=100, one score per candidate).
#[derive(Debug)]
pub struct SchedulerPolicy {
    instance: Instance,
    guest: crate::Exports<scheduler::Guest>,
    capabilities: Capabilities,
}

fn resources_size(r: &Resources) -> usize {
    24 + r.scalar.iter().map(|(k, _)| k.len() + 8).sum::<usize>()
}

fn labels_size(labels: &[(String, String)]) -> usize {
    labels.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Approximate bytes a change carries across the boundary.
fn change_size(change: &Change) -> usize {
    match change {
        Change::NodeSet((_, node)) => {
            4 + node.name.len()
                + labels_size(&node.labels)
                + node
                    .taints
                    .iter()
                    .map(|t| t.key.len() + t.value.len() + 1)
                    .sum::<usize>()
                + resources_size(&node.allocatable)
        }
        Change::NodeRemoved(_) => 4,
        Change::PodPlaced(pod) => {
            4 + pod.uid.len()
                + pod.namespace.len()
                + labels_size(&pod.labels)
                + resources_size(&pod.requests)
        }
        Change::PodRemoved(uid) => uid.len(),
    }
}

fn pod_size(pod: &Pod) -> usize {
    pod.uid.len()
        + pod.namespace.len()
        + pod.name.len()
        + labels_size(&pod.labels)
        + labels_size(&pod.node_selector)
        + pod.tolerations.len() * 32
        + resources_size(&pod.requests)
        + pod.topology_spread_constraints.len() * 64
        + pod.node_affinity.as_ref().map_or(0, |a| {
            a.preferred.len() * 64 + a.required.as_ref().map_or(0, |r| r.len() * 64)
        })
}

impl SchedulerPolicy {
    /// Takes a fresh instance of a `scheduler-policy` module and asks for its capabilities.
    pub async fn new(mut instance: Instance) -> Result<Self, PluginError> {
        let guest = instance.guest(World::SchedulerPolicy, |pre, store, instance| {
            scheduler::GuestIndices::new(pre)?.load(store, instance)
        })?;
        let deadline = instance.begin(0)?;
        let outcome = within(deadline, guest.call_describe(&mut instance.store)).await;
        let capabilities = instance.finish(outcome, |_| 3)?;
        Ok(Self {
            instance,
            guest: crate::Exports(guest),
            capabilities,
        })
    }

    pub fn instance(&mut self) -> &mut Instance {
        &mut self.instance
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    pub fn is_poisoned(&self) -> bool {
        self.instance.is_poisoned()
    }

    pub async fn update(&mut self, changes: &[Change]) -> Result<(), PluginError> {
        let deadline = self.instance.begin(changes.iter().map(change_size).sum())?;
        let call = self.guest.0.call_update(&mut self.instance.store, changes);
        let outcome = within(deadline, call).await;
        self.instance.finish(outcome, |_| 0)
    }

    pub async fn prepare(&mut self, pod: &Pod) -> Result<Prepared, PluginError> {
        let deadline = self.instance.begin(pod_size(pod))?;
        let call = self.guest.0.call_prepare(&mut self.instance.store, pod);
        let outcome = within(deadline, call).await;
        let result = self.instance.finish(outcome, |r| match r {
            Ok(Prepared::Unschedulable(reason)) | Err(reason) => reason.len(),
            Ok(_) => 1,
        })?;
        result.map_err(|message| self.instance.error(Failure::Reported(message)))
    }

    /// Filters `candidates`; every rejection must name a candidate and a reason given.
    pub async fn filter(&mut self, candidates: &[u32]) -> Result<FilterResult, PluginError> {
        let deadline = self.instance.begin(candidates.len() * 4)?;
        let call = self
            .guest
            .0
            .call_filter(&mut self.instance.store, candidates);
        let outcome = within(deadline, call).await;
        let result = self
            .instance
            .finish(outcome, |r| match r {
                Ok(f) => f.rejected.len() * 8 + f.reasons.iter().map(String::len).sum::<usize>(),
                Err(message) => message.len(),
            })?
            .map_err(|message| self.instance.error(Failure::Reported(message)))?;
        for rejection in &result.rejected {
            if result.reasons.get(rejection.reason as usize).is_none() {
                return Err(self.instance.error(Failure::Invalid(format!(
                    "rejection of node {} names reason {} of {}",
                    rejection.node,
                    rejection.reason,
                    result.reasons.len()
                ))));
            }
            if !candidates.contains(&rejection.node) {
                return Err(self.instance.error(Failure::Invalid(format!(
                    "rejected node {}, which was not a candidate",
                    rejection.node
                ))));
            }
        }
        Ok(result)
    }

    /// Scores `candidates`: exactly one score each, within 0..=100.
    pub async fn score(&mut self, candidates: &[u32]) -> Result<Vec<i64>, PluginError> {
        let deadline = self.instance.begin(candidates.len() * 4)?;
        let call = self
            .guest
            .0
            .call_score(&mut self.instance.store, candidates);
        let outcome = within(deadline, call).await;
        let scores = self
            .instance
            .finish(outcome, |r| {
                r.as_ref().map_or_else(String::len, |s| s.len() * 8)
            })?
            .map_err(|message| self.instance.error(Failure::Reported(message)))?;
        if scores.len() != candidates.len() {
            return Err(self.instance.error(Failure::Invalid(format!(
                "{} scores for {} nodes",
                scores.len(),
                candidates.len()
            ))));
        }
        if let Some((i, score)) = scores
            .iter()
            .enumerate()
            .find(|(_, s)| !(0..=100).contains(*s))
        {
            return Err(self.instance.error(Failure::Invalid(format!(
                "score {score} for node {} is outside 0..=100",
                candidates[i]
            ))));
        }
        Ok(scores)
    }
}
