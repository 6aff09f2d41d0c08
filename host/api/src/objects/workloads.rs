//! Workloads: Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs. Their
//! selectors must select their pod templates, their pod templates are pod specs with the
//! restart policies the controller supports, and each kind limits what an update may change.

use std::collections::BTreeMap;

use flotilla_cron::Schedule;
use serde_json::{Value, json};

use super::{
    Causes, Field, changed_except, entries, immutable, invalid_each, is_set, items, labels,
    nonnegative, one_of, pod,
};
use crate::defaults::JOB_CONTROLLER_UID_LABEL;
use crate::selector::LabelSelector;
use crate::validation;

/// How a kind that runs pods from a template checks its selector and template.
#[derive(Debug)]
struct PodController {
    /// Ends "empty selector is invalid for …" when an empty selector is refused.
    empty_selector: Option<&'static str>,
    /// Ends "activeDeadlineSeconds in … is not Supported" when the template may not set it.
    deadline: Option<&'static str>,
    /// The restart policies its pods may have.
    restart_policies: &'static [&'static str],
}

/// Deployments check their template as the ReplicaSets they create do.
const REPLICA_SET: PodController = PodController {
    empty_selector: Some("deployment"),
    deadline: Some("ReplicaSet"),
    restart_policies: &["Always"],
};
const STATEFUL_SET: PodController = PodController {
    empty_selector: Some("statefulset"),
    deadline: Some("StatefulSet"),
    restart_policies: &["Always"],
};
const DAEMON_SET: PodController = PodController {
    empty_selector: Some("daemonset"),
    deadline: Some("DaemonSet"),
    restart_policies: &["Always"],
};
const JOB: PodController = PodController {
    empty_selector: None,
    deadline: None,
    restart_policies: &["OnFailure", "Never"],
};

const CONCURRENCY_POLICIES: &[&str] = &["Allow", "Forbid", "Replace"];

const STATEFUL_SET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
];
const STATEFUL_SET_FORBIDDEN: &str = "updates to statefulset spec for fields other than \
     'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' \
     and 'minReadySeconds' are forbidden";

pub(super) fn deployment(deployment: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(deployment, "spec");
    let fields = ["replicas", "minReadySeconds", "revisionHistoryLimit"];
    counts(&spec, &fields, out);
    selector(&spec, &REPLICA_SET, out);
    template(&spec, &REPLICA_SET, &[], out);
    deployment_strategy(&spec.child("strategy"), out);
    let deadline = spec.child("progressDeadlineSeconds");
    nonnegative(&deadline, out);
    let min_ready = spec["minReadySeconds"].as_i64().unwrap_or(0);
    if deadline
        .as_i64()
        .is_some_and(|seconds| seconds <= min_ready)
    {
        out.push(deadline.invalid("must be greater than minReadySeconds"));
    }
    selector_immutable(&spec, old, out);
}

pub(super) fn replica_set(replica_set: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(replica_set, "spec");
    counts(&spec, &["replicas", "minReadySeconds"], out);
    selector(&spec, &REPLICA_SET, out);
    template(&spec, &REPLICA_SET, &[], out);
    selector_immutable(&spec, old, out);
}

pub(super) fn stateful_set(stateful_set: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(stateful_set, "spec");
    let fields = ["replicas", "minReadySeconds", "revisionHistoryLimit"];
    counts(&spec, &fields, out);
    nonnegative(&spec.child("ordinals").child("start"), out);
    let policy = spec.child("podManagementPolicy");
    if !policy.is_null() && !matches!(policy.as_str(), Some("OrderedReady" | "Parallel")) {
        out.push(policy.invalid("must be 'OrderedReady' or 'Parallel'"));
    }
    stateful_set_strategy(&spec.child("updateStrategy"), out);
    let retention = spec.child("persistentVolumeClaimRetentionPolicy");
    for when in ["whenDeleted", "whenScaled"] {
        one_of(&retention.child(when), &["Retain", "Delete"], out);
    }
    let claims: Vec<&str> = items(&spec["volumeClaimTemplates"])
        .iter()
        .filter_map(|claim| claim["metadata"]["name"].as_str())
        .collect();
    selector(&spec, &STATEFUL_SET, out);
    template(&spec, &STATEFUL_SET, &claims, out);
    if let Some(old) = old
        && changed_except(&spec, &old["spec"], STATEFUL_SET_MUTABLE)
    {
        out.push(spec.forbidden(STATEFUL_SET_FORBIDDEN));
    }
}

pub(super) fn daemon_set(daemon_set: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(daemon_set, "spec");
    let fields = [
        "minReadySeconds",
        "revisionHistoryLimit",
        "templateGeneration",
    ];
    counts(&spec, &fields, out);
    selector(&spec, &DAEMON_SET, out);
    template(&spec, &DAEMON_SET, &[], out);
    daemon_set_strategy(&spec.child("updateStrategy"), out);
    selector_immutable(&spec, old, out);
}

pub(super) fn job(job: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = Field::of(job, "spec");
    job_spec(&spec, out);
    selector(&spec, &JOB, out);
    let selector = spec.child("selector");
    if let Some(uid) = job["metadata"]["uid"].as_str()
        && spec["manualSelector"] != true
        && !selector.is_null()
        && *selector != json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: uid}})
    {
        out.push(selector.invalid("`selector` not auto-generated"));
    }
    if let Some(old) = old {
        let old = &old["spec"];
        for name in ["selector", "template", "completionMode"] {
            immutable(&spec.child(name), &old[name], out);
        }
        if spec["completionMode"] != "Indexed" {
            immutable(&spec.child("completions"), &old["completions"], out);
        }
    }
}

pub(super) fn cron_job(cron_job: &Value, out: &mut Causes) {
    let spec = Field::of(cron_job, "spec");
    schedule(&spec.child("schedule"), out);
    time_zone(&spec.child("timeZone"), out);
    one_of(&spec.child("concurrencyPolicy"), CONCURRENCY_POLICIES, out);
    let limits = [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ];
    counts(&spec, &limits, out);
    let job_spec = spec.child("jobTemplate").child("spec");
    self::job_spec(&job_spec, out);
    let selector = job_spec.child("selector");
    if !selector.is_null() {
        out.push(selector.invalid("`selector` will be auto-generated"));
    }
    let manual = job_spec.child("manualSelector");
    if *manual == true {
        out.push(manual.not_supported(&["nil", "false"]));
    }
}

/// Non-negative integer fields of `spec`.
fn counts(spec: &Field, names: &[&str], out: &mut Causes) {
    for name in names {
        nonnegative(&spec.child(name), out);
    }
}

/// `spec.selector` is required, valid and (for most kinds) not empty, and selects the pod
/// template's labels.
fn selector(spec: &Field, kind: &PodController, out: &mut Causes) {
    let selector = spec.child("selector");
    if selector.is_null() {
        out.push(selector.required());
        return;
    }
    label_selector(&selector, out);
    let empty = !is_set(&selector["matchLabels"]) && !is_set(&selector["matchExpressions"]);
    if let Some(noun) = kind.empty_selector
        && empty
    {
        out.push(selector.invalid(&format!("empty selector is invalid for {noun}")));
    }
    let template_labels = spec.child("template").child("metadata").child("labels");
    let labels: BTreeMap<String, String> = entries(&template_labels)
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect();
    if let Ok(parsed) = LabelSelector::from_json(&selector)
        && !parsed.is_empty()
        && !parsed.matches(&labels)
    {
        out.push(template_labels.invalid("`selector` does not match template `labels`"));
    }
}

/// A structured label selector (`ValidateLabelSelector`).
fn label_selector(selector: &Field, out: &mut Causes) {
    labels(&selector.child("matchLabels"), out);
    for expression in selector.child("matchExpressions").items() {
        let values = expression.child("values");
        let operator = expression.child("operator");
        match operator.as_str() {
            Some("In" | "NotIn") if items(&values).is_empty() => out
                .push(values.required_with("must be specified when `operator` is 'In' or 'NotIn'")),
            Some("Exists" | "DoesNotExist") if !items(&values).is_empty() => {
                out.push(values.forbidden(
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ));
            }
            Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
            _ => out.push(operator.invalid("not a valid selector operator")),
        }
        let key = expression.child("key");
        let key_errors = validation::qualified_name(key.as_str().unwrap_or_default());
        invalid_each(&key.path, &key, key_errors, out);
        for value in values.items() {
            let errors = validation::label_value(value.as_str().unwrap_or_default());
            invalid_each(&value.path, &value, errors, out);
        }
    }
}

/// `spec.template`: a pod template whose restart policy the controller supports.
fn template(spec: &Field, kind: &PodController, extra_volumes: &[&str], out: &mut Causes) {
    let template = spec.child("template");
    pod::template(&template, extra_volumes, out);
    let pod_spec = template.child("spec");
    let restart = pod_spec.child("restartPolicy");
    let supported = kind.restart_policies;
    if restart
        .as_str()
        .is_some_and(|policy| !supported.contains(&policy))
    {
        out.push(restart.not_supported(supported));
    }
    let deadline = pod_spec.child("activeDeadlineSeconds");
    if let Some(noun) = kind.deadline
        && !deadline.is_null()
    {
        out.push(deadline.forbidden(&format!("activeDeadlineSeconds in {noun} is not Supported")));
    }
}

fn selector_immutable(spec: &Field, old: Option<&Value>, out: &mut Causes) {
    if let Some(old) = old {
        immutable(&spec.child("selector"), &old["spec"]["selector"], out);
    }
}

fn deployment_strategy(strategy: &Field, out: &mut Causes) {
    let (strategy_type, rolling) = (strategy.child("type"), strategy.child("rollingUpdate"));
    match strategy_type.as_str() {
        _ if strategy_type.is_null() => {}
        Some("Recreate") if !rolling.is_null() => {
            out.push(rolling.forbidden("may not be specified when strategy `type` is 'Recreate'"))
        }
        Some("Recreate") => {}
        Some("RollingUpdate") => {
            let (unavailable, surge) = surge_and_unavailable(&rolling, out);
            if unavailable == Some(0) && surge == Some(0) {
                let max_unavailable = rolling.child("maxUnavailable");
                out.push(max_unavailable.invalid("may not be 0 when `maxSurge` is 0"));
            }
        }
        _ => out.push(strategy_type.not_supported(&["Recreate", "RollingUpdate"])),
    }
}

fn daemon_set_strategy(strategy: &Field, out: &mut Causes) {
    let (strategy_type, rolling) = (strategy.child("type"), strategy.child("rollingUpdate"));
    match strategy_type.as_str() {
        _ if strategy_type.is_null() => {}
        Some("OnDelete") => {}
        Some("RollingUpdate") => {
            let (unavailable, surge) = surge_and_unavailable(&rolling, out);
            let max_surge = rolling.child("maxSurge");
            at_most_100_percent(&max_surge, out);
            match (unavailable, surge) {
                (Some(0), Some(0)) => {
                    let max_unavailable = rolling.child("maxUnavailable");
                    out.push(max_unavailable.invalid("cannot be 0 when maxSurge is 0"));
                }
                (Some(unavailable), Some(surge)) if unavailable != 0 && surge != 0 => {
                    out.push(max_surge.invalid("may not be set when maxUnavailable is non-zero"));
                }
                _ => {}
            }
        }
        _ => out.push(strategy_type.not_supported(&["RollingUpdate", "OnDelete"])),
    }
}

fn stateful_set_strategy(strategy: &Field, out: &mut Causes) {
    let (strategy_type, rolling) = (strategy.child("type"), strategy.child("rollingUpdate"));
    match strategy_type.as_str() {
        _ if strategy_type.is_null() => {}
        Some("OnDelete") if !rolling.is_null() => {
            out.push(rolling.invalid("only allowed for updateStrategy 'RollingUpdate'"));
        }
        Some("OnDelete") => {}
        Some("RollingUpdate") => {
            nonnegative(&rolling.child("partition"), out);
            int_or_percent(&rolling.child("maxUnavailable"), out);
        }
        _ => out.push(strategy_type.invalid("must be 'RollingUpdate' or 'OnDelete'")),
    }
}

/// A rolling update's `maxUnavailable` (at most 100%) and `maxSurge`, as numbers where valid.
fn surge_and_unavailable(rolling: &Field, out: &mut Causes) -> (Option<i64>, Option<i64>) {
    let max_unavailable = rolling.child("maxUnavailable");
    let unavailable = int_or_percent(&max_unavailable, out);
    let surge = int_or_percent(&rolling.child("maxSurge"), out);
    at_most_100_percent(&max_unavailable, out);
    (unavailable, surge)
}

/// A non-negative integer or a percentage; its number when valid.
fn int_or_percent(field: &Field, out: &mut Causes) -> Option<i64> {
    match field.value {
        Value::Null => None,
        Value::String(text) => {
            let errors = validation::percent(text);
            let number = errors
                .is_empty()
                .then(|| text.trim_end_matches('%').parse().ok());
            invalid_each(&field.path, field, errors, out);
            number.flatten()
        }
        _ => {
            let before = out.len();
            nonnegative(field, out);
            field.as_i64().filter(|_| out.len() == before)
        }
    }
}

fn at_most_100_percent(field: &Field, out: &mut Causes) {
    let percent = field
        .as_str()
        .and_then(|text| text.strip_suffix('%'))
        .and_then(|digits| digits.parse::<u64>().ok());
    if percent.is_some_and(|percent| percent > 100) {
        out.push(field.invalid("must not be greater than 100%"));
    }
}

/// A Job's spec without its selector, also the spec of a CronJob's job template.
fn job_spec(spec: &Field, out: &mut Causes) {
    let fields = [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ];
    counts(spec, &fields, out);
    let mode = spec.child("completionMode");
    one_of(&mode, &["NonIndexed", "Indexed"], out);
    let completions = spec.child("completions");
    if *mode == "Indexed" && completions.is_null() {
        out.push(completions.required_with("when completion mode is Indexed"));
    }
    template(spec, &JOB, &[], out);
}

fn schedule(schedule: &Field, out: &mut Causes) {
    let Some(text) = schedule.as_str().filter(|text| !text.is_empty()) else {
        out.push(schedule.required());
        return;
    };
    if let Err(error) = Schedule::parse(text) {
        out.push(schedule.invalid(&error));
    }
    if text.contains("TZ") {
        let message = "cannot use TZ or CRON_TZ in schedule, use timeZone field instead";
        out.push(schedule.invalid(message));
    }
}

/// A time zone name, if set, looks like an IANA one (whether it exists is not checked: that
/// needs the time zone database).
fn time_zone(zone: &Field, out: &mut Causes) {
    let Some(text) = zone.as_str() else {
        return;
    };
    let part_ok = |part: &str| {
        !matches!(part, "." | "..")
            && !part.starts_with('-')
            && (1..=14).contains(&part.len())
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    };
    let message = if text.is_empty() {
        "timeZone must be nil or non-empty string".to_owned()
    } else if !text.split('/').all(part_ok) {
        format!("unknown time zone {text}")
    } else if text.eq_ignore_ascii_case("local") {
        "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
            .to_owned()
    } else {
        return;
    };
    out.push(zone.invalid(&message));
}

#[cfg(test)]
mod tests {
    use super::super::tests::{problems, update_problems};
    use serde_json::{Value, json};

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
    }

    fn deployment(spec: Value) -> Value {
        let mut deployment = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": template(),
        }});
        for (key, value) in spec.as_object().unwrap() {
            deployment["spec"][key] = value.clone();
        }
        deployment
    }

    fn stored(group: &str, kind: &str, mut object: Value) -> Value {
        crate::defaults::apply_defaults(group, kind, &mut object);
        object
    }

    #[test]
    fn a_plain_deployment_is_valid() {
        let problems = problems("apps", "Deployment", deployment(json!({})));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_deployment_needs_a_selector_that_selects_its_template() {
        let mut object = deployment(json!({}));
        object["spec"].as_object_mut().unwrap().remove("selector");
        let validated = {
            let mut object = object.clone();
            crate::defaults::apply_defaults("apps", "Deployment", &mut object);
            crate::objects::validate("apps", "Deployment", &object, None)
        };
        assert_eq!(validated.len(), 1);
        assert_eq!(validated[0].field, "spec.selector");
        assert_eq!(validated[0].reason, "FieldValueRequired");

        let other = deployment(json!({"selector": {"matchLabels": {"app": "db"}}}));
        assert_eq!(
            problems("apps", "Deployment", other),
            [
                "spec.template.metadata.labels: Invalid value: {\"app\":\"web\"}: `selector` does not match template `labels`"
            ]
        );
        let empty = deployment(json!({"selector": {}}));
        assert_eq!(
            problems("apps", "Deployment", empty),
            ["spec.selector: Invalid value: {}: empty selector is invalid for deployment"]
        );
        let expressions = deployment(json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "In"},
            {"key": "app", "operator": "Near", "values": ["web"]},
        ]}}));
        assert_eq!(
            problems("apps", "Deployment", expressions),
            [
                "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector.matchExpressions[1].operator: Invalid value: \"Near\": not a valid selector operator",
            ]
        );
    }

    #[test]
    fn a_deployment_selector_is_immutable() {
        let old = stored("apps", "Deployment", deployment(json!({})));
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert!(update_problems("apps", "Deployment", new.clone(), Some(old.clone())).is_empty());
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "front"}});
        new["spec"]["template"]["metadata"]["labels"]["tier"] = json!("front");
        assert_eq!(
            update_problems("apps", "Deployment", new, Some(old)),
            [
                "spec.selector: Invalid value: {\"matchLabels\":{\"app\":\"web\",\"tier\":\"front\"}}: field is immutable"
            ]
        );
    }

    #[test]
    fn deployment_counts_strategy_and_restart_policy() {
        let object = deployment(json!({
            "replicas": -1,
            "strategy": {"type": "Recreate", "rollingUpdate": {}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 5, "containers": [{"name": "c", "image": "x"}]},
            },
        }));
        assert_eq!(
            problems("apps", "Deployment", object),
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported",
                "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'",
            ]
        );
        let rolling = deployment(
            json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}),
        );
        assert_eq!(
            problems("apps", "Deployment", rolling),
            [
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0"
            ]
        );
        let odd = deployment(
            json!({"strategy": {"type": "Blue", "rollingUpdate": {"maxSurge": "x", "maxUnavailable": "150%"}}}),
        );
        assert_eq!(
            problems("apps", "Deployment", odd),
            [
                "spec.strategy.type: Unsupported value: \"Blue\": supported values: \"Recreate\", \"RollingUpdate\""
            ]
        );
        let bad_numbers = deployment(
            json!({"strategy": {"rollingUpdate": {"maxSurge": "x", "maxUnavailable": "150%"}}}),
        );
        let problems = problems("apps", "Deployment", bad_numbers);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with(
            "spec.strategy.rollingUpdate.maxSurge: Invalid value: \"x\": a valid percent string"
        ));
        assert_eq!(
            problems[1],
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%"
        );
    }

    #[test]
    fn template_pod_specs_are_validated_with_their_paths() {
        let object = deployment(json!({"template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]},
        }}));
        assert_eq!(
            problems("apps", "Deployment", object),
            ["spec.template.spec.containers[0].image: Required value"]
        );
    }

    #[test]
    fn replica_sets_and_daemon_sets() {
        let spec = json!({"selector": {"matchLabels": {"app": "web"}}, "template": template()});
        assert!(problems("apps", "ReplicaSet", json!({"spec": spec.clone()})).is_empty());
        assert!(problems("apps", "DaemonSet", json!({"spec": spec.clone()})).is_empty());
        let mut surging = json!({"spec": spec.clone()});
        surging["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
        assert_eq!(
            problems("apps", "DaemonSet", surging),
            [
                "spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 1: may not be set when maxUnavailable is non-zero"
            ]
        );
        let old = stored("apps", "DaemonSet", json!({"spec": spec.clone()}));
        let mut new = old.clone();
        new["spec"]["selector"]["matchLabels"] = json!({});
        let problems = update_problems("apps", "DaemonSet", new, Some(old));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            "spec.selector: Invalid value: {\"matchLabels\":{}}: empty selector is invalid for daemonset"
        );
        assert!(problems[1].ends_with("field is immutable"));
    }

    fn stateful_set() -> Value {
        json!({"spec": {
            "serviceName": "",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
        }})
    }

    #[test]
    fn stateful_sets_mount_their_claims_and_limit_updates() {
        assert!(problems("apps", "StatefulSet", stateful_set()).is_empty());
        let old = stored("apps", "StatefulSet", stateful_set());
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        new["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert!(update_problems("apps", "StatefulSet", new.clone(), Some(old.clone())).is_empty());
        new["spec"]["serviceName"] = json!("web");
        assert_eq!(
            update_problems("apps", "StatefulSet", new, Some(old)),
            [
                "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
            ]
        );
        let mut odd = stateful_set();
        odd["spec"]["podManagementPolicy"] = json!("Random");
        odd["spec"]["persistentVolumeClaimRetentionPolicy"] = json!({"whenDeleted": "Keep"});
        assert_eq!(
            problems("apps", "StatefulSet", odd),
            [
                "spec.podManagementPolicy: Invalid value: \"Random\": must be 'OrderedReady' or 'Parallel'",
                "spec.persistentVolumeClaimRetentionPolicy.whenDeleted: Unsupported value: \"Keep\": supported values: \"Retain\", \"Delete\"",
            ]
        );
    }

    fn job(template_spec: Value) -> Value {
        json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": template_spec}}})
    }

    #[test]
    fn jobs_restart_on_failure_or_never() {
        let ok =
            job(json!({"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}));
        assert!(problems("batch", "Job", ok).is_empty());
        let always = job(json!({"containers": [{"name": "pi", "image": "perl"}]}));
        assert_eq!(
            problems("batch", "Job", always),
            [
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
            ]
        );
    }

    #[test]
    fn job_selectors_are_generated_unless_manual() {
        let mut own =
            job(json!({"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}));
        own["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
        own["spec"]["template"]["metadata"] = json!({"labels": {"app": "pi"}});
        let problems_own = problems("batch", "Job", own.clone());
        assert_eq!(problems_own.len(), 1, "{problems_own:?}");
        assert!(problems_own[0].ends_with("`selector` not auto-generated"));
        own["spec"]["manualSelector"] = json!(true);
        assert!(problems("batch", "Job", own).is_empty());

        let no_uid = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}}}});
        assert_eq!(
            problems("batch", "Job", no_uid),
            ["spec.selector: Required value"]
        );
    }

    #[test]
    fn job_templates_are_immutable() {
        let old = stored(
            "batch",
            "Job",
            job(json!({"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]})),
        );
        let mut new = old.clone();
        new["spec"]["suspend"] = json!(true);
        new["spec"]["parallelism"] = json!(3);
        assert!(update_problems("batch", "Job", new.clone(), Some(old.clone())).is_empty());
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:5");
        new["spec"]["completions"] = json!(2);
        let problems = update_problems("batch", "Job", new, Some(old));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("spec.template: Invalid value: {"));
        assert!(problems[0].ends_with(": field is immutable"));
        assert_eq!(
            problems[1],
            "spec.completions: Invalid value: 2: field is immutable"
        );
    }

    fn cron_job(schedule: &str) -> Value {
        json!({"spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": "busybox"}],
        }}}}}})
    }

    #[test]
    fn cron_jobs_need_a_schedule() {
        for ok in ["*/5 * * * *", "@daily", "@every 2h"] {
            let problems = problems("batch", "CronJob", cron_job(ok));
            assert!(problems.is_empty(), "{ok}: {problems:?}");
        }
        assert_eq!(
            problems("batch", "CronJob", cron_job("")),
            ["spec.schedule: Required value"]
        );
        assert_eq!(
            problems("batch", "CronJob", cron_job("61 * * * *")),
            [
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
            ]
        );
        assert_eq!(
            problems("batch", "CronJob", cron_job("CRON_TZ=UTC 0 * * * *")),
            [
                "spec.schedule: Invalid value: \"CRON_TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
    }

    #[test]
    fn cron_job_policies_time_zones_and_templates() {
        let mut object = cron_job("0 * * * *");
        object["spec"]["concurrencyPolicy"] = json!("Sometimes");
        object["spec"]["timeZone"] = json!("");
        object["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] =
            json!("Always");
        object["spec"]["jobTemplate"]["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        assert_eq!(
            problems("batch", "CronJob", object),
            [
                "spec.timeZone: Invalid value: \"\": timeZone must be nil or non-empty string",
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
                "spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
                "spec.jobTemplate.spec.selector: Invalid value: {\"matchLabels\":{\"a\":\"b\"}}: `selector` will be auto-generated",
            ]
        );
        let mut zoned = cron_job("0 * * * *");
        zoned["spec"]["timeZone"] = json!("Europe/Berlin");
        assert!(problems("batch", "CronJob", zoned.clone()).is_empty());
        zoned["spec"]["timeZone"] = json!("../etc/passwd");
        assert_eq!(
            problems("batch", "CronJob", zoned),
            ["spec.timeZone: Invalid value: \"../etc/passwd\": unknown time zone ../etc/passwd"]
        );
    }
}
