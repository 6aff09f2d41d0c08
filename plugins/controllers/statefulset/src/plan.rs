//! What a StatefulSet should do, decided from its spec and the objects it owns, without calling
//! the host: pod identities and ordinals, the next steps of creation, scale-down and rolling
//! update, ControllerRevisions and their history, and the status.

use std::collections::BTreeMap;

pub use controller_common::revision::*;
use controller_common::{int_or_percent, is_available, is_ready, owner_reference};
use serde_json::{Value, json};

/// The label naming a pod's StatefulSet identity.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label naming the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The name of the set's pod of `ordinal`.
pub fn pod_name(set: &str, ordinal: i64) -> String {
    format!("{set}-{ordinal}")
}

/// The ordinal of a pod of the set named `set`, if `pod` is `<set>-<ordinal>` with the ordinal
/// written as Kubernetes writes it (no sign, no leading zeros).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The revision a pod was made from.
pub fn revision_of(pod: &Value) -> Option<&str> {
    pod["metadata"]["labels"][REVISION_LABEL].as_str()
}

fn terminating(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_some()
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

fn running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && is_ready(pod)
}

/// Running, ready for `min_ready_seconds`, and not being deleted.
fn available(pod: &Value, min_ready_seconds: i64, now: i64) -> bool {
    running_and_ready(pod) && is_available(pod, min_ready_seconds, now) && !terminating(pod)
}

/// What of a StatefulSet's spec the plan and the status need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub generation: i64,
    /// The first ordinal (`spec.ordinals.start`).
    pub start: i64,
    pub replicas: i64,
    /// `OrderedReady`, as opposed to `Parallel`.
    pub ordered: bool,
    /// `RollingUpdate`, as opposed to `OnDelete`.
    pub rolling: bool,
    /// Pods below `start + partition` keep the current revision.
    pub partition: i64,
    pub max_unavailable: i64,
    pub min_ready_seconds: i64,
    pub revision_history_limit: usize,
}

impl Spec {
    pub fn of(set: &Value) -> Result<Self, String> {
        let spec = &set["spec"];
        let replicas = spec["replicas"].as_i64().unwrap_or(1);
        let rolling_update = &spec["updateStrategy"]["rollingUpdate"];
        let max_unavailable = match &rolling_update["maxUnavailable"] {
            Value::Null => 1,
            value => int_or_percent(value, replicas, false, "")
                .map_err(|e| format!("maxUnavailable: {e}"))?,
        };
        Ok(Self {
            name: name_of(set).to_owned(),
            generation: set["metadata"]["generation"].as_i64().unwrap_or(0),
            start: spec["ordinals"]["start"].as_i64().unwrap_or(0),
            replicas,
            ordered: spec["podManagementPolicy"] != "Parallel",
            rolling: spec["updateStrategy"]["type"] != "OnDelete",
            partition: rolling_update["partition"].as_i64().unwrap_or(0).max(0),
            // A rolling update always makes progress: less than one means one.
            max_unavailable: max_unavailable.max(1),
            min_ready_seconds: spec["minReadySeconds"].as_i64().unwrap_or(0),
            revision_history_limit: spec["revisionHistoryLimit"].as_u64().unwrap_or(10) as usize,
        })
    }

    fn ordinals(&self) -> std::ops::Range<i64> {
        self.start..self.start + self.replicas.max(0)
    }

    /// The revision a pod of `ordinal` is created at.
    fn revision_for(&self, ordinal: i64) -> Revision {
        if self.rolling && ordinal < self.start + self.partition {
            Revision::Current
        } else {
            Revision::Update
        }
    }
}

/// One of the set's two revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revision {
    Current,
    Update,
}

/// Why a pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// It failed or succeeded; it is created again once gone.
    Finished,
    /// Its ordinal is beyond the set's replicas.
    Condemned,
    /// It is not at the update revision.
    Outdated,
}

/// One write to make, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step<'a> {
    Create {
        ordinal: i64,
        revision: Revision,
    },
    Delete {
        pod: &'a Value,
        why: Why,
    },
    /// Give the pod the identity labels of its ordinal.
    Relabel {
        pod: &'a Value,
        ordinal: i64,
    },
}

/// Whether a pod carries the identity labels of its ordinal.
fn identity_matches(pod: &Value, ordinal: i64) -> bool {
    let labels = &pod["metadata"]["labels"];
    labels[POD_NAME_LABEL] == name_of(pod)
        && labels[POD_INDEX_LABEL].as_str() == Some(ordinal.to_string().as_str())
}

/// The steps that bring the set's pods (its own, all of them `<set>-<ordinal>`) towards its spec,
/// as Kubernetes takes them.
///
/// Every missing or finished pod in the ordinal range is created (after the finished one is
/// gone); then pods beyond the range are deleted from the highest ordinal down; then, for
/// `RollingUpdate`, pods from `start + partition` up that are not at `update_revision` are
/// deleted from the highest ordinal down, while fewer than `maxUnavailable` pods are
/// unavailable. `OrderedReady` takes one step at a time and none while a pod below is not
/// available; `Parallel` takes every step at once.
pub fn plan<'a>(spec: &Spec, pods: &'a [Value], update_revision: &str, now: i64) -> Vec<Step<'a>> {
    let available = |pod: &Value| available(pod, spec.min_ready_seconds, now);
    let mut replicas = BTreeMap::new();
    let mut condemned = Vec::new();
    for pod in pods {
        let Some(ordinal) = ordinal_of(&spec.name, name_of(pod)) else {
            continue;
        };
        if spec.ordinals().contains(&ordinal) {
            replicas.insert(ordinal, pod);
        } else {
            condemned.push((ordinal, pod));
        }
    }
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));

    let mut steps = Vec::new();
    for ordinal in spec.ordinals() {
        match replicas.get(&ordinal) {
            None => {
                let revision = spec.revision_for(ordinal);
                steps.push(Step::Create { ordinal, revision });
                if spec.ordered {
                    return steps;
                }
            }
            Some(pod) if finished(pod) && !terminating(pod) => {
                steps.push(Step::Delete {
                    pod,
                    why: Why::Finished,
                });
                if spec.ordered {
                    return steps;
                }
            }
            Some(pod) => {
                if spec.ordered && !available(pod) {
                    return steps;
                }
                if !terminating(pod) && !identity_matches(pod, ordinal) {
                    steps.push(Step::Relabel { pod, ordinal });
                }
            }
        }
    }

    for (at, (_, pod)) in condemned.iter().enumerate() {
        if terminating(pod) {
            if spec.ordered {
                return steps;
            }
            continue;
        }
        // An unavailable pod goes first only when every pod below it is available.
        let below_unavailable = condemned[at + 1..].iter().any(|(_, p)| !available(p));
        if spec.ordered && !available(pod) && below_unavailable {
            return steps;
        }
        steps.push(Step::Delete {
            pod,
            why: Why::Condemned,
        });
        if spec.ordered {
            return steps;
        }
    }

    if !spec.rolling {
        return steps;
    }
    let unavailable = spec
        .ordinals()
        .filter(|ordinal| !replicas.get(ordinal).is_some_and(|pod| available(pod)))
        .count() as i64;
    let mut budget = (spec.max_unavailable - unavailable).max(0);
    let updated_from = spec.start + spec.partition;
    for ordinal in spec.ordinals().rev().take_while(|o| *o >= updated_from) {
        if budget == 0 {
            break;
        }
        let Some(pod) = replicas.get(&ordinal) else {
            continue;
        };
        if !terminating(pod) && !finished(pod) && revision_of(pod) != Some(update_revision) {
            steps.push(Step::Delete {
                pod,
                why: Why::Outdated,
            });
            budget -= 1;
        }
    }
    steps
}

/// The set's pod of `ordinal`, made from `template` (the template of the revision named
/// `revision`). Claim templates become emptyDir volumes of their names, so the containers'
/// mounts of them resolve; there are no PersistentVolumeClaims.
pub fn new_pod(set: &Value, template: &Value, ordinal: i64, revision: &str) -> Value {
    let name = pod_name(name_of(set), ordinal);
    let index = ordinal.to_string();
    let labels = labels_with(
        template,
        &[
            (POD_NAME_LABEL, &name),
            (POD_INDEX_LABEL, &index),
            (REVISION_LABEL, revision),
        ],
    );
    let mut metadata = json!({
        "name": name,
        "namespace": set["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(set)],
    });
    if let Some(annotations) = template["metadata"].get("annotations") {
        metadata["annotations"] = annotations.clone();
    }
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(name);
    if let Some(service) = set["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(service);
    }
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for claim in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|claim| claim["metadata"]["name"].as_str())
    {
        if !volumes.iter().any(|volume| volume["name"] == claim) {
            volumes.push(json!({"name": claim, "emptyDir": {}}));
        }
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The status the pods give, and when the next ready pod becomes available (seconds from
/// now). Once every pod is ready at the update revision, it is the current revision too.
pub fn status(
    spec: &Spec,
    pods: &[Value],
    current: &str,
    update: &str,
    collision_count: i64,
    now: i64,
) -> (Value, Option<i64>) {
    let at = |revision: &str| {
        pods.iter()
            .filter(|p| !terminating(p) && revision_of(p) == Some(revision))
            .count()
    };
    let ready: Vec<&Value> = pods.iter().filter(|p| running_and_ready(p)).collect();
    let available = ready
        .iter()
        .filter(|p| is_available(p, spec.min_ready_seconds, now))
        .count();
    let updated = at(update);
    let (current, current_replicas) = if updated == pods.len() && ready.len() == pods.len() {
        (update, updated)
    } else {
        (current, at(current))
    };
    let next = ready
        .iter()
        .filter_map(|p| controller_common::ready_since(p))
        .map(|since| since + spec.min_ready_seconds - now)
        .filter(|wait| *wait > 0)
        .min();
    let status = json!({
        "observedGeneration": spec.generation,
        "replicas": pods.len(),
        "readyReplicas": ready.len(),
        "currentReplicas": current_replicas,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "currentRevision": current,
        "updateRevision": update,
        "collisionCount": collision_count,
    });
    (status, next)
}

/// Whether any field of `new` differs from `old`'s (a field left out of `old` is zero, as the
/// server drops zero counts).
pub fn status_changed(old: &Value, new: &Value) -> bool {
    new.as_object().into_iter().flatten().any(|(field, value)| {
        let old = old.get(field).unwrap_or(&Value::Null);
        old != value && !(old.is_null() && *value == json!(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_119_200;
    const LONG_AGO: &str = "2026-12-01T09:00:00Z";

    fn set(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "s-1", "generation": 2},
            "spec": spec})
    }

    fn spec(fields: Value) -> Spec {
        let mut spec = json!({"replicas": 3});
        for (k, v) in fields.as_object().unwrap() {
            spec[k] = v.clone();
        }
        Spec::of(&set(spec)).unwrap()
    }

    /// A pod of the set: `state` is `ready`, `pending`, `failed` or `terminating`.
    fn pod(ordinal: i64, state: &str, revision: &str) -> Value {
        let name = pod_name("web", ordinal);
        let mut pod = json!({"metadata": {"name": name, "labels": {
                POD_NAME_LABEL: name, POD_INDEX_LABEL: ordinal.to_string(), REVISION_LABEL: revision}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": LONG_AGO}]}});
        match state {
            "ready" => {}
            "pending" => pod["status"] = json!({"phase": "Pending"}),
            "failed" => pod["status"] = json!({"phase": "Failed"}),
            "terminating" => pod["metadata"]["deletionTimestamp"] = json!(LONG_AGO),
            other => panic!("no pod state {other}"),
        }
        pod
    }

    /// The steps, readably.
    fn steps(spec: &Spec, pods: &[Value]) -> Vec<String> {
        plan(spec, pods, "new", NOW)
            .iter()
            .map(|step| match step {
                Step::Create { ordinal, revision } => format!("create {ordinal} {revision:?}"),
                Step::Delete { pod, why } => format!("delete {} {why:?}", name_of(pod)),
                Step::Relabel { pod, .. } => format!("relabel {}", name_of(pod)),
            })
            .collect()
    }

    #[test]
    fn ordinals_are_read_only_from_canonical_names() {
        for (pod, ordinal) in [
            ("web-0", Some(0)),
            ("web-12", Some(12)),
            ("web-01", None),
            ("web-", None),
            ("web--1", None),
            ("web-x", None),
            ("web-1-0", None),
            ("webb-0", None),
            ("web", None),
        ] {
            assert_eq!(ordinal_of("web", pod), ordinal, "{pod}");
        }
        assert_eq!(ordinal_of("web-1", "web-1-0"), Some(0));
    }

    #[test]
    fn ordered_ready_creates_one_pod_at_a_time_behind_available_ones() {
        let ordered = spec(json!({}));
        assert_eq!(steps(&ordered, &[]), ["create 0 Update"]);
        assert_eq!(
            steps(&ordered, &[pod(0, "ready", "new")]),
            ["create 1 Update"]
        );
        assert!(steps(&ordered, &[pod(0, "pending", "new")]).is_empty());
        assert!(steps(&ordered, &[pod(0, "terminating", "new")]).is_empty());
        // Ready, but not for minReadySeconds yet.
        let slow = spec(json!({"minReadySeconds": 3600 * 2}));
        assert!(steps(&slow, &[pod(0, "ready", "new")]).is_empty());
        let late = spec(json!({"ordinals": {"start": 5}}));
        assert_eq!(steps(&late, &[pod(5, "ready", "new")]), ["create 6 Update"]);
    }

    #[test]
    fn parallel_creates_and_deletes_everything_at_once() {
        let parallel = spec(json!({"podManagementPolicy": "Parallel"}));
        assert_eq!(
            steps(&parallel, &[pod(1, "pending", "new")]),
            ["create 0 Update", "create 2 Update"]
        );
        let smaller = spec(json!({"podManagementPolicy": "Parallel", "replicas": 1}));
        let pods = [
            pod(0, "ready", "new"),
            pod(1, "pending", "new"),
            pod(2, "ready", "new"),
        ];
        assert_eq!(
            steps(&smaller, &pods),
            ["delete web-2 Condemned", "delete web-1 Condemned"]
        );
    }

    #[test]
    fn a_finished_pod_is_deleted_to_be_made_again() {
        let ordered = spec(json!({}));
        let pods = [pod(0, "ready", "new"), pod(1, "failed", "new")];
        assert_eq!(steps(&ordered, &pods), ["delete web-1 Finished"]);
        let parallel = spec(json!({"podManagementPolicy": "Parallel"}));
        assert_eq!(
            steps(&parallel, &pods),
            ["delete web-1 Finished", "create 2 Update"]
        );
    }

    #[test]
    fn ordered_scale_down_takes_the_highest_first_once_the_rest_is_available() {
        let ordered = spec(json!({"replicas": 2}));
        let all_ready: Vec<Value> = (0..4).map(|o| pod(o, "ready", "new")).collect();
        assert_eq!(steps(&ordered, &all_ready), ["delete web-3 Condemned"]);
        let mut pods = all_ready.clone();
        pods[3] = pod(3, "terminating", "new");
        assert!(steps(&ordered, &pods).is_empty(), "one at a time");
        // A ready pod goes even when one below it is not; an unready one only when all are.
        let mut pods = all_ready.clone();
        pods[2] = pod(2, "pending", "new");
        assert_eq!(steps(&ordered, &pods), ["delete web-3 Condemned"]);
        pods[3] = pod(3, "pending", "new");
        assert!(steps(&ordered, &pods).is_empty());
        let mut pods = all_ready.clone();
        pods[3] = pod(3, "pending", "new");
        assert_eq!(steps(&ordered, &pods), ["delete web-3 Condemned"]);
        // Nothing goes while a pod it keeps is unavailable.
        let mut pods = all_ready;
        pods[1] = pod(1, "pending", "new");
        assert!(steps(&ordered, &pods).is_empty());
    }

    #[test]
    fn rolling_updates_go_from_the_highest_ordinal_down_to_the_partition() {
        let ordered = spec(json!({}));
        let old: Vec<Value> = (0..3).map(|o| pod(o, "ready", "old")).collect();
        assert_eq!(steps(&ordered, &old), ["delete web-2 Outdated"]);
        let mut pods = old.clone();
        pods[2] = pod(2, "pending", "new");
        assert!(steps(&ordered, &pods).is_empty(), "waits for the new pod");
        pods[2] = pod(2, "ready", "new");
        assert_eq!(steps(&ordered, &pods), ["delete web-1 Outdated"]);

        let partitioned = spec(json!({"updateStrategy": {"rollingUpdate": {"partition": 2}}}));
        assert_eq!(steps(&partitioned, &pods), Vec::<String>::new());
        assert_eq!(
            steps(&partitioned, &[pod(1, "ready", "old")]),
            ["create 0 Current"],
            "below the partition, pods are made at the current revision"
        );

        let wide = spec(json!({"podManagementPolicy": "Parallel",
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": "70%"}}}));
        assert_eq!(
            steps(&wide, &old),
            ["delete web-2 Outdated", "delete web-1 Outdated"]
        );
        let mut pods = old.clone();
        pods[0] = pod(0, "pending", "old");
        assert_eq!(
            steps(&wide, &pods),
            ["delete web-2 Outdated"],
            "an unavailable pod takes from the budget"
        );

        let on_delete = spec(json!({"updateStrategy": {"type": "OnDelete"}}));
        assert!(steps(&on_delete, &old).is_empty());
        assert_eq!(
            steps(&on_delete, &old[..2]),
            ["create 2 Update"],
            "made again at the update revision"
        );
    }

    #[test]
    fn pods_missing_their_identity_are_relabelled() {
        let mut unlabelled = pod(0, "ready", "new");
        unlabelled["metadata"]["labels"] = json!({REVISION_LABEL: "new"});
        let one = spec(json!({"replicas": 1}));
        assert_eq!(steps(&one, &[unlabelled]), ["relabel web-0"]);
    }

    #[test]
    fn pods_carry_their_identity_revision_and_claims() {
        let set = set(json!({"serviceName": "web",
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}, {"metadata": {"name": "logs"}}]}));
        let template = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "main"}], "volumes": [{"name": "logs", "configMap": {"name": "l"}}]}});
        let pod = new_pod(&set, &template, 1, "web-abc");
        assert_eq!(pod["metadata"]["name"], "web-1");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"app": "web", POD_NAME_LABEL: "web-1", POD_INDEX_LABEL: "1", REVISION_LABEL: "web-abc"})
        );
        assert_eq!(pod["metadata"]["annotations"], json!({"a": "b"}));
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "s-1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(pod["spec"]["hostname"], "web-1");
        assert_eq!(pod["spec"]["subdomain"], "web");
        assert_eq!(
            pod["spec"]["volumes"],
            json!([{"name": "logs", "configMap": {"name": "l"}}, {"name": "data", "emptyDir": {}}])
        );
        assert!(identity_matches(&pod, 1));
        let headless = new_pod(&super::tests::set(json!({})), &template, 0, "web-abc");
        assert!(headless["spec"].get("subdomain").is_none());
    }

    #[test]
    fn status_counts_revisions_and_completes_the_update() {
        let sts = spec(json!({"minReadySeconds": 60}));
        let mut fresh = pod(2, "ready", "new");
        fresh["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-12-01T09:59:30Z");
        let pods = [pod(0, "ready", "old"), pod(1, "terminating", "old"), fresh];
        let (status, next) = status(&sts, &pods, "old", "new", 0, NOW);
        assert_eq!(
            status,
            json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                "currentReplicas": 1, "updatedReplicas": 1, "availableReplicas": 2,
                "currentRevision": "old", "updateRevision": "new", "collisionCount": 0})
        );
        assert_eq!(next, Some(30));
        let done: Vec<Value> = (0..3).map(|o| pod(o, "ready", "new")).collect();
        let (status, next) = super::status(&sts, &done, "old", "new", 1, NOW);
        assert_eq!(status["currentRevision"], "new");
        assert_eq!(status["currentReplicas"], 3);
        assert_eq!(next, None);
        assert!(status_changed(&json!({}), &status));
        assert!(!status_changed(&status, &status));
        let zero = json!({"replicas": 0, "currentRevision": "new"});
        assert!(!status_changed(&json!({"currentRevision": "new"}), &zero));
    }

    #[test]
    fn the_spec_reads_kubernetes_defaults() {
        let defaults = Spec::of(&set(json!({}))).unwrap();
        assert_eq!(
            defaults,
            Spec {
                name: "web".into(),
                generation: 2,
                start: 0,
                replicas: 1,
                ordered: true,
                rolling: true,
                partition: 0,
                max_unavailable: 1,
                min_ready_seconds: 0,
                revision_history_limit: 10,
            }
        );
        let wide = spec(json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}}));
        assert_eq!(wide.max_unavailable, 1, "rounds down, at least one");
        assert!(
            Spec::of(&set(
                json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": "x"}}})
            ))
            .is_err()
        );
    }
}
