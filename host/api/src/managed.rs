//! Field ownership for server-side apply, as Kubernetes tracks it in `metadata.managedFields`:
//! which manager set which fields (in the `FieldsV1` form: `f:<field>`, `k:<keys>` for items of
//! keyed lists, `v:<value>` for items of sets, `.` for an item itself), how an applied
//! configuration merges into an object, which of its fields conflict with other managers, and
//! which fields a manager stops applying and so are removed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::strategic::Schemas;

/// A set of field paths, as a tree of `FieldsV1` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    children: BTreeMap<String, FieldSet>,
}

/// One step of a field path.
pub type Path = Vec<String>;

impl FieldSet {
    /// Reads a `fieldsV1` value.
    pub fn from_v1(value: &Value) -> Self {
        let children = value
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(k, v)| (k.clone(), FieldSet::from_v1(v)))
                    .collect()
            })
            .unwrap_or_default();
        Self { children }
    }

    /// The `fieldsV1` value.
    pub fn to_v1(&self) -> Value {
        Value::Object(
            self.children
                .iter()
                .map(|(k, v)| (k.clone(), v.to_v1()))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Every path to a leaf (a field owned as a whole).
    pub fn leaves(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, at: &mut Path, out: &mut Vec<Path>) {
        for (key, child) in &self.children {
            at.push(key.clone());
            if child.children.is_empty() {
                out.push(at.clone());
            } else {
                child.collect(at, out);
            }
            at.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => true,
            Some((first, rest)) => self.children.get(first).is_some_and(|child| {
                (rest.is_empty() && child.children.is_empty()) || child.contains(rest)
            }),
        }
    }

    pub fn insert(&mut self, path: &[String]) {
        if let Some((first, rest)) = path.split_first() {
            self.children.entry(first.clone()).or_default().insert(rest);
        }
    }

    /// Removes a leaf, and the branches left empty by it.
    pub fn remove(&mut self, path: &[String]) {
        if let Some((first, rest)) = path.split_first() {
            let emptied = match self.children.get_mut(first) {
                Some(child) if rest.is_empty() => child.children.is_empty(),
                Some(child) => {
                    child.remove(rest);
                    child.children.is_empty()
                }
                None => false,
            };
            if emptied {
                self.children.remove(first);
            }
        }
    }
}

/// How a list is merged, from its schema.
enum ListKind {
    /// Items keyed by these fields.
    Map(Vec<String>),
    /// Scalars, each once.
    Set,
    /// Replaced whole.
    Atomic,
}

fn list_kind(field: Option<&Value>) -> ListKind {
    let Some(field) = field else {
        return ListKind::Atomic;
    };
    let keys: Vec<String> = field["x-kubernetes-list-map-keys"]
        .as_array()
        .map(|k| {
            k.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .or_else(|| {
            field["x-kubernetes-patch-merge-key"]
                .as_str()
                .map(|k| vec![k.to_owned()])
        })
        .unwrap_or_default();
    match field["x-kubernetes-list-type"].as_str() {
        Some("map") if !keys.is_empty() => ListKind::Map(keys),
        Some("set") => ListKind::Set,
        Some("atomic") => ListKind::Atomic,
        _ if !keys.is_empty() => ListKind::Map(keys),
        _ if field["x-kubernetes-patch-strategy"]
            .as_str()
            .is_some_and(|s| s.contains("merge")) =>
        {
            ListKind::Set
        }
        _ => ListKind::Atomic,
    }
}

/// The `k:` key of a keyed item: its key fields as compact JSON, in key order.
fn item_key(item: &Value, keys: &[String]) -> String {
    let mut map = Map::new();
    for key in keys {
        if let Some(v) = item.get(key) {
            map.insert(key.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(map))
}

/// Reads schemas for field sets and merges.
pub struct Walker<'a> {
    pub schemas: &'a dyn Schemas,
}

impl std::fmt::Debug for Walker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walker").finish_non_exhaustive()
    }
}

impl Walker<'_> {
    fn child<'s>(&'s self, schema: Option<&'s Value>, key: &str) -> Option<&'s Value> {
        self.schemas.child(schema, key)
    }

    fn items<'s>(&'s self, field: Option<&'s Value>) -> Option<&'s Value> {
        self.schemas.resolve(field?).get("items")
    }

    /// The fields `value` sets, as a manager that wrote it would own them. Server-managed
    /// metadata (name, uid, resourceVersion, …) is not owned by anyone.
    pub fn fields_of(&self, value: &Value, schema: Option<&Value>) -> FieldSet {
        let mut set = FieldSet::default();
        if let Value::Object(map) = value {
            for (key, child) in map {
                if matches!(key.as_str(), "apiVersion" | "kind" | "status") && schema.is_some() {
                    continue;
                }
                let field = self.child(schema, key);
                let mut node = self.node(child, field);
                if key == "metadata" {
                    node.children.retain(|k, _| {
                        matches!(
                            k.as_str(),
                            "f:labels" | "f:annotations" | "f:finalizers" | "f:ownerReferences"
                        )
                    });
                    if node.is_empty() {
                        continue;
                    }
                }
                set.children.insert(format!("f:{key}"), node);
            }
        }
        set
    }

    fn node(&self, value: &Value, field: Option<&Value>) -> FieldSet {
        match value {
            Value::Object(map) if !map.is_empty() => {
                let mut node = FieldSet::default();
                for (key, child) in map {
                    let sub = self.child(field, key);
                    node.children
                        .insert(format!("f:{key}"), self.node(child, sub));
                }
                node
            }
            Value::Array(items) => match list_kind(field) {
                ListKind::Map(keys) => {
                    let item_schema = self.items(field);
                    let mut node = FieldSet::default();
                    for item in items {
                        let mut entry = self.node(item, item_schema);
                        entry.children.insert(".".into(), FieldSet::default());
                        node.children.insert(item_key(item, &keys), entry);
                    }
                    node
                }
                ListKind::Set => FieldSet {
                    children: items
                        .iter()
                        .map(|item| (format!("v:{item}"), FieldSet::default()))
                        .collect(),
                },
                ListKind::Atomic => FieldSet::default(),
            },
            _ => FieldSet::default(),
        }
    }

    /// Merges an applied configuration into `object`: maps and structs by field, keyed lists by
    /// key, sets by value, anything else replaced.
    pub fn merge(&self, object: &mut Value, applied: &Value, schema: Option<&Value>) {
        let (Value::Object(current), Value::Object(applied)) = (&mut *object, applied) else {
            *object = applied.clone();
            return;
        };
        for (key, value) in applied {
            let field = self.child(schema, key);
            match current.get_mut(key) {
                Some(existing) => self.merge_value(existing, value, field),
                None => {
                    current.insert(key.clone(), value.clone());
                }
            }
        }
    }

    fn merge_value(&self, existing: &mut Value, applied: &Value, field: Option<&Value>) {
        if existing.is_object() && applied.is_object() {
            return self.merge(existing, applied, field);
        }
        if let (Value::Array(current), Value::Array(items)) = (&mut *existing, applied) {
            match list_kind(field) {
                ListKind::Map(keys) => {
                    let item_schema = self.items(field);
                    for item in items {
                        let key = item_key(item, &keys);
                        match current.iter_mut().find(|c| item_key(c, &keys) == key) {
                            Some(c) => self.merge(c, item, item_schema),
                            None => current.push(item.clone()),
                        }
                    }
                    return;
                }
                ListKind::Set => {
                    for item in items {
                        if !current.contains(item) {
                            current.push(item.clone());
                        }
                    }
                    return;
                }
                ListKind::Atomic => {}
            }
        }
        *existing = applied.clone();
    }
}

/// Finds the list item a `k:` or `v:` step names.
fn find_item(items: &[Value], step: &str) -> Option<usize> {
    if let Some(keys) = step.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(keys).ok()?;
        return items
            .iter()
            .position(|item| keys.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    let value: Value = serde_json::from_str(step.strip_prefix("v:")?).ok()?;
    items.iter().position(|item| *item == value)
}

/// The value a field path leads to.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = object;
    for step in path {
        at = match step.as_str() {
            "." => at,
            step if step.starts_with("f:") => at.get(&step[2..])?,
            step => {
                let items = at.as_array()?;
                &items[find_item(items, step)?]
            }
        };
    }
    Some(at)
}

/// Removes what a field path leads to: a field, or (for `…/k:{…}/.`) a list item.
pub fn remove_at(object: &mut Value, path: &[String]) {
    let path: Vec<&String> = match path.last().map(String::as_str) {
        Some(".") => path[..path.len() - 1].iter().collect(),
        _ => path.iter().collect(),
    };
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = object;
    for step in parents {
        let next = match step.as_str() {
            step if step.starts_with("f:") => at.get_mut(&step[2..]),
            step => match at {
                Value::Array(items) => find_item(items, step).map(move |i| &mut items[i]),
                _ => None,
            },
        };
        match next {
            Some(next) => at = next,
            None => return,
        }
    }
    match (last.strip_prefix("f:"), at) {
        (Some(field), Value::Object(map)) => {
            map.remove(field);
        }
        (None, Value::Array(items)) => {
            if let Some(i) = find_item(items, last) {
                items.remove(i);
            }
        }
        _ => {}
    }
}

/// A field path as Kubernetes prints it in conflicts: `.spec.replicas`,
/// `.spec.containers[name="web"].image`.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(field) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(keys) = step.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(keys).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = step.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: Path,
    pub managers: Vec<String>,
}

/// Whether an entry is `manager`'s apply.
fn is_apply_of(entry: &ManagedEntry, manager: &str) -> bool {
    entry.manager == manager && entry.operation == "Apply"
}

/// What one write says of itself, for `managedFields`.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub time: &'a str,
}

impl Walker<'_> {
    /// Server-side apply of `applied` (by `writer.manager`) onto `current`: conflicts with other
    /// managers' fields refuse it unless `force` takes them over; fields this manager applied
    /// before and no longer does (and nobody else owns) are removed; the rest merges.
    pub fn apply(
        &self,
        current: &Value,
        applied: &Value,
        schema: Option<&Value>,
        writer: &Writer<'_>,
        force: bool,
    ) -> Result<Value, Vec<Conflict>> {
        let mut entries = managed_fields(current);
        let applied_set = self.fields_of(applied, schema);
        let mut conflicts = Vec::new();
        for leaf in applied_set.leaves() {
            let now = value_at(current, &leaf);
            if leaf.last().map(String::as_str) == Some(".")
                || now.is_none()
                || now == value_at(applied, &leaf)
            {
                continue;
            }
            let managers: Vec<String> = entries
                .iter()
                .filter(|e| !is_apply_of(e, writer.manager) && e.fields.contains(&leaf))
                .map(|e| e.manager.clone())
                .collect();
            if !managers.is_empty() {
                conflicts.push(Conflict {
                    path: leaf,
                    managers,
                });
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        for conflict in &conflicts {
            for entry in entries
                .iter_mut()
                .filter(|e| !is_apply_of(e, writer.manager))
            {
                entry.fields.remove(&conflict.path);
            }
        }
        let previous = entries
            .iter()
            .find(|e| is_apply_of(e, writer.manager))
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let mut object = current.clone();
        for leaf in previous.leaves() {
            let kept = applied_set.contains(&leaf)
                || entries
                    .iter()
                    .any(|e| !is_apply_of(e, writer.manager) && e.fields.contains(&leaf));
            if !kept {
                remove_at(&mut object, &leaf);
            }
        }
        let mut applied = applied.clone();
        if let Some(metadata) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
            metadata.remove("resourceVersion");
        }
        self.merge(&mut object, &applied, schema);
        // An apply that changes nothing keeps its entry as it was, time included, so that the
        // object does not change either.
        let unchanged = conflicts.is_empty()
            && previous == applied_set
            && without_managed(&object) == without_managed(current);
        let time = match entries.iter().find(|e| is_apply_of(e, writer.manager)) {
            Some(entry) if unchanged => entry.time.clone(),
            _ => Some(writer.time.to_owned()),
        };
        entries.retain(|e| !is_apply_of(e, writer.manager));
        entries.push(ManagedEntry {
            manager: writer.manager.to_owned(),
            operation: "Apply".into(),
            api_version: writer.api_version.to_owned(),
            time,
            subresource: writer.subresource.to_owned(),
            fields: applied_set,
        });
        set_managed(&mut object, entries);
        Ok(object)
    }

    /// Records an ordinary write (create, update, patch) by `writer.manager`: the fields it
    /// changed become its own (operation `Update`) and no longer anyone else's.
    pub fn track_update(
        &self,
        old: Option<&Value>,
        new: &mut Value,
        schema: Option<&Value>,
        writer: &Writer<'_>,
    ) {
        let sent = managed_fields(new);
        let mut entries = match old {
            // Managed fields sent along with the object replace the stored ones, as kubectl's
            // migration from client-side apply relies on.
            Some(old) if !sent.is_empty() && sent != managed_fields(old) => sent,
            Some(old) => managed_fields(old),
            None => sent,
        };
        let new_set = self.fields_of(new, schema);
        let Some(old) = old else {
            // A create: everything it sets is its writer's.
            entries.retain(|e| !(e.manager == writer.manager && e.operation == "Update"));
            entries.push(ManagedEntry {
                manager: writer.manager.to_owned(),
                operation: "Update".into(),
                api_version: writer.api_version.to_owned(),
                time: Some(writer.time.to_owned()),
                subresource: writer.subresource.to_owned(),
                fields: new_set,
            });
            set_managed(new, entries);
            return;
        };
        let old_set = self.fields_of(old, schema);
        let changed: Vec<Path> = new_set
            .leaves()
            .into_iter()
            .filter(|leaf| value_at(new, leaf) != value_at(old, leaf) || !old_set.contains(leaf))
            .collect();
        let removed: Vec<Path> = old_set
            .leaves()
            .into_iter()
            .filter(|leaf| !new_set.contains(leaf))
            .collect();
        if changed.is_empty() && removed.is_empty() {
            set_managed(new, entries);
            return;
        }
        for entry in entries.iter_mut() {
            for leaf in changed.iter().chain(&removed) {
                entry.fields.remove(leaf);
            }
        }
        let mine = entries.iter().position(|e| {
            e.manager == writer.manager
                && e.operation == "Update"
                && e.subresource == writer.subresource
        });
        let index = match mine {
            Some(index) => index,
            None => {
                entries.push(ManagedEntry {
                    manager: writer.manager.to_owned(),
                    operation: "Update".into(),
                    api_version: writer.api_version.to_owned(),
                    time: None,
                    subresource: writer.subresource.to_owned(),
                    fields: FieldSet::default(),
                });
                entries.len() - 1
            }
        };
        let entry = &mut entries[index];
        entry.time = Some(writer.time.to_owned());
        entry.api_version = writer.api_version.to_owned();
        for leaf in &changed {
            entry.fields.insert(leaf);
        }
        set_managed(new, entries);
    }
}

fn without_managed(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

fn set_managed(object: &mut Value, mut entries: Vec<ManagedEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert(
                "managedFields".into(),
                Value::Array(entries.iter().map(ManagedEntry::to_json).collect()),
            );
        }
    }
}

/// Reads `metadata.managedFields` into (manager, operation, subresource) → fields.
pub fn managed_fields(object: &Value) -> Vec<ManagedEntry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| ManagedEntry {
            manager: entry["manager"].as_str().unwrap_or_default().to_owned(),
            operation: entry["operation"].as_str().unwrap_or("Update").to_owned(),
            api_version: entry["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: entry["time"].as_str().map(str::to_owned),
            subresource: entry["subresource"].as_str().unwrap_or_default().to_owned(),
            fields: FieldSet::from_v1(&entry["fieldsV1"]),
        })
        .collect()
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: FieldSet,
}

impl ManagedEntry {
    pub fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_v1(),
        });
        if let Some(time) = &self.time {
            entry["time"] = json!(time);
        }
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_schemas::Inline;

    fn schemas() -> Inline {
        Inline(json!({
            "Deployment": {"properties": {
                "metadata": {"properties": {"labels": {"additionalProperties": {"type": "string"}}}},
                "spec": {"$ref": "#/defs/Spec"},
            }},
            "Spec": {"properties": {
                "replicas": {"type": "integer"},
                "paused": {"type": "boolean"},
                "containers": {"type": "array", "items": {"$ref": "#/defs/Container"},
                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                "args": {"type": "array", "items": {"type": "string"}},
            }},
            "Container": {"properties": {"name": {"type": "string"}, "image": {"type": "string"}}},
        }))
    }

    fn root() -> Value {
        json!({"$ref": "#/defs/Deployment"})
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: "",
            time: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn field_sets_key_list_items_and_skip_server_metadata() {
        let schemas = schemas();
        let walker = Walker { schemas: &schemas };
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "args": ["a"], "containers": [{"name": "web", "image": "w:1"}]}});
        let fields = walker.fields_of(&object, Some(&root()));
        assert_eq!(
            fields.to_v1(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {
                "f:args": {}, "f:replicas": {},
                "f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}},
            }})
        );
        let path: Path = vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(value_at(&object, &path), Some(&json!("w:1")));
        assert_eq!(display_path(&path), ".spec.containers[name=\"web\"].image");
    }

    #[test]
    fn applying_a_field_another_manager_set_differently_conflicts_unless_forced() {
        let schemas = schemas();
        let walker = Walker { schemas: &schemas };
        let mut object = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "containers": [{"name": "web", "image": "w:1"}]}});
        walker.track_update(None, &mut object, Some(&root()), &writer("kubectl-edit"));
        let applied = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "containers": [{"name": "web", "image": "w:1"}]}});
        let conflicts = walker
            .apply(&object, &applied, Some(&root()), &writer("deployer"), false)
            .unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(display_path(&conflicts[0].path), ".spec.replicas");
        assert_eq!(conflicts[0].managers, ["kubectl-edit"]);

        let forced = walker
            .apply(&object, &applied, Some(&root()), &writer("deployer"), true)
            .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let entries = managed_fields(&forced);
        let edit = entries
            .iter()
            .find(|e| e.manager == "kubectl-edit")
            .unwrap();
        assert!(
            !edit
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()])
        );
        // The image had the same value: now shared, not taken.
        assert!(edit.fields.contains(&[
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into()
        ]));
        let deployer = entries.iter().find(|e| e.manager == "deployer").unwrap();
        assert_eq!(deployer.operation, "Apply");
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
        let schemas = schemas();
        let walker = Walker { schemas: &schemas };
        let first = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "paused": true,
            "containers": [{"name": "web", "image": "w"}, {"name": "log", "image": "l"}]}});
        let object = walker
            .apply(
                &json!({"metadata": {"name": "web"}}),
                &first,
                Some(&root()),
                &writer("deployer"),
                false,
            )
            .unwrap();
        let second = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "containers": [{"name": "web", "image": "w"}]}});
        let object = walker
            .apply(&object, &second, Some(&root()), &writer("deployer"), false)
            .unwrap();
        assert!(object["spec"].get("paused").is_none(), "{object}");
        assert_eq!(
            object["spec"]["containers"],
            json!([{"name": "web", "image": "w"}])
        );
    }

    #[test]
    fn keyed_lists_merge_by_key_on_apply() {
        let schemas = schemas();
        let walker = Walker { schemas: &schemas };
        let mut object =
            json!({"spec": {"containers": [{"name": "a", "image": "1"}], "args": ["x"]}});
        walker.merge(&mut object, &json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "a", "image": "3"}], "args": ["y"]}}), Some(&root()));
        assert_eq!(
            object["spec"]["containers"],
            json!([{"name": "a", "image": "3"}, {"name": "b", "image": "2"}])
        );
        assert_eq!(object["spec"]["args"], json!(["y"]));
    }
}
