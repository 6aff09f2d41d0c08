//! An admission policy that misbehaves on purpose, as its AdmissionPolicy's settings say:
//! `{"mode": "sleep", "seconds": 5}` sleeps in a host call, `{"mode": "loop"}` computes forever,
//! `{"mode": "panic"}` panics; any other mode admits. The host's tests use it to check that a
//! policy past its timeout is handled by its failure policy while the API server keeps serving.

use flotilla_sdk::admission::*;
use serde_json::Value;

#[derive(Debug)]
pub struct Misbehave;

impl AdmissionPolicy for Misbehave {
    const NAME: &'static str = "admission-misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn review(&mut self, request: Request) -> Response {
        let settings: Value = serde_json::from_str(&request.settings).unwrap_or(Value::Null);
        match settings["mode"].as_str() {
            Some("sleep") => {
                let seconds = settings["seconds"].as_u64().unwrap_or(5);
                std::thread::sleep(std::time::Duration::from_secs(seconds));
                Response::allow()
            }
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("panic") => panic!("admission-misbehave: told to panic"),
            _ => Response::allow(),
        }
    }
}

flotilla_sdk::export_admission_policy!(Misbehave);
