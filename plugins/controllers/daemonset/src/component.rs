//! The controller component: reads the DaemonSet, its ControllerRevisions, its pods and the
//! nodes from the cache, and brings the pods to the plan.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use controller_common::claim::Claim;
use controller_common::history::{delete_revisions, update_revision};
use controller_common::revision::{REVISION_HASH_LABEL, history_to_prune, sort_revisions};
use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

use crate::plan::{node_of, placement, pod_spec_for};

/// The label holding the revision a pod was made from.
const REVISION_HASH: &str = "controller-revision-hash";
/// Most pods created or deleted in one reconcile.
const BURST: usize = 500;

#[derive(Debug)]
pub struct DaemonSetController;

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn deleting(object: &Value) -> bool {
    object["metadata"].get("deletionTimestamp").is_some()
}

fn reference(api_version: &str, kind: &str, object: &Value) -> ObjectRef {
    ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
        name: name_of(object).to_owned(),
    }
}

fn hash_of(pod: &Value) -> &str {
    pod["metadata"]["labels"][REVISION_HASH]
        .as_str()
        .unwrap_or_default()
}

/// A DaemonSet being reconciled.
struct Sync<'a> {
    ds: &'a Value,
    namespace: &'a str,
    min_ready: i64,
}

impl Sync<'_> {
    fn event(&self, event_type: &str, reason: &str, message: String) {
        // An event that cannot be recorded is not worth failing the reconcile for.
        let _ = api::emit_event(&Event {
            regarding: object_ref(self.ds),
            event_type: event_type.into(),
            reason: reason.into(),
            message,
        });
    }

    /// The update revision's hash: the ControllerRevision holding the current template, made
    /// (or renumbered as the newest) if needed; old revisions no pod uses are pruned past
    /// `revisionHistoryLimit`.
    fn revision(
        &self,
        selector: &str,
        pods: &[Value],
        collisions: &mut i64,
    ) -> Result<String, String> {
        let claim = Claim {
            owner: self.ds,
            api_version: "apps/v1",
            kind: "ControllerRevision",
            selector,
        };
        let mut revisions = claim.run(|_| true, |_| Ok(()))?;
        sort_revisions(&mut revisions);
        let update = update_revision(self.ds, &revisions, collisions)?;
        let hash_of_revision = |r: &Value| {
            r["metadata"]["labels"][REVISION_HASH_LABEL]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let used: HashSet<&str> = pods.iter().map(hash_of).collect();
        let live: HashSet<&str> = revisions
            .iter()
            .filter(|r| used.contains(hash_of_revision(r).as_str()))
            .map(name_of)
            .chain([name_of(&update)])
            .collect();
        let limit = self.ds["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        delete_revisions(&history_to_prune(&revisions, &live, limit));
        Ok(hash_of_revision(&update))
    }

    fn create(&self, nodes: &[String], hash: &str) -> Result<(), String> {
        let template = &self.ds["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels[REVISION_HASH] = json!(hash);
        labels["pod-template-generation"] = json!(self.ds["metadata"]["generation"].to_string());
        let mut batch = 1;
        let mut nodes = nodes.iter().take(BURST);
        loop {
            let taken: Vec<&String> = nodes.by_ref().take(batch).collect();
            if taken.is_empty() {
                return Ok(());
            }
            for node in taken {
                let mut metadata = json!({
                    "generateName": format!("{}-", name_of(self.ds)),
                    "namespace": self.namespace,
                    "labels": labels,
                    "ownerReferences": [owner_reference(self.ds)],
                });
                if let Some(annotations) = template["metadata"].get("annotations") {
                    metadata["annotations"] = annotations.clone();
                }
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                    "spec": pod_spec_for(template, node)});
                match api::create(&pod.to_string()) {
                    Ok(made) => {
                        let made = parse(&made).unwrap_or_default();
                        self.event(
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created pod: {}", name_of(&made)),
                        );
                    }
                    Err(s) => {
                        let message = format!("Error creating: {}", s.message);
                        self.event("Warning", "FailedCreate", message.clone());
                        return Err(message);
                    }
                }
            }
            batch *= 2;
        }
    }

    fn delete(&self, pods: &[&Value]) -> Result<(), String> {
        for pod in pods.iter().take(BURST) {
            let options = DeleteOptions {
                uid: pod["metadata"]["uid"].as_str().map(str::to_owned),
                ..DeleteOptions::default()
            };
            match api::delete(&reference("v1", "Pod", pod), &options) {
                Ok(()) => self.event(
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", name_of(pod)),
                ),
                Err(s) if s.code == 404 => {}
                Err(s) => return Err(failed("deleting a pod", s)),
            }
        }
        Ok(())
    }

    fn available(&self, pod: &Value) -> bool {
        is_available(pod, self.min_ready, now())
    }
}

/// The pods on one node that should run one.
#[derive(Debug, Default)]
struct Slot<'a> {
    new: Vec<&'a Value>,
    old: Vec<&'a Value>,
}

impl Controller for DaemonSetController {
    const NAME: &'static str = "daemonset-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("apps/v1", "DaemonSet")
            .owns("v1", "Pod")
            .owns("apps/v1", "ControllerRevision")
            .watch(Watch::new("v1", "Node", KeyMapping::Custom))
            .workers(2)
    }

    /// A node that comes, changes or goes concerns every DaemonSet.
    fn keys_for(&mut self, _watch: u32, _object: &str) -> Vec<ObjectRef> {
        cache::list("apps/v1", "DaemonSet", None, "")
            .unwrap_or_default()
            .iter()
            .filter_map(|ds| parse(ds).ok())
            .map(|ds| reference("apps/v1", "DaemonSet", &ds))
            .collect()
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(ds) = cache::get("apps/v1", "DaemonSet", key.namespace.as_deref(), &key.name)
            .map_err(|s| failed("reading the daemon set", s))?
        else {
            return Ok(None);
        };
        let ds = parse(&ds)?;
        if deleting(&ds) {
            return Ok(None);
        }
        let sync = Sync {
            ds: &ds,
            namespace: ds["metadata"]["namespace"].as_str().unwrap_or_default(),
            min_ready: ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
        };
        let selector =
            selector_string(&ds["spec"]["selector"]).map_err(|e| format!("spec.selector: {e}"))?;
        let claim = Claim {
            owner: &ds,
            api_version: "v1",
            kind: "Pod",
            selector: &selector,
        };
        let pods = claim.run(|_| true, |_| Ok(()))?;
        let mut collisions = ds["status"]["collisionCount"].as_i64().unwrap_or(0);
        let hash = sync.revision(&selector, &pods, &mut collisions)?;
        let template = &ds["spec"]["template"];
        let nodes: Vec<Value> = cache::list("v1", "Node", None, "")
            .map_err(|s| failed("listing nodes", s))?
            .iter()
            .filter_map(|n| parse(n).ok())
            .collect();

        // Pods by node; failed ones go (and are replaced).
        let mut by_node: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        let mut doomed: Vec<&Value> = Vec::new();
        for pod in pods.iter().filter(|p| !deleting(p)) {
            if pod["status"]["phase"] == "Failed" {
                let message = format!(
                    "Found failed daemon pod {}/{} on node {}, will try to kill it",
                    sync.namespace,
                    name_of(pod),
                    node_of(pod).unwrap_or_default()
                );
                sync.event("Warning", "FailedDaemonPod", message);
                doomed.push(pod);
            } else {
                by_node
                    .entry(node_of(pod).unwrap_or_default())
                    .or_default()
                    .push(pod);
            }
        }
        let mut slots: BTreeMap<&str, Slot> = BTreeMap::new();
        let mut misscheduled = 0;
        let mut missing: Vec<String> = Vec::new();
        for node in &nodes {
            let name = name_of(node);
            let mut here = by_node.remove(name).unwrap_or_default();
            let place = placement(template, node);
            if place.should_run {
                here.sort_by_key(|p| {
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .and_then(parse_time)
                });
                let (new, old): (Vec<&Value>, Vec<&Value>) =
                    here.into_iter().partition(|p| hash_of(p) == hash);
                if new.is_empty() && old.is_empty() {
                    missing.push(name.to_owned());
                }
                slots.insert(name, Slot { new, old });
            } else if !here.is_empty() {
                misscheduled += 1;
                if !place.should_continue {
                    doomed.extend(here);
                }
            }
        }
        // Pods on nodes that are gone.
        doomed.extend(by_node.into_values().flatten());

        let strategy = &ds["spec"]["updateStrategy"];
        let rolling = strategy["type"] != "OnDelete";
        let desired = slots.len() as i64;
        let rolling_update = &strategy["rollingUpdate"];
        let max_surge = int_or_percent(&rolling_update["maxSurge"], desired, true, "0")?;
        let mut max_unavailable =
            int_or_percent(&rolling_update["maxUnavailable"], desired, true, "1")?;
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        // Extra pods on a node go: one new pod stays, and one old pod while no new one runs
        // or while a surging update waits for the new one.
        for slot in slots.values_mut() {
            if slot.new.len() > 1 {
                doomed.extend(slot.new.drain(1..));
            }
            let keep_old = usize::from(slot.new.is_empty() || (max_surge > 0 && rolling));
            if slot.old.len() > keep_old {
                doomed.extend(slot.old.drain(keep_old..));
            }
        }
        if rolling {
            let unavailable = slots
                .values()
                .filter(|s| !s.new.iter().chain(&s.old).any(|p| sync.available(p)))
                .count() as i64;
            if max_surge == 0 {
                // Old pods go node by node: the unavailable ones first, then as many as
                // maxUnavailable allows.
                let mut budget = max_unavailable - unavailable;
                for slot in slots.values_mut().filter(|s| !s.old.is_empty()) {
                    let old_available = slot.old.iter().any(|p| sync.available(p));
                    if !old_available || budget > 0 {
                        budget -= i64::from(old_available);
                        doomed.append(&mut slot.old);
                    }
                }
            } else {
                // The new pod starts next to the old one, which goes once it is available.
                let mut surging = slots
                    .values()
                    .filter(|s| !s.old.is_empty() && !s.new.is_empty())
                    .count() as i64;
                for (node, slot) in slots.iter_mut().filter(|(_, s)| !s.old.is_empty()) {
                    let new_available = slot.new.iter().any(|p| sync.available(p));
                    let old_available = slot.old.iter().any(|p| sync.available(p));
                    if new_available || (!old_available && !slot.new.is_empty()) {
                        doomed.append(&mut slot.old);
                    } else if slot.new.is_empty() && (!old_available || surging < max_surge) {
                        surging += i64::from(old_available);
                        if !old_available {
                            doomed.append(&mut slot.old);
                        }
                        missing.push((*node).to_owned());
                    }
                }
            }
        }
        sync.delete(&doomed)?;
        let created = sync.create(&missing, &hash);

        // Status, from what each node that should run a pod has.
        let live = |s: &&Slot| s.new.iter().chain(&s.old).next().is_some();
        fn pods_of<'a>(slot: &Slot<'a>) -> Vec<&'a Value> {
            slot.new.iter().chain(&slot.old).copied().collect()
        }
        let now = now();
        let available = slots
            .values()
            .filter(|s| pods_of(s).iter().any(|p| sync.available(p)))
            .count();
        let next = slots
            .values()
            .flat_map(pods_of)
            .filter_map(ready_since)
            .map(|since| since + sync.min_ready - now)
            .filter(|wait| *wait > 0)
            .min();
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": slots.values().filter(live).count(),
            "numberMisscheduled": misscheduled,
            "numberReady": slots.values().flat_map(pods_of).filter(|p| is_ready(p)).count(),
            "updatedNumberScheduled": slots.values().filter(|s| !s.new.is_empty()).count(),
            "numberAvailable": available,
            "numberUnavailable": desired - available as i64,
            "observedGeneration": ds["metadata"]["generation"],
            "collisionCount": collisions,
        });
        let unchanged = status
            .as_object()
            .into_iter()
            .flatten()
            .all(|(field, value)| {
                let old = ds["status"].get(field).unwrap_or(&Value::Null);
                old == value || (old.is_null() && *value == json!(0))
            });
        if !unchanged {
            let mut updated = ds.clone();
            for (field, value) in status.as_object().into_iter().flatten() {
                updated["status"][field] = value.clone();
            }
            api::update_status(&updated.to_string())
                .map_err(|s| failed("writing the status", s))?;
        }
        created?;
        Ok(next.map(|seconds| Duration::from_secs(seconds as u64)))
    }
}

flotilla_sdk::export_controller!(DaemonSetController);
