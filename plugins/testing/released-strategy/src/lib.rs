//! A proxy strategy built against `wit/released/flotilla-plugin@0.1.2`, before strategies
//! could say what they read of a pick: the host's tests load it to check that a newer 0.1.x
//! host still finds its exports and, since it cannot say otherwise, sends it the HTTP request.
//! It routes by path: `/<n>` goes to the service's n-th endpoint (from 0), anything else, and
//! a pick without the HTTP request, to none.

wit_bindgen::generate!({
    path: "../../../wit/released/flotilla-plugin@0.1.2",
    world: "proxy-strategy",
});

use std::cell::RefCell;
use std::collections::HashMap;

use exports::flotilla::plugin::meta::{Guest as Meta, PluginInfo};
use exports::flotilla::plugin::strategy::Guest as Strategy;
use flotilla::plugin::balancing::{PickRequest, Service};

thread_local! {
    static SERVICES: RefCell<HashMap<String, Vec<u32>>> = RefCell::default();
}

struct Released;

impl Meta for Released {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "released-strategy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: "0.1.2".into(),
        }
    }

    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

impl Strategy for Released {
    fn update(service: Service) {
        let ids = service.endpoints.iter().map(|e| e.id).collect();
        SERVICES.with(|s| s.borrow_mut().insert(service.key, ids));
    }

    fn remove(key: String) {
        SERVICES.with(|s| s.borrow_mut().remove(&key));
    }

    fn pick(request: PickRequest) -> Option<u32> {
        let index: usize = request.http?.path.strip_prefix('/')?.parse().ok()?;
        SERVICES.with(|s| s.borrow().get(&request.service)?.get(index).copied())
    }
}

export!(Released);
