//! The built-in validating admission policy `resource-quota`, Kubernetes' ResourceQuota
//! admission plugin: it owns the decision whether a create fits its namespace's
//! ResourceQuotas, and charging what an admitted create uses to their `status.used`. Counting
//! what exists is the `resourcequota-controller`'s job, not this policy's; what an object
//! charges comes from the `quota-usage` crate both share.
//!
//! Its AdmissionPolicy reads v1 ResourceQuota (`spec.reads`, the host's informer cache) and
//! writes ResourceQuota status (`spec.writes`). On the CREATE of a namespaced object (not a
//! subresource, not a Namespace; other operations are admitted untouched):
//!
//! - the quotas of the request's namespace that concern the object are those whose scopes
//!   select it and whose `spec.hard` names a resource objects of its kind charge; none: the
//!   create is admitted;
//! - each is checked, in name order: a pod must state the cpu and memory requests and limits
//!   a quota limits (`failed quota: NAME: must specify limits.cpu for: app`); every resource
//!   of the quota must have been counted (`status unknown for quota: NAME, resource: pods`);
//!   and used + charged must stay within hard (`exceeded quota: NAME, requested: pods=1, used:
//!   pods=2, limited: pods=2`, naming only the exceeded resources). Each denial is 403;
//! - when every quota admits and the request is not a dry run, each quota's `status.used` is
//!   raised by the charge (and `status.hard` set to `spec.hard`) through the status
//!   subresource, with the resourceVersion read as the precondition. A write that conflicts
//!   reads the quota afresh from the API server, checks again (it may be full now) and
//!   retries, up to ten times; then the create is refused with 409 Conflict. A quota that
//!   vanished meanwhile is skipped; any other API failure refuses it with 500.
//!
//! Quotas are charged one after the other, so a later quota refusing (or the create failing
//! after admission) leaves the earlier ones over-charged: the `resourcequota-controller`
//! recounts them from what exists and corrects that. A dry run is checked but charges nothing.
//! The policy takes no settings (`{}`) and keeps nothing between requests.

use flotilla_sdk::admission::*;
use quota_usage::{
    Quantity, ResourceList, hard, mask, matches_scopes, missing_compute, must_specify, pretty,
    to_json, tracked, usage, used,
};
use serde_json::{Value, json};

/// Writes of one quota's charge before the create is refused as conflicting.
pub const ATTEMPTS: usize = 10;

#[derive(Debug)]
pub struct ResourceQuota;

fn deny(code: u16, reason: &str, message: String) -> Response {
    Response {
        allowed: false,
        status: Some(Status {
            code,
            reason: reason.into(),
            message,
        }),
        ..Response::default()
    }
}

fn internal(message: String) -> Response {
    deny(500, "InternalError", message)
}

fn name_of(quota: &Value) -> &str {
    quota["metadata"]["name"].as_str().unwrap_or_default()
}

/// What one quota makes of a create.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The quota does not concern the object, or it charges nothing the quota tracks.
    Untouched,
    /// Admitted; charge the quota this much.
    Charge(ResourceList),
    /// Refused.
    Deny(Response),
}

/// Checks one quota against an object of `resource` in `group` that charges `charge` (its
/// [`usage`]), as Kubernetes' quota admission does.
pub fn evaluate(
    quota: &Value,
    resource: &str,
    group: &str,
    object: &Value,
    charge: &ResourceList,
) -> Verdict {
    let name = name_of(quota);
    let hard = hard(quota);
    let restricted = tracked(&hard, resource, group);
    if restricted.is_empty() || !matches_scopes(quota, resource, object) {
        return Verdict::Untouched;
    }
    if resource == "pods" && group.is_empty() {
        let missing = missing_compute(&mask(&hard, &restricted), object);
        if !missing.is_empty() {
            return Verdict::Deny(Response::deny(format!(
                "failed quota: {name}: {}",
                must_specify(&missing)
            )));
        }
    }
    let used = used(quota);
    if restricted.iter().any(|r| !used.contains_key(r)) {
        return Verdict::Deny(Response::deny(format!(
            "status unknown for quota: {name}, resource: {}",
            restricted.join(",")
        )));
    }
    let requested: ResourceList = mask(charge, &restricted)
        .into_iter()
        .filter(|(_, q)| !q.is_zero())
        .collect();
    if requested.is_empty() {
        return Verdict::Untouched;
    }
    let exceeded: Vec<String> = requested
        .iter()
        .filter(|(r, q)| used[*r] + **q > hard[*r])
        .map(|(r, _)| r.clone())
        .collect();
    if !exceeded.is_empty() {
        return Verdict::Deny(Response::deny(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&mask(&requested, &exceeded)),
            pretty(&mask(&used, &exceeded)),
            pretty(&mask(&hard, &exceeded)),
        )));
    }
    Verdict::Charge(requested)
}

/// The quota with `requested` added to its `status.used` (other entries kept) and
/// `status.hard` set to its `spec.hard`, quantities in canonical form.
pub fn charged(quota: &Value, requested: &ResourceList) -> Value {
    let used_now = used(quota);
    let mut written = quota.clone();
    let mut used_json = match &quota["status"]["used"] {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    for (resource, q) in requested {
        let total = used_now.get(resource).copied().unwrap_or(Quantity::ZERO) + *q;
        used_json.insert(resource.clone(), json!(total.to_string()));
    }
    if !written["status"].is_object() {
        written["status"] = json!({});
    }
    written["status"]["hard"] = to_json(&hard(quota));
    written["status"]["used"] = Value::Object(used_json);
    written
}

/// Charges one admitted quota, retrying conflicts with the quota read afresh. Some response
/// refuses the create; none: charged (or nothing to charge any more).
fn charge_quota(
    quota: Value,
    namespace: &str,
    resource: &str,
    group: &str,
    object: &Value,
    charge: &ResourceList,
) -> Option<Response> {
    let name = name_of(&quota).to_owned();
    let mut current = quota;
    for attempt in 1..=ATTEMPTS {
        let requested = match evaluate(&current, resource, group, object, charge) {
            Verdict::Untouched => return None,
            Verdict::Deny(response) => return Some(response),
            Verdict::Charge(requested) => requested,
        };
        let written = charged(&current, &requested).to_string();
        match api::update_subresource(&written, "status") {
            // Charged, or deleted meanwhile: nothing to charge.
            Ok(_) => return None,
            Err(status) if status.code == 404 => return None,
            Err(status) if status.code == 409 => {
                if attempt == ATTEMPTS {
                    break;
                }
                match api::get("v1", "ResourceQuota", Some(namespace), &name) {
                    Ok(Some(fresh)) => match serde_json::from_str(&fresh) {
                        Ok(fresh) => current = fresh,
                        Err(e) => {
                            return Some(internal(format!(
                                "cannot read quota {name}: not JSON: {e}"
                            )));
                        }
                    },
                    Ok(None) => return None,
                    Err(status) => {
                        return Some(internal(format!(
                            "cannot read quota {name}: {}",
                            status.message
                        )));
                    }
                }
            }
            Err(status) => {
                return Some(internal(format!(
                    "cannot charge quota {name}: {}",
                    status.message
                )));
            }
        }
    }
    Some(deny(
        409,
        "Conflict",
        format!("the quota {name} is being updated by other requests; try again"),
    ))
}

/// The whole review, callable natively (the tests set a native host).
pub fn review(request: &Request) -> Response {
    let namespaces = request.resource.group.is_empty() && request.resource.resource == "namespaces";
    if request.operation != Operation::Create
        || !request.sub_resource.is_empty()
        || request.namespace.is_empty()
        || namespaces
    {
        return Response::allow();
    }
    let namespace = request.namespace.as_str();
    let (resource, group) = (
        request.resource.resource.as_str(),
        request.resource.group.as_str(),
    );
    let object: Value = request
        .object
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(Value::Null);
    let mut quotas = match admission_common::cached_in("v1", "ResourceQuota", namespace) {
        Ok(quotas) => quotas,
        Err(error) => {
            return internal(format!(
                "cannot list the quotas of namespace {namespace}: {error}"
            ));
        }
    };
    if quotas.is_empty() {
        return Response::allow();
    }
    quotas.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    let charge = usage(resource, group, &object);
    let mut affected = Vec::new();
    for quota in quotas {
        match evaluate(&quota, resource, group, &object, &charge) {
            Verdict::Untouched => {}
            Verdict::Deny(response) => return response,
            Verdict::Charge(_) => affected.push(quota),
        }
    }
    if request.dry_run {
        return Response::allow();
    }
    for quota in affected {
        if let Some(response) = charge_quota(quota, namespace, resource, group, &object, &charge) {
            return response;
        }
    }
    Response::allow()
}

impl AdmissionPolicy for ResourceQuota {
    const NAME: &'static str = "resource-quota";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        admission_common::no_settings(Self::NAME, settings)
    }

    fn review(&mut self, request: Request) -> Response {
        review(&request)
    }
}

flotilla_sdk::export_admission_policy!(ResourceQuota);

#[cfg(test)]
mod tests;
