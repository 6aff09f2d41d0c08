//! Strategic merge patch, as Kubernetes defines it: maps merge and `null` deletes a key; a list
//! whose schema says `x-kubernetes-patch-strategy: merge` merges item by item (by its
//! `x-kubernetes-patch-merge-key`, or as a set for scalars), any other list is replaced; and the
//! directives `$patch: replace|merge|delete`, `$retainKeys`, `$setElementOrder/<list>` and
//! `$deleteFromPrimitiveList/<list>` do what kubectl means by them.
//!
//! The schema comes from whoever serves the kind, through [`Schemas`]; without a schema a patch
//! still merges maps and replaces lists.

use serde_json::{Map, Value};

use crate::PatchError;

/// How a strategic merge patch reads schemas (OpenAPI v3 schema objects).
pub trait Schemas {
    /// The schema `schema` refers to (through `$ref` or `allOf: [$ref]`), or itself.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value;

    /// The schema of an object's value at `key`: a property, or the schema of every value of
    /// a map.
    fn child<'a>(&'a self, schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
        let resolved = self.resolve(schema?);
        resolved
            .get("properties")
            .and_then(|p| p.get(key))
            .or_else(|| {
                resolved
                    .get("additionalProperties")
                    .filter(|a| a.is_object())
            })
    }
}

/// Applies `patch` to `object` as a strategic merge patch, with `schema` the object's schema.
pub fn strategic_merge_patch(
    object: &mut Value,
    patch: &Value,
    schemas: &dyn Schemas,
    schema: Option<&Value>,
) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let context = Context { schemas };
    let original = match object.take() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    *object = match context.merge_map(original, patch, schema)? {
        Some(map) => Value::Object(map),
        None => Value::Object(Map::new()),
    };
    Ok(())
}

struct Context<'a> {
    schemas: &'a dyn Schemas,
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

fn malformed(message: impl Into<String>) -> PatchError {
    PatchError::Malformed(message.into())
}

/// How a list field is patched.
struct ListStrategy<'s> {
    merge: bool,
    merge_key: Option<&'s str>,
    items: Option<&'s Value>,
}

impl<'a> Context<'a> {
    fn child<'s>(&'s self, schema: Option<&'s Value>, key: &str) -> Option<&'s Value> {
        self.schemas.child(schema, key)
    }

    fn list_strategy<'s>(&'s self, field: Option<&'s Value>) -> ListStrategy<'s> {
        let Some(field) = field else {
            return ListStrategy {
                merge: false,
                merge_key: None,
                items: None,
            };
        };
        let strategy = field["x-kubernetes-patch-strategy"].as_str().unwrap_or("");
        ListStrategy {
            merge: strategy.split(',').any(|s| s == "merge"),
            merge_key: field["x-kubernetes-patch-merge-key"].as_str(),
            items: self.schemas.resolve(field).get("items"),
        }
    }

    /// Merges `patch` into `original`; `None` when the patch deletes the map.
    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
        schema: Option<&Value>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        match patch.get(PATCH).map(|d| d.as_str()) {
            None | Some(Some("merge")) => {}
            Some(Some("replace")) => {
                let mut without = patch.clone();
                without.remove(PATCH);
                return self.merge_map(Map::new(), &without, schema);
            }
            Some(Some("delete")) => return Ok(None),
            Some(other) => {
                return Err(malformed(format!(
                    "unknown patch directive {other:?} in a map: expected replace, merge or delete"
                )));
            }
        }
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let keep: Vec<&str> = retain
                .as_array()
                .ok_or_else(|| malformed("$retainKeys must be a list of field names"))?
                .iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| malformed("$retainKeys must list strings"))
                })
                .collect::<Result<_, _>>()?;
            original.retain(|key, _| keep.contains(&key.as_str()));
        }
        let mut orders = Vec::new();
        for (key, value) in patch {
            if key == PATCH || key == RETAIN_KEYS {
                continue;
            }
            if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
                orders.push((field, value));
                continue;
            }
            if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
                let remove = value
                    .as_array()
                    .ok_or_else(|| malformed(format!("{key} must be a list")))?;
                if let Some(Value::Array(items)) = original.get_mut(field) {
                    items.retain(|item| !remove.contains(item));
                }
                continue;
            }
            let field = self.child(schema, key);
            match value {
                Value::Null => {
                    original.remove(key);
                }
                Value::Object(patch) => {
                    let current = match original.remove(key) {
                        Some(Value::Object(map)) => map,
                        _ => Map::new(),
                    };
                    if let Some(merged) = self.merge_map(current, patch, field)? {
                        original.insert(key.clone(), Value::Object(merged));
                    }
                }
                Value::Array(patch) => {
                    let current = match original.remove(key) {
                        Some(Value::Array(items)) => items,
                        _ => Vec::new(),
                    };
                    let merged = self.merge_list(current, patch, field)?;
                    original.insert(key.clone(), Value::Array(merged));
                }
                scalar => {
                    original.insert(key.clone(), scalar.clone());
                }
            }
        }
        for (field, order) in orders {
            let order = order
                .as_array()
                .ok_or_else(|| malformed(format!("{SET_ELEMENT_ORDER}{field} must be a list")))?;
            let strategy = self.list_strategy(self.child(schema, field));
            if let Some(Value::Array(items)) = original.get_mut(field) {
                reorder(items, order, strategy.merge_key);
            }
        }
        Ok(Some(original))
    }

    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: &[Value],
        field: Option<&Value>,
    ) -> Result<Vec<Value>, PatchError> {
        let strategy = self.list_strategy(field);
        let replace = patch
            .iter()
            .any(|item| item.get(PATCH).and_then(Value::as_str) == Some("replace"));
        if !strategy.merge || replace {
            // Replaced whole: what is new is cleaned of directives.
            return patch
                .iter()
                .filter(|item| item.get(PATCH).is_none() || !is_directive_only(item))
                .map(|item| self.fresh(item, strategy.items))
                .collect();
        }
        let Some(key) = strategy.merge_key else {
            // A set of scalars: the union, in order.
            let mut merged = original;
            for item in patch {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            return Ok(merged);
        };
        let mut merged = original;
        for item in patch {
            let Value::Object(fields) = item else {
                return Err(malformed(format!(
                    "list items merged by {key:?} must be objects"
                )));
            };
            let id = fields.get(key).ok_or_else(|| {
                malformed(format!("a list item has no merge key {key:?}: {item}"))
            })?;
            let position = merged.iter().position(|m| m.get(key) == Some(id));
            match (fields.get(PATCH).and_then(Value::as_str), position) {
                (Some("delete"), Some(at)) => {
                    merged.remove(at);
                }
                (Some("delete"), None) => {}
                (_, Some(at)) => {
                    let current = match merged[at].take() {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    };
                    match self.merge_map(current, fields, strategy.items)? {
                        Some(map) => merged[at] = Value::Object(map),
                        None => {
                            merged.remove(at);
                        }
                    }
                }
                (_, None) => merged.push(self.fresh(item, strategy.items)?),
            }
        }
        Ok(merged)
    }

    /// A new value from a patch, with its directives applied to nothing.
    fn fresh(&self, value: &Value, schema: Option<&Value>) -> Result<Value, PatchError> {
        Ok(match value {
            Value::Object(map) => {
                Value::Object(self.merge_map(Map::new(), map, schema)?.unwrap_or_default())
            }
            other => other.clone(),
        })
    }
}

/// Whether a list item is only a `$patch` directive (`{"$patch": "replace"}`).
fn is_directive_only(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|m| m.keys().all(|k| k == PATCH))
}

/// Orders `items` as `order` lists them (by merge key, or by value for scalars); items the
/// order does not name keep their relative order after them.
fn reorder(items: &mut [Value], order: &[Value], key: Option<&str>) {
    let identity = |item: &Value| match key {
        Some(key) => item.get(key).cloned().unwrap_or(Value::Null),
        None => item.clone(),
    };
    let rank = |item: &Value| {
        let id = identity(item);
        order
            .iter()
            .position(|o| match key {
                Some(key) => o.get(key) == Some(&id),
                None => *o == id,
            })
            .unwrap_or(usize::MAX)
    };
    items.sort_by_key(|item| rank(item));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use crate::test_schemas::Inline;

    fn pod_schemas() -> Inline {
        Inline(json!({
            "Pod": {"properties": {
                "metadata": {"allOf": [{"$ref": "#/defs/Meta"}]},
                "spec": {"allOf": [{"$ref": "#/defs/PodSpec"}]},
            }},
            "Meta": {"properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "finalizers": {"type": "array", "items": {"type": "string"}, "x-kubernetes-patch-strategy": "merge"},
            }},
            "PodSpec": {"properties": {
                "containers": {"type": "array", "items": {"$ref": "#/defs/Container"},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name"},
                "tolerations": {"type": "array", "items": {"type": "object"}},
                "volumes": {"type": "array", "items": {"$ref": "#/defs/Volume"},
                    "x-kubernetes-patch-strategy": "merge,retainKeys", "x-kubernetes-patch-merge-key": "name"},
            }},
            "Container": {"properties": {
                "name": {"type": "string"},
                "image": {"type": "string"},
                "env": {"type": "array", "items": {"type": "object"},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name"},
                "args": {"type": "array", "items": {"type": "string"}},
            }},
            "Volume": {"properties": {"name": {"type": "string"}, "emptyDir": {"type": "object"}, "configMap": {"type": "object"}}},
        }))
    }

    fn patched(original: Value, patch: Value) -> Value {
        let schemas = pod_schemas();
        let root = json!({"$ref": "#/defs/Pod"});
        let mut object = original;
        strategic_merge_patch(&mut object, &patch, &schemas, Some(&root)).unwrap();
        object
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}})
    }

    #[test]
    fn lists_with_a_merge_key_merge_item_by_item() {
        let original = pod(json!([
            {"name": "web", "image": "web:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "log", "image": "log:1"},
        ]));
        let result = patched(
            original,
            json!({"spec": {"containers": [
                {"name": "web", "image": "web:2", "env": [{"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "side:1"},
            ]}}),
        );
        assert_eq!(
            result["spec"]["containers"],
            json!([
                {"name": "web", "image": "web:2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "log", "image": "log:1"},
                {"name": "sidecar", "image": "side:1"},
            ])
        );
    }

    #[test]
    fn patch_delete_removes_an_item_and_null_removes_a_key() {
        let original =
            pod(json!([{"name": "web", "image": "web:1", "env": [{"name": "A"}, {"name": "B"}]}]));
        let result = patched(
            original,
            json!({"metadata": {"labels": {"app": null}}, "spec": {"containers": [
                {"name": "web", "env": [{"$patch": "delete", "name": "B"}]},
            ]}}),
        );
        assert_eq!(result["metadata"]["labels"], json!({}));
        assert_eq!(
            result["spec"]["containers"][0]["env"],
            json!([{"name": "A"}])
        );
    }

    #[test]
    fn what_kubectl_apply_sends_when_an_env_var_is_removed() {
        let original = pod(
            json!([{"name": "web", "image": "w", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]),
        );
        let result = patched(
            original,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "containers": [{"$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}], "name": "web"}],
            }}),
        );
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "web", "image": "w", "env": [{"name": "A", "value": "1"}]}])
        );
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let original = pod(json!([{"name": "a"}, {"name": "b"}]));
        let result = patched(
            original,
            json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}], "containers": [{"name": "c"}]}}),
        );
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "c"}, {"name": "b"}, {"name": "a"}])
        );
    }

    #[test]
    fn patch_replace_replaces_a_list_or_a_map() {
        let original = pod(json!([{"name": "a", "image": "1"}, {"name": "b"}]));
        let result = patched(
            original.clone(),
            json!({"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(result["spec"]["containers"], json!([{"name": "c"}]));
        let result = patched(
            original,
            json!({"metadata": {"labels": {"$patch": "replace", "tier": "db"}}}),
        );
        assert_eq!(result["metadata"]["labels"], json!({"tier": "db"}));
    }

    #[test]
    fn patch_delete_on_a_map_removes_it() {
        let original = pod(json!([]));
        let result = patched(
            original,
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
        );
        assert!(result["metadata"].get("labels").is_none());
    }

    #[test]
    fn lists_without_a_strategy_are_replaced() {
        let original = json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "w", "args": ["x", "y"]}]}});
        let result = patched(
            original,
            json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "w", "args": ["z"]}]}}),
        );
        assert_eq!(result["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(result["spec"]["containers"][0]["args"], json!(["z"]));
    }

    #[test]
    fn primitive_lists_with_merge_are_sets_and_can_lose_values() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let result = patched(original, json!({"metadata": {"finalizers": ["b", "c"]}}));
        assert_eq!(result["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let result = patched(
            result,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(result["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn retain_keys_clears_what_the_patch_does_not_keep() {
        let original = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}});
        let result = patched(
            original,
            json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}}]}}),
        );
        assert_eq!(
            result["spec"]["volumes"],
            json!([{"name": "v", "configMap": {"name": "cm"}}])
        );
    }

    #[test]
    fn new_items_are_cleaned_of_directives_and_bad_directives_refused() {
        let original = pod(json!([]));
        let result = patched(
            original,
            json!({"spec": {"containers": [{"name": "n", "$setElementOrder/env": [{"name": "X"}], "env": [{"name": "X"}]}]}}),
        );
        assert_eq!(
            result["spec"]["containers"],
            json!([{"name": "n", "env": [{"name": "X"}]}])
        );
        let schemas = pod_schemas();
        let mut object = json!({});
        let error =
            strategic_merge_patch(&mut object, &json!({"$patch": "explode"}), &schemas, None)
                .unwrap_err();
        assert!(matches!(error, PatchError::Malformed(_)));
        let error = strategic_merge_patch(
            &mut object,
            &json!({"spec": {"containers": [{"image": "no-name"}]}}),
            &schemas,
            Some(&json!({"$ref": "#/defs/Pod"})),
        )
        .unwrap_err();
        assert!(error.to_string().contains("merge key"), "{error}");
    }

    #[test]
    fn without_a_schema_maps_merge_and_lists_are_replaced() {
        let schemas = Inline(json!({}));
        let mut object = json!({"a": {"b": 1, "c": [1, 2]}});
        strategic_merge_patch(
            &mut object,
            &json!({"a": {"d": 2, "c": [3]}}),
            &schemas,
            None,
        )
        .unwrap();
        assert_eq!(object, json!({"a": {"b": 1, "c": [3], "d": 2}}));
    }
}
