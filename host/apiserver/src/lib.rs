//! The Kubernetes-compatible API server: REST verbs, discovery, version and watch over HTTP, for
//! the kinds declared in [`resources`]. It is the only component that holds the store; every
//! other component, even inside one `flotilla up` process, is its client.
//!
//! It owns request decoding, object metadata (uid, timestamps, generation, resourceVersion),
//! optimistic concurrency and the mapping of objects to store keys. It must not run policy:
//! admission, scheduling and controllers are plugins reached through their own crates.
//!
//! Objects are handled in Kubernetes' JSON wire format (`serde_json::Value`) and stored as JSON;
//! `metadata.resourceVersion` is the store's mod revision of the object, set on every read.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use flotilla_api::{FieldSelector, LabelSelector, Status, StatusCause, validation};
use flotilla_store::{
    KeyValue, RangeRequest, Revision, SharedStore, StoreError, StoreExt, TxnOutcome,
};
use futures::StreamExt;
use serde_json::{Value, json};

pub mod admission;
mod apply;
pub mod authn;
mod body;
mod crd;
mod delete;
pub mod join;
pub mod kubeconfig;
mod metrics;
pub mod nodes;
mod openapi_v2;
pub mod pki;
mod protobuf;
pub mod resources;
pub mod serve;
mod services;
mod subresources;
pub mod table;
mod watch;

pub use services::ServiceRanges;
pub use watch::WatchCacheOptions;

use resources::{ResourceDef, VERBS};
use table::IncludeObject;

/// How objects go out: as themselves, or as rows of a `meta.k8s.io/v1` Table.
#[derive(Debug, Clone, Copy)]
struct Output {
    table: Option<IncludeObject>,
}

impl Output {
    fn one(&self, resource: &ResourceDef, mut object: Value) -> Value {
        served_version(resource, &mut object);
        match self.table {
            Some(include) => {
                let metadata = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                table::table(resource, &[object], metadata, include)
            }
            None => object,
        }
    }
}

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// A custom resource is stored at one version and served at each: only `apiVersion` differs.
fn served_version(resource: &ResourceDef, object: &mut Value) {
    if resource.custom.is_some() {
        object["apiVersion"] = json!(resource.api_version());
    }
}

/// Requests larger than this are refused with 413, as Kubernetes does.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The Kubernetes version this server speaks; kubectl picks its behaviour by the minor.
pub const KUBERNETES_MAJOR: &str = "1";
pub const KUBERNETES_MINOR: &str = "32";

/// The API server's state: the store and the served resources.
#[derive(Debug)]
pub struct ApiServer {
    store: SharedStore,
    /// The served resources; replaced whole when custom resources come and go, so a request
    /// works on one consistent snapshot.
    resources: std::sync::RwLock<Arc<Vec<ResourceDef>>>,
    /// In-flight limits, as Kubernetes' `--max-requests-inflight` and
    /// `--max-mutating-requests-inflight`. Watches are long-running and not counted.
    reads: tokio::sync::Semaphore,
    writes: tokio::sync::Semaphore,
    authenticator: Option<Arc<authn::Authenticator>>,
    watches: watch::WatchCaches,
    metrics: metrics::Metrics,
    admission: admission::AdmissionChain,
    node_client: Option<Arc<nodes::NodeClient>>,
    join: Option<join::JoinOptions>,
    service_ranges: ServiceRanges,
    advertise: Option<std::net::SocketAddr>,
    /// The schemas of the served kinds (the built-in ones, plus custom resources), and the
    /// OpenAPI v3 documents made from them; replaced whole when custom resources change.
    base_schemas: flotilla_schema::Registry,
    schemas: std::sync::RwLock<Arc<flotilla_schema::Registry>>,
    openapi: std::sync::RwLock<Arc<flotilla_schema::Documents>>,
    /// `/openapi/v2` in protobuf, made with the documents.
    openapi_v2: std::sync::RwLock<Bytes>,
    /// The server itself, for work it starts in the background.
    me: std::sync::Weak<ApiServer>,
    /// Namespaces whose contents are being deleted.
    terminating: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Held while the served custom resources are rebuilt, so rebuilds apply in store order.
    reloading: tokio::sync::Mutex<()>,
}

/// Limits of the API server.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Most reads (get, list) served at once before 429.
    pub max_requests_inflight: usize,
    /// Most writes served at once before 429.
    pub max_mutating_requests_inflight: usize,
    /// Who may call the API; `None` serves everyone (for tests of the REST layer alone).
    pub authenticator: Option<Arc<authn::Authenticator>>,
    pub watch_cache: WatchCacheOptions,
    /// The admission steps every write passes.
    pub admission: admission::AdmissionChain,
    /// How the server reaches node agents (for `pods/log`); `None`: it does not.
    pub node_client: Option<Arc<nodes::NodeClient>>,
    /// Nodes may join with join tokens (`/cacerts`, `join::JOIN_PATH`); `None`: they may not.
    pub join: Option<join::JoinOptions>,
    /// Where Services' ClusterIPs and NodePorts come from.
    pub service_ranges: ServiceRanges,
    /// The address clients reach this server on: the endpoint of the `kubernetes` Service in
    /// `default` (ClusterIP the service CIDR's first address, port 443). None: no such Service.
    pub advertise: Option<std::net::SocketAddr>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            authenticator: None,
            watch_cache: WatchCacheOptions::default(),
            admission: admission::AdmissionChain::default(),
            node_client: None,
            join: None,
            service_ranges: ServiceRanges::default(),
            advertise: None,
        }
    }
}

/// An error answered as a `metav1.Status` (boxed: errors are rare, results are everywhere).
#[derive(Debug)]
pub struct ApiError(pub Box<Status>);

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        Self(Box::new(status))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::from(match error {
            StoreError::Compacted { requested, .. } => {
                Status::expired(format!("too old resource version: {requested}"))
            }
            StoreError::ValueTooLarge { size, limit, .. } => Status::new(
                flotilla_api::StatusReason::RequestEntityTooLarge,
                format!("object is {size} bytes, over the storage limit of {limit} bytes"),
            ),
            other => Status::internal(other.to_string()),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, json_body(&self.0.to_json())).into_response();
        if let Some(seconds) = self.0.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_body(value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    let mut response = json_body(value);
    *response.status_mut() = code;
    response
}

impl ApiServer {
    pub fn new(store: SharedStore) -> Arc<Self> {
        Self::with_options(store, ApiOptions::default())
    }

    pub fn with_options(store: SharedStore, options: ApiOptions) -> Arc<Self> {
        let resources = resources::builtin();
        let schemas = flotilla_schema::Registry::builtin();
        let served: Vec<_> = resources.iter().map(ResourceDef::served).collect();
        let openapi = flotilla_schema::Documents::build(&schemas, &served);
        let openapi_v2 = openapi_v2::encode(&schemas);
        Arc::new_cyclic(|me| Self {
            schemas: std::sync::RwLock::new(Arc::new(schemas.clone())),
            base_schemas: schemas,
            openapi: std::sync::RwLock::new(Arc::new(openapi)),
            openapi_v2: std::sync::RwLock::new(openapi_v2),
            me: me.clone(),
            terminating: Default::default(),
            reloading: Default::default(),
            resources: std::sync::RwLock::new(Arc::new(resources)),
            reads: tokio::sync::Semaphore::new(options.max_requests_inflight),
            writes: tokio::sync::Semaphore::new(options.max_mutating_requests_inflight),
            authenticator: options.authenticator,
            watches: watch::WatchCaches::new(store.clone(), options.watch_cache),
            metrics: metrics::Metrics::new(),
            admission: options.admission,
            node_client: options.node_client,
            join: options.join,
            service_ranges: options.service_ranges,
            advertise: options.advertise,
            store,
        })
    }

    /// The HTTP routes: version, discovery and every resource's REST endpoints.
    /// With an authenticator, every route but `/version` needs a known bearer token.
    pub fn router(self: &Arc<Self>) -> Router {
        let router = Router::new()
            .route("/version", get(version))
            .route("/api", get(api_versions))
            .route("/apis", get(api_groups))
            .route("/metrics", get(metrics_text))
            .route("/openapi/v2", get(openapi_v2_document))
            .route("/openapi/v3", get(openapi_index))
            .route("/openapi/v3/{*path}", get(openapi_document))
            .route("/cacerts", get(join::cacerts))
            .route(join::JOIN_PATH, axum::routing::post(join::join))
            .fallback(rest)
            .with_state(self.clone());
        match &self.authenticator {
            Some(authenticator) => router.layer(axum::middleware::from_fn_with_state(
                authenticator.clone(),
                authn::require_token,
            )),
            None => router,
        }
    }

    /// Makes what every cluster has from its first start: the `default`, `kube-system`,
    /// `kube-public` and `kube-node-lease` namespaces. Ones that exist are left alone.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let resource = self
            .find("", "v1", "namespaces")
            .expect("namespaces are served");
        for name in SYSTEM_NAMESPACES {
            let target = Target {
                resource: &resource,
                namespace: None,
                name: None,
                subresource: None,
            };
            let namespace = json!({"metadata": {"name": name}});
            match create_object(self, &target, namespace).await {
                Err(e) if e.0.reason == flotilla_api::StatusReason::AlreadyExists => {}
                other => {
                    other?;
                }
            }
        }
        self.install_own_definitions().await?;
        self.reload_custom_resources().await?;
        services::spawn_releaser(self.store.clone());
        if let Some(address) = self.advertise {
            self.publish_api_service(address).await?;
        }
        Ok(())
    }

    /// The `kubernetes` Service in `default`, as Kubernetes' API server keeps it: ClusterIP
    /// the service CIDR's first address, port `https` 443, and an EndpointSlice (managed by
    /// this server) naming `address`, rewritten when the address changed since the last start.
    async fn publish_api_service(&self, address: std::net::SocketAddr) -> Result<(), ApiError> {
        const NAME: &str = "kubernetes";
        let services = self
            .find("", "v1", "services")
            .expect("services are served");
        let slices = self
            .find("discovery.k8s.io", "v1", "endpointslices")
            .expect("endpointslices are served");
        let target = |resource| Target {
            resource,
            namespace: Some("default".into()),
            name: None,
            subresource: None,
        };
        let service = json!({
            "metadata": {"name": NAME, "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": self.service_ranges.api_service_ip().to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                    "targetPort": address.port()}]},
        });
        let existing = Target {
            name: Some(NAME.into()),
            ..target(&services)
        };
        // It is kept as it is once made (its address is taken, so a create would be refused
        // for the address before the name).
        match current_object(self, &existing).await {
            Ok(_) => {}
            Err(e) if e.0.reason == flotilla_api::StatusReason::NotFound => {
                match create_object(self, &target(&services), service).await {
                    Err(e) if e.0.reason == flotilla_api::StatusReason::AlreadyExists => {}
                    other => {
                        other?;
                    }
                }
            }
            Err(e) => return Err(e),
        }
        let slice = json!({
            "metadata": {"name": NAME, "labels": {
                "kubernetes.io/service-name": NAME,
                "endpointslice.kubernetes.io/managed-by": "flotilla-apiserver"}},
            "addressType": if address.is_ipv4() { "IPv4" } else { "IPv6" },
            "endpoints": [{"addresses": [address.ip().to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false}}],
            "ports": [{"name": "https", "port": address.port(), "protocol": "TCP"}],
        });
        let named = Target {
            name: Some(NAME.into()),
            ..target(&slices)
        };
        match current_object(self, &named).await {
            Ok(current) => {
                let stored = decode(&current)?;
                if stored["endpoints"] != slice["endpoints"] || stored["ports"] != slice["ports"] {
                    let mut updated = stored.clone();
                    for field in ["endpoints", "ports", "addressType"] {
                        updated[field] = slice[field].clone();
                    }
                    replace(self, &named, &current, updated).await?;
                }
            }
            Err(e) if e.0.reason == flotilla_api::StatusReason::NotFound => {
                create_object(self, &target(&slices), slice).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The schemas as they are now.
    fn schemas(&self) -> Arc<flotilla_schema::Registry> {
        self.schemas.read().expect("schemas lock").clone()
    }

    /// The OpenAPI documents as they are now.
    fn openapi(&self) -> Arc<flotilla_schema::Documents> {
        self.openapi.read().expect("openapi lock").clone()
    }

    /// Ends every watch: the server is stopping.
    pub fn close_watches(&self) {
        self.watches.close();
    }

    /// The served resources as they are now.
    pub(crate) fn resources(&self) -> Arc<Vec<ResourceDef>> {
        self.resources.read().expect("resources lock").clone()
    }

    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.resources()
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }
}

async fn version() -> Response {
    json_body(&json!({
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0-flotilla.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    }))
}

async fn metrics_text(State(server): State<Arc<ApiServer>>) -> Response {
    let text = server.metrics.render(&server.watches.watchers().await);
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `/openapi/v2`: protobuf, as kubectl asks for it, or Swagger JSON.
async fn openapi_v2_document(State(server): State<Arc<ApiServer>>, request: Request) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("protobuf") {
        let bytes = server.openapi_v2.read().expect("openapi lock").clone();
        let mut response = Response::new(Body::from(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(openapi_v2::MEDIA_TYPE),
        );
        return response;
    }
    let schemas = server.schemas();
    let document = json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": {},
        "definitions": schemas.schemas(),
    })
    .to_string()
    .replace(flotilla_schema::REF_PREFIX, "#/definitions/");
    let mut response = Response::new(Body::from(document));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn openapi_index(State(server): State<Arc<ApiServer>>) -> Response {
    let mut response = Response::new(Body::from(server.openapi().index().to_owned()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    response
}

/// One group version's OpenAPI document. Asked for by its current hash it may be cached for
/// good; asked for by an old hash it redirects to the current one, as Kubernetes does.
async fn openapi_document(
    State(server): State<Arc<ApiServer>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let openapi = server.openapi();
    let Some((hash, document)) = openapi.document(&path) else {
        return not_found_path(request.uri().path()).into_response();
    };
    let query = query_params(request.uri().query());
    let asked = query
        .iter()
        .find(|(k, _)| k == "hash")
        .map(|(_, v)| v.as_str());
    if asked.is_some_and(|asked| asked != hash) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
        if let Ok(location) = HeaderValue::from_str(&format!("/openapi/v3/{path}?hash={hash}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return response;
    }
    let mut response = Response::new(Body::from(document.to_owned()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let cache = if asked.is_some() {
        "public, immutable, max-age=31536000"
    } else {
        "no-cache, private"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{hash}\"")) {
        headers.insert(header::ETAG, etag);
    }
    response
}

async fn api_versions() -> Response {
    json_body(&json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    }))
}

async fn api_groups(State(server): State<Arc<ApiServer>>) -> Response {
    let resources = server.resources();
    // Each group once, with its versions in the order they were declared; the first is
    // preferred.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(group, _)| *group == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    groups.sort_by_key(|(group, _)| *group);
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json_body(&json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// The resources of one group version, for discovery.
fn resource_list(server: &ApiServer, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = server
        .resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| {
            let main = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": VERBS,
                "shortNames": r.short_names,
                "categories": r.categories,
            });
            let subresources = r.subresources().into_iter().map(|sub| {
                let mut entry = json!({
                    "name": format!("{}/{}", r.plural, sub.name),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": sub.kind,
                    "verbs": sub.verbs,
                });
                if !sub.group.is_empty() || sub.version != r.version {
                    entry["group"] = json!(sub.group);
                    entry["version"] = json!(sub.version);
                }
                entry
            });
            std::iter::once(main).chain(subresources)
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// What a REST path names.
struct Target<'a> {
    resource: &'a ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    /// `status` for `…/<name>/status`.
    subresource: Option<String>,
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::from(Status::new(
        flotilla_api::StatusReason::NotFound,
        format!("the server could not find the requested resource ({path})"),
    ))
}

/// Resolves `/api/v1/...` and `/apis/<group>/<version>/...` paths.
fn resolve<'a>(resources: &'a [ResourceDef], path: &str) -> Result<Option<Target<'a>>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found_path(path)),
    };
    let lookup = |plural: &str| {
        resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .ok_or_else(|| not_found_path(path))
    };
    // `namespaces/<ns>/<plural>…` is inside a namespace, unless it names a subresource of the
    // namespace itself (`namespaces/<ns>/status`).
    let (namespace, rest) = match rest {
        ["namespaces", namespace, plural, rest @ ..] if !SUBRESOURCES.contains(plural) => {
            (Some((*namespace).to_owned()), rest_with(plural, rest))
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [] => return Ok(None),
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(not_found_path(path)),
    };
    let resource = lookup(plural)?;
    // A cluster-scoped resource has no namespace; a namespaced one named without a namespace is
    // only a list or watch across all namespaces.
    let misplaced = matches!(
        (resource.namespaced, &namespace, name),
        (false, Some(_), _) | (true, None, Some(_))
    );
    if misplaced || subresource.is_some_and(|sub| !resource.has_subresource(sub)) {
        return Err(not_found_path(path));
    }
    Ok(Some(Target {
        resource,
        namespace,
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    }))
}

/// Subresources of a namespace: `namespaces/<name>/<these>` is not a collection in it.
const SUBRESOURCES: &[&str] = &["status", "finalize"];

fn rest_with<'a>(first: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![first];
    all.extend_from_slice(rest);
    all
}

/// Query parameters, percent-decoded.
fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    fn labels(&self) -> Result<LabelSelector, ApiError> {
        self.get("labelSelector")
            .unwrap_or_default()
            .parse()
            .map_err(|e: flotilla_api::SelectorError| {
                ApiError::from(Status::bad_request(e.to_string()))
            })
    }

    fn fields(&self, resource: &ResourceDef) -> Result<FieldSelector, ApiError> {
        let selector: FieldSelector = self
            .get("fieldSelector")
            .unwrap_or_default()
            .parse()
            .map_err(|e: flotilla_api::SelectorError| {
                ApiError::from(Status::bad_request(e.to_string()))
            })?;
        for term in selector.terms() {
            if !resource.selectable_fields().contains(&term.field.as_str()) {
                return Err(ApiError::from(Status::bad_request(format!(
                    "field label not supported: {}",
                    term.field
                ))));
            }
        }
        Ok(selector)
    }
}

async fn rest(State(server): State<Arc<ApiServer>>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let query = Query {
        params: query_params(request.uri().query()),
    };
    let watching = query.flag("watch");
    let (verb, resource) =
        metrics::request_labels(request.method(), request.uri().path(), watching);
    let limit = match *request.method() {
        _ if watching => None,
        Method::GET | Method::HEAD | Method::OPTIONS => Some(&server.reads),
        _ => Some(&server.writes),
    };
    // Over the limit: 429 with Retry-After, so clients back off instead of piling up.
    let context = match request_context(&request, &query) {
        Ok(context) => Arc::new(context),
        Err(error) => return error.into_response(),
    };
    let work = admission::scope(context.clone(), async {
        match limit.map(|l| l.try_acquire()) {
            Some(Err(_)) => ApiError::from(Status::too_many_requests(1)).into_response(),
            Some(Ok(_permit)) => respond(&server, request, query).await,
            None => respond(&server, request, query).await,
        }
    });
    let mut response = work.await;
    for warning in context.warnings.lock().expect("warnings lock").iter() {
        if let Ok(value) = HeaderValue::from_str(&admission::warning_header(warning)) {
            response.headers_mut().append("Warning", value);
        }
    }
    server.metrics.record(
        verb,
        &resource,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Who sent a request and whether it is a dry run (`dryRun=All`).
fn request_context(
    request: &Request,
    query: &Query,
) -> Result<admission::RequestContext, ApiError> {
    let dry_run = match query.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let field_validation = match query.get("fieldValidation") {
        None | Some("") | Some("Warn") => admission::FieldValidation::Warn,
        Some("Ignore") => admission::FieldValidation::Ignore,
        Some("Strict") => admission::FieldValidation::Strict,
        Some(other) => {
            return Err(bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
    };
    // Kubernetes names an unnamed manager after the client: its User-Agent up to the first '/'.
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(manager) => manager.to_owned(),
        None => request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|agent| agent.split('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
    };
    Ok(admission::RequestContext {
        user: request.extensions().get::<authn::UserInfo>().cloned(),
        dry_run,
        field_validation,
        manager,
        force: query.flag("force"),
        ..Default::default()
    })
}

/// How long a request (other than a watch) may take, unless it asks for less with `timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn respond(server: &Arc<ApiServer>, request: Request, query: Query) -> Response {
    let limit = match query.get("timeout").filter(|t| !t.is_empty()) {
        _ if query.flag("watch") => None,
        Some(text) => match parse_go_duration(text) {
            Some(asked) => Some(asked.min(REQUEST_TIMEOUT)),
            None => {
                return bad_request(format!("invalid timeout {text:?}")).into_response();
            }
        },
        None => Some(REQUEST_TIMEOUT),
    };
    let work = handle(server, request, query);
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(ApiError::from(Status::new(
                flotilla_api::StatusReason::Timeout,
                format!(
                    "Timeout: request did not complete within the allowed duration of {limit:?}"
                ),
            )))
        }),
        None => work.await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A duration as Go writes them and kubectl's `--request-timeout` sends them: `30s`, `1m30s`,
/// `500ms`, or a bare number of seconds.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(number * scale).ok()?;
        rest = tail;
    }
    Some(total)
}

async fn handle(server: &Arc<ApiServer>, request: Request, query: Query) -> ApiResult {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let output = Output {
        table: table::wants_table(accept).then(|| IncludeObject::parse(query.get("includeObject"))),
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let resources = server.resources();
    let Some(target) = resolve(&resources, &path)? else {
        // A group version's discovery document.
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version) = match segments.as_slice() {
            ["api", version] => ("", *version),
            ["apis", group, version] => (*group, *version),
            _ => return Err(not_found_path(&path)),
        };
        return resource_list(server, group, version)
            .map(|list| json_body(&list))
            .ok_or_else(|| not_found_path(&path));
    };
    if let Some(subresource) = target.subresource.as_deref() {
        let view = match subresource {
            "scale" => View::Scale,
            _ => View::Object,
        };
        return match (subresource, method) {
            ("status", Method::GET) => get_object(server, &target, output).await,
            ("scale", Method::GET) => subresources::get_scale(server, &target).await,
            ("status" | "scale" | "finalize", Method::PUT) => {
                let body = read_body(request).await?;
                let object = body::parse_as(&content_type, &body)?;
                subresources::put(server, &target, view, object).await
            }
            ("status" | "scale", Method::PATCH) => {
                let body = read_body(request).await?;
                patch(server, &target, view, &content_type, body).await
            }
            ("binding", Method::POST) => {
                let body = read_body(request).await?;
                subresources::bind(server, &target, body::parse_as(&content_type, &body)?).await
            }
            ("eviction", Method::POST) => {
                let body = read_body(request).await?;
                subresources::evict(server, &target, body::parse_as(&content_type, &body)?).await
            }
            ("log", Method::GET) => subresources::log(server, &target, &query).await,
            ("exec" | "attach" | "portforward", _) => {
                Err(ApiError::from(Status::bad_request(format!(
                    "pods/{subresource} is not supported: a pod's containers are WebAssembly components run inside the node agent, with no shell or terminal to attach to; use kubectl logs, probes, or a Service to reach them"
                ))))
            }
            (_, method) => Err(method_not_allowed(&method, &path)),
        };
    }
    let writes = !matches!(method, Method::GET | Method::HEAD);
    let result = match (method, target.name.is_some()) {
        (Method::GET, false) if query.flag("watch") => watch(server, &target, &query, output).await,
        (Method::GET, false) => list(server, &target, &query, output).await,
        (Method::GET, true) => get_object(server, &target, output).await,
        (Method::POST, false) => {
            let body = read_body(request).await?;
            let object = parse_object(&content_type, &body, target.resource)?;
            create_object(server, &target, object).await
        }
        (Method::PUT, true) => {
            let body = read_body(request).await?;
            let object = parse_object(&content_type, &body, target.resource)?;
            let current = current_object(server, &target).await?;
            Ok(json_body(
                &replace(server, &target, &current, object).await?,
            ))
        }
        (Method::PATCH, true) => {
            let body = read_body(request).await?;
            patch(server, &target, View::Object, &content_type, body).await
        }
        (Method::DELETE, true) => {
            let body = read_body(request).await?;
            delete::delete(server, &target, &query, body).await
        }
        (Method::DELETE, false) => {
            let body = read_body(request).await?;
            delete_collection(server, &target, &query, body).await
        }
        (method, _) => Err(method_not_allowed(&method, &path)),
    };
    // A definition changed: its resources are served (or not) before the answer goes out.
    if writes && result.is_ok() && crd::is_definitions(target.resource) {
        server.reload_custom_resources().await?;
    }
    result
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::from(Status::new(
        flotilla_api::StatusReason::MethodNotAllowed,
        format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ),
    ))
}

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::from(Status::new(
                flotilla_api::StatusReason::RequestEntityTooLarge,
                format!("the request body is over the limit of {MAX_BODY_BYTES} bytes"),
            ))
        })
}

/// A stored object as served: the JSON with `metadata.resourceVersion` set to its revision.
fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::from(Status::internal(format!(
            "stored object {} is not JSON: {e}",
            kv.key
        )))
    })?;
    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(object)
}

fn encode(object: &Value) -> Bytes {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
    }
    Bytes::from(object.to_string())
}

fn matches(object: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    let metadata = &object["metadata"];
    let object_labels = metadata["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    labels.matches(&object_labels) && fields.matches(|field| field_value(object, field))
}

/// The value of a dotted field path as a field selector compares it: strings as they are,
/// booleans as `true`/`false`, anything absent as absent.
fn field_value<'a>(object: &'a Value, path: &str) -> Option<&'a str> {
    let mut at = object;
    for segment in path.split('.') {
        at = at.get(segment)?;
    }
    match at {
        Value::String(s) => Some(s),
        Value::Bool(true) => Some("true"),
        Value::Bool(false) => Some("false"),
        _ => None,
    }
}

async fn get_object(server: &ApiServer, target: &Target<'_>, output: Output) -> ApiResult {
    let name = target.name.as_deref().unwrap_or_default();
    let key = target.resource.key(target.namespace.as_deref(), name);
    match server.store.get(&key, None).await? {
        (Some(kv), _) => Ok(json_body(&output.one(target.resource, decode(&kv)?))),
        (None, _) => Err(ApiError::from(Status::not_found(
            target.resource.group,
            target.resource.plural,
            name,
        ))),
    }
}

/// A continue token: the snapshot revision and the next key, `<revision>:<key>` in hex so that
/// it survives any URL encoding unchanged.
fn continue_token(revision: Revision, next_key: &str) -> String {
    format!("{revision}:{next_key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_continue(token: &str) -> Result<(Revision, String), ApiError> {
    let invalid = || {
        ApiError::from(Status::bad_request(format!(
            "invalid continue token {token:?}"
        )))
    };
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.split_once(':')
        .and_then(|(rev, key)| Some((rev.parse().ok()?, key.to_owned())))
        .ok_or_else(invalid)
}

/// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch` as Kubernetes
/// defines them: unset or "0" read the latest state; `Exact` reads at that revision (410 once
/// compacted); `NotOlderThan` (the default for a given version) reads the latest, which is at
/// least that. A version the store has not reached is a 504, as Kubernetes answers.
async fn list_revision(server: &ApiServer, query: &Query) -> Result<Option<Revision>, ApiError> {
    let version = query.get("resourceVersion").filter(|v| !v.is_empty());
    let version_match = query.get("resourceVersionMatch").filter(|v| !v.is_empty());
    if version.is_some() && query.get("continue").is_some_and(|c| !c.is_empty()) {
        return Err(bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    let Some(version) = version else {
        return match version_match {
            Some(_) => Err(bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )),
            None => Ok(None),
        };
    };
    let revision = parse_revision(version)?;
    let exact = match version_match {
        None | Some("NotOlderThan") => false,
        Some("Exact") if revision == 0 => {
            return Err(bad_request(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
        Some("Exact") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    };
    let current = server.store.current_revision().await?;
    if revision > current {
        return Err(ApiError::from(Status::new(
            flotilla_api::StatusReason::Timeout,
            format!("Too large resource version: {revision}, current: {current}"),
        )));
    }
    Ok(exact.then_some(revision))
}

async fn list(server: &ApiServer, target: &Target<'_>, query: &Query, output: Output) -> ApiResult {
    let labels = query.labels()?;
    let fields = query.fields(target.resource)?;
    let limit: usize = match query.get("limit") {
        Some(l) if !l.is_empty() => l
            .parse()
            .map_err(|_| ApiError::from(Status::bad_request(format!("invalid limit {l:?}"))))?,
        _ => 0,
    };
    let prefix = target.resource.prefix(target.namespace.as_deref());
    let mut request = RangeRequest::prefix(&prefix);
    if let Some(revision) = list_revision(server, query).await? {
        request = request.at(revision);
    }
    if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        let (revision, start) = parse_continue(token)?;
        if !start.starts_with(&prefix) {
            return Err(ApiError::from(Status::bad_request(
                "continue token does not belong to this list",
            )));
        }
        request = request.at(revision).start(start);
    }
    let mut items = Vec::new();
    let mut revision: Revision;
    let mut next = None;
    loop {
        let page_size = if limit == 0 {
            0
        } else {
            (limit - items.len()).max(1)
        };
        let page = server
            .store
            .range(request.clone().limit(page_size))
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } if query.get("continue").is_some() => {
                    ApiError::from(Status::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ))
                }
                other => other.into(),
            })?;
        revision = page.revision;
        for kv in &page.kvs {
            let object = decode(kv)?;
            if matches(&object, &labels, &fields) {
                let mut object = object;
                served_version(target.resource, &mut object);
                items.push(object);
            }
        }
        match page.continue_from() {
            Some(from) if limit > 0 && items.len() >= limit => {
                next = Some(continue_token(page.revision, &from));
                break;
            }
            Some(from) => request = request.at(page.revision).start(from),
            None => break,
        }
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
    }
    if let Some(include) = output.table {
        return Ok(json_body(&table::table(
            target.resource,
            &items,
            metadata,
            include,
        )));
    }
    Ok(json_body(&json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": metadata,
        "items": items,
    })))
}

fn parse_object(
    content_type: &str,
    body: &[u8],
    resource: &ResourceDef,
) -> Result<Value, ApiError> {
    let decoded = body::decode(content_type, body)?;
    admission::note_duplicates(decoded.duplicates);
    let object = decoded.value;
    if !object.is_object() {
        return Err(ApiError::from(Status::bad_request(
            "the request body must be a JSON object",
        )));
    }
    if let Some(kind) = object.get("kind").and_then(Value::as_str)
        && kind != resource.kind
    {
        return Err(ApiError::from(Status::bad_request(format!(
            "the kind {kind:?} does not match the resource {:?} (kind {:?})",
            resource.plural, resource.kind
        ))));
    }
    if let Some(api_version) = object.get("apiVersion").and_then(Value::as_str)
        && api_version != resource.api_version()
    {
        return Err(ApiError::from(Status::bad_request(format!(
            "the apiVersion {api_version:?} does not match {:?}",
            resource.api_version()
        ))));
    }
    Ok(object)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Letters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated_suffix() -> String {
    let random = uuid::Uuid::new_v4();
    random.as_bytes()[..5]
        .iter()
        .map(|b| NAME_SUFFIX_ALPHABET[*b as usize % NAME_SUFFIX_ALPHABET.len()] as char)
        .collect()
}

/// The namespace objects are created in must exist (404 otherwise): nothing is stored in a
/// namespace the store does not have. Refusing new objects in a terminating namespace is
/// policy, the built-in `namespace-lifecycle` admission policy's.
async fn check_namespace(server: &ApiServer, namespace: &str) -> Result<(), ApiError> {
    let namespaces = server
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::from(Status::internal("namespaces are not served")))?;
    match server
        .store
        .get(&namespaces.key(None, namespace), None)
        .await?
        .0
    {
        Some(_) => Ok(()),
        None => Err(ApiError::from(Status::not_found(
            "",
            "namespaces",
            namespace,
        ))),
    }
}

/// Stores a new object: the server's metadata set, the name validated, 409 if it exists.
async fn create_object(server: &ApiServer, target: &Target<'_>, mut object: Value) -> ApiResult {
    let resource = target.resource;
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let metadata = &mut object["metadata"];
    if let Some(namespace) = &target.namespace {
        match metadata["namespace"].as_str() {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::from(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                )));
            }
            _ => metadata["namespace"] = json!(namespace),
        }
    } else if let Some(map) = metadata.as_object_mut() {
        map.remove("namespace");
    }
    let name = match (metadata["name"].as_str(), metadata["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", generated_suffix()),
        _ => {
            return Err(ApiError::from(Status::invalid(
                resource.group,
                resource.kind,
                "",
                vec![StatusCause::required("metadata.name")],
            )));
        }
    };
    let problems = if resource.plural == "namespaces" {
        validation::dns1123_label(&name)
    } else {
        validation::dns1123_subdomain(&name)
    };
    if !problems.is_empty() {
        let causes = problems
            .iter()
            .map(|p| StatusCause::invalid("metadata.name", &json!(name), p))
            .collect();
        return Err(ApiError::from(Status::invalid(
            resource.group,
            resource.kind,
            &name,
            causes,
        )));
    }
    metadata["name"] = json!(name);
    metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
    if crd::is_definitions(resource) {
        // A definition goes only after its objects: the clean-up removes this.
        let mut finalizers = metadata["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !finalizers.contains(&json!(crd::CLEANUP_FINALIZER)) {
            finalizers.push(json!(crd::CLEANUP_FINALIZER));
        }
        metadata["finalizers"] = json!(finalizers);
    }
    if let Some(status) = initial_status(resource) {
        object["status"] = status;
    }
    if is_namespaces(resource) {
        // The namespace controller's finalizer, as Kubernetes' create strategy sets it.
        object["spec"]["finalizers"] = json!([delete::NAMESPACE_FINALIZER]);
    }
    let metadata = &mut object["metadata"];
    metadata["creationTimestamp"] = json!(now_rfc3339());
    metadata["generation"] = json!(1);
    if let Some(namespace) = &target.namespace {
        check_namespace(server, namespace).await?;
    }
    if is_services(resource) {
        services::keep_allocated(&mut object, None);
    }
    let request = admission::AdmissionRequest {
        operation: admission::Operation::Create,
        resource,
        subresource: None,
        namespace: target.namespace.as_deref(),
        name: &name,
        old_object: None,
        user: admission::user(),
        dry_run: admission::dry_run(),
        object_kind: None,
    };
    admit(server, &request, &mut object).await?;
    if !admission::applying() {
        apply::track(server, resource, None, &mut object, "");
    }
    let key = resource.key(target.namespace.as_deref(), &name);
    if request.dry_run {
        return Ok(json_response(StatusCode::CREATED, &object));
    }
    let reserved = allocate_addresses(server, resource, &mut object, None).await?;
    let created = match server.store.create(&key, encode(&object), None).await {
        Ok(TxnOutcome::Applied { kv: Some(kv), .. }) => decode(&kv),
        Ok(_) => Err(ApiError::from(Status::already_exists(
            resource.group,
            resource.plural,
            &name,
        ))),
        Err(error) => Err(error.into()),
    };
    settle(server, reserved, created.is_ok()).await;
    Ok(json_response(StatusCode::CREATED, &created?))
}

fn is_services(resource: &ResourceDef) -> bool {
    resource.group.is_empty() && resource.plural == "services"
}

/// Reserves a Service's ClusterIP and NodePorts before it is stored (nothing for other kinds).
async fn allocate_addresses(
    server: &ApiServer,
    resource: &ResourceDef,
    object: &mut Value,
    old: Option<&Value>,
) -> Result<Option<services::Reserved>, ApiError> {
    if !is_services(resource) {
        return Ok(None);
    }
    services::allocate(&server.store, &server.service_ranges, object, old)
        .await
        .map(Some)
}

/// Keeps the addresses a write reserved when it was stored, and frees them when it was not.
async fn settle(server: &ApiServer, reserved: Option<services::Reserved>, stored: bool) {
    match reserved {
        Some(reserved) if stored => reserved.keep(),
        Some(reserved) => reserved.release(&server.store).await,
        None => {}
    }
}

/// Fields the kind does not have are dropped, with a warning or (`fieldValidation=Strict`) a 400
/// naming them and any field the body gave twice.
fn check_fields(
    server: &ApiServer,
    resource: &ResourceDef,
    object: &mut Value,
) -> Result<(), ApiError> {
    let schemas = server.schemas();
    let Some(schema) = schemas.kind_schema(&resource.gvk()) else {
        return Ok(());
    };
    let problems: Vec<String> = admission::take_duplicates()
        .into_iter()
        .map(|field| format!("duplicate field {field:?}"))
        .chain(
            schemas
                .prune_unknown(schema, object)
                .into_iter()
                .map(|field| format!("unknown field {field:?}")),
        )
        .collect();
    match admission::field_validation() {
        _ if problems.is_empty() => Ok(()),
        admission::FieldValidation::Ignore => Ok(()),
        admission::FieldValidation::Warn => {
            problems.into_iter().for_each(admission::warn);
            Ok(())
        }
        admission::FieldValidation::Strict => Err(bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            problems.join(", "),
            kind = resource.kind,
            version = resource.version,
        ))),
    }
}

/// Defaulting, mutating admission, validation and validating admission, in Kubernetes' order.
async fn admit(
    server: &ApiServer,
    request: &admission::AdmissionRequest<'_>,
    object: &mut Value,
) -> Result<(), ApiError> {
    let resource = request.resource;
    check_fields(server, resource, object)?;
    flotilla_api::apply_defaults(resource.group, resource.kind, object);
    server.admission.mutate(request, object).await?;
    let mut causes =
        flotilla_api::validate(resource.group, resource.kind, object, request.old_object);
    if let Some(schema) = resource.custom.as_ref().and_then(|c| c.schema.as_ref()) {
        flotilla_api::apply_schema_defaults(schema, object);
        causes.extend(flotilla_api::validate_against(schema, object, ""));
    }
    if crd::is_definitions(resource) {
        causes.extend(crd::validate(object));
    }
    if !causes.is_empty() {
        return Err(ApiError::from(Status::invalid(
            resource.group,
            resource.kind,
            request.name,
            causes,
        )));
    }
    server.admission.validate(request, Some(object)).await
}

/// The stored object a write applies to, or 404.
async fn current_object(server: &ApiServer, target: &Target<'_>) -> Result<KeyValue, ApiError> {
    let resource = target.resource;
    let name = target.name.as_deref().unwrap_or_default();
    let key = resource.key(target.namespace.as_deref(), name);
    server
        .store
        .get(&key, None)
        .await?
        .0
        .ok_or_else(|| ApiError::from(Status::not_found(resource.group, resource.plural, name)))
}

/// Writes `object` over `current`: the server's own metadata is kept, generation follows spec
/// changes, a stale resourceVersion is a 409, and a write that changes nothing writes nothing.
async fn replace(
    server: &ApiServer,
    target: &Target<'_>,
    current: &KeyValue,
    mut object: Value,
) -> Result<Value, ApiError> {
    let resource = target.resource;
    let name = target.name.as_deref().unwrap_or_default();
    if object["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::from(Status::bad_request(
            "the name of the object does not match the name on the URL",
        )));
    }
    let existing = decode(current)?;
    let conflict = || ApiError::from(Status::conflict(resource.group, resource.plural, name));
    match object["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && rv != current.mod_revision.to_string() => {
            return Err(conflict());
        }
        _ => {}
    }
    if resource.has_status {
        if target.subresource.as_deref() == Some("status") {
            // A status write changes the status and nothing else.
            let status = object.get("status").cloned();
            object = existing.clone();
            set_or_remove(&mut object, "status", status);
        } else {
            // A write to the object leaves its status alone.
            set_or_remove(&mut object, "status", existing.get("status").cloned());
        }
    }
    if is_namespaces(resource) {
        // `spec.finalizers` changes through `namespaces/<name>/finalize` only, and that
        // changes nothing else.
        let finalizers = if target.subresource.as_deref() == Some("finalize") {
            let sent = object["spec"].get("finalizers").cloned();
            object = existing.clone();
            sent
        } else {
            existing["spec"].get("finalizers").cloned()
        };
        match finalizers {
            Some(finalizers) => object["spec"]["finalizers"] = finalizers,
            None => {
                if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
            }
        }
    }
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    for field in ["uid", "creationTimestamp", "namespace", "generation"] {
        match existing["metadata"].get(field) {
            Some(value) => object["metadata"][field] = value.clone(),
            None => {
                if let Some(map) = object["metadata"].as_object_mut() {
                    map.remove(field);
                }
            }
        }
    }
    if is_services(resource) && target.subresource.is_none() {
        services::keep_allocated(&mut object, Some(&existing));
    }
    let request = admission::AdmissionRequest {
        operation: admission::Operation::Update,
        resource,
        subresource: target.subresource.as_deref(),
        namespace: target.namespace.as_deref(),
        name,
        old_object: Some(&existing),
        user: admission::user(),
        dry_run: admission::dry_run(),
        object_kind: None,
    };
    admit(server, &request, &mut object).await?;
    if object.get("spec") != existing.get("spec") {
        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(1);
        object["metadata"]["generation"] = json!(generation + 1);
    }
    object["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
    if !admission::applying() {
        let subresource = target.subresource.as_deref().unwrap_or_default();
        apply::track(server, resource, Some(&existing), &mut object, subresource);
    }
    let completes_deletion = delete::guard_update(&existing, &mut object)?
        && (!is_namespaces(resource)
            || object["spec"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty));
    // A write that changes nothing is not a write: same resourceVersion, no watch event.
    if object == existing || request.dry_run {
        return Ok(object);
    }
    // The last finalizer of an object being deleted is gone: the object goes.
    if completes_deletion {
        return match server
            .store
            .delete(&current.key, Some(current.mod_revision))
            .await?
        {
            TxnOutcome::Applied { .. } => Ok(object),
            _ => Err(conflict()),
        };
    }
    let reserved = match target.subresource {
        None => allocate_addresses(server, resource, &mut object, Some(&existing)).await?,
        Some(_) => None,
    };
    let updated = match server
        .store
        .update(&current.key, encode(&object), current.mod_revision, None)
        .await
    {
        Ok(TxnOutcome::Applied { kv: Some(kv), .. }) => decode(&kv),
        Ok(_) => Err(conflict()),
        Err(error) => Err(error.into()),
    };
    settle(server, reserved, updated.is_ok()).await;
    updated
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<Value>) {
    match value {
        Some(value) => object[field] = value,
        None => {
            if let Some(map) = object.as_object_mut() {
                map.remove(field);
            }
        }
    }
}

fn is_namespaces(resource: &ResourceDef) -> bool {
    (resource.group, resource.plural) == ("", "namespaces")
}

/// The status an object starts with, whatever the client sent, as Kubernetes' create
/// strategies set it; `None` keeps what was sent (a node registers with its status).
fn initial_status(resource: &ResourceDef) -> Option<Value> {
    match (resource.group, resource.plural) {
        ("", "pods") => Some(json!({"phase": "Pending"})),
        ("", "services") => Some(json!({"loadBalancer": {}})),
        ("", "namespaces") => Some(json!({"phase": "Active"})),
        _ => None,
    }
}

/// What a write through a path sees and changes: the object itself, or (through `…/scale`) its
/// autoscaling/v1 Scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Object,
    Scale,
}

impl View {
    /// What `object` looks like through this view.
    fn of(self, resource: &ResourceDef, object: &Value) -> Result<Value, ApiError> {
        match self {
            View::Object => Ok(object.clone()),
            View::Scale => subresources::scale_of(resource, object),
        }
    }

    /// The group, version and kind of what the view shows.
    fn gvk(self, resource: &ResourceDef) -> flotilla_schema::Gvk {
        match self {
            View::Object => resource.gvk(),
            View::Scale => flotilla_schema::Gvk::new("autoscaling", "v1", "Scale"),
        }
    }

    /// `object` with `seen` (a changed view of it) written back.
    fn apply(self, resource: &ResourceDef, object: Value, seen: Value) -> Result<Value, ApiError> {
        match self {
            View::Object => Ok(seen),
            View::Scale => subresources::apply_scale(resource, object, &seen),
        }
    }
}

/// How many times a patch is re-applied to a fresher object when another write won the race.
const PATCH_ATTEMPTS: usize = 5;

async fn patch(
    server: &ApiServer,
    target: &Target<'_>,
    view: View,
    content_type: &str,
    body: Bytes,
) -> ApiResult {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type == apply::MEDIA_TYPE && view == View::Object {
        return apply::apply(server, target, &body).await;
    }
    let decoded = body::decode("application/json", &body)?;
    admission::note_duplicates(decoded.duplicates);
    let patch = decoded.value;
    let unsupported = |why: String| {
        ApiError::from(Status::new(
            flotilla_api::StatusReason::UnsupportedMediaType,
            why,
        ))
    };
    match media_type {
        "application/merge-patch+json"
        | "application/json-patch+json"
        | "application/strategic-merge-patch+json" => {}
        other => {
            return Err(unsupported(format!(
                "the media type {other:?} is not a supported patch type (application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json)"
            )));
        }
    }
    if target.resource.custom.is_some() && media_type == "application/strategic-merge-patch+json" {
        return Err(unsupported(
            "strategic merge patch is not supported for custom resources; use application/merge-patch+json or application/json-patch+json".into(),
        ));
    }
    let schemas = server.schemas();
    let schema = schemas.kind_schema(&view.gvk(target.resource));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = current_object(server, target).await?;
        let stored = decode(&current)?;
        let mut object = view.of(target.resource, &stored)?;
        let patched = match media_type {
            "application/json-patch+json" => flotilla_api::json_patch(&mut object, &patch),
            "application/strategic-merge-patch+json" => {
                flotilla_api::strategic_merge_patch(&mut object, &patch, schemas.as_ref(), schema)
            }
            _ => {
                flotilla_api::merge_patch(&mut object, &patch);
                Ok(())
            }
        };
        patched.map_err(|e| match e {
            flotilla_api::PatchError::Malformed(_) => {
                ApiError::from(Status::bad_request(e.to_string()))
            }
            flotilla_api::PatchError::DoesNotApply(_) => ApiError::from(Status::new(
                flotilla_api::StatusReason::Invalid,
                e.to_string(),
            )),
        })?;
        let object = view.apply(target.resource, stored, object)?;
        match replace(server, target, &current, object).await {
            Ok(object) => return Ok(json_body(&view.of(target.resource, &object)?)),
            // Lost a race with another writer: patch the newer object, unless the patch itself
            // named the resourceVersion it expects.
            Err(e)
                if e.0.reason == flotilla_api::StatusReason::Conflict
                    && patch["metadata"]["resourceVersion"].is_null()
                    && attempt < PATCH_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// Deletes every object of a collection that the selectors match; answers with the deleted
/// objects. Objects changed or deleted meanwhile by someone else are left to them.
async fn delete_collection(
    server: &ApiServer,
    target: &Target<'_>,
    query: &Query,
    body: Bytes,
) -> ApiResult {
    let options = delete::DeleteOptions::parse(query, &body)?;
    let labels = query.labels()?;
    let fields = query.fields(target.resource)?;
    let prefix = target.resource.prefix(target.namespace.as_deref());
    let page = server.store.range(RangeRequest::prefix(&prefix)).await?;
    let mut deleted = Vec::new();
    for kv in &page.kvs {
        let object = decode(kv)?;
        if !matches(&object, &labels, &fields) {
            continue;
        }
        match delete::delete_key(server, target.resource, &kv.key, &options).await {
            Ok(object) => deleted.push(object),
            // Deleted meanwhile by someone else.
            Err(e) if e.0.reason == flotilla_api::StatusReason::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_body(&json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": {"resourceVersion": server.store.current_revision().await?.to_string()},
        "items": deleted,
    })))
}

async fn watch(
    server: &ApiServer,
    target: &Target<'_>,
    query: &Query,
    output: Output,
) -> ApiResult {
    let resource = target.resource;
    let labels = query.labels()?;
    let fields = query.fields(resource)?;
    let prefix = resource.prefix(target.namespace.as_deref());
    let timeout = match query.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::from(Status::bad_request(format!("invalid timeoutSeconds {t:?}")))
        })?)),
        None => None,
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = match query.get("sendInitialEvents").filter(|v| !v.is_empty()) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(bad_request(format!("invalid sendInitialEvents {other:?}")));
        }
    };
    let version_match = query.get("resourceVersionMatch").filter(|v| !v.is_empty());
    match (send_initial, version_match) {
        (Some(_), Some("NotOlderThan")) | (None, None) => {}
        (Some(_), _) => {
            return Err(bad_request(
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is NotOlderThan",
            ));
        }
        (None, Some(_)) => {
            return Err(bad_request(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(bad_request(
            "allowWatchBookmarks must be true when sendInitialEvents is set",
        ));
    }
    let version = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty())
        .map(parse_revision)
        .transpose()?;
    // The current objects come first as ADDED when asked for, or (the older protocol) when no
    // resourceVersion or "0" is given.
    let initial_wanted = send_initial.unwrap_or(matches!(version, None | Some(0)));
    server.watches.prepare(resource).await?;
    let mut initial = Vec::new();
    let (from, initial_events_end) = if initial_wanted {
        let page = server.store.range(RangeRequest::prefix(&prefix)).await?;
        for kv in &page.kvs {
            let object = decode(kv)?;
            if matches(&object, &labels, &fields) {
                initial.push(watch::watch_line("ADDED", &output.one(resource, object)));
            }
        }
        let end = (send_initial == Some(true)).then_some(page.revision);
        (page.revision + 1, end)
    } else {
        let from = match version {
            Some(version) if version > 0 => version,
            _ => server.store.current_revision().await?,
        };
        (from + 1, None)
    };
    let lines = server
        .watches
        .watch(watch::WatchSpec {
            resource: resource.clone(),
            prefix,
            labels,
            fields,
            output,
            from,
            initial,
            initial_events_end,
            bookmarks,
            timeout,
        })
        .await?;
    Ok(streaming(lines))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::from(Status::bad_request(message))
}

fn parse_revision(text: &str) -> Result<Revision, ApiError> {
    text.parse()
        .map_err(|_| bad_request(format!("invalid resourceVersion {text:?}")))
}

fn streaming(lines: futures::stream::BoxStream<'static, Bytes>) -> Response {
    let body = Body::from_stream(lines.map(Ok::<_, std::convert::Infallible>));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_kubectl_sends_them() {
        assert_eq!(parse_go_duration("32s"), Some(Duration::from_secs(32)));
        assert_eq!(parse_go_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("10x"), None);
    }
}
