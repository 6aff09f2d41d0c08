//! An example workload: a `wasi:http` handler, run by the node agent on its pod's IP and
//! container port with a fresh instance per request (like `wasmtime serve`).
//!
//! `GET /` answers `Hello from <name>!`, where the name is the `GREETING_NAME` environment
//! variable (set it from `metadata.name` with a fieldRef to tell pods apart) or `Flotilla`.
//! `/healthz` answers `ok` for probes; any other path is greeted too, and echoed back:
//! `Hello from <name>! You asked for <path>.`
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p hello-http
//! ```
//! and use `plugins/target/wasm32-wasip2/release/hello_http.wasm` as a container image.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

fn answer(path: &str) -> (u16, String) {
    let name = || std::env::var("GREETING_NAME").unwrap_or_else(|_| "Flotilla".into());
    match path {
        "/" | "" => (200, format!("Hello from {}!\n", name())),
        "/healthz" => (200, "ok\n".into()),
        other => (
            200,
            format!("Hello from {}! You asked for {other}.\n", name()),
        ),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, body) = answer(&path);
        let headers = Fields::from_list(&[
            ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
            ("content-length".into(), body.len().to_string().into_bytes()),
        ])
        .expect("valid headers");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).expect("valid status");
        let outgoing = response.body().expect("body taken once");
        ResponseOutparam::set(out, Ok(response));
        {
            let stream = outgoing.write().expect("stream taken once");
            // A client that went away is nothing to report.
            let _ = stream.blocking_write_and_flush(body.as_bytes());
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

wasip2::http::proxy::export!(Hello);
