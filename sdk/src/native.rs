//! Cache reads and API writes outside a component: a controller linked natively (the peer in a
//! benchmark, or a test) reaches whatever [`NativeHost`] the program set with
//! [`set_native_host`]. Without one, every call fails with 503.

use std::sync::{Arc, RwLock};

use crate::cache::Selection;
use crate::controller::{ApiResource, DeleteOptions, Event, PatchType, Remaining};
use crate::{ObjectRef, Status};

/// What the `cache` and `api` imports do natively, with the same meaning as the WIT's.
pub trait NativeHost: Send + Sync {
    fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status>;
    fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<String>, Status>;
    fn query(
        &self,
        api_version: &str,
        kind: &str,
        selection: &Selection,
    ) -> Result<Vec<String>, Status>;
    /// `api.get`: one object from the API server itself. Unless overridden, the cache's answer.
    fn read(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        self.get(api_version, kind, namespace, name)
    }
    fn create(&self, object: &str) -> Result<String, Status>;
    fn create_batch(&self, objects: &[String]) -> Vec<Result<String, Status>> {
        objects.iter().map(|o| self.create(o)).collect()
    }
    fn update(&self, object: &str) -> Result<String, Status>;
    fn update_status(&self, object: &str) -> Result<String, Status>;
    fn patch(
        &self,
        target: &ObjectRef,
        patch_type: PatchType,
        patch: &str,
    ) -> Result<String, Status>;
    fn delete(&self, target: &ObjectRef, options: &DeleteOptions) -> Result<(), Status>;
    fn emit_event(&self, event: &Event) -> Result<(), Status>;
    fn resources(&self) -> Result<Vec<ApiResource>, Status>;
    fn delete_collection(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Remaining, Status>;
    fn update_subresource(&self, object: &str, subresource: &str) -> Result<String, Status>;
}

static HOST: RwLock<Option<Arc<dyn NativeHost>>> = RwLock::new(None);

/// Sets what natively linked plugins' cache reads and API writes reach.
pub fn set_native_host(host: Arc<dyn NativeHost>) {
    *HOST.write().unwrap_or_else(|e| e.into_inner()) = Some(host);
}

/// Runs `call` against the native host, or fails with 503 when none is set.
pub(crate) fn with<R>(
    call: impl FnOnce(&dyn NativeHost) -> R,
    unset: impl FnOnce(Status) -> R,
) -> R {
    let host = HOST.read().unwrap_or_else(|e| e.into_inner()).clone();
    match host {
        Some(host) => call(&*host),
        None => unset(Status {
            code: 503,
            reason: "ServiceUnavailable".into(),
            message: "no native host is set (flotilla_sdk::native::set_native_host)".into(),
        }),
    }
}
