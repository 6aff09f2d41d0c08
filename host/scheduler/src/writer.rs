//! Writes that must not slow scheduling down: Events and pod conditions go through a bounded
//! queue to a few background writers, and are dropped (and counted) when the queue is full, as
//! Kubernetes' event broadcaster drops them under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;

/// How many writes wait at most.
const QUEUE: usize = 8192;
/// Writers running at once.
const WRITERS: usize = 8;

#[derive(Debug)]
enum Write {
    Event(Box<Event>),
    Condition {
        namespace: String,
        name: String,
        patch: serde_json::Value,
    },
}

#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
    pub dropped: Arc<AtomicU64>,
    component: Arc<str>,
}

impl Writer {
    pub fn start(client: kube::Client, component: &str) -> Self {
        let (tx, rx) = mpsc::channel::<Write>(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            let rx = rx.clone();
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    let Some(write) = rx.lock().await.recv().await else {
                        return;
                    };
                    if let Err(error) = perform(&client, write).await {
                        tracing::debug!("scheduler write failed: {error}");
                    }
                }
            });
        }
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            component: component.into(),
        }
    }

    fn send(&self, write: Write) {
        if self.tx.try_send(write).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records an Event about `pod` (`Normal`/`Warning`, reason, message).
    pub fn event(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let meta = &pod.metadata;
        let now = flotilla_client::now_rfc3339();
        let name = meta.name.clone().unwrap_or_default();
        let event = json!({
            "metadata": {
                "name": format!("{name}.{:016x}", rand::random::<u64>()),
                "namespace": meta.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": meta.namespace,
                "name": name, "uid": meta.uid, "resourceVersion": meta.resource_version,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": &*self.component},
            "reportingComponent": &*self.component,
            "reportingInstance": &*self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": null,
            "count": 1,
        });
        match serde_json::from_value(event) {
            Ok(event) => self.send(Write::Event(Box::new(event))),
            Err(error) => tracing::warn!("cannot build an event: {error}"),
        }
    }

    /// Sets the pod's PodScheduled condition to False with `reason` and `message`.
    pub fn unschedulable(&self, pod: &Pod, reason: &str, message: &str) {
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": reason, "message": message,
            "lastTransitionTime": flotilla_client::now_rfc3339(),
        }]}});
        self.send(Write::Condition {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            patch,
        });
    }
}

async fn perform(client: &kube::Client, write: Write) -> Result<(), kube::Error> {
    match write {
        Write::Event(event) => {
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            api.create(&PostParams::default(), &event).await.map(|_| ())
        }
        Write::Condition {
            namespace,
            name,
            patch,
        } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .map(|_| ())
        }
    }
}
