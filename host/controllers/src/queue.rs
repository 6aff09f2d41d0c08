//! The work queue of one controller, with client-go's semantics: a key queued many times
//! waits once; a key being reconciled is never handed out again until that reconcile is done
//! (a change meanwhile queues it once more, for after); failures are retried after a delay
//! that doubles per consecutive failure of that key; keys may be queued after a delay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Delays between retries of a failing key: `base` doubling per consecutive failure, at most
/// `max` (client-go's defaults: 5 ms to 1,000 s).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(5),
            max: Duration::from_secs(1000),
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 for the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting in `queue` or to be requeued when their reconcile ends.
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
    shut: bool,
}

/// A de-duplicating work queue of keys.
pub struct Queue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    backoff: Backoff,
}

impl<K> std::fmt::Debug for Queue<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Queue<K> {
    pub fn new(backoff: Backoff) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shut: false,
            }),
            ready: Notify::new(),
            backoff,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: K) {
        let mut state = self.state();
        if state.shut || !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(key);
            }
        });
    }

    /// Queues `key` again after its failure, with the back-off its consecutive failures earned.
    /// Returns the delay.
    pub fn retry(self: &Arc<Self>, key: K) -> Duration {
        let failures = {
            let mut state = self.state();
            let count = state.failures.entry(key.clone()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        };
        let delay = self.backoff.delay(failures);
        self.add_after(key, delay);
        delay
    }

    /// Forgets `key`'s failures (after it reconciled successfully).
    pub fn forget(&self, key: &K) {
        self.state().failures.remove(key);
    }

    /// Consecutive failures of `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.state().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to reconcile; none once the queue is shut down. The key is the caller's
    /// until it calls [`Queue::done`].
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state();
                if state.shut {
                    return None;
                }
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.queue.is_empty();
                    drop(state);
                    if more {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Ends the reconcile of `key`; if it was queued meanwhile, it waits again.
    pub fn done(&self, key: &K) {
        let mut state = self.state();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Keys waiting (not counting those being reconciled).
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; waiting workers get none.
    pub fn shut_down(&self) {
        self.state().shut = true;
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_wait_once_and_never_twice_at_a_time() {
        let queue = Queue::new(Backoff::default());
        queue.add("a");
        queue.add("b");
        queue.add("a");
        assert_eq!(queue.len(), 2, "a key queued twice waits once");
        let first = queue.next().await.unwrap();
        assert_eq!(first, "a");
        // Changed while being reconciled: queued for after, not handed to another worker.
        queue.add("a");
        assert_eq!(queue.next().await, Some("b"));
        assert!(queue.is_empty());
        queue.done(&"b");
        queue.done(&"a");
        assert_eq!(
            queue.next().await,
            Some("a"),
            "requeued when its reconcile ended"
        );
        queue.done(&"a");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_and_success_forgets_them() {
        let backoff = Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(30),
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(5));
        assert_eq!(backoff.delay(2), Duration::from_millis(10));
        assert_eq!(backoff.delay(3), Duration::from_millis(20));
        assert_eq!(backoff.delay(4), Duration::from_millis(30), "capped");
        assert_eq!(backoff.delay(99), Duration::from_millis(30));
        let queue = Queue::new(backoff);
        queue.add("k");
        let key = queue.next().await.unwrap();
        queue.done(&key);
        assert_eq!(queue.retry(key), Duration::from_millis(5));
        let key = queue.next().await.unwrap();
        queue.done(&key);
        assert_eq!(queue.retry(key), Duration::from_millis(10));
        assert_eq!(queue.failures(&"k"), 2);
        let key = queue.next().await.unwrap();
        queue.forget(&key);
        queue.done(&key);
        assert_eq!(queue.failures(&"k"), 0);
    }

    #[tokio::test]
    async fn a_shut_queue_releases_its_workers() {
        let queue: Arc<Queue<&str>> = Queue::new(Backoff::default());
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.shut_down();
        assert_eq!(waiting.await.unwrap(), None);
    }
}
