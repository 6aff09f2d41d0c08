//! The resource quota controller, as Kubernetes' has it: it owns each ResourceQuota's
//! `status` (`hard` copied from `spec.hard`, `used` recounted from what exists). Refusing and
//! charging creates is the `resource-quota` admission policy's job, not this controller's;
//! what one object charges comes from the `quota-usage` crate both share.
//!
//! - A quota is recounted from the cache: the objects in its namespace of the kinds it counts
//!   ([`COUNTED`]: pods, services, config maps, secrets, resource quotas, deployments, replica
//!   sets, stateful sets, daemon sets, jobs and cron jobs) whose kind charges a resource of its
//!   `spec.hard` and which its scopes select. A resource no counted kind charges (the
//!   `count/…` of another kind, claims' storage) is left out of `status.used`, so the policy
//!   keeps refusing what it limits as "status unknown".
//! - The status is written through the status subresource only when it differs by value;
//!   quantities are written in canonical form.
//! - The policy charges a quota before the object it admitted is stored, so the cache may
//!   briefly lack objects the quota already counts. A recount that would lower the usage is
//!   therefore held back ([`Settling`]) until it has been wanted for [`SETTLE`]; raising it,
//!   and new resources, are written at once.
//! - Every quota is recounted every [`RESYNC`], and when an object of a counted kind in its
//!   namespace changes.
//!
//! What is counted and what is written ([`recount`], [`Settling`], [`status_update`]) is pure
//! and tested natively; the component (`component.rs`) does the calls, tested against a fake
//! native host.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_quantity::Quantity;
use flotilla_sdk::ObjectRef;
use quota_usage::{ResourceList, covers, hard, matches_scopes, status_hard, to_json, usage, used};
use serde_json::{Value, json};

mod component;

pub use component::ResourceQuotaController;

/// How often every quota is recounted.
pub const RESYNC: Duration = Duration::from_secs(60);

/// How long a lower count must be wanted before it is written.
pub const SETTLE: Duration = Duration::from_secs(5);

/// A kind whose objects are counted.
#[derive(Debug, PartialEq, Eq)]
pub struct Counted {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The plural, as quota resources name it.
    pub resource: &'static str,
    pub group: &'static str,
}

const fn counted(
    api_version: &'static str,
    kind: &'static str,
    resource: &'static str,
    group: &'static str,
) -> Counted {
    Counted {
        api_version,
        kind,
        resource,
        group,
    }
}

/// The kinds counted. All but ResourceQuota (the primary kind) are watched, in this order.
pub const COUNTED: &[Counted] = &[
    counted("v1", "Pod", "pods", ""),
    counted("v1", "Service", "services", ""),
    counted("v1", "ConfigMap", "configmaps", ""),
    counted("v1", "Secret", "secrets", ""),
    counted("apps/v1", "Deployment", "deployments", "apps"),
    counted("apps/v1", "ReplicaSet", "replicasets", "apps"),
    counted("apps/v1", "StatefulSet", "statefulsets", "apps"),
    counted("apps/v1", "DaemonSet", "daemonsets", "apps"),
    counted("batch/v1", "Job", "jobs", "batch"),
    counted("batch/v1", "CronJob", "cronjobs", "batch"),
    counted("v1", "ResourceQuota", "resourcequotas", ""),
];

/// The watched kinds, in the order of their watches after the primary one (watch `i` is the
/// `i - 1`th of these).
pub fn watched() -> impl Iterator<Item = &'static Counted> {
    COUNTED.iter().filter(|c| c.kind != "ResourceQuota")
}

/// The counted kinds that charge some resource of `hard`: what a recount lists.
pub fn kinds_for(hard: &ResourceList) -> Vec<&'static Counted> {
    COUNTED
        .iter()
        .filter(|c| hard.keys().any(|name| covers(c.resource, c.group, name)))
        .collect()
}

/// The usage of `quota` over `objects` (each counted kind with its objects in the quota's
/// namespace): every resource of `spec.hard` some counted kind charges, zero when nothing
/// charges it, summed over the objects the quota's scopes select.
pub fn recount(quota: &Value, objects: &[(&Counted, Vec<Value>)]) -> ResourceList {
    let hard = hard(quota);
    let mut used: ResourceList = hard
        .keys()
        .filter(|name| COUNTED.iter().any(|c| covers(c.resource, c.group, name)))
        .map(|name| (name.clone(), Quantity::ZERO))
        .collect();
    for (kind, objects) in objects {
        for object in objects {
            if !matches_scopes(quota, kind.resource, object) {
                continue;
            }
            for (name, q) in usage(kind.resource, kind.group, object) {
                if let Some(total) = used.get_mut(&name) {
                    *total += q;
                }
            }
        }
    }
    used
}

/// The quota with its status set to `used` and `spec.hard`, or none when its status already
/// says that (quantities compared by value).
pub fn status_update(quota: &Value, used_now: &ResourceList) -> Option<Value> {
    let hard = hard(quota);
    if status_hard(quota) == hard && used(quota) == *used_now {
        return None;
    }
    let mut updated = quota.clone();
    updated["status"] = json!({"hard": to_json(&hard), "used": to_json(used_now)});
    Some(updated)
}

/// When lower counts are written: each quota whose recount is below its recorded usage, and
/// since when (nanoseconds since the epoch). A lower count is usually a charge whose object
/// has not reached the cache yet; one still wanted after [`SETTLE`] is an over-charge (a
/// create refused or failed after it was charged) or an object gone, and is written.
#[derive(Debug, Default)]
pub struct Settling {
    since: HashMap<ObjectRef, u64>,
}

/// What to write for one quota now, and when to look again.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub used: ResourceList,
    /// Some lower count is held back: reconcile again after this long.
    pub again: Option<Duration>,
}

impl Settling {
    /// The usage to write for `key`, recorded as `current`, recounted as `counted`, at `now`.
    pub fn decide(
        &mut self,
        key: &ObjectRef,
        current: &ResourceList,
        counted: &ResourceList,
        now: u64,
    ) -> Decision {
        let lower = counted
            .iter()
            .any(|(name, q)| current.get(name).is_some_and(|recorded| recorded > q));
        if !lower {
            self.since.remove(key);
            return Decision {
                used: counted.clone(),
                again: None,
            };
        }
        let since = *self.since.entry(key.clone()).or_insert(now);
        let waited = Duration::from_nanos(now.saturating_sub(since));
        if waited >= SETTLE {
            return Decision {
                used: counted.clone(),
                again: None,
            };
        }
        let held = counted
            .iter()
            .map(|(name, q)| {
                let recorded = current.get(name).copied().unwrap_or(Quantity::ZERO);
                (name.clone(), (*q).max(recorded))
            })
            .collect();
        Decision {
            used: held,
            again: Some(SETTLE - waited),
        }
    }

    /// The lower count of `key` was written, or the quota is gone: forget it.
    pub fn done(&mut self, key: &ObjectRef) {
        self.since.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota_usage::parse;

    fn q(text: &str) -> Quantity {
        parse(text).unwrap()
    }

    fn list(entries: &[(&str, &str)]) -> ResourceList {
        entries
            .iter()
            .map(|(name, text)| ((*name).to_owned(), q(text)))
            .collect()
    }

    fn kind(name: &str) -> &'static Counted {
        COUNTED.iter().find(|c| c.kind == name).unwrap()
    }

    fn pod(name: &str, cpu: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "app",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu}}}]},
            "status": {"phase": phase}})
    }

    fn quota(hard: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "q", "namespace": "team", "resourceVersion": "7"},
            "spec": {"hard": hard}})
    }

    #[test]
    fn the_watched_kinds_are_the_counted_ones_but_quotas() {
        let kinds: Vec<&str> = watched().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                "Pod",
                "Service",
                "ConfigMap",
                "Secret",
                "Deployment",
                "ReplicaSet",
                "StatefulSet",
                "DaemonSet",
                "Job",
                "CronJob"
            ]
        );
    }

    #[test]
    fn only_the_kinds_a_quota_limits_are_listed() {
        let hard = list(&[("pods", "5"), ("count/deployments.apps", "2")]);
        let kinds: Vec<&str> = kinds_for(&hard).iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["Pod", "Deployment"]);
        assert!(kinds_for(&list(&[("requests.storage", "1Gi")])).is_empty());
        let kinds: Vec<&str> = kinds_for(&list(&[("resourcequotas", "1")]))
            .iter()
            .map(|c| c.kind)
            .collect();
        assert_eq!(kinds, ["ResourceQuota"]);
    }

    #[test]
    fn pods_and_their_compute_are_summed_but_finished_pods_hold_none() {
        let quota = quota(
            json!({"pods": "10", "count/pods": "10", "requests.cpu": "4",
            "limits.cpu": "4", "memory": "1Gi"}),
        );
        let pods = vec![
            pod("a", "500m", "Running"),
            pod("b", "250m", "Pending"),
            pod("c", "1", "Succeeded"),
        ];
        assert_eq!(
            recount(&quota, &[(kind("Pod"), pods)]),
            list(&[
                ("pods", "2"),
                ("count/pods", "3"),
                ("requests.cpu", "750m"),
                ("limits.cpu", "750m"),
                ("memory", "128Mi"),
            ])
        );
    }

    #[test]
    fn every_counted_resource_of_hard_is_reported_even_when_zero() {
        let quota = quota(json!({"services": "2", "services.loadbalancers": "1",
            "count/widgets.example.com": "3", "persistentvolumeclaims": "1", "secrets": "4"}));
        let services = vec![json!({"spec": {"type": "ClusterIP"}})];
        assert_eq!(
            recount(
                &quota,
                &[(kind("Service"), services), (kind("Secret"), Vec::new())]
            ),
            list(&[
                ("services", "1"),
                ("services.loadbalancers", "0"),
                ("secrets", "0"),
            ]),
            "what no counted kind charges is left out"
        );
    }

    #[test]
    fn workload_counts_are_by_group() {
        let quota = quota(
            json!({"count/deployments.apps": "5", "count/jobs.batch": "5",
            "count/configmaps": "5", "configmaps": "5"}),
        );
        let objects = [
            (kind("Deployment"), vec![json!({}), json!({})]),
            (kind("Job"), vec![json!({})]),
            (kind("ConfigMap"), vec![json!({}), json!({}), json!({})]),
        ];
        assert_eq!(
            recount(&quota, &objects),
            list(&[
                ("count/deployments.apps", "2"),
                ("count/jobs.batch", "1"),
                ("count/configmaps", "3"),
                ("configmaps", "3"),
            ])
        );
    }

    #[test]
    fn scopes_select_what_is_counted() {
        let mut scoped = quota(json!({"pods": "5", "configmaps": "5"}));
        scoped["spec"]["scopes"] = json!(["BestEffort"]);
        let pods = vec![
            pod("burstable", "100m", "Running"),
            json!({"spec": {"containers": [{"name": "app"}]}}),
        ];
        let objects = [(kind("Pod"), pods), (kind("ConfigMap"), vec![json!({})])];
        assert_eq!(
            recount(&scoped, &objects),
            list(&[("pods", "1"), ("configmaps", "0")])
        );
        let mut terminating = quota(json!({"pods": "5"}));
        terminating["spec"]["scopeSelector"] = json!({"matchExpressions": [
            {"scopeName": "Terminating", "operator": "Exists"}]});
        let job_pod = json!({"spec": {"activeDeadlineSeconds": 30}});
        assert_eq!(
            recount(
                &terminating,
                &[(kind("Pod"), vec![job_pod, json!({"spec": {}})])]
            ),
            list(&[("pods", "1")])
        );
    }

    #[test]
    fn the_status_is_written_only_when_it_differs_by_value() {
        let mut quota = quota(json!({"pods": 10, "requests.cpu": "2000m"}));
        let used_now = list(&[("pods", "1"), ("requests.cpu", "500m")]);
        let updated = status_update(&quota, &used_now).expect("no status yet");
        assert_eq!(
            updated["status"],
            json!({"hard": {"pods": "10", "requests.cpu": "2"},
                "used": {"pods": "1", "requests.cpu": "500m"}})
        );
        assert_eq!(updated["metadata"]["resourceVersion"], "7");
        quota["status"] = json!({"hard": {"pods": "10", "requests.cpu": "2"},
            "used": {"pods": "1", "requests.cpu": "0.5"}});
        assert_eq!(status_update(&quota, &used_now), None);
        assert!(status_update(&quota, &list(&[("pods", "2"), ("requests.cpu", "500m")])).is_some());
        // The hard limits changed.
        quota["spec"]["hard"]["pods"] = json!("20");
        assert!(status_update(&quota, &used_now).is_some());
    }

    #[test]
    fn higher_counts_are_written_at_once_and_lower_ones_after_settling() {
        let key = ObjectRef {
            api_version: "v1".into(),
            kind: "ResourceQuota".into(),
            namespace: Some("team".into()),
            name: "q".into(),
        };
        let second = 1_000_000_000;
        let mut settling = Settling::default();
        let recorded = list(&[("pods", "2"), ("requests.cpu", "1")]);
        let higher = list(&[("pods", "3"), ("requests.cpu", "1")]);
        assert_eq!(
            settling.decide(&key, &recorded, &higher, 0),
            Decision {
                used: higher.clone(),
                again: None
            }
        );
        // A charge whose pod is not in the cache yet: held back.
        let lower = list(&[
            ("pods", "1"),
            ("requests.cpu", "1500m"),
            ("limits.cpu", "0"),
        ]);
        let held = settling.decide(&key, &recorded, &lower, 10 * second);
        assert_eq!(
            held.used,
            list(&[
                ("pods", "2"),
                ("requests.cpu", "1500m"),
                ("limits.cpu", "0")
            ])
        );
        assert_eq!(held.again, Some(SETTLE));
        let held = settling.decide(&key, &recorded, &lower, 12 * second);
        assert_eq!(held.again, Some(SETTLE - Duration::from_secs(2)));
        // The pod arrived: nothing lower is wanted any more, and the clock starts again.
        let caught_up = list(&[("pods", "2"), ("requests.cpu", "1")]);
        assert_eq!(
            settling
                .decide(&key, &recorded, &caught_up, 13 * second)
                .again,
            None
        );
        assert!(
            settling
                .decide(&key, &recorded, &lower, 14 * second)
                .again
                .is_some()
        );
        // Still lower once settled: written.
        assert_eq!(
            settling.decide(
                &key,
                &recorded,
                &lower,
                14 * second + SETTLE.as_nanos() as u64
            ),
            Decision {
                used: lower.clone(),
                again: None
            }
        );
        settling.done(&key);
        assert_eq!(
            settling.decide(&key, &recorded, &lower, 100 * second).again,
            Some(SETTLE)
        );
    }
}
