//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), applied to objects in Kubernetes' JSON
//! wire format.

use serde_json::Value;

/// A patch that could not be read or applied. `Malformed` is the client's syntax (400); the
/// others are well-formed patches that do not apply to this object (422), as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("malformed patch: {0}")]
    Malformed(String),
    #[error("the patch does not apply: {0}")]
    DoesNotApply(String),
}

/// Applies an RFC 7386 merge patch: objects merge key by key, `null` removes a key, anything else
/// replaces the target (lists are replaced whole).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in entries {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Splits an RFC 6901 pointer into unescaped tokens.
fn pointer_tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PatchError::Malformed(format!(
            "path {pointer:?} must start with '/'"
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, PatchError> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let index: usize = token
        .parse()
        .ok()
        .filter(|_| token == "0" || !token.starts_with('0'))
        .ok_or_else(|| PatchError::DoesNotApply(format!("{token:?} is not an array index")))?;
    let limit = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if index > limit || (!allow_end && len == 0) {
        return Err(PatchError::DoesNotApply(format!(
            "index {index} is out of bounds (length {len})"
        )));
    }
    Ok(index)
}

/// The parent container of the location a pointer names, and the last token.
fn parent<'a>(
    document: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<(&'a mut Value, String), PatchError> {
    let (last, walk) = tokens
        .split_last()
        .ok_or_else(|| PatchError::DoesNotApply("the root cannot be a target here".into()))?;
    let mut at = document;
    for token in walk {
        at = match at {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => {
                let len = items.len();
                items.get_mut(array_index(token, len, false)?)
            }
            _ => None,
        }
        .ok_or_else(|| PatchError::DoesNotApply(format!("path {path:?} does not exist")))?;
    }
    Ok((at, last.clone()))
}

fn get<'a>(document: &'a Value, path: &str) -> Result<&'a Value, PatchError> {
    let mut at = document;
    for token in pointer_tokens(path)? {
        at = match at {
            Value::Object(map) => map.get(&token),
            Value::Array(items) => items.get(array_index(&token, items.len(), false)?),
            _ => None,
        }
        .ok_or_else(|| PatchError::DoesNotApply(format!("path {path:?} does not exist")))?;
    }
    Ok(at)
}

fn add(document: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let tokens = pointer_tokens(path)?;
    if tokens.is_empty() {
        *document = value;
        return Ok(());
    }
    let (container, last) = parent(document, &tokens, path)?;
    match container {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            let index = array_index(&last, items.len(), true)?;
            items.insert(index, value);
        }
        _ => {
            return Err(PatchError::DoesNotApply(format!(
                "the parent of {path:?} is neither an object nor an array"
            )));
        }
    }
    Ok(())
}

fn remove(document: &mut Value, path: &str) -> Result<Value, PatchError> {
    let tokens = pointer_tokens(path)?;
    let (container, last) = parent(document, &tokens, path)?;
    let missing = || PatchError::DoesNotApply(format!("path {path:?} does not exist"));
    match container {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(items) => {
            let index = array_index(&last, items.len(), false)?;
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

fn field<'a>(op: &'a Value, name: &str, index: usize) -> Result<&'a Value, PatchError> {
    op.get(name).ok_or_else(|| {
        PatchError::Malformed(format!("operation {index} lacks the {name:?} member"))
    })
}

fn path_field<'a>(op: &'a Value, name: &str, index: usize) -> Result<&'a str, PatchError> {
    field(op, name, index)?.as_str().ok_or_else(|| {
        PatchError::Malformed(format!("operation {index}: {name:?} must be a string"))
    })
}

/// Applies an RFC 6902 JSON patch. Either every operation applies or the document is left as
/// it was.
pub fn json_patch(document: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let operations = patch.as_array().ok_or_else(|| {
        PatchError::Malformed("a JSON patch must be an array of operations".into())
    })?;
    let mut working = document.clone();
    for (index, op) in operations.iter().enumerate() {
        let name = path_field(op, "op", index)?;
        let path = path_field(op, "path", index)?;
        match name {
            "add" => add(&mut working, path, field(op, "value", index)?.clone())?,
            "remove" => {
                remove(&mut working, path)?;
            }
            "replace" => {
                remove(&mut working, path)?;
                add(&mut working, path, field(op, "value", index)?.clone())?;
            }
            "move" => {
                let from = path_field(op, "from", index)?;
                if path.starts_with(&format!("{from}/")) {
                    return Err(PatchError::DoesNotApply(format!(
                        "cannot move {from:?} into its own child {path:?}"
                    )));
                }
                let value = remove(&mut working, from)?;
                add(&mut working, path, value)?;
            }
            "copy" => {
                let from = path_field(op, "from", index)?;
                let value = get(&working, from)?.clone();
                add(&mut working, path, value)?;
            }
            "test" => {
                let expected = field(op, "value", index)?;
                if get(&working, path)? != expected {
                    return Err(PatchError::DoesNotApply(format!(
                        "test operation {index} failed: {path:?} is not {expected}"
                    )));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "operation {index}: unknown op {other:?}"
                )));
            }
        }
    }
    *document = working;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own examples (appendix A), a representative subset.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"list": [1, 2, 3]}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
                {"op": "remove", "path": "/spec/list/0"},
                {"op": "add", "path": "/spec/list/-", "value": 4},
                {"op": "add", "path": "/spec/list/0", "value": 0},
                {"op": "copy", "from": "/metadata/labels/a", "path": "/spec/copied"},
                {"op": "move", "from": "/spec/copied", "path": "/spec/moved"},
                {"op": "test", "path": "/spec/moved", "value": "9"},
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a": "9", "b/c": "2"}}, "spec": {"list": [0, 2, 3, 4], "moved": "9"}})
        );
    }

    #[test]
    fn json_patch_is_all_or_nothing_and_explains_failures() {
        let original = json!({"a": {"b": 1}, "list": [1]});
        let mut doc = original.clone();
        let err = json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/a/b", "value": 2},
                {"op": "test", "path": "/a/b", "value": 3},
            ]),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::DoesNotApply(_)), "{err}");
        assert_eq!(doc, original, "a failed patch must change nothing");

        let failures = [
            (json!([{"op": "remove", "path": "/missing"}]), false),
            (
                json!([{"op": "replace", "path": "/list/5", "value": 0}]),
                false,
            ),
            (json!([{"op": "add", "path": "/nope/x", "value": 0}]), false),
            (
                json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]),
                false,
            ),
            (json!([{"op": "jump", "path": "/a"}]), true),
            (json!([{"op": "add", "path": "a", "value": 1}]), true),
            (json!([{"op": "add", "path": "/a"}]), true),
            (json!({"op": "add"}), true),
        ];
        for (patch, malformed) in failures {
            let err = json_patch(&mut doc, &patch).unwrap_err();
            assert_eq!(
                matches!(err, PatchError::Malformed(_)),
                malformed,
                "{patch}: {err}"
            );
        }
    }
}
