//! A real API server on a free loopback port over an embedded store in a temporary directory.

use std::sync::Arc;

use flotilla_apiserver::{ApiOptions, ApiServer};
use flotilla_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

pub struct Server {
    pub url: String,
    /// The store under the server, for tests that compact it.
    #[allow(dead_code, reason = "not every test file uses every field")]
    pub store: SharedStore,
    _dir: tempfile::TempDir,
}

#[allow(dead_code, reason = "not every test file uses every helper")]
pub async fn start() -> Server {
    start_with(ApiOptions::default()).await
}

pub async fn start_with(options: ApiOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap();
    start_on(Arc::new(store), options, dir).await
}

/// A server over `store`; `dir` lives as long as the server.
pub async fn start_on(store: SharedStore, options: ApiOptions, dir: tempfile::TempDir) -> Server {
    serve(ApiServer::with_options(store.clone(), options), store, dir).await
}

/// Serves `api` (over `store`) on a free port; `dir` lives as long as the server.
pub async fn serve(api: Arc<ApiServer>, store: SharedStore, dir: tempfile::TempDir) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api.router()).await });
    Server {
        url,
        store,
        _dir: dir,
    }
}

/// A client of a test server, with the `demo` namespace made.
#[allow(dead_code, reason = "not every test file uses every helper")]
pub struct Api {
    pub server: Server,
    pub http: reqwest::Client,
    pub url: String,
}

#[allow(dead_code, reason = "not every test file uses every helper")]
impl Api {
    pub async fn start() -> Self {
        Self::start_with(ApiOptions::default()).await
    }

    pub async fn start_with(options: ApiOptions) -> Self {
        Self::on(start_with(options).await).await
    }

    pub async fn on(server: Server) -> Self {
        let api = Self {
            url: server.url.clone(),
            server,
            http: reqwest::Client::new(),
        };
        let (code, body) = api
            .send(
                reqwest::Method::POST,
                "/api/v1/namespaces",
                Some(serde_json::json!({"metadata": {"name": "demo"}})),
            )
            .await;
        assert_eq!(code, reqwest::StatusCode::CREATED, "{body}");
        api
    }

    /// Sends `body` as `content_type`.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends `body` (if any) as JSON; the status code and the answer (a JSON string if it is
    /// not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let response = match body {
            Some(body) => {
                self.request(method, path, "application/json", body.to_string())
                    .await
            }
            None => self
                .http
                .request(method, format!("{}{path}", self.url))
                .send()
                .await
                .unwrap(),
        };
        answer(response).await
    }

    pub async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        answer(self.request(method, path, content_type, body).await).await
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
}

async fn answer(response: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let code = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (code, value)
}

/// A watch's raw stream, read until the event a test waits for.
#[allow(dead_code, reason = "not every test file uses every helper")]
pub struct Watch {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    seen: String,
}

#[allow(dead_code, reason = "not every test file uses every helper")]
impl Api {
    /// Watches `collection` from its current resourceVersion, with `query` added.
    pub async fn watch_from_now(&self, collection: &str, query: &str) -> Watch {
        use futures::StreamExt;
        let (_, list) = self.get(collection).await;
        let version = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = self
            .http
            .get(format!(
                "{}{collection}?watch=1&resourceVersion={version}&{query}",
                self.url
            ))
            .send()
            .await
            .unwrap();
        Watch {
            body: response.bytes_stream().boxed(),
            seen: String::new(),
        }
    }
}

#[allow(dead_code, reason = "not every test file uses every helper")]
impl Watch {
    /// Waits (20 s at most) until an event of type `kind` has arrived.
    pub async fn wait_for(&mut self, kind: &str) {
        use futures::StreamExt;
        let needle = format!("\"type\":\"{kind}\"");
        let arrived = async {
            while !self.seen.contains(&needle) {
                match self.body.next().await {
                    Some(chunk) => self
                        .seen
                        .push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                    None => panic!("the watch ended before a {kind} event"),
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), arrived)
            .await
            .unwrap_or_else(|_| panic!("no {kind} event in time"));
    }
}
