//! What both cases share: the imported image, the runtime under test, the floor, and the
//! per-container settings both cases use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skiff_image::content::ContentStore;
use skiff_image::metrics::ImageMetrics;
use skiff_image::puller::{Puller, no_progress};
use skiff_image::registry::{RegistryClient, RegistryOptions};
use skiff_runtime::instance::{ContainerPlan, InstancePlan, UserPlan};
use skiff_runtime::netns::Connector;
use skiff_runtime::oci::{OciRuntime, RuncCli};
use skiff_runtime::probe::{ProbeAction, ProbeSpec};
use skiff_runtime::{Runtime, RuntimeOptions};
use skiff_store::{SqliteStore, Store};

use skiff_bench_runtime::floor::{Floor, FloorSettings};

use crate::timed_oci::TimedOci;

/// The port busybox httpd listens on (the image reads `PORT`).
pub const PORT: u16 = 8080;
/// Memory limit of both cases' container.
pub const MEMORY_LIMIT: i64 = 64 << 20;
/// How long a start may take before the run is declared failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM to SIGKILL when stopping a skiff instance (not timed). busybox httpd is the
/// container's pid 1 and installs no SIGTERM handler, so the kernel drops SIGTERM and every
/// stop waits out the grace period; a short one keeps the run short.
pub const STOP_GRACE: Duration = Duration::from_millis(50);

pub struct Ctx {
    /// Every id (instances, floor containers, cgroups) starts with it.
    pub prefix: String,
    /// The image's unpacked layers in the content store, top first (overlay lowers).
    pub lowers: Vec<PathBuf>,
    /// argv (entrypoint + cmd).
    pub args: Vec<String>,
    /// The image's environment, as `(name, value)`.
    pub image_env: Vec<(String, String)>,
    /// Image facts for the report.
    pub image_layers: usize,
    pub image_size: u64,
    /// The runtime under test and its (timed) runc driver.
    pub rt: Arc<Runtime>,
    pub oci: Arc<TimedOci>,
    /// The floor (bare runc on the same layers with the same config).
    pub floor: Floor,
    /// The floor's connector, also used to watch skiff's port and by `--micro`.
    pub connector: Connector,
    /// Diagnostic: poll the port every 1 ms during skiff's start too.
    pub watch_port: bool,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("prefix", &self.prefix).finish()
    }
}

/// Paths of the run below the working directory.
pub fn skiff_runc_root(work: &Path) -> PathBuf {
    work.join("skiff/runc")
}
pub fn floor_dir(work: &Path) -> PathBuf {
    work.join("floor")
}
pub fn floor_runc_root(work: &Path) -> PathBuf {
    Floor::runc_root(&floor_dir(work))
}

impl Ctx {
    /// Imports the busybox httpd image into a content store under `work` and starts the
    /// runtime. Must run inside the tokio runtime.
    pub async fn setup(work: &Path, prefix: String, watch_port: bool) -> anyhow::Result<Ctx> {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&work.join("state.db")).context("opening the state store")?);
        let content =
            ContentStore::open(&work.join("images"), store).context("opening the content store")?;
        let puller = Puller::new(
            Arc::new(RegistryClient::new(
                RegistryOptions::new(),
                Default::default(),
            )),
            content.clone(),
            ImageMetrics::unregistered(),
        );
        let layout = work.join("layout");
        skiff_test_utils::images::busybox_httpd_image()
            .context("building the busybox httpd image")?
            .write_oci_layout(&layout, "v1")
            .context("writing the OCI layout")?;
        let image = skiff_image::import::import(
            &puller,
            &layout,
            Some(
                &"skiff.local/start-bench/httpd:v1"
                    .parse()
                    .context("image reference")?,
            ),
            no_progress(),
        )
        .await
        .context("importing the image")?
        .into_iter()
        .next()
        .context("the import returned no image")?;
        let lowers = image
            .layers
            .iter()
            .rev()
            .map(|l| content.layer_path(&l.diff_id))
            .collect::<Result<Vec<_>, _>>()
            .context("layer paths")?;
        let mut args = image.config.entrypoint.clone().unwrap_or_default();
        args.extend(image.config.cmd.clone().unwrap_or_default());
        let image_env: Vec<(String, String)> = image
            .config
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();

        let skiff_runc_root = skiff_runc_root(work);
        let oci = Arc::new(TimedOci::new(RuncCli::new("runc", &skiff_runc_root)));
        let mut opts = RuntimeOptions::new(&work.join("skiff"));
        opts.termination_grace = STOP_GRACE;
        let rt = Runtime::new(opts, oci.clone() as Arc<dyn OciRuntime>)
            .context("starting the runtime")?;

        let mut plan_env: Vec<(String, String)> = image_env.clone();
        plan_env.push(("PORT".into(), PORT.to_string()));
        let floor = Floor::new(
            &floor_dir(work),
            FloorSettings {
                prefix: prefix.clone(),
                lowers: lowers.clone(),
                args: args.clone(),
                env: plan_env,
                port: PORT,
                memory_limit: MEMORY_LIMIT,
                ready_timeout: READY_TIMEOUT,
            },
        )?;
        Ok(Ctx {
            prefix,
            lowers,
            args,
            image_env,
            image_layers: image.layers.len(),
            image_size: image.size,
            rt,
            oci,
            connector: floor.connector.clone(),
            floor,
            watch_port,
        })
    }

    /// The environment both cases give the container (besides what skiff adds itself).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.image_env.clone();
        env.push(("PORT".into(), PORT.to_string()));
        env
    }

    /// skiff's plan for instance `id`: one container, the image's layers, 64 MiB, a TCP
    /// readiness probe on the port (skiff probes every millisecond until first ready).
    pub fn plan(&self, id: &str) -> InstancePlan {
        InstancePlan {
            id: id.into(),
            namespace: "default".into(),
            service: "httpd".into(),
            revision: "httpd-00001".into(),
            containers: vec![ContainerPlan {
                name: "user-container".into(),
                lowers: self.lowers.clone(),
                args: self.args.clone(),
                env: self.env(),
                secret_env: Default::default(),
                working_dir: None,
                user: UserPlan::default(),
                read_only_rootfs: false,
                capabilities: skiff_runtime::spec::capabilities(&[], &[]),
                seccomp: true,
                memory_limit: Some(MEMORY_LIMIT),
                // As the daemon plans it: the writable layer in a tmpfs of the memory limit.
                scratch_limit: Some(MEMORY_LIMIT as u64),
                memory_request: None,
                cpu_quota: None,
                cpu_shares: None,
                mounts: vec![],
                readiness: Some(ProbeSpec {
                    action: ProbeAction::Tcp { port: PORT },
                    initial_delay: Duration::ZERO,
                    timeout: Duration::from_secs(1),
                    period: Duration::from_secs(1),
                    success_threshold: 1,
                    failure_threshold: 3,
                }),
                liveness: None,
                startup: None,
            }],
            serving: 0,
            port: PORT,
            volumes: vec![],
            drain_timeout: STOP_GRACE,
            egress: None,
            scheduled: None,
            task: None,
        }
    }
}
