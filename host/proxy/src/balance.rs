//! The data path's view of the services: which backend serves each frontend address, the
//! endpoints behind it with their live counts, and the pick, by the native round-robin or by
//! the Service's strategy plugin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use flotilla_plugin::bindings::balancing::{HttpRequest, PickRequest};
use flotilla_plugin::{EndpointLoad, ProxyStrategy, Swap};
use tokio::sync::{Mutex, mpsc};

use crate::pool::Pool;

/// One endpoint (`ip:port`), shared by every service port that routes to it.
#[derive(Debug)]
pub struct Endpoint {
    /// The id strategies know it by: stable while any service port routes to it.
    pub id: u32,
    pub addr: SocketAddr,
    /// Connections (L4) or requests in flight (L7) now.
    pub active: AtomicU32,
}

/// Counts one connection or request on an endpoint until dropped.
#[derive(Debug)]
pub struct Active(Arc<Endpoint>);

impl Active {
    pub fn on(endpoint: Arc<Endpoint>) -> Self {
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What serves one service port now. Replaced whole when the Service or its endpoints change;
/// connections and requests take the backend current when they arrive.
#[derive(Debug)]
pub struct Backend {
    pub key: String,
    pub l7: bool,
    /// The WasmPlugin that picks; none for the native round-robin.
    pub strategy: Option<String>,
    /// Where new traffic may go: the ready endpoints or, while none is ready, the serving ones
    /// that are terminating (as Kubernetes' proxies fall back).
    pub targets: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl Backend {
    pub fn new(
        key: String,
        l7: bool,
        strategy: Option<String>,
        targets: Vec<Arc<Endpoint>>,
    ) -> Self {
        Self {
            key,
            l7,
            strategy,
            targets,
            next: AtomicUsize::new(0),
        }
    }

    /// The next target in turn that is not excluded.
    pub fn round_robin(&self, exclude: &[u32]) -> Option<Arc<Endpoint>> {
        let count = self.targets.len();
        for _ in 0..count {
            let target = &self.targets[self.next.fetch_add(1, Ordering::Relaxed) % count];
            if !exclude.contains(&target.id) {
                return Some(target.clone());
            }
        }
        None
    }

    fn target(&self, id: u32) -> Option<Arc<Endpoint>> {
        self.targets.iter().find(|t| t.id == id).cloned()
    }
}

/// A live strategy instance and what it reads of a pick.
#[derive(Debug)]
pub struct Live {
    /// Whether picks carry the HTTP request: the strategy's own answer (`strategy-inputs`),
    /// yes for one built against an earlier 0.1.x.
    pub reads_http: bool,
    pub instance: Mutex<ProxyStrategy>,
}

impl Live {
    /// Puts an instance in service, asking it once what it reads of a pick.
    pub fn new(mut instance: ProxyStrategy) -> Result<Self, flotilla_plugin::PluginError> {
        Ok(Self {
            reads_http: instance.reads_http()?,
            instance: Mutex::new(instance),
        })
    }
}

/// A strategy's live instance; swapped whole, so picks in flight finish on the instance they
/// started with.
pub type Strategy = Swap<Live>;

/// Who a connection comes from: its address, and its IP as strategies read it, rendered once
/// per connection rather than once per pick.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    ip: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            ip: addr.ip().to_string(),
        }
    }
}

/// An HTTP request as a strategy sees it.
#[derive(Debug)]
pub struct HttpView<'a> {
    pub method: &'a hyper::Method,
    pub uri: &'a hyper::Uri,
    pub headers: &'a hyper::HeaderMap,
}

impl HttpView<'_> {
    fn record(&self) -> HttpRequest {
        let authority = self
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| self.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        HttpRequest {
            method: self.method.as_str().to_owned(),
            authority,
            path: match self.uri.path_and_query().map(|p| p.as_str()) {
                Some(path) if !path.is_empty() => path.to_owned(),
                _ => "/".to_owned(),
            },
            headers: self
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
        }
    }
}

/// Counters of the data path.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Picks a strategy could not make (missing, failing or naming an endpoint it may not use)
    /// that the round-robin made instead.
    pub fallbacks: AtomicU64,
    /// Connections and requests that found no endpoint to go to.
    pub unrouted: AtomicU64,
}

/// The state the listeners share with the control loop.
#[derive(Debug)]
pub struct Shared {
    frontends: RwLock<HashMap<SocketAddr, Arc<Backend>>>,
    strategies: RwLock<HashMap<String, Arc<Strategy>>>,
    endpoints: RwLock<HashMap<u32, Arc<Endpoint>>>,
    pub pool: Pool,
    pub stats: Stats,
    pub names: Arc<crate::dns::Names>,
    /// The Ingress routes.
    pub ingress: crate::ingress::Table,
    /// Strategy failures seen on the data path, for the control loop to record.
    failures: mpsc::UnboundedSender<(String, String)>,
}

impl Shared {
    pub fn new(failures: mpsc::UnboundedSender<(String, String)>) -> Self {
        Self {
            frontends: RwLock::default(),
            strategies: RwLock::default(),
            endpoints: RwLock::default(),
            pool: Pool::default(),
            stats: Stats::default(),
            names: Arc::default(),
            ingress: crate::ingress::Table::default(),
            failures,
        }
    }

    /// The backend of a frontend address, if it still has one.
    pub fn backend(&self, frontend: SocketAddr) -> Option<Arc<Backend>> {
        read(&self.frontends).get(&frontend).cloned()
    }

    pub fn set_frontends(&self, frontends: HashMap<SocketAddr, Arc<Backend>>) {
        *write(&self.frontends) = frontends;
    }

    pub fn strategy(&self, name: &str) -> Option<Arc<Strategy>> {
        read(&self.strategies).get(name).cloned()
    }

    pub fn set_strategy(&self, name: &str, strategy: Option<Arc<Strategy>>) {
        let mut strategies = write(&self.strategies);
        match strategy {
            Some(strategy) => strategies.insert(name.to_owned(), strategy),
            None => strategies.remove(name),
        };
    }

    pub fn add_endpoint(&self, endpoint: Arc<Endpoint>) {
        write(&self.endpoints).insert(endpoint.id, endpoint);
    }

    pub fn remove_endpoint(&self, id: u32) {
        write(&self.endpoints).remove(&id);
        self.pool.forget(id);
    }

    /// The endpoint for one connection or request: the strategy's pick when the backend has a
    /// live one that names an endpoint it may use, else the round-robin's.
    pub async fn pick(
        &self,
        backend: &Backend,
        client: &Client,
        http: Option<&HttpView<'_>>,
        exclude: &[u32],
    ) -> Option<Arc<Endpoint>> {
        if backend.targets.is_empty() {
            return None;
        }
        if let Some(name) = &backend.strategy {
            match self
                .strategy_pick(name, backend, client, http, exclude)
                .await
            {
                Ok(Some(id)) => {
                    if let Some(target) = backend.target(id).filter(|_| !exclude.contains(&id)) {
                        return Some(target);
                    }
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                // The strategy found nothing it would use: honour that.
                Ok(None) => return None,
                Err(()) => {
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        backend.round_robin(exclude)
    }

    async fn strategy_pick(
        &self,
        name: &str,
        backend: &Backend,
        client: &Client,
        http: Option<&HttpView<'_>>,
        exclude: &[u32],
    ) -> Result<Option<u32>, ()> {
        let Some(strategy) = self.strategy(name) else {
            return Err(());
        };
        let live = strategy.current();
        let request = PickRequest {
            service: backend.key.clone(),
            client_ip: client.ip.clone(),
            client_port: client.addr.port(),
            // Lowering the request line and headers into the instance costs every request:
            // only for strategies that read them.
            http: http.filter(|_| live.reads_http).map(HttpView::record),
            exclude: exclude.to_vec(),
        };
        let mut instance = live.instance.lock().await;
        match instance.pick(&request) {
            Ok(pick) => Ok(pick),
            Err(error) => {
                let _ = self.failures.send((name.to_owned(), error.to_string()));
                Err(())
            }
        }
    }
}

/// The live counts, as strategies read them through `endpoint-load`.
#[derive(Debug)]
pub struct Load(pub Arc<Shared>);

impl EndpointLoad for Load {
    fn active(&self, _service: &str, ids: &[u32]) -> Vec<u32> {
        let endpoints = read(&self.0.endpoints);
        ids.iter()
            .map(|id| {
                endpoints
                    .get(id)
                    .map_or(0, |e| e.active.load(Ordering::Relaxed))
            })
            .collect()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: u32) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            id,
            addr: format!("127.1.0.{id}:80").parse().unwrap(),
            active: AtomicU32::new(0),
        })
    }

    #[test]
    fn the_round_robin_takes_turns_and_skips_what_failed() {
        let backend = Backend::new(
            "ns/a:80".into(),
            false,
            None,
            vec![endpoint(1), endpoint(2), endpoint(3)],
        );
        let ids: Vec<u32> = (0..6)
            .map(|_| backend.round_robin(&[]).unwrap().id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 1, 2, 3]);
        assert_eq!(backend.round_robin(&[1, 2]).unwrap().id, 3);
        assert!(backend.round_robin(&[1, 2, 3]).is_none());
    }

    fn view(request: &hyper::Request<()>) -> HttpView<'_> {
        HttpView {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }

    #[test]
    fn a_strategy_sees_the_request_line_the_host_and_the_headers() {
        let request = hyper::Request::post("http://fallback.example/cart/items?id=7")
            .header("host", "shop.example:8080")
            .header("x-canary", "yes")
            .body(())
            .unwrap();
        let seen = view(&request).record();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.authority, "shop.example:8080", "the Host header wins");
        assert_eq!(
            seen.path, "/cart/items?id=7",
            "the query is part of the path"
        );
        assert!(seen.headers.contains(&("x-canary".into(), "yes".into())));

        // Without a Host header the URI's authority stands in; an origin-form URI's path is
        // `/` at least.
        let bare = hyper::Request::get("http://fallback.example")
            .body(())
            .unwrap();
        let seen = view(&bare).record();
        assert_eq!(seen.authority, "fallback.example");
        assert_eq!(seen.path, "/");
        assert!(seen.headers.is_empty());
    }

    #[test]
    fn a_client_is_rendered_once_as_strategies_read_it() {
        let client = Client::new("10.1.2.3:45678".parse().unwrap());
        assert_eq!(client.ip, "10.1.2.3");
        assert_eq!(client.addr.port(), 45678);
        let v6 = Client::new("[fd00::1]:80".parse().unwrap());
        assert_eq!(v6.ip, "fd00::1");
    }

    #[test]
    fn an_active_guard_counts_until_dropped() {
        let target = endpoint(7);
        let guard = Active::on(target.clone());
        let second = Active::on(target.clone());
        assert_eq!(target.active.load(Ordering::Relaxed), 2);
        drop(guard);
        drop(second);
        assert_eq!(target.active.load(Ordering::Relaxed), 0);
    }
}
