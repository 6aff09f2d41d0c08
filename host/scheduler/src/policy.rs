//! What the scheduler calls a policy: the `scheduler` interface of a plugin instance. The
//! scheduler drives [`Policy`] objects; WASM instances are the real ones, and the benchmark
//! gives the same policies compiled natively through this trait to compare the two.

use flotilla_plugin::bindings::scheduling::{Capabilities, Change, FilterResult, Pod, Prepared};
use flotilla_plugin::{PluginError, SchedulerPolicy};

#[async_trait::async_trait]
pub trait Policy: Send {
    fn capabilities(&self) -> Capabilities;
    /// A failed call leaves the policy unusable; the scheduler makes a new one.
    fn is_poisoned(&self) -> bool;
    async fn update(&mut self, changes: &[Change]) -> Result<(), PluginError>;
    async fn prepare(&mut self, pod: &Pod) -> Result<Prepared, PluginError>;
    async fn filter(&mut self, candidates: &[u32]) -> Result<FilterResult, PluginError>;
    async fn score(&mut self, candidates: &[u32]) -> Result<Vec<i64>, PluginError>;
}

#[async_trait::async_trait]
impl Policy for SchedulerPolicy {
    fn capabilities(&self) -> Capabilities {
        SchedulerPolicy::capabilities(self)
    }

    fn is_poisoned(&self) -> bool {
        SchedulerPolicy::is_poisoned(self)
    }

    async fn update(&mut self, changes: &[Change]) -> Result<(), PluginError> {
        SchedulerPolicy::update(self, changes).await
    }

    async fn prepare(&mut self, pod: &Pod) -> Result<Prepared, PluginError> {
        SchedulerPolicy::prepare(self, pod).await
    }

    async fn filter(&mut self, candidates: &[u32]) -> Result<FilterResult, PluginError> {
        SchedulerPolicy::filter(self, candidates).await
    }

    async fn score(&mut self, candidates: &[u32]) -> Result<Vec<i64>, PluginError> {
        SchedulerPolicy::score(self, candidates).await
    }
}

/// Makes policies by plugin name instead of loading WasmPlugins: the benchmark's native peer.
pub trait PolicySource: Send + Sync {
    /// A fresh policy for `plugin` with `config`, or none to load the WasmPlugin as usual.
    fn make(&self, plugin: &str, config: &str) -> Option<Box<dyn Policy>>;
}
