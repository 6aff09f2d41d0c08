//! Validation and defaulting against a structural OpenAPI v3 schema, as Kubernetes applies a
//! CustomResourceDefinition's `openAPIV3Schema` to its objects: types (with `nullable` and
//! `x-kubernetes-int-or-string`), `required`, `enum`, numeric bounds, string lengths, item
//! counts, and `default` values for absent fields. Schemas are inline (structural schemas have no
//! references). Messages follow Kubernetes' (`spec.replicas in body must be of type integer`).

use serde_json::{Map, Value, json};

use crate::StatusCause;

/// Fills absent fields that have a `default` in `schema`, at every depth. As in Kubernetes, a
/// null where the schema is not `nullable` is dropped first (and then defaulted, if it can be).
pub fn apply_schema_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    if map.get(name).is_some_and(Value::is_null) && property["nullable"] != true {
                        map.remove(name);
                    }
                    if !map.contains_key(name)
                        && let Some(default) = property.get("default")
                    {
                        map.insert(name.clone(), default.clone());
                    }
                    if let Some(child) = map.get_mut(name) {
                        apply_schema_defaults(property, child);
                    }
                }
            } else if let Some(values) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                if values["nullable"] != true {
                    map.retain(|_, v| !v.is_null());
                }
                map.values_mut()
                    .for_each(|v| apply_schema_defaults(values, v));
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                items
                    .iter_mut()
                    .for_each(|v| apply_schema_defaults(item, v));
            }
        }
        _ => {}
    }
}

/// What is wrong with `value` against `schema`, with field paths from `root` (`spec`).
pub fn validate_against(schema: &Value, value: &Value, root: &str) -> Vec<StatusCause> {
    let mut causes = Vec::new();
    check(schema, value, root, &mut causes);
    causes
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<StatusCause>) {
    let actual = json_type(value);
    if actual == "null" && schema["nullable"] == json!(true) {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !matches!(actual, "integer" | "string") {
            out.push(StatusCause::invalid(
                path,
                value,
                &format!("{path} in body must be of type int-or-string: {actual:?}"),
            ));
        }
        return;
    }
    if let Some(expected) = schema["type"].as_str() {
        let fits = expected == actual || (expected == "number" && actual == "integer");
        if !fits {
            out.push(StatusCause::invalid(
                path,
                value,
                &format!("{path} in body must be of type {expected}: {actual:?}"),
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        let supported: Vec<&str> = supported.iter().map(String::as_str).collect();
        out.push(StatusCause::not_supported(path, value, &supported));
    }
    match value {
        Value::Object(map) => check_object(schema, map, path, out),
        Value::Array(items) => {
            limit(
                schema,
                "minItems",
                false,
                items.len(),
                path,
                value,
                out,
                |n| format!("{path} in body should have at least {n} items"),
            );
            limit(
                schema,
                "maxItems",
                true,
                items.len(),
                path,
                value,
                out,
                |n| format!("{path} in body should have at most {n} items"),
            );
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(item, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::String(text) => {
            let length = text.chars().count();
            limit(schema, "minLength", false, length, path, value, out, |n| {
                format!("{path} in body should be at least {n} chars long")
            });
            limit(schema, "maxLength", true, length, path, value, out, |n| {
                format!("{path} in body may not be longer than {n}")
            });
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or_default();
            if let Some(min) = schema["minimum"].as_f64() {
                let exclusive = schema["exclusiveMinimum"] == json!(true);
                if n < min || (exclusive && n == min) {
                    let relation = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    out.push(StatusCause::invalid(
                        path,
                        value,
                        &format!("{path} in body should be {relation} {min}"),
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                let exclusive = schema["exclusiveMaximum"] == json!(true);
                if n > max || (exclusive && n == max) {
                    let relation = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    out.push(StatusCause::invalid(
                        path,
                        value,
                        &format!("{path} in body should be {relation} {max}"),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &str, out: &mut Vec<StatusCause>) {
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !map.contains_key(name)
        {
            out.push(StatusCause::required(join(path, name)));
        }
    }
    let properties = schema["properties"].as_object();
    let values = schema.get("additionalProperties").filter(|a| a.is_object());
    for (name, value) in map {
        // The root's metadata is validated as object metadata, elsewhere.
        if path.is_empty() && matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
            continue;
        }
        match (properties.and_then(|p| p.get(name)), values) {
            (Some(property), _) | (None, Some(property)) => {
                check(property, value, &join(path, name), out)
            }
            (None, None) => {}
        }
    }
}

/// A cause when `actual` is on the wrong side of the schema's `keyword` limit: below a minimum
/// (`at_most == false`) or above a maximum.
#[allow(clippy::too_many_arguments)]
fn limit(
    schema: &Value,
    keyword: &str,
    at_most: bool,
    actual: usize,
    path: &str,
    value: &Value,
    out: &mut Vec<StatusCause>,
    message: impl Fn(u64) -> String,
) {
    if let Some(limit) = schema[keyword].as_u64() {
        let actual = actual as u64;
        if (at_most && actual > limit) || (!at_most && actual < limit) {
            out.push(StatusCause::invalid(path, value, &message(limit)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                "cronSpec": {"type": "string", "minLength": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "image": {"type": "string", "default": "app.wasm"},
                "mode": {"type": "string", "enum": ["fast", "slow"]},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "extra": {"type": "object", "nullable": true, "additionalProperties": {"type": "integer"}},
            }},
        }})
    }

    #[test]
    fn absent_fields_get_their_defaults() {
        let mut object = json!({"spec": {"cronSpec": "* * * * *", "replicas": 3}});
        apply_schema_defaults(&schema(), &mut object);
        assert_eq!(object["spec"]["image"], "app.wasm");
        assert_eq!(object["spec"]["replicas"], 3);
    }

    #[test]
    fn nulls_are_dropped_unless_nullable_then_defaulted() {
        let mut object = json!({"spec": {
            "cronSpec": null, "replicas": null, "extra": null, "labels": {"a": null},
        }});
        let mut schema = schema();
        schema["properties"]["spec"]["properties"]["labels"] =
            json!({"type": "object", "additionalProperties": {"type": "string"}});
        apply_schema_defaults(&schema, &mut object);
        assert_eq!(
            object,
            json!({"spec": {"replicas": 1, "image": "app.wasm", "extra": null, "labels": {}}})
        );
    }

    #[test]
    fn violations_name_their_fields_in_kubernetes_words() {
        let object = json!({"spec": {
            "replicas": "three", "mode": "medium", "port": true,
            "tags": ["a", "b", "c"], "extra": {"x": "y"},
        }});
        let causes = validate_against(&schema(), &object, "");
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.cronSpec",
                "spec.extra.x",
                "spec.mode",
                "spec.port",
                "spec.replicas",
                "spec.tags"
            ]
        );
        let replicas = causes.iter().find(|c| c.field == "spec.replicas").unwrap();
        assert!(
            replicas
                .message
                .contains("spec.replicas in body must be of type integer: \"string\""),
            "{}",
            replicas.message
        );
        assert_eq!(causes[0].reason, "FieldValueRequired");
    }

    #[test]
    fn bounds_and_nulls() {
        let object = json!({"spec": {"cronSpec": "", "replicas": 0, "extra": null}});
        let causes = validate_against(&schema(), &object, "");
        let messages: Vec<&str> = causes.iter().map(|c| c.message.as_str()).collect();
        assert_eq!(causes.len(), 2, "{messages:?}");
        assert!(
            messages[0].contains("should be at least 1 chars long"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("should be greater than or equal to 1"),
            "{messages:?}"
        );
    }
}
