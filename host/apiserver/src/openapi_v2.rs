//! `/openapi/v2`: the schemas as one Swagger 2.0 document in gnostic's protobuf encoding
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), which kubectl reads when it
//! validates on the client, as it does for `kind: List` files. Only the parts kubectl reads are
//! encoded: definitions with their types, properties, items, references, required fields and
//! `x-kubernetes-group-version-kind`.

use bytes::Bytes;
use prost::Message;
use serde_json::Value;

/// What the document is sent as: kubectl asks for
/// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, which is not a valid media type
/// to send back (Go's parser refuses the `@`), so the bytes go as Kubernetes sends them.
pub const MEDIA_TYPE: &str = "application/octet-stream";

#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Paths {}

#[derive(Clone, PartialEq, Message)]
struct Definitions {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedSchema {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Schema {
    #[prost(string, tag = "1")]
    reference: String,
    #[prost(string, tag = "2")]
    format: String,
    #[prost(string, tag = "4")]
    description: String,
    #[prost(string, repeated, tag = "19")]
    required: Vec<String>,
    #[prost(message, optional, boxed, tag = "21")]
    additional_properties: Option<Box<AdditionalProperties>>,
    #[prost(message, optional, tag = "22")]
    kind: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    items: Option<ItemsItem>,
    #[prost(message, optional, tag = "25")]
    properties: Option<Properties>,
    #[prost(message, repeated, tag = "31")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct AdditionalProperties {
    #[prost(message, optional, tag = "1")]
    schema: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Properties {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(string, tag = "2")]
    yaml: String,
}

/// `#/components/schemas/X` (also behind `allOf: [ref]`) → `#/definitions/X`.
fn reference(schema: &Value) -> String {
    schema["$ref"]
        .as_str()
        .or_else(|| schema["allOf"][0]["$ref"].as_str())
        .and_then(|r| r.strip_prefix(flotilla_schema::REF_PREFIX))
        .map(|name| format!("#/definitions/{name}"))
        .unwrap_or_default()
}

fn schema(value: &Value) -> Schema {
    let text = |field: &str| value[field].as_str().unwrap_or_default().to_owned();
    let properties = value["properties"].as_object().map(|map| Properties {
        additional_properties: map
            .iter()
            .map(|(name, v)| NamedSchema {
                name: name.clone(),
                value: Some(schema(v)),
            })
            .collect(),
    });
    let vendor_extension = ["x-kubernetes-group-version-kind"]
        .iter()
        .filter_map(|name| {
            value.get(*name).map(|v| NamedAny {
                name: (*name).to_owned(),
                // JSON is YAML: the extension's value as kube-openapi reads it.
                value: Some(AnyValue {
                    yaml: v.to_string(),
                }),
            })
        })
        .collect();
    Schema {
        reference: reference(value),
        format: text("format"),
        description: text("description"),
        required: value["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
        additional_properties: value
            .get("additionalProperties")
            .filter(|a| a.is_object())
            .map(|a| {
                Box::new(AdditionalProperties {
                    schema: Some(schema(a)),
                })
            }),
        kind: value["type"].as_str().map(|t| TypeItem {
            value: vec![t.to_owned()],
        }),
        items: value.get("items").map(|i| ItemsItem {
            schema: vec![schema(i)],
        }),
        properties,
        vendor_extension,
    }
}

/// The whole document, encoded.
pub(crate) fn encode(registry: &flotilla_schema::Registry) -> Bytes {
    let document = Document {
        swagger: "2.0".into(),
        info: Some(Info {
            title: "Kubernetes".into(),
            version: "v1.32.0".into(),
        }),
        paths: Some(Paths {}),
        definitions: Some(Definitions {
            additional_properties: registry
                .schemas()
                .iter()
                .map(|(name, value)| NamedSchema {
                    name: name.clone(),
                    value: Some(schema(value)),
                })
                .collect(),
        }),
    };
    Bytes::from(document.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_keep_references_types_and_kinds() {
        let registry = flotilla_schema::Registry::builtin();
        let bytes = encode(&registry);
        let document = Document::decode(bytes).unwrap();
        assert_eq!(document.swagger, "2.0");
        let definitions = document.definitions.unwrap().additional_properties;
        let deployment = definitions
            .iter()
            .find(|d| d.name == "io.k8s.api.apps.v1.Deployment")
            .and_then(|d| d.value.clone())
            .unwrap();
        assert_eq!(deployment.kind.unwrap().value, ["object"]);
        let spec = deployment
            .properties
            .unwrap()
            .additional_properties
            .into_iter()
            .find(|p| p.name == "spec")
            .and_then(|p| p.value)
            .unwrap();
        assert_eq!(
            spec.reference,
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        let gvk = &deployment.vendor_extension[0];
        assert_eq!(gvk.name, "x-kubernetes-group-version-kind");
        assert!(
            gvk.value
                .as_ref()
                .unwrap()
                .yaml
                .contains(r#""kind":"Deployment""#)
        );
    }
}
