//! A proxy strategy that misbehaves in every pick as its configuration (`spec.config`, the
//! mode as a JSON string) says. The host calls strategies without a fiber, so nothing a pick
//! does may wait or hold the caller's thread past its deadline; the host's tests use this to
//! check that each of these is contained:
//!
//! - `"stderr"`: writes a line to stderr, then picks the first endpoint (it must work);
//! - `"panic"`: panics with a message the host should report;
//! - `"loop"`: computes forever;
//! - `"sleep"`: sleeps for a second;
//! - `"tcp"`, `"udp"`: tries to bind a socket on loopback, and picks the first endpoint only
//!   if that worked (it must not).
//!
//! It uses the raw bindings rather than the SDK: any language's component would.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "proxy-strategy",
});

use std::cell::RefCell;
use std::collections::HashMap;

use exports::flotilla::plugin::meta::{Guest as Meta, PluginInfo};
use exports::flotilla::plugin::strategy::Guest as Strategy;
use exports::flotilla::plugin::strategy_inputs::Guest as Inputs;
use flotilla::plugin::balancing::{PickRequest, Service};
use flotilla::plugin::config;

thread_local! {
    static FIRST: RefCell<HashMap<String, u32>> = RefCell::default();
}

struct Misbehaving;

impl Meta for Misbehaving {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "misbehaving-strategy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            wit_version: "0.1.3".into(),
        }
    }

    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

impl Inputs for Misbehaving {
    fn reads_http() -> bool {
        false
    }
}

/// Spins without end; the host's epoch is the only way out.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Strategy for Misbehaving {
    fn update(service: Service) {
        if let Some(first) = service.endpoints.first() {
            FIRST.with(|f| f.borrow_mut().insert(service.key, first.id));
        }
    }

    fn remove(key: String) {
        FIRST.with(|f| f.borrow_mut().remove(&key));
    }

    fn pick(request: PickRequest) -> Option<u32> {
        let first = FIRST.with(|f| f.borrow().get(&request.service).copied());
        match config::get().trim().trim_matches('"') {
            "stderr" => {
                eprintln!("picking for {}", request.service);
                first
            }
            "panic" => panic!("refusing to pick for {}", request.service),
            "loop" => spin(),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(1));
                first
            }
            "tcp" => std::net::TcpListener::bind("127.0.0.1:0").ok().and(first),
            "udp" => std::net::UdpSocket::bind("127.0.0.1:0").ok().and(first),
            _ => first,
        }
    }
}

export!(Misbehaving);
