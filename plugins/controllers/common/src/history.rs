//! The component side of [`crate::revision`]: finding or storing the revision of a workload's
//! template, and deleting old revisions.

use flotilla_sdk::cache;
use flotilla_sdk::controller::{DeleteOptions, PatchType, api};
use serde_json::{Value, json};

use crate::revision::*;
use crate::{failed, object_ref, parse};

/// The revision of the owner's template among its `revisions` (oldest first): the newest, an
/// older one renumbered as the newest (a rollback), or a new one. A name taken by another
/// template's revision is a hash collision: `collision_count` goes up and the next name
/// differs.
pub fn update_revision(
    owner: &Value,
    revisions: &[Value],
    collision_count: &mut i64,
) -> Result<Value, String> {
    let template = &owner["spec"]["template"];
    let number = next_revision_number(revisions);
    match find_update_revision(revisions, template) {
        UpdateRevision::Unchanged(revision) => Ok(revision.clone()),
        UpdateRevision::Restored(revision) => {
            let renumbered = api::patch(
                &object_ref(revision),
                PatchType::Merge,
                &json!({"revision": number}).to_string(),
            )
            .map_err(|s| failed("renumbering a controller revision", s))?;
            parse(&renumbered)
        }
        UpdateRevision::New => loop {
            let hash = revision_hash(template, *collision_count);
            let revision = new_revision(owner, template, &hash, number);
            let status = match api::create(&revision.to_string()) {
                Ok(created) => return parse(&created),
                Err(status) => status,
            };
            if status.code != 409 {
                return Err(failed("creating a controller revision", status));
            }
            let name = revision["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = owner["metadata"]["namespace"].as_str();
            let existing = cache::get("apps/v1", "ControllerRevision", namespace, name)
                .map_err(|s| failed("reading a controller revision", s))?
                .ok_or_else(|| format!("controller revision {name} exists; retrying"))?;
            let existing = parse(&existing)?;
            if same_template(&template_of(&existing), template) {
                return Ok(existing);
            }
            *collision_count += 1;
        },
    }
}

/// Deletes revisions; a failure waits for the next reconcile.
pub fn delete_revisions(revisions: &[&Value]) {
    for revision in revisions {
        let options = DeleteOptions {
            uid: revision["metadata"]["uid"].as_str().map(str::to_owned),
            ..DeleteOptions::default()
        };
        let _ = api::delete(&object_ref(revision), &options);
    }
}
