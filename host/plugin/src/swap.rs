//! Hot swap and health: the pieces every plugin consumer shares.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The active value of a hot-swappable plugin slot. Readers take an `Arc` for the length of
/// their call, so a swap never disturbs a call in flight: it finishes on the value it started
/// with, and later calls see the new one.
#[derive(Debug)]
pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    pub fn new(value: T) -> Self {
        Self {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The value to use for one call.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Switches to `value` atomically and returns the previous one.
    pub fn replace(&self, value: T) -> Arc<T> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, Arc::new(value))
    }
}

/// Failures within [`DEGRADED_WINDOW`] after which a plugin is reported Degraded.
pub const DEGRADED_AFTER: usize = 3;
/// How long a failure counts towards Degraded.
pub const DEGRADED_WINDOW: Duration = Duration::from_secs(60);

/// A plugin's recent record: failures within the last minute and the last error. A plugin is
/// Degraded while [`DEGRADED_AFTER`] or more of its calls failed within [`DEGRADED_WINDOW`];
/// successes in between do not hide a plugin that keeps failing on some calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    recent: VecDeque<Instant>,
    pub total_failures: u64,
    pub last_error: Option<String>,
}

impl Health {
    pub fn failed(&mut self, error: &impl std::fmt::Display) {
        self.failed_at(error, Instant::now());
    }

    pub fn failed_at(&mut self, error: &impl std::fmt::Display, at: Instant) {
        self.recent.push_back(at);
        if self.recent.len() > DEGRADED_AFTER {
            self.recent.pop_front();
        }
        self.total_failures += 1;
        self.last_error = Some(error.to_string());
    }

    /// Failing repeatedly, as of now.
    pub fn degraded(&self) -> bool {
        self.degraded_at(Instant::now())
    }

    pub fn degraded_at(&self, now: Instant) -> bool {
        self.recent.len() >= DEGRADED_AFTER
            && self
                .recent
                .front()
                .is_some_and(|first| now.duration_since(*first) <= DEGRADED_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_in_flight_keeps_the_value_it_started_with() {
        let slot = Swap::new("old");
        let in_flight = slot.current();
        let previous = slot.replace("new");
        assert_eq!(*in_flight, "old");
        assert_eq!(*previous, "old");
        assert_eq!(*slot.current(), "new");
    }

    #[test]
    fn repeated_failures_degrade_until_they_age_out() {
        let mut health = Health::default();
        let start = Instant::now();
        for i in 0..DEGRADED_AFTER - 1 {
            health.failed_at(&"boom", start + Duration::from_secs(i as u64));
        }
        assert!(!health.degraded_at(start + Duration::from_secs(5)));
        health.failed_at(&"boom", start + Duration::from_secs(10));
        assert!(health.degraded_at(start + Duration::from_secs(10)));
        assert_eq!(health.last_error.as_deref(), Some("boom"));
        assert!(
            !health.degraded_at(start + DEGRADED_WINDOW + Duration::from_secs(1)),
            "a quiet minute clears it"
        );
        assert_eq!(health.total_failures, DEGRADED_AFTER as u64);
    }
}
