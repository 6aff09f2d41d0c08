//! An admission policy that asks the host's cache for the object under review (by kind and
//! name) and allows the request only if the cache has it. The host's tests use it to check that
//! a guest waiting in an async host call is still stopped at its deadline. It uses the raw
//! bindings rather than the SDK: any language's component would.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "admission-policy",
});

use exports::flotilla::plugin::admission::{Guest as Admission, Request, Response};
use exports::flotilla::plugin::meta::{Guest as Meta, PluginInfo};
use flotilla::plugin::cache;
use flotilla::plugin::types::Status;

struct Blocking;

impl Meta for Blocking {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "blocking".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: "0.1.3".into(),
        }
    }

    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

impl Admission for Blocking {
    fn validate_settings(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn review(request: Request) -> Response {
        let namespace = (!request.namespace.is_empty()).then_some(request.namespace.as_str());
        let api_version = if request.kind.group.is_empty() {
            request.kind.version.clone()
        } else {
            format!("{}/{}", request.kind.group, request.kind.version)
        };
        let found = cache::get(&api_version, &request.kind.kind, namespace, &request.name);
        let (allowed, message) = match found {
            Ok(Some(_)) => (true, String::new()),
            Ok(None) => (
                false,
                format!("{} {} is not in the cache", request.kind.kind, request.name),
            ),
            Err(status) => (false, status.message),
        };
        Response {
            allowed,
            status: (!allowed).then(|| Status {
                code: 403,
                reason: "Forbidden".into(),
                message,
            }),
            patch: None,
            warnings: vec![],
            audit_annotations: vec![],
        }
    }
}

export!(Blocking);
