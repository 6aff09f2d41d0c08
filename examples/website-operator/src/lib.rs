//! An example operator, written with the Flotilla SDK: a `Website` (`example.flotilla.dev/v1`,
//! the CRD in `website-crd.yaml`) is served by a Deployment and a Service of its name that it
//! owns through a controller owner reference. The Deployment runs the hello-http component
//! (the image the configuration names) with `GREETING_NAME` set to the Website's greeting, so
//! its pods answer `Hello from <greeting>!` on the Website's port; its pods are labelled
//! `app.kubernetes.io/name: <website>` and `app.kubernetes.io/managed-by: website-operator`,
//! and the Service selects them on that port.
//!
//! - **Kept as the Website says**: a missing Deployment or Service is made (again); one whose
//!   replicas, greeting, port, image or labels drifted is put back, written with the
//!   resourceVersion it was read at. What the API server and other controllers add is left
//!   alone; an object of the name that the Website does not own is not touched, and the
//!   Website's Ready condition says so (`NameTaken`).
//! - **Status**: `observedGeneration`, `readyReplicas` (the Deployment's), `url`
//!   (`http://<website>.<namespace>.svc:<port>`), `operatorVersion` and a `Ready` condition,
//!   True once every replica runs the current template and is ready; written only when it
//!   changes.
//! - **Its version shows**: everything it makes carries the
//!   `example.flotilla.dev/operator-version` annotation, and `status.operatorVersion` says the
//!   same. The WasmPlugin's configuration sets the image and may change how it behaves:
//!   `{"image": "…/hello_http.wasm", "greetingSuffix": " (v2)", "version": "2.0.0"}` appends
//!   the suffix to every greeting and reports version 2.0.0 (the crate's version otherwise), so
//!   pushing the same build again with another configuration shows a hot swap.
//!
//! The decisions are in [`plan`], pure and tested natively; the reconcile that reads the cache
//! and writes through the API server is built only for the component.

pub mod plan;
#[cfg(target_arch = "wasm32")]
mod reconcile;
