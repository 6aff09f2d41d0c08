//! Ingress (networking.k8s.io/v1) for the IngressClass `flotilla`: an HTTP and an HTTPS entry
//! on each node. Requests are routed by host (exact, then `*.` wildcard, then any) and path
//! (Exact, then the longest Prefix, matched by path element) to a Service port, or to a default
//! backend; HTTPS certificates come from `kubernetes.io/tls` Secrets, chosen by SNI.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::balance::{Backend, Client, Shared};
use crate::pool::ProxyBody;

/// The IngressClass Flotilla's proxies serve.
pub const CLASS: &str = "flotilla";
/// Its `spec.controller`.
pub const CONTROLLER: &str = "flotilla.dev/ingress-proxy";
/// The annotation that makes an IngressClass the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Where a rule sends requests: a Service port by number or name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`: one label before `.example.com`.
    Wildcard(String),
    Any,
}

impl HostMatch {
    fn parse(host: Option<&str>) -> Self {
        match host.map(str::to_ascii_lowercase) {
            None => Self::Any,
            Some(host) if host.is_empty() => Self::Any,
            Some(host) => match host.strip_prefix('*') {
                Some(suffix) => Self::Wildcard(suffix.to_owned()),
                None => Self::Exact(host),
            },
        }
    }

    /// How well the host matches: exact 2, wildcard 1, any 0; none when it does not.
    fn rank(&self, host: &str) -> Option<u8> {
        match self {
            Self::Exact(exact) => (exact == host).then_some(2),
            Self::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .filter(|label| !label.is_empty() && !label.contains('.'))
                .map(|_| 1),
            Self::Any => Some(0),
        }
    }
}

#[derive(Clone, Debug)]
struct PathRule {
    path: String,
    exact: bool,
    target: Target,
}

/// A rule's backend, resolved to the port serving it now (none: no such Service or port).
#[derive(Clone, Debug)]
struct Target {
    name: String,
    backend: Option<Arc<Backend>>,
}

/// Whether `path` falls under the prefix `prefix`, element by element (`/foo` holds `/foo`,
/// `/foo/` and `/foo/bar`, not `/foobar`).
fn under_prefix(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Every served Ingress's rules, merged, with their backends resolved.
#[derive(Debug, Default)]
pub struct Routes {
    rules: Vec<(HostMatch, Vec<PathRule>)>,
    default: Option<Target>,
    /// TLS hosts and wildcard suffixes to certificates, and the one for clients without SNI.
    certs: HashMap<String, Arc<CertifiedKey>>,
    fallback_cert: Option<Arc<CertifiedKey>>,
}

/// What routing a request found.
#[derive(Debug)]
pub enum Route {
    To(Arc<Backend>),
    /// A rule matched, but its Service (or port) is not there.
    Missing(String),
    NoRule,
}

impl Routes {
    /// The backend for a request to `host` (without port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Route {
        let host = host.to_ascii_lowercase();
        let mut best: Option<(u8, bool, usize, &Target)> = None;
        for (matcher, paths) in &self.rules {
            let Some(rank) = matcher.rank(&host) else {
                continue;
            };
            for rule in paths {
                let fits = if rule.exact {
                    rule.path == path
                } else {
                    under_prefix(&rule.path, path)
                };
                if !fits {
                    continue;
                }
                let key = (rank, rule.exact, rule.path.trim_end_matches('/').len());
                if best.is_none_or(|(r, e, l, _)| key > (r, e, l)) {
                    best = Some((key.0, key.1, key.2, &rule.target));
                }
            }
        }
        match best
            .map(|(_, _, _, target)| target)
            .or(self.default.as_ref())
        {
            Some(Target {
                backend: Some(backend),
                ..
            }) => Route::To(backend.clone()),
            Some(target) => Route::Missing(target.name.clone()),
            None => Route::NoRule,
        }
    }

    fn cert_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.fallback_cert.clone();
        };
        if let Some(cert) = self.certs.get(&name) {
            return Some(cert.clone());
        }
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        wildcard
            .and_then(|w| self.certs.get(&w).cloned())
            .or_else(|| self.fallback_cert.clone())
    }
}

/// The Ingresses' inputs as the control loop keeps them.
#[derive(Debug, Default)]
pub struct Objects {
    pub ingresses: HashMap<String, Ingress>,
    pub classes: HashMap<String, IngressClass>,
    /// TLS Secrets by `namespace/name`: their certified keys, or why they cannot be used.
    pub secrets: HashMap<String, Result<Arc<CertifiedKey>, String>>,
}

/// The certified key of a `kubernetes.io/tls` Secret.
pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    let data = secret.data.clone().unwrap_or_default();
    let cert = data.get("tls.crt").ok_or("it has no tls.crt")?;
    let key = data.get("tls.key").ok_or("it has no tls.key")?;
    let chain = CertificateDer::pem_slice_iter(&cert.0)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key.0).map_err(|e| format!("tls.key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl Objects {
    /// Whether an Ingress is this proxy's: its class is `flotilla`, or it names none and
    /// `flotilla` is the default class (it is, unless another class is marked default).
    fn served(&self, ingress: &Ingress) -> bool {
        let named = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.clone())
            .or_else(|| {
                ingress
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/ingress.class").cloned())
            });
        match named {
            Some(class) => class == CLASS,
            None => {
                let is_default = |c: &IngressClass| {
                    c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                        .is_some_and(|v| v == "true")
                };
                let ours = self.classes.get(CLASS);
                let other_default = self
                    .classes
                    .iter()
                    .any(|(name, class)| name != CLASS && is_default(class));
                ours.is_none_or(is_default) && !other_default
            }
        }
    }

    /// The routes of every served Ingress, with backends resolved through `services`
    /// (`namespace/name` → Service) and `backend_of` (port key → backend).
    pub fn routes(
        &self,
        services: &HashMap<String, Service>,
        backend_of: impl Fn(&str) -> Option<Arc<Backend>>,
    ) -> Routes {
        let mut routes = Routes::default();
        let mut ingresses: Vec<&Ingress> =
            self.ingresses.values().filter(|i| self.served(i)).collect();
        // The oldest Ingress wins ties, as in ingress-nginx.
        ingresses.sort_by_key(|i| {
            (
                i.metadata.creation_timestamp.clone().map(|t| t.0),
                i.metadata.name.clone(),
            )
        });
        let resolve = |namespace: &str, backend: &IngressBackend| -> Option<Target> {
            let service = backend.service.as_ref()?;
            let port = service.port.as_ref()?;
            let port = match (&port.name, port.number) {
                (Some(name), _) if !name.is_empty() => PortRef::Name(name.clone()),
                (_, Some(number)) => PortRef::Number(number),
                _ => return None,
            };
            let name = format!("{namespace}/{}", service.name);
            let key = services.get(&name).and_then(|object| {
                let ports = object.spec.as_ref()?.ports.as_ref()?;
                let found = ports.iter().find(|p| match &port {
                    PortRef::Number(n) => p.port == *n,
                    PortRef::Name(n) => p.name.as_deref() == Some(n),
                })?;
                Some(match found.name.as_deref().filter(|n| !n.is_empty()) {
                    Some(port_name) => format!("{name}:{port_name}"),
                    None => format!("{name}:{}", found.port),
                })
            });
            Some(Target {
                backend: key.and_then(|k| backend_of(&k)),
                name,
            })
        };
        for ingress in ingresses {
            let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
            let Some(spec) = &ingress.spec else {
                continue;
            };
            if routes.default.is_none()
                && let Some(default) = &spec.default_backend
            {
                routes.default = resolve(&namespace, default);
            }
            for rule in spec.rules.iter().flatten() {
                let matcher = HostMatch::parse(rule.host.as_deref());
                let paths: Vec<PathRule> = rule
                    .http
                    .iter()
                    .flat_map(|h| &h.paths)
                    .filter_map(|p| {
                        Some(PathRule {
                            path: p.path.clone().unwrap_or_else(|| "/".into()),
                            exact: p.path_type == "Exact",
                            target: resolve(&namespace, &p.backend)?,
                        })
                    })
                    .collect();
                routes.rules.push((matcher, paths));
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = &tls.secret_name else {
                    continue;
                };
                let Some(Ok(cert)) = self.secrets.get(&format!("{namespace}/{secret}")) else {
                    continue;
                };
                for host in tls.hosts.iter().flatten() {
                    routes
                        .certs
                        .entry(host.to_ascii_lowercase())
                        .or_insert_with(|| cert.clone());
                }
                if routes.fallback_cert.is_none() {
                    routes.fallback_cert = Some(cert.clone());
                }
            }
        }
        routes
    }
}

/// The routes the Ingress listeners read, replaced whole.
#[derive(Debug, Default)]
pub struct Table(RwLock<Arc<Routes>>);

impl Table {
    pub fn current(&self) -> Arc<Routes> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, routes: Routes) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }
}

/// Picks the certificate by SNI from the current routes.
#[derive(Debug)]
struct Certificates(Arc<Shared>);

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.ingress.current().cert_for(hello.server_name())
    }
}

async fn route(
    request: Request<hyper::body::Incoming>,
    client: Arc<Client>,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    shared
        .stats
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned))
        .unwrap_or_default();
    // The port is not part of the match.
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => host,
    };
    let routes = shared.ingress.current();
    match routes.route(&host, request.uri().path()) {
        Route::To(backend) => crate::forward::forward(request, &client, &backend, &shared).await,
        Route::Missing(service) => crate::forward::local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the service {service} (or its port) does not exist\n"),
        ),
        Route::NoRule => crate::forward::local(
            StatusCode::NOT_FOUND,
            format!("no Ingress rule matches {host}{}\n", request.uri().path()),
        ),
    }
}

/// Serves the HTTP entry (`tls` none) or the HTTPS one on `listener` until `stop`.
pub fn serve(listener: TcpListener, tls: bool, shared: Arc<Shared>, stop: CancellationToken) {
    let acceptor = tls.then(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Certificates(shared.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    crate::forward::accept(listener, stop, move |stream, client| {
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        async move {
            let client = Arc::new(Client::new(client));
            let handle = move |request| route(request, client.clone(), shared.clone());
            match acceptor {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        crate::forward::serve_http1(stream, handle).await;
                    }
                }
                None => crate::forward::serve_http1(stream, handle).await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backend(key: &str) -> Arc<Backend> {
        Arc::new(Backend::new(key.into(), true, None, Vec::new()))
    }

    fn service(name: &str, ports: serde_json::Value) -> (String, Service) {
        (
            format!("shop/{name}"),
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"},
                "spec": {"ports": ports}}))
            .unwrap(),
        )
    }

    fn key(route: Route) -> String {
        match route {
            Route::To(backend) => backend.key.clone(),
            Route::Missing(name) => format!("missing {name}"),
            Route::NoRule => "none".into(),
        }
    }

    #[test]
    fn requests_route_by_host_then_exact_then_longest_prefix() {
        let services: HashMap<String, Service> = [
            service("web", json!([{"name": "http", "port": 80}])),
            service("api", json!([{"port": 8080}])),
            service("docs", json!([{"name": "http", "port": 80}])),
        ]
        .into();
        let ports: HashMap<String, Arc<Backend>> =
            ["shop/web:http", "shop/api:8080", "shop/docs:http"]
                .iter()
                .map(|k| (k.to_string(), backend(k)))
                .collect();
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {
                "ingressClassName": "flotilla",
                "defaultBackend": {"service": {"name": "docs", "port": {"name": "http"}}},
                "rules": [
                    {"host": "shop.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                        {"path": "/api", "pathType": "Prefix",
                            "backend": {"service": {"name": "api", "port": {"number": 8080}}}},
                        {"path": "/api/v1", "pathType": "Exact",
                            "backend": {"service": {"name": "docs", "port": {"name": "http"}}}},
                        {"path": "/gone", "pathType": "Prefix",
                            "backend": {"service": {"name": "gone", "port": {"number": 80}}}},
                    ]}},
                    {"host": "*.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                            "backend": {"service": {"name": "api", "port": {"number": 8080}}}},
                    ]}},
                ]
            }
        }))
        .unwrap();
        let mut objects = Objects::default();
        objects
            .ingresses
            .insert("shop/shop".into(), ingress.clone());
        let routes = objects.routes(&services, |key| ports.get(key).cloned());
        let at = |host: &str, path: &str| key(routes.route(host, path));
        assert_eq!(at("shop.example", "/"), "shop/web:http");
        assert_eq!(at("SHOP.example", "/cart"), "shop/web:http");
        assert_eq!(at("shop.example", "/api"), "shop/api:8080");
        assert_eq!(at("shop.example", "/api/"), "shop/api:8080");
        assert_eq!(at("shop.example", "/api/v2"), "shop/api:8080");
        assert_eq!(at("shop.example", "/apiary"), "shop/web:http", "by element");
        assert_eq!(
            at("shop.example", "/api/v1"),
            "shop/docs:http",
            "exact wins"
        );
        assert_eq!(at("shop.example", "/gone/x"), "missing shop/gone");
        assert_eq!(at("blog.example", "/x"), "shop/api:8080", "wildcard");
        assert_eq!(
            at("a.b.example", "/x"),
            "shop/docs:http",
            "one label only: default"
        );
        assert_eq!(at("other.test", "/"), "shop/docs:http", "default backend");

        // Another class's Ingress is not served; one without a class is while flotilla is
        // the default.
        let mut other = ingress.clone();
        other.spec.as_mut().unwrap().ingress_class_name = Some("nginx".into());
        assert!(!objects.served(&other));
        other.spec.as_mut().unwrap().ingress_class_name = None;
        assert!(objects.served(&other));
        let nginx: IngressClass = serde_json::from_value(json!({"metadata": {"name": "nginx",
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}, "spec": {}}))
        .unwrap();
        objects.classes.insert("nginx".into(), nginx);
        assert!(!objects.served(&other));
    }

    #[test]
    fn prefixes_match_whole_path_elements() {
        assert!(under_prefix("/", "/anything"));
        assert!(under_prefix("/foo/", "/foo"));
        assert!(under_prefix("/foo", "/foo/bar"));
        assert!(!under_prefix("/foo", "/foobar"));
    }
}
