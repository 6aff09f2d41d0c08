//! What a container is given, from its pod's spec: environment (values, `fieldRef`,
//! `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef`, `envFrom`, `$(VAR)` expansion),
//! argv (`command` + `args`), volumes as directories (emptyDir, configMap, secret, hostPath)
//! and resource limits, with Kubernetes' semantics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

use crate::runtime::Preopen;

/// Why a container cannot be set up; the reason is its waiting state's
/// (`CreateContainerConfigError` like the kubelet's).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads the ConfigMaps and Secrets a pod refers to.
#[derive(Clone)]
pub struct Sources {
    pub client: kube::Client,
    pub namespace: String,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Sources {
    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, ConfigError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name)
            .await
            .map_err(|e| ConfigError(format!("cannot read configmap {name:?}: {e}")))
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(name)
            .await
            .map_err(|e| ConfigError(format!("cannot read secret {name:?}: {e}")))
    }

    /// A ConfigMap's data as text (binaryData included, decoded).
    async fn config_map_data(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.config_map(name).await?.map(|cm| {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            data
        }))
    }

    async fn secret_data(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        Ok(self.secret(name).await?.map(|secret| {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        }))
    }
}

/// What a configMap or secret volume holds.
struct Keys {
    data: Option<BTreeMap<String, Vec<u8>>>,
    /// The `items` chosen (key, file), or every key.
    items: Option<Vec<(String, String)>>,
    optional: bool,
    what: String,
}

impl Sources {
    /// The keys of a configMap or secret volume; none for other volumes.
    async fn keys(
        &self,
        volume: &k8s_openapi::api::core::v1::Volume,
    ) -> Option<Result<Keys, ConfigError>> {
        let (data, items, optional, what) = if let Some(cm) = &volume.config_map {
            let items = cm.items.as_ref().map(|items| {
                items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect()
            });
            let what = format!("configmap {:?}", cm.name);
            (
                self.config_map_data(&cm.name).await,
                items,
                cm.optional,
                what,
            )
        } else if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let items = secret.items.as_ref().map(|items| {
                items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect()
            });
            let what = format!("secret {name:?}");
            (self.secret_data(&name).await, items, secret.optional, what)
        } else {
            return None;
        };
        Some(data.map(|data| Keys {
            data,
            items,
            optional: optional == Some(true),
            what,
        }))
    }
}

/// `$(VAR)` references expanded from `env` as Kubernetes does: `$$` escapes, unknown
/// references stay as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(pod: &Pod, path: &str, placement: &Placement) -> Result<String, ConfigError> {
    let metadata = &pod.metadata;
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    if let Some(key) = map_key("metadata.labels['") {
        return Ok(metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&key))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(key) = map_key("metadata.annotations['") {
        return Ok(metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&key))
            .cloned()
            .unwrap_or_default());
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => metadata.uid.clone().unwrap_or_default(),
        "spec.nodeName" => placement.node.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => placement.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => placement.host_ip.clone(),
        other => {
            return Err(ConfigError(format!("fieldRef {other:?} is not supported")));
        }
    })
}

/// Where the node is, for field references.
#[derive(Clone, Debug)]
pub struct Placement {
    pub node: String,
    pub pod_ip: String,
    pub host_ip: String,
    /// The node's allocatable cpu (millicores) and memory (bytes), for resourceFieldRef
    /// without a limit.
    pub node_cpu_millis: i64,
    pub node_memory: i64,
}

fn quantity(
    value: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Option<flotilla_api::quantity::Quantity> {
    value.and_then(|q| flotilla_api::quantity::parse(&q.0).ok())
}

/// `resources.limits.memory` in bytes.
pub fn memory_limit(container: &Container) -> Option<usize> {
    let limits = container.resources.as_ref()?.limits.as_ref()?;
    quantity(limits.get("memory")).map(|q| q.value().max(0) as usize)
}

/// `resources.limits.cpu` in millicores.
pub fn cpu_limit(container: &Container) -> Option<u32> {
    let limits = container.resources.as_ref()?.limits.as_ref()?;
    quantity(limits.get("cpu")).map(|q| q.milli_value().clamp(1, i64::from(u32::MAX)) as u32)
}

fn resource_field(
    container: &Container,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    placement: &Placement,
) -> Result<String, ConfigError> {
    let resources = container.resources.as_ref();
    let get = |kind: &str, key: &str| {
        let map = match kind {
            "limits" => resources.and_then(|r| r.limits.as_ref()),
            _ => resources.and_then(|r| r.requests.as_ref()),
        };
        quantity(map.and_then(|m| m.get(key)))
    };
    let (kind, key) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("resourceFieldRef {resource:?} is not supported")))?;
    let divisor = quantity(divisor);
    let cpu = key == "cpu";
    let value_milli = match get(kind, key) {
        Some(q) if cpu => q.milli_value(),
        Some(q) => q.value().saturating_mul(1000),
        None if cpu => placement.node_cpu_millis,
        None => placement.node_memory.saturating_mul(1000),
    };
    let divisor_milli = match divisor {
        Some(d) if d.milli_value() > 0 => d.milli_value(),
        _ if cpu => 1000,
        _ => 1000,
    };
    // Kubernetes rounds up.
    Ok(((value_milli + divisor_milli - 1) / divisor_milli).to_string())
}

/// The container's environment, in order, with `$(VAR)` references to earlier entries
/// expanded.
pub async fn environment(
    pod: &Pod,
    container: &Container,
    placement: &Placement,
    sources: &Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(cm) = &from.config_map_ref {
            (
                sources.config_map_data(&cm.name).await?,
                format!("configmap {:?}", cm.name),
                cm.optional,
            )
        } else if let Some(secret) = &from.secret_ref {
            (
                sources.secret_data(&secret.name).await?,
                format!("secret {:?}", secret.name),
                secret.optional,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data {
                    set(
                        &mut env,
                        format!("{prefix}{key}"),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => return Err(ConfigError(format!("{what} not found"))),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            expand(value, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(pod, &field.field_path, placement)?
            } else if let Some(resource) = &from.resource_field_ref {
                resource_field(
                    container,
                    &resource.resource,
                    resource.divisor.as_ref(),
                    placement,
                )?
            } else if let Some(key) = &from.config_map_key_ref {
                let data = sources.config_map_data(&key.name).await?;
                match data.as_ref().and_then(|d| d.get(&key.key)) {
                    Some(value) => String::from_utf8_lossy(value).into_owned(),
                    None if key.optional == Some(true) => continue,
                    None if data.is_none() => {
                        return Err(ConfigError(format!("configmap {:?} not found", key.name)));
                    }
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            key.key, sources.namespace, key.name
                        )));
                    }
                }
            } else if let Some(key) = &from.secret_key_ref {
                let data = sources.secret_data(&key.name).await?;
                match data.as_ref().and_then(|d| d.get(&key.key)) {
                    Some(value) => String::from_utf8_lossy(value).into_owned(),
                    None if key.optional == Some(true) => continue,
                    None if data.is_none() => {
                        return Err(ConfigError(format!("secret {:?} not found", key.name)));
                    }
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in Secret {}/{}",
                            key.key, sources.namespace, key.name
                        )));
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// argv: the image's name as argv[0], then `command` and `args` with `$(VAR)` expanded.
pub fn argv(container: &Container, env: &[(String, String)]) -> Vec<String> {
    let mut argv = vec![container.name.clone()];
    let command = container.command.iter().flatten();
    let args = container.args.iter().flatten();
    argv.extend(command.chain(args).map(|a| expand(a, env)));
    argv
}

/// Makes the pod's volumes as directories under `dir` and returns them by name. configMap and
/// secret volumes are written from their objects (the `items` chosen, or every key); emptyDir
/// is a fresh directory; hostPath is the host's path.
pub async fn volumes(
    pod: &Pod,
    dir: &Path,
    sources: &Sources,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let mut made = BTreeMap::new();
    let io = |what: &str, e: std::io::Error| ConfigError(format!("{what}: {e}"));
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = dir.join(&volume.name);
        if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&path).map_err(|e| io("cannot make an emptyDir", e))?;
        } else if let Some(host) = &volume.host_path {
            let host_path = PathBuf::from(&host.path);
            match host.type_.as_deref() {
                Some("DirectoryOrCreate") => {
                    std::fs::create_dir_all(&host_path)
                        .map_err(|e| io("cannot make the hostPath", e))?;
                }
                _ if !host_path.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath {} is not a directory on this node (a WASI preopen is a directory)",
                        host.path
                    )));
                }
                _ => {}
            }
            made.insert(volume.name.clone(), host_path);
            continue;
        } else if let Some(keys) = sources.keys(volume).await {
            let keys = keys?;
            write_keys(&path, keys.data, keys.items, keys.optional, &keys.what)?;
        } else {
            return Err(ConfigError(format!(
                "volume {:?}: only emptyDir, configMap, secret and hostPath volumes are supported",
                volume.name
            )));
        }
        made.insert(volume.name.clone(), path);
    }
    Ok(made)
}

/// Writes a ConfigMap's or Secret's keys as files, replacing what was there, so an update of
/// the object shows in the volume.
pub fn write_keys(
    path: &Path,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<Vec<(String, String)>>,
    optional: bool,
    what: &str,
) -> Result<(), ConfigError> {
    let io = |e: std::io::Error| ConfigError(format!("cannot write {what}: {e}"));
    std::fs::create_dir_all(path).map_err(io)?;
    let data = match data {
        Some(data) => data,
        None if optional => BTreeMap::new(),
        None => return Err(ConfigError(format!("{what} not found"))),
    };
    let files: Vec<(String, Vec<u8>)> = match items {
        Some(items) => items
            .into_iter()
            .map(|(key, file)| match data.get(&key) {
                Some(value) => Ok((file, value.clone())),
                None => Err(ConfigError(format!("{what} has no key {key:?}"))),
            })
            .collect::<Result<_, _>>()?,
        None => data.into_iter().collect(),
    };
    let wanted: std::collections::BTreeSet<PathBuf> =
        files.iter().map(|(file, _)| path.join(file)).collect();
    for (file, value) in &files {
        if file.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(ConfigError(format!(
                "{what}: {file:?} is not a relative path"
            )));
        }
        let target = path.join(file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if std::fs::read(&target).ok().as_deref() != Some(value.as_slice()) {
            let temporary = target.with_extension("flotilla-tmp");
            std::fs::write(&temporary, value)
                .and_then(|()| std::fs::rename(&temporary, &target))
                .map_err(io)?;
        }
    }
    // Keys removed from the object leave the volume.
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let file = entry.path();
            if file.is_file() && !wanted.contains(&file) {
                let _ = std::fs::remove_file(file);
            }
        }
    }
    Ok(())
}

/// Refreshes the configMap and secret volumes of a running pod from their objects.
pub async fn refresh_volumes(pod: &Pod, dir: &Path, sources: &Sources) {
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(keys) = sources.keys(volume).await else {
            continue;
        };
        // An object gone meanwhile leaves an empty volume, not a failed pod.
        let result = keys.and_then(|keys| {
            write_keys(
                &dir.join(&volume.name),
                keys.data,
                keys.items,
                true,
                &keys.what,
            )
        });
        if let Err(error) = result {
            tracing::warn!(volume = volume.name, "cannot refresh a volume: {error}");
        }
    }
}

/// The container's mounts as preopens.
pub fn preopens(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Preopen>, ConfigError> {
    let mut preopens = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(dir) = volumes.get(&mount.name) else {
            return Err(ConfigError(format!(
                "volumeMount {:?} names no volume of the pod",
                mount.name
            )));
        };
        let host = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let sub_dir = dir.join(sub);
                std::fs::create_dir_all(&sub_dir)
                    .map_err(|e| ConfigError(format!("cannot make subPath {sub}: {e}")))?;
                sub_dir
            }
            None => dir.clone(),
        };
        preopens.push(Preopen {
            host,
            guest: mount.mount_path.clone(),
            read_only: mount.read_only == Some(true),
        });
    }
    Ok(preopens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_as_kubernetes_expands_them() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand("$$(A) $(C) $", &env), "$(A) $(C) $");
        assert_eq!(expand("x$(A", &env), "x$(A");
    }

    #[test]
    fn keys_become_files_and_removed_keys_leave() {
        let dir = tempfile::tempdir().unwrap();
        let data = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            )
        };
        write_keys(
            dir.path(),
            data(&[("a", "1"), ("b", "2")]),
            None,
            false,
            "cm",
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("b")).unwrap(), "2");
        write_keys(dir.path(), data(&[("a", "3")]), None, false, "cm").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "3");
        assert!(!dir.path().join("b").exists());
        let items = Some(vec![("a".to_owned(), "conf/app.txt".to_owned())]);
        write_keys(dir.path(), data(&[("a", "4")]), items, false, "cm").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("conf/app.txt")).unwrap(),
            "4"
        );
        assert_eq!(
            write_keys(dir.path(), None, None, false, "configmap \"x\"").unwrap_err(),
            ConfigError("configmap \"x\" not found".into())
        );
    }
}
