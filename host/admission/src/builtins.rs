//! The built-in admission policies: Kubernetes' own admission plugins as WasmPlugins of kind
//! `admission-policy` (modules this binary carries) with an AdmissionPolicy each. A server
//! creates the missing ones when it starts and leaves existing ones as they are, so a user's
//! changes to a built-in policy stay; a policy the server is told to disable is not created,
//! and one it created earlier is deleted.
//!
//! - `namespace-lifecycle` refuses new objects in a terminating namespace and the deletion of
//!   the namespaces the cluster needs. It covers the system namespaces too, and its failure
//!   policy is Ignore, so a broken module can never stop the cluster from repairing itself
//!   (the API server itself refuses objects in a namespace that does not exist).
//! - `limit-ranger` (mutating) sets containers' default requests and limits from LimitRanges
//!   and refuses pods and claims outside their bounds.
//! - `resource-quota` refuses creates that would exceed a ResourceQuota and charges the usage
//!   of those it admits to the quota's status (the `resourcequota-controller` recounts it).
//! - `pod-security` enforces the Pod Security Standards' baseline level.

use flotilla_client::plugins::{self, BUILTIN_LABEL};
use flotilla_plugin::World;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::control::policies;

/// The built-in policies, by name (also their WasmPlugin's and guest crate's name).
pub const BUILTIN_POLICIES: &[&str] = &[
    "namespace-lifecycle",
    "limit-ranger",
    "resource-quota",
    "pod-security",
];

fn kind(version: &str, kind: &str) -> Value {
    json!({"apiVersion": version, "kind": kind})
}

fn rule(operations: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"operations": operations, "apiGroups": groups, "apiVersions": ["*"], "resources": resources})
}

/// The AdmissionPolicy spec a built-in policy starts with.
pub fn spec(name: &str) -> Option<Value> {
    let spec = match name {
        "namespace-lifecycle" => json!({
            "mode": "Validating",
            "failurePolicy": "Ignore",
            "includeSystem": true,
            "rules": [rule(&["CREATE"], &["*"], &["*"]), rule(&["DELETE"], &[""], &["namespaces"])],
            "reads": [kind("v1", "Namespace")],
        }),
        "limit-ranger" => json!({
            "mode": "Mutating",
            "order": -1000,
            "rules": [rule(&["CREATE", "UPDATE"], &[""], &["pods"]),
                      rule(&["CREATE"], &[""], &["persistentvolumeclaims"])],
            "reads": [kind("v1", "LimitRange")],
        }),
        "resource-quota" => json!({
            "mode": "Validating",
            "rules": [rule(&["CREATE"], &["*"], &["*"])],
            "reads": [kind("v1", "ResourceQuota")],
            "writes": [kind("v1", "ResourceQuota")],
        }),
        "pod-security" => json!({
            "mode": "Validating",
            "rules": [rule(&["CREATE", "UPDATE"], &[""], &["pods"])],
            "reads": [kind("v1", "Namespace")],
        }),
        _ => return None,
    };
    let mut spec = spec;
    spec["plugin"] = json!(name);
    Some(spec)
}

/// Creates the missing built-in policies (and their WasmPlugins) except `disabled` ones, and
/// deletes built-in policies that are disabled.
pub async fn install(client: &kube::Client, disabled: &[String]) -> Result<(), kube::Error> {
    let wanted: Vec<&str> = BUILTIN_POLICIES
        .iter()
        .copied()
        .filter(|name| !disabled.iter().any(|d| d == name))
        .collect();
    plugins::install_builtins(client, World::AdmissionPolicy, &wanted, None).await?;
    let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &policies());
    for name in BUILTIN_POLICIES {
        let found = api.get_opt(name).await?;
        let ours = found.as_ref().is_some_and(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(BUILTIN_LABEL))
        });
        if !wanted.contains(name) {
            if ours {
                ignore_missing(api.delete(name, &DeleteParams::default()).await)?;
            }
            continue;
        }
        if found.is_some() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{}/{}", plugins::GROUP, plugins::VERSION),
            "kind": "AdmissionPolicy",
            "metadata": {"name": name, "labels": {BUILTIN_LABEL: "true"}},
            "spec": spec(name).expect("every built-in has a spec"),
        }))
        .map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn ignore_missing<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Compiled;

    #[test]
    fn every_builtin_spec_is_a_valid_policy() {
        for name in BUILTIN_POLICIES {
            let object = json!({"metadata": {"name": name}, "spec": spec(name).unwrap()});
            let compiled = Compiled::of(&object).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(compiled.spec.plugin, *name);
        }
        assert!(spec("nonesuch").is_none());
    }
}
