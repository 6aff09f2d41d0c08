//! The Deployment controller, with Kubernetes' semantics: a Deployment's pods come from
//! ReplicaSets it owns, one per pod template, named `<deployment>-<pod-template-hash>`.
//!
//! - **Rollouts**: `RollingUpdate` scales the new ReplicaSet up while the total stays within
//!   `replicas + maxSurge`, and old ones down while at least `replicas - maxUnavailable` pods
//!   are available (unavailable old pods go first); `Recreate` scales the old ones to zero,
//!   waits until their pods are gone, then scales up the new one.
//! - **Revisions**: each ReplicaSet carries `deployment.kubernetes.io/revision`; a template
//!   that matches an old ReplicaSet (a rollback: `kubectl rollout undo` puts an old template
//!   back) makes it the newest revision again; old ReplicaSets scaled to zero beyond
//!   `revisionHistoryLimit` (default 10) are deleted, oldest first.
//! - **Scaling** during a rollout is proportional: every active ReplicaSet grows or shrinks by
//!   its share, the remainder going to the largest.
//! - **Pause** (`spec.paused`) stops rollouts but not scaling.
//! - **Status**: replicas, updatedReplicas, readyReplicas, availableReplicas,
//!   unavailableReplicas, observedGeneration, collisionCount, and the Available and
//!   Progressing conditions (NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable,
//!   ProgressDeadlineExceeded, DeploymentPaused, DeploymentResumed) that `kubectl rollout
//!   status` reads.

use std::time::Duration;

use controller_common::revision::normalized;
use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Map, Value, json};

const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
const HASH: &str = "pod-template-hash";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED,
    MAX,
];

#[derive(Debug)]
pub struct DeploymentController;

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_of(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(object: &Value) -> i64 {
    object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_time)
        .unwrap_or(0)
}

/// A pod template without the `pod-template-hash` label, normalized, for comparing and
/// hashing templates.
fn without_hash(template: &Value) -> Value {
    let mut template = normalized(template).unwrap_or(Value::Null);
    if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(HASH);
            if labels.is_empty() {
                metadata.remove("labels");
            }
        }
        if metadata.is_empty() {
            template.as_object_mut().map(|t| t.remove("metadata"));
        }
    }
    template
}

fn rs_ref(rs: &Value) -> ObjectRef {
    ObjectRef {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        namespace: rs["metadata"]["namespace"].as_str().map(str::to_owned),
        name: name_of(rs).to_owned(),
    }
}

/// One reconcile of one Deployment.
struct Rollout {
    d: Value,
    namespace: String,
    replicas: i64,
    max_surge: i64,
    max_unavailable: i64,
    /// The condition reason this reconcile's own progress earns (a new ReplicaSet made).
    created: Option<String>,
}

impl Rollout {
    fn new(d: Value) -> Result<Self, String> {
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let rolling = &d["spec"]["strategy"]["rollingUpdate"];
        let mut max_surge = int_or_percent(&rolling["maxSurge"], replicas, true, "25%")
            .map_err(|e| format!("maxSurge: {e}"))?;
        let mut max_unavailable =
            int_or_percent(&rolling["maxUnavailable"], replicas, false, "25%")
                .map_err(|e| format!("maxUnavailable: {e}"))?;
        if d["spec"]["strategy"]["type"] == "Recreate" {
            max_surge = 0;
            max_unavailable = replicas;
        } else if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        Ok(Self {
            namespace: d["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            d,
            replicas,
            max_surge,
            max_unavailable: max_unavailable.min(replicas),
            created: None,
        })
    }

    fn event(&self, event_type: &str, reason: &str, message: String) {
        let _ = api::emit_event(&Event {
            regarding: object_ref(&self.d),
            event_type: event_type.into(),
            reason: reason.into(),
            message,
        });
    }

    /// Sets a ReplicaSet's replicas (and the annotations recording the Deployment's size),
    /// returning it as written.
    fn scale(&self, rs: &Value, to: i64) -> Result<Value, String> {
        let from = replicas(rs);
        let desired = self.replicas.to_string();
        let max = (self.replicas + self.max_surge).to_string();
        let annotations = &rs["metadata"]["annotations"];
        if from == to
            && annotations[DESIRED] == desired.as_str()
            && annotations[MAX] == max.as_str()
        {
            return Ok(rs.clone());
        }
        let mut updated = rs.clone();
        updated["spec"]["replicas"] = json!(to);
        if !updated["metadata"]["annotations"].is_object() {
            updated["metadata"]["annotations"] = json!({});
        }
        updated["metadata"]["annotations"][DESIRED] = json!(desired);
        updated["metadata"]["annotations"][MAX] = json!(max);
        let written =
            api::update(&updated.to_string()).map_err(|s| failed("scaling a replica set", s))?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            self.event(
                "Normal",
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {to}",
                    name_of(rs)
                ),
            );
        }
        parse(&written)
    }

    /// Makes the ReplicaSet of the current template, with `replicas` pods.
    fn create_new(&mut self, revision: i64, replicas: i64) -> Result<Value, String> {
        let template = &self.d["spec"]["template"];
        let collisions = self.d["status"]["collisionCount"].as_i64().unwrap_or(0);
        let mut hashed = without_hash(template).to_string();
        if collisions > 0 {
            hashed.push_str(&collisions.to_string());
        }
        let hash = safe_encode(fnv32a(hashed.as_bytes()));
        let name = format!("{}-{hash}", name_of(&self.d));
        let mut template = template.clone();
        if !template["metadata"]["labels"].is_object() {
            template["metadata"]["labels"] = json!({});
        }
        template["metadata"]["labels"][HASH] = json!(hash);
        let mut selector = self.d["spec"]["selector"].clone();
        if !selector["matchLabels"].is_object() {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"][HASH] = json!(hash);
        let mut annotations: Map<String, Value> = self.d["metadata"]["annotations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        annotations.retain(|k, _| !NOT_COPIED.contains(&k.as_str()));
        annotations.insert(REVISION.into(), json!(revision.to_string()));
        annotations.insert(DESIRED.into(), json!(self.replicas.to_string()));
        annotations.insert(
            MAX.into(),
            json!((self.replicas + self.max_surge).to_string()),
        );
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [owner_reference(&self.d)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": self.d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        });
        match api::create(&rs.to_string()) {
            Ok(created) => {
                let created = parse(&created)?;
                self.event(
                    "Normal",
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
                self.created = Some(format!("Created new replica set \"{name}\""));
                Ok(created)
            }
            Err(status) if status.code == 409 => {
                // A ReplicaSet of this name with another template: a hash collision. Count it,
                // so the next attempt hashes differently.
                let existing = cache::get("apps/v1", "ReplicaSet", Some(&self.namespace), &name)
                    .map_err(|s| failed("reading a replica set", s))?;
                let same = existing.and_then(|e| parse(&e).ok()).is_some_and(|e| {
                    without_hash(&e["spec"]["template"])
                        == without_hash(&self.d["spec"]["template"])
                });
                if !same {
                    let mut d = self.d.clone();
                    d["status"]["collisionCount"] = json!(collisions + 1);
                    api::update_status(&d.to_string())
                        .map_err(|s| failed("counting a hash collision", s))?;
                }
                Err(format!("replica set {name} exists already; retrying"))
            }
            Err(status) => Err(failed("creating the new replica set", status)),
        }
    }

    /// Whether pods of the old ReplicaSets still exist (Recreate waits for them).
    fn old_pods_remain(&self, olds: &[Value]) -> Result<bool, String> {
        let uids: Vec<&Value> = olds.iter().map(|rs| &rs["metadata"]["uid"]).collect();
        let pods = cache::list("v1", "Pod", Some(&self.namespace), "")
            .map_err(|s| failed("listing pods", s))?;
        Ok(pods.iter().filter_map(|p| parse(p).ok()).any(|pod| {
            controller_ref(&pod).is_some_and(|owner| uids.contains(&&owner["uid"]))
                && !matches!(
                    pod["status"]["phase"].as_str(),
                    Some("Succeeded" | "Failed")
                )
        }))
    }

    /// Proportional scaling of the active ReplicaSets when the Deployment's size changed.
    fn scale_proportionally(
        &self,
        new: &mut Option<Value>,
        olds: &mut [Value],
    ) -> Result<(), String> {
        let mut active: Vec<&mut Value> = new
            .iter_mut()
            .chain(olds.iter_mut())
            .filter(|rs| replicas(rs) > 0)
            .collect();
        if active.len() == 1 {
            let only = &mut active[0];
            **only = self.scale(only, self.replicas)?;
            return Ok(());
        }
        if active.is_empty() {
            return Ok(());
        }
        let allowed = if self.replicas > 0 {
            self.replicas + self.max_surge
        } else {
            0
        };
        let total: i64 = active.iter().map(|rs| replicas(rs)).sum();
        let to_add = allowed - total;
        if to_add == 0 {
            return Ok(());
        }
        // Largest first when growing, smallest first when shrinking; newest breaks ties.
        active.sort_by_key(|rs| {
            (
                if to_add > 0 {
                    -replicas(rs)
                } else {
                    replicas(rs)
                },
                -created(rs),
            )
        });
        let mut added = 0;
        let mut sizes: Vec<i64> = Vec::with_capacity(active.len());
        for rs in &active {
            let share = to_add * replicas(rs) / total.max(1);
            let share = if to_add > 0 {
                share.min(to_add - added)
            } else {
                share.max(to_add - added)
            };
            added += share;
            sizes.push((replicas(rs) + share).max(0));
        }
        // What rounding left goes to the first.
        sizes[0] = (sizes[0] + to_add - added).max(0);
        for (rs, size) in active.into_iter().zip(sizes) {
            *rs = self.scale(rs, size)?;
        }
        Ok(())
    }

    fn rolling(
        &mut self,
        new: &mut Option<Value>,
        olds: &mut [Value],
        next_revision: i64,
    ) -> Result<(), String> {
        let total: i64 = new.iter().chain(olds.iter()).map(replicas).sum();
        let max_total = self.replicas + self.max_surge;
        // Up: the new ReplicaSet grows while the total stays within replicas + maxSurge.
        let current = new.as_ref().map_or(0, replicas);
        let wanted = if current >= self.replicas {
            self.replicas
        } else if total >= max_total {
            current
        } else {
            current + (max_total - total).min(self.replicas - current)
        };
        match new {
            Some(rs) => *rs = self.scale(rs, wanted)?,
            None => *new = Some(self.create_new(next_revision, wanted.max(0))?),
        }
        // Down: old ReplicaSets shrink while replicas - maxUnavailable pods stay available.
        let old_pods: i64 = olds.iter().map(replicas).sum();
        if old_pods == 0 {
            return Ok(());
        }
        let new_rs = new.as_ref().expect("made above");
        let all_pods = replicas(new_rs) + old_pods;
        let min_available = self.replicas - self.max_unavailable;
        let new_unavailable = (replicas(new_rs) - status_of(new_rs, "availableReplicas")).max(0);
        let mut max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(());
        }
        olds.sort_by_key(created);
        // Unhealthy old pods first: removing them costs no availability.
        for rs in olds.iter_mut() {
            if max_scaled_down <= 0 {
                break;
            }
            let unhealthy = replicas(rs) - status_of(rs, "availableReplicas");
            if unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(max_scaled_down);
            *rs = self.scale(rs, replicas(rs) - down)?;
            max_scaled_down -= down;
        }
        let available: i64 = std::iter::once(new_rs)
            .chain(olds.iter())
            .map(|rs| status_of(rs, "availableReplicas").min(replicas(rs)))
            .sum();
        let mut scale_down = (available - min_available).min(max_scaled_down);
        for rs in olds.iter_mut() {
            if scale_down <= 0 {
                break;
            }
            let down = replicas(rs).min(scale_down);
            if down == 0 {
                continue;
            }
            *rs = self.scale(rs, replicas(rs) - down)?;
            scale_down -= down;
        }
        Ok(())
    }

    fn recreate(
        &mut self,
        new: &mut Option<Value>,
        olds: &mut [Value],
        next_revision: i64,
    ) -> Result<(), String> {
        let mut scaled_down = false;
        for rs in olds.iter_mut().filter(|rs| replicas(rs) > 0) {
            *rs = self.scale(rs, 0)?;
            scaled_down = true;
        }
        if scaled_down || self.old_pods_remain(olds)? {
            return Ok(());
        }
        match new {
            Some(rs) => *rs = self.scale(rs, self.replicas)?,
            None => *new = Some(self.create_new(next_revision, self.replicas)?),
        }
        Ok(())
    }

    /// Deletes old ReplicaSets scaled to zero beyond the revision history limit.
    fn clean_up(&self, olds: &[Value]) {
        let limit = self.d["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&Value> = olds
            .iter()
            .filter(|rs| replicas(rs) == 0 && status_of(rs, "replicas") == 0)
            .filter(|rs| rs["metadata"].get("deletionTimestamp").is_none())
            .collect();
        if idle.len() <= limit {
            return;
        }
        idle.sort_by_key(|rs| revision(rs));
        for rs in idle.iter().take(idle.len() - limit) {
            let options = DeleteOptions {
                uid: rs["metadata"]["uid"].as_str().map(str::to_owned),
                ..DeleteOptions::default()
            };
            let _ = api::delete(&rs_ref(rs), &options);
        }
    }

    fn condition(
        &self,
        kind: &str,
        status: &str,
        reason: &str,
        message: String,
        keep_transition: bool,
    ) -> Value {
        let now = now_rfc3339();
        let previous = self.d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind);
        let transition = previous
            .filter(|p| p["status"] == status || keep_transition)
            .map(|p| p["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now));
        let unchanged = previous.is_some_and(|p| {
            p["status"] == status && p["reason"] == reason && p["message"] == message.as_str()
        });
        let updated = match previous {
            Some(p) if unchanged => p["lastUpdateTime"].clone(),
            _ => json!(now),
        };
        json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": updated, "lastTransitionTime": transition})
    }

    /// The status the ReplicaSets give, and when to look again (the progress deadline).
    fn status(&self, new: Option<&Value>, olds: &[Value]) -> (Value, Option<u64>) {
        let all: Vec<&Value> = new.into_iter().chain(olds.iter()).collect();
        let sum = |field: &str| all.iter().map(|rs| status_of(rs, field)).sum::<i64>();
        let (total, ready, available) = (
            sum("replicas"),
            sum("readyReplicas"),
            sum("availableReplicas"),
        );
        let updated = new.map_or(0, |rs| status_of(rs, "replicas"));
        let previous = &self.d["status"];
        let new_name = new.map(name_of).unwrap_or_default();
        let paused = self.d["spec"]["paused"] == true;
        let available_condition = if available >= self.replicas - self.max_unavailable {
            self.condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            )
        } else {
            self.condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            )
        };
        let complete = updated == self.replicas
            && total == self.replicas
            && available == self.replicas
            && new.is_some_and(|rs| replicas(rs) == self.replicas);
        let moved = previous["updatedReplicas"].as_i64().unwrap_or(0) != updated
            || previous["readyReplicas"].as_i64().unwrap_or(0) != ready
            || previous["availableReplicas"].as_i64().unwrap_or(0) != available
            || previous["replicas"].as_i64().unwrap_or(0) != total;
        let was = previous["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Progressing");
        let deadline = self.d["spec"]["progressDeadlineSeconds"]
            .as_i64()
            .unwrap_or(600);
        let mut recheck = None;
        let progressing = if paused {
            self.condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            )
        } else if complete {
            self.condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                true,
            )
        } else if let Some(message) = &self.created {
            self.condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                message.clone(),
                true,
            )
        } else if was.is_some_and(|c| c["reason"] == "DeploymentPaused") {
            self.condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                false,
            )
        } else if moved || was.is_none() {
            recheck = Some(deadline.max(1) as u64);
            self.condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                true,
            )
        } else {
            let last = was
                .and_then(|c| c["lastUpdateTime"].as_str())
                .and_then(parse_time)
                .unwrap_or_else(now);
            let left = last + deadline - now();
            if was.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") || left <= 0 {
                self.condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    false,
                )
            } else {
                recheck = Some(left as u64);
                was.cloned().unwrap_or(Value::Null)
            }
        };
        let mut status = json!({
            "observedGeneration": self.d["metadata"]["generation"],
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (self.replicas - available).max(0),
            "conditions": [available_condition, progressing],
        });
        if let Some(count) = previous.get("collisionCount") {
            status["collisionCount"] = count.clone();
        }
        (status, recheck)
    }
}

/// Whether the status written differs from the one computed (ignoring zero counts that the
/// server drops).
fn status_changed(old: &Value, new: &Value) -> bool {
    let fields = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
        "collisionCount",
        "conditions",
    ];
    fields.iter().any(|f| {
        let (a, b) = (
            old.get(*f).unwrap_or(&Value::Null),
            new.get(*f).unwrap_or(&Value::Null),
        );
        a != b && !(a.is_null() && *b == json!(0))
    })
}

impl Controller for DeploymentController {
    const NAME: &'static str = "deployment-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("apps/v1", "Deployment")
            .owns("apps/v1", "ReplicaSet")
            .watch(Watch::new(
                "apps/v1",
                "ReplicaSet",
                KeyMapping::SelectedBy("spec.selector".into()),
            ))
            .watch(Watch::new("v1", "Pod", KeyMapping::Custom))
            .workers(5)
    }

    /// A pod concerns the Deployment owning its ReplicaSet (Recreate waits for old pods).
    fn keys_for(&mut self, _watch: u32, object: &str) -> Vec<ObjectRef> {
        let Ok(pod) = parse(object) else {
            return Vec::new();
        };
        let Some(owner) = controller_ref(&pod).filter(|o| o["kind"] == "ReplicaSet") else {
            return Vec::new();
        };
        let namespace = pod["metadata"]["namespace"].as_str();
        let rs = cache::get(
            "apps/v1",
            "ReplicaSet",
            namespace,
            owner["name"].as_str().unwrap_or_default(),
        )
        .ok()
        .flatten()
        .and_then(|rs| parse(&rs).ok());
        rs.as_ref()
            .and_then(controller_ref)
            .filter(|o| o["kind"] == "Deployment")
            .map(|o| {
                vec![ObjectRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    namespace: namespace.map(str::to_owned),
                    name: o["name"].as_str().unwrap_or_default().into(),
                }]
            })
            .unwrap_or_default()
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(d) = cache::get("apps/v1", "Deployment", key.namespace.as_deref(), &key.name)
            .map_err(|s| failed("reading the deployment", s))?
        else {
            return Ok(None);
        };
        let d = parse(&d)?;
        if d["metadata"].get("deletionTimestamp").is_some() {
            return Ok(None);
        }
        let mut rollout = Rollout::new(d)?;
        let selector = match selector_string(&rollout.d["spec"]["selector"]) {
            Ok(selector) => selector,
            Err(error) => {
                rollout.event(
                    "Warning",
                    "SelectingAll",
                    format!("This deployment's selector is invalid: {error}"),
                );
                return Ok(None);
            }
        };
        let claim = claim::Claim {
            owner: &rollout.d,
            api_version: "apps/v1",
            kind: "ReplicaSet",
            selector: &selector,
        };
        let owned = claim.run(|_| true, |_| Ok(()))?;
        let template = without_hash(&rollout.d["spec"]["template"]);
        let (mut news, mut olds): (Vec<Value>, Vec<Value>) = owned
            .into_iter()
            .partition(|rs| without_hash(&rs["spec"]["template"]) == template);
        // Of several matching the template, the oldest is the new one; the rest are old.
        news.sort_by_key(created);
        let mut new = (!news.is_empty()).then(|| news.remove(0));
        olds.extend(news);
        let max_old_revision = olds.iter().map(revision).max().unwrap_or(0);
        let next_revision = max_old_revision + 1;
        // A template that came back (a rollback) makes its ReplicaSet the newest revision.
        if let Some(rs) = &mut new
            && revision(rs) <= max_old_revision
        {
            let mut updated = rs.clone();
            if !updated["metadata"]["annotations"].is_object() {
                updated["metadata"]["annotations"] = json!({});
            }
            updated["metadata"]["annotations"][REVISION] = json!(next_revision.to_string());
            *rs = parse(
                &api::update(&updated.to_string()).map_err(|s| failed("updating a revision", s))?,
            )?;
        }
        // The new ReplicaSet carries the Deployment's annotations (a change-cause among them).
        if let Some(rs) = &mut new {
            let mut wanted: Map<String, Value> = rs["metadata"]["annotations"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut changed = false;
            for (k, v) in rollout.d["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if !NOT_COPIED.contains(&k.as_str()) && wanted.get(k) != Some(v) {
                    wanted.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
            if changed {
                let mut updated = rs.clone();
                updated["metadata"]["annotations"] = Value::Object(wanted);
                *rs = parse(
                    &api::update(&updated.to_string())
                        .map_err(|s| failed("annotating the replica set", s))?,
                )?;
            }
        }
        let scaling = new
            .iter()
            .chain(olds.iter())
            .filter(|rs| replicas(rs) > 0)
            .any(|rs| {
                rs["metadata"]["annotations"][DESIRED].as_str()
                    != Some(&rollout.replicas.to_string())
            });
        let paused = rollout.d["spec"]["paused"] == true;
        if scaling && (paused || new.is_some()) {
            rollout.scale_proportionally(&mut new, &mut olds)?;
        } else if !paused {
            if rollout.d["spec"]["strategy"]["type"] == "Recreate" {
                rollout.recreate(&mut new, &mut olds, next_revision)?;
            } else {
                rollout.rolling(&mut new, &mut olds, next_revision)?;
            }
        }
        rollout.clean_up(&olds);
        // The Deployment carries its newest revision.
        if let Some(rs) = &new {
            let current = rollout.d["metadata"]["annotations"][REVISION]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let wanted = revision(rs).to_string();
            if current != wanted {
                let mut d = rollout.d.clone();
                if !d["metadata"]["annotations"].is_object() {
                    d["metadata"]["annotations"] = json!({});
                }
                d["metadata"]["annotations"][REVISION] = json!(wanted);
                rollout.d = parse(
                    &api::update(&d.to_string())
                        .map_err(|s| failed("recording the revision", s))?,
                )?;
            }
        }
        let (status, recheck) = rollout.status(new.as_ref(), &olds);
        if status_changed(&rollout.d["status"], &status) {
            let mut d = rollout.d.clone();
            d["status"] = status;
            api::update_status(&d.to_string()).map_err(|s| failed("writing the status", s))?;
        }
        Ok(recheck.map(Duration::from_secs))
    }
}

flotilla_sdk::export_controller!(DeploymentController);
