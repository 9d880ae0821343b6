//! Case B, the floor: bare runc on the same image layers and the same container config, with
//! none of skiff's machinery. Timed from just before the overlay is mounted to the first
//! accepted TCP connection inside the container's network namespace.
//!
//! The config is skiff's own (`skiff_runtime::spec::build`: same process, mounts, seccomp,
//! capabilities, masked paths, memory and pids limits, cgroup), except that runc creates the
//! network namespace itself: the namespace entry has no path.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};
use skiff_runtime::instance::CGROUP_PARENT;
use skiff_runtime::spec::{self, ContainerConfig};
use skiff_runtime::{cgroups, rootfs};
use tokio::process::Command;

use crate::ctx::{Ctx, MEMORY_LIMIT, PORT, READY_TIMEOUT};

/// One start of case B. Times in ms.
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
    /// Not timed: kill, reap, `runc delete --force`, unmount.
    pub teardown_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The environment skiff gives a container with this plan (see `start_container`): `PATH`,
/// `HOME` and `HOSTNAME` unless set, then the plan's.
fn env(ctx: &Ctx, hostname: &str, home: &str) -> Vec<String> {
    let plan = ctx.env();
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

fn floor_spec(ctx: &Ctx, id: &str, rootfs: &Path, home: &str) -> anyhow::Result<Spec> {
    let config = ContainerConfig {
        hostname: id.chars().take(63).collect(),
        rootfs: rootfs.to_path_buf(),
        read_only_rootfs: false,
        args: ctx.args.clone(),
        env: env(ctx, id, home),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        capabilities: spec::capabilities(&[], &[]),
        seccomp: true,
        netns: PathBuf::new(),
        cgroups_path: format!("{CGROUP_PARENT}/{id}"),
        memory_limit: Some(MEMORY_LIMIT),
        cpu_quota: None,
        cpu_shares: None,
        pids_limit: 1024,
        etc_dir: ctx.floor_etc.clone(),
        tmp_size: (MEMORY_LIMIT as u64 / 2).max(16 << 20),
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

fn runc(ctx: &Ctx) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root")
        .arg(&ctx.floor_runc_root)
        .stdin(Stdio::null());
    c
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

pub async fn once(ctx: &Ctx, n: usize, home: &str) -> anyhow::Result<FloorSample> {
    let id = format!("{}-f{n}", ctx.prefix);
    let bundle = ctx.floor_dir.join(&id);
    std::fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let mut made = Made::default();
    let result = start(ctx, &id, &bundle, home, &mut made).await;
    let t_down = Instant::now();
    let down = teardown(ctx, &id, &bundle, &made).await;
    let teardown_ms = ms(t_down.elapsed());
    let mut sample = result?;
    down?;
    sample.teardown_ms = teardown_ms;
    Ok(sample)
}

async fn start(
    ctx: &Ctx,
    id: &str,
    bundle: &Path,
    home: &str,
    made: &mut Made,
) -> anyhow::Result<FloorSample> {
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
    rootfs::mount_overlay(&ctx.lowers, &upper, &work, &rootfs_dir)
        .context("mounting the overlay")?;
    made.mounted = true;
    let t_mount = Instant::now();
    let spec = floor_spec(ctx, id, &rootfs_dir, home)?;
    let json = serde_json::to_vec_pretty(&spec).context("serializing the spec")?;
    std::fs::write(bundle.join("config.json"), json).context("writing config.json")?;
    let t_spec = Instant::now();
    let status = runc(ctx)
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
    loop {
        attempts += 1;
        match ctx.connector.connect(netns.clone(), PORT).await {
            Ok(s) => {
                drop(s);
                break;
            }
            Err(e) if t0.elapsed() > READY_TIMEOUT => {
                bail!("port {PORT} of {id} not accepting after {READY_TIMEOUT:?}: {e}")
            }
            Err(_) => precise_sleep(POLL).await,
        }
    }
    let t_ready = Instant::now();
    Ok(FloorSample {
        total_ms: ms(t_ready - t0),
        mount_ms: ms(t_mount - t0),
        spec_ms: ms(t_spec - t_mount),
        runc_ms: ms(t_runc - t_spec),
        after_runc_ms: ms(t_ready - t_runc),
        attempts,
        teardown_ms: 0.0,
    })
}

/// Waits (up to 10 s) for `pid` to end and reaps it. It is our child: this process is a
/// child subreaper (the runtime made it one), so the container's init is reparented to it when
/// `runc run -d` exits. If it is not our child after all, `/proc/PID` is watched instead.
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

async fn teardown(ctx: &Ctx, id: &str, bundle: &Path, made: &Made) -> anyhow::Result<()> {
    if let Some(pid) = made.pid {
        let _ = runc(ctx)
            .args(["kill", id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !reap(pid).await {
            bail!("the floor container's init {pid} did not end within 10 s of SIGKILL");
        }
    }
    let out = runc(ctx)
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
    std::fs::remove_dir_all(bundle).with_context(|| format!("removing {}", bundle.display()))?;
    Ok(())
}
