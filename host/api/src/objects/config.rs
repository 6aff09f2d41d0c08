//! ConfigMaps and Secrets: key names, base64 payloads, the 1 MiB limit, the keys each Secret
//! type needs, and `immutable`.

use serde_json::{Value, json};

use super::{Causes, Field, immutable, invalid_each, is_set};
use crate::base64;
use crate::status::StatusCause;
use crate::validation;

/// The most a ConfigMap's or Secret's data may hold, in bytes.
const MAX_DATA_BYTES: usize = 1024 * 1024;

const IMMUTABLE: &str = "field is immutable when `immutable` is set";

/// The keys each Secret type must have in `data`.
const SECRET_TYPE_KEYS: &[(&str, &[&str])] = &[
    ("kubernetes.io/dockercfg", &[".dockercfg"]),
    ("kubernetes.io/dockerconfigjson", &[".dockerconfigjson"]),
    ("kubernetes.io/ssh-auth", &["ssh-privatekey"]),
    ("kubernetes.io/tls", &["tls.crt", "tls.key"]),
];

pub(super) fn config_map(config_map: &Value, old: Option<&Value>, out: &mut Causes) {
    let data = Field::of(config_map, "data");
    let binary = Field::of(config_map, "binaryData");
    let mut size = 0;
    for (key, value) in data.entries() {
        config_key(key, &value, out);
        if binary.get(key).is_some() {
            out.push(key_invalid(
                key,
                &value,
                "duplicate of key present in binaryData",
            ));
        }
        match value.as_str() {
            Some(text) => size += text.len(),
            None => out.push(value.invalid("must be a string")),
        }
    }
    for (key, value) in binary.entries() {
        config_key(key, &value, out);
        if data.get(key).is_some() {
            out.push(key_invalid(key, &value, "duplicate of key present in data"));
        }
        size += base64_len(&value, out);
    }
    if size > MAX_DATA_BYTES {
        out.push(StatusCause::too_long("", MAX_DATA_BYTES));
    }
    if let Some(old) = old {
        unchanged_if_immutable(config_map, old, &["data", "binaryData"], out);
    }
}

pub(super) fn secret(secret: &Value, old: Option<&Value>, out: &mut Causes) {
    let data = Field::of(secret, "data");
    let mut size = 0;
    for (key, value) in data.entries() {
        config_key(key, &value, out);
        size += base64_len(&value, out);
    }
    for (key, value) in Field::of(secret, "stringData").entries() {
        config_key(key, &value, out);
        if !value.is_string() {
            out.push(value.invalid("must be a string"));
        }
    }
    if size > MAX_DATA_BYTES {
        out.push(StatusCause::too_long(&data.path, MAX_DATA_BYTES));
    }
    secret_type_keys(secret, out);
    if let Some(old) = old {
        immutable(&Field::of(secret, "type"), &old["type"], out);
        unchanged_if_immutable(secret, old, &["data"], out);
    }
}

/// A cause about the key of a data entry, which names the key as the value.
fn key_invalid(key: &str, entry: &Field, message: &str) -> StatusCause {
    StatusCause::invalid(&entry.path, &json!(key), message)
}

fn config_key(key: &str, entry: &Field, out: &mut Causes) {
    invalid_each(&entry.path, &json!(key), validation::config_key(key), out);
}

/// The decoded size of a base64 value; an undecodable one is a cause (without echoing it).
fn base64_len(value: &Field, out: &mut Causes) -> usize {
    let omitted = json!("<value omitted>");
    let Some(text) = value.as_str() else {
        out.push(StatusCause::invalid(
            &value.path,
            &omitted,
            "must be a base64 string",
        ));
        return 0;
    };
    base64::decoded_len(text).unwrap_or_else(|at| {
        let message = format!("illegal base64 data at input byte {at}");
        out.push(StatusCause::invalid(&value.path, &omitted, &message));
        0
    })
}

/// The keys a Secret's type requires.
fn secret_type_keys(secret: &Value, out: &mut Causes) {
    let data = Field::of(secret, "data");
    let missing = |key: &str| data.get(key).is_none();
    let required = |key: &str| data.path.key(key);
    match secret["type"].as_str().unwrap_or_default() {
        "kubernetes.io/service-account-token" => {
            let annotations = Field::of(secret, "metadata").child("annotations");
            let name = "kubernetes.io/service-account.name";
            if !is_set(&annotations[name]) {
                out.push(StatusCause::required(&annotations.path.key(name)));
            }
        }
        "kubernetes.io/basic-auth" => {
            if missing("username") && missing("password") {
                for key in ["username", "password"] {
                    out.push(StatusCause::required(&required(key)));
                }
            }
        }
        other => {
            let keys = SECRET_TYPE_KEYS
                .iter()
                .find(|(secret_type, _)| *secret_type == other)
                .map_or(&[][..], |(_, keys)| keys);
            for key in keys.iter().filter(|key| missing(key)) {
                out.push(StatusCause::required(&required(key)));
            }
        }
    }
}

/// Once `immutable` is true it stays true and `fields` stay as they were (absent and empty are
/// the same).
fn unchanged_if_immutable(object: &Value, old: &Value, fields: &[&str], out: &mut Causes) {
    if old["immutable"] != true {
        return;
    }
    if object["immutable"] != true {
        out.push(StatusCause::forbidden("immutable", IMMUTABLE));
    }
    for field in fields {
        let (new, old) = (&object[*field], &old[*field]);
        if new != old && (is_set(new) || is_set(old)) {
            out.push(StatusCause::forbidden(*field, IMMUTABLE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{problems, update_problems};
    use super::*;

    #[test]
    fn config_map_keys_and_duplicates() {
        let problems = problems(
            "",
            "ConfigMap",
            json!({"data": {"good.key": "v", "bad/key": "v", "both": "x"}, "binaryData": {"both": "eA==", "..": "eA=="}}),
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with(
            "data[bad/key]: Invalid value: \"bad/key\": a valid config key must consist of alphanumeric characters"
        ));
        assert_eq!(
            problems[1],
            "data[both]: Invalid value: \"both\": duplicate of key present in binaryData"
        );
        assert_eq!(
            problems[2],
            "binaryData[..]: Invalid value: \"..\": must not be '..'"
        );
        assert_eq!(
            problems[3],
            "binaryData[both]: Invalid value: \"both\": duplicate of key present in data"
        );
    }

    #[test]
    fn data_fits_one_mebibyte() {
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        assert_eq!(
            problems("", "ConfigMap", json!({"data": {"a": big}})),
            [": Too long: may not be more than 1048576 bytes"]
        );
        let encoded = base64::encode(&vec![0; MAX_DATA_BYTES + 1]);
        assert_eq!(
            problems("", "Secret", json!({"data": {"a": encoded}})),
            ["data: Too long: may not be more than 1048576 bytes"]
        );
    }

    #[test]
    fn secret_data_is_base64() {
        assert!(problems("", "Secret", json!({"data": {"a": "YWRtaW4="}})).is_empty());
        assert_eq!(
            problems("", "Secret", json!({"data": {"a": "admin!"}})),
            ["data[a]: Invalid value: \"<value omitted>\": illegal base64 data at input byte 5"]
        );
        assert_eq!(
            problems("", "Secret", json!({"stringData": {"n": 5}})),
            ["stringData[n]: Invalid value: 5: must be a string"]
        );
        assert!(problems("", "Secret", json!({"stringData": {"password": "s3cret!"}})).is_empty());
    }

    #[test]
    fn secret_types_need_their_keys() {
        assert_eq!(
            problems(
                "",
                "Secret",
                json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "x"}})
            ),
            ["data[tls.key]: Required value"]
        );
        assert_eq!(
            problems("", "Secret", json!({"type": "kubernetes.io/basic-auth"})),
            [
                "data[username]: Required value",
                "data[password]: Required value"
            ]
        );
        assert!(
            problems(
                "",
                "Secret",
                json!({"type": "kubernetes.io/basic-auth", "data": {"password": ""}})
            )
            .is_empty()
        );
        assert_eq!(
            problems(
                "",
                "Secret",
                json!({"type": "kubernetes.io/service-account-token"})
            ),
            ["metadata.annotations[kubernetes.io/service-account.name]: Required value"]
        );
        assert!(problems("", "Secret", json!({"type": "example.com/custom"})).is_empty());
    }

    #[test]
    fn immutable_objects_keep_their_data() {
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let same =
            json!({"immutable": true, "data": {"a": "1"}, "metadata": {"labels": {"x": "y"}}});
        assert!(update_problems("", "ConfigMap", same, Some(old.clone())).is_empty());
        assert_eq!(
            update_problems("", "ConfigMap", json!({"data": {"a": "2"}}), Some(old)),
            [
                "immutable: Forbidden: field is immutable when `immutable` is set",
                "data: Forbidden: field is immutable when `immutable` is set",
            ]
        );
        let mutable = json!({"data": {"a": "1"}});
        assert!(
            update_problems(
                "",
                "ConfigMap",
                json!({"data": {"a": "2"}, "immutable": true}),
                Some(mutable)
            )
            .is_empty()
        );

        let secret = json!({"type": "Opaque", "immutable": true, "data": {"a": "eA=="}});
        let changed = json!({"type": "Opaque", "immutable": true, "stringData": {"a": "y"}});
        assert_eq!(
            update_problems("", "Secret", changed, Some(secret.clone())),
            ["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let retyped =
            json!({"type": "example.com/other", "immutable": true, "data": {"a": "eA=="}});
        assert_eq!(
            update_problems("", "Secret", retyped, Some(secret)),
            ["type: Invalid value: \"example.com/other\": field is immutable"]
        );
    }
}
