//! The reconcile: reads a CronJob and its Jobs from the cache, and writes Jobs, deletions,
//! Events and the status through the API.

use std::time::Duration;

use controller_common::{controller_ref, failed, now, object_ref, parse, parse_time};
use flotilla_cron::Schedule;
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use serde_json::{Value, json};

use crate::jobs::{beyond_limit, job_from_template, job_name, job_reference, outcome};
use crate::scheduling::{Activations, Due, rfc1123z, rfc3339, time_zone};

/// How long after a scheduled time the CronJob is looked at again, for clock skew.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct CronJobController;

impl Controller for CronJobController {
    const NAME: &'static str = "cronjob-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn register(&self) -> Registration {
        Registration::new("batch/v1", "CronJob").owns("batch/v1", "Job")
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let namespace = key.namespace.as_deref();
        let Some(cron_job) = cache::get("batch/v1", "CronJob", namespace, &key.name)
            .map_err(|s| failed("reading the cronjob", s))?
        else {
            return Ok(None);
        };
        let cron_job = parse(&cron_job)?;
        let uid = &cron_job["metadata"]["uid"];
        let mut jobs = Vec::new();
        for job in
            cache::list("batch/v1", "Job", namespace, "").map_err(|s| failed("listing jobs", s))?
        {
            let job = parse(&job)?;
            if controller_ref(&job).is_some_and(|owner| owner["uid"] == *uid) {
                jobs.push(job);
            }
        }
        let mut sync = Sync::new(&cron_job);
        sync.track(&jobs);
        sync.prune(&jobs);
        let scheduled = sync.schedule();
        sync.write_status()?;
        scheduled
    }
}

/// One reconcile of a CronJob, and its status as it goes.
struct Sync<'a> {
    cron_job: &'a Value,
    status: CronJobStatus,
}

/// The status fields the controller writes.
#[derive(Clone, Debug, PartialEq)]
struct CronJobStatus {
    /// References to the running Jobs.
    active: Vec<Value>,
    last_schedule_time: Value,
    last_successful_time: Value,
}

impl CronJobStatus {
    fn read(status: &Value) -> Self {
        Self {
            active: status["active"].as_array().cloned().unwrap_or_default(),
            last_schedule_time: status["lastScheduleTime"].clone(),
            last_successful_time: status["lastSuccessfulTime"].clone(),
        }
    }

    /// As the API has it: empty fields left out.
    fn to_json(&self) -> Value {
        let mut status = json!({});
        if !self.active.is_empty() {
            status["active"] = json!(self.active);
        }
        for (field, value) in [
            ("lastScheduleTime", &self.last_schedule_time),
            ("lastSuccessfulTime", &self.last_successful_time),
        ] {
            if !value.is_null() {
                status[field] = value.clone();
            }
        }
        status
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn job_ref(namespace: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

/// How long until `instant`, and a little more.
fn until(instant: i64) -> Duration {
    let now = i128::from(flotilla_sdk::host::now());
    let at = i128::from(instant) * 1_000_000_000;
    Duration::from_nanos(u64::try_from(at - now).unwrap_or(0)) + NEXT_SCHEDULE_DELTA
}

impl<'a> Sync<'a> {
    fn new(cron_job: &'a Value) -> Self {
        Self {
            cron_job,
            status: CronJobStatus::read(&cron_job["status"]),
        }
    }

    fn spec(&self) -> &Value {
        &self.cron_job["spec"]
    }

    fn namespace(&self) -> Option<&str> {
        self.cron_job["metadata"]["namespace"].as_str()
    }

    fn event(&self, event_type: &str, reason: &str, message: String) {
        // An event that cannot be recorded is not worth failing the reconcile for.
        let _ = api::emit_event(&Event {
            regarding: object_ref(self.cron_job),
            event_type: event_type.into(),
            reason: reason.into(),
            message,
        });
    }

    fn is_active(&self, job: &Value) -> bool {
        self.status
            .active
            .iter()
            .any(|reference| reference["uid"] == job["metadata"]["uid"])
    }

    fn unlist(&mut self, uid: &Value) {
        self.status
            .active
            .retain(|reference| reference["uid"] != *uid);
    }

    /// Brings `active` and `lastSuccessfulTime` up to date with the Jobs.
    fn track(&mut self, jobs: &[Value]) {
        for job in jobs {
            let listed = self.is_active(job);
            match outcome(job) {
                None if !listed => self.event(
                    "Warning",
                    "UnexpectedJob",
                    format!(
                        "Saw a job that the controller did not create or forgot: {}",
                        name_of(job)
                    ),
                ),
                None => {}
                Some(condition) => {
                    if listed {
                        self.unlist(&job["metadata"]["uid"]);
                        self.event(
                            "Normal",
                            "SawCompletedJob",
                            format!(
                                "Saw completed job: {}, condition: {condition}",
                                name_of(job)
                            ),
                        );
                    }
                    let completion = &job["status"]["completionTime"];
                    let instant = |time: &Value| time.as_str().and_then(parse_time);
                    if condition == "Complete"
                        && instant(completion) > instant(&self.status.last_successful_time)
                    {
                        self.status.last_successful_time = completion.clone();
                    }
                }
            }
        }
        let missing: Vec<Value> = self
            .status
            .active
            .iter()
            .filter(|reference| {
                !jobs
                    .iter()
                    .any(|job| job["metadata"]["uid"] == reference["uid"])
            })
            .cloned()
            .collect();
        for reference in missing {
            self.unlist(&reference["uid"]);
            let name = reference["name"].as_str().unwrap_or_default();
            self.event(
                "Normal",
                "MissingJob",
                format!("Active job went missing: {name}"),
            );
        }
    }

    /// Deletes the oldest finished Jobs beyond the history limits.
    fn prune(&mut self, jobs: &[Value]) {
        for (condition, limit, default) in [
            ("Complete", "successfulJobsHistoryLimit", 3),
            ("Failed", "failedJobsHistoryLimit", 1),
        ] {
            let limit = self.spec()[limit].as_u64().unwrap_or(default);
            let finished = jobs
                .iter()
                .filter(|job| outcome(job) == Some(condition))
                .collect();
            for job in beyond_limit(finished, limit as usize) {
                self.delete(name_of(job), &job["metadata"]["uid"]);
            }
        }
    }

    /// Deletes a Job and its pods in the background; whether it is gone.
    fn delete(&mut self, name: &str, uid: &Value) -> bool {
        let options = DeleteOptions {
            uid: uid.as_str().map(str::to_owned),
            propagation: Some("Background".into()),
            ..DeleteOptions::default()
        };
        match api::delete(&job_ref(self.namespace(), name), &options) {
            Ok(()) => {
                self.event("Normal", "SuccessfulDelete", format!("Deleted job {name}"));
            }
            Err(Status { code: 404, .. }) => {}
            Err(status) => {
                self.event(
                    "Warning",
                    "FailedDelete",
                    format!("Deleted job: {}", status.message),
                );
                return false;
            }
        }
        self.unlist(uid);
        true
    }

    /// Starts the Job the schedule owes, if any; when to look again.
    fn schedule(&mut self) -> Result<Option<Duration>, String> {
        if self.cron_job["metadata"].get("deletionTimestamp").is_some() {
            return Ok(None);
        }
        let text = self.spec()["schedule"].as_str().unwrap_or_default();
        let schedule = match Schedule::parse(text) {
            Ok(schedule) => schedule,
            Err(error) => {
                let message = format!("unparseable schedule: {text:?} : {error}");
                self.event("Warning", "UnparseableSchedule", message);
                return Ok(None);
            }
        };
        let zone_name = schedule
            .time_zone
            .as_deref()
            .or(self.spec()["timeZone"].as_str());
        let zone = match time_zone(zone_name) {
            Ok(zone) => zone,
            Err(error) => {
                let name = zone_name.unwrap_or_default();
                let message = format!("invalid timeZone: {name:?}: {error}");
                self.event("Warning", "UnknownTimeZone", message);
                return Ok(None);
            }
        };
        let since = self
            .status
            .last_schedule_time
            .as_str()
            .or(self.cron_job["metadata"]["creationTimestamp"].as_str());
        let Some(since) = since.and_then(parse_time) else {
            return Err("the cronjob has no creationTimestamp".into());
        };
        let activations = Activations::new(&schedule.timing, zone, since);
        let now = now();
        let Some(next) = activations.next_after(now) else {
            let message =
                format!("invalid schedule: {text} : no time matches it within five years");
            self.event("Warning", "InvalidSchedule", message);
            return Ok(None);
        };
        let requeue = Some(until(next));
        if self.spec()["suspend"] == true {
            return Ok(requeue);
        }
        let starting_deadline = self.spec()["startingDeadlineSeconds"].as_i64();
        let at = match activations.due(now, starting_deadline) {
            Due::Nothing => return Ok(requeue),
            Due::TooLate { at } => {
                let message = format!("Missed scheduled time to start a job: {}", rfc1123z(at));
                self.event("Warning", "MissSchedule", message);
                return Ok(requeue);
            }
            Due::Start {
                at,
                too_many_missed,
            } => {
                if too_many_missed {
                    self.event(
                        "Warning",
                        "TooManyMissedTimes",
                        "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                    );
                }
                at
            }
        };
        let name = job_name(name_of(self.cron_job), at);
        let processed = self
            .status
            .active
            .iter()
            .any(|reference| reference["name"] == name)
            || self.status.last_schedule_time.as_str().and_then(parse_time) == Some(at);
        if processed {
            return Ok(requeue);
        }
        match self.spec()["concurrencyPolicy"].as_str() {
            Some("Forbid") if !self.status.active.is_empty() => {
                self.event(
                    "Normal",
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                );
                return Ok(requeue);
            }
            Some("Replace") => {
                for reference in self.status.active.clone() {
                    let active = reference["name"].as_str().unwrap_or_default();
                    if !self.delete(active, &reference["uid"]) {
                        return Err(format!("could not replace job {active}"));
                    }
                }
            }
            _ => {}
        }
        self.create(&name, at, zone)?;
        self.status.last_schedule_time = json!(rfc3339(at, chrono_tz::Tz::UTC));
        Ok(requeue)
    }

    /// Creates the Job of the scheduled time `at` and lists it as active. A Job of that name
    /// that exists already was made by an earlier reconcile whose status did not stick (it is
    /// listed if it still runs), or by someone else (it is left alone).
    fn create(&mut self, name: &str, at: i64, zone: chrono_tz::Tz) -> Result<(), String> {
        let job = job_from_template(self.cron_job, name, &rfc3339(at, zone));
        let created = match api::create(&job.to_string()) {
            Ok(created) => {
                self.event("Normal", "SuccessfulCreate", format!("Created job {name}"));
                parse(&created)?
            }
            Err(Status { code: 409, .. }) => {
                let existing = cache::get("batch/v1", "Job", self.namespace(), name)
                    .map_err(|s| failed("reading the job", s))?
                    .ok_or_else(|| format!("job {name} exists but is not in the cache yet"))?;
                let existing = parse(&existing)?;
                let ours = controller_ref(&existing)
                    .is_some_and(|owner| owner["uid"] == self.cron_job["metadata"]["uid"]);
                if !ours || self.is_active(&existing) || outcome(&existing).is_some() {
                    return Ok(());
                }
                existing
            }
            Err(status) => {
                let message = format!("Error creating job: {}", status.message);
                self.event("Warning", "FailedCreate", message);
                return Err(failed("creating a job", status));
            }
        };
        self.status.active.push(job_reference(&created));
        Ok(())
    }

    /// Writes the status, if it changed.
    fn write_status(&self) -> Result<(), String> {
        if CronJobStatus::read(&self.cron_job["status"]) == self.status {
            return Ok(());
        }
        let mut updated = self.cron_job.clone();
        updated["status"] = self.status.to_json();
        api::update_status(&updated.to_string())
            .map(|_| ())
            .map_err(|s| failed("writing the status", s))
    }
}

flotilla_sdk::export_controller!(CronJobController);
