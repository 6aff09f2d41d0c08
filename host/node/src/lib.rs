//! The node agent: Flotilla's kubelet.
//!
//! [`agent`] registers the node (capacity from the machine, labels, addresses, pod CIDR),
//! renews its Lease, and runs the pods bound to it: [`pod`] supervises each pod's containers
//! with Kubernetes' restart policies, back-off, states and phases, and terminates them
//! gracefully; [`runtime`] runs containers as WASI components in wasmtime (`wasi:cli`
//! commands like processes, `wasi:http` handlers served on the pod's IP with an instance per
//! request), each confined to its preopens and pod IP, with memory and CPU limits; [`images`]
//! fetches components (local paths, https URLs with digests, OCI registries) and keeps them by
//! digest; [`spec`] turns a pod's spec into environment, argv and volumes; [`logs`] keeps each
//! container's output. [`network`] gives pod IPs their reach: one host's loopback range, or
//! routes between hosts (routed mode). [`simulate`] is Flotilla's answer to KWOK: nodes that register, keep
//! their Leases fresh and report their pods Running without executing anything, for scale work.
//!
//! Like every component but the API server, it is an API client and must not reach the store.
//! It holds no policy: where a pod runs is the scheduler's business, whether it may is
//! admission's.

pub mod agent;
mod events;
pub mod images;
pub mod logs;
pub mod network;
mod pod;
mod probe;
pub mod runtime;
mod server;
pub mod simulate;
pub mod spec;

pub use agent::{Agent, AgentError, AgentOptions, start};
pub use network::NetworkMode;
pub use pod::BackoffPolicy;
