//! CustomResourceDefinitions (apiextensions.k8s.io/v1). Registering one serves its custom
//! resources at once: every served version becomes a resource declaration like the built-in
//! ones (discovery, REST, watch, selectors, tables with its printer columns, status and scale
//! subresources), its schema joins the OpenAPI documents, and objects are pruned, defaulted and
//! validated against it. Versions share one storage (conversion `None`: only `apiVersion`
//! differs). Deleting a definition deletes its objects first, then the definition.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use flotilla_api::{StatusCause, validation};
use flotilla_store::{RangeRequest, StoreExt, TxnOutcome};
use serde_json::{Value, json};

use crate::resources::{self, CustomKind, PrinterColumn, ResourceDef, ScalePaths};
use crate::{ApiError, ApiServer, decode, delete, encode};

/// The finalizer that holds a definition until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Whether `resource` is the CustomResourceDefinition resource itself.
pub(crate) fn is_definitions(resource: &ResourceDef) -> bool {
    (resource.group, resource.plural) == ("apiextensions.k8s.io", "customresourcedefinitions")
}

/// A `'static` copy of a name, made once per distinct name: resource declarations hold
/// `'static` names, and a custom resource's names live as long as the server may serve them.
fn intern(text: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .expect("names lock");
    if let Some(name) = names.get(text) {
        return name;
    }
    let name: &'static str = Box::leak(text.to_owned().into_boxed_str());
    names.insert(name);
    name
}

fn interned_list(values: &Value) -> &'static [&'static str] {
    let list: Vec<&'static str> = values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(intern)
        .collect();
    if list.is_empty() {
        return &[];
    }
    // Interned as a whole too, so redefining a resource does not grow memory.
    static LISTS: OnceLock<Mutex<HashSet<&'static [&'static str]>>> = OnceLock::new();
    let mut lists = LISTS
        .get_or_init(Default::default)
        .lock()
        .expect("lists lock");
    if let Some(known) = lists.get(list.as_slice()) {
        return known;
    }
    let leaked: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    lists.insert(leaked);
    leaked
}

/// The resources a definition declares: one per served version.
pub(crate) fn resources_of(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        names["plural"].as_str(),
        names["kind"].as_str(),
    ) else {
        return Vec::new();
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage = versions
        .iter()
        .find(|v| v["storage"] == json!(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default();
    let singular = names["singular"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_lowercase());
    versions
        .iter()
        .filter(|v| v["served"] != json!(false))
        .filter_map(|version| {
            let name = version["name"].as_str()?;
            let subresources = &version["subresources"];
            let scale = subresources.get("scale").map(|scale| ScalePaths {
                spec_replicas: scale["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .to_owned(),
                status_replicas: scale["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .to_owned(),
                label_selector: scale["labelSelectorPath"].as_str().map(str::to_owned),
            });
            let columns = version["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_owned(),
                    kind: c["type"].as_str().unwrap_or("string").to_owned(),
                    format: c["format"].as_str().unwrap_or_default().to_owned(),
                    description: c["description"].as_str().unwrap_or_default().to_owned(),
                    priority: c["priority"].as_u64().unwrap_or(0).min(255) as u8,
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                })
                .collect();
            Some(ResourceDef {
                group: intern(group),
                version: intern(name),
                kind: intern(kind),
                plural: intern(plural),
                singular: intern(&singular),
                short_names: interned_list(&names["shortNames"]),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                categories: interned_list(&names["categories"]),
                has_status: subresources.get("status").is_some(),
                custom: Some(Arc::new(CustomKind {
                    storage_version: intern(storage),
                    schema: version["schema"].get("openAPIV3Schema").cloned(),
                    columns,
                    scale,
                })),
            })
        })
        .collect()
}

/// What Kubernetes checks of a definition beyond its schema: names, scope and versions.
pub(crate) fn validate(crd: &Value) -> Vec<StatusCause> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = names["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(StatusCause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(StatusCause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    for (field, value) in [
        ("plural", plural),
        ("kind", names["kind"].as_str().unwrap_or_default()),
    ] {
        if value.is_empty() {
            causes.push(StatusCause::required(format!("spec.names.{field}")));
        }
    }
    for problem in validation::dns1123_label(plural)
        .into_iter()
        .filter(|_| !plural.is_empty())
    {
        causes.push(StatusCause::invalid(
            "spec.names.plural",
            &json!(plural),
            &problem,
        ));
    }
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        causes.push(StatusCause::invalid(
            "metadata.name",
            &crd["metadata"]["name"],
            &format!("must be spec.names.plural+\".\"+spec.group: {expected:?}"),
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        _ => causes.push(StatusCause::not_supported(
            "spec.scope",
            &spec["scope"],
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(StatusCause::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(StatusCause::invalid(
            "spec.versions",
            &json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    causes
}

/// Flotilla's own API group (`plugins.flotilla.dev`): WasmPlugin, WasmModule,
/// WasmModuleChunk and SchedulerProfile, as definitions the server installs.
const OWN_DEFINITIONS: &str = include_str!("definitions.yaml");

impl ApiServer {
    /// Installs Flotilla's own definitions: creates them when missing and brings their spec up
    /// to this version's when it differs. Objects of these kinds are untouched.
    pub(crate) async fn install_own_definitions(&self) -> Result<(), ApiError> {
        let resource = self.definitions();
        for document in serde_yaml::Deserializer::from_str(OWN_DEFINITIONS) {
            let definition: Value =
                serde::Deserialize::deserialize(document).expect("definitions.yaml is valid YAML");
            let name = definition["metadata"]["name"]
                .as_str()
                .expect("definitions have names")
                .to_owned();
            let target = crate::Target {
                resource: &resource,
                namespace: None,
                name: Some(name.clone()),
                subresource: None,
            };
            let current = match crate::current_object(self, &target).await {
                Ok(current) => current,
                Err(e) if e.0.reason == flotilla_api::StatusReason::NotFound => {
                    let create = crate::Target {
                        name: None,
                        ..target
                    };
                    crate::create_object(self, &create, definition).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut stored = decode(&current)?;
            if stored["spec"] == definition["spec"] {
                continue;
            }
            tracing::info!(name, "updating a built-in definition to this version's");
            stored["spec"] = definition["spec"].clone();
            crate::replace(self, &target, &current, stored).await?;
        }
        Ok(())
    }

    /// The CustomResourceDefinition resource.
    fn definitions(&self) -> ResourceDef {
        self.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("definitions are served")
    }

    /// Rebuilds the served resources, schemas and OpenAPI documents from the built-in kinds and
    /// every stored definition, marks new definitions established, and starts the clean-up of
    /// those being deleted.
    pub(crate) async fn reload_custom_resources(&self) -> Result<(), ApiError> {
        let _serial = self.reloading.lock().await;
        self.serve_definitions_except(None).await
    }

    /// As `reload_custom_resources`, leaving out the definition stored at `except`: a
    /// definition stops being served before it is removed, so a client that sees it gone never
    /// finds its resources still answering. Callers hold `reloading`.
    async fn serve_definitions_except(&self, except: Option<&str>) -> Result<(), ApiError> {
        let definitions = self.definitions();
        let page = self
            .store
            .range(RangeRequest::prefix(definitions.prefix(None)))
            .await?;
        let mut all = resources::builtin();
        let mut schemas = self.base_schemas.clone();
        let mut crds = Vec::new();
        for kv in page.kvs.iter().filter(|kv| Some(kv.key.as_str()) != except) {
            let crd = decode(kv)?;
            let declared = resources_of(&crd);
            let taken = declared.iter().any(|d| {
                all.iter()
                    .any(|r| r.group == d.group && r.version == d.version && (r.plural == d.plural))
            });
            if taken {
                tracing::warn!(
                    name = crd["metadata"]["name"].as_str(),
                    "a custom resource's names are taken; not served"
                );
                continue;
            }
            for resource in &declared {
                let gvk = resource.gvk();
                let schema = resource
                    .custom
                    .as_ref()
                    .and_then(|c| c.schema.clone())
                    .unwrap_or_else(
                        || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                    );
                let name = flotilla_schema::custom_definition_name(&gvk);
                schemas.insert_kind(gvk, name, schema);
            }
            all.extend(declared);
            crds.push((kv.key.clone(), kv.mod_revision, crd));
        }
        let served: Vec<_> = all.iter().map(ResourceDef::served).collect();
        let documents = flotilla_schema::Documents::build(&schemas, &served);
        *self.resources.write().expect("resources lock") = Arc::new(all);
        *self.openapi_v2.write().expect("openapi lock") = crate::openapi_v2::encode(&schemas);
        *self.schemas.write().expect("schemas lock") = Arc::new(schemas);
        *self.openapi.write().expect("openapi lock") = Arc::new(documents);
        for (key, revision, crd) in crds {
            if crd["metadata"]["deletionTimestamp"].is_string() {
                if let Some(name) = crd["metadata"]["name"].as_str() {
                    self.clean_up_definition(name.to_owned());
                }
            } else if !established(&crd) {
                self.establish(&key, revision, crd).await?;
            }
        }
        Ok(())
    }

    /// Writes the status Kubernetes gives a definition once its resources are served.
    async fn establish(
        &self,
        key: &str,
        revision: flotilla_store::Revision,
        mut crd: Value,
    ) -> Result<(), ApiError> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
        let storage: Vec<Value> = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["storage"] == json!(true))
            .map(|v| v["name"].clone())
            .collect();
        crd["status"] = json!({
            "acceptedNames": crd["spec"]["names"],
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "storedVersions": storage,
        });
        // Lost to another writer: the next reload establishes it.
        let _ = self.store.update(key, encode(&crd), revision, None).await?;
        Ok(())
    }

    /// Deletes every object of a definition being deleted, then the definition, in the
    /// background.
    fn clean_up_definition(&self, name: String) {
        let Some(server) = self.me.upgrade() else {
            return;
        };
        let marker = format!("customresourcedefinitions/{name}");
        if !self
            .terminating
            .lock()
            .expect("terminating lock")
            .insert(marker.clone())
        {
            return;
        }
        tokio::spawn(async move {
            if let Err(error) = server.clean_up(&name).await {
                tracing::warn!(name, error = %error.0.message, "custom resource clean-up stopped; it resumes at the next start");
            }
            server
                .terminating
                .lock()
                .expect("terminating lock")
                .remove(&marker);
        });
    }

    async fn clean_up(&self, name: &str) -> Result<(), ApiError> {
        let definitions = self.definitions();
        let key = definitions.key(None, name);
        let Some(kv) = self.store.get(&key, None).await?.0 else {
            return Ok(());
        };
        let served = resources_of(&decode(&kv)?);
        delete::delete_everything(self, &served, None).await?;
        for _ in 0..5 {
            let Some(kv) = self.store.get(&key, None).await?.0 else {
                break;
            };
            let mut crd = decode(&kv)?;
            let finalizers: Vec<Value> = crd["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != CLEANUP_FINALIZER)
                .collect();
            let outcome = if finalizers.is_empty() {
                let _serial = self.reloading.lock().await;
                self.serve_definitions_except(Some(&key)).await?;
                self.store.delete(&key, Some(kv.mod_revision)).await?
            } else {
                crd["metadata"]["finalizers"] = json!(finalizers);
                self.store
                    .update(&key, encode(&crd), kv.mod_revision, None)
                    .await?
            };
            if let TxnOutcome::Applied { .. } = outcome {
                break;
            }
        }
        self.reload_custom_resources().await
    }
}

fn established(crd: &Value) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

/// The value at a JSONPath of the forms printer columns and scale paths use: fields
/// (`.spec.replicas`, `{.status.phase}`), indexes (`.items[0]`) and equality filters
/// (`.conditions[?(@.type=="Ready")].status`, first match).
pub(crate) fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut at = object;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            let selector = &inner[..end];
            rest = &inner[end + 1..];
            at = match selector
                .strip_prefix("?(")
                .and_then(|f| f.strip_suffix(')'))
            {
                Some(filter) => {
                    let (field, wanted) = filter.split_once("==")?;
                    let field = field.trim().strip_prefix('@')?;
                    let wanted = wanted.trim().trim_matches(|c| c == '"' || c == '\'');
                    at.as_array()?.iter().find(|item| {
                        json_path(item, field).and_then(Value::as_str) == Some(wanted)
                    })?
                }
                None => at.get(selector.trim().parse::<usize>().ok()?)?,
            };
            continue;
        }
        let field = rest.strip_prefix('.').unwrap_or(rest);
        let end = field.find(['.', '[']).unwrap_or(field.len());
        if end > 0 {
            at = at.get(&field[..end])?;
        }
        rest = &field[end..];
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crontab() -> Value {
        json!({"metadata": {"name": "crontabs.stable.example.com"}, "spec": {
        "group": "stable.example.com", "scope": "Namespaced",
        "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
        "versions": [
            {"name": "v1", "served": true, "storage": true,
             "schema": {"openAPIV3Schema": {"type": "object"}},
             "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
             "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}]},
            {"name": "v1beta1", "served": true, "storage": false},
            {"name": "v0", "served": false, "storage": false},
        ]}})
    }

    #[test]
    fn each_served_version_is_a_resource() {
        let declared = resources_of(&crontab());
        assert_eq!(declared.len(), 2);
        let v1 = &declared[0];
        assert_eq!(
            (v1.group, v1.version, v1.kind, v1.plural),
            ("stable.example.com", "v1", "CronTab", "crontabs")
        );
        assert_eq!(v1.short_names, ["ct"]);
        assert!(v1.namespaced && v1.has_status);
        assert!(v1.has_subresource("scale"));
        let custom = v1.custom.as_ref().unwrap();
        assert_eq!(custom.storage_version, "v1");
        assert_eq!(custom.columns[0].json_path, ".spec.cronSpec");
        assert!(!declared[1].has_status);
        // Redefining interns the same names.
        let again = resources_of(&crontab());
        assert!(std::ptr::eq(again[0].short_names, v1.short_names));
    }

    #[test]
    fn definitions_are_checked_like_kubernetes_checks_them() {
        assert!(validate(&crontab()).is_empty());
        let mut bad = crontab();
        bad["metadata"]["name"] = json!("crontabs");
        bad["spec"]["scope"] = json!("Galaxy");
        bad["spec"]["versions"][1]["storage"] = json!(true);
        let fields: Vec<String> = validate(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["metadata.name", "spec.scope", "spec.versions"]);
    }

    #[test]
    fn json_paths_reach_fields_and_items() {
        let object = json!({"spec": {"replicas": 3, "items": [{"name": "a"}]}});
        assert_eq!(json_path(&object, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(
            json_path(&object, "{.spec.items[0].name}"),
            Some(&json!("a"))
        );
        assert_eq!(json_path(&object, ".spec.missing"), None);
        let object = json!({"status": {"conditions": [
            {"type": "Degraded", "status": "False"},
            {"type": "Ready", "status": "True"},
        ]}});
        assert_eq!(
            json_path(&object, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(
            json_path(&object, ".status.conditions[?(@.type=='Missing')].status"),
            None
        );
    }
}
