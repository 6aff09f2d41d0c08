//! One pod on this node: its volumes, init containers in order, then its containers, each
//! supervised with the pod's restart policy and Kubernetes' back-off; the status the API
//! server shows (phase, conditions, container states); graceful termination; and the final
//! deletion, which the agent confirms.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::events::Recorder;
use crate::images::{Images, PullPolicy};
use crate::logs::LogWriter;
use crate::probe;
use crate::runtime::{Exit, HttpStats, Kind, Runtime, Sandbox, Workload};
use crate::spec::{self, Placement, Sources};

/// Kubernetes' container restart back-off: 10 s doubling to 5 minutes, reset after a run of
/// 10 minutes.
#[derive(Clone, Copy, Debug)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug)]
struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            next: policy.initial,
        }
    }

    /// The delay before the next restart, after a run of `ran`.
    fn delay(&mut self, ran: Duration) -> Duration {
        if ran >= self.policy.reset_after {
            self.next = self.policy.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        delay
    }
}

/// What every pod on the node shares.
pub(crate) struct NodeContext {
    pub client: kube::Client,
    pub node: String,
    pub host_ip: String,
    pub runtime: Runtime,
    pub images: Arc<Images>,
    pub pods_dir: PathBuf,
    pub backoff: BackoffPolicy,
    /// How often configMap and secret volumes are refreshed.
    pub sync_frequency: Duration,
    pub events: Recorder,
    pub node_cpu_millis: i64,
    pub node_memory: i64,
    /// Where each pod's logs are, for the agent's endpoint.
    pub logs: Arc<crate::server::LogIndex>,
    /// HTTP containers' request counters, by pod uid and container, for tests and status.
    pub http_stats: Mutex<BTreeMap<(String, String), Arc<HttpStats>>>,
    /// Service names for workloads' lookups.
    pub service_names: Option<Arc<dyn crate::runtime::ServiceNames>>,
}

fn now() -> String {
    flotilla_client::now_rfc3339()
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: String,
        finished_at: String,
    },
}

impl State {
    fn waiting(reason: &str, message: Option<String>) -> Self {
        State::Waiting {
            reason: reason.into(),
            message,
        }
    }

    fn json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => json!({"terminated": {"exitCode": exit_code, "reason": reason,
                "message": message, "startedAt": started_at, "finishedAt": finished_at}}),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct ContainerStatus {
    name: String,
    image: String,
    image_id: String,
    restart_count: u32,
    state: State,
    last_state: Option<State>,
    ready: bool,
    started: bool,
}

impl ContainerStatus {
    fn new(container: &Container, restart_count: u32) -> Self {
        Self {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            image_id: String::new(),
            restart_count,
            state: State::waiting("ContainerCreating", None),
            last_state: None,
            ready: false,
            started: false,
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": if self.image_id.is_empty() { Value::Null } else {
                json!(format!("flotilla://{}", self.image_id))
            },
            "restartCount": self.restart_count,
            "state": self.state.json(),
            "lastState": self.last_state.as_ref().map_or(json!({}), State::json),
            "ready": self.ready,
            "started": self.started,
        })
    }

    fn terminated_with(&self) -> Option<i32> {
        match &self.state {
            State::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Status {
    init: Vec<ContainerStatus>,
    containers: Vec<ContainerStatus>,
    initialized: bool,
    /// Set when the pod will run nothing more: `Succeeded` or `Failed`.
    finished: Option<&'static str>,
    start_time: String,
    /// Condition type → (status, lastTransitionTime).
    transitions: BTreeMap<&'static str, (bool, String)>,
}

/// The pod's status, shared by its containers' supervisors and written by one task.
struct Shared {
    status: Mutex<Status>,
    changed: Notify,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_one();
    }

    fn container(&self, init: bool, index: usize, f: impl FnOnce(&mut ContainerStatus)) {
        self.update(|status| {
            let list = if init {
                &mut status.init
            } else {
                &mut status.containers
            };
            if let Some(container) = list.get_mut(index) {
                f(container);
            }
        });
    }
}

impl Status {
    fn phase(&self) -> &'static str {
        if let Some(finished) = self.finished {
            return finished;
        }
        let running = self
            .containers
            .iter()
            .any(|c| matches!(c.state, State::Running { .. }));
        if self.initialized && running {
            "Running"
        } else if self.initialized
            && !self.containers.is_empty()
            && self
                .containers
                .iter()
                .all(|c| c.terminated_with().is_some())
        {
            // Between a container's end and its restart the pod still runs.
            "Running"
        } else {
            "Pending"
        }
    }

    fn json(&mut self, pod_ip: &str, host_ip: &str) -> Value {
        let containers_ready = self.initialized
            && !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready);
        let not_ready: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let mut conditions = Vec::new();
        for (kind, holds) in [
            ("PodReadyToStartContainers", true),
            ("Initialized", self.initialized),
            ("Ready", containers_ready),
            ("ContainersReady", containers_ready),
            ("PodScheduled", true),
        ] {
            let entry = self
                .transitions
                .entry(kind)
                .or_insert_with(|| (holds, now()));
            if entry.0 != holds {
                *entry = (holds, now());
            }
            let mut condition = json!({"type": kind, "status": if holds { "True" } else { "False" },
                "lastProbeTime": null, "lastTransitionTime": entry.1});
            if !holds && (kind == "Ready" || kind == "ContainersReady") {
                condition["reason"] = json!("ContainersNotReady");
                condition["message"] = json!(format!(
                    "containers with unready status: [{}]",
                    not_ready.join(" ")
                ));
            }
            if !holds && kind == "Initialized" {
                condition["reason"] = json!("ContainersNotInitialized");
                let pending: Vec<&str> = self
                    .init
                    .iter()
                    .filter(|c| c.terminated_with() != Some(0))
                    .map(|c| c.name.as_str())
                    .collect();
                condition["message"] = json!(format!(
                    "containers with incomplete status: [{}]",
                    pending.join(" ")
                ));
            }
            conditions.push(condition);
        }
        let mut status = json!({
            "phase": self.phase(),
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": self.containers.iter().map(ContainerStatus::json).collect::<Vec<_>>(),
        });
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(
                self.init
                    .iter()
                    .map(ContainerStatus::json)
                    .collect::<Vec<_>>()
            );
        }
        status
    }
}

/// How one run of a container ended.
enum Attempt {
    /// It ran and ended (or, for an HTTP handler, stopped serving).
    Ended { exit: Exit, ran: Duration },
    /// It could not start: the waiting reason and message.
    NotStarted { reason: String, message: String },
    /// The pod is being stopped.
    Stopped,
}

struct PodRun {
    ctx: Arc<NodeContext>,
    pod: Pod,
    uid: String,
    ip: IpAddr,
    dir: PathBuf,
    shared: Arc<Shared>,
    volumes: BTreeMap<String, PathBuf>,
    stop: CancellationToken,
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn container_field(init: bool, container: &Container) -> String {
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}{{{}}}", container.name)
}

impl PodRun {
    fn container(&self, init: bool, index: usize) -> &Container {
        let spec = self.pod.spec.as_ref().expect("pods have a spec");
        if init {
            &spec
                .init_containers
                .as_ref()
                .expect("index within init containers")[index]
        } else {
            &spec.containers[index]
        }
    }

    fn sources(&self) -> Sources {
        Sources {
            client: self.ctx.client.clone(),
            namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
        }
    }

    fn placement(&self) -> Placement {
        Placement {
            node: self.ctx.node.clone(),
            pod_ip: self.ip.to_string(),
            host_ip: self.ctx.host_ip.clone(),
            node_cpu_millis: self.ctx.node_cpu_millis,
            node_memory: self.ctx.node_memory,
        }
    }

    fn event(
        &self,
        init: bool,
        container: &Container,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        self.ctx.events.pod_event(
            &self.pod,
            Some(container_field(init, container)),
            warning,
            reason,
            message,
        );
    }

    /// Fetches the image and prepares the component.
    async fn workload(&self, init: bool, index: usize) -> Result<Workload, (String, String)> {
        let container = self.container(init, index);
        let image = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::of(container.image_pull_policy.as_deref(), &image);
        let secrets: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .collect();
        let client = self.ctx.client.clone();
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let credentials = async move |registry: &str| {
            crate::events::pull_credentials(client, &namespace, &secrets, registry).await
        };
        let pulled = match self.ctx.images.ensure(&image, policy, credentials).await {
            Ok(pulled) => pulled,
            Err(error) => {
                let message = format!("Failed to pull image \"{image}\": {}", error.message);
                self.event(init, container, true, "Failed", message.clone());
                return Err((error.reason.to_owned(), message));
            }
        };
        if pulled.pulled {
            self.event(
                init,
                container,
                false,
                "Pulled",
                format!("Successfully pulled image \"{image}\""),
            );
        } else {
            self.event(
                init,
                container,
                false,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            );
        }
        self.shared
            .container(init, index, |c| c.image_id = pulled.digest.clone());
        let runtime = self.ctx.runtime.clone();
        let digest = pulled.digest.clone();
        let prepared = tokio::task::spawn_blocking(move || match runtime.prepare_cached(&digest) {
            Some(prepared) => prepared,
            None => std::fs::read(&pulled.path)
                .map_err(|e| crate::runtime::RuntimeError(format!("cannot read the module: {e}")))
                .and_then(|wasm| runtime.prepare(&digest, &wasm)),
        })
        .await
        .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        prepared.map_err(|e| {
            let message = format!("Error: {e}");
            self.event(init, container, true, "Failed", message.clone());
            ("CreateContainerError".to_owned(), message)
        })
    }

    /// One run of a container.
    async fn attempt(&self, init: bool, index: usize, restart: u32) -> Attempt {
        let container = self.container(init, index).clone();
        let workload = tokio::select! {
            workload = self.workload(init, index) => workload,
            () = self.stop.cancelled() => return Attempt::Stopped,
        };
        let workload = match workload {
            Ok(workload) => workload,
            Err((reason, message)) => return Attempt::NotStarted { reason, message },
        };
        if init && workload.kind == Kind::Http {
            return Attempt::NotStarted {
                reason: "CreateContainerError".into(),
                message: "an init container must be a wasi:cli command, not a wasi:http handler"
                    .into(),
            };
        }
        let sources = self.sources();
        let env = match spec::environment(&self.pod, &container, &self.placement(), &sources).await
        {
            Ok(env) => env,
            Err(error) => {
                self.event(init, &container, true, "Failed", format!("Error: {error}"));
                return Attempt::NotStarted {
                    reason: "CreateContainerConfigError".into(),
                    message: error.0,
                };
            }
        };
        let preopens = match spec::preopens(&container, &self.volumes) {
            Ok(preopens) => preopens,
            Err(error) => {
                return Attempt::NotStarted {
                    reason: "CreateContainerConfigError".into(),
                    message: error.0,
                };
            }
        };
        let log = match LogWriter::create(&self.dir.join("logs"), &container.name, restart) {
            Ok(log) => {
                self.ctx
                    .logs
                    .writing(log.path().to_owned(), log.subscribe());
                Arc::new(log)
            }
            Err(error) => {
                return Attempt::NotStarted {
                    reason: "CreateContainerError".into(),
                    message: format!("cannot open the log: {error}"),
                };
            }
        };
        let sandbox = Sandbox {
            args: spec::argv(&container, &env),
            env,
            preopens,
            output: log.clone(),
            pod_ip: self.ip,
            memory_limit: spec::memory_limit(&container),
            cpu_millis: spec::cpu_limit(&container),
            names: self.ctx.service_names.clone().map(|names| {
                let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
                (names, namespace)
            }),
        };
        self.event(
            init,
            &container,
            false,
            "Created",
            format!("Created container {}", container.name),
        );
        let started = Instant::now();
        let started_at = now();
        let exit = match workload.kind {
            Kind::Command => {
                let (started, ready) = if init {
                    (true, false)
                } else {
                    initially(&container)
                };
                self.shared.container(init, index, |c| {
                    c.state = State::Running {
                        started_at: started_at.clone(),
                    };
                    c.started = started;
                    c.ready = ready;
                });
                self.event(
                    init,
                    &container,
                    false,
                    "Started",
                    format!("Started container {}", container.name),
                );
                let kill = CancellationToken::new();
                let probes = async {
                    if !init {
                        self.probe(index, &container, &workload, &sandbox, &kill)
                            .await;
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    exit = self.ctx.runtime.run_command(&workload, &sandbox) => exit,
                    // Stopped: as a process that does not handle SIGTERM.
                    () = self.stop.cancelled() => Exit::Code(143),
                    // Failed its liveness or startup probe: killed.
                    () = kill.cancelled() => Exit::Code(137),
                    () = probes => unreachable!("probes never end by themselves"),
                }
            }
            Kind::Http => {
                self.serve(index, &container, &workload, sandbox, &started_at)
                    .await
            }
        };
        log.close();
        self.ctx.logs.finished(log.path());
        let ran = started.elapsed();
        let finished_at = now();
        let message = match &exit {
            Exit::Trapped(trap) => Some(trap.clone()),
            Exit::OomKilled { limit } => Some(format!("memory limit of {limit} bytes reached")),
            Exit::Code(_) => None,
        };
        self.shared.container(init, index, |c| {
            c.state = State::Terminated {
                exit_code: exit.code(),
                reason: exit.reason().into(),
                message,
                started_at,
                finished_at,
            };
            c.ready = false;
            c.started = false;
        });
        if self.stop.is_cancelled() {
            return Attempt::Stopped;
        }
        Attempt::Ended { exit, ran }
    }

    /// Serves an HTTP handler on every TCP port the container declares (8080 when it declares
    /// none) until the pod stops, then drains requests in flight within the grace period.
    async fn serve(
        &self,
        index: usize,
        container: &Container,
        workload: &Workload,
        sandbox: Sandbox,
        started_at: &str,
    ) -> Exit {
        let mut ports: Vec<u16> = container
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        if ports.is_empty() {
            ports.push(8080);
        }
        let mut listeners = Vec::new();
        for port in &ports {
            match tokio::net::TcpListener::bind((self.ip, *port)).await {
                Ok(listener) => listeners.push(listener),
                Err(error) => {
                    return Exit::Trapped(format!("cannot listen on {}:{port}: {error}", self.ip));
                }
            }
        }
        let stats = Arc::new(HttpStats::default());
        self.ctx
            .http_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((self.uid.clone(), container.name.clone()), stats.clone());
        let (started, ready) = initially(container);
        self.shared.container(false, index, |c| {
            c.state = State::Running {
                started_at: started_at.to_owned(),
            };
            c.started = started;
            c.ready = ready;
        });
        self.event(
            false,
            container,
            false,
            "Started",
            format!("Started container {}", container.name),
        );
        let stop_serving = CancellationToken::new();
        let servers = listeners.into_iter().map(|listener| {
            self.ctx.runtime.serve_http(
                workload,
                sandbox.clone(),
                listener,
                stop_serving.clone(),
                stats.clone(),
            )
        });
        let all = futures::future::join_all(servers);
        tokio::pin!(all);
        let kill = CancellationToken::new();
        let probes = async {
            self.probe(index, container, workload, &sandbox, &kill)
                .await;
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = &mut all => Exit::Code(0),
            () = self.stop.cancelled() => {
                stop_serving.cancel();
                let grace = grace_period(&self.pod);
                let _ = tokio::time::timeout(grace, all).await;
                Exit::Code(0)
            }
            () = kill.cancelled() => {
                stop_serving.cancel();
                Exit::Code(137)
            }
            () = probes => unreachable!("probes never end by themselves"),
        }
    }

    /// Runs the container's probes while it runs: the startup probe first, then liveness and
    /// readiness. A failed startup or liveness probe cancels `kill`; readiness sets `ready`.
    async fn probe(
        &self,
        index: usize,
        container: &Container,
        workload: &Workload,
        sandbox: &Sandbox,
        kill: &CancellationToken,
    ) {
        let target = probe::Target {
            pod_ip: self.ip,
            container,
            runtime: &self.ctx.runtime,
            workload,
            sandbox,
        };
        if let Some(startup) = &container.startup_probe {
            if !self
                .probe_until(probe::Kind::Startup, startup, &target, index)
                .await
            {
                kill.cancel();
                return;
            }
            self.shared.container(false, index, |c| {
                c.started = true;
                c.ready = container.readiness_probe.is_none();
            });
        }
        let liveness = async {
            if let Some(liveness) = &container.liveness_probe
                && !self
                    .probe_until(probe::Kind::Liveness, liveness, &target, index)
                    .await
            {
                self.event(
                    false,
                    container,
                    false,
                    "Killing",
                    format!(
                        "Container {} failed liveness probe, will be restarted",
                        container.name
                    ),
                );
                kill.cancel();
            }
        };
        let readiness = async {
            if let Some(readiness) = &container.readiness_probe {
                self.probe_until(probe::Kind::Readiness, readiness, &target, index)
                    .await;
            }
        };
        futures::future::join(liveness, readiness).await;
    }

    /// Runs one probe at its period. Startup probes end at their first success (true);
    /// liveness probes run until they fail `failureThreshold` times in a row (false);
    /// readiness probes run for the container's life, setting `ready`.
    async fn probe_until(
        &self,
        kind: probe::Kind,
        spec: &k8s_openapi::api::core::v1::Probe,
        target: &probe::Target<'_>,
        index: usize,
    ) -> bool {
        let timing = probe::Timing::of(spec);
        tokio::time::sleep(timing.initial_delay).await;
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut ticker = tokio::time::interval(timing.period);
        loop {
            ticker.tick().await;
            match probe::check(spec, &timing, target).await {
                Ok(()) => {
                    failures = 0;
                    successes += 1;
                    if successes >= timing.success_threshold {
                        match kind {
                            probe::Kind::Startup => return true,
                            probe::Kind::Readiness => {
                                self.shared.container(false, index, |c| c.ready = true)
                            }
                            probe::Kind::Liveness => {}
                        }
                    }
                }
                Err(message) => {
                    successes = 0;
                    failures += 1;
                    self.event(
                        false,
                        target.container,
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {message}", kind.name()),
                    );
                    if failures >= timing.failure_threshold {
                        match kind {
                            probe::Kind::Readiness => {
                                self.shared.container(false, index, |c| c.ready = false)
                            }
                            _ => return false,
                        }
                    }
                }
            }
        }
    }

    /// Runs the init containers in order; false when the pod failed.
    async fn initialize(&self) -> bool {
        let count = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map_or(0, Vec::len);
        let never = restart_policy(&self.pod) == "Never";
        for index in 0..count {
            let mut backoff = Backoff::new(self.ctx.backoff);
            let mut restart = 0;
            loop {
                match self.attempt(true, index, restart).await {
                    Attempt::Stopped => return false,
                    Attempt::Ended {
                        exit: Exit::Code(0),
                        ..
                    } => break,
                    Attempt::Ended { ran, .. } if !never => {
                        if !self.back_off(true, index, &mut backoff, ran).await {
                            return false;
                        }
                    }
                    Attempt::NotStarted { reason, message } => {
                        self.shared.container(true, index, |c| {
                            c.state = State::waiting(&reason, Some(message))
                        });
                        if !self
                            .back_off(true, index, &mut backoff, Duration::ZERO)
                            .await
                        {
                            return false;
                        }
                        continue;
                    }
                    Attempt::Ended { .. } => {
                        self.shared.update(|s| s.finished = Some("Failed"));
                        return false;
                    }
                }
                restart += 1;
                self.shared.container(true, index, |c| {
                    // The next run is being made: the back-off's message is over.
                    c.restart_count = restart;
                    c.state = State::waiting("ContainerCreating", None);
                });
            }
        }
        self.shared.update(|s| s.initialized = true);
        true
    }

    /// Waits out a restart's back-off, saying so in the container's state; false when the pod
    /// stops meanwhile.
    async fn back_off(
        &self,
        init: bool,
        index: usize,
        backoff: &mut Backoff,
        ran: Duration,
    ) -> bool {
        let delay = backoff.delay(ran);
        let container = self.container(init, index).clone();
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let message = format!(
            "back-off {}s restarting failed container={} pod={pod_name}_{namespace}({})",
            delay.as_secs(),
            container.name,
            self.uid
        );
        self.shared.container(init, index, |c| {
            if let State::Terminated { .. } = &c.state {
                c.last_state = Some(c.state.clone());
                c.state = State::waiting("CrashLoopBackOff", Some(message.clone()));
            }
        });
        self.event(
            init,
            &container,
            true,
            "BackOff",
            "Back-off restarting failed container".into(),
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// Supervises one container for the pod's life.
    async fn supervise(self: Arc<Self>, index: usize, first_restart: u32) {
        let policy = restart_policy(&self.pod).to_owned();
        let mut backoff = Backoff::new(self.ctx.backoff);
        let mut restart = first_restart;
        loop {
            let ran = match self.attempt(false, index, restart).await {
                Attempt::Stopped => return,
                Attempt::NotStarted { reason, message } => {
                    self.shared.container(false, index, |c| {
                        c.state = State::waiting(&reason, Some(message))
                    });
                    if !self
                        .back_off(false, index, &mut backoff, Duration::ZERO)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                Attempt::Ended { exit, ran } => {
                    let again = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => exit.code() != 0,
                        _ => true,
                    };
                    if !again {
                        self.settle();
                        return;
                    }
                    ran
                }
            };
            if !self.back_off(false, index, &mut backoff, ran).await {
                return;
            }
            restart += 1;
            self.shared.container(false, index, |c| {
                // The next run is being made: the back-off's message is over.
                c.restart_count = restart;
                c.state = State::waiting("ContainerCreating", None);
            });
        }
    }

    /// When every container has ended for good, the pod has Succeeded or Failed.
    fn settle(&self) {
        self.shared.update(|status| {
            let codes: Option<Vec<i32>> = status
                .containers
                .iter()
                .map(ContainerStatus::terminated_with)
                .collect();
            if let Some(codes) = codes {
                status.finished = Some(if codes.iter().all(|&c| c == 0) {
                    "Succeeded"
                } else {
                    "Failed"
                });
            }
        });
    }
}

/// A container's `started` and `ready` when it starts: not started while a startup probe has
/// yet to pass, not ready while a readiness probe has yet to pass.
fn initially(container: &Container) -> (bool, bool) {
    let started = container.startup_probe.is_none();
    (started, started && container.readiness_probe.is_none())
}

fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// Writes the pod's status whenever it changes, coalescing bursts of changes into one write.
async fn write_status(
    api: Api<Pod>,
    name: String,
    shared: Arc<Shared>,
    pod_ip: String,
    host_ip: String,
    done: CancellationToken,
) {
    let mut last = Value::Null;
    loop {
        let finishing = tokio::select! {
            () = shared.changed.notified() => false,
            () = done.cancelled() => true,
        };
        let status = shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .json(&pod_ip, &host_ip);
        if status != last {
            let patch = json!({"status": status});
            let mut delay = Duration::from_millis(100);
            loop {
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 404 => return,
                    Err(error) => {
                        tracing::warn!(pod = name, "cannot write the pod's status: {error}");
                        if done.is_cancelled() {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            last = status;
        }
        if finishing {
            return;
        }
    }
}

fn restart_counts(pod: &Pod, init: bool) -> BTreeMap<String, u32> {
    let status = pod.status.as_ref();
    let list = if init {
        status.and_then(|s| s.init_container_statuses.as_ref())
    } else {
        status.and_then(|s| s.container_statuses.as_ref())
    };
    list.into_iter()
        .flatten()
        .filter(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
        .map(|c| (c.name.clone(), c.restart_count as u32 + 1))
        .collect()
}

/// Runs a pod until it is deleted, then confirms the deletion. `updates` carries every newer
/// version of the pod the agent sees.
pub(crate) async fn run(ctx: Arc<NodeContext>, mut updates: watch::Receiver<Pod>, ip: IpAddr) {
    let pod = updates.borrow_and_update().clone();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let dir = ctx.pods_dir.join(&uid);
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();

    // A pod that already ran to its end is not run again, after an agent restart either.
    let stop = CancellationToken::new();
    let already_finished = phase == "Succeeded" || phase == "Failed";
    // Containers that ran before (an agent restart) go on counting their restarts.
    let (init_restarts, restarts) = (restart_counts(&pod, true), restart_counts(&pod, false));
    let shared = Arc::new(Shared {
        status: Mutex::new(Status {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| ContainerStatus::new(c, init_restarts.get(&c.name).copied().unwrap_or(0)))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerStatus::new(c, restarts.get(&c.name).copied().unwrap_or(0)))
                .collect(),
            initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
            finished: None,
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(now, |t| {
                    t.0.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
                }),
            transitions: BTreeMap::new(),
        }),
        changed: Notify::new(),
    });
    let writer_done = CancellationToken::new();
    let writer = if already_finished {
        None
    } else {
        Some(tokio::spawn(write_status(
            api.clone(),
            name.clone(),
            shared.clone(),
            ip.to_string(),
            ctx.host_ip.clone(),
            writer_done.clone(),
        )))
    };
    shared.changed.notify_one();

    let sources = Sources {
        client: ctx.client.clone(),
        namespace: namespace.clone(),
    };
    let volumes_dir = dir.join("volumes");
    ctx.logs.add_pod(&namespace, &name, dir.join("logs"));
    let run = async {
        if already_finished {
            return;
        }
        let volumes = match spec::volumes(&pod, &volumes_dir, &sources).await {
            Ok(volumes) => volumes,
            Err(error) => {
                ctx.events
                    .pod_event(&pod, None, true, "FailedMount", error.0.clone());
                shared.update(|s| {
                    for c in s.init.iter_mut().chain(s.containers.iter_mut()) {
                        c.state =
                            State::waiting("CreateContainerConfigError", Some(error.0.clone()));
                    }
                });
                // A missing ConfigMap or Secret may be created later: try again.
                let mut backoff = Backoff::new(ctx.backoff);
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(backoff.delay(Duration::ZERO)) => {}
                        () = stop.cancelled() => return,
                    }
                    if let Ok(volumes) = spec::volumes(&pod, &volumes_dir, &sources).await {
                        break volumes;
                    }
                }
            }
        };
        let run = Arc::new(PodRun {
            ctx: ctx.clone(),
            pod: pod.clone(),
            uid: uid.clone(),
            ip,
            dir: dir.clone(),
            shared: shared.clone(),
            volumes,
            stop: stop.clone(),
        });
        if !run.initialize().await {
            return;
        }
        let supervisors = (0..spec.containers.len()).map(|index| {
            let first = restarts
                .get(&spec.containers[index].name)
                .copied()
                .unwrap_or(0);
            tokio::spawn(run.clone().supervise(index, first))
        });
        futures::future::join_all(supervisors).await;
    };
    tokio::pin!(run);

    // Run until the pod is marked for deletion (or vanishes), refreshing configMap and secret
    // volumes as the pod's own updates arrive and every sync period.
    let mut refresh = tokio::time::interval(ctx.sync_frequency);
    let mut ran_out = false;
    loop {
        let deleting = updates.borrow().metadata.deletion_timestamp.is_some();
        if deleting {
            break;
        }
        tokio::select! {
            () = &mut run, if !ran_out => ran_out = true,
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = refresh.tick() => {
                let current = updates.borrow().clone();
                spec::refresh_volumes(&current, &volumes_dir, &sources).await;
            }
        }
    }
    let gone = updates.has_changed().is_err();
    let latest = updates.borrow().clone();
    let grace = grace_period(&latest);
    for container in &spec.containers {
        ctx.events.pod_event(
            &latest,
            Some(container_field(false, container)),
            false,
            "Killing",
            format!("Stopping container {}", container.name),
        );
    }
    stop.cancel();
    // The containers stop within the grace period (HTTP handlers drain their requests); a pod
    // whose containers all finished has nothing left to stop.
    if !ran_out {
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), &mut run).await;
    }
    writer_done.cancel();
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    ctx.http_stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(pod_uid, _), _| *pod_uid != uid);
    if !gone {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match api.delete(&name, &params).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
                Err(error) => {
                    tracing::warn!(pod = name, "cannot confirm the pod's deletion: {error}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    ctx.logs.remove_pod(&namespace, &name);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap_and_resets_after_a_long_run() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.delay(Duration::ZERO).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff.delay(Duration::from_secs(600)).as_secs(), 10);
    }
}
