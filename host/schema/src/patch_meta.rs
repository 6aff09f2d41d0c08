//! Kubernetes' patch metadata for the built-in types: how strategic merge patches treat each
//! list and map (`patchStrategy`, `patchMergeKey`, `listType`, `listMapKeys` in Kubernetes' Go
//! types). Lists not named here are replaced whole by a strategic merge patch, as Kubernetes'
//! are when they have no strategy.

use serde_json::{Value, json};

/// The patch metadata of one field of one definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPatch {
    pub definition: &'static str,
    pub field: &'static str,
    /// `merge`, `retainKeys`, or `merge,retainKeys`.
    pub strategy: Option<&'static str>,
    /// The key list items are matched by when merging.
    pub merge_key: Option<&'static str>,
    /// `atomic`, `set` or `map`.
    pub list_type: Option<&'static str>,
    /// For `map` lists, the keys that identify an item.
    pub map_keys: &'static [&'static str],
}

impl FieldPatch {
    /// Adds the `x-kubernetes-…` extensions to a property's schema.
    pub fn annotate(&self, property: &mut Value) {
        if let Some(strategy) = self.strategy {
            property["x-kubernetes-patch-strategy"] = json!(strategy);
        }
        if let Some(key) = self.merge_key {
            property["x-kubernetes-patch-merge-key"] = json!(key);
        }
        if let Some(list_type) = self.list_type {
            property["x-kubernetes-list-type"] = json!(list_type);
        }
        // A map list is keyed by its merge key unless it names its keys.
        match (self.map_keys, self.merge_key) {
            ([], Some(key)) if self.list_type == Some("map") => {
                property["x-kubernetes-list-map-keys"] = json!([key]);
            }
            ([], _) => {}
            (keys, _) => property["x-kubernetes-list-map-keys"] = json!(keys),
        }
    }
}

/// A list merged by `key`.
const fn merged(definition: &'static str, field: &'static str, key: &'static str) -> FieldPatch {
    FieldPatch {
        definition,
        field,
        strategy: Some("merge"),
        merge_key: Some(key),
        list_type: Some("map"),
        map_keys: &[],
    }
}

impl FieldPatch {
    const fn with_map_keys(mut self, keys: &'static [&'static str]) -> Self {
        self.map_keys = keys;
        self
    }

    const fn also_retain_keys(mut self) -> Self {
        self.strategy = Some("merge,retainKeys");
        self
    }
}

/// A list of scalars merged as a set.
const fn merged_set(definition: &'static str, field: &'static str) -> FieldPatch {
    FieldPatch {
        definition,
        field,
        strategy: Some("merge"),
        merge_key: None,
        list_type: Some("set"),
        map_keys: &[],
    }
}

/// A list replaced whole.
const fn atomic(definition: &'static str, field: &'static str) -> FieldPatch {
    FieldPatch {
        definition,
        field,
        strategy: None,
        merge_key: None,
        list_type: Some("atomic"),
        map_keys: &[],
    }
}

/// A struct whose unset fields a strategic merge patch may clear (`$retainKeys`).
const fn retain_keys(definition: &'static str, field: &'static str) -> FieldPatch {
    FieldPatch {
        definition,
        field,
        strategy: Some("retainKeys"),
        merge_key: None,
        list_type: None,
        map_keys: &[],
    }
}

macro_rules! def {
    (core $name:literal) => {
        concat!("io.k8s.api.core.v1.", $name)
    };
    (apps $name:literal) => {
        concat!("io.k8s.api.apps.v1.", $name)
    };
    (batch $name:literal) => {
        concat!("io.k8s.api.batch.v1.", $name)
    };
    (meta $name:literal) => {
        concat!("io.k8s.apimachinery.pkg.apis.meta.v1.", $name)
    };
}

/// The patch metadata of the built-in types Flotilla serves, as Kubernetes v1.32 declares it.
pub const BUILTIN: &[FieldPatch] = &[
    // Object metadata.
    merged_set(def!(meta "ObjectMeta"), "finalizers"),
    merged(def!(meta "ObjectMeta"), "ownerReferences", "uid"),
    atomic(def!(meta "LabelSelector"), "matchExpressions"),
    // Pods and their templates.
    merged(def!(core "PodSpec"), "containers", "name"),
    merged(def!(core "PodSpec"), "initContainers", "name"),
    merged(def!(core "PodSpec"), "ephemeralContainers", "name"),
    merged(def!(core "PodSpec"), "volumes", "name").also_retain_keys(),
    merged(def!(core "PodSpec"), "imagePullSecrets", "name"),
    merged(def!(core "PodSpec"), "hostAliases", "ip"),
    merged(
        def!(core "PodSpec"),
        "topologySpreadConstraints",
        "topologyKey",
    )
    .with_map_keys(&["topologyKey", "whenUnsatisfiable"]),
    merged(def!(core "PodSpec"), "resourceClaims", "name").also_retain_keys(),
    merged(def!(core "PodSpec"), "schedulingGates", "name"),
    atomic(def!(core "PodSpec"), "tolerations"),
    merged(def!(core "Container"), "ports", "containerPort")
        .with_map_keys(&["containerPort", "protocol"]),
    merged(def!(core "Container"), "env", "name"),
    merged(def!(core "Container"), "volumeMounts", "mountPath"),
    merged(def!(core "Container"), "volumeDevices", "devicePath"),
    atomic(def!(core "Container"), "resizePolicy"),
    merged(def!(core "EphemeralContainer"), "ports", "containerPort")
        .with_map_keys(&["containerPort", "protocol"]),
    merged(def!(core "EphemeralContainer"), "env", "name"),
    merged(def!(core "EphemeralContainer"), "volumeMounts", "mountPath"),
    merged(
        def!(core "EphemeralContainer"),
        "volumeDevices",
        "devicePath",
    ),
    merged(def!(core "PodStatus"), "conditions", "type"),
    merged(def!(core "PodStatus"), "podIPs", "ip"),
    merged(def!(core "PodStatus"), "hostIPs", "ip"),
    merged(def!(core "PodStatus"), "resourceClaimStatuses", "name").also_retain_keys(),
    // Services, nodes, namespaces, service accounts.
    merged(def!(core "ServiceSpec"), "ports", "port").with_map_keys(&["port", "protocol"]),
    merged(def!(core "ServiceStatus"), "conditions", "type"),
    merged_set(def!(core "NodeSpec"), "podCIDRs"),
    merged(def!(core "NodeStatus"), "conditions", "type"),
    merged(def!(core "NodeStatus"), "addresses", "type"),
    merged(def!(core "NamespaceStatus"), "conditions", "type"),
    merged(def!(core "ServiceAccount"), "secrets", "name"),
    // Workloads.
    retain_keys(def!(apps "DeploymentSpec"), "strategy"),
    merged(def!(apps "DeploymentStatus"), "conditions", "type"),
    merged(def!(apps "ReplicaSetStatus"), "conditions", "type"),
    merged(def!(apps "StatefulSetStatus"), "conditions", "type"),
    merged(def!(apps "DaemonSetStatus"), "conditions", "type"),
    merged(def!(batch "JobStatus"), "conditions", "type"),
    atomic(def!(batch "CronJobStatus"), "active"),
];
