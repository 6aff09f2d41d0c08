//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic, then a
//! `runtime.Unknown` wrapping the typed message. kubectl's generators send them
//! (`kubectl create deployment|namespace|configmap|secret|service|job|cronjob`). The typed
//! messages of those kinds are decoded with Kubernetes' own protobuf definitions (`k8s-pb`) and
//! turned into the JSON wire format the rest of the server speaks; answers are JSON.

use std::collections::BTreeMap;

use base64::Engine;
use flotilla_api::{Status, StatusReason};
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::ApiError;

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::from(Status::bad_request(message))
}

/// Decodes a protobuf body into the object's JSON form.
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("a protobuf body must start with the k8s\\0 magic"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(envelope)
        .map_err(|e| bad(format!("the protobuf envelope is malformed: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if unknown.content_encoding.is_some_and(|e| !e.is_empty()) {
        return Err(bad("compressed protobuf bodies are not supported"));
    }
    let raw = unknown.raw.unwrap_or_default();
    let malformed =
        |e: prost::DecodeError| bad(format!("the {kind} in the protobuf body is malformed: {e}"));
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(core::Namespace::decode(&*raw).map_err(malformed)?),
        ("v1", "ConfigMap") => config_map(core::ConfigMap::decode(&*raw).map_err(malformed)?),
        ("v1", "Secret") => secret(core::Secret::decode(&*raw).map_err(malformed)?),
        ("v1", "Service") => service(core::Service::decode(&*raw).map_err(malformed)?),
        ("apps/v1", "Deployment") => {
            deployment(apps::Deployment::decode(&*raw).map_err(malformed)?)
        }
        ("batch/v1", "Job") => job(batch::Job::decode(&*raw).map_err(malformed)?),
        ("batch/v1", "CronJob") => cron_job(batch::CronJob::decode(&*raw).map_err(malformed)?),
        _ => {
            return Err(ApiError::from(Status::new(
                StatusReason::UnsupportedMediaType,
                format!(
                    "protobuf bodies are accepted for Namespace, ConfigMap, Secret, Service, Deployment, Job and CronJob, not {api_version} {kind}; send JSON or YAML"
                ),
            )));
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

/// A JSON object built from optional parts: absent and empty parts are left out, as
/// Kubernetes' JSON encoding leaves them out.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn opt(mut self, key: &str, value: Option<impl Into<Value>>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.to_owned(), value.into());
        }
        self
    }

    fn val(mut self, key: &str, value: Value) -> Self {
        let empty = match &value {
            Value::Null => true,
            Value::Object(map) => map.is_empty(),
            Value::Array(items) => items.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(key.to_owned(), value);
        }
        self
    }

    fn strings(self, key: &str, map: &BTreeMap<String, String>) -> Self {
        self.val(key, json!(map))
    }

    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn list<T>(items: &[T], each: impl Fn(&T) -> Value) -> Value {
    Value::Array(items.iter().map(each).collect())
}

fn object_meta(meta: Option<meta::ObjectMeta>) -> Value {
    let Some(m) = meta else {
        return json!({});
    };
    let set = |v: Option<String>| v.filter(|v| !v.is_empty());
    Obj::default()
        .opt("name", set(m.name))
        .opt("generateName", set(m.generate_name))
        .opt("namespace", set(m.namespace))
        .strings("labels", &m.labels)
        .strings("annotations", &m.annotations)
        .val("finalizers", json!(m.finalizers))
        .val(
            "ownerReferences",
            list(&m.owner_references, |r| {
                Obj::default()
                    .opt("apiVersion", r.api_version.clone())
                    .opt("kind", r.kind.clone())
                    .opt("name", r.name.clone())
                    .opt("uid", r.uid.clone())
                    .opt("controller", r.controller)
                    .opt("blockOwnerDeletion", r.block_owner_deletion)
                    .done()
            }),
        )
        .done()
}

fn label_selector(selector: Option<meta::LabelSelector>) -> Value {
    let Some(s) = selector else {
        return Value::Null;
    };
    let expressions = list(&s.match_expressions, |e| {
        Obj::default()
            .opt("key", e.key.clone())
            .opt("operator", e.operator.clone())
            .val("values", json!(e.values))
            .done()
    });
    Obj::default()
        .strings("matchLabels", &s.match_labels)
        .val("matchExpressions", expressions)
        .done()
}

fn int_or_string(
    value: Option<k8s_pb::apimachinery::pkg::util::intstr::IntOrString>,
) -> Option<Value> {
    let v = value?;
    match v.r#type {
        Some(1) => v.str_val.map(Value::from),
        _ => v.int_val.map(Value::from),
    }
}

fn quantities(map: &BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>) -> Value {
    let map: Map<String, Value> = map
        .iter()
        .filter_map(|(k, q)| q.string.clone().map(|s| (k.clone(), Value::from(s))))
        .collect();
    Value::Object(map)
}

fn container(c: &core::Container) -> Value {
    let ports = list(&c.ports, |p| {
        Obj::default()
            .opt("name", p.name.clone())
            .opt("containerPort", p.container_port)
            .opt("protocol", p.protocol.clone())
            .opt("hostPort", p.host_port)
            .done()
    });
    let env = list(&c.env, |e| {
        Obj::default()
            .opt("name", e.name.clone())
            .opt("value", e.value.clone())
            .done()
    });
    let resources = c.resources.as_ref().map(|r| {
        Obj::default()
            .val("limits", quantities(&r.limits))
            .val("requests", quantities(&r.requests))
            .done()
    });
    Obj::default()
        .opt("name", c.name.clone())
        .opt("image", c.image.clone())
        .val("command", json!(c.command))
        .val("args", json!(c.args))
        .opt("workingDir", c.working_dir.clone())
        .val("ports", ports)
        .val("env", env)
        .opt("resources", resources.or(Some(json!({}))))
        .opt("imagePullPolicy", c.image_pull_policy.clone())
        .done()
}

fn pod_template(template: Option<core::PodTemplateSpec>) -> Value {
    let Some(t) = template else {
        return json!({});
    };
    let spec = t.spec.map(|s| {
        Obj::default()
            .val("containers", list(&s.containers, container))
            .val("initContainers", list(&s.init_containers, container))
            .opt("restartPolicy", s.restart_policy)
            .opt(
                "terminationGracePeriodSeconds",
                s.termination_grace_period_seconds,
            )
            .opt("serviceAccountName", s.service_account_name)
            .strings("nodeSelector", &s.node_selector)
            .done()
    });
    Obj::default()
        .val("metadata", object_meta(t.metadata))
        .opt("spec", spec)
        .done()
}

fn namespace(ns: core::Namespace) -> Value {
    let spec = ns
        .spec
        .map(|s| Obj::default().val("finalizers", json!(s.finalizers)).done());
    Obj::default()
        .val("metadata", object_meta(ns.metadata))
        .opt(
            "spec",
            spec.filter(|s| s.as_object().is_some_and(|m| !m.is_empty())),
        )
        .done()
}

fn base64_map(map: &BTreeMap<String, Vec<u8>>) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    let map: Map<String, Value> = map
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(engine.encode(v))))
        .collect();
    Value::Object(map)
}

fn config_map(cm: core::ConfigMap) -> Value {
    Obj::default()
        .val("metadata", object_meta(cm.metadata))
        .strings("data", &cm.data)
        .val("binaryData", base64_map(&cm.binary_data))
        .opt("immutable", cm.immutable)
        .done()
}

fn secret(s: core::Secret) -> Value {
    Obj::default()
        .val("metadata", object_meta(s.metadata))
        .opt("type", s.r#type)
        .val("data", base64_map(&s.data))
        .strings("stringData", &s.string_data)
        .opt("immutable", s.immutable)
        .done()
}

fn service(svc: core::Service) -> Value {
    let spec = svc.spec.map(|s| {
        let ports = list(&s.ports, |p| {
            Obj::default()
                .opt("name", p.name.clone())
                .opt("protocol", p.protocol.clone())
                .opt("port", p.port)
                .opt("targetPort", int_or_string(p.target_port.clone()))
                .opt("nodePort", p.node_port.filter(|n| *n != 0))
                .done()
        });
        Obj::default()
            .opt("type", s.r#type)
            .val("ports", ports)
            .strings("selector", &s.selector)
            .opt("clusterIP", s.cluster_ip.filter(|ip| !ip.is_empty()))
            .opt("externalName", s.external_name)
            .done()
    });
    Obj::default()
        .val("metadata", object_meta(svc.metadata))
        .opt("spec", spec)
        .done()
}

fn deployment(d: apps::Deployment) -> Value {
    let spec = d.spec.map(|s| {
        let strategy = s
            .strategy
            .map(|st| Obj::default().opt("type", st.r#type).done());
        Obj::default()
            .opt("replicas", s.replicas)
            .val("selector", label_selector(s.selector))
            .val("template", pod_template(s.template))
            .opt(
                "strategy",
                strategy.filter(|v| v.as_object().is_some_and(|m| !m.is_empty())),
            )
            .done()
    });
    Obj::default()
        .val("metadata", object_meta(d.metadata))
        .opt("spec", spec)
        .done()
}

fn job_spec(s: batch::JobSpec) -> Value {
    Obj::default()
        .opt("parallelism", s.parallelism)
        .opt("completions", s.completions)
        .opt("backoffLimit", s.backoff_limit)
        .opt("activeDeadlineSeconds", s.active_deadline_seconds)
        .opt("ttlSecondsAfterFinished", s.ttl_seconds_after_finished)
        .val("selector", label_selector(s.selector))
        .val("template", pod_template(s.template))
        .done()
}

fn job(j: batch::Job) -> Value {
    Obj::default()
        .val("metadata", object_meta(j.metadata))
        .opt("spec", j.spec.map(job_spec))
        .done()
}

fn cron_job(c: batch::CronJob) -> Value {
    let spec = c.spec.map(|s| {
        let template = s.job_template.map(|t| {
            Obj::default()
                .val("metadata", object_meta(t.metadata))
                .opt("spec", t.spec.map(job_spec))
                .done()
        });
        Obj::default()
            .opt("schedule", s.schedule)
            .opt("timeZone", s.time_zone)
            .opt("concurrencyPolicy", s.concurrency_policy)
            .opt("suspend", s.suspend)
            .opt(
                "successfulJobsHistoryLimit",
                s.successful_jobs_history_limit,
            )
            .opt("failedJobsHistoryLimit", s.failed_jobs_history_limit)
            .opt("jobTemplate", template)
            .done()
    });
    Obj::default()
        .val("metadata", object_meta(c.metadata))
        .opt("spec", spec)
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body as kubectl sends it.
    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: None,
            content_type: None,
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn a_job_made_from_a_cron_job_keeps_its_owner() {
        let job = batch::Job {
            metadata: Some(meta::ObjectMeta {
                name: Some("tick-manual".into()),
                owner_references: vec![meta::OwnerReference {
                    api_version: Some("batch/v1".into()),
                    kind: Some("CronJob".into()),
                    name: Some("tick".into()),
                    uid: Some("u-1".into()),
                    controller: Some(true),
                    block_owner_deletion: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let object = decode(&envelope("batch/v1", "Job", job.encode_to_vec())).unwrap();
        assert_eq!(
            object["metadata"]["ownerReferences"],
            json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": "tick", "uid": "u-1",
                "controller": true}])
        );
    }

    #[test]
    fn a_deployment_from_kubectl_create_becomes_its_json() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let deployment = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: labels.clone(),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("web".into()),
                            image: Some("web.wasm".into()),
                            ports: vec![core::ContainerPort {
                                container_port: Some(8080),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let object = decode(&envelope(
            "apps/v1",
            "Deployment",
            deployment.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                        {"name": "web", "image": "web.wasm", "ports": [{"containerPort": 8080}], "resources": {}}]}}}})
        );
    }

    #[test]
    fn secrets_keep_their_bytes_as_base64_and_other_kinds_are_415() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("s".into()),
                ..Default::default()
            }),
            data: BTreeMap::from([("k".to_owned(), b"v".to_vec())]),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let object = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(object["data"]["k"], "dg==");
        let error = decode(&envelope("v1", "Pod", vec![])).unwrap_err();
        assert_eq!(error.0.code(), 415);
        assert_eq!(decode(b"not protobuf").unwrap_err().0.code(), 400);
    }
}
