//! The Kubernetes object model as Flotilla's API server needs it, as pure code: label and field
//! selectors, name validation with Kubernetes' messages, merge, JSON and strategic merge patches,
//! `metav1.Status` errors, and per-kind defaulting ([`defaults`]) and validation ([`objects`]) of
//! objects in Kubernetes' JSON wire format, with the field paths and cause messages Kubernetes
//! gives.
//!
//! This crate must not do IO of any kind (no store, no network, no files, no clock reads): it is
//! the vocabulary the API server, controllers and tests share, and it stays cheap to depend on.

mod base64;
pub mod defaults;
pub mod managed;
pub mod objects;
pub mod patch;
pub use flotilla_quantity as quantity;
pub mod selector;
pub mod status;
pub mod strategic;
pub mod structural;
pub mod validation;

pub use defaults::apply_defaults;
pub use objects::validate;
pub use patch::{PatchError, json_patch, merge_patch};
pub use selector::{FieldSelector, LabelSelector, SelectorError};
pub use status::{Status, StatusCause, StatusReason};
pub use strategic::{Schemas, strategic_merge_patch};
pub use structural::{apply_schema_defaults, validate_against};

#[cfg(test)]
mod test_schemas {
    //! Schemas for unit tests of the schema-driven algorithms.

    use serde_json::Value;

    /// Schemas given inline, with `#/defs/<name>` references (also as `allOf: [ref]`).
    pub struct Inline(pub Value);

    impl crate::Schemas for Inline {
        fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
            schema["$ref"]
                .as_str()
                .or_else(|| schema["allOf"][0]["$ref"].as_str())
                .and_then(|r| r.strip_prefix("#/defs/"))
                .and_then(|name| self.0.get(name))
                .unwrap_or(schema)
        }
    }
}
