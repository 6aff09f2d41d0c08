//! The resource quota controller's calls: which quotas an event concerns, the recount's cache
//! reads and the status write.

use std::time::Duration;

use controller_common::{failed, parse};
use flotilla_sdk::cache;
use flotilla_sdk::controller::*;
use quota_usage::{hard, tracked, used};
use serde_json::Value;

use crate::{Counted, RESYNC, Settling, kinds_for, recount, status_update, watched};

/// How soon a quota whose status write conflicted (the policy charged it meanwhile) is
/// recounted.
const CONFLICTED: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ResourceQuotaController {
    settling: Settling,
}

fn reference(quota: &Value) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ResourceQuota".into(),
        namespace: quota["metadata"]["namespace"].as_str().map(str::to_owned),
        name: quota["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The objects of each kind `quota` counts, in its namespace.
fn objects(
    quota: &Value,
    namespace: Option<&str>,
) -> Result<Vec<(&'static Counted, Vec<Value>)>, String> {
    let mut out = Vec::new();
    for kind in kinds_for(&hard(quota)) {
        let listed = cache::list(kind.api_version, kind.kind, namespace, "")
            .map_err(|s| failed(&format!("listing {}", kind.resource), s))?;
        let parsed = listed
            .iter()
            .map(|o| parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((kind, parsed));
    }
    Ok(out)
}

impl Controller for ResourceQuotaController {
    const NAME: &'static str = "resourcequota-controller";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn register(&self) -> Registration {
        watched()
            .fold(
                Registration::new("v1", "ResourceQuota"),
                |registration, kind| {
                    registration.watch(Watch::new(kind.api_version, kind.kind, KeyMapping::Custom))
                },
            )
            .resync_every(RESYNC)
    }

    /// Every quota in the object's namespace that counts its kind.
    fn keys_for(&mut self, watch: u32, object: &str) -> Vec<ObjectRef> {
        let Some(kind) = (watch as usize)
            .checked_sub(1)
            .and_then(|index| watched().nth(index))
        else {
            return Vec::new();
        };
        let Ok(object) = parse(object) else {
            return Vec::new();
        };
        let Some(namespace) = object["metadata"]["namespace"].as_str() else {
            return Vec::new();
        };
        cache::list("v1", "ResourceQuota", Some(namespace), "")
            .unwrap_or_default()
            .iter()
            .filter_map(|quota| parse(quota).ok())
            .filter(|quota| !tracked(&hard(quota), kind.resource, kind.group).is_empty())
            .map(|quota| reference(&quota))
            .collect()
    }

    fn reconcile(&mut self, key: ObjectRef) -> Result<Option<Duration>, String> {
        let namespace = key.namespace.as_deref();
        let Some(quota) = cache::get("v1", "ResourceQuota", namespace, &key.name)
            .map_err(|s| failed("reading the resource quota", s))?
        else {
            self.settling.done(&key);
            return Ok(None);
        };
        let quota = parse(&quota)?;
        let counted = recount(&quota, &objects(&quota, namespace)?);
        let now = flotilla_sdk::host::now();
        let decision = self.settling.decide(&key, &used(&quota), &counted, now);
        if let Some(updated) = status_update(&quota, &decision.used) {
            match api::update_subresource(&updated.to_string(), "status") {
                Ok(_) => {}
                Err(status) if status.code == 404 => {
                    self.settling.done(&key);
                    return Ok(None);
                }
                Err(status) if status.code == 409 => return Ok(Some(CONFLICTED)),
                Err(status) => return Err(failed("writing the quota's status", status)),
            }
        }
        if decision.again.is_none() {
            self.settling.done(&key);
        }
        Ok(decision.again)
    }
}

flotilla_sdk::export_controller!(ResourceQuotaController);

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, MutexGuard};

    use flotilla_sdk::cache::Selection;
    use flotilla_sdk::native::{NativeHost, set_native_host};
    use serde_json::json;

    use super::*;
    use crate::SETTLE;

    static SERIAL: Mutex<()> = Mutex::new(());

    /// A cache of objects and an API server that is the same store; status writes check the
    /// resourceVersion.
    #[derive(Default)]
    struct Fake {
        objects: Mutex<Vec<Value>>,
        writes: Mutex<u32>,
    }

    fn refused<T>() -> Result<T, Status> {
        Err(Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "not used by the resource quota controller".into(),
        })
    }

    impl Fake {
        fn select(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
            self.objects
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o["apiVersion"] == api_version && o["kind"] == kind)
                .filter(|o| namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns))
                .cloned()
                .collect()
        }
    }

    impl NativeHost for Fake {
        fn get(
            &self,
            api_version: &str,
            kind: &str,
            namespace: Option<&str>,
            name: &str,
        ) -> Result<Option<String>, Status> {
            Ok(self
                .select(api_version, kind, namespace)
                .into_iter()
                .find(|o| o["metadata"]["name"] == name)
                .map(|o| o.to_string()))
        }

        fn list(
            &self,
            api_version: &str,
            kind: &str,
            namespace: Option<&str>,
            _label_selector: &str,
        ) -> Result<Vec<String>, Status> {
            Ok(self
                .select(api_version, kind, namespace)
                .iter()
                .map(Value::to_string)
                .collect())
        }

        fn query(&self, _: &str, _: &str, _: &Selection) -> Result<Vec<String>, Status> {
            refused()
        }

        fn create(&self, _: &str) -> Result<String, Status> {
            refused()
        }

        fn update(&self, _: &str) -> Result<String, Status> {
            refused()
        }

        fn update_status(&self, _: &str) -> Result<String, Status> {
            refused()
        }

        fn patch(&self, _: &ObjectRef, _: PatchType, _: &str) -> Result<String, Status> {
            refused()
        }

        fn delete(&self, _: &ObjectRef, _: &DeleteOptions) -> Result<(), Status> {
            refused()
        }

        fn emit_event(&self, _: &Event) -> Result<(), Status> {
            refused()
        }

        fn resources(&self) -> Result<Vec<ApiResource>, Status> {
            refused()
        }

        fn delete_collection(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: &str,
        ) -> Result<Remaining, Status> {
            refused()
        }

        fn update_subresource(&self, object: &str, subresource: &str) -> Result<String, Status> {
            assert_eq!(subresource, "status");
            let written: Value = serde_json::from_str(object).unwrap();
            *self.writes.lock().unwrap() += 1;
            let mut objects = self.objects.lock().unwrap();
            let stored = objects
                .iter_mut()
                .find(|o| {
                    o["kind"] == "ResourceQuota"
                        && o["metadata"]["name"] == written["metadata"]["name"]
                })
                .expect("the quota exists");
            assert_eq!(
                stored["metadata"]["resourceVersion"],
                written["metadata"]["resourceVersion"]
            );
            stored["status"] = written["status"].clone();
            Ok(stored.to_string())
        }
    }

    fn with_objects(objects: Vec<Value>) -> (Arc<Fake>, MutexGuard<'static, ()>) {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let fake = Arc::new(Fake::default());
        *fake.objects.lock().unwrap() = objects;
        set_native_host(fake.clone());
        (fake, serial)
    }

    fn quota(name: &str, hard: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": name, "namespace": "team", "resourceVersion": "1"},
            "spec": {"hard": hard}})
    }

    fn object(api_version: &str, kind: &str, namespace: &str, name: &str) -> Value {
        json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": namespace}})
    }

    fn pod(namespace: &str, name: &str, cpu: &str) -> Value {
        let mut pod = object("v1", "Pod", namespace, name);
        pod["spec"] = json!({"containers": [{"name": "app",
            "resources": {"requests": {"cpu": cpu}}}]});
        pod
    }

    fn key(name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: "ResourceQuota".into(),
            namespace: Some("team".into()),
            name: name.into(),
        }
    }

    fn stored_status(fake: &Fake, name: &str) -> Value {
        fake.select("v1", "ResourceQuota", Some("team"))
            .into_iter()
            .find(|q| q["metadata"]["name"] == name)
            .unwrap()["status"]
            .clone()
    }

    #[test]
    fn registers_the_counted_kinds_with_a_resync() {
        let registration = ResourceQuotaController::default().register();
        assert_eq!(registration.primary_kind, "ResourceQuota");
        assert_eq!(registration.watches.len(), 11);
        assert!(
            registration.watches[1..]
                .iter()
                .all(|w| w.mapping == KeyMapping::Custom)
        );
        assert_eq!(registration.watches[5].kind, "Deployment");
        assert_eq!(registration.watches[10].kind, "CronJob");
        assert_eq!(registration.resync, Some(RESYNC));
    }

    #[test]
    fn an_event_concerns_the_quotas_of_its_namespace_that_count_its_kind() {
        let (_fake, _serial) = with_objects(vec![
            quota("pods", json!({"pods": "5"})),
            quota("maps", json!({"configmaps": "5"})),
            quota("deployments", json!({"count/deployments.apps": "5"})),
        ]);
        let mut controller = ResourceQuotaController::default();
        let event = pod("team", "web", "1").to_string();
        assert_eq!(controller.keys_for(1, &event), vec![key("pods")]);
        let deployment = object("apps/v1", "Deployment", "team", "web").to_string();
        assert_eq!(
            controller.keys_for(5, &deployment),
            vec![key("deployments")]
        );
        let elsewhere = pod("other", "web", "1").to_string();
        assert!(controller.keys_for(1, &elsewhere).is_empty());
        assert!(controller.keys_for(0, &event).is_empty());
        assert!(controller.keys_for(99, &event).is_empty());
    }

    #[test]
    fn a_quota_is_recounted_and_written_once() {
        let (fake, _serial) = with_objects(vec![
            quota(
                "compute",
                json!({"pods": 5, "requests.cpu": "2000m", "count/deployments.apps": "3",
                    "count/widgets.example.com": "1"}),
            ),
            pod("team", "a", "500m"),
            pod("team", "b", "250m"),
            pod("other", "c", "1"),
            object("apps/v1", "Deployment", "team", "web"),
        ]);
        let mut controller = ResourceQuotaController::default();
        assert_eq!(controller.reconcile(key("compute")), Ok(None));
        assert_eq!(
            stored_status(&fake, "compute"),
            json!({"hard": {"pods": "5", "requests.cpu": "2", "count/deployments.apps": "3",
                    "count/widgets.example.com": "1"},
                "used": {"pods": "2", "requests.cpu": "750m", "count/deployments.apps": "1"}})
        );
        assert_eq!(controller.reconcile(key("compute")), Ok(None));
        assert_eq!(*fake.writes.lock().unwrap(), 1, "nothing changed");
    }

    #[test]
    fn a_lower_count_waits_to_settle() {
        let mut charged = quota("pods", json!({"pods": "5"}));
        charged["status"] = json!({"hard": {"pods": "5"}, "used": {"pods": "2"}});
        let (fake, _serial) = with_objects(vec![charged, pod("team", "a", "1")]);
        let mut controller = ResourceQuotaController::default();
        let again = controller.reconcile(key("pods")).unwrap();
        assert!(again.is_some_and(|d| d <= SETTLE && d > Duration::ZERO));
        assert_eq!(*fake.writes.lock().unwrap(), 0);
        assert_eq!(stored_status(&fake, "pods")["used"], json!({"pods": "2"}));
    }

    #[test]
    fn a_missing_quota_is_nothing_to_do() {
        let (fake, _serial) = with_objects(Vec::new());
        let mut controller = ResourceQuotaController::default();
        assert_eq!(controller.reconcile(key("gone")), Ok(None));
        assert_eq!(*fake.writes.lock().unwrap(), 0);
    }
}
