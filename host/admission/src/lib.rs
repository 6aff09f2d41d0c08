//! The API server's admission policies. This crate owns AdmissionPolicy objects
//! (`plugins.flotilla.dev/v1alpha1`): it watches them and the WasmPlugins they name, keeps a
//! pool of instances per policy, and answers the API server's admission seam — mutating
//! policies in order (re-invoked once when a later one changed the object), then, after the
//! server's own validation, every validating policy. Each call has the policy's timeout and
//! failure policy; a policy may read the kinds it declares from one shared informer cache.
//!
//! It decides nothing itself: whether a request is admitted is the plugins' answer. It must not
//! touch the store (it reads through the API like every component) and must never let a
//! failing plugin take the server down: the system namespaces and Flotilla's own objects are
//! exempt from every policy that does not opt in, and the server's own work is never admitted.

pub mod builtins;
mod control;
pub mod policy;
pub mod pool;
mod writes;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_api::status::{Status, StatusCause, StatusReason};
use flotilla_apiserver::ApiError;
use flotilla_apiserver::admission::{
    self as seam, AdmissionRequest, MutatingAdmission, Operation, ValidatingAdmission,
};
use flotilla_plugin::bindings::admission as wit;
use flotilla_plugin::{Limits, PluginHost};
use serde_json::{Value, json};
use tokio::sync::watch;

use policy::{Compiled, Mode, OWN_GROUP, Target};
use pool::Pool;

/// How long a request waits for the policies' first load before it is refused with 503.
const READY_WAIT: Duration = Duration::from_secs(30);

/// How the admission host runs its plugins.
#[derive(Clone, Debug)]
pub struct Options {
    pub plugin_host: PluginHost,
    /// Limits for plugins whose WasmPlugin sets none (the call deadline is the policy's timeout).
    pub default_limits: Limits,
    /// Whether the built-in policies ([`builtins`]) are installed when the host starts.
    pub install_builtins: bool,
    /// Built-in policies not to install (and to delete if they were).
    pub disabled_builtins: Vec<String>,
}

impl Options {
    pub fn new(plugin_host: PluginHost) -> Self {
        Self {
            plugin_host,
            default_limits: Limits::default(),
            install_builtins: true,
            disabled_builtins: Vec::new(),
        }
    }
}

/// One policy in service: its spec and the instances that answer it, or why none can.
#[derive(Debug)]
pub struct Live {
    pub policy: Compiled,
    pub pool: Result<Arc<Pool>, String>,
}

/// The policies in service, in the order they run.
#[derive(Debug, Default)]
pub struct Active {
    pub mutating: Vec<Arc<Live>>,
    pub validating: Vec<Arc<Live>>,
}

struct Shared {
    options: Options,
    active: RwLock<Arc<Active>>,
    ready: watch::Sender<bool>,
    client: OnceLock<kube::Client>,
    control: OnceLock<control::Handle>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The admission host: give it to the API server as both a mutating and a validating step
/// ([`Admission::chain`]), then [`Admission::start`] it once the server listens.
#[derive(Clone, Debug)]
pub struct Admission {
    shared: Arc<Shared>,
}

fn api_error(reason: StatusReason, message: impl Into<String>) -> ApiError {
    ApiError::from(Status::new(reason, message))
}

impl Admission {
    pub fn new(options: Options) -> Self {
        Self {
            shared: Arc::new(Shared {
                options,
                active: RwLock::default(),
                ready: watch::channel(false).0,
                client: OnceLock::new(),
                control: OnceLock::new(),
            }),
        }
    }

    /// The API server's admission chain with this host as its only step of each kind.
    pub fn chain(&self) -> seam::AdmissionChain {
        seam::AdmissionChain {
            mutating: vec![Arc::new(self.clone())],
            validating: vec![Arc::new(self.clone())],
        }
    }

    /// Starts watching AdmissionPolicies and WasmPlugins through `client` until `stop`;
    /// requests wait for the first load.
    pub fn start(&self, client: kube::Client, stop: tokio_util::sync::CancellationToken) {
        if self.shared.client.set(client.clone()).is_err() {
            return;
        }
        let handle = control::start(self.clone(), client, stop);
        let _ = self.shared.control.set(handle);
    }

    /// The policies in service now.
    pub fn active(&self) -> Arc<Active> {
        self.shared
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, active: Active) {
        *self
            .shared
            .active
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
        self.shared.ready.send_replace(true);
    }

    async fn loaded(&self) -> Result<Arc<Active>, ApiError> {
        let mut ready = self.shared.ready.subscribe();
        if !*ready.borrow_and_update() {
            let waited = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(api_error(
                    StatusReason::ServiceUnavailable,
                    "admission policies are not loaded yet; try again",
                ));
            }
        }
        Ok(self.active())
    }

    /// The labels of the namespace a request is in (of the Namespace itself for Namespaces):
    /// from the shared cache, or the API when the cache has not seen it yet.
    async fn namespace_labels(
        &self,
        target: &Target<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Option<BTreeMap<String, String>> {
        if target.group.is_empty() && target.resource == "namespaces" {
            return object.or(old).map(policy::labels);
        }
        let namespace = target.namespace?;
        if let Some(control) = self.shared.control.get()
            && let Some(labels) = control.namespace_labels(namespace)
        {
            return Some(labels);
        }
        let client = self.shared.client.get()?;
        let namespaces: kube::Api<kube::api::DynamicObject> =
            kube::Api::all_with(client.clone(), &control::namespaces());
        let found = namespaces.get_opt(namespace).await.ok().flatten()?;
        Some(
            found
                .metadata
                .labels
                .unwrap_or_default()
                .into_iter()
                .collect(),
        )
    }

    /// Whether the policy's selectors take the request.
    async fn selects(
        &self,
        live: &Live,
        target: &Target<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> bool {
        if !live.policy.selects_object(object, old) {
            return false;
        }
        let Some(selector) = &live.policy.namespace_selector else {
            return true;
        };
        if !target.namespaced && target.resource != "namespaces" {
            return true;
        }
        match self.namespace_labels(target, object, old).await {
            Some(labels) => selector.matches(&labels),
            None => selector.matches(&BTreeMap::new()),
        }
    }

    /// The policies of `mode` that take the request.
    async fn matching(
        &self,
        mode: Mode,
        target: &Target<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<Vec<Arc<Live>>, ApiError> {
        let active = self.loaded().await?;
        let candidates = match mode {
            Mode::Mutating => &active.mutating,
            Mode::Validating => &active.validating,
        };
        let mut matching = Vec::new();
        for live in candidates.iter().filter(|l| l.policy.covers(target)) {
            if self.selects(live, target, object, old).await {
                matching.push(live.clone());
            }
        }
        Ok(matching)
    }

    /// One policy's answer, or none when it failed and its failure policy is Ignore.
    async fn ask(
        &self,
        live: &Live,
        request: &wit::Request,
    ) -> Result<Option<wit::Response>, ApiError> {
        let name = &live.policy.name;
        let outcome = match &live.pool {
            Err(why) => Err(why.clone()),
            Ok(pool) => {
                // The plugin's own deadline is the timeout; this bounds waiting for an instance.
                let limit = live.policy.timeout + Duration::from_millis(250);
                match tokio::time::timeout(limit, pool.review(request)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!(
                        "no answer within its timeout of {}s",
                        live.policy.timeout.as_secs()
                    )),
                }
            }
        };
        match outcome {
            Ok(response) => Ok(Some(response)),
            Err(error) => match live.policy.spec.failure_policy {
                policy::FailurePolicy::Fail => Err(api_error(
                    StatusReason::InternalError,
                    format!("admission policy {name:?} failed (failurePolicy Fail): {error}"),
                )),
                policy::FailurePolicy::Ignore => {
                    tracing::warn!(policy = %name, "admission policy failed, admitted as its failurePolicy is Ignore: {error}");
                    Ok(None)
                }
            },
        }
    }

    /// Applies what every answer carries (warnings, audit annotations) and refuses a denial.
    fn verdict(live: &Live, response: &wit::Response) -> Result<(), ApiError> {
        let name = &live.policy.name;
        for warning in &response.warnings {
            seam::warn(warning.clone());
        }
        for (key, value) in &response.audit_annotations {
            tracing::info!(target: "audit", policy = %name, key = %format!("{name}/{key}"), value = %value, "admission audit annotation");
        }
        if response.allowed {
            return Ok(());
        }
        Err(denial(name, response.status.as_ref()))
    }

    /// Calls one mutating policy and applies its patch; says whether the object changed.
    async fn mutate_with(
        &self,
        live: &Live,
        review: &Review,
        object: &mut Value,
    ) -> Result<bool, ApiError> {
        let request = review.request(live, Some(object));
        let Some(response) = self.ask(live, &request).await? else {
            return Ok(false);
        };
        Self::verdict(live, &response)?;
        let Some(patch) = response.patch.as_deref().filter(|p| !p.trim().is_empty()) else {
            return Ok(false);
        };
        let changed = patched(&live.policy.name, object, patch)?;
        let changed_identity = ["apiVersion", "kind"]
            .iter()
            .any(|f| changed.get(f) != object.get(f))
            || ["name", "namespace"]
                .iter()
                .any(|f| changed["metadata"].get(f) != object["metadata"].get(f));
        if changed_identity {
            return Err(api_error(
                StatusReason::InternalError,
                format!(
                    "admission policy {:?} may not change the object's apiVersion, kind, name or namespace",
                    live.policy.name
                ),
            ));
        }
        if changed == *object {
            return Ok(false);
        }
        *object = changed;
        Ok(true)
    }

    /// Checks an AdmissionPolicy being applied: its spec, its plugin, and its settings by the
    /// plugin's own `validate-settings`.
    async fn check_policy(&self, object: &Value) -> Result<(), ApiError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let invalid = |field: &str, detail: String| {
            ApiError::from(Status::invalid(
                OWN_GROUP,
                "AdmissionPolicy",
                name,
                vec![StatusCause::invalid(
                    field,
                    &object["spec"][field.trim_start_matches("spec.")],
                    &detail,
                )],
            ))
        };
        let compiled = Compiled::of(object).map_err(|e| {
            let (field, detail) = e.split_once(": ").unwrap_or(("spec", &e));
            invalid(field, detail.to_owned())
        })?;
        let Some(control) = self.shared.control.get() else {
            return Err(api_error(
                StatusReason::ServiceUnavailable,
                "admission policies are not loaded yet; try again",
            ));
        };
        let pool = control
            .pool_for_check(&compiled)
            .await
            .map_err(|e| invalid("spec.plugin", e))?;
        match tokio::time::timeout(compiled.timeout, pool.validate_settings(&compiled.settings))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(invalid(
                "spec.settings",
                format!("refused by plugin {:?}: {message}", compiled.spec.plugin),
            )),
            Err(_) => Err(invalid(
                "spec.settings",
                format!(
                    "plugin {:?} did not check them within {}s",
                    compiled.spec.plugin,
                    compiled.timeout.as_secs()
                ),
            )),
        }
    }
}

/// Applies a policy's patch: an RFC 6902 JSON Patch, or the whole mutated object.
fn patched(policy: &str, object: &Value, patch: &str) -> Result<Value, ApiError> {
    let bad = |detail: String| {
        api_error(
            StatusReason::InternalError,
            format!("admission policy {policy:?} returned a patch that does not apply: {detail}"),
        )
    };
    let parsed: Value = serde_json::from_str(patch).map_err(|e| bad(e.to_string()))?;
    match parsed {
        Value::Array(_) => {
            let mut changed = object.clone();
            flotilla_api::patch::json_patch(&mut changed, &parsed)
                .map_err(|e| bad(e.to_string()))?;
            Ok(changed)
        }
        Value::Object(_) => Ok(parsed),
        _ => Err(bad("neither a JSON Patch nor an object".into())),
    }
}

/// The Status a denial is sent with: the policy's code and reason (403 Forbidden unless it
/// says otherwise) and its message, named like Kubernetes names a webhook's.
fn denial(policy: &str, status: Option<&flotilla_plugin::bindings::types::Status>) -> ApiError {
    let said = status.map(|s| s.message.trim()).filter(|m| !m.is_empty());
    let message = match said {
        Some(said) => format!("admission policy {policy:?} denied the request: {said}"),
        None => format!("admission policy {policy:?} denied the request"),
    };
    let reason = status
        .map(|s| reason_of(&s.reason, s.code))
        .unwrap_or(StatusReason::Forbidden);
    api_error(reason, message)
}

fn reason_of(reason: &str, code: u16) -> StatusReason {
    match (reason, code) {
        ("BadRequest", _) | (_, 400) => StatusReason::BadRequest,
        ("NotFound", _) | (_, 404) => StatusReason::NotFound,
        ("Conflict", _) | (_, 409) => StatusReason::Conflict,
        ("Invalid", _) | (_, 422) => StatusReason::Invalid,
        ("TooManyRequests", _) | (_, 429) => StatusReason::TooManyRequests,
        _ => StatusReason::Forbidden,
    }
}

/// What every policy's request for one admission shares: Kubernetes' AdmissionRequest but the
/// object and the policy's settings.
struct Review {
    uid: String,
    kind: wit::GroupVersionKind,
    resource: wit::GroupVersionResource,
    sub_resource: String,
    namespace: String,
    name: String,
    operation: wit::Operation,
    user_info: wit::UserInfo,
    old_object: Option<String>,
    dry_run: bool,
    options: String,
}

impl Review {
    fn of(request: &AdmissionRequest<'_>) -> Self {
        let resource = request.resource;
        let (operation, options_kind) = match request.operation {
            Operation::Create => (wit::Operation::Create, "CreateOptions"),
            Operation::Update => (wit::Operation::Update, "UpdateOptions"),
            Operation::Delete => (wit::Operation::Delete, "DeleteOptions"),
            Operation::Connect => (wit::Operation::Connect, "ConnectOptions"),
        };
        let mut options = json!({"apiVersion": "meta.k8s.io/v1", "kind": options_kind});
        if request.dry_run {
            options["dryRun"] = json!(["All"]);
        }
        if !matches!(request.operation, Operation::Delete | Operation::Connect) {
            options["fieldManager"] = json!(seam::field_manager());
        }
        let user = request.user.clone().unwrap_or_default();
        let (group, version, kind) =
            request
                .object_kind
                .unwrap_or((resource.group, resource.version, resource.kind));
        Self {
            uid: uuid::Uuid::new_v4().to_string(),
            kind: wit::GroupVersionKind {
                group: group.to_owned(),
                version: version.to_owned(),
                kind: kind.to_owned(),
            },
            resource: wit::GroupVersionResource {
                group: resource.group.to_owned(),
                version: resource.version.to_owned(),
                resource: resource.plural.to_owned(),
            },
            sub_resource: request.subresource.unwrap_or_default().to_owned(),
            namespace: request.namespace.unwrap_or_default().to_owned(),
            name: request.name.to_owned(),
            operation,
            user_info: wit::UserInfo {
                username: user.name,
                uid: user.uid,
                groups: user.groups,
                extra: Vec::new(),
            },
            old_object: request.old_object.map(Value::to_string),
            dry_run: request.dry_run,
            options: options.to_string(),
        }
    }

    fn request(&self, live: &Live, object: Option<&Value>) -> wit::Request {
        wit::Request {
            uid: self.uid.clone(),
            kind: self.kind.clone(),
            resource: self.resource.clone(),
            sub_resource: self.sub_resource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            operation: self.operation,
            user_info: self.user_info.clone(),
            object: object.map(Value::to_string),
            old_object: self.old_object.clone(),
            dry_run: self.dry_run,
            options: Some(self.options.clone()),
            settings: live.policy.settings.clone(),
        }
    }
}

fn target_of<'a>(request: &'a AdmissionRequest<'a>) -> Target<'a> {
    Target {
        operation: request.operation.as_str(),
        group: request.resource.group,
        version: request.resource.version,
        resource: request.resource.plural,
        subresource: request.subresource,
        namespaced: request.resource.namespaced,
        namespace: request.namespace,
        name: request.name,
    }
}

/// Who the admission host itself writes as (its built-in installs, its status reports).
pub const OWN_USER: &str = "system:apiserver";

/// Work no policy sees: the server's own writes, and the admission host's through the API.
fn is_own_work(request: &AdmissionRequest<'_>) -> bool {
    seam::is_server_work() || request.user.as_ref().is_some_and(|u| u.name == OWN_USER)
}

fn is_policies(request: &AdmissionRequest<'_>) -> bool {
    request.resource.group == OWN_GROUP
        && request.resource.plural == "admissionpolicies"
        && request.subresource.is_none()
}

#[async_trait]
impl MutatingAdmission for Admission {
    async fn admit(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if is_own_work(request) {
            return Ok(());
        }
        let target = target_of(request);
        let policies = self
            .matching(Mode::Mutating, &target, Some(object), request.old_object)
            .await?;
        if policies.is_empty() {
            return Ok(());
        }
        let review = Review::of(request);
        let mut last_change = None;
        for (i, live) in policies.iter().enumerate() {
            if self.mutate_with(live, &review, object).await? {
                last_change = Some(i);
            }
        }
        // A policy that ran before a later one changed the object sees it once more.
        if let Some(last) = last_change {
            for live in policies[..last]
                .iter()
                .filter(|l| l.policy.spec.reinvocation_policy == policy::Reinvocation::IfNeeded)
            {
                self.mutate_with(live, &review, object).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ValidatingAdmission for Admission {
    async fn validate(
        &self,
        request: &AdmissionRequest<'_>,
        object: Option<&Value>,
    ) -> Result<(), ApiError> {
        if let Some(object) = object.filter(|_| is_policies(request)) {
            self.check_policy(object).await?;
        }
        if is_own_work(request) {
            return Ok(());
        }
        let target = target_of(request);
        let policies = self
            .matching(Mode::Validating, &target, object, request.old_object)
            .await?;
        if policies.is_empty() {
            return Ok(());
        }
        let review = Review::of(request);
        let answers = futures::future::join_all(policies.iter().map(|live| {
            let request = review.request(live, object);
            async move { self.ask(live, &request).await }
        }))
        .await;
        for (live, answer) in policies.iter().zip(answers) {
            if let Some(response) = answer? {
                Self::verdict(live, &response)?;
            }
        }
        Ok(())
    }
}
