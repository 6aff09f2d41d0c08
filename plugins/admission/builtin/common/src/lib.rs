//! What the built-in admission policies share: reads of the host's informer cache as JSON
//! (natively, through the SDK's `NativeHost`), and the checks of an AdmissionPolicy's
//! settings — an object of known keys, lists of names, or no settings at all — with one
//! wording. Pure but for the cache reads; nothing here keeps state between calls.

use serde_json::{Map, Value};

fn parsed(kind: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("the cache's {kind}: {e}"))
}

/// One object of `kind` from the host's cache (none when it has no such object).
pub fn cached(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Value>, String> {
    flotilla_sdk::cache::get(api_version, kind, namespace, name)
        .map_err(|s| s.message)?
        .map(|text| parsed(kind, &text))
        .transpose()
}

/// The objects of `kind` in `namespace` from the host's cache.
pub fn cached_in(api_version: &str, kind: &str, namespace: &str) -> Result<Vec<Value>, String> {
    flotilla_sdk::cache::list(api_version, kind, Some(namespace), "")
        .map_err(|s| s.message)?
        .iter()
        .map(|text| parsed(kind, text))
        .collect()
}

/// The Namespace `name` from the host's cache.
pub fn cached_namespace(name: &str) -> Result<Option<Value>, String> {
    cached("v1", "Namespace", None, name)
}

/// Settings that must be a JSON object of the `known` keys (empty text: `{}`).
pub fn settings_object(text: &str, known: &[&str]) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("settings are not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err(format!("settings must be a JSON object, not {value}"));
    };
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|key| !known.contains(key))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        let quoted: Vec<String> = known.iter().map(|k| format!("\"{k}\"")).collect();
        let which = match quoted.as_slice() {
            [one] => format!("the only setting is {one}"),
            [rest @ .., last] => format!("the settings are {} and {last}", rest.join(", ")),
            [] => "there are no settings".to_owned(),
        };
        return Err(format!("unknown settings {} ({which})", unknown.join(", ")));
    }
    Ok(map)
}

/// The list of non-empty names at `key` (empty when absent).
pub fn names(map: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let Some(list) = map.get(key) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| format!("{key} must be a list of names, not {list}"))?;
    list.iter()
        .map(|name| {
            name.as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{key} must hold non-empty strings, not {name}"))
        })
        .collect()
}

/// Settings of a policy that takes none: empty, `null` or `{}`.
pub fn no_settings(policy: &str, text: &str) -> Result<(), String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(());
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) if map.is_empty() => Ok(()),
        Ok(Value::Null) => Ok(()),
        Ok(_) => Err(format!(
            "{policy} takes no settings: spec.settings must be {{}}, not {trimmed}"
        )),
        Err(e) => Err(format!("settings are not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_objects_name_their_unknown_keys() {
        assert!(settings_object("", &["a"]).unwrap().is_empty());
        assert_eq!(
            settings_object(r#"{"b": 1, "c": 2}"#, &["a"]).unwrap_err(),
            "unknown settings b, c (the only setting is \"a\")"
        );
        assert_eq!(
            settings_object(r#"{"z": 1}"#, &["a", "b"]).unwrap_err(),
            "unknown settings z (the settings are \"a\" and \"b\")"
        );
        assert!(
            settings_object("[1]", &["a"])
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            settings_object("{", &["a"])
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn names_are_lists_of_non_empty_strings() {
        let map = settings_object(
            r#"{"a": ["x", "y"], "b": "x", "c": [""]}"#,
            &["a", "b", "c"],
        )
        .unwrap();
        assert_eq!(names(&map, "a").unwrap(), ["x", "y"]);
        assert!(names(&map, "b").unwrap_err().contains("must be a list"));
        assert!(names(&map, "c").unwrap_err().contains("non-empty strings"));
        assert!(names(&map, "d").unwrap().is_empty());
    }

    #[test]
    fn no_settings_means_empty_null_or_an_empty_object() {
        for ok in ["", " ", "null", "{}"] {
            assert!(no_settings("p", ok).is_ok(), "{ok:?}");
        }
        assert_eq!(
            no_settings("p", r#"{"a": 1}"#).unwrap_err(),
            "p takes no settings: spec.settings must be {}, not {\"a\": 1}"
        );
    }
}
