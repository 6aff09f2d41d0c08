//! Admission policies: Kubernetes' AdmissionReview as the `admission-policy` world carries it,
//! the [`AdmissionPolicy`] trait, and reads of the host's informer cache.
//!
//! Objects arrive in their JSON wire form, so a policy can use any JSON library and Kubernetes
//! types it likes. A mutating policy answers with a JSON Patch ([`Response::patch`]).

/// `group`, `version`, `kind` of the object under review.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

/// `group`, `version`, `resource` of the request's URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupVersionResource {
    pub group: String,
    pub version: String,
    pub resource: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

/// Who sent the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: Vec<(String, Vec<String>)>,
}

/// One admission request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    pub sub_resource: String,
    pub namespace: String,
    pub name: String,
    pub operation: Operation,
    pub user: UserInfo,
    /// The object as it would be stored (JSON); none for deletions.
    pub object: Option<String>,
    /// The stored object before an update or deletion (JSON).
    pub old_object: Option<String>,
    pub dry_run: bool,
    /// The request's options (JSON).
    pub options: Option<String>,
    /// The calling AdmissionPolicy's settings (JSON).
    pub settings: String,
}

pub use crate::Status;

/// The answer to a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub allowed: bool,
    pub status: Option<Status>,
    /// A JSON Patch (RFC 6902) for the object; mutating policies only.
    pub patch: Option<String>,
    pub warnings: Vec<String>,
    pub audit_annotations: Vec<(String, String)>,
}

impl Response {
    /// Admits the request unchanged.
    pub fn allow() -> Self {
        Self {
            allowed: true,
            ..Self::default()
        }
    }

    /// Denies the request with 403 Forbidden and `message`, which the client prints.
    pub fn deny(message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            status: Some(Status {
                code: 403,
                reason: "Forbidden".into(),
                message: message.into(),
            }),
            ..Self::default()
        }
    }

    /// Adds a warning (kubectl prints it).
    pub fn warn(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    /// Mutates the object with a JSON Patch.
    pub fn patch(mut self, json_patch: impl Into<String>) -> Self {
        self.patch = Some(json_patch.into());
        self
    }

    /// Mutates the object by answering it whole, changed (JSON); the host applies the
    /// difference. Its apiVersion, kind, name and namespace must stay as they were.
    pub fn mutated(mut self, object: impl Into<String>) -> Self {
        self.patch = Some(object.into());
        self
    }
}

/// An admission policy. One value lives in the plugin's instance; reviews come one at a time.
pub trait AdmissionPolicy: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;

    /// Builds the policy from the plugin's configuration (JSON). An error fails its self-check.
    fn new(config: &str) -> Result<Self, String>;

    /// Checks an AdmissionPolicy's settings when it is applied; an error refuses it.
    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }

    fn review(&mut self, request: Request) -> Response;
}

/// The single policy value of a component. Implemented by
/// [`export_admission_policy!`](crate::export_admission_policy).
#[doc(hidden)]
pub trait Singleton: AdmissionPolicy {
    fn with<R>(f: impl FnOnce(&mut Result<Self, String>) -> R) -> R;
}

/// Reads of the host's informer cache, for the kinds the policy declared.
#[cfg(any(not(target_arch = "wasm32"), feature = "admission"))]
pub use crate::cache::{get as cache_get, list as cache_list};

/// Reads and writes through the API server, for the bookkeeping a decision needs (a quota's
/// usage): `api::get` reads past the cache, `api::update_subresource` writes a status with
/// its resourceVersion as the precondition. A policy must write nothing on a dry run.
#[cfg(any(not(target_arch = "wasm32"), feature = "admission"))]
pub use crate::controller::api;

/// Exports an [`AdmissionPolicy`] as the component's `admission-policy` world.
#[macro_export]
macro_rules! export_admission_policy {
    ($policy:ty) => {
        $crate::__export_singleton!(
            $policy,
            $crate::admission::Singleton,
            $crate::admission::AdmissionPolicy
        );
        #[cfg(target_arch = "wasm32")]
        type __FlotillaAdmissionPolicy = $crate::admission::Adapter<$policy>;
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::admission::__export_admission_policy!(
            __FlotillaAdmissionPolicy with_types_in $crate::__bindings::admission
        );
    };
}

#[cfg(all(target_arch = "wasm32", feature = "admission"))]
pub use adapter::Adapter;

/// The generated records as the SDK's types, and the generated `Guest` traits over any
/// [`Singleton`].
#[cfg(all(target_arch = "wasm32", feature = "admission"))]
mod adapter {
    use super::*;
    use crate::__bindings::admission::exports::flotilla::plugin::{admission as wit, meta};

    #[doc(hidden)]
    pub struct Adapter<P>(std::marker::PhantomData<P>);

    impl<P> std::fmt::Debug for Adapter<P> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Adapter")
        }
    }

    fn request(r: wit::Request) -> Request {
        Request {
            uid: r.uid,
            kind: GroupVersionKind {
                group: r.kind.group,
                version: r.kind.version,
                kind: r.kind.kind,
            },
            resource: GroupVersionResource {
                group: r.resource.group,
                version: r.resource.version,
                resource: r.resource.resource,
            },
            sub_resource: r.sub_resource,
            namespace: r.namespace,
            name: r.name,
            operation: match r.operation {
                wit::Operation::Create => Operation::Create,
                wit::Operation::Update => Operation::Update,
                wit::Operation::Delete => Operation::Delete,
                wit::Operation::Connect => Operation::Connect,
            },
            user: UserInfo {
                username: r.user_info.username,
                uid: r.user_info.uid,
                groups: r.user_info.groups,
                extra: r.user_info.extra,
            },
            object: r.object,
            old_object: r.old_object,
            dry_run: r.dry_run,
            options: r.options,
            settings: r.settings,
        }
    }

    impl<P: Singleton> meta::Guest for Adapter<P> {
        fn info() -> meta::PluginInfo {
            meta::PluginInfo {
                name: P::NAME.to_owned(),
                version: P::VERSION.to_owned(),
                wit_version: crate::WIT_VERSION.to_owned(),
            }
        }

        fn self_check() -> Result<(), String> {
            P::with(|policy| policy.as_ref().map(|_| ()).map_err(Clone::clone))
        }
    }

    impl<P: Singleton> wit::Guest for Adapter<P> {
        fn validate_settings(settings: String) -> Result<(), String> {
            P::with(|policy| {
                let policy = policy.as_ref().map_err(|e| e.clone())?;
                policy.validate_settings(&settings)
            })
        }

        fn review(r: wit::Request) -> wit::Response {
            let response = P::with(|policy| match policy {
                Ok(policy) => policy.review(request(r)),
                Err(error) => Response::deny(format!("{} is misconfigured: {error}", P::NAME)),
            });
            wit::Response {
                allowed: response.allowed,
                status: response.status.map(crate::convert::wit_status),
                patch: response.patch,
                warnings: response.warnings,
                audit_annotations: response.audit_annotations,
            }
        }
    }
}
