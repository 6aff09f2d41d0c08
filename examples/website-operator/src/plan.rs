//! What a Website asks for: the operator's configuration, the Website's spec, the Deployment
//! and Service that serve it, which of their fields drifted from that, and the status to write.

use serde_json::{Map, Value, json};

/// The primary kind.
pub const API_VERSION: &str = "example.flotilla.dev/v1";
pub const KIND: &str = "Website";
/// Names the operator's version on everything it makes.
pub const VERSION_ANNOTATION: &str = "example.flotilla.dev/operator-version";

const NAME_LABEL: &str = "app.kubernetes.io/name";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "website-operator";
/// The environment variable hello-http greets with (`Hello from <GREETING_NAME>!`).
const GREETING_VARIABLE: &str = "GREETING_NAME";
const CONTAINER: &str = "web";
const PORT_NAME: &str = "http";
/// The CRD's defaults, for objects stored before they were set.
const DEFAULT_REPLICAS: i64 = 1;
const DEFAULT_PORT: u16 = 8080;

/// The operator's configuration: the WasmPlugin's `spec.config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The hello-http component the pods run: a local path, an https URL with its digest or
    /// an OCI reference.
    pub image: String,
    /// Appended to every Website's greeting.
    pub greeting_suffix: String,
    /// The version the operator reports in `status.operatorVersion` and its annotation.
    pub version: String,
}

impl Config {
    /// Reads `{"image": …, "greetingSuffix": …, "version": …}`; only `image` is required, and
    /// `version` defaults to `build_version`.
    pub fn parse(text: &str, build_version: &str) -> Result<Self, String> {
        let config: Value =
            serde_json::from_str(text).map_err(|e| format!("configuration is not JSON: {e}"))?;
        let Value::Object(fields) = config else {
            return Err("configuration must be a JSON object".into());
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !["image", "greetingSuffix", "version"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown configuration key {unknown:?} (image, greetingSuffix, version)"
            ));
        }
        let text_field = |key: &str| match fields.get(key) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(format!("{key:?} must be a string")),
        };
        let image = text_field("image")?
            .filter(|image| !image.is_empty())
            .ok_or("\"image\" is required: the hello-http component the pods run")?;
        Ok(Self {
            image,
            greeting_suffix: text_field("greetingSuffix")?.unwrap_or_default(),
            version: text_field("version")?.unwrap_or_else(|| build_version.to_owned()),
        })
    }
}

/// A Website's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub replicas: i64,
    pub greeting: String,
    pub port: u16,
}

impl Spec {
    pub fn of(website: &Value) -> Result<Self, String> {
        let spec = &website["spec"];
        let replicas = match &spec["replicas"] {
            Value::Null => DEFAULT_REPLICAS,
            value => value
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or("spec.replicas must be a whole number, 0 or more")?,
        };
        let greeting = spec["greeting"]
            .as_str()
            .ok_or("spec.greeting is required")?
            .to_owned();
        let port = match &spec["port"] {
            Value::Null => DEFAULT_PORT,
            value => value
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or("spec.port must be between 1 and 65535")?,
        };
        Ok(Self {
            replicas,
            greeting,
            port,
        })
    }
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The labels of a Website's pods, which its Deployment and Service select.
pub fn labels(website: &Value) -> Value {
    json!({NAME_LABEL: name_of(website), MANAGED_BY_LABEL: MANAGED_BY})
}

/// Where the Website is served inside the cluster.
pub fn url(website: &Value, spec: &Spec) -> String {
    format!(
        "http://{}.{}.svc:{}",
        name_of(website),
        namespace_of(website),
        spec.port
    )
}

/// The metadata of an object the Website owns: its name, labels, the operator's version and
/// `owner` (the Website's controller owner reference).
fn owned_metadata(website: &Value, config: &Config, owner: Value) -> Value {
    json!({
        "name": name_of(website),
        "namespace": namespace_of(website),
        "labels": labels(website),
        "annotations": {VERSION_ANNOTATION: config.version},
        "ownerReferences": [owner],
    })
}

/// The Deployment that runs the Website's pods.
pub fn deployment(website: &Value, spec: &Spec, config: &Config, owner: Value) -> Value {
    let labels = labels(website);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(website, config, owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": CONTAINER,
                    "image": config.image,
                    "env": [{
                        "name": GREETING_VARIABLE,
                        "value": format!("{}{}", spec.greeting, config.greeting_suffix),
                    }],
                    "ports": [{"name": PORT_NAME, "containerPort": spec.port}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": spec.port}},
                }]},
            },
        },
    })
}

/// The Service in front of the Website's pods.
pub fn service(website: &Value, spec: &Spec, config: &Config, owner: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(website, config, owner),
        "spec": {
            "selector": labels(website),
            "ports": [{"name": PORT_NAME, "port": spec.port, "targetPort": spec.port}],
        },
    })
}

/// The fields of `desired` that `existing` does not hold, as dotted paths. Objects may hold
/// more fields than asked for (the API server's defaults, other writers' labels); arrays must
/// match element by element. Owner references are not compared: ownership is checked apart,
/// and other owners' references are left alone.
pub fn drift(existing: &Value, desired: &Value) -> Vec<String> {
    let mut paths = Vec::new();
    collect_drift(existing, &without_owners(desired), "", &mut paths);
    paths
}

fn without_owners(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("ownerReferences");
    }
    object
}

fn holds(existing: &Value, desired: &Value) -> bool {
    let mut paths = Vec::new();
    collect_drift(existing, desired, "", &mut paths);
    paths.is_empty()
}

fn collect_drift(existing: &Value, desired: &Value, path: &str, paths: &mut Vec<String>) {
    match (existing, desired) {
        (Value::Object(existing), Value::Object(desired)) => {
            for (key, wanted) in desired {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                collect_drift(
                    existing.get(key).unwrap_or(&Value::Null),
                    wanted,
                    &path,
                    paths,
                );
            }
        }
        (Value::Array(existing), Value::Array(desired))
            if existing.len() == desired.len()
                && existing.iter().zip(desired).all(|(e, d)| holds(e, d)) => {}
        (existing, desired) if existing == desired => {}
        _ => paths.push(path.to_owned()),
    }
}

/// `existing` with the fields of `desired` written over it, keeping its resourceVersion (the
/// update's precondition), the fields others set and other owners' references: objects merge,
/// anything else (arrays too) is replaced.
pub fn corrected(existing: &Value, desired: &Value) -> Value {
    let mut corrected = existing.clone();
    overlay(&mut corrected, &without_owners(desired));
    corrected
}

fn overlay(target: &mut Value, desired: &Value) {
    match (target, desired) {
        (Value::Object(target), Value::Object(desired)) => {
            for (key, wanted) in desired {
                overlay(target.entry(key.clone()).or_insert(Value::Null), wanted);
            }
        }
        (target, desired) => *target = desired.clone(),
    }
}

/// The Ready condition's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Readiness {
    fn not_ready(reason: &str, message: String) -> Self {
        Self {
            ready: false,
            reason: reason.into(),
            message,
        }
    }

    /// The spec cannot be served as it is.
    pub fn invalid_spec(message: String) -> Self {
        Self::not_ready("InvalidSpec", message)
    }

    /// An object the Website would own exists and is someone else's.
    pub fn name_taken(kind: &str, name: &str) -> Self {
        Self::not_ready(
            "NameTaken",
            format!("{kind} {name} exists and is not managed by this Website"),
        )
    }

    /// An object the Website owns is on its way (created, or deleted to be made again).
    pub fn waiting(message: String) -> Self {
        Self::not_ready("Progressing", message)
    }

    /// Ready once the Deployment has rolled out the current template to every replica and
    /// all of them are ready.
    pub fn of_deployment(deployment: &Value, replicas: i64) -> Self {
        let status = &deployment["status"];
        let count = |field: &str| status[field].as_i64().unwrap_or(0);
        let observed = status["observedGeneration"].as_i64().unwrap_or(0)
            >= deployment["metadata"]["generation"].as_i64().unwrap_or(0);
        let ready = ready_replicas(deployment);
        let message = format!("{ready}/{replicas} replicas ready");
        if observed
            && count("updatedReplicas") == replicas
            && count("replicas") == replicas
            && ready == replicas
        {
            Self {
                ready: true,
                reason: "Available".into(),
                message,
            }
        } else {
            Self::not_ready("Progressing", message)
        }
    }
}

/// The Deployment's ready pods.
pub fn ready_replicas(deployment: &Value) -> i64 {
    deployment["status"]["readyReplicas"].as_i64().unwrap_or(0)
}

/// What is observed of a Website, for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub ready_replicas: i64,
    /// Known once the Website's Service is in place.
    pub url: Option<String>,
    pub readiness: Readiness,
}

/// The Website's status: what was observed of its current generation, the operator's version
/// and the Ready condition, whose transition time moves only when its status does (`now`,
/// RFC 3339). Conditions of other types are kept.
pub fn status(website: &Value, config: &Config, observed: &Observed, now: &str) -> Value {
    let generation = &website["metadata"]["generation"];
    let previous = website["status"]["conditions"].as_array();
    let wanted = if observed.readiness.ready {
        "True"
    } else {
        "False"
    };
    let since = previous
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == wanted)
        .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
    let ready = json!({
        "type": "Ready",
        "status": wanted,
        "observedGeneration": generation,
        "lastTransitionTime": since,
        "reason": observed.readiness.reason,
        "message": observed.readiness.message,
    });
    let mut conditions: Vec<Value> = previous
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != "Ready")
        .cloned()
        .collect();
    conditions.push(ready);
    let mut status = Map::new();
    status.insert("observedGeneration".into(), generation.clone());
    status.insert("readyReplicas".into(), json!(observed.ready_replicas));
    if let Some(url) = &observed.url {
        status.insert("url".into(), json!(url));
    }
    status.insert("operatorVersion".into(), json!(config.version));
    status.insert("conditions".into(), Value::Array(conditions));
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn website() -> Value {
        json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "hello", "namespace": "web", "uid": "u-1", "generation": 2},
            "spec": {"replicas": 2, "greeting": "the docs", "port": 8080},
        })
    }

    fn config() -> Config {
        Config::parse(r#"{"image": "/modules/hello_http.wasm"}"#, "1.0.0").unwrap()
    }

    fn owner() -> Value {
        json!({"apiVersion": API_VERSION, "kind": KIND, "name": "hello", "uid": "u-1",
            "controller": true, "blockOwnerDeletion": true})
    }

    /// The Deployment as the API server stores it: defaults added, status and history written
    /// by others.
    fn stored(desired: &Value) -> Value {
        let mut stored = desired.clone();
        stored["metadata"]["resourceVersion"] = json!("41");
        stored["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("1");
        stored["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        let container = &mut stored["spec"]["template"]["spec"]["containers"][0];
        container["imagePullPolicy"] = json!("IfNotPresent");
        container["ports"][0]["protocol"] = json!("TCP");
        container["readinessProbe"]["periodSeconds"] = json!(10);
        stored["status"] = json!({"replicas": 2, "readyReplicas": 1});
        stored
    }

    #[test]
    fn configuration_needs_an_image_and_defaults_the_rest() {
        assert_eq!(
            config(),
            Config {
                image: "/modules/hello_http.wasm".into(),
                greeting_suffix: String::new(),
                version: "1.0.0".into(),
            }
        );
        let swapped = Config::parse(
            r#"{"image": "hello.wasm", "greetingSuffix": " (v2)", "version": "2.0.0"}"#,
            "1.0.0",
        )
        .unwrap();
        assert_eq!(
            (swapped.greeting_suffix.as_str(), swapped.version.as_str()),
            (" (v2)", "2.0.0")
        );
        for (text, error) in [
            ("{}", "\"image\" is required"),
            (r#"{"image": ""}"#, "\"image\" is required"),
            (r#"{"image": 3}"#, "\"image\" must be a string"),
            (r#"{"image": "a", "greetingsuffix": "x"}"#, "unknown"),
            ("[]", "must be a JSON object"),
            ("nope", "not JSON"),
        ] {
            let refused = Config::parse(text, "1.0.0").unwrap_err();
            assert!(refused.contains(error), "{text}: {refused}");
        }
    }

    #[test]
    fn specs_take_the_crd_defaults_and_refuse_what_cannot_be_served() {
        assert_eq!(
            Spec::of(&json!({"spec": {"greeting": "hi"}})).unwrap(),
            Spec {
                replicas: 1,
                greeting: "hi".into(),
                port: 8080
            }
        );
        for (spec, error) in [
            (json!({"replicas": 1}), "spec.greeting"),
            (json!({"greeting": "hi", "replicas": -1}), "spec.replicas"),
            (json!({"greeting": "hi", "port": 0}), "spec.port"),
            (json!({"greeting": "hi", "port": 70000}), "spec.port"),
        ] {
            let refused = Spec::of(&json!({ "spec": spec })).unwrap_err();
            assert!(refused.contains(error), "{refused}");
        }
    }

    #[test]
    fn the_deployment_runs_hello_http_with_the_greeting_on_the_port() {
        let website = website();
        let swapped = Config {
            greeting_suffix: " (v2)".into(),
            version: "2.0.0".into(),
            ..config()
        };
        let spec = Spec {
            port: 9000,
            ..Spec::of(&website).unwrap()
        };
        let deployment = deployment(&website, &spec, &swapped, owner());
        let labels = json!({"app.kubernetes.io/name": "hello",
            "app.kubernetes.io/managed-by": "website-operator"});
        assert_eq!(deployment["metadata"]["labels"], labels);
        assert_eq!(deployment["metadata"]["ownerReferences"], json!([owner()]));
        assert_eq!(
            deployment["metadata"]["annotations"][VERSION_ANNOTATION],
            "2.0.0"
        );
        assert_eq!(deployment["spec"]["replicas"], 2);
        assert_eq!(deployment["spec"]["selector"]["matchLabels"], labels);
        let template = &deployment["spec"]["template"];
        assert_eq!(template["metadata"]["labels"], labels);
        let container = &template["spec"]["containers"][0];
        assert_eq!(container["image"], "/modules/hello_http.wasm");
        assert_eq!(
            container["env"],
            json!([{"name": "GREETING_NAME", "value": "the docs (v2)"}])
        );
        assert_eq!(container["ports"][0]["containerPort"], 9000);
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], 9000);

        let service = service(&website, &spec, &swapped, owner());
        assert_eq!(service["metadata"]["name"], "hello");
        assert_eq!(service["spec"]["selector"], labels);
        assert_eq!(
            service["spec"]["ports"],
            json!([{"name": "http", "port": 9000, "targetPort": 9000}])
        );
        assert_eq!(url(&website, &spec), "http://hello.web.svc:9000");
    }

    #[test]
    fn what_the_api_server_and_others_add_is_no_drift() {
        let website = website();
        let desired = deployment(&website, &Spec::of(&website).unwrap(), &config(), owner());
        let mut stored = stored(&desired);
        // Another owner's reference is left alone.
        stored["metadata"]["ownerReferences"]
            .as_array_mut()
            .unwrap()
            .push(json!({"uid": "someone-else"}));
        assert_eq!(drift(&stored, &desired), Vec::<String>::new());
    }

    #[test]
    fn drift_names_the_fields_and_is_corrected_over_what_others_set() {
        let website = website();
        let desired = deployment(&website, &Spec::of(&website).unwrap(), &config(), owner());
        let mut stored = stored(&desired);
        stored["spec"]["replicas"] = json!(5);
        stored["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("edited");
        stored["metadata"]["annotations"][VERSION_ANNOTATION] = json!("0.9.0");
        assert_eq!(
            drift(&stored, &desired),
            [
                "metadata.annotations.example.flotilla.dev/operator-version",
                "spec.replicas",
                "spec.template.spec.containers",
            ]
        );

        let corrected = corrected(&stored, &desired);
        assert_eq!(drift(&corrected, &desired), Vec::<String>::new());
        assert_eq!(corrected["metadata"]["resourceVersion"], "41");
        assert_eq!(
            corrected["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert_eq!(corrected["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(corrected["status"], stored["status"]);
        assert_eq!(corrected["spec"]["replicas"], 2);
    }

    #[test]
    fn a_website_is_ready_once_every_replica_runs_the_current_template() {
        let deployment = |generation: i64, status: Value| json!({"metadata": {"generation": generation}, "status": status});
        let done = json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2});
        let ready = Readiness::of_deployment(&deployment(3, done.clone()), 2);
        assert!(ready.ready, "{ready:?}");
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("Available", "2/2 replicas ready")
        );
        // Not yet seen by the Deployment controller, or old pods still running.
        assert!(!Readiness::of_deployment(&deployment(4, done.clone()), 2).ready);
        let rolling = json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1,
            "readyReplicas": 3});
        let progressing = Readiness::of_deployment(&deployment(3, rolling), 2);
        assert_eq!(
            (progressing.ready, progressing.reason.as_str()),
            (false, "Progressing")
        );
        let fresh = Readiness::of_deployment(&deployment(1, json!({})), 2);
        assert_eq!(fresh.message, "0/2 replicas ready");
    }

    #[test]
    fn status_reports_the_generation_version_and_a_ready_condition_that_keeps_its_time() {
        let mut website = website();
        let observed = Observed {
            ready_replicas: 1,
            url: Some("http://hello.web.svc:8080".into()),
            readiness: Readiness::waiting("1/2 replicas ready".into()),
        };
        let first = status(&website, &config(), &observed, "2025-01-01T00:00:00Z");
        assert_eq!(
            first,
            json!({
                "observedGeneration": 2,
                "readyReplicas": 1,
                "url": "http://hello.web.svc:8080",
                "operatorVersion": "1.0.0",
                "conditions": [{
                    "type": "Ready",
                    "status": "False",
                    "observedGeneration": 2,
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                    "reason": "Progressing",
                    "message": "1/2 replicas ready",
                }],
            })
        );
        website["status"] = first.clone();
        // Nothing changed: the same status, so nothing to write.
        assert_eq!(
            status(&website, &config(), &observed, "2025-01-01T00:05:00Z"),
            first
        );

        website["status"]["conditions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Audited", "status": "True"}));
        let served = Observed {
            ready_replicas: 2,
            url: None,
            readiness: Readiness::name_taken("Service", "hello"),
        };
        let taken = status(&website, &config(), &served, "2025-01-01T00:06:00Z");
        assert!(taken.get("url").is_none());
        let conditions = taken["conditions"].as_array().unwrap();
        assert_eq!(conditions[0]["type"], "Audited");
        assert_eq!(conditions[1]["reason"], "NameTaken");
        assert_eq!(
            conditions[1]["lastTransitionTime"], "2025-01-01T00:00:00Z",
            "still False"
        );

        let ready = Observed {
            readiness: Readiness {
                ready: true,
                reason: "Available".into(),
                message: "2/2 replicas ready".into(),
            },
            ..served
        };
        let now_ready = status(&website, &config(), &ready, "2025-01-01T00:07:00Z");
        assert_eq!(
            now_ready["conditions"][1]["lastTransitionTime"],
            "2025-01-01T00:07:00Z"
        );
    }
}
