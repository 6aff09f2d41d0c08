//! The Job controller, as Kubernetes' has it: a Job runs pods of its template until enough
//! of them succeed, or gives up.
//!
//! - **Pods**: up to `parallelism` at once, no more than the completions still missing; with
//!   `completionMode: Indexed` one pod per index not yet completed, carrying its index (the
//!   `batch.kubernetes.io/job-completion-index` annotation and label, `JOB_COMPLETION_INDEX`
//!   in every container, hostname `<job>-<index>`). A failed pod is replaced after a doubling
//!   back-off (10 s to 6 min).
//! - **Exactly-once counting**: every pod carries the `batch.kubernetes.io/job-tracking`
//!   finalizer. A finished pod is first recorded in `status.uncountedTerminatedPods`, then its
//!   finalizer is removed, then it moves into `succeeded`/`failed`; a pod deleted before it
//!   finished counts as failed. Pods the controller deletes itself lose the finalizer first and
//!   are not counted. Orphaned pods (their Job gone) are released from the finalizer.
//! - **Outcomes**: `Complete` once `completions` pods succeeded (a Job without completions: once
//!   one succeeded and none is left running); `Failed` with `BackoffLimitExceeded` past
//!   `backoffLimit` failures (container restarts count with `restartPolicy: OnFailure`) or
//!   `DeadlineExceeded` past `activeDeadlineSeconds`. `SuccessCriteriaMet` / `FailureTarget`
//!   come first, while the remaining pods are stopped.
//! - **Suspend** deletes the running pods and resumes with a new start time.
//! - **ttlSecondsAfterFinished** deletes a finished Job (and, in the background, its pods).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use controller_common::*;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

/// The finalizer that keeps a pod until the Job has counted it.
const TRACKING: &str = "batch.kubernetes.io/job-tracking";
/// The annotation and label holding an Indexed Job pod's index.
const INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The label naming a pod's Job (set by the API server's defaults).
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Most pods created or deleted in one reconcile.
const BURST: usize = 500;

#[derive(Debug)]
pub struct JobController;

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or_default()
}

fn pod_ref(pod: &Value) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: pod["metadata"]["namespace"].as_str().map(str::to_owned),
        name: name_of(pod).to_owned(),
    }
}

fn event(job: &Value, event_type: &str, reason: &str, message: &str) {
    // An event that cannot be recorded is not worth failing the reconcile for.
    let _ = api::emit_event(&Event {
        regarding: object_ref(job),
        event_type: event_type.into(),
        reason: reason.into(),
        message: message.into(),
    });
}

/// Takes the tracking finalizer off a pod; a pod gone or changed meanwhile is looked at again
/// on its next event.
fn release_tracking(pod: &Value) -> Result<(), String> {
    let Some(patch) = remove_finalizer_patch(pod, TRACKING) else {
        return Ok(());
    };
    match api::patch(&pod_ref(pod), PatchType::Json, &patch) {
        Ok(_) => Ok(()),
        Err(s) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(s) => Err(failed("removing the tracking finalizer", s)),
    }
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

fn deleting(object: &Value) -> bool {
    object["metadata"].get("deletionTimestamp").is_some()
}

/// How a tracked pod ended, if it did: succeeded, or failed (also when deleted unfinished).
fn outcome(pod: &Value) -> Option<bool> {
    match phase(pod) {
        "Succeeded" => Some(true),
        "Failed" => Some(false),
        _ if deleting(pod) => Some(false),
        _ => None,
    }
}

fn index_of(pod: &Value) -> Option<u32> {
    pod["metadata"]["annotations"][INDEX].as_str()?.parse().ok()
}

/// When the pod's last container stopped (seconds since the epoch).
fn finished_at(pod: &Value) -> Option<i64> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .filter_map(|c| c["state"]["terminated"]["finishedAt"].as_str())
        .filter_map(parse_time)
        .max()
}

fn uid_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// What the Job's pods and its recorded status add up to.
#[derive(Debug, Default)]
struct Tally {
    /// Pods that run and are not being deleted.
    active: Vec<Value>,
    ready: usize,
    terminating: usize,
    /// Finished pods recorded but not yet in the counts (their finalizer may still be on).
    uncounted_succeeded: BTreeSet<String>,
    uncounted_failed: BTreeSet<String>,
    succeeded: i64,
    failed: i64,
    completed_indexes: BTreeSet<u32>,
    /// Whether the recorded status changes.
    changed: bool,
    /// When the latest failure happened, if any pod still shows it.
    last_failure: Option<i64>,
}

impl Tally {
    /// Moves the recorded uncounted pods whose finalizer is gone into the counts, and records
    /// pods that finished since.
    fn of(job: &Value, pods: &[Value], indexed: bool, completions: Option<i64>) -> Self {
        let status = &job["status"];
        let mut tally = Tally {
            succeeded: status["succeeded"].as_i64().unwrap_or(0),
            failed: status["failed"].as_i64().unwrap_or(0),
            uncounted_succeeded: uid_set(&status["uncountedTerminatedPods"]["succeeded"]),
            uncounted_failed: uid_set(&status["uncountedTerminatedPods"]["failed"]),
            completed_indexes: parse_indexes(status["completedIndexes"].as_str().unwrap_or("")),
            ..Tally::default()
        };
        let tracked: HashSet<&str> = pods
            .iter()
            .filter(|p| has_finalizer(p, TRACKING))
            .map(uid_of)
            .collect();
        let before = (
            tally.uncounted_succeeded.len(),
            tally.uncounted_failed.len(),
        );
        tally.uncounted_succeeded.retain(|uid| {
            let keep = tracked.contains(uid.as_str());
            if !keep && !indexed {
                tally.succeeded += 1;
            }
            keep
        });
        tally.uncounted_failed.retain(|uid| {
            let keep = tracked.contains(uid.as_str());
            if !keep {
                tally.failed += 1;
            }
            keep
        });
        tally.changed |= before
            != (
                tally.uncounted_succeeded.len(),
                tally.uncounted_failed.len(),
            );
        for pod in pods {
            let tracking = has_finalizer(pod, TRACKING);
            match outcome(pod) {
                None => {
                    tally.ready += usize::from(is_ready(pod));
                    tally.active.push(pod.clone());
                }
                Some(succeeded) => {
                    if deleting(pod) && !matches!(phase(pod), "Succeeded" | "Failed") {
                        tally.terminating += 1;
                    }
                    if !succeeded {
                        let at = finished_at(pod).unwrap_or_else(now);
                        tally.last_failure = tally.last_failure.max(Some(at));
                    }
                    let uid = uid_of(pod).to_owned();
                    let recorded = tally.uncounted_succeeded.contains(&uid)
                        || tally.uncounted_failed.contains(&uid);
                    if !tracking || recorded {
                        continue;
                    }
                    tally.changed = true;
                    if succeeded {
                        if let Some(index) = index_of(pod)
                            .filter(|i| indexed && i64::from(*i) < completions.unwrap_or(0))
                        {
                            tally.completed_indexes.insert(index);
                        }
                        tally.uncounted_succeeded.insert(uid);
                    } else {
                        tally.uncounted_failed.insert(uid);
                    }
                }
            }
        }
        if indexed {
            tally.succeeded = tally.completed_indexes.len() as i64;
        }
        tally
    }

    fn succeeded_total(&self, indexed: bool) -> i64 {
        if indexed {
            self.succeeded
        } else {
            self.succeeded + self.uncounted_succeeded.len() as i64
        }
    }

    fn failed_total(&self) -> i64 {
        self.failed + self.uncounted_failed.len() as i64
    }

    /// Whether every pod that finished is counted and none runs: the Job may be closed.
    fn settled(&self) -> bool {
        self.active.is_empty()
            && self.terminating == 0
            && self.uncounted_succeeded.is_empty()
            && self.uncounted_failed.is_empty()
    }
}

/// Why a Job ends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure { reason: String, message: String },
}

impl Verdict {
    fn failure(reason: &str, message: &str) -> Self {
        Verdict::Failure {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The verdict a previous reconcile reached, from its interim condition.
    fn recorded(job: &Value) -> Option<Self> {
        if true_condition(job, "SuccessCriteriaMet").is_some() {
            return Some(Verdict::Success);
        }
        true_condition(job, "FailureTarget").map(|c| {
            Verdict::failure(
                c["reason"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default(),
            )
        })
    }
}

/// A Job being reconciled.
struct Sync<'a> {
    job: &'a Value,
    spec: &'a Value,
    indexed: bool,
    completions: Option<i64>,
    parallelism: i64,
}

impl<'a> Sync<'a> {
    fn new(job: &'a Value) -> Self {
        let spec = &job["spec"];
        Sync {
            job,
            spec,
            indexed: spec["completionMode"] == "Indexed",
            completions: spec["completions"].as_i64(),
            parallelism: spec["parallelism"].as_i64().unwrap_or(1),
        }
    }

    fn namespace(&self) -> &str {
        self.job["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    /// Why the Job ends now, if it does.
    fn verdict(&self, tally: &Tally) -> Option<Verdict> {
        if let Some(recorded) = Verdict::recorded(self.job) {
            return Some(recorded);
        }
        let backoff_limit = self.spec["backoffLimit"].as_i64().unwrap_or(6);
        if tally.failed_total() > backoff_limit || self.restarts_past_limit(tally, backoff_limit) {
            return Some(Verdict::failure(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
        }
        if self.deadline_left().is_some_and(|left| left <= 0) {
            return Some(Verdict::failure(
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        }
        let succeeded = tally.succeeded_total(self.indexed);
        let done = match self.completions {
            Some(completions) => succeeded >= completions,
            None => succeeded > 0 && tally.active.is_empty(),
        };
        done.then_some(Verdict::Success)
    }

    /// With `restartPolicy: OnFailure`, the running pods' container restarts count as failures.
    fn restarts_past_limit(&self, tally: &Tally, backoff_limit: i64) -> bool {
        if self.spec["template"]["spec"]["restartPolicy"] != "OnFailure" {
            return false;
        }
        let restarts: i64 = tally
            .active
            .iter()
            .flat_map(|p| {
                ["initContainerStatuses", "containerStatuses"]
                    .into_iter()
                    .flat_map(move |field| p["status"][field].as_array().into_iter().flatten())
            })
            .filter_map(|c| c["restartCount"].as_i64())
            .sum();
        if backoff_limit == 0 {
            restarts > 0
        } else {
            restarts >= backoff_limit
        }
    }

    /// Seconds left before `activeDeadlineSeconds` runs out.
    fn deadline_left(&self) -> Option<i64> {
        let deadline = self.spec["activeDeadlineSeconds"].as_i64()?;
        if self.spec["suspend"] == true {
            return None;
        }
        let start = self.job["status"]["startTime"]
            .as_str()
            .and_then(parse_time)?;
        Some(start + deadline - now())
    }

    /// The pod template with the Job's metadata; an Indexed pod also carries its index.
    fn pod(&self, index: Option<u32>) -> Value {
        let name = name_of(self.job);
        let template = &self.spec["template"];
        let mut metadata = json!({
            "generateName": match index {
                Some(index) => format!("{name}-{index}-"),
                None => format!("{name}-"),
            },
            "namespace": self.namespace(),
            "ownerReferences": [owner_reference(self.job)],
            "finalizers": [TRACKING],
            "labels": template["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
            "annotations": template["metadata"]["annotations"].as_object().cloned().unwrap_or_default(),
        });
        let mut spec = template["spec"].clone();
        if let Some(index) = index {
            metadata["annotations"][INDEX] = json!(index.to_string());
            metadata["labels"][INDEX] = json!(index.to_string());
            if spec["hostname"].is_null() {
                spec["hostname"] = json!(format!("{name}-{index}"));
            }
            for field in ["initContainers", "containers"] {
                for container in spec[field].as_array_mut().into_iter().flatten() {
                    let variable =
                        json!({"name": "JOB_COMPLETION_INDEX", "value": index.to_string()});
                    match container["env"].as_array_mut() {
                        Some(env) => env.push(variable),
                        None => container["env"] = json!([variable]),
                    }
                }
            }
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }

    /// Creates pods for `indexes` (Indexed) or `count` pods, in slow-start batches; the first
    /// failure stops the rest.
    fn create(&self, count: usize, indexes: Vec<u32>) -> Result<(), String> {
        let mut bodies: Vec<String> = if self.indexed {
            indexes
                .into_iter()
                .take(count)
                .map(|i| self.pod(Some(i)).to_string())
                .collect()
        } else {
            vec![self.pod(None).to_string(); count]
        };
        bodies.truncate(BURST);
        let mut batch = 1;
        let mut bodies = bodies.into_iter();
        loop {
            let taken: Vec<String> = bodies.by_ref().take(batch).collect();
            if taken.is_empty() {
                return Ok(());
            }
            for body in taken {
                match api::create(&body) {
                    Ok(made) => {
                        let made = parse(&made).unwrap_or_default();
                        let message = format!("Created pod: {}", name_of(&made));
                        event(self.job, "Normal", "SuccessfulCreate", &message);
                    }
                    Err(status) => {
                        let message = format!("Error creating: {}", status.message);
                        event(self.job, "Warning", "FailedCreate", &message);
                        return Err(message);
                    }
                }
            }
            batch *= 2;
        }
    }

    /// Stops pods the Job no longer wants; they are not counted as failures.
    fn delete(&self, pods: &[Value]) -> Result<(), String> {
        for pod in pods {
            release_tracking(pod)?;
            let options = DeleteOptions {
                uid: Some(uid_of(pod).to_owned()),
                ..DeleteOptions::default()
            };
            match api::delete(&pod_ref(pod), &options) {
                Ok(()) => {
                    let message = format!("Deleted pod: {}", name_of(pod));
                    event(self.job, "Normal", "SuccessfulDelete", &message);
                }
                Err(s) if s.code == 404 => {}
                Err(s) => return Err(failed("deleting a pod", s)),
            }
        }
        Ok(())
    }

    /// Brings the running pods to what the Job wants; when to look again for a back-off.
    fn manage(&self, tally: &Tally) -> Result<Option<Duration>, String> {
        if self.spec["suspend"] == true {
            return self.delete(&tally.active).map(|_| None);
        }
        let active = tally.active.len() as i64;
        let succeeded = tally.succeeded_total(self.indexed);
        let wanted = match self.completions {
            // A work queue: once one pod succeeded, no new ones start.
            None if succeeded > 0 => active.min(self.parallelism),
            None => self.parallelism,
            Some(completions) => self.parallelism.min(completions - succeeded),
        }
        .max(0);
        if active > wanted {
            let mut pods = tally.active.clone();
            pods.sort_by_key(deletion_rank);
            let excess = ((active - wanted) as usize).min(BURST);
            return self.delete(&pods[..excess]).map(|_| None);
        }
        if active == wanted {
            return Ok(None);
        }
        let wait = failure_backoff(tally.failed_total().clamp(0, 32) as u32);
        if let Some(last) = tally.last_failure {
            let ready_at = last + wait.as_secs() as i64;
            if ready_at > now() {
                return Ok(Some(Duration::from_secs((ready_at - now()) as u64)));
            }
        }
        let missing = Vec::from_iter(self.missing_indexes(tally));
        self.create((wanted - active) as usize, missing)?;
        Ok(None)
    }

    /// Indexes neither completed nor running, lowest first.
    fn missing_indexes(&self, tally: &Tally) -> impl Iterator<Item = u32> {
        let running: HashSet<u32> = tally.active.iter().filter_map(index_of).collect();
        let completions = self.completions.unwrap_or(0).clamp(0, u32::MAX as i64) as u32;
        let completed = tally.completed_indexes.clone();
        (0..completions).filter(move |i| !completed.contains(i) && !running.contains(i))
    }

    /// The status the tally gives.
    fn status(&self, tally: &Tally, conditions: Vec<Value>, start: Option<Value>) -> Value {
        let mut status = json!({
            "active": tally.active.len(),
            "ready": tally.ready,
            "terminating": tally.terminating,
            "succeeded": tally.succeeded,
            "failed": tally.failed,
            "uncountedTerminatedPods": {
                "succeeded": tally.uncounted_succeeded,
                "failed": tally.uncounted_failed,
            },
        });
        if self.indexed {
            status["completedIndexes"] = json!(format_indexes(&tally.completed_indexes));
        }
        if let Some(completion) = self.job["status"].get("completionTime") {
            status["completionTime"] = completion.clone();
        }
        if let Some(start) = start {
            status["startTime"] = start;
        }
        if !conditions.is_empty() {
            status["conditions"] = json!(conditions);
        }
        status
    }
}

impl JobController {
    /// Releases the pods named after Job `name` from the tracking finalizer, except those the
    /// Job of uid `current` controls: their Job is gone.
    fn release_orphans(
        &self,
        namespace: Option<&str>,
        name: &str,
        current: Option<&str>,
    ) -> Result<(), String> {
        let selector = format!("{JOB_NAME}={name}");
        for pod in
            cache::list("v1", "Pod", namespace, &selector).map_err(|s| failed("listing pods", s))?
        {
            let pod = parse(&pod)?;
            let controller = controller_ref(&pod).and_then(|c| c["uid"].as_str());
            if current.is_none() || controller != current {
                release_tracking(&pod)?;
            }
        }
        Ok(())
    }

    /// Deletes a finished Job once `ttlSecondsAfterFinished` passed; until when otherwise.
    fn expire(&self, job: &Value) -> Result<Option<Duration>, String> {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            return Ok(None);
        };
        let finished = ["Complete", "Failed"]
            .iter()
            .filter_map(|kind| true_condition(job, kind))
            .filter_map(|c| c["lastTransitionTime"].as_str().and_then(parse_time))
            .max()
            .unwrap_or_else(now);
        let left = finished + ttl - now();
        if left > 0 {
            return Ok(Some(Duration::from_secs(left as u64)));
        }
        let options = DeleteOptions {
            uid: Some(uid_of(job).to_owned()),
            propagation: Some("Background".into()),
            ..DeleteOptions::default()
        };
        match api::delete(&object_ref(job), &options) {
            Ok(()) | Err(Status { code: 404, .. }) => Ok(None),
            Err(s) => Err(failed("deleting the expired job", s)),
        }
    }
}

/// The earliest of two optional delays.
fn sooner(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Controller for JobController {
    const NAME: &'static str = "job-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("batch/v1", "Job")
            .owns("v1", "Pod")
            // Pods whose Job went, or that were orphaned, still need their finalizer removed.
            .watch(Watch::new("v1", "Pod", KeyMapping::Custom).with_label_selector(JOB_NAME))
            .workers(5)
    }

    fn keys_for(&mut self, _watch: u32, object: &str) -> Vec<ObjectRef> {
        let Ok(pod) = parse(object) else {
            return Vec::new();
        };
        if !has_finalizer(&pod, TRACKING) {
            return Vec::new();
        }
        let Some(job) = pod["metadata"]["labels"][JOB_NAME].as_str() else {
            return Vec::new();
        };
        vec![ObjectRef {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            namespace: pod["metadata"]["namespace"].as_str().map(str::to_owned),
            name: job.to_owned(),
        }]
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let namespace = key.namespace.as_deref();
        let Some(job) = cache::get("batch/v1", "Job", namespace, &key.name)
            .map_err(|s| failed("reading the job", s))?
        else {
            self.release_orphans(namespace, &key.name, None)?;
            return Ok(None);
        };
        let job = parse(&job)?;
        let sync = Sync::new(&job);
        let selector =
            selector_string(&job["spec"]["selector"]).map_err(|e| format!("spec.selector: {e}"))?;
        let claim = claim::Claim {
            owner: &job,
            api_version: "v1",
            kind: "Pod",
            selector: &selector,
        };
        let pods = claim.run(|pod| outcome(pod).is_none(), release_tracking)?;
        // Pods of an earlier Job of this name: nothing will count them any more.
        self.release_orphans(namespace, &key.name, Some(uid_of(&job)))?;
        let finished = ["Complete", "Failed"]
            .iter()
            .any(|kind| true_condition(&job, kind).is_some());
        if deleting(&job) {
            // Being deleted: its pods go with it, nothing counts them any more.
            for pod in &pods {
                release_tracking(pod)?;
            }
            return Ok(None);
        }
        let tally = Tally::of(&job, &pods, sync.indexed, sync.completions);
        let mut conditions: Vec<Value> = job["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut start = job["status"].get("startTime").cloned();
        let mut completion = None;
        let mut requeue = None;
        if !finished {
            match sync.verdict(&tally) {
                Some(verdict) => {
                    let (interim, last, reason, message) = match &verdict {
                        Verdict::Success => (
                            "SuccessCriteriaMet",
                            "Complete",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        ),
                        Verdict::Failure { reason, message } => {
                            ("FailureTarget", "Failed", reason.as_str(), message.as_str())
                        }
                    };
                    if Verdict::recorded(&job).is_none() {
                        set_condition(&mut conditions, interim, "True", reason, message);
                        if let Verdict::Failure { .. } = verdict {
                            event(&job, "Warning", reason, message);
                        }
                    }
                    sync.delete(&tally.active)?;
                    if tally.settled() {
                        set_condition(&mut conditions, last, "True", reason, message);
                        if verdict == Verdict::Success {
                            completion = Some(json!(now_rfc3339()));
                            event(&job, "Normal", "Completed", "Job completed");
                        }
                    }
                }
                None => {
                    let suspended = job["spec"]["suspend"] == true;
                    let was_suspended = true_condition(&job, "Suspended").is_some();
                    if suspended && !was_suspended {
                        set_condition(
                            &mut conditions,
                            "Suspended",
                            "True",
                            "JobSuspended",
                            "Job suspended",
                        );
                        event(&job, "Normal", "Suspended", "Job suspended");
                    } else if !suspended && was_suspended {
                        set_condition(
                            &mut conditions,
                            "Suspended",
                            "False",
                            "JobResumed",
                            "Job resumed",
                        );
                        event(&job, "Normal", "Resumed", "Job resumed");
                        start = Some(json!(now_rfc3339()));
                    }
                    if !suspended && start.is_none() {
                        start = Some(json!(now_rfc3339()));
                    }
                    requeue = sync.manage(&tally)?;
                    let deadline = sync
                        .deadline_left()
                        .map(|left| Duration::from_secs(left.max(0) as u64 + 1));
                    requeue = sooner(requeue, deadline);
                }
            }
        }
        let mut status = sync.status(&tally, conditions, start);
        if let Some(completion) = completion {
            status["completionTime"] = completion;
        }
        let unchanged = !tally.changed
            && [
                "active",
                "ready",
                "terminating",
                "startTime",
                "completionTime",
                "conditions",
                "completedIndexes",
            ]
            .iter()
            .all(|field| {
                let old = job["status"].get(*field).unwrap_or(&Value::Null);
                let new = status.get(*field).unwrap_or(&Value::Null);
                old == new || (old.is_null() && *new == json!(0))
            });
        if !unchanged {
            let mut updated = job.clone();
            updated["status"] = status;
            api::update_status(&updated.to_string())
                .map_err(|s| failed("writing the status", s))?;
        }
        // Recorded: the finished pods may go.
        for pod in pods.iter().filter(|p| {
            let uid = uid_of(p);
            tally.uncounted_succeeded.contains(uid) || tally.uncounted_failed.contains(uid)
        }) {
            release_tracking(pod)?;
        }
        if finished {
            return self.expire(&job);
        }
        Ok(requeue)
    }
}

flotilla_sdk::export_controller!(JobController);
