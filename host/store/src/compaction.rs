//! Automatic compaction: keep a time window of history and compact everything older.
//!
//! The embedded store runs this itself; a server on etcd runs [`compact_periodically`], as the
//! Kubernetes API server compacts etcd on an interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Revision, SharedStore, StoreError};

/// Chooses compaction targets: the revision that was current `window` ago.
#[derive(Debug)]
pub struct CompactionPlanner {
    window: Duration,
    samples: VecDeque<(Instant, Revision)>,
}

impl CompactionPlanner {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// How often to sample the revision: a tenth of the window, within [100 ms, 30 s].
    pub fn period(&self) -> Duration {
        (self.window / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// Records the revision current at `now`; returns the newest revision that is at least a
    /// window old, if one became so since the last call.
    pub fn observe(&mut self, now: Instant, revision: Revision) -> Option<Revision> {
        self.samples.push_back((now, revision));
        let mut target = None;
        while let Some(&(at, revision)) = self.samples.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            target = Some(revision);
            self.samples.pop_front();
        }
        target
    }
}

/// Compacts `store` every so often to the revision that was current `window` ago, until the
/// task is dropped. Losing a race with another compactor is not an error.
pub async fn compact_periodically(store: SharedStore, window: Duration) {
    let mut planner = CompactionPlanner::new(window);
    let mut tick = tokio::time::interval(planner.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut compacted = 0;
    loop {
        tick.tick().await;
        let revision = match store.current_revision().await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "automatic compaction cannot read the revision");
                continue;
            }
        };
        let Some(target) = planner.observe(Instant::now(), revision) else {
            continue;
        };
        if target <= compacted {
            continue;
        }
        match store.compact(target).await {
            Ok(()) | Err(StoreError::Compacted { .. }) => compacted = target,
            Err(e) => tracing::warn!(error = %e, "automatic compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_revisions_a_window_old() {
        let window = Duration::from_secs(10);
        let mut planner = CompactionPlanner::new(window);
        assert_eq!(planner.period(), Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(planner.observe(t0, 5), None);
        assert_eq!(planner.observe(t0 + Duration::from_secs(4), 9), None);
        assert_eq!(planner.observe(t0 + Duration::from_secs(10), 12), Some(5));
        // Both older samples are a window old now: the newer one wins.
        assert_eq!(planner.observe(t0 + Duration::from_secs(15), 20), Some(9));
        assert_eq!(planner.observe(t0 + Duration::from_secs(16), 21), None);
    }
}
