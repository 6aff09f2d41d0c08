//! What the built-in controllers share: label selectors turned into the string form cache
//! reads take, pod readiness and availability as Kubernetes computes them, controller owner
//! references and the claiming of owned objects ([`claim`] and [`history`], which call the
//! host — natively, its `NativeHost`), finalizer and condition edits, and RFC 3339
//! timestamps. The rest is pure and tested natively; nothing here keeps state between calls.

use flotilla_sdk::controller::{ObjectRef, Status};
use serde_json::{Value, json};

pub mod claim;
pub mod history;
pub mod revision;

/// Parses JSON the host handed over.
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// A failed host call, as a reconcile error.
pub fn failed(what: &str, status: Status) -> String {
    format!("{what}: {} ({})", status.message, status.reason)
}

/// A structured label selector (`matchLabels`, `matchExpressions`) in Kubernetes' string form.
/// An empty selector is refused: it would select every pod in the namespace.
pub fn selector_string(selector: &Value) -> Result<String, String> {
    let mut terms = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (key, value) in labels {
            let value = value
                .as_str()
                .ok_or_else(|| format!("matchLabels[{key}] is not a string"))?;
            terms.push(format!("{key}={value}"));
        }
    }
    for expression in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = expression["key"]
            .as_str()
            .ok_or("a matchExpression has no key")?;
        let values: Vec<&str> = expression["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        terms.push(match expression["operator"].as_str() {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_owned(),
            Some("DoesNotExist") => format!("!{key}"),
            other => return Err(format!("matchExpression operator {other:?} is not known")),
        });
    }
    if terms.is_empty() {
        return Err("the selector is empty".into());
    }
    Ok(terms.join(","))
}

/// Whether an object's labels satisfy a label selector in Kubernetes' string form (what
/// [`selector_string`] writes: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
/// `!k`, joined by commas). An empty selector matches everything; a term it cannot read
/// matches nothing.
pub fn selector_matches(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    let label = |key: &str| labels[key.trim()].as_str();
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let set = |rest: &str| -> Option<Vec<String>> {
                let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
                Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            if let Some((key, rest)) = term.split_once(" notin ") {
                return set(rest).is_some_and(|values| {
                    label(key).is_none_or(|v| !values.iter().any(|x| x == v))
                });
            }
            if let Some((key, rest)) = term.split_once(" in ") {
                return set(rest).is_some_and(|values| {
                    label(key).is_some_and(|v| values.iter().any(|x| x == v))
                });
            }
            if let Some((key, value)) = term.split_once("!=") {
                return label(key) != Some(value.trim());
            }
            if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                return label(key) == Some(value.trim());
            }
            if let Some(key) = term.strip_prefix('!') {
                return label(key).is_none();
            }
            label(term).is_some()
        })
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (`2026-12-01T10:00:00Z`, fractions
/// and offsets accepted).
pub fn parse_time(text: &str) -> Option<i64> {
    let (date, rest) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let mut clock = clock.split(':');
    let hour: i64 = clock.next()?.parse().ok()?;
    let minute: i64 = clock.next()?.parse().ok()?;
    let second: f64 = clock.next()?.parse().ok()?;
    let offset_seconds = match offset.as_bytes().first() {
        Some(b'+') | Some(b'-') => {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (h, m) = offset[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
        _ => 0,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second as i64 - offset_seconds)
}

/// Now, in seconds since the Unix epoch.
pub fn now() -> i64 {
    (flotilla_sdk::host::now() / 1_000_000_000) as i64
}

/// Now as RFC 3339.
pub fn now_rfc3339() -> String {
    let seconds = now();
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The pod's Ready condition, if it is True: since when (seconds since the epoch).
pub fn ready_since(pod: &Value) -> Option<i64> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .map(|c| {
            c["lastTransitionTime"]
                .as_str()
                .and_then(parse_time)
                .unwrap_or(0)
        })
}

pub fn is_ready(pod: &Value) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: i64) -> bool {
    ready_since(pod).is_some_and(|since| min_ready_seconds == 0 || since + min_ready_seconds <= now)
}

/// Neither being deleted nor finished: it counts towards replicas.
pub fn is_active(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_none()
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_ref(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == Value::Bool(true))
}

/// A controller owner reference to `owner`, blocking the owner's foreground deletion.
pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The JSON patch that adopts `object` for `owner`: it adds a controller reference, and fails
/// (422) if the object was replaced meanwhile.
pub fn adopt_patch(owner: &Value, object: &Value) -> String {
    let reference = owner_reference(owner);
    let mut patch =
        vec![json!({"op": "test", "path": "/metadata/uid", "value": object["metadata"]["uid"]})];
    match object["metadata"]["ownerReferences"].as_array() {
        Some(_) => patch
            .push(json!({"op": "add", "path": "/metadata/ownerReferences/-", "value": reference})),
        None => patch
            .push(json!({"op": "add", "path": "/metadata/ownerReferences", "value": [reference]})),
    }
    Value::Array(patch).to_string()
}

/// The JSON patch that releases `object` from the owner of uid `owner_uid`, if it names it: it
/// removes that reference, and fails (422) if the references changed meanwhile.
pub fn release_patch(object: &Value, owner_uid: &Value) -> Option<String> {
    let refs = object["metadata"]["ownerReferences"].as_array()?;
    let index = refs.iter().position(|r| r["uid"] == *owner_uid)?;
    Some(
        json!([
            {"op": "test", "path": format!("/metadata/ownerReferences/{index}/uid"), "value": owner_uid},
            {"op": "remove", "path": format!("/metadata/ownerReferences/{index}")},
        ])
        .to_string(),
    )
}

/// The reference naming an object.
pub fn object_ref(object: &Value) -> ObjectRef {
    ObjectRef {
        api_version: object["apiVersion"].as_str().unwrap_or_default().into(),
        kind: object["kind"].as_str().unwrap_or_default().into(),
        namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .into(),
    }
}

/// Whether `labels` holds every label of `template_labels`.
pub fn has_labels(object: &Value, template_labels: &Value) -> bool {
    template_labels
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| object["metadata"]["labels"][k] == *v)
}

/// An `IntOrString` field (`3`, `"25%"`) against `total`: a percentage rounds up when `round_up`
/// (maxSurge), down otherwise (maxUnavailable).
pub fn int_or_percent(
    value: &Value,
    total: i64,
    round_up: bool,
    default: &str,
) -> Result<i64, String> {
    let text = match value {
        Value::Null => default.to_owned(),
        Value::Number(n) => return n.as_i64().ok_or_else(|| format!("{n} is not an integer")),
        Value::String(s) => s.clone(),
        other => return Err(format!("{other} is neither a number nor a percentage")),
    };
    let percent: i64 = text
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{text:?} is neither a number nor a percentage"))?;
    let scaled = percent * total;
    Ok(if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    })
}

/// FNV-1a, 32 bits.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// A hash as Kubernetes writes `pod-template-hash` values: base-10 digits mapped onto an
/// alphabet without vowels, so it never spells a word.
pub fn safe_encode(hash: u32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|digit| ALPHABET[usize::from(digit - b'0')] as char)
        .collect()
}

/// The JSON patch that removes `finalizer` from `object`, if it has it; it fails (422) if the
/// finalizers changed meanwhile.
pub fn remove_finalizer_patch(object: &Value, finalizer: &str) -> Option<String> {
    let finalizers = object["metadata"]["finalizers"].as_array()?;
    if !finalizers.iter().any(|f| f == finalizer) {
        return None;
    }
    let kept: Vec<&Value> = finalizers.iter().filter(|f| *f != finalizer).collect();
    Some(
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": kept},
        ])
        .to_string(),
    )
}

/// Whether `object` has the finalizer.
pub fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == finalizer))
}

/// The condition of `kind` in `object`'s status, if it is True.
pub fn true_condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

/// Sets the condition of `kind` in `conditions`: its transition time moves only when its
/// status changes; its probe time is now.
pub fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let now = now_rfc3339();
    let transition = conditions
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
    let condition = json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": transition});
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// A set of completion indexes as Kubernetes writes `completedIndexes`: ascending, runs of
/// three or more as ranges (`1,3-5,7`).
pub fn format_indexes(indexes: &std::collections::BTreeSet<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |run: (u32, u32), parts: &mut Vec<String>| match run.1 - run.0 {
        0 => parts.push(run.0.to_string()),
        1 => parts.extend([run.0.to_string(), run.1.to_string()]),
        _ => parts.push(format!("{}-{}", run.0, run.1)),
    };
    for &index in indexes {
        run = match run {
            Some((start, end)) if index == end + 1 => Some((start, index)),
            Some(done) => {
                flush(done, &mut parts);
                Some((index, index))
            }
            None => Some((index, index)),
        };
    }
    if let Some(done) = run {
        flush(done, &mut parts);
    }
    parts.join(",")
}

/// The indexes of a `completedIndexes` string; parts that do not parse are ignored.
pub fn parse_indexes(text: &str) -> std::collections::BTreeSet<u32> {
    text.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((start, end)) => Some(start.trim().parse().ok()?..=end.trim().parse().ok()?),
            None => {
                let index = part.trim().parse().ok()?;
                Some(index..=index)
            }
        })
        .flatten()
        .collect()
}

/// How long a Job waits before it replaces its `failures`-th failed pod: 10 s doubling, at most
/// six minutes (Kubernetes' pod failure backoff).
pub fn failure_backoff(failures: u32) -> std::time::Duration {
    if failures == 0 {
        return std::time::Duration::ZERO;
    }
    let seconds = 10u64.saturating_mul(1 << (failures - 1).min(6));
    std::time::Duration::from_secs(seconds.min(360))
}

/// Kubernetes' ranking of pods to delete first (`ActivePodsWithRanks`): smaller first.
pub fn deletion_rank(pod: &Value) -> (u8, u8, u8, i64, i64, i64) {
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let phase = match pod["status"]["phase"].as_str() {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready_since = ready_since(pod);
    let restarts: i64 = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    let created = pod["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_time)
        .unwrap_or(0);
    (
        u8::from(scheduled),
        phase,
        u8::from(ready_since.is_some()),
        // Ready for less time first: later transitions first.
        -ready_since.unwrap_or(0),
        // More restarts first.
        -restarts,
        // Newer first.
        -created,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_in_string_form_match_labels_as_kubernetes_does() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front", "v": "2"}}});
        let bare = json!({"metadata": {}});
        for (selector, on_pod, on_bare) in [
            ("", true, true),
            ("app=web", true, false),
            ("app==web,tier=front", true, false),
            ("app=db", false, false),
            ("app!=db", true, true),
            ("v in (1,2)", true, false),
            ("v in (1, 3)", false, false),
            ("v notin (1,3)", true, true),
            ("v notin (2)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=web,v in (2,3),!gone", true, false),
            ("v in 2", false, false),
        ] {
            assert_eq!(
                selector_matches(selector, &pod),
                on_pod,
                "{selector} on the pod"
            );
            assert_eq!(
                selector_matches(selector, &bare),
                on_bare,
                "{selector} on no labels"
            );
        }
        let structured = json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "v", "operator": "In", "values": ["2", "3"]},
                                 {"key": "gone", "operator": "DoesNotExist"}]});
        assert!(selector_matches(
            &selector_string(&structured).unwrap(),
            &pod
        ));
    }

    fn pod(
        node: Option<&str>,
        phase: &str,
        ready_at: Option<&str>,
        restarts: i64,
        created: &str,
    ) -> Value {
        let mut pod = json!({"metadata": {"creationTimestamp": created}, "spec": {}, "status": {"phase": phase,
            "containerStatuses": [{"restartCount": restarts}]}});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        if let Some(at) = ready_at {
            pod["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": at}]);
        }
        pod
    }

    #[test]
    fn pods_are_deleted_in_kubernetes_order() {
        let t = "2026-12-01T10:00:00Z";
        let unscheduled = pod(None, "Pending", None, 0, t);
        let pending = pod(Some("n"), "Pending", None, 0, t);
        let running_not_ready = pod(Some("n"), "Running", None, 0, t);
        let ready_recently = pod(Some("n"), "Running", Some("2026-12-01T10:05:00Z"), 0, t);
        let ready_long = pod(Some("n"), "Running", Some("2026-12-01T10:01:00Z"), 0, t);
        let ready_long_restarted = pod(Some("n"), "Running", Some("2026-12-01T10:01:00Z"), 3, t);
        let ready_long_newer = pod(
            Some("n"),
            "Running",
            Some("2026-12-01T10:01:00Z"),
            0,
            "2026-12-01T10:00:30Z",
        );
        let mut pods = vec![
            ready_long.clone(),
            ready_long_newer.clone(),
            ready_recently.clone(),
            running_not_ready.clone(),
            ready_long_restarted.clone(),
            pending.clone(),
            unscheduled.clone(),
        ];
        pods.sort_by_key(deletion_rank);
        assert_eq!(
            pods,
            [
                unscheduled,
                pending,
                running_not_ready,
                ready_recently,
                ready_long_restarted,
                ready_long_newer,
                ready_long
            ]
        );
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(int_or_percent(&json!("25%"), 10, true, "25%"), Ok(3));
        assert_eq!(int_or_percent(&json!("25%"), 10, false, "25%"), Ok(2));
        assert_eq!(int_or_percent(&Value::Null, 4, true, "25%"), Ok(1));
        assert_eq!(int_or_percent(&json!(2), 10, true, "25%"), Ok(2));
        assert!(int_or_percent(&json!("lots"), 10, true, "25%").is_err());
        assert_eq!(safe_encode(1234567890).len(), 10);
        assert_ne!(fnv32a(b"a"), fnv32a(b"b"));
    }

    #[test]
    fn adoption_and_release_test_what_they_change() {
        let owner = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web", "uid": "u-1"}});
        let orphan = json!({"metadata": {"uid": "p-1"}});
        let patch: Value = serde_json::from_str(&adopt_patch(&owner, &orphan)).unwrap();
        assert_eq!(
            patch[0],
            json!({"op": "test", "path": "/metadata/uid", "value": "p-1"})
        );
        assert_eq!(patch[1]["path"], "/metadata/ownerReferences");
        assert_eq!(patch[1]["value"][0]["controller"], true);
        let owned = json!({"metadata": {"uid": "p-1", "ownerReferences": [
            {"uid": "other"}, {"uid": "u-1", "controller": true}]}});
        let patch: Value =
            serde_json::from_str(&release_patch(&owned, &json!("u-1")).unwrap()).unwrap();
        assert_eq!(patch[0]["path"], "/metadata/ownerReferences/1/uid");
        assert_eq!(
            patch[1],
            json!({"op": "remove", "path": "/metadata/ownerReferences/1"})
        );
        assert!(release_patch(&orphan, &json!("u-1")).is_none());
    }

    #[test]
    fn selectors_become_strings() {
        let selector = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "old", "operator": "DoesNotExist"}]});
        assert_eq!(
            selector_string(&selector).unwrap(),
            "app=web,tier in (a,b),!old"
        );
        assert!(selector_string(&json!({})).is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-12-01T10:00:00Z"), Some(1_796_119_200));
        assert_eq!(
            parse_time("2026-12-01T11:00:00.5+01:00"),
            Some(1_796_119_200)
        );
        assert_eq!(parse_time("not a time"), None);
    }

    #[test]
    fn availability_needs_min_ready_seconds() {
        let pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:00Z"}]}});
        let at = parse_time("2026-12-01T10:00:05Z").unwrap();
        assert!(is_available(&pod, 0, at));
        assert!(is_available(&pod, 5, at));
        assert!(!is_available(&pod, 6, at));
        assert!(!is_ready(&json!({"status": {}})));
    }

    #[test]
    fn completed_indexes_read_and_write_as_kubernetes_does() {
        let indexes: std::collections::BTreeSet<u32> = [0, 1, 3, 4, 5, 7, 9, 10].into();
        assert_eq!(format_indexes(&indexes), "0,1,3-5,7,9,10");
        assert_eq!(parse_indexes("0,1,3-5,7,9,10"), indexes);
        assert_eq!(format_indexes(&Default::default()), "");
        assert!(parse_indexes("").is_empty());
        assert_eq!(parse_indexes("2-4,x,8"), [2, 3, 4, 8].into());
    }

    #[test]
    fn failed_pods_are_replaced_after_a_doubling_backoff() {
        let secs = |n| failure_backoff(n).as_secs();
        assert_eq!(
            [
                secs(0),
                secs(1),
                secs(2),
                secs(3),
                secs(6),
                secs(7),
                secs(30)
            ],
            [0, 10, 20, 40, 320, 360, 360]
        );
    }

    #[test]
    fn a_finalizer_is_removed_only_from_the_list_it_was_read_from() {
        let pod = json!({"metadata": {"finalizers": ["a", "batch.kubernetes.io/job-tracking"]}});
        let patch: Value = serde_json::from_str(
            &remove_finalizer_patch(&pod, "batch.kubernetes.io/job-tracking").unwrap(),
        )
        .unwrap();
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(patch[0]["value"], pod["metadata"]["finalizers"]);
        assert_eq!(patch[1]["value"], json!(["a"]));
        assert!(remove_finalizer_patch(&pod, "other").is_none());
        assert!(has_finalizer(&pod, "a") && !has_finalizer(&pod, "other"));
    }
}
