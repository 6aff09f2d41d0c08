//! Proxy strategies: the services and endpoints the node's proxy balances over, the
//! [`ProxyStrategy`] trait that picks one endpoint per connection (L4) or request (L7), and the
//! proxy's live load figures ([`active`]).

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The proxy's name for the endpoint, stable while it exists.
    pub id: u32,
    pub ip: String,
    pub port: u16,
    pub node: Option<String>,
    pub zone: Option<String>,
    /// Ready and serving per the EndpointSlice.
    pub ready: bool,
    pub terminating: bool,
}

/// One service port with its endpoints, sent whole whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name:port-name`.
    pub key: String,
    pub endpoints: Vec<Endpoint>,
    /// The Service's annotations (strategies read their settings from them).
    pub annotations: Vec<(String, String)>,
    /// `spec.sessionAffinity: ClientIP` with its timeout in seconds.
    pub client_ip_affinity_seconds: Option<u32>,
}

impl Service {
    /// The value of an annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The request being routed, at L7.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the proxy asks for one connection or request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickRequest {
    /// The service's key.
    pub service: String,
    pub client_ip: String,
    pub client_port: u16,
    /// Present at L7.
    pub http: Option<HttpRequest>,
    /// Endpoints already tried for this connection or request (a failed connect retries).
    pub exclude: Vec<u32>,
}

/// A load-balancing strategy. One value lives in the plugin's instance.
///
/// The proxy calls a strategy directly on the thread serving the connection, without a fiber,
/// so its calls may not wait: sleeping, or blocking on a WASI pollable that is not ready,
/// traps (the pick fails, the proxy falls back to its round-robin and loads a fresh
/// instance). Writing to stderr and reading [`active`] never wait. A call that computes past
/// its deadline (`spec.limits`, 100 ms by default) is stopped.
pub trait ProxyStrategy: Sized + 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    /// Whether [`pick`](Self::pick) reads [`PickRequest::http`]. A strategy that routes without
    /// the HTTP request sets it false: the proxy then leaves it out (`None` at L7 as at L4) and
    /// spares every request copying its method, authority, path and headers into the instance.
    const READS_HTTP: bool = true;

    /// Builds the strategy from the plugin's configuration (JSON). An error fails its
    /// self-check.
    fn new(config: &str) -> Result<Self, String>;

    /// A service appeared or changed.
    fn update(&mut self, service: Service);

    /// A service went away.
    fn remove(&mut self, key: &str);

    /// The endpoint for a connection or request, or none when no endpoint fits.
    fn pick(&mut self, request: &PickRequest) -> Option<u32>;
}

/// The single strategy value of a component. Implemented by
/// [`export_proxy_strategy!`](crate::export_proxy_strategy).
#[doc(hidden)]
pub trait Singleton: ProxyStrategy {
    fn with<R>(f: impl FnOnce(&mut Result<Self, String>) -> R) -> R;
}

/// Active connections (L4) or requests in flight (L7) per endpoint of a service, in the order
/// of `ids`. Outside a component no traffic is known: all zero.
pub fn active(service: &str, ids: &[u32]) -> Vec<u32> {
    #[cfg(all(target_arch = "wasm32", feature = "proxy"))]
    {
        crate::imports::endpoint_load::active(service, ids)
    }
    #[cfg(not(all(target_arch = "wasm32", feature = "proxy")))]
    {
        let _ = service;
        vec![0; ids.len()]
    }
}

/// Exports a [`ProxyStrategy`] as the component's `proxy-strategy` world.
#[macro_export]
macro_rules! export_proxy_strategy {
    ($strategy:ty) => {
        $crate::__export_singleton!(
            $strategy,
            $crate::proxy::Singleton,
            $crate::proxy::ProxyStrategy
        );
        #[cfg(target_arch = "wasm32")]
        type __FlotillaProxyStrategy = $crate::proxy::Adapter<$strategy>;
        #[cfg(target_arch = "wasm32")]
        $crate::__bindings::proxy::__export_proxy_strategy!(
            __FlotillaProxyStrategy with_types_in $crate::__bindings::proxy
        );
    };
}

#[cfg(all(target_arch = "wasm32", feature = "proxy"))]
pub use adapter::Adapter;

/// The generated records as the SDK's types, and the generated `Guest` traits over any
/// [`Singleton`].
#[cfg(all(target_arch = "wasm32", feature = "proxy"))]
mod adapter {
    use super::*;
    use crate::__bindings::proxy::exports::flotilla::plugin::{
        meta, strategy as wit, strategy_inputs,
    };
    use crate::imports::balancing;

    #[doc(hidden)]
    pub struct Adapter<S>(std::marker::PhantomData<S>);

    impl<S> std::fmt::Debug for Adapter<S> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Adapter")
        }
    }

    fn service(s: balancing::Service) -> Service {
        Service {
            key: s.key,
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| Endpoint {
                    id: e.id,
                    ip: e.ip,
                    port: e.port,
                    node: e.node,
                    zone: e.zone,
                    ready: e.ready,
                    terminating: e.terminating,
                })
                .collect(),
            annotations: s.annotations,
            client_ip_affinity_seconds: s.client_ip_affinity_seconds,
        }
    }

    fn pick_request(r: balancing::PickRequest) -> PickRequest {
        PickRequest {
            service: r.service,
            client_ip: r.client_ip,
            client_port: r.client_port,
            http: r.http.map(|h| HttpRequest {
                method: h.method,
                authority: h.authority,
                path: h.path,
                headers: h.headers,
            }),
            exclude: r.exclude,
        }
    }

    impl<S: Singleton> meta::Guest for Adapter<S> {
        fn info() -> meta::PluginInfo {
            meta::PluginInfo {
                name: S::NAME.to_owned(),
                version: S::VERSION.to_owned(),
                wit_version: crate::WIT_VERSION.to_owned(),
            }
        }

        fn self_check() -> Result<(), String> {
            S::with(|strategy| strategy.as_ref().map(|_| ()).map_err(Clone::clone))
        }
    }

    impl<S: Singleton> strategy_inputs::Guest for Adapter<S> {
        fn reads_http() -> bool {
            S::READS_HTTP
        }
    }

    impl<S: Singleton> wit::Guest for Adapter<S> {
        fn update(s: wit::Service) {
            S::with(|strategy| {
                if let Ok(strategy) = strategy {
                    strategy.update(service(s));
                }
            })
        }

        fn remove(key: String) {
            S::with(|strategy| {
                if let Ok(strategy) = strategy {
                    strategy.remove(&key);
                }
            })
        }

        fn pick(request: wit::PickRequest) -> Option<u32> {
            S::with(|strategy| match strategy {
                Ok(strategy) => strategy.pick(&pick_request(request)),
                Err(_) => None,
            })
        }
    }
}
