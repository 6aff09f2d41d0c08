//! The scheduling queue, as kube-scheduler keeps it: an active queue ordered by priority then
//! arrival, a backoff queue for pods whose last attempt failed (1 s doubling to 10 s), and the
//! unschedulable pods, which go back to active when the cluster changes or after five minutes.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    priority: i32,
    /// Failed attempts so far.
    attempts: u32,
    where_: Where,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    Active(u64),
    Backoff(Instant),
    Unschedulable(Instant),
    /// Taken for a scheduling cycle or binding.
    InFlight,
}

/// Pods waiting to be scheduled, by uid.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    /// (priority descending, arrival) → uid.
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    backoff: BTreeSet<(Instant, String)>,
    sequence: u64,
}

impl Queue {
    fn activate(&mut self, uid: &str) {
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        match entry.where_ {
            Where::Backoff(at) => {
                self.backoff.remove(&(at, uid.to_owned()));
            }
            Where::Active(_) | Where::InFlight => return,
            Where::Unschedulable(_) => {}
        }
        self.sequence += 1;
        entry.where_ = Where::Active(self.sequence);
        self.active
            .insert((Reverse(entry.priority), self.sequence, uid.to_owned()));
    }

    /// Adds a pod, or refreshes the object of one already queued.
    pub fn add_or_update(&mut self, uid: &str, pod: Arc<Pod>) {
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        match self.entries.get_mut(uid) {
            Some(entry) => entry.pod = pod,
            None => {
                self.entries.insert(
                    uid.to_owned(),
                    Entry {
                        pod,
                        priority,
                        attempts: 0,
                        where_: Where::Unschedulable(Instant::now()),
                    },
                );
                self.activate(uid);
            }
        }
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub fn remove(&mut self, uid: &str) {
        if let Some(entry) = self.entries.remove(uid) {
            match entry.where_ {
                Where::Active(seq) => {
                    self.active
                        .remove(&(Reverse(entry.priority), seq, uid.to_owned()));
                }
                Where::Backoff(at) => {
                    self.backoff.remove(&(at, uid.to_owned()));
                }
                _ => {}
            }
        }
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// Moves pods whose backoff or unschedulable time is over to active.
    pub fn flush(&mut self, now: Instant) {
        let due: Vec<String> = self
            .backoff
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, uid)| uid.clone())
            .collect();
        for uid in due {
            self.activate(&uid);
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(e.where_, Where::Unschedulable(since) if now.duration_since(since) >= MAX_UNSCHEDULABLE)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.activate(&uid);
        }
    }

    /// The cluster changed in a way that may make unschedulable pods fit: they move to the
    /// backoff queue (or active, once their backoff is over).
    pub fn cluster_changed(&mut self, now: Instant) {
        let waiting: Vec<(String, Instant)> = self
            .entries
            .iter()
            .filter_map(|(uid, e)| match e.where_ {
                Where::Unschedulable(since) => Some((uid.clone(), since + backoff(e.attempts))),
                _ => None,
            })
            .collect();
        for (uid, at) in waiting {
            if let Some(entry) = self.entries.get_mut(&uid) {
                entry.where_ = Where::Backoff(at);
                self.backoff.insert((at, uid));
            }
        }
        self.flush(now);
    }

    /// Takes the next active pod for a scheduling cycle.
    pub fn pop(&mut self) -> Option<(String, Arc<Pod>)> {
        let first = self.active.pop_first()?;
        let uid = first.2;
        let entry = self.entries.get_mut(&uid)?;
        entry.where_ = Where::InFlight;
        Some((uid, entry.pod.clone()))
    }

    /// The pod was scheduled and bound: it leaves the queue.
    pub fn done(&mut self, uid: &str) {
        self.entries.remove(uid);
    }

    /// The pod's attempt failed. `unschedulable` pods wait for a cluster change; others (a
    /// plugin error, a failed binding) wait out their backoff.
    pub fn failed(&mut self, uid: &str, unschedulable: bool, now: Instant) {
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        entry.attempts += 1;
        if unschedulable {
            entry.where_ = Where::Unschedulable(now);
        } else {
            let at = now + backoff(entry.attempts);
            entry.where_ = Where::Backoff(at);
            self.backoff.insert((at, uid.to_owned()));
        }
    }

    /// When the earliest backoff ends.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.first().map(|(at, _)| *at)
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Kubernetes' per-pod backoff: 1 s, doubling per failed attempt, at most 10 s.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"spec": {"containers": [], "priority": priority}}))
                .unwrap(),
        )
    }

    #[test]
    fn higher_priority_first_then_arrival() {
        let mut q = Queue::default();
        q.add_or_update("low", pod(0));
        q.add_or_update("high", pod(100));
        q.add_or_update("low2", pod(0));
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|(uid, _)| uid)).collect();
        assert_eq!(order, ["high", "low", "low2"]);
    }

    #[test]
    fn failures_back_off_and_unschedulable_pods_wait_for_a_change() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_or_update("a", pod(0));
        q.add_or_update("b", pod(0));
        let (a, _) = q.pop().unwrap();
        let (b, _) = q.pop().unwrap();
        q.failed(&a, false, now);
        q.failed(&b, true, now);
        assert!(q.pop().is_none());
        q.flush(now + Duration::from_millis(999));
        assert!(q.pop().is_none(), "backoff not over");
        q.flush(now + Duration::from_secs(1));
        assert_eq!(q.pop().unwrap().0, "a");
        q.flush(now + Duration::from_secs(60));
        assert!(q.pop().is_none(), "unschedulable waits for a change");
        q.cluster_changed(now + Duration::from_secs(61));
        assert_eq!(q.pop().unwrap().0, "b");
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), Duration::from_secs(10));
    }

    #[test]
    fn unschedulable_pods_retry_after_five_minutes_anyway() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_or_update("a", pod(0));
        let (a, _) = q.pop().unwrap();
        q.failed(&a, true, now);
        q.flush(now + MAX_UNSCHEDULABLE);
        assert_eq!(q.pop().unwrap().0, "a");
    }
}
