//! Claiming the objects a controller's selector matches, as Kubernetes' controller ref
//! manager does: objects it controls that no longer match are released, matching objects
//! that no controller owns are adopted (unless either side is being deleted). Both are JSON
//! patches that test what they change, so a race with another controller fails instead of
//! stealing the object.
//!
//! One `cache.query` reads what may be claimed: the objects the owner controls (from the
//! host's index by controller) and the orphans its selector matches, so the cost follows
//! what the owner has, not the namespace.

use flotilla_sdk::cache::{self, Selection};
use flotilla_sdk::controller::{ObjectRef, PatchType, api};
use serde_json::Value;

use crate::{adopt_patch, controller_ref, failed, parse, release_patch, selector_matches};

/// The fields claiming itself reads; a projected claim always fetches them.
const CLAIM_FIELDS: &[&str] = &[
    "metadata.labels",
    "metadata.ownerReferences",
    "metadata.deletionTimestamp",
];

/// The objects of one kind a controller claims.
#[derive(Debug)]
pub struct Claim<'a> {
    /// The controller's object (its uid names it in owner references).
    pub owner: &'a Value,
    pub api_version: &'a str,
    pub kind: &'a str,
    /// The owner's selector, in string form.
    pub selector: &'a str,
}

fn target(api_version: &str, kind: &str, object: &Value) -> ObjectRef {
    ObjectRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: object["metadata"]["namespace"].as_str().map(str::to_owned),
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .into(),
    }
}

fn deleting(object: &Value) -> bool {
    object["metadata"].get("deletionTimestamp").is_some()
}

impl Claim<'_> {
    /// Releases and adopts, and returns the objects the owner controls that match. Only
    /// objects `adoptable` accepts are adopted; `releasing` sees each object before it is
    /// released.
    pub fn run(
        &self,
        adoptable: impl Fn(&Value) -> bool,
        releasing: impl FnMut(&Value) -> Result<(), String>,
    ) -> Result<Vec<Value>, String> {
        self.run_with_fields(&[], adoptable, releasing)
    }

    /// As [`run`](Self::run), reading only `fields` (dotted paths) of the objects already
    /// claimed, besides those claiming needs; adopted objects come whole, as the adoption
    /// returned them. For owners of thousands of objects.
    pub fn run_with_fields(
        &self,
        fields: &[&str],
        adoptable: impl Fn(&Value) -> bool,
        mut releasing: impl FnMut(&Value) -> Result<(), String>,
    ) -> Result<Vec<Value>, String> {
        let uid = &self.owner["metadata"]["uid"];
        let mut selection = Selection::in_namespace(self.owner["metadata"]["namespace"].as_str())
            .matching(self.selector)
            .claimable_by(uid.as_str().unwrap_or_default());
        if !fields.is_empty() {
            selection = selection.fields(CLAIM_FIELDS.iter().chain(fields).copied());
        }
        let candidates = cache::query(self.api_version, self.kind, &selection)
            .map_err(|s| failed(&format!("listing {}s", self.kind), s))?;
        let mut owned = Vec::new();
        for object in candidates {
            let object = parse(&object)?;
            let matches = selector_matches(self.selector, &object);
            let to = target(self.api_version, self.kind, &object);
            match controller_ref(&object) {
                Some(owner) if owner["uid"] == *uid => {
                    if matches {
                        owned.push(object);
                    } else if !deleting(&object) {
                        releasing(&object)?;
                        let Some(patch) = release_patch(&object, uid) else {
                            continue;
                        };
                        match api::patch(&to, PatchType::Json, &patch) {
                            Ok(_) => {}
                            // Gone or changed meanwhile: the next reconcile sees it as it is.
                            Err(s) if matches!(s.code, 404 | 409 | 422) => {}
                            Err(s) => return Err(failed(&format!("releasing a {}", self.kind), s)),
                        }
                    }
                }
                None if matches
                    && !deleting(self.owner)
                    && !deleting(&object)
                    && adoptable(&object) =>
                {
                    let adopted =
                        api::patch(&to, PatchType::Json, &adopt_patch(self.owner, &object))
                            .map_err(|s| failed(&format!("adopting a {}", self.kind), s))?;
                    owned.push(parse(&adopted)?);
                }
                _ => {}
            }
        }
        Ok(owned)
    }
}
