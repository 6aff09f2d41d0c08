//! Instances of one policy's plugin: reviews run concurrently on up to [`MAX_INSTANCES`]
//! instances, made on demand and kept while they stay healthy.

use std::sync::Mutex;

use flotilla_plugin::bindings::admission::{Request, Response};
use flotilla_plugin::{AdmissionPolicy, Limits, Module, Services};
use tokio::sync::Semaphore;

/// Most reviews one policy runs at once; more wait for an instance.
pub const MAX_INSTANCES: usize = 4;

#[derive(Debug)]
pub struct Pool {
    pub module: Module,
    /// The plugin's own version, from `meta.info`.
    pub version: String,
    limits: Limits,
    services: Services,
    idle: Mutex<Vec<AdmissionPolicy>>,
    permits: Semaphore,
}

impl Pool {
    /// A pool for `module`, its first instance made and self-checked: a module that cannot
    /// serve is refused here, before any request reaches it.
    pub async fn start(module: Module, limits: Limits, services: Services) -> Result<Self, String> {
        let mut instance = module
            .instantiate(limits.clone(), services.clone())
            .await
            .map_err(|e| e.to_string())?;
        let info = instance.info().await.map_err(|e| e.to_string())?;
        instance.self_check().await.map_err(|e| e.to_string())?;
        let first = AdmissionPolicy::new(instance).map_err(|e| e.to_string())?;
        Ok(Self {
            module,
            version: info.version,
            limits,
            services,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(MAX_INSTANCES),
        })
    }

    fn take(&self) -> Option<AdmissionPolicy> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, instance: AdmissionPolicy) {
        if !instance.is_poisoned() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(instance);
        }
    }

    async fn instance(&self) -> Result<AdmissionPolicy, String> {
        if let Some(instance) = self.take() {
            return Ok(instance);
        }
        let instance = self
            .module
            .instantiate(self.limits.clone(), self.services.clone())
            .await
            .map_err(|e| e.to_string())?;
        AdmissionPolicy::new(instance).map_err(|e| e.to_string())
    }

    /// One review. A failed call's instance is dropped, the next call gets a fresh one.
    pub async fn review(&self, request: &Request) -> Result<Response, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let mut instance = self.instance().await?;
        let result = instance.review(request).await;
        self.give_back(instance);
        result.map_err(|e| e.to_string())
    }

    /// The plugin's verdict on settings.
    pub async fn validate_settings(&self, settings: &str) -> Result<(), String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let mut instance = self.instance().await?;
        let result = instance.validate_settings(settings).await;
        self.give_back(instance);
        result.map_err(|e| match e.failure {
            flotilla_plugin::Failure::Reported(message) => message,
            _ => e.to_string(),
        })
    }
}
