//! Reads of the host's shared informer cache, for admission policies and controllers. A plugin
//! reads only the kinds it declared; other reads fail with 403. Objects are JSON.

#[cfg(all(
    target_arch = "wasm32",
    any(feature = "admission", feature = "controller")
))]
pub use imp::{get, list};

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
}
