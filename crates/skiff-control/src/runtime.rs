//! What the control plane needs from the container runtime and the image store, as traits
//! (youki's `Syscall` is the model): the daemon passes the real ones, tests pass in-memory
//! fakes (`skiff_test_utils::fakes`), so reconcile passes run without root or runc.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use skiff_image::ImageRecord;
use skiff_image::puller::Progress;
use skiff_runtime::cgroups::Usage;
use skiff_runtime::instance::{
    InstanceEvent, InstancePlan, InstanceStatus, RecoveryReport, Scheduled,
};
use skiff_runtime::logs::{LogCounts, LogSource};
use tokio::sync::broadcast;

use crate::images::{Images, ResolveError};

/// An error from the runtime or the image store, with its chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An instance as the runtime holds it now.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// Its plan.
    pub plan: InstancePlan,
    /// Its state.
    pub status: InstanceStatus,
}

/// Runs instances.
#[async_trait]
pub trait InstanceRuntime: Send + Sync + 'static {
    /// Every serving instance held, stopping ones included (not jobs' tasks).
    fn instances(&self) -> Vec<InstanceInfo>;

    /// Every instance held that runs an attempt of a job's task.
    fn tasks(&self) -> Vec<InstanceInfo>;

    /// An instance's network namespace, while it exists.
    fn netns(&self, id: &str) -> Option<Arc<OwnedFd>>;

    /// An instance's resource usage.
    fn usage(&self, id: &str) -> Usage;

    /// Instance status changes from now on.
    fn events(&self) -> broadcast::Receiver<InstanceEvent>;

    /// Starts an instance; returns once its containers are created.
    async fn start(&self, plan: InstancePlan) -> Result<(), BoxError>;

    /// Parks an instance: created as [`InstanceRuntime::start`] would, its processes held
    /// before exec (phase `parked`) until [`InstanceRuntime::unpark`].
    async fn park(&self, plan: InstancePlan) -> Result<(), BoxError>;

    /// Starts a parked instance's processes (once); its start-up phases count from
    /// `scheduled`.
    fn unpark(&self, id: &str, scheduled: Scheduled) -> Result<(), BoxError>;

    /// Freezes a running instance (it keeps its memory, uses no CPU, takes no traffic).
    async fn freeze(&self, id: &str) -> Result<(), BoxError>;

    /// Thaws a frozen instance; its start-up phases count from `scheduled`.
    async fn thaw(&self, id: &str, scheduled: Scheduled) -> Result<(), BoxError>;

    /// Stops an instance (SIGTERM, SIGKILL after its grace) and removes what it used.
    async fn stop(&self, id: &str);

    /// Stops every instance, giving each at most `cap` between SIGTERM and SIGKILL.
    async fn stop_all(&self, cap: Duration);

    /// Re-adopts the instances of `plans` whose containers still run; removes the rest.
    async fn recover(&self, plans: Vec<InstancePlan>) -> RecoveryReport;

    /// Removes skiff's cgroup parents once no instance is left.
    fn remove_cgroup_parent(&self);

    /// Where instance logs are kept.
    fn log_dir(&self) -> PathBuf;

    /// Each revision's log lines stored and lost since the start (M13).
    fn log_counts(&self) -> Vec<(LogSource, LogCounts)>;
}

/// The real runtime: runc, cgroups and network namespaces.
pub struct Runc(pub Arc<skiff_runtime::Runtime>);

impl Runc {
    fn held(&self, tasks: bool) -> Vec<InstanceInfo> {
        self.0
            .instances()
            .into_iter()
            .filter(|i| i.plan.task.is_some() == tasks)
            .map(|i| InstanceInfo {
                plan: i.plan.clone(),
                status: i.status(),
            })
            .collect()
    }
}

#[async_trait]
impl InstanceRuntime for Runc {
    fn instances(&self) -> Vec<InstanceInfo> {
        self.held(false)
    }

    fn tasks(&self) -> Vec<InstanceInfo> {
        self.held(true)
    }

    fn netns(&self, id: &str) -> Option<Arc<OwnedFd>> {
        self.0.instance(id).map(|i| i.netns())
    }

    fn usage(&self, id: &str) -> Usage {
        self.0.instance(id).map(|i| i.usage()).unwrap_or_default()
    }

    fn events(&self) -> broadcast::Receiver<InstanceEvent> {
        self.0.events()
    }

    async fn start(&self, plan: InstancePlan) -> Result<(), BoxError> {
        self.0
            .start(plan)
            .await
            .map(drop)
            .map_err(|e| Box::new(e) as BoxError)
    }

    async fn park(&self, plan: InstancePlan) -> Result<(), BoxError> {
        self.0
            .park(plan)
            .await
            .map(drop)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn unpark(&self, id: &str, scheduled: Scheduled) -> Result<(), BoxError> {
        self.0
            .unpark(id, scheduled)
            .map_err(|e| Box::new(e) as BoxError)
    }

    async fn freeze(&self, id: &str) -> Result<(), BoxError> {
        self.0.freeze(id).await.map_err(|e| Box::new(e) as BoxError)
    }

    async fn thaw(&self, id: &str, scheduled: Scheduled) -> Result<(), BoxError> {
        self.0
            .thaw(id, scheduled)
            .await
            .map_err(|e| Box::new(e) as BoxError)
    }

    async fn stop(&self, id: &str) {
        // An instance already gone is stopped.
        let _ = self.0.stop(id).await;
    }

    async fn stop_all(&self, cap: Duration) {
        self.0.stop_all(cap).await;
    }

    async fn recover(&self, plans: Vec<InstancePlan>) -> RecoveryReport {
        self.0.recover(plans).await
    }

    fn remove_cgroup_parent(&self) {
        self.0.remove_cgroup_parent();
    }

    fn log_dir(&self) -> PathBuf {
        self.0.logs().dir().to_path_buf()
    }

    fn log_counts(&self) -> Vec<(LogSource, LogCounts)> {
        self.0.logs().counts()
    }
}

/// The router's [`skiff_router::Connect`] over the runtime's setns connector (the router
/// does not depend on the runtime crate).
#[derive(Debug, Clone)]
pub struct NetnsConnect(pub skiff_runtime::netns::Connector);

impl skiff_router::Connect for NetnsConnect {
    fn connect(
        &self,
        netns: Arc<std::os::fd::OwnedFd>,
        port: u16,
    ) -> skiff_router::ConnectFuture<'_> {
        Box::pin(self.0.connect(netns, port))
    }
}

/// How long the router's 502 waits for the runtime to record why an instance cut a request.
const EXPLAIN_WAIT: Duration = Duration::from_millis(500);
/// A termination this recent is the one that cut the request.
const RECENT: Duration = Duration::from_secs(10);

/// The router's [`skiff_router::Explain`]: why an instance cut a request, from the runtime's
/// record of its containers (an OOM kill with the memory limit, or an exit code; never its
/// output, which the public answer must not carry).
pub struct ExplainFailures(pub Arc<dyn InstanceRuntime>);

impl ExplainFailures {
    /// What the runtime says now: `Some` once it recorded a recent end of a container.
    fn now(&self, instance: &str) -> Option<String> {
        let info = self
            .0
            .instances()
            .into_iter()
            .find(|i| i.plan.id == instance)?;
        let now = jiff::Timestamp::now();
        info.status
            .containers
            .iter()
            .zip(&info.plan.containers)
            .find_map(|(c, plan)| {
                let t = c.last_termination.as_ref()?;
                let at = t.at.parse::<jiff::Timestamp>().ok()?;
                let age = Duration::try_from(now.duration_since(at)).ok()?;
                (age <= RECENT).then(|| termination(instance, &c.name, t, plan.memory_limit))
            })
    }
}

/// A container's end for the client, in one line.
fn termination(
    instance: &str,
    container: &str,
    t: &skiff_runtime::instance::Termination,
    memory_limit: Option<i64>,
) -> String {
    if t.reason == crate::status::reasons::OOM_KILLED {
        let limit = match memory_limit {
            Some(b) if b % (1 << 20) == 0 => format!("{}Mi", b >> 20),
            Some(b) => format!("{b} bytes"),
            None => "none set".to_owned(),
        };
        format!(
            "instance `{instance}` was killed for running out of memory (container `{container}`, memory limit {limit}) while answering; raise resources.limits.memory"
        )
    } else {
        let how = t
            .exit_code
            .map_or_else(|| t.reason.clone(), |c| format!("exited with code {c}"));
        format!("instance `{instance}`: container `{container}` {how} while answering")
    }
}

impl skiff_router::Explain for ExplainFailures {
    fn explain(&self, instance: &str) -> skiff_router::ExplainFuture<'_> {
        let instance = instance.to_owned();
        Box::pin(async move {
            // The connection is cut as the process dies; the runtime records the end a
            // moment later.
            let deadline = tokio::time::Instant::now() + EXPLAIN_WAIT;
            loop {
                if let Some(why) = self.now(&instance) {
                    return Some(why);
                }
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

/// Where instances' images come from.
#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// Resolves a container's image to a local, pinned image, pulling as `policy` says.
    async fn resolve(
        &self,
        image: &str,
        policy: Option<&str>,
        progress: Progress,
    ) -> Result<ImageRecord, ResolveError>;

    /// A local image by digest.
    async fn by_digest(&self, digest: &str) -> Result<Option<ImageRecord>, BoxError>;

    /// Where a layer is unpacked.
    fn layer_path(&self, digest: &str) -> PathBuf;
}

#[async_trait]
impl ImageStore for Images {
    async fn resolve(
        &self,
        image: &str,
        policy: Option<&str>,
        progress: Progress,
    ) -> Result<ImageRecord, ResolveError> {
        Images::resolve(self, image, policy, progress).await
    }

    async fn by_digest(&self, digest: &str) -> Result<Option<ImageRecord>, BoxError> {
        self.content()
            .by_digest(digest)
            .await
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn layer_path(&self, digest: &str) -> PathBuf {
        self.content().layer_path(digest).unwrap_or_default()
    }
}
