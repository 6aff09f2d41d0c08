//! A reconcile of a StatefulSet against the host: claims through the cache, revisions and
//! pod writes through the API server, in the steps `plan` decides, then the status.

use std::collections::HashSet;
use std::time::Duration;

use controller_common::claim::Claim;
use controller_common::history::{delete_revisions, update_revision};
use controller_common::{failed, now, object_ref, parse, selector_string};
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

use crate::plan::*;

#[derive(Debug)]
pub struct StatefulSetController;

/// The StatefulSet being reconciled.
struct StatefulSet<'a> {
    object: &'a Value,
    namespace: &'a str,
}

impl StatefulSet<'_> {
    fn event(&self, event_type: &str, reason: &str, message: String) {
        // An event that cannot be recorded is not worth failing the reconcile for.
        let _ = api::emit_event(&Event {
            regarding: object_ref(self.object),
            event_type: event_type.into(),
            reason: reason.into(),
            message,
        });
    }

    /// Records a pod write as Kubernetes does: `SuccessfulCreate` "create Pod web-0 in
    /// StatefulSet web successful", or `FailedCreate` with the error.
    fn pod_event(&self, verb: &str, pod: &str, outcome: &Result<(), Status>) {
        let set = name_of(self.object);
        let mut title = verb.to_owned();
        title[..1].make_ascii_uppercase();
        match outcome {
            Ok(()) => self.event(
                "Normal",
                &format!("Successful{title}"),
                format!("{verb} Pod {pod} in StatefulSet {set} successful"),
            ),
            Err(status) => self.event(
                "Warning",
                &format!("Failed{title}"),
                format!(
                    "{verb} Pod {pod} in StatefulSet {set} failed error: {}",
                    status.message
                ),
            ),
        }
    }

    fn create_pod(&self, pod: &Value) -> Result<(), String> {
        let outcome = api::create(&pod.to_string()).map(|_| ());
        self.pod_event("create", name_of(pod), &outcome);
        outcome.map_err(|s| failed(&format!("creating {}", name_of(pod)), s))
    }

    fn delete_pod(&self, pod: &Value) -> Result<(), String> {
        let options = DeleteOptions {
            uid: pod["metadata"]["uid"].as_str().map(str::to_owned),
            ..DeleteOptions::default()
        };
        let outcome = match api::delete(&object_ref(pod), &options) {
            Err(s) if s.code == 404 => return Ok(()),
            outcome => outcome,
        };
        self.pod_event("delete", name_of(pod), &outcome);
        outcome.map_err(|s| failed(&format!("deleting {}", name_of(pod)), s))
    }

    fn relabel(&self, pod: &Value, ordinal: i64) -> Result<(), String> {
        let patch = json!({"metadata": {"labels": {
            POD_NAME_LABEL: name_of(pod),
            POD_INDEX_LABEL: ordinal.to_string(),
        }}});
        let outcome =
            api::patch(&object_ref(pod), PatchType::Merge, &patch.to_string()).map(|_| ());
        self.pod_event("update", name_of(pod), &outcome);
        outcome.map_err(|s| failed(&format!("relabelling {}", name_of(pod)), s))
    }

    fn take(&self, step: &Step, current: &Value, update: &Value) -> Result<(), String> {
        match step {
            Step::Create { ordinal, revision } => {
                let revision = match revision {
                    Revision::Current => current,
                    Revision::Update => update,
                };
                let pod = new_pod(
                    self.object,
                    &template_of(revision),
                    *ordinal,
                    name_of(revision),
                );
                self.create_pod(&pod)
            }
            Step::Delete { pod, why } => {
                if *why == Why::Finished {
                    let (event_type, reason, state) = if pod["status"]["phase"] == "Failed" {
                        ("Warning", "RecreatingFailedPod", "failed")
                    } else {
                        ("Normal", "RecreatingTerminatedPod", "terminated")
                    };
                    self.event(
                        event_type,
                        reason,
                        format!(
                            "StatefulSet {}/{} is recreating {state} Pod {}",
                            self.namespace,
                            name_of(self.object),
                            name_of(pod)
                        ),
                    );
                }
                self.delete_pod(pod)
            }
            Step::Relabel { pod, ordinal } => self.relabel(pod, *ordinal),
        }
    }
}

impl Controller for StatefulSetController {
    const NAME: &'static str = "statefulset-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("apps/v1", "StatefulSet")
            .owns("v1", "Pod")
            .owns("apps/v1", "ControllerRevision")
            .watch(Watch::new(
                "v1",
                "Pod",
                KeyMapping::SelectedBy("spec.selector".into()),
            ))
            .workers(5)
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let Some(set) = cache::get(
            "apps/v1",
            "StatefulSet",
            key.namespace.as_deref(),
            &key.name,
        )
        .map_err(|s| failed("reading the stateful set", s))?
        else {
            // Gone: the garbage collector removes its pods and revisions.
            return Ok(None);
        };
        let set = parse(&set)?;
        if set["metadata"].get("deletionTimestamp").is_some() {
            return Ok(None);
        }
        let spec = Spec::of(&set)?;
        let selector =
            selector_string(&set["spec"]["selector"]).map_err(|e| format!("spec.selector: {e}"))?;
        let sts = StatefulSet {
            object: &set,
            namespace: set["metadata"]["namespace"].as_str().unwrap_or_default(),
        };

        let claim = |api_version, kind| Claim {
            owner: &set,
            api_version,
            kind,
            selector: &selector,
        };
        let mut revisions = claim("apps/v1", "ControllerRevision").run(|_| true, |_| Ok(()))?;
        sort_revisions(&mut revisions);
        let mut collision_count = set["status"]["collisionCount"].as_i64().unwrap_or(0);
        let update = update_revision(&set, &revisions, &mut collision_count)?;
        let current = revisions
            .iter()
            .find(|r| set["status"]["currentRevision"] == name_of(r))
            .unwrap_or(&update);

        let pods = claim("v1", "Pod").run(
            |pod| ordinal_of(&spec.name, name_of(pod)).is_some(),
            |_| Ok(()),
        )?;
        let now = now();
        let taken = plan(&spec, &pods, name_of(&update), now)
            .iter()
            .try_for_each(|step| sts.take(step, current, &update));

        let (status, next) = status(
            &spec,
            &pods,
            name_of(current),
            name_of(&update),
            collision_count,
            now,
        );
        if status_changed(&set["status"], &status) {
            let mut written = set.clone();
            for (field, value) in status.as_object().into_iter().flatten() {
                written["status"][field] = value.clone();
            }
            api::update_status(&written.to_string())
                .map_err(|s| failed("writing the status", s))?;
        }
        taken?;
        let live: HashSet<&str> = [
            status["currentRevision"].as_str().unwrap_or_default(),
            name_of(&update),
        ]
        .into_iter()
        .chain(pods.iter().filter_map(revision_of))
        .collect();
        delete_revisions(&history_to_prune(
            &revisions,
            &live,
            spec.revision_history_limit,
        ));
        Ok(next.map(|seconds| Duration::from_secs(seconds as u64)))
    }
}

flotilla_sdk::export_controller!(StatefulSetController);
