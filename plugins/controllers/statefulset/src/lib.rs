//! The StatefulSet controller, as Kubernetes' has it: a StatefulSet keeps `spec.replicas` pods
//! of stable identity, `<set>-<ordinal>` for ordinals from `spec.ordinals.start`, each with
//! its hostname, the set's service as subdomain, and the `statefulset.kubernetes.io/pod-name`
//! and `apps.kubernetes.io/pod-index` labels.
//!
//! - **Claims**: pods named `<set>-<ordinal>` that its selector matches and no controller owns
//!   are adopted, owned pods it no longer matches released, as the ReplicaSet controller does;
//!   ControllerRevisions likewise, by selector.
//! - **Ordering**: `OrderedReady` creates pods from the lowest ordinal, each once every pod
//!   below it is running, ready and available for `minReadySeconds`, and deletes pods beyond
//!   the replicas from the highest, one at a time; `Parallel` creates and deletes them all at
//!   once. A failed or succeeded pod is deleted and made again under its name.
//! - **Revisions** are ControllerRevisions `<set>-<hash>`, one per pod template, numbered,
//!   owned by the set, holding the patch that puts the template back; a template that comes
//!   back (`kubectl rollout undo`) makes its revision the newest again. Revisions no pod,
//!   current or update revision uses are pruned beyond `revisionHistoryLimit`, oldest first.
//! - **Updates**: `RollingUpdate` deletes pods not at the update revision from the highest
//!   ordinal down to `partition`, while fewer than `maxUnavailable` are unavailable (for
//!   `OrderedReady`, after the replacement is available); `OnDelete` waits for them to be
//!   deleted. Pods below the partition are made again at the current revision.
//! - **Status**: replicas, readyReplicas, availableReplicas, currentReplicas, updatedReplicas,
//!   currentRevision, updateRevision (the current one once every pod is ready at it),
//!   collisionCount, observedGeneration, written when they change; a set with pods about to
//!   become available is reconciled again when they do.
//!
//! There are no PersistentVolumeClaims: a claim template becomes an emptyDir volume of its name.
//! The decisions are in `plan`, tested natively; the reconcile that reads the cache and writes
//! through the API server is built only for the component.

mod plan;
#[cfg(target_arch = "wasm32")]
mod reconcile;
