//! The CronJob controller, as Kubernetes' (v2) has it: a CronJob makes a Job from its
//! `spec.jobTemplate` at each time its `spec.schedule` names, in `spec.timeZone` (UTC when
//! unset). It owns the Jobs it makes and the CronJob's status; it must not touch the Jobs' pods
//! (the Job controller's) nor anything it does not own.
//!
//! - **Scheduling** ([`scheduling`]): at each reconcile, the latest scheduled time since
//!   `status.lastScheduleTime` (or the creation) up to now is started, once: the Job is named
//!   by the minute (`<cronjob>-<minutes since the epoch>`), so a 409 means it was made already.
//!   More than 100 missed times warn `TooManyMissedTimes`; one older than
//!   `startingDeadlineSeconds` is skipped (`MissSchedule`). Times a zone skips never come,
//!   times it repeats come twice, as robfig/cron has it. `suspend` makes nothing. An unknown
//!   zone (`UnknownTimeZone`) or schedule stops scheduling until the spec changes.
//! - **Concurrency**: `Allow` runs Jobs side by side; `Forbid` skips a time while a Job is
//!   active (`JobAlreadyActive`), starting it once none is, within the deadline; `Replace`
//!   deletes the active Jobs (in the background) first.
//! - **Jobs** ([`jobs`]): the template's labels and annotations, the
//!   `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation, the CronJob as controller.
//!   Finished Jobs (`Complete` or `Failed`) beyond `successfulJobsHistoryLimit` (3) and
//!   `failedJobsHistoryLimit` (1) are deleted oldest first.
//! - **Status**: `active` (references to the running Jobs it made), `lastScheduleTime`,
//!   `lastSuccessfulTime` (the latest completion). A running Job it owns but did not list
//!   (`kubectl create job --from=cronjob/...`) is reported `UnexpectedJob` and not listed.
//! - Every reconcile asks to be called again just after the next scheduled time, so no time
//!   waits on an event.

#[cfg(target_arch = "wasm32")]
mod controller;
pub mod jobs;
pub mod scheduling;
