//! Hot swap and health: the pieces every plugin consumer shares.

use std::sync::{Arc, RwLock};

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

/// Consecutive failures after which a plugin is reported Degraded.
pub const DEGRADED_AFTER: u32 = 3;

/// A plugin's recent record: consecutive failures and the last error. One success clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub consecutive_failures: u32,
    pub total_failures: u64,
    pub last_error: Option<String>,
}

impl Health {
    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
    }

    pub fn failed(&mut self, error: &impl std::fmt::Display) {
        self.consecutive_failures += 1;
        self.total_failures += 1;
        self.last_error = Some(error.to_string());
    }

    /// Failing repeatedly: [`DEGRADED_AFTER`] calls in a row failed.
    pub fn degraded(&self) -> bool {
        self.consecutive_failures >= DEGRADED_AFTER
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
    fn repeated_failures_degrade_and_one_success_clears_them() {
        let mut health = Health::default();
        for _ in 0..DEGRADED_AFTER - 1 {
            health.failed(&"boom");
        }
        assert!(!health.degraded());
        health.failed(&"boom");
        assert!(health.degraded());
        assert_eq!(health.last_error.as_deref(), Some("boom"));
        health.succeeded();
        assert!(!health.degraded());
        assert_eq!(health.total_failures, u64::from(DEGRADED_AFTER));
    }
}
