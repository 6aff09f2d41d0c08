//! Claiming the objects a controller's selector matches, as Kubernetes' controller ref
//! manager does: objects it controls that no longer match are released, matching objects
//! that no controller owns are adopted (unless either side is being deleted). Both are JSON
//! patches that test what they change, so a race with another controller fails instead of
//! stealing the object.

use flotilla_sdk::cache;
use flotilla_sdk::controller::{ObjectRef, PatchType, api};
use serde_json::Value;

use crate::{adopt_patch, controller_ref, failed, parse, release_patch};

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
    fn list(&self, selector: &str) -> Result<Vec<Value>, String> {
        let namespace = self.owner["metadata"]["namespace"].as_str();
        cache::list(self.api_version, self.kind, namespace, selector)
            .map_err(|s| failed(&format!("listing {}s", self.kind), s))?
            .iter()
            .map(|o| parse(o))
            .collect()
    }

    /// Releases and adopts, and returns the objects the owner controls that match. Only
    /// objects `adoptable` accepts are adopted; `releasing` sees each object before it is
    /// released.
    pub fn run(
        &self,
        adoptable: impl Fn(&Value) -> bool,
        mut releasing: impl FnMut(&Value) -> Result<(), String>,
    ) -> Result<Vec<Value>, String> {
        let uid = &self.owner["metadata"]["uid"];
        let matching: std::collections::HashSet<String> = self
            .list(self.selector)?
            .iter()
            .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .collect();
        let mut owned = Vec::new();
        for object in self.list("")? {
            let matches = object["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| matching.contains(u));
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
