//! Reads of the host's shared informer cache, for admission policies and controllers. A plugin
//! reads only the kinds it declared; other reads fail with 403. Objects are JSON.

/// What [`query`] selects: a namespace, a label selector, optionally what a controller may
/// claim, and optionally only some fields of each object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// One namespace, or all (`None`).
    pub namespace: Option<String>,
    /// A label selector in Kubernetes' string form (empty selects everything).
    pub label_selector: String,
    /// A controller's uid: only objects it controls, whatever their labels, plus objects no
    /// controller owns that match `label_selector`. The host answers from an index by
    /// controller.
    pub claimable_by: Option<String>,
    /// Only these fields, as dotted paths (`status.phase`); `apiVersion`, `kind` and the
    /// name, namespace, uid and resourceVersion always come. Empty: whole objects.
    pub fields: Vec<String>,
}

impl Selection {
    /// Everything in one namespace (or all, `None`).
    pub fn in_namespace(namespace: Option<&str>) -> Self {
        Self {
            namespace: namespace.map(str::to_owned),
            ..Self::default()
        }
    }

    pub fn matching(mut self, label_selector: &str) -> Self {
        self.label_selector = label_selector.to_owned();
        self
    }

    pub fn claimable_by(mut self, uid: &str) -> Self {
        self.claimable_by = Some(uid.to_owned());
        self
    }

    pub fn fields<'a>(mut self, fields: impl IntoIterator<Item = &'a str>) -> Self {
        self.fields.extend(fields.into_iter().map(str::to_owned));
        self
    }
}

#[cfg(all(
    target_arch = "wasm32",
    any(feature = "admission", feature = "controller")
))]
pub use imp::{get, list, query};
#[cfg(not(target_arch = "wasm32"))]
pub use native::{get, list, query};

/// Outside a component: through the program's [`NativeHost`](crate::native::NativeHost).
#[cfg(not(target_arch = "wasm32"))]
mod native {
    use crate::Status;
    use crate::native::with;

    /// One object, or none when the cache has no such object.
    pub fn get(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        with(|h| h.get(api_version, kind, namespace, name), Err)
    }

    /// The objects of a kind matching a label selector.
    pub fn list(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        with(
            |h| h.list(api_version, kind, namespace, label_selector),
            Err,
        )
    }

    /// The objects of a kind a [`Selection`](super::Selection) selects.
    pub fn query(
        api_version: &str,
        kind: &str,
        selection: &super::Selection,
    ) -> Result<Vec<String>, Status> {
        with(|h| h.query(api_version, kind, selection), Err)
    }
}

#[cfg(all(
    target_arch = "wasm32",
    any(feature = "admission", feature = "controller")
))]
mod imp {
    use crate::Status;
    use crate::convert::status;
    use crate::imports::cache;

    /// One object, or none when the cache has no such object.
    pub fn get(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        cache::get(api_version, kind, namespace, name).map_err(status)
    }

    /// The objects of a kind, in one namespace or all (`None`), matching a label selector in
    /// Kubernetes' string form (empty selects everything).
    pub fn list(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<String>, Status> {
        cache::list(api_version, kind, namespace, label_selector).map_err(status)
    }

    /// The objects of a kind a [`Selection`](super::Selection) selects.
    pub fn query(
        api_version: &str,
        kind: &str,
        selection: &super::Selection,
    ) -> Result<Vec<String>, Status> {
        cache::query(
            api_version,
            kind,
            &cache::Selection {
                namespace: selection.namespace.clone(),
                label_selector: selection.label_selector.clone(),
                claimable_by: selection.claimable_by.clone(),
                fields: selection.fields.clone(),
            },
        )
        .map_err(status)
    }
}
