//! The kinds the API server serves, each a small declaration. The REST machinery is generic over
//! them; adding a kind is adding an entry here. Custom resources (`crd.rs`) are declarations
//! too, made from their CustomResourceDefinitions at run time.

use std::sync::Arc;

use serde_json::Value;

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL segment and storage name: `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// `all` for the kinds `kubectl get all` shows.
    pub categories: &'static [&'static str],
    /// Whether `status` is a subresource: writes to the object leave it alone, writes to
    /// `…/status` change nothing else.
    pub has_status: bool,
    /// What a custom resource's definition adds; `None` for built-in kinds.
    pub custom: Option<Arc<CustomKind>>,
}

/// What a CustomResourceDefinition says of one served version beyond names and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomKind {
    /// The version objects are stored at.
    pub storage_version: &'static str,
    /// The version's `openAPIV3Schema`.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns`.
    pub columns: Vec<PrinterColumn>,
    /// The scale subresource's paths, when it has one.
    pub scale: Option<ScalePaths>,
}

/// A column `kubectl get` prints for a custom resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    pub kind: String,
    pub format: String,
    pub description: String,
    pub priority: u8,
    /// A simple JSONPath: `.spec.replicas`.
    pub json_path: String,
}

/// Where a custom resource keeps what its Scale shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

impl Eq for CustomKind {}

/// The verbs every served resource supports.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key of one object: `/registry/<plural>/<namespace>/<name>` as Kubernetes lays
    /// them out (groups other than core and apps get their group as a prefix to the plural).
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The store prefix of a collection: every object of this resource, or those of one
    /// namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let resource = if self.group.is_empty() || self.group == "apps" {
            self.plural.to_owned()
        } else {
            format!("{}/{}", self.group, self.plural)
        };
        match (self.namespaced, namespace) {
            (true, Some(namespace)) => format!("/registry/{resource}/{namespace}/"),
            _ => format!("/registry/{resource}/"),
        }
    }
}

/// A subresource of a resource, as discovery lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    pub name: &'static str,
    /// The group, version and kind of what it serves; empty group and version for the parent's.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

const READ_WRITE: &[&str] = &["get", "patch", "update"];

impl ResourceDef {
    /// The subresources served on this resource's objects.
    pub fn subresources(&self) -> Vec<Subresource> {
        let own = |name, verbs| Subresource {
            name,
            group: self.group,
            version: self.version,
            kind: self.kind,
            verbs,
        };
        let mut all = Vec::new();
        if self.has_status {
            all.push(own("status", READ_WRITE));
        }
        let custom_scale = self.custom.as_ref().is_some_and(|c| c.scale.is_some());
        match (self.group, self.plural) {
            _ if custom_scale => all.push(Subresource {
                name: "scale",
                group: "autoscaling",
                version: "v1",
                kind: "Scale",
                verbs: READ_WRITE,
            }),
            ("", "namespaces") => all.push(own("finalize", &["update"])),
            ("apps", "deployments" | "replicasets" | "statefulsets") => all.push(Subresource {
                name: "scale",
                group: "autoscaling",
                version: "v1",
                kind: "Scale",
                verbs: READ_WRITE,
            }),
            ("", "pods") => {
                all.push(Subresource {
                    name: "binding",
                    group: "",
                    version: "v1",
                    kind: "Binding",
                    verbs: &["create"],
                });
                all.push(Subresource {
                    name: "eviction",
                    group: "policy",
                    version: "v1",
                    kind: "Eviction",
                    verbs: &["create"],
                });
                all.push(own("log", &["get"]));
                for (name, kind) in [
                    ("exec", "PodExecOptions"),
                    ("attach", "PodAttachOptions"),
                    ("portforward", "PodPortForwardOptions"),
                ] {
                    all.push(Subresource {
                        name,
                        group: "",
                        version: "v1",
                        kind,
                        verbs: &["create", "get"],
                    });
                }
            }
            _ => {}
        }
        all
    }

    /// The kind's group, version and kind, as the schemas know it.
    pub fn gvk(&self) -> flotilla_schema::Gvk {
        flotilla_schema::Gvk::new(self.group, self.version, self.kind)
    }

    /// How the OpenAPI documents describe this resource.
    pub fn served(&self) -> flotilla_schema::ServedResource {
        flotilla_schema::ServedResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
            namespaced: self.namespaced,
            subresources: self
                .subresources()
                .iter()
                .map(|s| s.name.to_owned())
                .collect(),
            strategic_merge: self.custom.is_none(),
        }
    }

    /// Whether objects of this resource have the subresource `name`.
    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources().iter().any(|s| s.name == name)
    }

    /// The fields a field selector may name for this resource, as Kubernetes supports them.
    pub fn selectable_fields(&self) -> &'static [&'static str] {
        match (self.group, self.plural) {
            ("", "pods") => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            ("", "events") => &[
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            ("", "nodes") => &["metadata.name", "spec.unschedulable"],
            ("", "namespaces") => &["metadata.name", "status.phase"],
            ("", "secrets") => &["metadata.name", "metadata.namespace", "type"],
            _ => &["metadata.name", "metadata.namespace"],
        }
    }
}

const fn grouped(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    has_status: bool,
) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        namespaced: true,
        categories,
        has_status,
        custom: None,
    }
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    categories: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        namespaced,
        categories,
        has_status: matches!(
            plural.as_bytes(),
            b"pods" | b"services" | b"nodes" | b"namespaces" | b"resourcequotas"
        ),
        custom: None,
    }
}

/// Every built-in resource.
pub fn builtin() -> Vec<ResourceDef> {
    vec![
        core("Namespace", "namespaces", "namespace", &["ns"], false, &[]),
        core("Node", "nodes", "node", &["no"], false, &[]),
        core("Pod", "pods", "pod", &["po"], true, &["all"]),
        core("Service", "services", "service", &["svc"], true, &["all"]),
        core("Endpoints", "endpoints", "endpoints", &["ep"], true, &[]),
        core("ConfigMap", "configmaps", "configmap", &["cm"], true, &[]),
        core("Secret", "secrets", "secret", &[], true, &[]),
        core(
            "LimitRange",
            "limitranges",
            "limitrange",
            &["limits"],
            true,
            &[],
        ),
        core(
            "ResourceQuota",
            "resourcequotas",
            "resourcequota",
            &["quota"],
            true,
            &[],
        ),
        core("Event", "events", "event", &["ev"], true, &[]),
        core(
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
            &["sa"],
            true,
            &[],
        ),
        grouped(
            "apps",
            "Deployment",
            "deployments",
            "deployment",
            &["deploy"],
            &["all"],
            true,
        ),
        grouped(
            "apps",
            "ReplicaSet",
            "replicasets",
            "replicaset",
            &["rs"],
            &["all"],
            true,
        ),
        grouped(
            "apps",
            "StatefulSet",
            "statefulsets",
            "statefulset",
            &["sts"],
            &["all"],
            true,
        ),
        grouped(
            "apps",
            "DaemonSet",
            "daemonsets",
            "daemonset",
            &["ds"],
            &["all"],
            true,
        ),
        grouped(
            "apps",
            "ControllerRevision",
            "controllerrevisions",
            "controllerrevision",
            &[],
            &[],
            false,
        ),
        grouped("batch", "Job", "jobs", "job", &[], &["all"], true),
        grouped(
            "batch",
            "CronJob",
            "cronjobs",
            "cronjob",
            &["cj"],
            &["all"],
            true,
        ),
        grouped(
            "networking.k8s.io",
            "Ingress",
            "ingresses",
            "ingress",
            &["ing"],
            &[],
            true,
        ),
        ResourceDef {
            namespaced: false,
            has_status: false,
            ..grouped(
                "networking.k8s.io",
                "IngressClass",
                "ingressclasses",
                "ingressclass",
                &[],
                &[],
                false,
            )
        },
        grouped(
            "discovery.k8s.io",
            "EndpointSlice",
            "endpointslices",
            "endpointslice",
            &[],
            &[],
            false,
        ),
        ResourceDef {
            namespaced: false,
            ..grouped(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                "customresourcedefinition",
                &["crd", "crds"],
                &["api-extensions"],
                true,
            )
        },
        grouped(
            "coordination.k8s.io",
            "Lease",
            "leases",
            "lease",
            &[],
            &[],
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kubernetes_layout() {
        let all = builtin();
        let pods = all.iter().find(|r| r.plural == "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(pods.prefix(None), "/registry/pods/");
        let ns = all.iter().find(|r| r.plural == "namespaces").unwrap();
        assert_eq!(ns.key(None, "default"), "/registry/namespaces/default");
        let deployments = all.iter().find(|r| r.plural == "deployments").unwrap();
        assert_eq!(
            deployments.key(Some("default"), "web"),
            "/registry/deployments/default/web"
        );
        assert_eq!(deployments.api_version(), "apps/v1");
        let leases = all.iter().find(|r| r.plural == "leases").unwrap();
        assert_eq!(
            leases.key(Some("kube-node-lease"), "n1"),
            "/registry/coordination.k8s.io/leases/kube-node-lease/n1"
        );
        assert_eq!(leases.api_version(), "coordination.k8s.io/v1");
    }
}
