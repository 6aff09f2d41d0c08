//! The node agent.
//!
//! Today this crate holds simulated nodes ([`simulate`]), Flotilla's answer to KWOK: nodes that
//! register, keep their Leases fresh and move the pods bound to them to Running without
//! executing anything, so the scheduler and controllers can be driven at the scale of
//! thousands of nodes on one machine. The real agent (WASI workloads, probes, logs, networking)
//! joins it here.
//!
//! Like every component but the API server, it is an API client and must not reach the store.

pub mod simulate;
