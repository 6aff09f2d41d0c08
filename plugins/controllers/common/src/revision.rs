//! ControllerRevisions, as StatefulSets and DaemonSets keep them: one per pod template,
//! named by the template's hash, numbered, owned by the workload, holding the strategic merge
//! patch that puts the template back (what `kubectl rollout undo` applies). Pure: the component
//! side is [`crate::history`].

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::{fnv32a, owner_reference, parse_time, safe_encode};

/// The label holding a ControllerRevision's hash.
pub const REVISION_HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// Kubernetes keeps revision names within 253 characters: a prefix of at most 223, a dash and
/// the hash.
const MAX_REVISION_PREFIX: usize = 223;

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The template's labels with `extra` added.
pub fn labels_with(template: &Value, extra: &[(&str, &str)]) -> Value {
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (key, value) in extra {
        labels.insert((*key).to_owned(), json!(value));
    }
    Value::Object(labels)
}

/// A value with nulls, empty objects and empty lists left out: how Kubernetes' semantic
/// equality sees unset fields (`creationTimestamp: null` in a template is no difference).
pub fn normalized(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let map: Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), normalized(v)?)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|v| normalized(v).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other.clone()),
    }
}

/// Whether two pod templates are the same, unset fields aside.
pub fn same_template(a: &Value, b: &Value) -> bool {
    normalized(a) == normalized(b)
}

/// The pod template a ControllerRevision holds: its `data` is the patch that puts it back into
/// the set, `{"spec": {"template": {…, "$patch": "replace"}}}`.
pub fn template_of(revision: &Value) -> Value {
    let mut template = revision["data"]["spec"]["template"].clone();
    if let Some(fields) = template.as_object_mut() {
        fields.remove("$patch");
    }
    template
}

/// The hash naming the revision of `template`; a collision count above zero changes it.
pub fn revision_hash(template: &Value, collision_count: i64) -> String {
    let mut hashed = normalized(template).unwrap_or(Value::Null).to_string();
    if collision_count > 0 {
        hashed.push_str(&collision_count.to_string());
    }
    safe_encode(fnv32a(hashed.as_bytes()))
}

/// The name of the owner's revision of `hash`.
pub fn revision_name(owner: &str, hash: &str) -> String {
    let mut end = owner.len().min(MAX_REVISION_PREFIX);
    while !owner.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash}", &owner[..end])
}

/// The ControllerRevision numbered `number` holding the owner's `template` under `hash`:
/// labelled as the template, annotated as the owner, owned by it.
pub fn new_revision(set: &Value, template: &Value, hash: &str, number: i64) -> Value {
    let mut data_template = template.clone();
    data_template["$patch"] = json!("replace");
    let mut metadata = json!({
        "name": revision_name(name_of(set), hash),
        "namespace": set["metadata"]["namespace"],
        "labels": labels_with(template, &[(REVISION_HASH_LABEL, hash)]),
        "ownerReferences": [owner_reference(set)],
    });
    if let Some(annotations) = set["metadata"].get("annotations") {
        metadata["annotations"] = annotations.clone();
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": metadata,
        "data": {"spec": {"template": data_template}},
        "revision": number,
    })
}

pub fn revision_number(revision: &Value) -> i64 {
    revision["revision"].as_i64().unwrap_or(0)
}

/// Oldest first: by number, then creation, then name.
pub fn sort_revisions(revisions: &mut [Value]) {
    revisions.sort_by(|a, b| {
        let key = |r: &Value| {
            (
                revision_number(r),
                r["metadata"]["creationTimestamp"]
                    .as_str()
                    .and_then(parse_time)
                    .unwrap_or(0),
            )
        };
        key(a).cmp(&key(b)).then_with(|| name_of(a).cmp(name_of(b)))
    });
}

/// The number the next new revision takes.
pub fn next_revision_number(revisions: &[Value]) -> i64 {
    revisions.iter().map(revision_number).max().unwrap_or(0) + 1
}

/// Where the revision of the set's template comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateRevision<'a> {
    /// The newest revision holds it.
    Unchanged(&'a Value),
    /// An older revision holds it (a rollback): it becomes the newest.
    Restored(&'a Value),
    /// No revision holds it yet.
    New,
}

/// Which of the set's revisions (oldest first) holds `template`.
pub fn find_update_revision<'a>(revisions: &'a [Value], template: &Value) -> UpdateRevision<'a> {
    match revisions
        .iter()
        .rposition(|r| same_template(&template_of(r), template))
    {
        Some(at) if at + 1 == revisions.len() => UpdateRevision::Unchanged(&revisions[at]),
        Some(at) => UpdateRevision::Restored(&revisions[at]),
        None => UpdateRevision::New,
    }
}

/// The revisions (oldest first) to delete so that at most `limit` remain that are not `live`
/// (named by the owner's current or update revision, or by its pods).
pub fn history_to_prune<'a>(
    revisions: &'a [Value],
    live: &HashSet<&str>,
    limit: usize,
) -> Vec<&'a Value> {
    let history: Vec<&Value> = revisions
        .iter()
        .filter(|r| !live.contains(name_of(r)))
        .collect();
    let excess = history.len().saturating_sub(limit);
    history.into_iter().take(excess).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_named_by_template_and_found_again() {
        let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "s-1"}});
        let one = json!({"metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "main", "image": "one"}]}});
        let two = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "two"}]}});
        let hash = revision_hash(&one, 0);
        assert_ne!(hash, revision_hash(&two, 0));
        assert_ne!(hash, revision_hash(&one, 1), "a collision changes the name");
        let first = new_revision(&set, &one, &hash, 1);
        assert_eq!(first["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(first["metadata"]["labels"]["app"], "web");
        assert_eq!(first["metadata"]["labels"][REVISION_HASH_LABEL], hash);
        assert_eq!(first["data"]["spec"]["template"]["$patch"], "replace");
        assert!(same_template(&template_of(&first), &one));
        let second = new_revision(&set, &two, &revision_hash(&two, 0), 2);
        let mut revisions = vec![second.clone(), first.clone()];
        sort_revisions(&mut revisions);
        assert_eq!(revisions, [first.clone(), second.clone()]);
        assert_eq!(next_revision_number(&revisions), 3);
        assert_eq!(next_revision_number(&[]), 1);
        // Unset fields make no difference.
        let mut one_again = one.clone();
        one_again["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("creationTimestamp");
        assert_eq!(revision_hash(&one_again, 0), hash);
        assert_eq!(
            find_update_revision(&revisions, &two),
            UpdateRevision::Unchanged(&revisions[1])
        );
        assert_eq!(
            find_update_revision(&revisions, &one_again),
            UpdateRevision::Restored(&revisions[0])
        );
        assert_eq!(
            find_update_revision(&revisions, &json!({"spec": {}})),
            UpdateRevision::New
        );
        assert_eq!(revision_name(&"s".repeat(300), "h").len(), 225);
    }

    #[test]
    fn history_keeps_live_revisions_and_the_newest_others() {
        let revisions: Vec<Value> = (1..=5)
            .map(|n| json!({"metadata": {"name": format!("web-{n}")}, "revision": n}))
            .collect();
        let live: HashSet<&str> = ["web-2", "web-4", "web-5"].into();
        let pruned = |limit| -> Vec<&str> {
            history_to_prune(&revisions, &live, limit)
                .into_iter()
                .map(name_of)
                .collect()
        };
        assert_eq!(pruned(0), ["web-1", "web-3"]);
        assert_eq!(pruned(1), ["web-1"]);
        assert!(pruned(10).is_empty());
    }
}
