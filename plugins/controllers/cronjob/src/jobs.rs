//! The Jobs a CronJob makes and keeps: their names and contents, how they finished, the
//! references `status.active` holds, and which finished ones the history limits delete.

use controller_common::{owner_reference, true_condition};
use serde_json::{Value, json};

/// The annotation holding a Job's scheduled time, RFC 3339 in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Kubernetes' name for the Job of a scheduled time: the CronJob's name and the minutes since
/// the epoch, so a scheduled time makes one Job however often it is reconciled.
pub fn job_name(cron_job: &str, scheduled: i64) -> String {
    format!("{cron_job}-{}", scheduled.div_euclid(60))
}

/// The Job of `spec.jobTemplate`, named `name`: the template's labels and annotations, the
/// scheduled time (already written in the zone), and the CronJob as its controller.
pub fn job_from_template(cron_job: &Value, name: &str, scheduled_timestamp: &str) -> Value {
    let template = &cron_job["spec"]["jobTemplate"];
    let mut annotations = template["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.to_owned(), json!(scheduled_timestamp));
    let mut metadata = json!({
        "name": name,
        "namespace": cron_job["metadata"]["namespace"],
        "annotations": annotations,
        "ownerReferences": [owner_reference(cron_job)],
    });
    if let Some(labels) = template["metadata"].get("labels") {
        metadata["labels"] = labels.clone();
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

/// How a Job finished: `Complete` or `Failed`, whichever condition is True.
pub fn outcome(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"]
        .into_iter()
        .find(|kind| true_condition(job, kind).is_some())
}

/// A Job as `status.active` refers to it.
pub fn job_reference(job: &Value) -> Value {
    let metadata = &job["metadata"];
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "namespace": metadata["namespace"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "resourceVersion": metadata["resourceVersion"],
    })
}

/// Of the finished Jobs of one outcome, those to delete so that `limit` remain: the oldest by
/// start time (names break ties; Jobs that never started count as the newest).
pub fn beyond_limit(mut finished: Vec<&Value>, limit: usize) -> Vec<&Value> {
    let excess = finished.len().saturating_sub(limit);
    finished.sort_by_key(|job| {
        let start = job["status"]["startTime"]
            .as_str()
            .and_then(controller_common::parse_time);
        (start.is_none(), start, job["metadata"]["name"].as_str())
    });
    finished.truncate(excess);
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron_job() -> Value {
        json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "report", "namespace": "team", "uid": "u-1"},
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {
                    "metadata": {"labels": {"app": "report"}, "annotations": {"note": "kept"}},
                    "spec": {"backoffLimit": 2, "template": {"spec": {"restartPolicy": "Never"}}},
                },
            },
        })
    }

    fn finished_job(name: &str, start: Option<&str>) -> Value {
        json!({
            "metadata": {"name": name},
            "status": {
                "startTime": start,
                "conditions": [{"type": "Complete", "status": "True"}],
            },
        })
    }

    #[test]
    fn a_scheduled_time_names_its_job_by_the_minute() {
        // 2026-01-10T10:01:00Z.
        assert_eq!(job_name("report", 1_768_039_260), "report-29467321");
        assert_eq!(job_name("report", 1_768_039_260 + 59), "report-29467321");
        assert_eq!(job_name("report", 1_768_039_260 + 60), "report-29467322");
    }

    #[test]
    fn the_job_is_the_template_owned_by_the_cron_job() {
        let job = job_from_template(&cron_job(), "report-29467321", "2026-01-10T11:01:00+01:00");
        assert_eq!(job["apiVersion"], "batch/v1");
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["metadata"]["name"], "report-29467321");
        assert_eq!(job["metadata"]["namespace"], "team");
        assert_eq!(job["metadata"]["labels"], json!({"app": "report"}));
        assert_eq!(
            job["metadata"]["annotations"],
            json!({"note": "kept", SCHEDULED_TIMESTAMP: "2026-01-10T11:01:00+01:00"})
        );
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "CronJob");
        assert_eq!(owner["uid"], "u-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(job["spec"], cron_job()["spec"]["jobTemplate"]["spec"]);

        let mut bare = cron_job();
        bare["spec"]["jobTemplate"]["metadata"] = Value::Null;
        let job = job_from_template(&bare, "report-1", "2026-01-10T10:01:00Z");
        assert!(job["metadata"].get("labels").is_none());
        assert_eq!(
            job["metadata"]["annotations"],
            json!({SCHEDULED_TIMESTAMP: "2026-01-10T10:01:00Z"})
        );
    }

    #[test]
    fn a_job_finishes_complete_or_failed() {
        let with = |kind: &str, status: &str| json!({"status": {"conditions": [{"type": kind, "status": status}]}});
        assert_eq!(outcome(&with("Complete", "True")), Some("Complete"));
        assert_eq!(outcome(&with("Failed", "True")), Some("Failed"));
        assert_eq!(outcome(&with("Complete", "False")), None);
        assert_eq!(outcome(&with("Suspended", "True")), None);
        assert_eq!(outcome(&json!({})), None);
    }

    #[test]
    fn active_references_name_the_job() {
        let job = json!({"metadata": {"name": "report-1", "namespace": "team", "uid": "j-1",
            "resourceVersion": "42"}});
        assert_eq!(
            job_reference(&job),
            json!({"apiVersion": "batch/v1", "kind": "Job", "namespace": "team",
                "name": "report-1", "uid": "j-1", "resourceVersion": "42"})
        );
    }

    #[test]
    fn history_limits_delete_the_oldest_first() {
        let jobs = [
            finished_job("c", Some("2026-01-10T10:03:00Z")),
            finished_job("never", None),
            finished_job("a", Some("2026-01-10T10:01:00Z")),
            finished_job("b2", Some("2026-01-10T10:02:00Z")),
            finished_job("b1", Some("2026-01-10T10:02:00Z")),
        ];
        let names = |limit| -> Vec<&str> {
            beyond_limit(jobs.iter().collect(), limit)
                .iter()
                .map(|job| job["metadata"]["name"].as_str().unwrap())
                .collect()
        };
        assert_eq!(names(3), ["a", "b1"]);
        assert_eq!(names(1), ["a", "b1", "b2", "c"]);
        assert_eq!(names(0), ["a", "b1", "b2", "c", "never"]);
        assert!(names(5).is_empty());
        assert!(names(9).is_empty());
    }
}
