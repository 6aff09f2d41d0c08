//! The OpenAPI v3 documents: an index (`/openapi/v3`) naming one document per group version,
//! each reachable at a URL carrying its content hash so clients may cache it for good, and the
//! documents themselves with the paths of that group version's resources and the schemas they
//! reach.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{Gvk, REF_PREFIX, Registry};

/// A served resource, as its paths are described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedResource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// `status`, `scale`, `binding`, `eviction`, `log`.
    pub subresources: Vec<String>,
    /// Whether strategic merge patches are accepted (custom resources take merge and JSON
    /// patches only, and kubectl chooses its patch type by what the document lists).
    pub strategic_merge: bool,
}

impl ServedResource {
    fn gvk(&self) -> Gvk {
        Gvk::new(&self.group, &self.version, &self.kind)
    }

    /// `api/v1` or `apis/apps/v1`.
    fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }
}

/// The documents, built once.
#[derive(Debug, Clone)]
pub struct Documents {
    index: String,
    /// By group-version path (`api/v1`): the content hash and the document.
    documents: BTreeMap<String, (String, String)>,
}

impl Documents {
    pub fn build(registry: &Registry, resources: &[ServedResource]) -> Self {
        let mut by_group_version: BTreeMap<String, Vec<&ServedResource>> = BTreeMap::new();
        for resource in resources {
            by_group_version
                .entry(resource.group_version_path())
                .or_default()
                .push(resource);
        }
        let mut documents = BTreeMap::new();
        let mut index = Map::new();
        for (path, resources) in by_group_version {
            let document = document(registry, &resources).to_string();
            let hash = hex::encode_upper(Sha256::digest(document.as_bytes()));
            index.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            );
            documents.insert(path, (hash, document));
        }
        Self {
            index: json!({"paths": index}).to_string(),
            documents,
        }
    }

    /// The `/openapi/v3` index.
    pub fn index(&self) -> &str {
        &self.index
    }

    /// The document of a group version (`api/v1`, `apis/apps/v1`) and its hash.
    pub fn document(&self, path: &str) -> Option<(&str, &str)> {
        self.documents
            .get(path)
            .map(|(hash, document)| (hash.as_str(), document.as_str()))
    }
}

fn document(registry: &Registry, resources: &[&ServedResource]) -> Value {
    let mut paths = Map::new();
    let mut roots: BTreeSet<String> = [
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for resource in resources {
        let gvk = resource.gvk();
        let Some(definition) = registry.definition_of(&gvk) else {
            continue;
        };
        roots.insert(definition.to_owned());
        let list = Gvk::new(&gvk.group, &gvk.version, &format!("{}List", gvk.kind));
        let list_definition = registry.definition_of(&list).unwrap_or(definition);
        roots.insert(list_definition.to_owned());
        resource_paths(&mut paths, resource, definition, list_definition);
        for sub in &resource.subresources {
            let served = match sub.as_str() {
                "scale" => registry.definition_of(&Gvk::new("autoscaling", "v1", "Scale")),
                "eviction" => registry.definition_of(&Gvk::new("policy", "v1", "Eviction")),
                "binding" => registry.definition_of(&Gvk::new("", "v1", "Binding")),
                "status" => Some(definition),
                _ => None,
            };
            if let Some(served) = served {
                roots.insert(served.to_owned());
                subresource_paths(&mut paths, resource, sub, served);
            }
        }
    }
    let mut schemas = Map::new();
    let mut pending: Vec<String> = roots.into_iter().collect();
    while let Some(name) = pending.pop() {
        if schemas.contains_key(&name) {
            continue;
        }
        if let Some(schema) = registry.definition(&name) {
            references(schema, &mut pending);
            schemas.insert(name, schema.clone());
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The definitions a schema refers to.
fn references(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                out.push(name.to_owned());
            }
            map.values().for_each(|v| references(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        _ => {}
    }
}

fn reference(definition: &str) -> Value {
    json!({"$ref": format!("{REF_PREFIX}{definition}")})
}

fn query(name: &str, description: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn path_parameter(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the object"), "schema": {"type": "string", "uniqueItems": true}})
}

/// The query parameters of writes.
fn write_parameters() -> Vec<Value> {
    vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid value: All.",
            "string",
        ),
        query(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
            "string",
        ),
        query(
            "fieldValidation",
            "How the server treats unknown or duplicate fields in the object: Ignore, Warn or Strict.",
            "string",
        ),
    ]
}

/// The query parameters of lists and watches.
fn list_parameters() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean"),
        ("continue", "string"),
        ("fieldSelector", "string"),
        ("labelSelector", "string"),
        ("limit", "integer"),
        ("resourceVersion", "string"),
        ("resourceVersionMatch", "string"),
        ("sendInitialEvents", "boolean"),
        ("timeoutSeconds", "integer"),
        ("watch", "boolean"),
    ]
    .into_iter()
    .map(|(name, kind)| query(name, name, kind))
    .collect()
}

fn operation(
    action: &str,
    resource: &ServedResource,
    kind: &Gvk,
    response: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
) -> Value {
    let mut op = json!({
        "description": format!("{action} {}", resource.kind),
        "operationId": format!("{action}{}{}", resource.group.replace('.', "_"), resource.kind),
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": reference(response)}}},
            "401": {"description": "Unauthorized"},
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
    });
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

fn body(definition: &str) -> Value {
    json!({"content": {"*/*": {"schema": reference(definition)}}, "required": true})
}

fn patch_body(resource: &ServedResource) -> Value {
    let object = json!({"schema": {"type": "object"}});
    let mut content = json!({
        "application/json-patch+json": object,
        "application/merge-patch+json": object,
    });
    if resource.strategic_merge {
        content["application/strategic-merge-patch+json"] = object;
    }
    json!({"content": content, "required": true})
}

/// `/api/v1/namespaces/{namespace}/pods` or `/apis/apps/v1/deployments`.
fn collection_path(resource: &ServedResource) -> String {
    let namespace = if resource.namespaced {
        "namespaces/{namespace}/"
    } else {
        ""
    };
    format!(
        "/{}/{namespace}{}",
        resource.group_version_path(),
        resource.plural
    )
}

fn scope_parameters(resource: &ServedResource, named: bool) -> Vec<Value> {
    let mut parameters = Vec::new();
    if named {
        parameters.push(path_parameter("name"));
    }
    if resource.namespaced {
        parameters.push(path_parameter("namespace"));
    }
    parameters
}

fn resource_paths(
    paths: &mut Map<String, Value>,
    resource: &ServedResource,
    definition: &str,
    list_definition: &str,
) {
    let gvk = resource.gvk();
    let collection = collection_path(resource);
    let mut on_collection = Map::new();
    on_collection.insert(
        "get".into(),
        operation(
            "list",
            resource,
            &gvk,
            list_definition,
            list_parameters(),
            None,
        ),
    );
    on_collection.insert(
        "post".into(),
        operation(
            "post",
            resource,
            &gvk,
            definition,
            write_parameters(),
            Some(body(definition)),
        ),
    );
    on_collection.insert(
        "delete".into(),
        operation(
            "deletecollection",
            resource,
            &gvk,
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            list_parameters(),
            None,
        ),
    );
    on_collection.insert(
        "parameters".into(),
        json!(scope_parameters(resource, false)),
    );
    paths.insert(collection.clone(), Value::Object(on_collection));

    let mut on_item = Map::new();
    on_item.insert(
        "get".into(),
        operation("get", resource, &gvk, definition, vec![], None),
    );
    on_item.insert(
        "put".into(),
        operation(
            "put",
            resource,
            &gvk,
            definition,
            write_parameters(),
            Some(body(definition)),
        ),
    );
    on_item.insert(
        "patch".into(),
        operation(
            "patch",
            resource,
            &gvk,
            definition,
            write_parameters(),
            Some(patch_body(resource)),
        ),
    );
    on_item.insert(
        "delete".into(),
        operation(
            "delete",
            resource,
            &gvk,
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            vec![
                query("dryRun", "dryRun", "string"),
                query("gracePeriodSeconds", "gracePeriodSeconds", "integer"),
                query("propagationPolicy", "propagationPolicy", "string"),
            ],
            Some(body("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions")),
        ),
    );
    on_item.insert("parameters".into(), json!(scope_parameters(resource, true)));
    paths.insert(format!("{collection}/{{name}}"), Value::Object(on_item));
}

fn subresource_paths(
    paths: &mut Map<String, Value>,
    resource: &ServedResource,
    sub: &str,
    served: &str,
) {
    let gvk = match sub {
        "scale" => Gvk::new("autoscaling", "v1", "Scale"),
        "eviction" => Gvk::new("policy", "v1", "Eviction"),
        "binding" => Gvk::new("", "v1", "Binding"),
        _ => resource.gvk(),
    };
    let mut ops = Map::new();
    match sub {
        "binding" | "eviction" => {
            ops.insert(
                "post".into(),
                operation(
                    "post",
                    resource,
                    &gvk,
                    served,
                    write_parameters(),
                    Some(body(served)),
                ),
            );
        }
        _ => {
            ops.insert(
                "get".into(),
                operation("get", resource, &gvk, served, vec![], None),
            );
            ops.insert(
                "put".into(),
                operation(
                    "put",
                    resource,
                    &gvk,
                    served,
                    write_parameters(),
                    Some(body(served)),
                ),
            );
            ops.insert(
                "patch".into(),
                operation(
                    "patch",
                    resource,
                    &gvk,
                    served,
                    write_parameters(),
                    Some(patch_body(resource)),
                ),
            );
        }
    }
    ops.insert("parameters".into(), json!(scope_parameters(resource, true)));
    paths.insert(
        format!("{}/{{name}}/{sub}", collection_path(resource)),
        Value::Object(ops),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> ServedResource {
        ServedResource {
            group: String::new(),
            version: "v1".into(),
            kind: "Pod".into(),
            plural: "pods".into(),
            namespaced: true,
            subresources: vec!["status".into(), "binding".into()],
            strategic_merge: true,
        }
    }

    #[test]
    fn the_index_names_each_group_version_by_content_hash() {
        let registry = Registry::builtin();
        let documents = Documents::build(&registry, &[pods()]);
        let index: Value = serde_json::from_str(documents.index()).unwrap();
        let url = index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        let (hash, document) = documents.document("api/v1").unwrap();
        assert_eq!(url, format!("/openapi/v3/api/v1?hash={hash}"));
        let document: Value = serde_json::from_str(document).unwrap();
        let schemas = &document["components"]["schemas"];
        assert!(schemas["io.k8s.api.core.v1.Pod"].is_object());
        // Everything the pod refers to is there too.
        assert!(schemas["io.k8s.api.core.v1.Container"].is_object());
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
        // kubectl finds field validation on the PATCH of the kind.
        let patch = &document["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(
            document["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"]
                .is_object()
        );
    }
}
