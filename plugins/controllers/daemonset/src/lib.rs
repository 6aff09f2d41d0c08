//! The DaemonSet controller, as Kubernetes' has it: one pod of the template on every node the
//! template selects and whose taints it tolerates.
//!
//! - **Placement** ([`plan`], pure): `nodeSelector` and required node affinity select nodes; a
//!   node's NoSchedule and NoExecute taints must be tolerated to start a pod there, only the
//!   NoExecute ones to keep it. Daemon pods tolerate what Kubernetes adds for them (not-ready
//!   and unreachable, the pressure conditions, unschedulable).
//! - **Pods** are pinned to their node through node affinity on `metadata.name` and placed by
//!   the scheduler; extra pods on a node, pods on nodes that no longer qualify or that are gone,
//!   and failed pods are deleted (failed ones are replaced).
//! - **Revisions**: each template is a ControllerRevision named by its hash; pods carry the
//!   `controller-revision-hash` label. RollingUpdate replaces old pods node by node within
//!   `maxUnavailable`, or with `maxSurge` starts the new pod first; OnDelete waits for the user.
//! - **Status**: desired, current and updated counts, misscheduled, ready, available (after
//!   `minReadySeconds`), unavailable, observedGeneration — what `kubectl rollout status` reads.
//!
//! The component ([`component`]) reads through the host cache and writes through the API; the
//! rest is pure and tested natively.

pub mod plan;

#[cfg(target_arch = "wasm32")]
mod component;
