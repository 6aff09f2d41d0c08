//! A scheduling policy that misbehaves on purpose. Its configuration names what it does wrong
//! (`{"mode": "loop"}`), and in which call (`"in": "prepare" | "filter" | "score"`, default
//! `score`); otherwise it behaves, scoring every node 50. The host's tests use it to check that
//! each misbehaviour is contained and reported.

use flotilla_sdk::scheduling::*;

#[derive(Debug, Default)]
pub struct Misbehave {
    mode: String,
    call: String,
    sink: Vec<Vec<u8>>,
}

fn field(config: &str, name: &str) -> Option<String> {
    // The configuration is tiny JSON: `{"mode": "…", "in": "…"}`.
    let at = config.find(&format!("\"{name}\""))?;
    let rest = &config[at + name.len() + 2..];
    let start = rest.find('"')? + 1;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_owned())
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    // Each frame keeps a buffer alive so the stack really grows.
    let buffer = [depth as u8; 256];
    recurse(depth + 1) + u64::from(std::hint::black_box(buffer)[0])
}

impl Misbehave {
    fn act(&mut self, call: &str, candidates: &[u32]) -> Option<Vec<i64>> {
        if self.call != call {
            return None;
        }
        match self.mode.as_str() {
            "loop" => loop {
                std::hint::black_box(&self.sink);
            },
            "memory" => loop {
                self.sink.push(vec![1u8; 1 << 20]);
            },
            "panic" => panic!("misbehave: told to panic in {call}"),
            "recursion" => {
                std::hint::black_box(recurse(0));
                None
            }
            "out-of-range" => Some(candidates.iter().map(|_| 1000).collect()),
            "unknown-node" => Some(vec![]),
            "wrong-count" => Some(vec![50; candidates.len() + 1]),
            "huge" => Some(vec![7; 200_000]),
            _ => None,
        }
    }
}

impl SchedulerPolicy for Misbehave {
    const NAME: &'static str = "misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &str) -> Result<Self, String> {
        let mode = field(config, "mode").unwrap_or_default();
        if mode == "bad-config" {
            return Err("mode bad-config is refused by the self-check".into());
        }
        Ok(Self {
            mode,
            call: field(config, "in").unwrap_or_else(|| "score".into()),
            sink: Vec::new(),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter: true,
            score: true,
            wants_pods: false,
        }
    }

    fn update(&mut self, _change: Change) {}

    fn prepare(&mut self, _pod: Pod) -> Result<Prepared, String> {
        self.act("prepare", &[]);
        Ok(Prepared::Proceed)
    }

    fn filter(&mut self, candidates: &[u32], rejections: &mut Rejections) -> Result<(), String> {
        if self.call == "filter" && self.mode == "unknown-node" {
            rejections.reject(u32::MAX, "no such node");
            return Ok(());
        }
        self.act("filter", candidates);
        Ok(())
    }

    fn score(&mut self, candidates: &[u32], scores: &mut Vec<i64>) -> Result<(), String> {
        match self.act("score", candidates) {
            Some(given) => scores.extend(given),
            None => scores.extend(candidates.iter().map(|_| 50)),
        }
        Ok(())
    }
}

flotilla_sdk::export_scheduler_policy!(Misbehave);
