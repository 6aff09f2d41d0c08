//! Request bodies: JSON (also when no Content-Type is sent, as the Python client does) and YAML,
//! decoded into JSON values with bounded memory. YAML aliases can make a small document expand
//! without limit (a "billion laughs" bomb); decoding counts every node and byte as it is built,
//! aliases included, and refuses a document once that passes [`EXPANDED_LIMIT`].

use std::cell::{Cell, RefCell};
use std::fmt;

use flotilla_api::{Status, StatusReason};
use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::ApiError;

/// The most a decoded body may weigh: bytes of text plus a few bytes per node.
pub const EXPANDED_LIMIT: usize = 32 * 1024 * 1024;

/// What a node costs beyond its text.
const NODE_COST: usize = 16;

/// The body's media type, or 415 for one the server does not read.
fn media_type(content_type: &str) -> Result<&'static str, ApiError> {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" | "*/*" => Ok("json"),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok("yaml"),
        crate::protobuf::MEDIA_TYPE => Ok("protobuf"),
        other => Err(ApiError::from(Status::new(
            StatusReason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
            ),
        ))),
    }
}

/// A decoded body, and the fields it gave more than once (`metadata.name`).
#[derive(Debug)]
pub(crate) struct Decoded {
    pub value: Value,
    pub duplicates: Vec<String>,
}

/// Decodes a JSON body.
pub(crate) fn parse(body: &[u8]) -> Result<Value, ApiError> {
    decode_json(body).map(|d| d.value)
}

/// Decodes a body sent with `content_type`.
pub(crate) fn parse_as(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    decode(content_type, body).map(|d| d.value)
}

/// Decodes a body sent with `content_type`, noting duplicate fields.
pub(crate) fn decode(content_type: &str, body: &[u8]) -> Result<Decoded, ApiError> {
    match media_type(content_type)? {
        "yaml" => decode_yaml(body),
        "protobuf" => Ok(Decoded {
            value: crate::protobuf::decode(body)?,
            duplicates: Vec::new(),
        }),
        _ => decode_json(body),
    }
}

fn decode_json(body: &[u8]) -> Result<Decoded, ApiError> {
    let state = State::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = Bounded { state: &state }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| {
            ApiError::from(Status::bad_request(format!(
                "the request body is not valid JSON: {e}"
            )))
        })?;
    Ok(state.into_decoded(value))
}

/// Decodes one YAML document within [`EXPANDED_LIMIT`].
fn decode_yaml(body: &[u8]) -> Result<Decoded, ApiError> {
    let state = State::default();
    let deserializer = serde_yaml::Deserializer::from_slice(body);
    let value = Bounded { state: &state }
        .deserialize(deserializer)
        .map_err(|e| {
            ApiError::from(Status::bad_request(format!(
                "the request body is not valid YAML: {e}"
            )))
        })?;
    Ok(state.into_decoded(value))
}

#[cfg(test)]
fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    decode_yaml(body).map(|d| d.value)
}

/// What decoding keeps track of: the budget left, where it is, and the duplicate fields.
struct State {
    budget: Cell<usize>,
    path: RefCell<Vec<String>>,
    duplicates: RefCell<Vec<String>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            budget: Cell::new(EXPANDED_LIMIT),
            path: RefCell::default(),
            duplicates: RefCell::default(),
        }
    }
}

impl State {
    fn into_decoded(self, value: Value) -> Decoded {
        Decoded {
            value,
            duplicates: self.duplicates.into_inner(),
        }
    }
}

/// A JSON value decoder that charges every node against a shared budget.
#[derive(Clone, Copy)]
struct Bounded<'a> {
    state: &'a State,
}

impl Bounded<'_> {
    fn charge<E: serde::de::Error>(&self, bytes: usize) -> Result<(), E> {
        let cost = bytes.saturating_add(NODE_COST);
        match self.state.budget.get().checked_sub(cost) {
            Some(left) => {
                self.state.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(format!(
                "the document expands to more than {EXPANDED_LIMIT} bytes (YAML aliases?)"
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a JSON number")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key_seed(self)? {
            let key = match key {
                Value::String(key) => key,
                // YAML allows any scalar as a key; JSON objects have strings.
                Value::Bool(_) | Value::Number(_) | Value::Null => key.to_string(),
                _ => return Err(serde::de::Error::custom("mapping keys must be scalars")),
            };
            self.state.path.borrow_mut().push(key.clone());
            let value = map.next_value_seed(self);
            let path = self.state.path.borrow().join(".");
            self.state.path.borrow_mut().pop();
            if object.insert(key, value?).is_some() {
                self.state.duplicates.borrow_mut().push(path);
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_bodies_decode_to_the_same_object() {
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  n: \"1\"\n  on: yes\n";
        let json = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"n":"1","on":"yes"}}"#;
        assert_eq!(
            parse_as("application/yaml", yaml).unwrap(),
            parse_as("", json).unwrap()
        );
    }

    #[test]
    fn duplicate_fields_are_noted_with_their_paths() {
        let decoded = decode(
            "application/json",
            br#"{"metadata":{"name":"a","name":"b"},"data":{"k":"1"},"data":{}}"#,
        )
        .unwrap();
        assert_eq!(decoded.duplicates, ["metadata.name", "data"]);
        assert_eq!(decoded.value["metadata"]["name"], "b");
        assert!(decode("application/json", b"{} trailing").is_err());
    }

    #[test]
    fn unknown_media_types_are_415() {
        let error = parse_as("text/plain", b"hello").unwrap_err();
        assert_eq!(error.0.code(), 415);
    }

    #[test]
    fn malformed_bodies_are_400() {
        assert_eq!(
            parse_as("application/json", b"{").unwrap_err().0.code(),
            400
        );
        assert_eq!(
            parse_as("application/yaml", b"a: [").unwrap_err().0.code(),
            400
        );
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (level, previous) in ('b'..='i').zip('a'..) {
            let aliases = vec![format!("*{previous}"); 9].join(",");
            bomb.push_str(&format!("{level}: &{level} [{aliases}]\n"));
        }
        let error = parse_yaml(bomb.as_bytes()).unwrap_err();
        assert_eq!(error.0.code(), 400);
    }

    #[test]
    fn one_big_scalar_aliased_many_times_is_refused() {
        let mut bomb = format!("big: &big \"{}\"\nmany:\n", "x".repeat(1024 * 1024));
        for _ in 0..100 {
            bomb.push_str("- *big\n");
        }
        let error = parse_yaml(bomb.as_bytes()).unwrap_err();
        assert!(
            error.0.message.contains("expands to more than"),
            "{}",
            error.0.message
        );
    }
}
