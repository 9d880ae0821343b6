//! The floor: bare runc on an image's layers with skiff's own container config, with none of
//! skiff's machinery. Timed from just before the overlay is mounted to the first accepted TCP
//! connection inside the container's network namespace, and optionally on to the first byte
//! and the end of the answer to one request sent on that connection.
//!
//! The config is skiff's own (`skiff_runtime::spec::build`: same process, mounts, seccomp,
//! capabilities, masked paths, memory and pids limits, cgroup), except that runc creates the
//! network namespace itself: the namespace entry has no path.
//!
//! Containers are named `<prefix>-f<n>`, live in their own runc root (`<dir>/runc`) and get the
//! cgroup `/skiff/<prefix>-f<n>`. The process must be a child subreaper
//! (`prctl(PR_SET_CHILD_SUBREAPER)`; skiff's runtime makes its process one) so that a
//! container's init becomes its child when `runc run -d` exits and can be reaped at once.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};
use skiff_runtime::instance::CGROUP_PARENT;
use skiff_runtime::netns::Connector;
use skiff_runtime::spec::{self, ContainerConfig};
use skiff_runtime::{cgroups, rootfs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// One start of the floor. Times in ms.
#[derive(Debug, Clone)]
pub struct FloorSample {
    /// Overlay mount → first accepted connection.
    pub total_ms: f64,
    /// Fresh rootfs/upper/work dirs + overlay mount.
    pub mount_ms: f64,
    /// Spec built, serialized and written as config.json.
    pub spec_ms: f64,
    /// `runc run -d` itself.
    pub runc_ms: f64,
    /// `runc run -d` returned → first accepted connection (pid file, `/proc/PID/ns/net`,
    /// connect attempts 1 ms apart).
    pub after_runc_ms: f64,
    /// Connect attempts it took.
    pub attempts: u32,
    /// With [`Floor::once_with_request`]: the answer to the request sent on the accepted
    /// connection.
    pub response: Option<FloorResponse>,
    /// Not timed: kill, reap, `runc delete --force`, unmount.
    pub teardown_ms: f64,
}

/// The answer to the request a floor run sends once the port accepts. Times in ms from the
/// same start as [`FloorSample::total_ms`] (just before the overlay mount).
#[derive(Debug, Clone)]
pub struct FloorResponse {
    /// The status code of the answer.
    pub status: u16,
    /// → first byte of the answer.
    pub first_byte_ms: f64,
    /// → the connection closed by the server after the answer.
    pub full_ms: f64,
}

/// What the floor runs and with which limits. The same values as the skiff case it is compared
/// with: same layers, same argv, same environment, same memory limit.
#[derive(Debug, Clone)]
pub struct FloorSettings {
    /// Every container id and cgroup of the floor is `<prefix>-f<n>`.
    pub prefix: String,
    /// The image's unpacked layers, top first (the overlay's lower dirs).
    pub lowers: Vec<PathBuf>,
    /// argv (entrypoint + cmd).
    pub args: Vec<String>,
    /// The environment skiff's plan gives the container (the image's, plus `PORT`); `PATH`,
    /// `HOME` and `HOSTNAME` are added as skiff adds them.
    pub env: Vec<(String, String)>,
    /// The port the process listens on, inside its network namespace.
    pub port: u16,
    /// Memory limit, bytes.
    pub memory_limit: i64,
    /// How long a start may take before the run is declared failed.
    pub ready_timeout: Duration,
}

/// The floor: its settings, runc root, bundles, `/etc` files and connector.
pub struct Floor {
    settings: FloorSettings,
    runc_root: PathBuf,
    bundles: PathBuf,
    etc: PathBuf,
    /// root's home in the image, as skiff resolves it.
    home: String,
    /// The setns connector the floor connects with (skiff's own).
    pub connector: Connector,
}

impl std::fmt::Debug for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floor")
            .field("prefix", &self.settings.prefix)
            .field("runc_root", &self.runc_root)
            .finish()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The environment skiff gives a container with this plan environment (see
/// `start_container`): `PATH`, `HOME` and `HOSTNAME` unless set, then the plan's.
fn env(plan: &[(String, String)], hostname: &str, home: &str) -> Vec<String> {
    let has = |k: &str| plan.iter().any(|(n, _)| n == k);
    let mut env = Vec::new();
    if !has("PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !has("HOME") {
        env.push(format!("HOME={home}"));
    }
    if !has("HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    env.extend(plan.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// root's home as the image's `/etc/passwd` says (what skiff resolves), read from the layers
/// before timing.
pub fn image_root_home(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .find(|l| l.join("etc/passwd").is_file())
        .and_then(|l| rootfs::resolve_user(l, "").ok())
        .map_or_else(|| "/".to_owned(), |u| u.home)
}

impl Floor {
    /// The runc root of a floor made in `dir`.
    pub fn runc_root(dir: &Path) -> PathBuf {
        dir.join("runc")
    }

    /// A floor working in `dir` (created; it holds the runc root, the bundles and the `/etc`
    /// files), with a connector of two threads.
    pub fn new(dir: &Path, settings: FloorSettings) -> anyhow::Result<Floor> {
        let bundles = dir.join("bundles");
        let etc = dir.join("etc");
        std::fs::create_dir_all(&bundles).context("creating the floor's bundle dir")?;
        let hostname: String = format!("{}-floor", settings.prefix)
            .chars()
            .take(63)
            .collect();
        rootfs::write_etc_files(&etc, &hostname).context("writing the floor's /etc files")?;
        Ok(Floor {
            home: image_root_home(&settings.lowers),
            runc_root: Self::runc_root(dir),
            bundles,
            etc,
            connector: Connector::new(2).context("starting the floor's connector")?,
            settings,
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &FloorSettings {
        &self.settings
    }

    /// One start: mount, `runc run -d`, connect until accepted; then the teardown (not timed).
    pub async fn once(&self, n: usize) -> anyhow::Result<FloorSample> {
        self.run(n, None).await
    }

    /// As [`once`](Self::once), then `request` (a whole HTTP/1.x request that asks the server
    /// to close the connection) is written on the accepted connection and the answer read to
    /// the end; its first byte and its end are timed from the same start.
    pub async fn once_with_request(&self, n: usize, request: &[u8]) -> anyhow::Result<FloorSample> {
        self.run(n, Some(request)).await
    }

    async fn run(&self, n: usize, request: Option<&[u8]>) -> anyhow::Result<FloorSample> {
        let id = format!("{}-f{n}", self.settings.prefix);
        let bundle = self.bundles.join(&id);
        std::fs::create_dir_all(&bundle)
            .with_context(|| format!("creating {}", bundle.display()))?;
        let mut made = Made::default();
        let result = self.start(&id, &bundle, request, &mut made).await;
        let t_down = Instant::now();
        let down = self.teardown(&id, &bundle, &made).await;
        let teardown_ms = ms(t_down.elapsed());
        let mut sample = result?;
        down?;
        sample.teardown_ms = teardown_ms;
        Ok(sample)
    }

    fn spec(&self, id: &str, rootfs: &Path) -> anyhow::Result<Spec> {
        let s = &self.settings;
        let config = ContainerConfig {
            hostname: id.chars().take(63).collect(),
            rootfs: rootfs.to_path_buf(),
            read_only_rootfs: false,
            args: s.args.clone(),
            env: env(&s.env, id, &self.home),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            capabilities: spec::capabilities(&[], &[]),
            seccomp: true,
            netns: PathBuf::new(),
            cgroups_path: format!("{CGROUP_PARENT}/{id}"),
            memory_limit: Some(s.memory_limit),
            cpu_quota: None,
            cpu_shares: None,
            pids_limit: 1024,
            etc_dir: self.etc.clone(),
            tmp_size: (s.memory_limit as u64 / 2).max(16 << 20),
            volumes: vec![],
        };
        let mut spec = spec::build(&config).context("building the spec")?;
        let linux = spec
            .linux_mut()
            .as_mut()
            .context("spec has no linux section")?;
        let namespaces = linux
            .namespaces_mut()
            .as_mut()
            .context("spec has no namespaces")?;
        let mut replaced = false;
        for ns in namespaces.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                *ns = LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .build()?;
                replaced = true;
            }
        }
        if !replaced {
            bail!("skiff's spec has no network namespace entry");
        }
        Ok(spec)
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.runc_root).stdin(Stdio::null());
        c
    }
}

/// The floor's connect interval.
pub const POLL: Duration = Duration::from_millis(1);

/// Sleeps `d` on a blocking thread (an hrtimer sleep, ~50 µs late). tokio's timer works in
/// whole milliseconds and rounds deadlines up, so its `sleep(1 ms)` takes 1–2 ms (measured:
/// a failed attempt cost ~2.2 ms before the next one).
#[allow(
    clippy::disallowed_methods,
    reason = "on a blocking-pool thread, not a worker: tokio's timer cannot sleep 1 ms"
)]
pub async fn precise_sleep(d: Duration) {
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
}

/// What one start created, for its teardown.
#[derive(Default)]
struct Made {
    mounted: bool,
    pid: Option<i32>,
}

/// Waits (up to 10 s) for `pid` to end and reaps it. It is our child: this process is a
/// child subreaper (see the module's documentation), so the container's init is reparented to
/// it when `runc run -d` exits. If it is not our child after all, `/proc/PID` is watched
/// instead.
async fn reap(pid: i32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return true;
                }
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Floor {
    async fn start(
        &self,
        id: &str,
        bundle: &Path,
        request: Option<&[u8]>,
        made: &mut Made,
    ) -> anyhow::Result<FloorSample> {
        let (port, ready_timeout) = (self.settings.port, self.settings.ready_timeout);
        let (rootfs_dir, upper, work) = (
            bundle.join("rootfs"),
            bundle.join("upper"),
            bundle.join("work"),
        );
        let log_path = bundle.join("runc.log");
        let log = File::create(&log_path).context("creating the runc log")?;
        let pid_file = bundle.join("init.pid");

        let t0 = Instant::now();
        for d in [&rootfs_dir, &upper, &work] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        rootfs::mount_overlay(&self.settings.lowers, &upper, &work, &rootfs_dir)
            .context("mounting the overlay")?;
        made.mounted = true;
        let t_mount = Instant::now();
        let spec = self.spec(id, &rootfs_dir)?;
        let json = serde_json::to_vec_pretty(&spec).context("serializing the spec")?;
        std::fs::write(bundle.join("config.json"), json).context("writing config.json")?;
        let t_spec = Instant::now();
        let status = self
            .runc()
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdout(log.try_clone().context("runc log")?)
            .stderr(log)
            .status()
            .await
            .context("running runc")?;
        let t_runc = Instant::now();
        let pid_text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        made.pid = pid_text.trim().parse().ok();
        if !status.success() {
            bail!(
                "`runc run -d {id}` failed ({status}): {}",
                std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .trim()
            );
        }
        let pid = made
            .pid
            .with_context(|| format!("bad pid file: `{}`", pid_text.trim()))?;
        let netns: Arc<OwnedFd> = Arc::new(
            File::open(format!("/proc/{pid}/ns/net"))
                .with_context(|| format!("opening /proc/{pid}/ns/net"))?
                .into(),
        );
        let mut attempts = 0u32;
        let stream = loop {
            attempts += 1;
            match self.connector.connect(netns.clone(), port).await {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > ready_timeout => {
                    bail!("port {port} of {id} not accepting after {ready_timeout:?}: {e}")
                }
                Err(_) => precise_sleep(POLL).await,
            }
        };
        let t_ready = Instant::now();
        let response = match request {
            None => {
                drop(stream);
                None
            }
            Some(req) => Some(
                tokio::time::timeout(ready_timeout, exchange(stream, req, t0))
                    .await
                    .with_context(|| format!("{id} did not answer within {ready_timeout:?}"))?
                    .with_context(|| format!("the request to {id}"))?,
            ),
        };
        Ok(FloorSample {
            total_ms: ms(t_ready - t0),
            mount_ms: ms(t_mount - t0),
            spec_ms: ms(t_spec - t_mount),
            runc_ms: ms(t_runc - t_spec),
            after_runc_ms: ms(t_ready - t_runc),
            attempts,
            response,
            teardown_ms: 0.0,
        })
    }

    async fn teardown(&self, id: &str, bundle: &Path, made: &Made) -> anyhow::Result<()> {
        if let Some(pid) = made.pid {
            let _ = self
                .runc()
                .args(["kill", id, "KILL"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if !reap(pid).await {
                bail!("the floor container's init {pid} did not end within 10 s of SIGKILL");
            }
        }
        let out = self
            .runc()
            .args(["delete", "--force", id])
            .output()
            .await
            .context("running runc delete")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("does not exist") {
            bail!("`runc delete --force {id}` failed: {}", stderr.trim());
        }
        if made.mounted {
            rootfs::unmount(&bundle.join("rootfs")).context("unmounting the floor's rootfs")?;
        }
        cgroups::remove(&format!("{CGROUP_PARENT}/{id}"));
        std::fs::remove_dir_all(bundle)
            .with_context(|| format!("removing {}", bundle.display()))?;
        Ok(())
    }
}

/// Writes `request` on `stream`, then reads the answer until the server closes the
/// connection; times from `t0`.
async fn exchange(
    mut stream: tokio::net::TcpStream,
    request: &[u8],
    t0: Instant,
) -> anyhow::Result<FloorResponse> {
    let _ = stream.set_nodelay(true);
    stream
        .write_all(request)
        .await
        .context("writing the request")?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let mut first_byte = None;
    loop {
        let n = stream.read(&mut buf).await.context("reading the answer")?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(Instant::now);
        if head.len() < 64 {
            head.extend_from_slice(&buf[..n.min(64)]);
        }
    }
    let t_full = Instant::now();
    let first_byte = first_byte.context("the connection closed without an answer")?;
    // "HTTP/1.1 200 OK"
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| {
            format!(
                "the answer has no status line: {:?}",
                String::from_utf8_lossy(&head)
            )
        })?;
    Ok(FloorResponse {
        status,
        first_byte_ms: ms(first_byte - t0),
        full_ms: ms(t_full - t0),
    })
}
