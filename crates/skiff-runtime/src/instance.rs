//! Instances: the containers of one revision sharing a network namespace, started in the OCI
//! runtime, probed, restarted when they crash or fail liveness, stopped gracefully, and torn
//! down completely.
//!
//! # Design
//! Each container of an instance has a supervisor task: start (overlay rootfs, spec, `runc run
//! -d`), wait for the process to end (the [`Reaper`]) while running its startup and liveness
//! probes, and on an unexpected exit record why (exit code, `OOMKilled`), then restart with
//! exponential backoff (Kubernetes' `CrashLoopBackOff`). An instance task probes readiness:
//! aggressively (every few milliseconds) until the instance is first ready, so a cold start
//! is noticed at once, then at the probe's period. Status changes are published on a `watch`
//! channel and broadcast as [`InstanceEvent`]s.
//!
//! Layout: `<run_dir>/instances/<id>/` holds `netns` (the pinned namespace), `etc/`, volumes,
//! and per container `c<N>/` with `config.json`, `rootfs/`, `upper/`, `work/` and the
//! stdout/stderr FIFOs. Runtime container ids are `skiff-<instance>-c<N>`; cgroups are
//! `/skiff/<instance>-c<N>`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use skiff_api::wire::ProbeFailure;
pub use skiff_api::wire::{
    ContainerStatus, InstanceStatus, Phase, StartKind, StartupPhases, Termination,
};

use crate::cgroups::{self, Usage};
use crate::logs::{self, LogSource, LogStore, PumpTarget, Tail};
use crate::netns::{Connector, InstanceNetwork, NetNs, NetnsError};
use crate::oci::{OciError, OciRuntime};
use crate::probe::{ProbeSpec, Prober};
use crate::reaper::{Exit, Reaper};
use crate::rootfs::{self, ResolvedUser};
use crate::spec::{self, ContainerConfig, VolumeMount};

/// The cgroup parent of every instance container.
pub const CGROUP_PARENT: &str = "/skiff";
/// Prefix of every runtime container id.
pub const CONTAINER_PREFIX: &str = "skiff-";
/// How long a container's exit waits for its log pumps to read what it wrote last (a child
/// that keeps its output open must not hold the exit up).
const PUMP_DRAIN: Duration = Duration::from_millis(500);

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where instances live (`<data_dir>/run`).
    pub run_dir: PathBuf,
    /// Where logs live (`<data_dir>/logs`).
    pub logs_dir: PathBuf,
    /// `runc` or `crun`.
    pub runtime: String,
    /// Default pids limit of a container.
    pub pids_limit: i64,
    /// First crash-loop backoff.
    pub restart_backoff: Duration,
    /// Longest crash-loop backoff.
    pub restart_backoff_max: Duration,
    /// Log rotation.
    pub log_rotation: logs::Rotation,
    /// How long a container has between SIGTERM and SIGKILL when it is stopped (Cloud Run
    /// gives 10 s). Draining requests in flight comes before and is not counted here.
    pub termination_grace: Duration,
}

impl RuntimeOptions {
    /// Defaults under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        RuntimeOptions {
            run_dir: data_dir.join("run"),
            logs_dir: data_dir.join("logs"),
            runtime: "runc".into(),
            pids_limit: 1024,
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(300),
            log_rotation: logs::Rotation::default(),
            termination_grace: Duration::from_secs(10),
        }
    }
}

/// A volume of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumePlan {
    /// The volume's name.
    pub name: String,
    /// A tmpfs inside each container (`medium: Memory`) rather than one shared by them.
    pub memory: bool,
    /// Size of the tmpfs (the shared one of a disk emptyDir is a tmpfs too, so that it is
    /// bounded; `None` in plans made before then: a plain directory).
    pub size_limit: Option<u64>,
    /// A volume of Secret and ConfigMap keys: a tmpfs holding [`VolumePlan::files`], mounted
    /// read-only.
    #[serde(default)]
    pub config: bool,
    /// The files of a `config` volume. Never serialized: the plan is recorded in the store,
    /// and a Secret's value must not be.
    #[serde(skip)]
    pub files: VolumeFiles,
}

/// One file of a Secret or ConfigMap volume.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Relative path in the volume (checked: no `..`, not absolute).
    pub path: String,
    /// Mode bits.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

/// The files of a volume. `Debug` shows paths and sizes only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VolumeFiles(pub Vec<VolumeFile>);

impl std::fmt::Debug for VolumeFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|v| (&v.path, format!("<{} bytes, {:o}>", v.data.len(), v.mode))),
            )
            .finish()
    }
}

impl VolumeFiles {
    /// The tmpfs size that holds them: their bytes, a page per file and directory, and
    /// room to spare.
    pub fn tmpfs_size(&self) -> u64 {
        let bytes: u64 = self
            .0
            .iter()
            .map(|f| f.data.len().next_multiple_of(4096) as u64)
            .sum();
        bytes + (self.0.len() as u64 * 2 + 16) * 4096 + (1 << 20)
    }

    /// Writes the files under `dir` (directories 0755), each with its mode.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for f in &self.0 {
            let rel: PathBuf = f
                .path
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .collect();
            if rel.as_os_str().is_empty()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(std::io::Error::other(format!(
                    "`{}` is not a path inside the volume",
                    f.path
                )));
            }
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &f.data)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
        }
        Ok(())
    }
}

/// Where a volume appears in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPlan {
    /// The volume.
    pub volume: String,
    /// The path in the container.
    pub path: String,
    /// Read-only.
    pub read_only: bool,
    /// A sub-directory of the volume.
    pub sub_path: Option<String>,
}

/// Who a container runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPlan {
    /// `securityContext.runAsUser`.
    pub run_as_user: Option<u32>,
    /// `securityContext.runAsGroup`.
    pub run_as_group: Option<u32>,
    /// The image config's `User`.
    pub image_user: Option<String>,
    /// `securityContext.runAsNonRoot`.
    pub run_as_non_root: bool,
}

/// Environment variables whose values come from Secrets. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub Vec<(String, String)>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// One container of an instance, fully resolved by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPlan {
    /// The container's name.
    pub name: String,
    /// The image's unpacked layers, top first.
    pub lowers: Vec<PathBuf>,
    /// argv.
    pub args: Vec<String>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Environment from Secrets (names distinct from `env`'s). Never serialized: the plan
    /// is recorded in the store for re-adoption, and a Secret's value must not be. A plan
    /// read back from the store has none until the daemon fills them in again.
    #[serde(skip)]
    pub secret_env: SecretEnv,
    /// Working directory (image's or the manifest's).
    pub working_dir: Option<String>,
    /// Who it runs as.
    pub user: UserPlan,
    /// Read-only root filesystem.
    pub read_only_rootfs: bool,
    /// Capabilities (bounding set).
    pub capabilities: Vec<String>,
    /// Default seccomp profile on.
    pub seccomp: bool,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Memory request in bytes (what it is billed for without a limit).
    #[serde(default)]
    pub memory_request: Option<i64>,
    /// The bound of the writable layer, in bytes: its upper directory is a tmpfs of this
    /// size (charged to the container's memory). `None` in plans made before it existed:
    /// the upper directory is then a plain directory in the data directory.
    #[serde(default)]
    pub scratch_limit: Option<u64>,
    /// CFS quota (µs per 100 ms).
    pub cpu_quota: Option<i64>,
    /// CPU shares.
    pub cpu_shares: Option<u64>,
    /// Volume mounts.
    pub mounts: Vec<MountPlan>,
    /// Readiness probe (the serving container gets a TCP one by default).
    pub readiness: Option<ProbeSpec>,
    /// Liveness probe.
    pub liveness: Option<ProbeSpec>,
    /// Startup probe.
    pub startup: Option<ProbeSpec>,
}

/// Everything needed to run an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePlan {
    /// The instance id (also its hostname).
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
    /// The containers.
    pub containers: Vec<ContainerPlan>,
    /// Index of the container serving the port.
    pub serving: usize,
    /// The port.
    pub port: u16,
    /// Volumes.
    pub volumes: Vec<VolumePlan>,
    /// How long retiring the instance waits for its requests in flight before stopping it
    /// (the revision's `timeoutSeconds`). The daemon drains; the runtime never reads it.
    /// Records written before it had this name call it `stopGrace`.
    #[serde(alias = "stopGrace")]
    pub drain_timeout: Duration,
    /// The revision's `skiff.dev/egress` annotation, if it has one (the daemon's
    /// `egress_default` applies otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// When the daemon decided to start the instance, which its start-up phases count from
    /// (`None`: no phases are kept). Not recorded: a re-adopted instance has no phases.
    #[serde(skip)]
    pub scheduled: Option<Scheduled>,
    /// Set when the instance is one attempt of a job's task: it runs to completion (its
    /// container is never restarted; when it ends the instance stops and is removed) and
    /// it is nobody's serving instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskPlan>,
}

/// Which attempt of which job task an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPlan {
    /// The job.
    pub job: String,
    /// The execution.
    pub execution: String,
    /// The task's index in the execution.
    pub index: u32,
    /// The attempt (0 for the first).
    pub attempt: u32,
}

/// When the daemon decided to start an instance: the first mark of its start-up phases
/// ([`StartupPhases`], M5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// Unix time, nanoseconds (what the phases report).
    pub unix_nanos: u64,
    /// The same moment on the monotonic clock the phases are measured on.
    pub at: tokio::time::Instant,
}

impl Scheduled {
    /// Now.
    pub fn now() -> Self {
        Scheduled {
            unix_nanos: u64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(0),
            at: tokio::time::Instant::now(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The phases of an instance `scheduled`, handed to the runtime at `handed`, whose
/// containers all run from `now` on (readiness still to come).
pub fn startup_phases(
    scheduled: Scheduled,
    handed: tokio::time::Instant,
    now: tokio::time::Instant,
) -> StartupPhases {
    StartupPhases {
        scheduled_unix_nanos: scheduled.unix_nanos,
        image_ms: ms(handed.saturating_duration_since(scheduled.at)),
        container_ms: ms(now.saturating_duration_since(handed)),
        ready_ms: None,
    }
}

/// Completes `phases` when the instance is first ready, `since_handed` after it was handed
/// to the runtime.
pub fn startup_ready(phases: &mut StartupPhases, since_handed: Duration) {
    phases.ready_ms = Some((ms(since_handed) - phases.container_ms).max(0.0));
}

/// A change of an instance's status.
#[derive(Debug, Clone)]
pub struct InstanceEvent {
    /// The instance.
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its Service.
    pub service: String,
    /// Its revision.
    pub revision: String,
    /// The job task it runs, if it is a task's attempt.
    pub task: Option<TaskPlan>,
    /// The new status.
    pub status: InstanceStatus,
}

/// A runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Preparing the instance directory failed.
    #[error("preparing `{}`", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The network namespace failed.
    #[error("setting up the network namespace")]
    Netns(#[from] NetnsError),
    /// No such instance.
    #[error("no instance `{0}`")]
    NotFound(String),
    /// The instance is not parked (any more): it cannot be unparked.
    #[error("instance `{0}` is not parked")]
    NotParked(String),
    /// The instance is not running (ready or not): it cannot be frozen.
    #[error("instance `{0}` is not running")]
    NotRunning(String),
    /// The instance is not frozen: it cannot be thawed.
    #[error("instance `{0}` is not frozen")]
    NotFrozen(String),
    /// The OCI runtime failed.
    #[error("OCI runtime")]
    Oci(#[from] OciError),
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// When SIGKILL is due for a container sent SIGTERM at `term_sent`: at the end of its
/// termination `grace`, or at the shutdown's deadline (`shutdown_by`) if that comes first.
fn kill_due(
    term_sent: tokio::time::Instant,
    grace: Duration,
    shutdown_by: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let own = term_sent + grace;
    shutdown_by.map_or(own, |s| own.min(s))
}

/// Waits for `exit` until SIGKILL is due ([`kill_due`]), following the shutdown's deadline
/// as it is set or moved meanwhile; `None` when SIGKILL is due first.
async fn exit_or_kill_due<F: std::future::Future + Unpin>(
    exit: &mut F,
    term_sent: tokio::time::Instant,
    grace: Duration,
    shutdown_by: &mut watch::Receiver<Option<tokio::time::Instant>>,
) -> Option<F::Output> {
    let mut follow = true;
    loop {
        let due = kill_due(term_sent, grace, *shutdown_by.borrow_and_update());
        tokio::select! {
            out = &mut *exit => return Some(out),
            () = tokio::time::sleep_until(due) => return None,
            changed = shutdown_by.changed(), if follow => follow = changed.is_ok(),
        }
    }
}

/// A running instance.
pub struct Instance {
    /// Its plan.
    pub plan: InstancePlan,
    dir: PathBuf,
    netns: Arc<OwnedFd>,
    netns_path: PathBuf,
    status: watch::Sender<InstanceStatus>,
    stop: CancellationToken,
    done: CancellationToken,
    tails: Vec<Tail>,
    /// Each container's log pumps of its current run (they end when its output closes).
    pumps: Vec<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    start_instant: tokio::time::Instant,
    /// What serves the namespace (resolver, egress) while the instance lives.
    network: Mutex<Option<Box<dyn std::any::Any + Send + Sync>>>,
    /// Set for an instance created parked ([`Runtime::park`]).
    park: Option<Park>,
    /// When it was last thawed ([`Runtime::thaw`]): its readiness counts from then.
    thawed: Mutex<Option<tokio::time::Instant>>,
}

/// How an instance's containers come to run.
#[derive(Debug)]
enum Launch {
    /// Started now.
    Start,
    /// Created, held before exec until unparked.
    Park,
    /// Already running (re-adopted after a restart): these are their pids.
    Adopt(Vec<i32>),
}

/// A parked instance's release: its containers are created and wait before exec until
/// [`Runtime::unpark`] cancels `release`.
#[derive(Debug, Default)]
struct Park {
    release: CancellationToken,
    /// When it was unparked: the decision, and the call (its start-up phases count from
    /// these rather than from when it was parked).
    unparked: Mutex<Option<(Scheduled, tokio::time::Instant)>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.plan.id)
            .finish()
    }
}

impl Instance {
    /// When its (last) start began: the call to [`Runtime::start`], [`Runtime::unpark`] or
    /// [`Runtime::thaw`].
    fn t0(&self) -> tokio::time::Instant {
        if let Some(at) = *self.thawed.lock().unwrap_or_else(|e| e.into_inner()) {
            return at;
        }
        self.unparked().map_or(self.start_instant, |(_, at)| at)
    }

    /// The decision its start-up phases count from.
    fn scheduled(&self) -> Option<Scheduled> {
        match &self.park {
            Some(_) => self.unparked().map(|(s, _)| s),
            None => self.plan.scheduled,
        }
    }

    fn unparked(&self) -> Option<(Scheduled, tokio::time::Instant)> {
        self.park
            .as_ref()
            .and_then(|p| *p.unparked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current status.
    pub fn status(&self) -> InstanceStatus {
        self.status.borrow().clone()
    }

    /// Follows status changes.
    pub fn subscribe(&self) -> watch::Receiver<InstanceStatus> {
        self.status.subscribe()
    }

    /// The namespace handle for the connector.
    pub fn netns(&self) -> Arc<OwnedFd> {
        self.netns.clone()
    }

    /// Resource usage summed over the containers.
    pub fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for i in 0..self.plan.containers.len() {
            total.add(&cgroups::usage(&cgroup_path(&self.plan.id, i)));
        }
        total
    }

    /// Resolves once the instance is torn down.
    pub async fn stopped(&self) {
        self.done.cancelled().await;
    }

    fn container_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("c{i}"))
    }
}

/// The runtime id of a container.
pub fn container_id(instance: &str, i: usize) -> String {
    format!("{CONTAINER_PREFIX}{instance}-c{i}")
}

/// The cgroup of a container.
pub fn cgroup_path(instance: &str, i: usize) -> String {
    format!("{CGROUP_PARENT}/{instance}-c{i}")
}

/// The runtime: starts, supervises and stops instances.
pub struct Runtime {
    /// Settings.
    pub opts: RuntimeOptions,
    oci: Arc<dyn OciRuntime>,
    connector: Connector,
    reaper: Reaper,
    logs: LogStore,
    prober: Prober,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    events: broadcast::Sender<InstanceEvent>,
    tracker: TaskTracker,
    /// The latest SIGKILL of every container, once a bounded shutdown has set it
    /// ([`Runtime::stop_all`]); containers already between SIGTERM and SIGKILL follow it.
    shutdown_by: watch::Sender<Option<tokio::time::Instant>>,
    /// The daemon's resolver and egress, when it serves them ([`Runtime::set_network`]).
    network: std::sync::OnceLock<Arc<dyn InstanceNetwork>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("runtime", &self.opts.runtime)
            .finish()
    }
}

impl Runtime {
    /// A runtime over `oci` (must be called inside a tokio runtime: the reaper starts).
    pub fn new(opts: RuntimeOptions, oci: Arc<dyn OciRuntime>) -> std::io::Result<Arc<Runtime>> {
        std::fs::create_dir_all(opts.run_dir.join("instances"))?;
        std::fs::create_dir_all(&opts.logs_dir)?;
        let connector = Connector::new(2)?;
        let reaper = Reaper::start()?;
        let logs = LogStore::new(&opts.logs_dir, opts.log_rotation);
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Runtime {
            prober: Prober {
                connector: connector.clone(),
                oci: oci.clone(),
            },
            opts,
            oci,
            connector,
            reaper,
            logs,
            instances: Mutex::new(HashMap::new()),
            events,
            tracker: TaskTracker::new(),
            shutdown_by: watch::Sender::new(None),
            network: std::sync::OnceLock::new(),
        }))
    }

    /// Has every instance started from now on served by `network` (its resolver and
    /// outbound connections). Without it instances have loopback only. Set once.
    pub fn set_network(&self, network: Arc<dyn InstanceNetwork>) {
        let _ = self.network.set(network);
    }

    /// The OCI runtime.
    pub fn oci(&self) -> &Arc<dyn OciRuntime> {
        &self.oci
    }

    /// The connector into instances' namespaces.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The log store.
    pub fn logs(&self) -> &LogStore {
        &self.logs
    }

    /// Status changes of every instance.
    pub fn events(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    /// Every live instance.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// One instance.
    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.opts.run_dir.join("instances").join(id)
    }

    /// Starts an instance; it becomes ready later (watch its status).
    pub async fn start(
        self: &Arc<Self>,
        plan: InstancePlan,
    ) -> Result<Arc<Instance>, RuntimeError> {
        self.prepare(plan, false).await
    }

    /// Parks an instance: everything [`Runtime::start`] does (network namespace, `/etc`
    /// files, volumes, overlay rootfs, cgroup, `runc create`) except that each container's
    /// process waits before exec, in phase [`Phase::Parked`], until [`Runtime::unpark`].
    pub async fn park(self: &Arc<Self>, plan: InstancePlan) -> Result<Arc<Instance>, RuntimeError> {
        self.prepare(plan, true).await
    }

    /// Starts a parked instance's processes: its start-up phases count from `scheduled`
    /// and from this call, and its lifetime (`startedAt`) from now. An instance is unparked
    /// once: a second call, or one for an instance that was not parked, fails.
    pub fn unpark(&self, id: &str, scheduled: Scheduled) -> Result<(), RuntimeError> {
        let inst = self
            .instance(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let Some(park) = &inst.park else {
            return Err(RuntimeError::NotParked(id.to_owned()));
        };
        {
            let mut unparked = park.unparked.lock().unwrap_or_else(|e| e.into_inner());
            if unparked.is_some() || inst.stop.is_cancelled() {
                return Err(RuntimeError::NotParked(id.to_owned()));
            }
            *unparked = Some((scheduled, tokio::time::Instant::now()));
        }
        self.update(&inst, |s| {
            if s.phase == Phase::Parked {
                s.phase = Phase::Starting;
            }
            s.started_at = now();
            s.start_kind = StartKind::Parked;
        });
        park.release.cancel();
        info!(instance = %id, revision = %inst.plan.revision, "unparked");
        Ok(())
    }

    /// Freezes a running instance (every container's processes, through the cgroup
    /// freezer): phase [`Phase::Frozen`], not ready, its probes idle. Draining its requests
    /// is the caller's business, before.
    pub async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        let inst = self
            .instance(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if inst.status().phase != Phase::Running || inst.stop.is_cancelled() {
            return Err(RuntimeError::NotRunning(id.to_owned()));
        }
        for i in 0..inst.plan.containers.len() {
            if let Err(e) = self.oci.pause(&container_id(id, i)).await {
                // Thaw what was frozen: all or nothing.
                for j in 0..i {
                    let _ = self.oci.resume(&container_id(id, j)).await;
                }
                return Err(e.into());
            }
        }
        self.update(&inst, |s| {
            s.phase = Phase::Frozen;
            s.ready = false;
            for c in &mut s.containers {
                c.ready = false;
            }
        });
        info!(instance = %id, revision = %inst.plan.revision, "frozen");
        Ok(())
    }

    /// Thaws a frozen instance: it is probed again and takes traffic once ready; its
    /// start-up phases and lifetime (`startedAt`) count from `scheduled` and this call, as a
    /// start of kind `frozen`.
    pub async fn thaw(&self, id: &str, scheduled: Scheduled) -> Result<(), RuntimeError> {
        let inst = self
            .instance(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if inst.status().phase != Phase::Frozen {
            return Err(RuntimeError::NotFrozen(id.to_owned()));
        }
        let called = tokio::time::Instant::now();
        for i in 0..inst.plan.containers.len() {
            // The freezer file directly (no `runc` process on a request's path); the
            // runtime when there is none.
            if !cgroups::thaw(&cgroup_path(id, i)) {
                self.oci.resume(&container_id(id, i)).await?;
            }
        }
        let thawed = tokio::time::Instant::now();
        *inst.thawed.lock().unwrap_or_else(|e| e.into_inner()) = Some(called);
        self.update(&inst, |s| {
            s.phase = Phase::Running;
            s.started_at = now();
            s.start_kind = StartKind::Frozen;
            s.was_ready = false;
            s.start_to_ready_ms = None;
            s.startup = Some(startup_phases(scheduled, called, thawed));
        });
        info!(instance = %id, revision = %inst.plan.revision, "thawed");
        Ok(())
    }

    async fn prepare(
        self: &Arc<Self>,
        plan: InstancePlan,
        parked: bool,
    ) -> Result<Arc<Instance>, RuntimeError> {
        // start_to_ready_ms counts from here, so it includes the namespace and `/etc` files;
        // so does the `container` phase of start-up.
        let t0 = tokio::time::Instant::now();
        let dir = self.instance_dir(&plan.id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let netns_path = dir.join("netns");
        let network = self.network.get();
        let ruleset = network.and_then(|n| n.ruleset(&plan));
        // `nft` and `ip` run for ~10 ms: off the async workers.
        let (netns, egress_error) = {
            let path = netns_path.clone();
            tokio::task::spawn_blocking(move || NetNs::create_with(&path, ruleset.as_deref()))
                .await
                .map_err(|_| RuntimeError::Netns(NetnsError::Worker))??
        };
        if let Some(e) = egress_error {
            warn!(instance = %plan.id, error = %e, "the instance's outbound connections cannot be set up (nftables in its namespace); it has loopback and the resolver only");
        }
        let resolver = network.is_some().then_some(crate::netns::DNS_ADDR);
        rootfs::write_etc_files_with(&dir.join("etc"), &hostname(&plan.id), resolver).map_err(
            |e| RuntimeError::Io {
                path: dir.join("etc"),
                source: std::io::Error::other(e.to_string()),
            },
        )?;
        for v in &plan.volumes {
            let p = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            if v.config {
                // Secret and ConfigMap keys: a tmpfs of their size, mounted read-only into
                // the containers.
                rootfs::mount_tmpfs(&p, v.files.tmpfs_size(), 0o755).map_err(|e| {
                    RuntimeError::Io {
                        path: p.clone(),
                        source: std::io::Error::other(crate::chain(&e)),
                    }
                })?;
                v.files.write(&p).map_err(io(&p))?;
                continue;
            }
            // Kubernetes makes an emptyDir 0777: any user of any container may write to it.
            if let (false, Some(size)) = (v.memory, v.size_limit) {
                rootfs::mount_tmpfs(&p, size, 0o777).map_err(|e| RuntimeError::Io {
                    path: p.clone(),
                    source: std::io::Error::other(crate::chain(&e)),
                })?;
            }
        }
        let how = if parked { Launch::Park } else { Launch::Start };
        self.launch(plan, dir, netns.handle(), netns_path, how, t0)
            .await
    }

    async fn launch(
        self: &Arc<Self>,
        plan: InstancePlan,
        dir: PathBuf,
        netns: Arc<OwnedFd>,
        netns_path: PathBuf,
        how: Launch,
        t0: tokio::time::Instant,
    ) -> Result<Arc<Instance>, RuntimeError> {
        let (parked, adopted) = match how {
            Launch::Start => (false, None),
            Launch::Park => (true, None),
            Launch::Adopt(pids) => (false, Some(pids)),
        };
        let containers = plan
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| ContainerStatus {
                name: c.name.clone(),
                runtime_id: container_id(&plan.id, i),
                waiting_reason: Some("ContainerCreating".into()),
                ..Default::default()
            })
            .collect();
        let (status, _) = watch::channel(InstanceStatus {
            phase: if parked {
                Phase::Parked
            } else {
                Phase::Starting
            },
            started_at: now(),
            containers,
            ..Default::default()
        });
        let instance = Arc::new(Instance {
            tails: plan.containers.iter().map(|_| Tail::default()).collect(),
            pumps: plan.containers.iter().map(|_| Default::default()).collect(),
            plan,
            dir,
            netns,
            netns_path,
            status,
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
            start_instant: t0,
            network: Mutex::new(None),
            park: parked.then(Park::default),
            thawed: Mutex::new(None),
        });
        if let Some(n) = self.network.get() {
            let guard = n.attach(&instance.plan, instance.netns.clone()).await;
            *instance.network.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
        }
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(instance.plan.id.clone(), instance.clone());
        let span = info_span!("instance", instance = %instance.plan.id, revision = %instance.plan.revision);
        let (rt, inst) = (self.clone(), instance.clone());
        self.tracker
            .spawn(async move { rt.supervise(inst, adopted).await }.instrument(span));
        Ok(instance)
    }

    fn publish(&self, inst: &Instance) {
        let _ = self.events.send(InstanceEvent {
            id: inst.plan.id.clone(),
            namespace: inst.plan.namespace.clone(),
            service: inst.plan.service.clone(),
            revision: inst.plan.revision.clone(),
            task: inst.plan.task.clone(),
            status: inst.status(),
        });
    }

    fn update(&self, inst: &Instance, f: impl FnOnce(&mut InstanceStatus)) {
        let mut changed = false;
        inst.status.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            changed = *s != before;
            changed
        });
        if changed {
            self.publish(inst);
        }
    }

    /// Stops an instance at once: SIGTERM, SIGKILL after the termination grace
    /// ([`RuntimeOptions::termination_grace`]), then everything removed. Draining its
    /// requests is the caller's business, before.
    pub async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let inst = self
            .instance(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        self.thaw_to_stop(&inst).await;
        inst.stop.cancel();
        inst.stopped().await;
        Ok(())
    }

    /// Stops every instance (daemon shutdown): SIGTERM to those not stopping yet, and
    /// SIGKILL to every container still running `cap` from now, or at the end of its own
    /// termination grace if that comes first. Instances already stopping (retired ones)
    /// are held to the same deadline.
    pub async fn stop_all(&self, cap: Duration) {
        let deadline = tokio::time::Instant::now() + cap;
        self.shutdown_by
            .send_modify(|d| *d = Some(d.map_or(deadline, |earlier| earlier.min(deadline))));
        let all = self.instances();
        for i in &all {
            self.thaw_to_stop(i).await;
            i.stop.cancel();
        }
        for i in all {
            i.stopped().await;
        }
    }

    /// A frozen instance cannot take its SIGTERM: it is thawed (still not ready, so still
    /// out of the router's pool) before it is stopped.
    async fn thaw_to_stop(&self, inst: &Instance) {
        if inst.status().phase != Phase::Frozen {
            return;
        }
        for i in 0..inst.plan.containers.len() {
            let _ = self.oci.resume(&container_id(&inst.plan.id, i)).await;
        }
        self.update(inst, |s| s.phase = Phase::Stopping);
    }

    async fn supervise(self: Arc<Self>, inst: Arc<Instance>, adopted: Option<Vec<i32>>) {
        let tracker = TaskTracker::new();
        for i in 0..inst.plan.containers.len() {
            let pid = adopted.as_ref().and_then(|p| p.get(i).copied());
            let (rt, inst2) = (self.clone(), inst.clone());
            tracker.spawn(async move { rt.supervise_container(inst2, i, pid).await });
        }
        let (rt, inst2) = (self.clone(), inst.clone());
        tracker.spawn(async move { rt.readiness_loop(inst2).await });
        tracker.close();
        inst.stop.cancelled().await;
        self.update(&inst, |s| {
            s.phase = Phase::Stopping;
            s.ready = false;
        });
        tracker.wait().await;
        self.teardown(&inst).await;
        self.update(&inst, |s| {
            s.phase = Phase::Stopped;
            for c in &mut s.containers {
                c.running = false;
                c.ready = false;
                c.pid = None;
            }
        });
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.plan.id);
        inst.done.cancel();
        info!("instance stopped and removed");
    }

    async fn teardown(&self, inst: &Instance) {
        for i in 0..inst.plan.containers.len() {
            self.cleanup_container(inst, i).await;
        }
        // The resolver and egress listeners go with the namespace.
        drop(
            inst.network
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for m in rootfs::mounts_under(&inst.dir) {
            let _ = rootfs::unmount(&m);
        }
        if let Err(e) = NetNs::remove(&inst.netns_path) {
            warn!(error = %e, "removing the network namespace");
        }
        if let Err(e) = std::fs::remove_dir_all(&inst.dir) {
            warn!(error = %e, dir = %inst.dir.display(), "removing the instance directory");
        }
    }

    async fn cleanup_container(&self, inst: &Instance, i: usize) {
        let id = container_id(&inst.plan.id, i);
        match self.oci.delete(&id, true).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => warn!(container = %id, error = %e, "deleting the container"),
        }
        let cdir = inst.container_dir(i);
        let _ = rootfs::unmount(&cdir.join("rootfs"));
        for m in rootfs::mounts_under(&cdir) {
            let _ = rootfs::unmount(&m);
        }
        for d in ["upper", "work", "scratch"] {
            let _ = std::fs::remove_dir_all(cdir.join(d));
        }
        cgroups::remove(&cgroup_path(&inst.plan.id, i));
    }

    /// Creates container `i` parked and waits for the instance's release, then starts it;
    /// returns its pid and the watch on its exit, or `None` when the instance was stopped
    /// (or the process ended) first.
    async fn park_container(
        &self,
        inst: &Arc<Instance>,
        i: usize,
    ) -> Result<Option<(i32, tokio::sync::oneshot::Receiver<Exit>)>, String> {
        let Some(park) = &inst.park else {
            return Err("the instance is not parked".into());
        };
        let pid = self.start_container(inst, i, true).await?;
        let mut exit = self.reaper.wait(pid);
        self.update(inst, |s| {
            let c = &mut s.containers[i];
            c.pid = Some(pid);
            c.waiting_reason = Some("Parked".into());
        });
        tokio::select! {
            () = park.release.cancelled() => {}
            () = inst.stop.cancelled() => {
                self.cleanup_container(inst, i).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), exit).await;
                return Ok(None);
            }
            e = &mut exit => {
                warn!(container = %inst.plan.containers[i].name, exit = ?e, "a parked container's process ended before its release; the instance is removed");
                self.cleanup_container(inst, i).await;
                inst.stop.cancel();
                return Ok(None);
            }
        }
        self.oci
            .start(&container_id(&inst.plan.id, i))
            .await
            .map_err(|e| crate::chain(&e))?;
        Ok(Some((pid, exit)))
    }

    /// Prepares container `i` and starts it (`create`: creates it only, its process waiting
    /// to be started); returns its pid.
    async fn start_container(
        &self,
        inst: &Arc<Instance>,
        i: usize,
        create: bool,
    ) -> Result<i32, String> {
        let plan = &inst.plan.containers[i];
        let cdir = inst.container_dir(i);
        let rootfs_dir = cdir.join("rootfs");
        // The writable layer lives in a tmpfs bounded by the container's limit: filling it
        // gives the app ENOSPC (or meets its memory limit), never a full host disk.
        let base = match plan.scratch_limit {
            Some(size) => {
                let scratch = cdir.join("scratch");
                std::fs::create_dir_all(&scratch)
                    .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
                rootfs::mount_tmpfs(&scratch, size, 0o700).map_err(|e| crate::chain(&e))?;
                scratch
            }
            None => cdir.clone(),
        };
        let (upper, work) = (base.join("upper"), base.join("work"));
        for d in [&rootfs_dir, &upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        rootfs::mount_overlay(&plan.lowers, &upper, &work, &rootfs_dir)
            .map_err(|e| crate::chain(&e))?;
        let user = match (plan.user.run_as_user, plan.user.run_as_group) {
            (Some(uid), gid) => {
                let base =
                    rootfs::resolve_user(&rootfs_dir, &uid.to_string()).unwrap_or(ResolvedUser {
                        uid,
                        gid: uid,
                        groups: vec![],
                        home: "/".into(),
                    });
                ResolvedUser {
                    uid,
                    gid: gid.unwrap_or(base.gid),
                    groups: base.groups,
                    home: base.home,
                }
            }
            (None, gid) => {
                let mut u = rootfs::resolve_user(
                    &rootfs_dir,
                    plan.user.image_user.as_deref().unwrap_or(""),
                )
                .map_err(|e| crate::chain(&e))?;
                if let Some(g) = gid {
                    u.gid = g;
                }
                u
            }
        };
        if plan.user.run_as_non_root && user.uid == 0 {
            return Err("runAsNonRoot is set but the container would run as root (uid 0); set runAsUser or use an image with a non-root USER".into());
        }
        let cwd = plan.working_dir.clone().unwrap_or_else(|| "/".into());
        let cwd_in = rootfs_dir.join(cwd.trim_start_matches('/'));
        if !cwd_in.exists() {
            let _ = std::fs::create_dir_all(&cwd_in);
        }
        let mut env: Vec<String> = Vec::new();
        let has = |k: &str| {
            plan.env
                .iter()
                .chain(&plan.secret_env.0)
                .any(|(n, _)| n == k)
        };
        if !has("PATH") {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        if !has("HOME") {
            env.push(format!("HOME={}", user.home));
        }
        if !has("HOSTNAME") {
            env.push(format!("HOSTNAME={}", hostname(&inst.plan.id)));
        }
        env.extend(
            plan.env
                .iter()
                .chain(&plan.secret_env.0)
                .map(|(k, v)| format!("{k}={v}")),
        );
        let mut volumes = Vec::new();
        for m in &plan.mounts {
            let Some(v) = inst.plan.volumes.iter().find(|v| v.name == m.volume) else {
                continue;
            };
            if v.memory && !v.config && m.sub_path.is_none() {
                volumes.push(VolumeMount::Tmpfs {
                    destination: m.path.clone(),
                    size: v.size_limit.unwrap_or(64 << 20),
                    read_only: m.read_only,
                });
            } else {
                let mut src = inst.dir.join("volumes").join(&v.name);
                if let Some(sp) = &m.sub_path {
                    src = src.join(sp);
                    let _ = std::fs::create_dir_all(&src);
                }
                volumes.push(VolumeMount::Bind {
                    source: src,
                    destination: m.path.clone(),
                    read_only: m.read_only || v.config,
                });
            }
        }
        let config = ContainerConfig {
            hostname: hostname(&inst.plan.id),
            rootfs: rootfs_dir.clone(),
            read_only_rootfs: plan.read_only_rootfs,
            args: plan.args.clone(),
            env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.groups.clone(),
            capabilities: plan.capabilities.clone(),
            seccomp: plan.seccomp,
            netns: inst.netns_path.clone(),
            cgroups_path: cgroup_path(&inst.plan.id, i),
            memory_limit: plan.memory_limit,
            cpu_quota: plan.cpu_quota,
            cpu_shares: plan.cpu_shares,
            pids_limit: self.opts.pids_limit,
            etc_dir: inst.dir.join("etc"),
            tmp_size: plan
                .memory_limit
                .map_or(256 << 20, |m| (m as u64 / 2).max(16 << 20)),
            volumes,
        };
        let spec = spec::build(&config).map_err(|e| format!("building the OCI spec: {e}"))?;
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| format!("serializing the OCI spec: {e}"))?;
        std::fs::write(cdir.join("config.json"), json)
            .map_err(|e| format!("writing config.json: {e}"))?;
        let (out_r, out_w) =
            logs::fifo(&cdir.join("stdout")).map_err(|e| format!("stdout fifo: {e}"))?;
        let (err_r, err_w) =
            logs::fifo(&cdir.join("stderr")).map_err(|e| format!("stderr fifo: {e}"))?;
        self.spawn_pumps(inst, i, out_r, err_r);
        let id = container_id(&inst.plan.id, i);
        let (out_w, err_w) = (Stdio::from(out_w), Stdio::from(err_w));
        let pid = if create {
            self.oci.create(&id, &cdir, out_w, err_w).await
        } else {
            self.oci.run_detached(&id, &cdir, out_w, err_w).await
        }
        .map_err(|e| crate::chain(&e))?;
        Ok(pid)
    }

    fn spawn_pumps(
        &self,
        inst: &Arc<Instance>,
        i: usize,
        out: tokio::net::unix::pipe::Receiver,
        err: tokio::net::unix::pipe::Receiver,
    ) {
        let mut handles = Vec::with_capacity(2);
        for (reader, stream) in [(out, "stdout"), (err, "stderr")] {
            let target = PumpTarget {
                store: self.logs.clone(),
                source: LogSource {
                    namespace: inst.plan.namespace.clone(),
                    service: inst.plan.service.clone(),
                    revision: inst.plan.revision.clone(),
                },
                instance: inst.plan.id.clone(),
                container: inst.plan.containers[i].name.clone(),
                stream,
                tail: inst.tails[i].clone(),
            };
            handles.push(tokio::spawn(logs::pump(reader, target)));
        }
        *inst.pumps[i].lock().unwrap_or_else(|p| p.into_inner()) = handles;
    }

    /// Waits (at most [`PUMP_DRAIN`]) for container `i`'s log pumps to reach the end of its
    /// output, so that the last lines it wrote before exiting are in its tail.
    async fn drain_pumps(&self, inst: &Instance, i: usize) {
        let handles = std::mem::take(&mut *inst.pumps[i].lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::time::timeout(PUMP_DRAIN, futures::future::join_all(handles)).await;
    }

    fn backoff(&self, restarts: u32) -> Duration {
        self.opts
            .restart_backoff
            .saturating_mul(1u32 << restarts.saturating_sub(1).min(16))
            .min(self.opts.restart_backoff_max)
    }

    async fn supervise_container(
        self: Arc<Self>,
        inst: Arc<Instance>,
        i: usize,
        adopted_pid: Option<i32>,
    ) {
        let name = inst.plan.containers[i].name.clone();
        let mut restarts = 0u32;
        let mut first = true;
        loop {
            let started = tokio::time::Instant::now();
            let mut parked_exit = None;
            let pid = match (first, adopted_pid) {
                (true, Some(pid)) => {
                    // Re-adopted after a daemon restart: reopen its log FIFOs.
                    let cdir = inst.container_dir(i);
                    if let (Ok(o), Ok(e)) = (
                        logs::reopen(&cdir.join("stdout")),
                        logs::reopen(&cdir.join("stderr")),
                    ) {
                        self.spawn_pumps(&inst, i, o, e);
                    }
                    Ok(pid)
                }
                (true, None) if inst.park.is_some() => match self.park_container(&inst, i).await {
                    Ok(Some((pid, exit))) => {
                        parked_exit = Some(exit);
                        Ok(pid)
                    }
                    // Stopped while parked, or its process gone: the instance goes.
                    Ok(None) => return,
                    Err(message) => {
                        warn!(container = %name, error = %message, "a parked container failed; the instance is removed");
                        self.cleanup_container(&inst, i).await;
                        inst.stop.cancel();
                        return;
                    }
                },
                _ => self.start_container(&inst, i, false).await,
            };
            first = false;
            let pid = match pid {
                Ok(pid) => pid,
                Err(message) => {
                    warn!(container = %name, error = %message, "container failed to start");
                    self.cleanup_container(&inst, i).await;
                    if inst.plan.task.is_some() {
                        // A task's attempt that cannot start has failed: no restart.
                        let term = Termination {
                            reason: "StartError".into(),
                            exit_code: None,
                            at: now(),
                            message,
                            last_lines: inst.tails[i].last(10),
                        };
                        self.update(&inst, |s| {
                            let c = &mut s.containers[i];
                            c.running = false;
                            c.ready = false;
                            c.pid = None;
                            c.last_termination = Some(term);
                        });
                        inst.stop.cancel();
                        return;
                    }
                    restarts += 1;
                    let term = Termination {
                        reason: "StartError".into(),
                        exit_code: None,
                        at: now(),
                        message: message.clone(),
                        last_lines: inst.tails[i].last(10),
                    };
                    self.update(&inst, |s| {
                        let c = &mut s.containers[i];
                        c.running = false;
                        c.ready = false;
                        c.pid = None;
                        c.restarts = restarts;
                        c.waiting_reason = Some("CrashLoopBackOff".into());
                        c.last_termination = Some(term);
                    });
                    if self.wait_or_stop(&inst, self.backoff(restarts)).await {
                        return;
                    }
                    continue;
                }
            };
            let running_at = tokio::time::Instant::now();
            self.update(&inst, |s| {
                if s.phase == Phase::Starting {
                    s.phase = Phase::Running;
                }
                let c = &mut s.containers[i];
                c.running = true;
                c.pid = Some(pid);
                c.waiting_reason = None;
                // The `container` phase ends when every container's process runs.
                if s.startup.is_none()
                    && let Some(scheduled) = inst.scheduled()
                    && s.containers.iter().all(|c| c.running)
                {
                    s.startup = Some(startup_phases(scheduled, inst.t0(), running_at));
                }
            });
            let exit_rx = parked_exit.unwrap_or_else(|| self.reaper.wait(pid));
            let oom_before = cgroups::usage(&cgroup_path(&inst.plan.id, i)).oom_kills;
            let liveness = self.clone().liveness_loop(inst.clone(), i);
            tokio::pin!(liveness);
            tokio::pin!(exit_rx);
            let stop = inst.stop.clone();
            let (exit, liveness_failed) = tokio::select! {
                e = &mut exit_rx => (e.unwrap_or(Exit::Unknown), None),
                why = &mut liveness => {
                    // Liveness (or startup) failed: kill, then take the exit.
                    let _ = self.oci.kill(&container_id(&inst.plan.id, i), "KILL").await;
                    (exit_rx.await.unwrap_or(Exit::Unknown), Some(why))
                }
                () = stop.cancelled() => {
                    let exit = self.graceful_stop(&inst, i, exit_rx).await;
                    self.drain_pumps(&inst, i).await;
                    self.record_exit(&inst, i, exit, None, oom_before);
                    return;
                }
            };
            self.drain_pumps(&inst, i).await;
            let term = self.record_exit(&inst, i, exit, liveness_failed, oom_before);
            self.cleanup_container(&inst, i).await;
            if inst.stop.is_cancelled() {
                return;
            }
            if inst.plan.task.is_some() {
                // A task runs to completion: its end is the attempt's result, and the
                // instance goes with it.
                info!(container = %name, reason = %term.reason, exit = ?term.exit_code, "task container ended");
                inst.stop.cancel();
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                restarts = 0;
            }
            restarts += 1;
            warn!(container = %name, reason = %term.reason, exit = ?term.exit_code, restarts, "container ended; restarting after backoff");
            self.update(&inst, |s| {
                let c = &mut s.containers[i];
                c.restarts = c.restarts.saturating_add(1);
                c.waiting_reason = Some("CrashLoopBackOff".into());
            });
            if self.wait_or_stop(&inst, self.backoff(restarts)).await {
                return;
            }
        }
    }

    /// Sleeps `d` unless the instance is told to stop first (returns true then).
    async fn wait_or_stop(&self, inst: &Instance, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = inst.stop.cancelled() => true,
        }
    }

    fn record_exit(
        &self,
        inst: &Instance,
        i: usize,
        exit: Exit,
        liveness: Option<String>,
        oom_before: u64,
    ) -> Termination {
        let usage = cgroups::usage(&cgroup_path(&inst.plan.id, i));
        let oom = usage.oom_kills > oom_before || (exit == Exit::Signal(9) && usage.oom_kills > 0);
        let (reason, message) = if oom {
            (
                "OOMKilled".to_owned(),
                format!(
                    "the container ran out of memory and was killed (limit {} bytes); exit code 137",
                    usage.memory_limit_bytes
                ),
            )
        } else if let Some(why) = liveness {
            (
                "LivenessFailed".to_owned(),
                format!("restarted because its probe failed: {why}"),
            )
        } else {
            match exit {
                Exit::Code(0) => (
                    "Completed".to_owned(),
                    "the container exited with code 0".to_owned(),
                ),
                Exit::Unknown => ("Unknown".to_owned(), exit.to_string()),
                _ => ("Error".to_owned(), format!("the container {exit}")),
            }
        };
        let term = Termination {
            reason,
            exit_code: if oom { Some(137) } else { exit.code() },
            at: now(),
            message,
            last_lines: inst.tails[i].last(10),
        };
        self.update(inst, |s| {
            let c = &mut s.containers[i];
            c.running = false;
            c.ready = false;
            c.pid = None;
            c.last_termination = Some(term.clone());
            s.ready = false;
        });
        term
    }

    /// SIGTERM, then SIGKILL once the termination grace is over (or the shutdown's
    /// deadline, if one comes first: see [`kill_due`]).
    async fn graceful_stop(
        &self,
        inst: &Instance,
        i: usize,
        exit_rx: std::pin::Pin<&mut tokio::sync::oneshot::Receiver<Exit>>,
    ) -> Exit {
        let id = container_id(&inst.plan.id, i);
        let mut exit_rx = exit_rx;
        if let Err(e) = self.oci.kill(&id, "TERM").await
            && !e.is_not_found()
        {
            warn!(container = %id, error = %e, "SIGTERM failed");
        }
        let term_sent = tokio::time::Instant::now();
        let grace = self.opts.termination_grace;
        let mut shutdown_by = self.shutdown_by.subscribe();
        match exit_or_kill_due(&mut exit_rx, term_sent, grace, &mut shutdown_by).await {
            Some(e) => e.unwrap_or(Exit::Unknown),
            None => {
                let waited = term_sent.elapsed();
                warn!(container = %id, waited_seconds = waited.as_secs_f64(), grace_seconds = grace.as_secs_f64(), "grace period over; sending SIGKILL");
                let _ = self.oci.kill(&id, "KILL").await;
                match tokio::time::timeout(Duration::from_secs(10), exit_rx).await {
                    Ok(e) => e.unwrap_or(Exit::Unknown),
                    Err(_) => Exit::Unknown,
                }
            }
        }
    }

    /// Runs the startup probe, then the liveness probe; returns why one failed.
    async fn liveness_loop(self: Arc<Self>, inst: Arc<Instance>, i: usize) -> String {
        let plan = &inst.plan.containers[i];
        let cid = container_id(&inst.plan.id, i);
        if let Some(p) = &plan.startup {
            tokio::time::sleep(p.initial_delay).await;
            let mut failures = 0;
            loop {
                match self
                    .prober
                    .attempt(&p.action, &inst.netns, &cid, p.timeout)
                    .await
                {
                    Ok(()) => break,
                    Err(why) => {
                        failures += 1;
                        if failures >= p.failure_threshold {
                            return format!("startup probe failed {failures} times: {why}");
                        }
                    }
                }
                tokio::time::sleep(p.period.max(Duration::from_millis(100))).await;
            }
        }
        let Some(p) = &plan.liveness else {
            return std::future::pending().await;
        };
        tokio::time::sleep(p.initial_delay).await;
        let mut failures = 0;
        loop {
            tokio::time::sleep(p.period.max(Duration::from_millis(100))).await;
            if inst.status().phase == Phase::Frozen {
                // Not probed while frozen: it could not answer.
                failures = 0;
                continue;
            }
            match self
                .prober
                .attempt(&p.action, &inst.netns, &cid, p.timeout)
                .await
            {
                Ok(()) => failures = 0,
                Err(why) => {
                    failures += 1;
                    if failures >= p.failure_threshold {
                        return format!("liveness probe failed {failures} times: {why}");
                    }
                }
            }
        }
    }

    /// Probes readiness of every container that has a readiness probe.
    async fn readiness_loop(self: Arc<Self>, inst: Arc<Instance>) {
        // A parked instance has nothing to probe until it is released.
        if let Some(p) = &inst.park {
            tokio::select! {
                () = p.release.cancelled() => {}
                () = inst.stop.cancelled() => return,
            }
        }
        let n = inst.plan.containers.len();
        let mut successes = vec![0u32; n];
        let mut failures = vec![0u32; n];
        let mut since_start = vec![tokio::time::Instant::now(); n];
        // A container that starts running is probed at once, not at the next poll.
        let mut changes = inst.subscribe();
        loop {
            changes.borrow_and_update();
            let status = inst.status();
            if status.phase == Phase::Frozen {
                // Nothing to probe until it is thawed (a status change).
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() {
                            return;
                        }
                    }
                    () = inst.stop.cancelled() => return,
                }
                continue;
            }
            let mut next = Duration::from_secs(1);
            for i in 0..n {
                let plan = &inst.plan.containers[i];
                let c = &status.containers[i];
                if !c.running {
                    successes[i] = 0;
                    since_start[i] = tokio::time::Instant::now();
                    if c.ready {
                        self.update(&inst, |s| s.containers[i].ready = false);
                    }
                    next = next.min(Duration::from_millis(5));
                    continue;
                }
                let Some(p) = &plan.readiness else {
                    if !c.ready {
                        self.update(&inst, |s| s.containers[i].ready = true);
                    }
                    continue;
                };
                if since_start[i].elapsed() < p.initial_delay {
                    next = next.min(p.initial_delay.saturating_sub(since_start[i].elapsed()));
                    continue;
                }
                let cid = container_id(&inst.plan.id, i);
                match self
                    .prober
                    .attempt(&p.action, &inst.netns, &cid, p.timeout)
                    .await
                {
                    Ok(()) => {
                        failures[i] = 0;
                        successes[i] += 1;
                        if successes[i] >= p.success_threshold.max(1) && !c.ready {
                            self.update(&inst, |s| {
                                s.containers[i].ready = true;
                                s.containers[i].readiness_failure = None;
                            });
                        }
                    }
                    Err(why) => {
                        successes[i] = 0;
                        failures[i] += 1;
                        if c.ready && failures[i] >= p.failure_threshold.max(1) {
                            self.update(&inst, |s| s.containers[i].ready = false);
                        }
                        // Recorded when it says something new (not at every attempt: until
                        // ready the probe runs every millisecond), so a revision that does
                        // not become ready can say why.
                        let known = c.readiness_failure.as_ref().map(|f| f.message.as_str());
                        if known != Some(why.as_str()) {
                            self.update(&inst, |s| {
                                let since = s.containers[i]
                                    .readiness_failure
                                    .take()
                                    .map_or_else(now, |f| f.since);
                                s.containers[i].readiness_failure = Some(ProbeFailure {
                                    message: why,
                                    since,
                                });
                            });
                        }
                    }
                }
                // Until first ready, probe every millisecond (a cold start must be seen at
                // once; one attempt costs ~0.2 ms); afterwards at the probe's period.
                let period = if !c.ready || p.period.is_zero() {
                    Duration::from_millis(1)
                } else {
                    p.period
                };
                next = next.min(period);
            }
            let all_ready = inst
                .status()
                .containers
                .iter()
                .all(|c| c.ready && c.running);
            let elapsed = inst.t0().elapsed();
            self.update(&inst, |s| {
                s.ready = all_ready && s.phase == Phase::Running;
                if s.ready && !s.was_ready {
                    s.was_ready = true;
                    s.start_to_ready_ms = Some(ms(elapsed));
                    if let Some(p) = &mut s.startup {
                        startup_ready(p, elapsed);
                    }
                }
            });
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                () = inst.stop.cancelled() => return,
            }
        }
    }

    /// Re-adopts instances of a previous run whose containers all still run, and removes
    /// everything else skiff left behind: containers, mounts, namespaces, cgroups, directories.
    pub async fn recover(self: &Arc<Self>, plans: Vec<InstancePlan>) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let listed = self.oci.list().await.unwrap_or_default();
        // Instances of this data directory: recorded, with a directory here, or with a
        // container in this runc root. cgroups are shared by every skiff on the host, so
        // only theirs are cleaned up; another daemon's are never touched.
        let mut ours: std::collections::HashSet<String> =
            plans.iter().map(|p| p.id.clone()).collect();
        if let Ok(entries) = std::fs::read_dir(self.opts.run_dir.join("instances")) {
            ours.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        for c in listed.iter().filter(|c| c.id.starts_with(CONTAINER_PREFIX)) {
            let rest = c.id.trim_start_matches(CONTAINER_PREFIX);
            if let Some((instance, _)) = rest.rsplit_once("-c") {
                ours.insert(instance.to_owned());
            }
        }
        for plan in plans {
            let dir = self.instance_dir(&plan.id);
            let mut pids = Vec::new();
            for i in 0..plan.containers.len() {
                let id = container_id(&plan.id, i);
                match listed.iter().find(|c| c.id == id) {
                    Some(c) if c.status == "running" && c.pid > 0 => pids.push(c.pid),
                    _ => break,
                }
            }
            let netns_path = dir.join("netns");
            if pids.len() == plan.containers.len()
                && let Ok(ns) = NetNs::open(&netns_path)
            {
                let id = plan.id.clone();
                match self
                    .launch(
                        plan,
                        dir,
                        ns.handle(),
                        netns_path,
                        Launch::Adopt(pids),
                        tokio::time::Instant::now(),
                    )
                    .await
                {
                    Ok(_) => report.adopted.push(id),
                    Err(e) => warn!(instance = %id, error = %crate::chain(&e), "re-adopting"),
                }
            }
        }
        let adopted: std::collections::HashSet<String> = report.adopted.iter().cloned().collect();
        let keep = |name: &str| {
            adopted
                .iter()
                .any(|a| name.starts_with(&format!("{a}-c")) || name == a)
        };
        for c in listed.iter().filter(|c| c.id.starts_with(CONTAINER_PREFIX)) {
            let rest = c.id.trim_start_matches(CONTAINER_PREFIX);
            if !keep(rest) {
                let _ = self.oci.delete(&c.id, true).await;
                report.removed_containers.push(c.id.clone());
            }
        }
        let base = self.opts.run_dir.join("instances");
        for m in rootfs::mounts_under(&base) {
            let rel = m
                .strip_prefix(&base)
                .ok()
                .and_then(|r| r.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if rel.as_deref().is_some_and(|r| !adopted.contains(r)) {
                let _ = rootfs::unmount(&m);
                report.removed_mounts.push(m.display().to_string());
            }
        }
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !adopted.contains(&name) {
                    let _ = NetNs::remove(&e.path().join("netns"));
                    let _ = std::fs::remove_dir_all(e.path());
                    report.removed_instances.push(name);
                }
            }
        }
        for cg in cgroups::children(CGROUP_PARENT) {
            let mine = cg
                .rsplit_once("-c")
                .is_some_and(|(instance, _)| ours.contains(instance));
            if mine && !keep(&cg) {
                cgroups::remove(&format!("{CGROUP_PARENT}/{cg}"));
                report.removed_cgroups.push(cg);
            }
        }
        report
    }

    /// Removes the cgroup parent when no instance is left (daemon shutdown).
    pub fn remove_cgroup_parent(&self) {
        if self.instances().is_empty() {
            cgroups::remove(CGROUP_PARENT);
        }
    }
}

/// What [`Runtime::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryReport {
    /// Instances re-adopted.
    pub adopted: Vec<String>,
    /// Containers removed.
    pub removed_containers: Vec<String>,
    /// Mounts removed.
    pub removed_mounts: Vec<String>,
    /// Instance directories (and their namespaces) removed.
    pub removed_instances: Vec<String>,
    /// cgroups removed.
    pub removed_cgroups: Vec<String>,
}

/// The hostname of an instance (at most 63 characters).
pub fn hostname(id: &str) -> String {
    id.chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// SIGKILL is due at the end of the termination grace, or at the shutdown's deadline
    /// when that is sooner; a later shutdown deadline never extends the grace.
    #[test]
    fn kill_is_due_at_the_grace_or_the_shutdown_deadline() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        assert_eq!(kill_due(t0, grace, None), t0 + grace);
        let soon = t0 + Duration::from_secs(3);
        assert_eq!(kill_due(t0, grace, Some(soon)), soon);
        let late = t0 + Duration::from_secs(30);
        assert_eq!(kill_due(t0, grace, Some(late)), t0 + grace);
        // A shutdown that began before this SIGTERM (its deadline is already past): at once.
        let past = t0 - Duration::from_secs(1);
        assert_eq!(kill_due(t0, grace, Some(past)), past);
    }

    /// A container that ignores SIGTERM is killed at the end of its grace; one already
    /// waiting out a long grace when shutdown begins is killed at the shutdown's deadline,
    /// not at the end of its grace (the defect of issue 10: a 300 s wait past a 30 s cap).
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_deadline_shortens_a_grace_already_running() {
        let (tx, mut rx) = watch::channel(None);
        let mut never = std::future::pending::<()>();
        let t0 = Instant::now();
        let out = exit_or_kill_due(&mut never, t0, Duration::from_secs(2), &mut rx).await;
        assert!(out.is_none());
        assert_eq!(Instant::now(), t0 + Duration::from_secs(2));

        let t1 = Instant::now();
        let grace = Duration::from_secs(300);
        let wait = tokio::spawn(async move {
            let mut never = std::future::pending::<()>();
            exit_or_kill_due(&mut never, t1, grace, &mut rx).await
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        tx.send_replace(Some(deadline));
        assert!(wait.await.expect("join").is_none());
        assert_eq!(Instant::now(), deadline);
    }

    /// An instance record written before the drain timeout had its name (`stopGrace`)
    /// still reads, so a daemon upgraded in place re-adopts the instances it left running.
    #[test]
    fn records_with_the_old_field_name_still_read() {
        let plan = skiff_plan();
        let new = serde_json::to_string(&plan).expect("serializes");
        assert!(new.contains("\"drainTimeout\""), "{new}");
        let old = new.replace("\"drainTimeout\"", "\"stopGrace\"");
        let read: InstancePlan = serde_json::from_str(&old).expect("old record reads");
        assert_eq!(read, plan);
    }

    /// The phases follow one another: image up to the hand-over, container up to every
    /// process running, ready from there; their sum is decision to readiness. A plan with a
    /// decision time still reads and writes as before (the time is not recorded).
    #[test]
    fn startup_phases_follow_one_another() {
        let t0 = Instant::now();
        let scheduled = Scheduled {
            unix_nanos: 1_000,
            at: t0,
        };
        let handed = t0 + Duration::from_millis(40);
        let running = handed + Duration::from_millis(250);
        let mut p = startup_phases(scheduled, handed, running);
        assert_eq!(
            (
                p.scheduled_unix_nanos,
                p.image_ms,
                p.container_ms,
                p.ready_ms
            ),
            (1_000, 40.0, 250.0, None)
        );
        let ready = running + Duration::from_millis(710);
        startup_ready(&mut p, ready - handed);
        assert_eq!(p.ready_ms, Some(710.0));
        assert_eq!(p.total_ms(), Some(1000.0));
        // Marks out of order (a clock read before the one it follows) give 0, never less.
        let p = startup_phases(scheduled, t0, t0 - Duration::from_millis(1));
        assert_eq!(p.container_ms, 0.0);
    }

    /// A plan's decision time is not recorded: a record reads back without it.
    #[test]
    fn the_decision_time_is_not_recorded() {
        let mut plan = skiff_plan();
        plan.scheduled = Some(Scheduled::now());
        let json = serde_json::to_string(&plan).expect("serializes");
        assert!(!json.contains("scheduled"), "{json}");
        let back: InstancePlan = serde_json::from_str(&json).expect("reads");
        assert_eq!(back.scheduled, None);
    }

    /// A plan of one revision with no containers, as records hold them.
    fn skiff_plan() -> InstancePlan {
        InstancePlan {
            id: "hello-00001-abcde".into(),
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            containers: vec![],
            serving: 0,
            port: 8080,
            volumes: vec![],
            drain_timeout: Duration::from_secs(300),
            egress: None,
            scheduled: None,
            task: None,
        }
    }

    /// A container that exits within its grace is not killed: its exit is returned.
    #[tokio::test(start_paused = true)]
    async fn an_exit_within_the_grace_is_taken() {
        let (_tx, mut rx) = watch::channel(None);
        let t0 = Instant::now();
        let mut exit = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        });
        let out = exit_or_kill_due(&mut exit, t0, Duration::from_secs(10), &mut rx).await;
        assert_eq!(out, Some(7));
        assert_eq!(Instant::now(), t0 + Duration::from_secs(1));
    }
}
