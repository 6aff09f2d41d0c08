//! The schemas of the kinds Flotilla serves, and the OpenAPI v3 documents built from them.
//!
//! The field structure and descriptions of the built-in kinds come from Kubernetes' own type
//! definitions (the `k8s-openapi` crate, at v1.32). Over them this crate lays Kubernetes' patch
//! metadata — which lists merge by which key, which fields retain keys — declared in
//! [`patch_meta`], and the `x-kubernetes-group-version-kind` of every kind. The result serves
//! `/openapi/v3` (kubectl's validation, `explain` and client-side apply read it) and answers
//! the API server's questions about fields (strategic merge patches, unknown fields).
//!
//! It owns schemas and documents only: it must not do IO, and knows nothing of HTTP or storage.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps, batch, coordination, core, discovery, networking};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::JsonSchema;
use serde_json::{Map, Value, json};

mod openapi;
pub mod patch_meta;

pub use openapi::{Documents, ServedResource};

/// A kind's group, version and kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Gvk {
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
        }
    }
}

/// Every schema, by definition name (`io.k8s.api.core.v1.Pod`), and which definition each kind
/// has.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    schemas: Map<String, Value>,
    kinds: BTreeMap<Gvk, String>,
}

/// The prefix of references between definitions.
pub const REF_PREFIX: &str = "#/components/schemas/";

impl Registry {
    /// The schemas of every built-in kind Flotilla serves (and their lists, and the types the
    /// API itself speaks: Status, Scale, Eviction, Binding, DeleteOptions).
    pub fn builtin() -> Self {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        let mut kinds = BTreeMap::new();
        macro_rules! kinds {
            ($($group:literal $version:literal: $($ty:path),+;)+) => {$($(
                generator.subschema_for::<$ty>();
                let name = <$ty as JsonSchema>::schema_name();
                kinds.insert(Gvk::new($group, $version, short_name(&name)), name.into_owned());
            )+)+};
        }
        kinds! {
            "" "v1": core::v1::Namespace, core::v1::Node, core::v1::Pod, core::v1::Service,
                core::v1::Endpoints, core::v1::ConfigMap, core::v1::Secret, core::v1::Event,
                core::v1::ServiceAccount, core::v1::LimitRange, core::v1::ResourceQuota;
            "apps" "v1": apps::v1::Deployment, apps::v1::ReplicaSet, apps::v1::StatefulSet,
                apps::v1::DaemonSet, apps::v1::ControllerRevision;
            "batch" "v1": batch::v1::Job, batch::v1::CronJob;
            "networking.k8s.io" "v1": networking::v1::Ingress, networking::v1::IngressClass;
            "discovery.k8s.io" "v1": discovery::v1::EndpointSlice;
            "coordination.k8s.io" "v1": coordination::v1::Lease;
            "apiextensions.k8s.io" "v1":
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        }
        // Lists are one generic type in Rust; their schemas are made below.
        let listed: Vec<(Gvk, String)> =
            kinds.iter().map(|(g, n)| (g.clone(), n.clone())).collect();
        generator.subschema_for::<meta::DeleteOptions>();
        generator.subschema_for::<meta::ListMeta>();
        kinds! {
            "" "v1": core::v1::Binding, meta::Status;
            "autoscaling" "v1": k8s_openapi::api::autoscaling::v1::Scale;
            "policy" "v1": k8s_openapi::api::policy::v1::Eviction;
        }
        let mut schemas = generator.take_definitions(true);
        for (gvk, definition) in listed {
            let list = Gvk::new(&gvk.group, &gvk.version, &format!("{}List", gvk.kind));
            let name = format!("{definition}List");
            let mut schema = list_schema(&gvk.kind, &definition);
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": list.group, "version": list.version, "kind": list.kind}]);
            schemas.insert(name.clone(), schema);
            kinds.insert(list, name);
        }
        let mut registry = Self { schemas, kinds };
        registry.normalise();
        registry
    }

    /// Puts the schemas in the form Kubernetes serves: a reference with siblings (a description)
    /// becomes `allOf: [reference]`; kinds carry `x-kubernetes-group-version-kind`; fields
    /// carry their patch metadata.
    fn normalise(&mut self) {
        for schema in self.schemas.values_mut() {
            wrap_references(schema);
        }
        for (gvk, name) in &self.kinds {
            if let Some(schema) = self.schemas.get_mut(name)
                && schema.get("x-kubernetes-group-version-kind").is_none()
            {
                schema["x-kubernetes-group-version-kind"] = json!([{
                    "group": gvk.group, "version": gvk.version, "kind": gvk.kind,
                }]);
            }
        }
        for meta in patch_meta::BUILTIN {
            let Some(property) = self
                .schemas
                .get_mut(meta.definition)
                .and_then(|d| d.get_mut("properties"))
                .and_then(|p| p.get_mut(meta.field))
            else {
                continue;
            };
            meta.annotate(property);
        }
    }

    /// Adds a kind defined at run time (a custom resource) with its schema, and its list.
    pub fn insert_kind(&mut self, gvk: Gvk, definition: String, mut schema: Value) {
        wrap_references(&mut schema);
        let standard = json!({
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {
                "allOf": [{"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")}],
                "description": "Standard object's metadata.",
            },
        });
        if !schema.is_object() {
            schema = json!({"type": "object"});
        }
        for (field, property) in standard.as_object().into_iter().flatten() {
            if schema["properties"].get(field).is_none() {
                schema["properties"][field] = property.clone();
            }
        }
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": gvk.group, "version": gvk.version, "kind": gvk.kind}]);
        let list = Gvk::new(&gvk.group, &gvk.version, &format!("{}List", gvk.kind));
        let mut list_schema = list_schema(&gvk.kind, &definition);
        list_schema["x-kubernetes-group-version-kind"] =
            json!([{"group": list.group, "version": list.version, "kind": list.kind}]);
        self.schemas
            .insert(format!("{definition}List"), list_schema);
        self.kinds.insert(list, format!("{definition}List"));
        self.schemas.insert(definition.clone(), schema);
        self.kinds.insert(gvk, definition);
    }

    /// Every definition, by name.
    pub fn schemas(&self) -> &Map<String, Value> {
        &self.schemas
    }

    /// The definition name of a kind.
    pub fn definition_of(&self, gvk: &Gvk) -> Option<&str> {
        self.kinds.get(gvk).map(String::as_str)
    }

    /// The schema of a kind, if it has one.
    pub fn kind_schema(&self, gvk: &Gvk) -> Option<&Value> {
        self.definition_of(gvk)
            .and_then(|name| self.definition(name))
    }

    /// The schema a definition name names.
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.schemas.get(name)
    }

    /// `schema` with its reference followed (through `allOf: [reference]` too), or itself.
    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let reference = schema["$ref"]
            .as_str()
            .or_else(|| schema["allOf"][0]["$ref"].as_str());
        reference
            .and_then(|r| r.strip_prefix(REF_PREFIX))
            .and_then(|name| self.schemas.get(name))
            .unwrap_or(schema)
    }

    /// Removes the fields of `value` that `schema` does not know, returning their paths
    /// (`spec.replcas`, `spec.containers[0].imagee`), as Kubernetes drops what its types do
    /// not have. Objects whose schema lists no properties (free-form maps, raw extensions) and
    /// schemas that preserve unknown fields are left alone.
    pub fn prune_unknown(&self, schema: &Value, value: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        self.prune(schema, value, &mut String::new(), &mut unknown);
        unknown
    }

    fn prune(&self, schema: &Value, value: &mut Value, path: &mut String, out: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
            return;
        }
        match value {
            Value::Object(map) => {
                let properties = schema["properties"].as_object().filter(|p| !p.is_empty());
                let values = schema.get("additionalProperties").filter(|a| a.is_object());
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    let field = match (properties, values) {
                        (Some(properties), _) => properties.get(&key),
                        (None, Some(values)) => Some(values),
                        (None, None) => return,
                    };
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&key);
                    match field {
                        Some(field) => {
                            if let Some(child) = map.get_mut(&key) {
                                self.prune(field, child, path, out);
                            }
                        }
                        None => {
                            map.remove(&key);
                            out.push(path.clone());
                        }
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        self.prune(item_schema, item, path, out);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }

    /// The schema of a property of an object schema (resolved), and the property's own schema
    /// (with its patch metadata).
    pub fn property<'a>(&'a self, object: &'a Value, name: &str) -> Option<&'a Value> {
        self.resolve(object).get("properties")?.get(name)
    }
}

/// The schema of a list of `kind`, as Kubernetes' `<Kind>List` types are.
fn list_schema(kind: &str, definition: &str) -> Value {
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {
                "allOf": [{"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")}],
                "description": "Standard list metadata.",
            },
            "items": {
                "type": "array",
                "description": format!("List of {kind} objects."),
                "items": {"$ref": format!("{REF_PREFIX}{definition}")},
            },
        },
    })
}

impl flotilla_api::Schemas for Registry {
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        Registry::resolve(self, schema)
    }
}

/// The definition name Kubernetes gives a custom kind: its group reversed, then version and kind
/// (`stable.example.com`, `v1`, `CronTab` → `com.example.stable.v1.CronTab`).
pub fn custom_definition_name(gvk: &Gvk) -> String {
    let group: Vec<&str> = gvk.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), gvk.version, gvk.kind)
}

/// `io.k8s.api.core.v1.Pod` → `Pod`.
fn short_name(definition: &str) -> &str {
    definition.rsplit('.').next().unwrap_or(definition)
}

/// Rewrites `{"$ref": r, ...}` with siblings as `{"allOf": [{"$ref": r}], ...}`, everywhere.
fn wrap_references(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            // Only a string is a reference: JSONSchemaProps has a *property* named `$ref`.
            if map.len() > 1 && map.get("$ref").is_some_and(Value::is_string) {
                let reference = map.remove("$ref");
                map.insert("allOf".into(), json!([{"$ref": reference}]));
            }
            for value in map.values_mut() {
                wrap_references(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(wrap_references),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_their_schemas_with_descriptions_and_group_version_kind() {
        let registry = Registry::builtin();
        let name = registry
            .definition_of(&Gvk::new("apps", "v1", "Deployment"))
            .unwrap();
        assert_eq!(name, "io.k8s.api.apps.v1.Deployment");
        let deployment = registry.definition(name).unwrap();
        assert!(
            deployment["description"]
                .as_str()
                .unwrap()
                .contains("Deployment")
        );
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        // A described reference is wrapped the way Kubernetes serves it.
        let spec = &deployment["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(spec["description"].is_string());
        let resolved = registry.resolve(spec);
        assert!(resolved["properties"]["replicas"].is_object());
    }

    #[test]
    fn lists_carry_kubernetes_patch_metadata() {
        let registry = Registry::builtin();
        let pod_spec = registry.definition("io.k8s.api.core.v1.PodSpec").unwrap();
        let containers = &pod_spec["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let container = registry.definition("io.k8s.api.core.v1.Container").unwrap();
        assert_eq!(
            container["properties"]["ports"]["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let strategy = &registry
            .definition("io.k8s.api.apps.v1.DeploymentSpec")
            .unwrap()["properties"]["strategy"];
        assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
    }

    #[test]
    fn unknown_fields_are_pruned_and_named() {
        let registry = Registry::builtin();
        let name = registry
            .definition_of(&Gvk::new("apps", "v1", "Deployment"))
            .unwrap();
        let schema = json!({"$ref": format!("{REF_PREFIX}{name}")});
        let mut deployment = json!({
            "metadata": {"name": "web", "labels": {"any": "label"}, "colour": "red"},
            "spec": {
                "replcas": 3,
                "template": {"spec": {"containers": [{"name": "c", "imagee": "x", "resources": {"limits": {"cpu": "1"}}}]}},
            },
        });
        let unknown = registry.prune_unknown(&schema, &mut deployment);
        assert_eq!(
            unknown,
            [
                "metadata.colour",
                "spec.replcas",
                "spec.template.spec.containers[0].imagee"
            ]
        );
        assert_eq!(deployment["metadata"]["labels"]["any"], "label");
        assert!(deployment["spec"].get("replcas").is_none());
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn properties_named_ref_are_not_references() {
        let registry = Registry::builtin();
        let props = registry
            .definition("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps")
            .unwrap();
        assert_eq!(props["properties"]["$ref"]["type"], "string");
    }

    #[test]
    fn every_patch_metadata_entry_names_a_real_field() {
        let registry = Registry::builtin();
        for meta in patch_meta::BUILTIN {
            let definition = registry
                .definition(meta.definition)
                .unwrap_or_else(|| panic!("no definition {}", meta.definition));
            assert!(
                definition["properties"].get(meta.field).is_some(),
                "{}.{} does not exist",
                meta.definition,
                meta.field
            );
        }
    }
}
