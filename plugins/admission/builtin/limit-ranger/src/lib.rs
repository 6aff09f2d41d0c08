//! The built-in LimitRanger policy, as Kubernetes' admission plugin of that name: the
//! LimitRanges of a namespace (the policy reads v1 LimitRange) default the resources of the
//! containers of new pods and bound those of pods and PersistentVolumeClaims.
//!
//! On a pod's create, each container and init container that lacks a limit named by a
//! `type: Container` item's `default` gets it, and one that lacks a request gets its own limit
//! (as the API server's pod defaulting does) or else the item's `defaultRequest`. Items are read
//! as Kubernetes defaults them: `default` falls back to `max`, `defaultRequest` to `default` and
//! then to `min`. The change is a JSON Patch, and the pod is annotated
//! `kubernetes.io/limit-ranger: LimitRanger plugin set: cpu request for container app; …`.
//! The defaulted pod is then checked, on creates and on updates that change resources:
//! `Container` items bound each container's requests and limits (`min`, `max`,
//! `maxLimitRequestRatio`), `Pod` items the pod's totals; a PersistentVolumeClaim's create, or
//! an update that changes its requests, is checked against `PersistentVolumeClaim` items. Every
//! violation is named, in Kubernetes' words, in one denial. A malformed quantity in the object
//! is denied with its field; a LimitRange item with a malformed quantity is skipped with a
//! warning. The policy takes no settings.
//!
//! It must not touch anything else: other kinds, subresources, objects being deleted, updates
//! of pods that leave resources alone, and namespaces without LimitRanges pass unchanged.

use std::collections::BTreeMap;

use flotilla_quantity::{self as quantity, Quantity};
use flotilla_sdk::admission::*;
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct LimitRanger;

/// The annotation that says what defaulting set.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// A quantity as written, which patches copy, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amount {
    pub text: String,
    pub value: Quantity,
}

/// A resource list: resource name to quantity.
pub type Resources = BTreeMap<String, Amount>;

/// Reads one quantity, a string or (as JSON allows) a number.
pub fn amount(value: &Value) -> Result<Amount, String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        other => return Err(format!("must be a quantity, not {other}")),
    };
    let value = quantity::parse(&text)?;
    Ok(Amount { text, value })
}

/// Reads the resource list at `field`, adding what is malformed to `errors`.
fn resources(value: &Value, field: &str, errors: &mut Vec<String>) -> Resources {
    let mut list = Resources::new();
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (name, value) in map {
                match amount(value) {
                    Ok(amount) => {
                        list.insert(name.clone(), amount);
                    }
                    Err(error) => errors.push(format!("{field}[{name}]: {error}")),
                }
            }
        }
        _ => errors.push(format!(
            "{field}: must be a map of resource names to quantities"
        )),
    }
    list
}

/// One item of a LimitRange's `spec.limits`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    /// `Container`, `Pod` or `PersistentVolumeClaim`.
    pub kind: String,
    pub min: Resources,
    pub max: Resources,
    pub default: Resources,
    pub default_request: Resources,
    pub max_limit_request_ratio: Resources,
}

impl Item {
    /// Reads an item as Kubernetes defaults it (`SetDefaults_LimitRangeItem`): for containers,
    /// a default limit falls back to the max, a default request to the default limit and then
    /// to the min.
    pub fn of(item: &Value, field: &str) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut list = |key: &str| resources(&item[key], &format!("{field}.{key}"), &mut errors);
        let mut parsed = Self {
            kind: item["type"].as_str().unwrap_or_default().to_owned(),
            min: list("min"),
            max: list("max"),
            default: list("default"),
            default_request: list("defaultRequest"),
            max_limit_request_ratio: list("maxLimitRequestRatio"),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        if parsed.kind == "Container" {
            for (name, max) in &parsed.max {
                parsed
                    .default
                    .entry(name.clone())
                    .or_insert_with(|| max.clone());
            }
            for (name, default) in parsed.default.iter().chain(&parsed.min) {
                parsed
                    .default_request
                    .entry(name.clone())
                    .or_insert_with(|| default.clone());
            }
        }
        Ok(parsed)
    }
}

/// A LimitRange's name and its usable items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitRange {
    pub name: String,
    pub items: Vec<Item>,
}

/// Reads LimitRange objects, in name order. An item with a malformed quantity is left out, with
/// a warning saying so.
pub fn limit_ranges(objects: &[Value]) -> (Vec<LimitRange>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut ranges: Vec<LimitRange> = objects
        .iter()
        .map(|object| {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let items = object["spec"]["limits"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            let items = items
                .iter()
                .enumerate()
                .filter_map(
                    |(i, item)| match Item::of(item, &format!("spec.limits[{i}]")) {
                        Ok(item) => Some(item),
                        Err(errors) => {
                            warnings.push(format!(
                                "LimitRange {name}: {}; the item is ignored",
                                errors.join(", ")
                            ));
                            None
                        }
                    },
                )
                .collect();
            LimitRange {
                name: name.to_owned(),
                items,
            }
        })
        .collect();
    ranges.sort_by(|a, b| a.name.cmp(&b.name));
    (ranges, warnings)
}

/// The requests and limits containers get where they set none, from the `Container` items of
/// all LimitRanges: within one LimitRange a later item wins, and an earlier LimitRange wins
/// over a later one (Kubernetes applies each in turn, filling only what is still unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    pub limits: Resources,
    pub requests: Resources,
}

pub fn defaults(ranges: &[LimitRange]) -> Defaults {
    let mut all = Defaults::default();
    for range in ranges {
        let mut own = Defaults::default();
        for item in range.items.iter().filter(|i| i.kind == "Container") {
            own.limits.extend(item.default.clone());
            own.requests.extend(item.default_request.clone());
        }
        for (name, amount) in own.limits {
            all.limits.entry(name).or_insert(amount);
        }
        for (name, amount) in own.requests {
            all.requests.entry(name).or_insert(amount);
        }
    }
    all
}

/// One container or init container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// `containers` or `initContainers`.
    pub field: &'static str,
    pub index: usize,
    pub name: String,
    /// An init container that keeps running beside the others (`restartPolicy: Always`).
    pub sidecar: bool,
    pub requests: Resources,
    pub limits: Resources,
}

/// A pod's containers, then its init containers; or every malformed quantity, with its field.
pub fn containers(pod: &Value) -> Result<Vec<Container>, Vec<String>> {
    let mut errors = Vec::new();
    let mut found = Vec::new();
    for field in ["containers", "initContainers"] {
        let Some(list) = pod["spec"][field].as_array() else {
            continue;
        };
        for (index, container) in list.iter().enumerate() {
            let at = format!("spec.{field}[{index}].resources");
            let resources = &container["resources"];
            found.push(Container {
                field,
                index,
                name: container["name"].as_str().unwrap_or_default().to_owned(),
                sidecar: container["restartPolicy"] == "Always",
                requests: self::resources(
                    &resources["requests"],
                    &format!("{at}.requests"),
                    &mut errors,
                ),
                limits: self::resources(&resources["limits"], &format!("{at}.limits"), &mut errors),
            });
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(errors)
    }
}

/// A JSON Pointer token (RFC 6901).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn entries(list: &[(String, Amount)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(name, amount)| (name.clone(), Value::String(amount.text.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// Fills each container's unset requests and limits from `defaults`, and returns the JSON
/// Patch (`add` operations only) that does the same to `pod`, annotation included.
pub fn apply_defaults(
    pod: &Value,
    containers: &mut [Container],
    defaults: &Defaults,
) -> Vec<Value> {
    let mut patch = Vec::new();
    let mut notes = Vec::new();
    for container in containers.iter_mut() {
        let mut limits = Vec::new();
        for (name, amount) in &defaults.limits {
            if !container.limits.contains_key(name) {
                limits.push((name.clone(), amount.clone()));
            }
        }
        let mut requests = Vec::new();
        let mut announced = Vec::new();
        for (name, amount) in &defaults.requests {
            if container.requests.contains_key(name) {
                continue;
            }
            // The API server's pod defaulting makes a container's own limit its request; it
            // has normally done so already, and LimitRanger does not claim it.
            match container.limits.get(name) {
                Some(own) => requests.push((name.clone(), own.clone())),
                None => {
                    requests.push((name.clone(), amount.clone()));
                    announced.push(name.as_str());
                }
            }
        }
        container.limits.extend(limits.iter().cloned());
        container.requests.extend(requests.iter().cloned());
        let kind = if container.field == "initContainers" {
            "init container"
        } else {
            "container"
        };
        if !announced.is_empty() {
            notes.push(format!(
                "{} request for {kind} {}",
                announced.join(", "),
                container.name
            ));
        }
        if !limits.is_empty() {
            let names: Vec<&str> = limits.iter().map(|(n, _)| n.as_str()).collect();
            notes.push(format!(
                "{} limit for {kind} {}",
                names.join(", "),
                container.name
            ));
        }

        let base = format!("/spec/{}/{}/resources", container.field, container.index);
        let current = &pod["spec"][container.field][container.index]["resources"];
        if !current.is_object() {
            let mut whole = Map::new();
            for (key, list) in [("limits", &limits), ("requests", &requests)] {
                if !list.is_empty() {
                    whole.insert(key.into(), entries(list));
                }
            }
            if !whole.is_empty() {
                patch.push(json!({"op": "add", "path": base, "value": whole}));
            }
            continue;
        }
        for (key, list) in [("limits", &limits), ("requests", &requests)] {
            if list.is_empty() {
                continue;
            }
            if current[key].is_object() {
                for (name, amount) in list {
                    patch.push(json!({
                        "op": "add",
                        "path": format!("{base}/{key}/{}", token(name)),
                        "value": amount.text,
                    }));
                }
            } else {
                patch.push(
                    json!({"op": "add", "path": format!("{base}/{key}"), "value": entries(list)}),
                );
            }
        }
    }
    if !notes.is_empty() {
        let note = format!("LimitRanger plugin set: {}", notes.join("; "));
        let metadata = &pod["metadata"];
        let (path, value) = if metadata["annotations"].is_object() {
            let key = token(ANNOTATION);
            (format!("/metadata/annotations/{key}"), json!(note))
        } else if metadata.is_object() {
            (
                "/metadata/annotations".to_owned(),
                json!({ANNOTATION: note}),
            )
        } else {
            (
                "/metadata".to_owned(),
                json!({"annotations": {ANNOTATION: note}}),
            )
        };
        patch.push(json!({"op": "add", "path": path, "value": value}));
    }
    patch
}

/// Values of a resource list, for the checks.
type Values = BTreeMap<String, Quantity>;

fn values(list: &Resources) -> Values {
    list.iter().map(|(n, a)| (n.clone(), a.value)).collect()
}

const MAX_MILLI_VALUE: i64 = i64::MAX / 1000;

/// Request, limit and bound at one precision, as Kubernetes compares them: thousandths where
/// none overflows, else whole units (a missing value counts as zero).
fn observed(request: Option<Quantity>, limit: Option<Quantity>, bound: Quantity) -> [i64; 3] {
    let all = [
        request.unwrap_or(Quantity::ZERO),
        limit.unwrap_or(Quantity::ZERO),
        bound,
    ];
    if all.iter().all(|q| q.value() <= MAX_MILLI_VALUE) {
        all.map(Quantity::milli_value)
    } else {
        all.map(Quantity::value)
    }
}

fn min_constraint(
    kind: &str,
    name: &str,
    bound: Quantity,
    requests: &Values,
    limits: &Values,
) -> Option<String> {
    let (request, limit) = (requests.get(name).copied(), limits.get(name).copied());
    let [observed_request, observed_limit, bound_value] = observed(request, limit, bound);
    let Some(request) = request else {
        return Some(format!(
            "minimum {name} usage per {kind} is {bound}.  No request is specified"
        ));
    };
    if observed_request < bound_value {
        return Some(format!(
            "minimum {name} usage per {kind} is {bound}, but request is {request}"
        ));
    }
    match limit {
        Some(limit) if observed_limit < bound_value => Some(format!(
            "minimum {name} usage per {kind} is {bound}, but limit is {limit}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    name: &str,
    bound: Quantity,
    requests: &Values,
    limits: &Values,
) -> Option<String> {
    let (request, limit) = (requests.get(name).copied(), limits.get(name).copied());
    let [observed_request, observed_limit, bound_value] = observed(request, limit, bound);
    let Some(limit) = limit else {
        return Some(format!(
            "maximum {name} usage per {kind} is {bound}.  No limit is specified"
        ));
    };
    if observed_limit > bound_value {
        return Some(format!(
            "maximum {name} usage per {kind} is {bound}, but limit is {limit}"
        ));
    }
    match request {
        Some(request) if observed_request > bound_value => Some(format!(
            "maximum {name} usage per {kind} is {bound}, but request is {request}"
        )),
        _ => None,
    }
}

/// The max of a resource that only has requests (a claim's storage).
fn max_request_constraint(
    kind: &str,
    name: &str,
    bound: Quantity,
    requests: &Values,
) -> Option<String> {
    let request = requests.get(name).copied();
    let [observed_request, _, bound_value] = observed(request, None, bound);
    let Some(request) = request else {
        return Some(format!(
            "maximum {name} usage per {kind} is {bound}.  No request is specified"
        ));
    };
    (observed_request > bound_value)
        .then(|| format!("maximum {name} usage per {kind} is {bound}, but request is {request}"))
}

fn ratio_constraint(
    kind: &str,
    name: &str,
    bound: Quantity,
    requests: &Values,
    limits: &Values,
) -> Option<String> {
    let (request, limit) = (requests.get(name).copied(), limits.get(name).copied());
    let [observed_request, observed_limit, _] = observed(request, limit, bound);
    let most_is = format!("{name} max limit to request ratio per {kind} is {bound}");
    if request.is_none() || observed_request == 0 {
        return Some(format!(
            "{most_is}, but no request is specified or request is 0"
        ));
    }
    if limit.is_none() || observed_limit == 0 {
        return Some(format!(
            "{most_is}, but no limit is specified or limit is 0"
        ));
    }
    let ratio = observed_limit as f64 / observed_request as f64;
    let (scaled, most) = if bound.value() <= MAX_MILLI_VALUE {
        (ratio * 1000.0, bound.milli_value() as f64)
    } else {
        (ratio, bound.value() as f64)
    };
    (scaled > most).then(|| format!("{most_is}, but provided ratio is {ratio:.6}"))
}

/// The min, max and ratio violations of one item over one set of requests and limits.
fn bounds(item: &Item, kind: &str, requests: &Values, limits: &Values, out: &mut Vec<String>) {
    for (name, bound) in &item.min {
        out.extend(min_constraint(kind, name, bound.value, requests, limits));
    }
    for (name, bound) in &item.max {
        out.extend(max_constraint(kind, name, bound.value, requests, limits));
    }
    for (name, bound) in &item.max_limit_request_ratio {
        out.extend(ratio_constraint(kind, name, bound.value, requests, limits));
    }
}

fn add(list: &mut Values, other: &Values) {
    for (name, q) in other {
        *list.entry(name.clone()).or_insert(Quantity::ZERO) += *q;
    }
}

fn max_into(list: &mut Values, other: &Values) {
    for (name, q) in other {
        let entry = list.entry(name.clone()).or_insert(*q);
        *entry = (*entry).max(*q);
    }
}

/// A pod's effective requests or limits, as Kubernetes totals them: the containers and sidecars
/// add up, and each init container, with the sidecars started before it, may need more.
fn pod_total(containers: &[Container], of: impl Fn(&Container) -> &Resources) -> Values {
    let mut total = Values::new();
    for c in containers.iter().filter(|c| c.field == "containers") {
        add(&mut total, &values(of(c)));
    }
    let mut sidecars = Values::new();
    let mut init = Values::new();
    for c in containers.iter().filter(|c| c.field == "initContainers") {
        let own = values(of(c));
        let running = if c.sidecar {
            add(&mut total, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut with = own;
            add(&mut with, &sidecars);
            with
        };
        max_into(&mut init, &running);
    }
    max_into(&mut total, &init);
    total
}

/// Every way a pod's (defaulted) containers break the `Container` and `Pod` items.
pub fn pod_violations(ranges: &[LimitRange], containers: &[Container]) -> Vec<String> {
    let mut out = Vec::new();
    for item in ranges.iter().flat_map(|r| &r.items) {
        match item.kind.as_str() {
            "Container" => {
                for c in containers {
                    bounds(
                        item,
                        "Container",
                        &values(&c.requests),
                        &values(&c.limits),
                        &mut out,
                    );
                }
            }
            "Pod" => {
                let requests = pod_total(containers, |c| &c.requests);
                let limits = pod_total(containers, |c| &c.limits);
                bounds(item, "Pod", &requests, &limits, &mut out);
            }
            _ => {}
        }
    }
    out
}

/// Every way a claim's requests break the `PersistentVolumeClaim` items.
pub fn claim_violations(ranges: &[LimitRange], requests: &Resources) -> Vec<String> {
    let kind = "PersistentVolumeClaim";
    let requests = values(requests);
    let mut out = Vec::new();
    for item in ranges
        .iter()
        .flat_map(|r| &r.items)
        .filter(|i| i.kind == kind)
    {
        for (name, bound) in &item.min {
            out.extend(min_constraint(
                kind,
                name,
                bound.value,
                &requests,
                &Values::new(),
            ));
        }
        for (name, bound) in &item.max {
            out.extend(max_request_constraint(kind, name, bound.value, &requests));
        }
    }
    out
}

fn parse(object: Option<&str>) -> Option<Value> {
    object.and_then(|o| serde_json::from_str(o).ok())
}

/// Whether an update changes the resources of any container (an in-place resize).
fn resources_changed(pod: &Value, old: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|field| {
        let list = |p: &Value| -> Vec<Value> {
            p["spec"][field]
                .as_array()
                .map(|cs| cs.iter().map(|c| c["resources"].clone()).collect())
                .unwrap_or_default()
        };
        list(pod) != list(old)
    })
}

fn finish(mut response: Response, warnings: Vec<String>) -> Response {
    for warning in warnings {
        response = response.warn(warning);
    }
    response
}

/// The verdict on `request`, with `list` reading a namespace's LimitRanges from the cache.
pub fn decide(
    request: &Request,
    list: impl FnOnce(&str) -> Result<Vec<Value>, String>,
) -> Response {
    let core = request.kind.group.is_empty();
    let pod = core && request.kind.kind == "Pod";
    let claim = core && request.kind.kind == "PersistentVolumeClaim";
    let operation = request.operation;
    if !request.sub_resource.is_empty()
        || !(pod || claim)
        || !matches!(operation, Operation::Create | Operation::Update)
    {
        return Response::allow();
    }
    let Some(object) = parse(request.object.as_deref()) else {
        return Response::allow();
    };
    let old = parse(request.old_object.as_deref());
    if let Some(old) = &old {
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return Response::allow();
        }
        let changed = if pod {
            resources_changed(&object, old)
        } else {
            object["spec"]["resources"]["requests"] != old["spec"]["resources"]["requests"]
        };
        if operation == Operation::Update && !changed {
            return Response::allow();
        }
    }
    let objects = match list(&request.namespace) {
        Ok(objects) => objects,
        Err(error) => {
            return Response::deny(format!(
                "unable to read the LimitRanges of namespace {}: {error}",
                request.namespace
            ));
        }
    };
    let (ranges, warnings) = limit_ranges(&objects);
    if ranges.iter().all(|r| r.items.is_empty()) {
        return finish(Response::allow(), warnings);
    }

    if claim {
        let mut errors = Vec::new();
        let requests = resources(
            &object["spec"]["resources"]["requests"],
            "spec.resources.requests",
            &mut errors,
        );
        if !errors.is_empty() {
            return finish(Response::deny(errors.join(", ")), warnings);
        }
        let violations = claim_violations(&ranges, &requests);
        if !violations.is_empty() {
            return finish(Response::deny(violations.join(", ")), warnings);
        }
        return finish(Response::allow(), warnings);
    }

    let mut containers = match containers(&object) {
        Ok(containers) => containers,
        Err(errors) => return finish(Response::deny(errors.join(", ")), warnings),
    };
    let patch = if operation == Operation::Create {
        apply_defaults(&object, &mut containers, &defaults(&ranges))
    } else {
        Vec::new()
    };
    let violations = pod_violations(&ranges, &containers);
    if !violations.is_empty() {
        return finish(Response::deny(violations.join(", ")), warnings);
    }
    let response = if patch.is_empty() {
        Response::allow()
    } else {
        Response::allow().patch(Value::Array(patch).to_string())
    };
    finish(response, warnings)
}

impl AdmissionPolicy for LimitRanger {
    const NAME: &'static str = "limit-ranger";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn validate_settings(&self, settings: &str) -> Result<(), String> {
        admission_common::no_settings(Self::NAME, settings)
    }

    fn review(&mut self, request: Request) -> Response {
        decide(&request, |namespace| {
            admission_common::cached_in("v1", "LimitRange", namespace)
        })
    }
}

flotilla_sdk::export_admission_policy!(LimitRanger);

#[cfg(test)]
mod tests;
