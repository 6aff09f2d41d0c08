//! Events the controllers record, sent as client-go's recorder sends them: off the reconcile's
//! path, through a queue one task drains, and through a spam filter per object — a burst of
//! 25 events, then one more every five minutes — so a ReplicaSet creating 10,000 pods records
//! 25 `SuccessfulCreate` events instead of writing 10,000.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events one object may have in a burst.
const BURST: f64 = 25.0;
/// How long the filter takes to grant one more event to an object.
const REFILL: Duration = Duration::from_secs(300);
/// Events waiting to be sent; more are dropped, as client-go drops them.
const QUEUED: usize = 1000;
/// Objects the filter remembers before it forgets those whose bucket is full again.
const REMEMBERED: usize = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, now: Instant) -> f64 {
        let gained = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        (self.tokens + gained).min(BURST)
    }
}

/// One controller's event recorder.
pub struct Recorder {
    queue: mpsc::Sender<DynamicObject>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the task that sends the events, until `stop`.
    pub fn start(client: kube::Client, stop: CancellationToken) -> Arc<Self> {
        let (queue, mut events) = mpsc::channel::<DynamicObject>(QUEUED);
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Event"));
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = events.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                };
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &namespace, &resource);
                if let Err(error) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(%error, "an event could not be recorded");
                }
            }
        });
        Arc::new(Self {
            queue,
            buckets: Mutex::default(),
        })
    }

    /// Queues an event about the object `spam_key` names, unless that object has had its
    /// share or the queue is full. Whether it was queued.
    pub fn record(&self, spam_key: String, event: DynamicObject) -> bool {
        self.allow(spam_key, Instant::now()) && self.queue.try_send(event).is_ok()
    }

    fn allow(&self, key: String, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= REMEMBERED && !buckets.contains_key(&key) {
            buckets.retain(|_, b| b.refilled(now) < BURST);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let tokens = bucket.refilled(now);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> Recorder {
        let (queue, _events) = mpsc::channel(1);
        Recorder {
            queue,
            buckets: Mutex::default(),
        }
    }

    #[test]
    fn an_object_gets_a_burst_then_one_event_every_five_minutes() {
        let recorder = recorder();
        let start = Instant::now();
        let granted = (0..100)
            .filter(|_| recorder.allow("rs/web".into(), start))
            .count();
        assert_eq!(granted, 25);
        assert!(
            recorder.allow("rs/other".into(), start),
            "objects are filtered apart"
        );
        assert!(!recorder.allow("rs/web".into(), start + Duration::from_secs(200)));
        assert!(recorder.allow("rs/web".into(), start + Duration::from_secs(301)));
        assert!(!recorder.allow("rs/web".into(), start + Duration::from_secs(302)));
        // Quiet for long enough, the full burst is back.
        let later = start + Duration::from_secs(302 + 25 * 300);
        let granted = (0..100)
            .filter(|_| recorder.allow("rs/web".into(), later))
            .count();
        assert_eq!(granted, 25);
    }
}
