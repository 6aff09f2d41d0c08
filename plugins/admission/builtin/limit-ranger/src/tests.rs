use super::*;

/// Applies a JSON Patch of `add` operations as RFC 6902 does: the parent of each path must
/// exist, an object member is set, an array element inserted (`-` appends).
fn apply(document: &Value, patch: &[Value]) -> Result<Value, String> {
    let mut document = document.clone();
    for op in patch {
        if op["op"] != "add" {
            return Err(format!("not an add: {op}"));
        }
        let path = op["path"].as_str().ok_or("no path")?;
        let mut tokens: Vec<String> = path
            .strip_prefix('/')
            .ok_or_else(|| format!("path {path:?} does not start with /"))?
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = tokens.pop().expect("split yields one token");
        let mut parent = &mut document;
        for token in &tokens {
            parent = match parent {
                Value::Object(map) => map.get_mut(token),
                Value::Array(list) => token.parse::<usize>().ok().and_then(|i| list.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| format!("{path}: no parent at {token:?}"))?;
        }
        match parent {
            Value::Object(map) => {
                map.insert(last, op["value"].clone());
            }
            Value::Array(list) if last == "-" => list.push(op["value"].clone()),
            Value::Array(list) => {
                let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
                if i > list.len() {
                    return Err(format!("{path}: index out of bounds"));
                }
                list.insert(i, op["value"].clone());
            }
            _ => return Err(format!("{path}: parent is not a container")),
        }
    }
    Ok(document)
}

#[test]
fn the_test_applier_refuses_a_missing_parent() {
    let doc = json!({"spec": {}});
    let patch = [json!({"op": "add", "path": "/spec/a/b", "value": 1})];
    assert!(apply(&doc, &patch).is_err());
    let patch = [json!({"op": "add", "path": "/spec/a~1b", "value": 1})];
    assert_eq!(apply(&doc, &patch).unwrap(), json!({"spec": {"a/b": 1}}));
}

fn request(operation: Operation, kind: &str, object: Option<Value>) -> Request {
    let resource = match kind {
        "Pod" => "pods",
        "PersistentVolumeClaim" => "persistentvolumeclaims",
        _ => "things",
    };
    Request {
        uid: "uid".into(),
        kind: GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: kind.into(),
        },
        resource: GroupVersionResource {
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
        },
        sub_resource: String::new(),
        namespace: "team".into(),
        name: "web".into(),
        operation,
        user: UserInfo::default(),
        object: object.map(|o| o.to_string()),
        old_object: None,
        dry_run: false,
        options: None,
        settings: "{}".into(),
    }
}

fn create_pod(pod: &Value) -> Request {
    request(Operation::Create, "Pod", Some(pod.clone()))
}

fn limit_range(name: &str, limits: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"limits": limits},
    })
}

fn pod(containers: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"containers": containers},
    })
}

/// Reviews `request` against `ranges`, checking the namespace asked for.
fn review(request: &Request, ranges: Vec<Value>) -> Response {
    decide(request, |ns| {
        assert_eq!(ns, "team");
        Ok(ranges)
    })
}

fn unlisted(namespace: &str) -> Result<Vec<Value>, String> {
    panic!("listed LimitRanges in {namespace}")
}

fn patch_of(response: &Response) -> Vec<Value> {
    assert!(response.allowed, "denied: {:?}", response.status);
    let patch = response.patch.as_deref().expect("a patch");
    serde_json::from_str(patch).expect("the patch is JSON")
}

fn denial(response: &Response) -> &str {
    assert!(!response.allowed, "allowed: {response:?}");
    assert!(response.patch.is_none());
    let status = response.status.as_ref().expect("a status");
    assert_eq!(status.code, 403);
    &status.message
}

/// Reviews a pod's create and applies the patch: the pod as it would be stored.
fn admitted(pod: &Value, ranges: Vec<Value>) -> Value {
    let response = review(&create_pod(pod), ranges.clone());
    let patched = apply(pod, &patch_of(&response)).expect("the patch applies");
    // Defaulting is done: the stored pod needs no more.
    let again = review(&create_pod(&patched), ranges);
    assert!(again.allowed && again.patch.is_none(), "{again:?}");
    patched
}

fn container_defaults() -> Value {
    limit_range(
        "defaults",
        json!([{
            "type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
        }]),
    )
}

#[test]
fn a_container_without_resources_gets_the_defaults_and_the_pod_an_annotation() {
    let pod = pod(json!([{"name": "app", "image": "app.wasm"}]));
    let response = review(&create_pod(&pod), vec![container_defaults()]);
    let patch = patch_of(&response);
    assert_eq!(patch[0]["path"], "/spec/containers/0/resources");
    let stored = apply(&pod, &patch).unwrap();
    assert_eq!(
        stored["spec"]["containers"][0]["resources"],
        json!({
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        })
    );
    assert_eq!(
        stored["metadata"]["annotations"][ANNOTATION],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );
    admitted(&pod, vec![container_defaults()]);
}

#[test]
fn only_what_is_unset_is_defaulted_into_existing_maps() {
    let pod = json!({
        "metadata": {"name": "web", "annotations": {"team": "a"}},
        "spec": {"containers": [
            {"name": "app", "resources": {"limits": {"cpu": "400m"}}},
            {"name": "side", "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
            {"name": "full", "resources": {
                "limits": {"cpu": "1", "memory": "256Mi"},
                "requests": {"cpu": "1", "memory": "256Mi"}}},
        ]},
    });
    let stored = admitted(&pod, vec![container_defaults()]);
    let resources = |i: usize| stored["spec"]["containers"][i]["resources"].clone();
    assert_eq!(
        resources(0),
        json!({
            "limits": {"cpu": "400m", "memory": "256Mi"},
            // The container's own limit is its request, as pod defaulting makes it.
            "requests": {"cpu": "400m", "memory": "128Mi"},
        })
    );
    assert_eq!(
        resources(1),
        json!({
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "50m", "memory": "64Mi"},
        })
    );
    assert_eq!(resources(2), pod["spec"]["containers"][2]["resources"]);
    let annotations = &stored["metadata"]["annotations"];
    assert_eq!(annotations["team"], "a");
    assert_eq!(
        annotations[ANNOTATION],
        "LimitRanger plugin set: memory request for container app; memory limit for container app; \
         cpu, memory limit for container side"
    );
}

#[test]
fn patches_add_whole_maps_where_parents_are_missing_or_null() {
    let pod = json!({
        "metadata": {"name": "web", "annotations": null},
        "spec": {"containers": [
            {"name": "a", "resources": null},
            {"name": "b", "resources": {}},
            {"name": "c", "resources": {"limits": null, "requests": {}}},
        ]},
    });
    let response = review(&create_pod(&pod), vec![container_defaults()]);
    let patch = patch_of(&response);
    let paths: Vec<&str> = patch
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/containers/0/resources",
            "/spec/containers/1/resources/limits",
            "/spec/containers/1/resources/requests",
            "/spec/containers/2/resources/limits",
            "/spec/containers/2/resources/requests/cpu",
            "/spec/containers/2/resources/requests/memory",
            "/metadata/annotations",
        ]
    );
    assert!(patch.iter().all(|op| op["op"] == "add"));
    let stored = apply(&pod, &patch).unwrap();
    for i in 0..3 {
        assert_eq!(
            stored["spec"]["containers"][i]["resources"]["requests"]["cpu"],
            "100m"
        );
    }
    assert!(stored["metadata"]["annotations"][ANNOTATION].is_string());

    // A pod without metadata at all still gets its annotation.
    let bare = json!({"spec": {"containers": [{"name": "a"}]}});
    let stored = apply(
        &bare,
        &patch_of(&review(&create_pod(&bare), vec![container_defaults()])),
    )
    .unwrap();
    assert!(stored["metadata"]["annotations"][ANNOTATION].is_string());
}

#[test]
fn resource_names_are_escaped_in_paths() {
    let range = limit_range(
        "gpus",
        json!([{"type": "Container", "default": {"example.com/gpu": "1", "odd~name": "2"}}]),
    );
    let pod = pod(json!([{"name": "app", "resources": {"limits": {}, "requests": {}}}]));
    let response = review(&create_pod(&pod), vec![range.clone()]);
    let patch = patch_of(&response);
    let paths: Vec<&str> = patch
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/containers/0/resources/limits/example.com~1gpu",
            "/spec/containers/0/resources/limits/odd~0name",
            "/spec/containers/0/resources/requests/example.com~1gpu",
            "/spec/containers/0/resources/requests/odd~0name",
            "/metadata/annotations",
        ]
    );
    let stored = admitted(&pod, vec![range]);
    assert_eq!(
        stored["spec"]["containers"][0]["resources"]["limits"],
        json!({"example.com/gpu": "1", "odd~name": "2"})
    );
}

#[test]
fn an_existing_annotation_map_gets_the_key_escaped() {
    let mut pod = pod(json!([{"name": "app"}]));
    pod["metadata"]["annotations"] = json!({ANNOTATION: "stale"});
    let patch = patch_of(&review(&create_pod(&pod), vec![container_defaults()]));
    assert_eq!(
        patch.last().unwrap()["path"],
        "/metadata/annotations/kubernetes.io~1limit-ranger"
    );
    let stored = apply(&pod, &patch).unwrap();
    assert!(
        stored["metadata"]["annotations"][ANNOTATION]
            .as_str()
            .unwrap()
            .starts_with("LimitRanger plugin set: ")
    );
}

#[test]
fn init_containers_are_defaulted_and_named_as_such() {
    let mut pod = pod(json!([{"name": "app"}]));
    pod["spec"]["initContainers"] = json!([{"name": "setup"}]);
    let stored = admitted(&pod, vec![container_defaults()]);
    assert_eq!(
        stored["spec"]["initContainers"][0]["resources"]["limits"]["cpu"],
        "500m"
    );
    assert_eq!(
        stored["metadata"]["annotations"][ANNOTATION],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; \
         cpu, memory request for init container setup; cpu, memory limit for init container setup"
    );
}

#[test]
fn items_are_read_as_kubernetes_defaults_them() {
    // A default limit without a default request: the request is the limit.
    let only_default = limit_range(
        "a",
        json!([{"type": "Container", "default": {"cpu": "300m"}}]),
    );
    let pod = pod(json!([{"name": "app"}]));
    let stored = admitted(&pod, vec![only_default]);
    assert_eq!(
        stored["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "300m"}, "requests": {"cpu": "300m"}})
    );
    // A max alone is the default limit (and so the request); a min alone the default request.
    let bounds = limit_range(
        "b",
        json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]),
    );
    let stored = admitted(&pod, vec![bounds]);
    assert_eq!(
        stored["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "1"}, "requests": {"cpu": "1", "memory": "64Mi"}})
    );
    // Pod and claim items default nothing.
    let pod_item = limit_range("c", json!([{"type": "Pod", "max": {"cpu": "4"}}]));
    let response = review(&create_pod(&pod), vec![pod_item]);
    assert!(!response.allowed, "no limit: {response:?}");
}

#[test]
fn the_first_limit_range_by_name_wins_and_within_one_the_last_item() {
    let later = limit_range(
        "b-later",
        json!([{"type": "Container", "default": {"cpu": "9", "memory": "1Gi"}}]),
    );
    let first = limit_range(
        "a-first",
        json!([
            {"type": "Container", "default": {"cpu": "1"}},
            {"type": "Container", "default": {"cpu": "2"}},
        ]),
    );
    let stored = admitted(&pod(json!([{"name": "app"}])), vec![later, first]);
    assert_eq!(
        stored["spec"]["containers"][0]["resources"],
        json!({
            "limits": {"cpu": "2", "memory": "1Gi"},
            "requests": {"cpu": "2", "memory": "1Gi"},
        })
    );
}

#[test]
fn numbers_are_quantities_too() {
    let range = limit_range(
        "n",
        json!([{"type": "Container", "default": {"cpu": 2}, "max": {"cpu": 4}}]),
    );
    let pod = pod(json!([{"name": "app", "resources": {"requests": {"cpu": 1}}}]));
    let stored = admitted(&pod, vec![range]);
    assert_eq!(
        stored["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "2"}, "requests": {"cpu": 1}})
    );
}

fn container(name: &str, requests: Value, limits: Value) -> Value {
    json!({"name": name, "resources": {"requests": requests, "limits": limits}})
}

fn violations(ranges: Vec<Value>, pod: &Value) -> Vec<String> {
    let (ranges, warnings) = limit_ranges(&ranges);
    assert!(warnings.is_empty(), "{warnings:?}");
    pod_violations(&ranges, &containers(pod).unwrap())
}

#[test]
fn container_minimums_are_checked_against_requests_and_limits() {
    let range = limit_range(
        "min",
        json!([{"type": "Container", "min": {"cpu": "100m", "memory": "64Mi"}}]),
    );
    let pod = pod(json!([
        container("low", json!({"cpu": "100m", "memory": "32Mi"}), json!({})),
        container(
            "lowlimit",
            json!({"cpu": "100m", "memory": "64Mi"}),
            json!({"cpu": "50m"})
        ),
        container("none", json!({}), json!({})),
        container(
            "fine",
            json!({"cpu": "0.1", "memory": "64Mi"}),
            json!({"cpu": "1"})
        ),
    ]));
    assert_eq!(
        violations(vec![range], &pod),
        [
            "minimum memory usage per Container is 64Mi, but request is 32Mi",
            "minimum cpu usage per Container is 100m, but limit is 50m",
            "minimum cpu usage per Container is 100m.  No request is specified",
            "minimum memory usage per Container is 64Mi.  No request is specified",
        ]
    );
}

#[test]
fn container_maximums_are_checked_against_limits_and_requests() {
    let range = limit_range(
        "max",
        json!([{"type": "Container", "max": {"cpu": "500m"}}]),
    );
    let pod = pod(json!([
        container("big", json!({"cpu": "250m"}), json!({"cpu": "1"})),
        container("unbounded", json!({"cpu": "250m"}), json!({})),
        container("greedy", json!({"cpu": "600m"}), json!({"cpu": "500m"})),
        container("fine", json!({"cpu": "500m"}), json!({"cpu": "0.5"})),
    ]));
    assert_eq!(
        violations(vec![range], &pod),
        [
            "maximum cpu usage per Container is 500m, but limit is 1",
            "maximum cpu usage per Container is 500m.  No limit is specified",
            "maximum cpu usage per Container is 500m, but request is 600m",
        ]
    );
}

#[test]
fn container_limit_to_request_ratios_are_checked() {
    let range = limit_range(
        "ratio",
        json!([{"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}]),
    );
    let pod = pod(json!([
        container("steep", json!({"cpu": "250m"}), json!({"cpu": "1"})),
        container("norequest", json!({}), json!({"cpu": "1"})),
        container("zero", json!({"cpu": "0"}), json!({"cpu": "1"})),
        container("nolimit", json!({"cpu": "1"}), json!({})),
        container("edge", json!({"cpu": "500m"}), json!({"cpu": "1"})),
        container("odd", json!({"cpu": "300m"}), json!({"cpu": "700m"})),
    ]));
    assert_eq!(
        violations(vec![range], &pod),
        [
            "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
            "cpu max limit to request ratio per Container is 2, but no request is specified or request is 0",
            "cpu max limit to request ratio per Container is 2, but no request is specified or request is 0",
            "cpu max limit to request ratio per Container is 2, but no limit is specified or limit is 0",
            "cpu max limit to request ratio per Container is 2, but provided ratio is 2.333333",
        ]
    );
}

#[test]
fn pod_items_bound_the_totals_of_the_containers() {
    let range = limit_range(
        "pod",
        json!([{"type": "Pod", "max": {"cpu": "2"}, "min": {"memory": "1Gi"}}]),
    );
    let pod = pod(json!([
        container(
            "a",
            json!({"cpu": "1", "memory": "256Mi"}),
            json!({"cpu": "1500m"})
        ),
        container(
            "b",
            json!({"cpu": "1", "memory": "256Mi"}),
            json!({"cpu": "1500m"})
        ),
    ]));
    assert_eq!(
        violations(vec![range.clone()], &pod),
        [
            "minimum memory usage per Pod is 1Gi, but request is 512Mi",
            "maximum cpu usage per Pod is 2, but limit is 3",
        ]
    );
    let ratio = limit_range(
        "r",
        json!([{"type": "Pod", "maxLimitRequestRatio": {"cpu": "1"}}]),
    );
    assert_eq!(
        violations(vec![ratio], &pod),
        ["cpu max limit to request ratio per Pod is 1, but provided ratio is 1.500000"]
    );
}

#[test]
fn init_containers_and_sidecars_count_as_kubernetes_totals_them() {
    let range = limit_range("pod", json!([{"type": "Pod", "max": {"cpu": "2"}}]));
    let mut pod = pod(json!([container(
        "app",
        json!({"cpu": "1"}),
        json!({"cpu": "1"})
    )]));
    // An init container runs alone: the pod needs the larger of it and the containers.
    pod["spec"]["initContainers"] =
        json!([container("setup", json!({"cpu": "2"}), json!({"cpu": "2"}))]);
    assert!(violations(vec![range.clone()], &pod).is_empty());
    pod["spec"]["initContainers"] =
        json!([container("setup", json!({"cpu": "3"}), json!({"cpu": "3"}))]);
    assert_eq!(
        violations(vec![range.clone()], &pod),
        ["maximum cpu usage per Pod is 2, but limit is 3"]
    );
    // A sidecar runs beside the containers, and beside the init containers after it.
    let mut sidecar = container("proxy", json!({"cpu": "500m"}), json!({"cpu": "1500m"}));
    sidecar["restartPolicy"] = json!("Always");
    pod["spec"]["initContainers"] = json!([
        sidecar,
        container("setup", json!({"cpu": "1"}), json!({"cpu": "1"}))
    ]);
    assert_eq!(
        violations(vec![range], &pod),
        ["maximum cpu usage per Pod is 2, but limit is 2500m"]
    );
}

#[test]
fn init_containers_meet_container_items_too() {
    let range = limit_range(
        "max",
        json!([{"type": "Container", "max": {"memory": "1Gi"}}]),
    );
    let mut pod = pod(json!([container(
        "app",
        json!({}),
        json!({"memory": "1Gi"})
    )]));
    pod["spec"]["initContainers"] =
        json!([container("setup", json!({}), json!({"memory": "2Gi"}))]);
    assert_eq!(
        violations(vec![range], &pod),
        ["maximum memory usage per Container is 1Gi, but limit is 2Gi"]
    );
}

#[test]
fn a_create_is_denied_with_every_violation_after_defaulting() {
    let ranges = vec![
        container_defaults(),
        limit_range(
            "pods",
            json!([
                {"type": "Container", "max": {"cpu": "1"}},
                {"type": "Pod", "max": {"cpu": "750m"}},
            ]),
        ),
    ];
    let pod = pod(json!([
        {"name": "a"},
        {"name": "b", "resources": {"limits": {"cpu": "2"}}},
    ]));
    let response = review(&create_pod(&pod), ranges);
    assert_eq!(
        denial(&response),
        "maximum cpu usage per Container is 1, but limit is 2, \
         maximum cpu usage per Pod is 750m, but limit is 2500m"
    );
}

#[test]
fn malformed_quantities_in_the_pod_are_denied_with_their_field() {
    let pod = pod(json!([
        {"name": "a", "resources": {"limits": {"cpu": "lots"}}},
        {"name": "b", "resources": {"requests": {"memory": true}, "limits": "1"}},
    ]));
    let message = denial(&review(&create_pod(&pod), vec![container_defaults()])).to_owned();
    let parts: Vec<&str> = message.split(", spec.").collect();
    assert_eq!(parts.len(), 3, "{message}");
    assert!(
        parts[0].starts_with("spec.containers[0].resources.limits[cpu]: quantities must match")
    );
    assert_eq!(
        parts[1],
        "containers[1].resources.requests[memory]: must be a quantity, not true"
    );
    assert_eq!(
        parts[2],
        "containers[1].resources.limits: must be a map of resource names to quantities"
    );
}

#[test]
fn malformed_limit_range_items_are_skipped_with_a_warning() {
    let range = limit_range(
        "mixed",
        json!([
            {"type": "Container", "max": {"cpu": "a lot"}},
            {"type": "Container", "default": {"memory": "128Mi"}},
        ]),
    );
    let pod = pod(json!([{"name": "app"}]));
    let response = review(&create_pod(&pod), vec![range]);
    assert_eq!(response.warnings.len(), 1);
    assert!(
        response.warnings[0]
            .starts_with("LimitRange mixed: spec.limits[0].max[cpu]: quantities must match"),
        "{:?}",
        response.warnings
    );
    assert!(response.warnings[0].ends_with("; the item is ignored"));
    let stored = apply(&pod, &patch_of(&response)).unwrap();
    assert_eq!(
        stored["spec"]["containers"][0]["resources"],
        json!({"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}})
    );

    // Only broken items: nothing applies, and the pod passes with the warning.
    let broken = limit_range("broken", json!([{"type": "Container", "min": {"cpu": []}}]));
    let response = review(&create_pod(&pod), vec![broken]);
    assert!(response.allowed && response.patch.is_none());
    assert_eq!(response.warnings.len(), 1);
}

fn claim(storage: Option<&str>) -> Value {
    let mut claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "team"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {}},
    });
    if let Some(storage) = storage {
        claim["spec"]["resources"]["requests"] = json!({"storage": storage});
    }
    claim
}

fn storage_bounds() -> Value {
    limit_range(
        "storage",
        json!([
            {"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}},
            {"type": "Container", "max": {"cpu": "1"}},
        ]),
    )
}

#[test]
fn claims_are_bounded_by_their_items() {
    let create = |storage| {
        request(
            Operation::Create,
            "PersistentVolumeClaim",
            Some(claim(storage)),
        )
    };
    assert_eq!(
        denial(&review(&create(Some("500Mi")), vec![storage_bounds()])),
        "minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"
    );
    assert_eq!(
        denial(&review(&create(Some("20Gi")), vec![storage_bounds()])),
        "maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"
    );
    assert_eq!(
        denial(&review(&create(None), vec![storage_bounds()])),
        "minimum storage usage per PersistentVolumeClaim is 1Gi.  No request is specified, \
         maximum storage usage per PersistentVolumeClaim is 10Gi.  No request is specified"
    );
    let fine = review(&create(Some("5Gi")), vec![storage_bounds()]);
    assert!(fine.allowed && fine.patch.is_none());
    assert!(
        denial(&review(&create(Some("big")), vec![storage_bounds()]))
            .starts_with("spec.resources.requests[storage]: quantities must match")
    );
}

#[test]
fn claim_updates_are_checked_only_when_their_requests_change() {
    let mut expand = request(
        Operation::Update,
        "PersistentVolumeClaim",
        Some(claim(Some("20Gi"))),
    );
    expand.old_object = Some(claim(Some("5Gi")).to_string());
    assert!(!review(&expand, vec![storage_bounds()]).allowed);
    let mut relabel = request(
        Operation::Update,
        "PersistentVolumeClaim",
        Some(claim(Some("500Mi"))),
    );
    relabel.old_object = Some(claim(Some("500Mi")).to_string());
    assert!(decide(&relabel, unlisted).allowed);
}

#[test]
fn pod_updates_are_validated_only_when_resources_change_and_never_defaulted() {
    let range = limit_range(
        "r",
        json!([{"type": "Container", "max": {"cpu": "1"}, "default": {"memory": "1Gi"}}]),
    );
    let old = pod(json!([container(
        "app",
        json!({"cpu": "1"}),
        json!({"cpu": "1"})
    )]));
    let mut labelled = old.clone();
    labelled["metadata"]["labels"] = json!({"tier": "web"});
    let mut update = request(Operation::Update, "Pod", Some(labelled));
    update.old_object = Some(old.to_string());
    assert!(decide(&update, unlisted).allowed);

    let resized = pod(json!([container(
        "app",
        json!({"cpu": "2"}),
        json!({"cpu": "2"})
    )]));
    let mut update = request(Operation::Update, "Pod", Some(resized));
    update.old_object = Some(old.to_string());
    assert_eq!(
        denial(&review(&update, vec![range.clone()])),
        "maximum cpu usage per Container is 1, but limit is 2"
    );

    let shrunk = pod(json!([container(
        "app",
        json!({"cpu": "500m"}),
        json!({"cpu": "500m"})
    )]));
    let mut update = request(Operation::Update, "Pod", Some(shrunk));
    update.old_object = Some(old.to_string());
    let response = review(&update, vec![range]);
    assert!(response.allowed && response.patch.is_none(), "{response:?}");
}

#[test]
fn objects_being_deleted_pass() {
    let mut old = pod(json!([{"name": "app"}]));
    old["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    let mut update = request(
        Operation::Update,
        "Pod",
        Some(pod(json!([{"name": "app", "image": "new"}]))),
    );
    update.old_object = Some(old.to_string());
    assert!(decide(&update, unlisted).allowed);
}

#[test]
fn other_requests_pass_untouched() {
    let pod = pod(json!([{"name": "app"}]));
    let mut binding = create_pod(&pod);
    binding.sub_resource = "binding".into();
    let mut other_group = create_pod(&pod);
    other_group.kind.group = "example.com".into();
    let requests = [
        binding,
        other_group,
        request(Operation::Create, "ConfigMap", Some(json!({"data": {}}))),
        request(Operation::Delete, "Pod", None),
        request(Operation::Connect, "Pod", None),
        request(Operation::Create, "Pod", None),
    ];
    for r in &requests {
        let response = decide(r, unlisted);
        assert!(response.allowed && response.patch.is_none(), "{r:?}");
    }
}

#[test]
fn a_namespace_without_limit_ranges_changes_nothing() {
    let pod = pod(json!([{"name": "app"}]));
    let response = review(&create_pod(&pod), vec![]);
    assert!(response.allowed && response.patch.is_none() && response.warnings.is_empty());
    let empty = limit_range("empty", json!([]));
    let response = review(&create_pod(&pod), vec![empty]);
    assert!(response.allowed && response.patch.is_none());
}

#[test]
fn a_failed_cache_read_denies() {
    let pod = pod(json!([{"name": "app"}]));
    let response = decide(&create_pod(&pod), |_| {
        Err("kind v1/LimitRange is not in spec.reads".into())
    });
    assert_eq!(
        denial(&response),
        "unable to read the LimitRanges of namespace team: kind v1/LimitRange is not in spec.reads"
    );
}

#[test]
fn big_quantities_compare_in_whole_units() {
    let range = limit_range(
        "big",
        json!([{"type": "PersistentVolumeClaim", "max": {"storage": "4Ei"}}]),
    );
    let create = |storage| {
        request(
            Operation::Create,
            "PersistentVolumeClaim",
            Some(claim(Some(storage))),
        )
    };
    assert!(review(&create("3Ei"), vec![range.clone()]).allowed);
    assert_eq!(
        denial(&review(&create("5Ei"), vec![range])),
        "maximum storage usage per PersistentVolumeClaim is 4Ei, but request is 5Ei"
    );
}

#[test]
fn settings_must_be_empty() {
    let policy = LimitRanger;
    for fine in ["{}", "", " { } ", "null"] {
        assert!(policy.validate_settings(fine).is_ok(), "{fine:?}");
    }
    for bad in [r#"{"x": 1}"#, "[]", "3"] {
        let error = policy.validate_settings(bad).unwrap_err();
        assert!(
            error.starts_with("limit-ranger takes no settings"),
            "{bad}: {error}"
        );
    }
    let error = policy.validate_settings("{").unwrap_err();
    assert!(error.starts_with("settings are not JSON"), "{error}");
}
