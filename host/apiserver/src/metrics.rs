//! `/metrics`: request counts and latencies by verb, resource and code, and watchers per kind,
//! in the Prometheus (OpenMetrics) text format, under the names Kubernetes' API server uses.

use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: &'static str,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatcherLabels {
    resource: String,
}

/// The API server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    watchers: Family<WatcherLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Latency buckets in seconds, as Kubernetes' `apiserver_request_duration_seconds`.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(BUCKETS.iter().copied())) as fn() -> Histogram,
        );
        let watchers = Family::<WatcherLabels, Gauge>::default();
        registry.register(
            "apiserver_request",
            "Requests answered, by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Time to answer a request (to the start of the stream for watches)",
            latency.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Watchers served from the watch cache, by resource",
            watchers.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            watchers,
        }
    }

    pub fn record(&self, verb: &'static str, resource: &str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb,
                resource: resource.to_owned(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                verb,
                resource: resource.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the watcher counts as they are now.
    pub fn render(&self, watchers: &[(String, usize)]) -> String {
        for (resource, count) in watchers {
            self.watchers
                .get_or_create(&WatcherLabels {
                    resource: resource.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The verb and resource of a request as Kubernetes labels them: `get`, `list`, `watch`,
/// `create`, `update`, `patch`, `delete`, `deletecollection`; the resource's plural with its
/// subresource (`pods/status`), or empty for discovery and other paths.
pub(crate) fn request_labels(method: &Method, path: &str, watch: bool) -> (&'static str, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
        _ => &[][..],
    };
    let rest = match rest {
        ["namespaces", _, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            let mut all = vec![*plural];
            all.extend_from_slice(tail);
            all
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => (String::new(), false),
        [plural] => ((*plural).to_owned(), false),
        [plural, _] => ((*plural).to_owned(), true),
        [plural, _, sub, ..] => (format!("{plural}/{sub}"), true),
    };
    let verb = match (method.as_str(), named) {
        ("GET", _) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_as_kubernetes_labels_them() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces/a/pods",
                false,
                ("list", "pods"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods",
                true,
                ("watch", "pods"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/pods/p",
                false,
                ("get", "pods"),
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/a/pods/p/status",
                false,
                ("update", "pods/status"),
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                false,
                ("patch", "deployments/scale"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a",
                false,
                ("delete", "namespaces"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/configmaps",
                false,
                ("deletecollection", "configmaps"),
            ),
            (Method::POST, "/api/v1/nodes", false, ("create", "nodes")),
            (Method::GET, "/apis", false, ("list", "")),
        ];
        for (method, path, watch, (verb, resource)) in cases {
            assert_eq!(
                request_labels(&method, path, watch),
                (verb, resource.to_owned()),
                "{path}"
            );
        }
    }

    #[test]
    fn the_exposition_carries_counts_latencies_and_watchers() {
        let metrics = Metrics::new();
        metrics.record("create", "pods", 201, Duration::from_millis(3));
        metrics.record("create", "pods", 201, Duration::from_millis(30));
        let text = metrics.render(&[("pods".to_owned(), 7)]);
        assert!(
            text.contains(r#"apiserver_request_total{verb="create",resource="pods",code="201"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_request_duration_seconds_bucket{le="0.005",verb="create",resource="pods"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_registered_watchers{resource="pods"} 7"#),
            "{text}"
        );
    }
}
