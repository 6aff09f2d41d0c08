//! Events about pods, as the kubelet records them (`source.component: kubelet`, the node as
//! host), sent in the background through a bounded queue so a slow API server never holds up a
//! container; and the registry credentials of a pod's pull secrets.

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio::sync::mpsc;

use flotilla_artifacts::oci::Credentials;

/// Events waiting to be sent; more are dropped (and logged), as the kubelet's recorder does.
const QUEUE: usize = 1024;

#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    node: String,
    queue: mpsc::Sender<Event>,
}

impl Recorder {
    pub(crate) fn start(client: kube::Client, node: String) -> Self {
        let (queue, mut events) = mpsc::channel::<Event>(QUEUE);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                if let Err(error) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!("cannot record an event: {error}");
                }
            }
        });
        Self { node, queue }
    }

    pub(crate) fn pod_event(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let now = flotilla_client::now_rfc3339();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let event = json!({
            "metadata": {
                "generateName": format!("{name}."),
                "namespace": pod.metadata.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": name,
                "namespace": pod.metadata.namespace,
                "uid": pod.metadata.uid,
                "fieldPath": field_path,
            },
            "reason": reason,
            "message": message,
            "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match serde_json::from_value(event) {
            Ok(event) => {
                if self.queue.try_send(event).is_err() {
                    tracing::warn!(pod = name, reason, "event queue full; event dropped");
                }
            }
            Err(error) => tracing::warn!("cannot build an event: {error}"),
        }
    }
}

/// The credentials the first of a pod's pull secrets that names `registry` holds.
pub(crate) async fn pull_credentials(
    client: kube::Client,
    namespace: &str,
    secrets: &[String],
    registry: &str,
) -> Credentials {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for name in secrets {
        let Ok(Some(secret)) = api.get_opt(name).await else {
            continue;
        };
        let data = secret.data.unwrap_or_default();
        let Some(config) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        match Credentials::from_docker_config(&config.0, registry) {
            Ok(Credentials::Anonymous) => continue,
            Ok(credentials) => return credentials,
            Err(error) => tracing::warn!(secret = name, "unusable pull secret: {error}"),
        }
    }
    Credentials::Anonymous
}
