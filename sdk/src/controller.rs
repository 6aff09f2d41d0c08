//! Controllers: what a controller watches and how events become keys ([`Registration`]), the
//! [`Controller`] trait that reconciles one key at a time, and writes through the API server
//! ([`api`]).
//!
//! The host runs the informers, the work queue (de-duplicated, one reconcile per key at a time,
//! retries with backoff) and leader election. A controller reads through [`crate::cache`] and
//! writes through [`api`]; updates carry the object's `resourceVersion`, so a stale write fails
//! with 409 Conflict instead of overwriting.

use std::time::Duration;

pub use crate::{ObjectRef, Status};

/// How events on a watched kind become keys to reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMapping {
    /// The object itself is the key (the controller's primary kind).
    Primary,
    /// The controlling owner (`ownerReferences` with `controller: true`) of the given kind.
    Owner(String),
    /// Every object of the primary kind in the same namespace whose label selector at the given
    /// JSON path (e.g. `spec.selector`) selects the object.
    SelectedBy(String),
    /// [`Controller::keys_for`] decides.
    Custom,
}

/// One kind the controller watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub api_version: String,
    pub kind: String,
    pub mapping: KeyMapping,
    /// Only objects matching this label selector (empty: all).
    pub label_selector: String,
}

impl Watch {
    pub fn new(api_version: &str, kind: &str, mapping: KeyMapping) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            mapping,
            label_selector: String::new(),
        }
    }

    /// Only objects matching `selector` (Kubernetes' string form).
    pub fn with_label_selector(mut self, selector: &str) -> Self {
        self.label_selector = selector.to_owned();
        self
    }
}

/// What a controller reconciles and watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub primary_api_version: String,
    pub primary_kind: String,
    pub watches: Vec<Watch>,
    /// Every object of the primary kind is requeued this often; none disables resync.
    pub resync: Option<Duration>,
    /// Reconciles running at once, on different keys.
    pub workers: u32,
}

impl Registration {
    /// Reconciles `kind`, watching it as the primary kind, with one worker and no resync.
    pub fn new(api_version: &str, kind: &str) -> Self {
        Self {
            primary_api_version: api_version.to_owned(),
            primary_kind: kind.to_owned(),
            watches: vec![Watch::new(api_version, kind, KeyMapping::Primary)],
            resync: None,
            workers: 1,
        }
    }

    /// Also watches objects of `kind` whose controlling owner is the primary kind.
    pub fn owns(mut self, api_version: &str, kind: &str) -> Self {
        let owner = KeyMapping::Owner(self.primary_kind.clone());
        self.watches.push(Watch::new(api_version, kind, owner));
        self
    }

    /// Also watches `watch`.
    pub fn watch(mut self, watch: Watch) -> Self {
        self.watches.push(watch);
        self
    }

    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = workers.max(1);
        self
    }
}

/// How a patch is read, as `Content-Type` says to the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902 JSON Patch.
    Json,
    /// RFC 7386 JSON Merge Patch.
    Merge,
    /// Kubernetes' strategic merge patch.
    Strategic,
    /// Server-side apply, as the plugin's field manager.
    Apply,
}

/// Preconditions and propagation of a deletion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub resource_version: Option<String>,
    pub uid: Option<String>,
    /// `Background`, `Foreground` or `Orphan`.
    pub propagation: Option<String>,
}

/// An Event about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub regarding: ObjectRef,
    /// `Normal` or `Warning`.
    pub event_type: String,
    pub reason: String,
    pub message: String,
}

/// A kind the API server serves, as discovery lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResource {
    pub api_version: String,
    pub kind: String,
    /// The plural name in URLs (`pods`).
    pub resource: String,
    pub namespaced: bool,
    /// `get`, `list`, `delete`, `deletecollection`, …
    pub verbs: Vec<String>,
}

/// What is left of a collection after [`api::delete_collection`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Objects still there: being deleted, held by finalizers or a grace period.
    pub count: u32,
    /// The finalizers holding them, with how many objects each holds.
    pub finalizers: Vec<(String, u32)>,
}

/// A controller. One value lives in the plugin's instance; the host calls it one key at a time
/// per instance.
pub trait Controller: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;

    /// Builds the controller from the plugin's configuration (JSON). An error fails its
    /// self-check.
    fn new(config: &str) -> Result<Self, String>;

    /// What the controller reconciles and watches.
    fn register(&self) -> Registration;

    /// For [`KeyMapping::Custom`] watches: the keys an event on `object` (JSON) of watch number
    /// `watch` (an index into [`Registration::watches`]) concerns.
    fn keys_for(&mut self, watch: u32, object: &str) -> Vec<ObjectRef> {
        let _ = (watch, object);
        Vec::new()
    }

    /// Reconciles one key. `Ok(Some(delay))` asks to be called again after `delay`; an error
    /// is retried with exponential backoff.
    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String>;
}

/// The single controller value of a component. Implemented by
/// [`export_controller!`](crate::export_controller).
#[doc(hidden)]
pub trait Singleton: Controller {
    fn with<R>(f: impl FnOnce(&mut Result<Self, String>) -> R) -> R;
}

/// Writes through the API server, as the plugin's identity (controllers and, for the
/// bookkeeping a decision needs, admission policies).
#[cfg(all(
    target_arch = "wasm32",
    any(feature = "admission", feature = "controller")
))]
pub mod api {
    use super::{ApiResource, DeleteOptions, Event, ObjectRef, PatchType, Remaining, Status};
    use crate::convert::{status, wit_object_ref};
    use crate::imports::api;

    /// One object read from the API server itself (not the cache), or none when it does not
    /// exist: what to read back after a write conflicted.
    pub fn get(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        api::get(api_version, kind, namespace, name).map_err(status)
    }

    /// Creates an object (JSON) and returns it as stored.
    pub fn create(object: &str) -> Result<String, Status> {
        api::create(object).map_err(status)
    }

    /// Creates objects (JSON) concurrently, as one slow-start batch; each result in order.
    pub fn create_batch(objects: &[String]) -> Vec<Result<String, Status>> {
        api::create_batch(objects)
            .into_iter()
            .map(|r| r.map_err(status))
            .collect()
    }

    /// Replaces an object; its `metadata.resourceVersion` is the precondition.
    pub fn update(object: &str) -> Result<String, Status> {
        api::update(object).map_err(status)
    }

    /// Replaces an object's status; its `metadata.resourceVersion` is the precondition.
    pub fn update_status(object: &str) -> Result<String, Status> {
        api::update_status(object).map_err(status)
    }

    pub fn patch(target: &ObjectRef, patch_type: PatchType, patch: &str) -> Result<String, Status> {
        let patch_type = match patch_type {
            PatchType::Json => api::PatchType::Json,
            PatchType::Merge => api::PatchType::Merge,
            PatchType::Strategic => api::PatchType::Strategic,
            PatchType::Apply => api::PatchType::Apply,
        };
        api::patch(&wit_object_ref(target.clone()), patch_type, patch).map_err(status)
    }

    pub fn delete(target: &ObjectRef, options: &DeleteOptions) -> Result<(), Status> {
        api::delete(
            &wit_object_ref(target.clone()),
            options.resource_version.as_deref(),
            options.uid.as_deref(),
            options.propagation.as_deref(),
        )
        .map_err(status)
    }

    pub fn emit_event(event: &Event) -> Result<(), Status> {
        api::emit_event(&api::Event {
            regarding: wit_object_ref(event.regarding.clone()),
            event_type: event.event_type.clone(),
            reason: event.reason.clone(),
            message: event.message.clone(),
        })
        .map_err(status)
    }

    /// The kinds the API server serves now, custom resources included.
    pub fn resources() -> Result<Vec<ApiResource>, Status> {
        Ok(api::resources()
            .map_err(status)?
            .into_iter()
            .map(|r| ApiResource {
                api_version: r.api_version,
                kind: r.kind,
                resource: r.resource,
                namespaced: r.namespaced,
                verbs: r.verbs,
            })
            .collect())
    }

    /// Deletes every object of a kind in a namespace (or all, `None`) that matches a label
    /// selector, and says what is left.
    pub fn delete_collection(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Remaining, Status> {
        let left =
            api::delete_collection(api_version, kind, namespace, label_selector).map_err(status)?;
        Ok(Remaining {
            count: left.count,
            finalizers: left.finalizers,
        })
    }

    /// Replaces a subresource that takes a whole object (`status`, `finalize`, `scale`); the
    /// object's `metadata.resourceVersion` is the precondition.
    pub fn update_subresource(object: &str, subresource: &str) -> Result<String, Status> {
        api::update_subresource(object, subresource).map_err(status)
    }
}

/// Writes outside a component: through the program's
/// [`NativeHost`](crate::native::NativeHost), with the same signatures as inside one.
#[cfg(not(target_arch = "wasm32"))]
pub mod api {
    use super::{ApiResource, DeleteOptions, Event, ObjectRef, PatchType, Remaining, Status};
    use crate::native::with;

    pub fn get(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<String>, Status> {
        with(|h| h.read(api_version, kind, namespace, name), Err)
    }

    pub fn create(object: &str) -> Result<String, Status> {
        with(|h| h.create(object), Err)
    }

    pub fn create_batch(objects: &[String]) -> Vec<Result<String, Status>> {
        with(
            |h| h.create_batch(objects),
            |status| objects.iter().map(|_| Err(status.clone())).collect(),
        )
    }

    pub fn update(object: &str) -> Result<String, Status> {
        with(|h| h.update(object), Err)
    }

    pub fn update_status(object: &str) -> Result<String, Status> {
        with(|h| h.update_status(object), Err)
    }

    pub fn patch(target: &ObjectRef, patch_type: PatchType, patch: &str) -> Result<String, Status> {
        with(|h| h.patch(target, patch_type, patch), Err)
    }

    pub fn delete(target: &ObjectRef, options: &DeleteOptions) -> Result<(), Status> {
        with(|h| h.delete(target, options), Err)
    }

    pub fn emit_event(event: &Event) -> Result<(), Status> {
        with(|h| h.emit_event(event), Err)
    }

    pub fn resources() -> Result<Vec<ApiResource>, Status> {
        with(|h| h.resources(), Err)
    }

    pub fn delete_collection(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Remaining, Status> {
        with(
            |h| h.delete_collection(api_version, kind, namespace, label_selector),
            Err,
        )
    }

    pub fn update_subresource(object: &str, subresource: &str) -> Result<String, Status> {
        with(|h| h.update_subresource(object, subresource), Err)
    }
}

/// Exports a [`Controller`] as the component's `controller` world.
#[macro_export]
macro_rules! export_controller {
    ($controller:ty) => {
        $crate::__export_singleton!(
            $controller,
            $crate::controller::Singleton,
            $crate::controller::Controller
        );
        #[cfg(target_arch = "wasm32")]
        type __FlotillaController = $crate::controller::Adapter<$controller>;
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::controller::__export_controller!(
            __FlotillaController with_types_in $crate::__bindings::controller
        );
    };
}

#[cfg(all(target_arch = "wasm32", feature = "controller"))]
pub use adapter::Adapter;

/// The generated records as the SDK's types, and the generated `Guest` traits over any
/// [`Singleton`].
#[cfg(all(target_arch = "wasm32", feature = "controller"))]
mod adapter {
    use super::*;
    use crate::__bindings::controller::exports::flotilla::plugin::{meta, reconciler as wit};
    use crate::convert::{object_ref, wit_object_ref};

    #[doc(hidden)]
    pub struct Adapter<C>(std::marker::PhantomData<C>);

    impl<C> std::fmt::Debug for Adapter<C> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Adapter")
        }
    }

    fn watch(w: Watch) -> wit::Watch {
        wit::Watch {
            api_version: w.api_version,
            kind: w.kind,
            mapping: match w.mapping {
                KeyMapping::Primary => wit::KeyMapping::Primary,
                KeyMapping::Owner(kind) => wit::KeyMapping::Owner(kind),
                KeyMapping::SelectedBy(path) => wit::KeyMapping::SelectedBy(path),
                KeyMapping::Custom => wit::KeyMapping::Custom,
            },
            label_selector: w.label_selector,
        }
    }

    impl<C: Singleton> meta::Guest for Adapter<C> {
        fn info() -> meta::PluginInfo {
            meta::PluginInfo {
                name: C::NAME.to_owned(),
                version: C::VERSION.to_owned(),
                wit_version: crate::WIT_VERSION.to_owned(),
            }
        }

        fn self_check() -> Result<(), String> {
            C::with(|controller| controller.as_ref().map(|_| ()).map_err(Clone::clone))
        }
    }

    impl<C: Singleton> wit::Guest for Adapter<C> {
        fn register() -> wit::Registration {
            // A misconfigured controller fails its self-check before it is registered.
            let registration = C::with(|controller| match controller {
                Ok(controller) => controller.register(),
                Err(_) => Registration {
                    watches: Vec::new(),
                    ..Registration::new("v1", "Misconfigured")
                },
            });
            wit::Registration {
                primary_api_version: registration.primary_api_version,
                primary_kind: registration.primary_kind,
                watches: registration.watches.into_iter().map(watch).collect(),
                resync_seconds: registration
                    .resync
                    .map(|d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
                workers: registration.workers.max(1),
            }
        }

        fn keys_for(watch: u32, object: String) -> Vec<wit::ObjectRef> {
            C::with(|controller| match controller {
                Ok(controller) => controller.keys_for(watch, &object),
                Err(_) => Vec::new(),
            })
            .into_iter()
            .map(wit_object_ref)
            .collect()
        }

        fn reconcile(key: wit::ObjectRef) -> Result<Option<u64>, String> {
            C::with(|controller| match controller {
                Ok(controller) => controller
                    .reconcile(object_ref(key))
                    .map(|after| after.map(|d| d.as_millis() as u64)),
                Err(error) => Err(format!("{} is misconfigured: {error}", C::NAME)),
            })
        }
    }
}
