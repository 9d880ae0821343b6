//! Test support for skiff: [`TestDaemon`] runs the real `skiff server` binary on free
//! loopback ports with a temporary data directory; [`wait_for`] polls a condition with a
//! deadline instead of sleeping; [`fakes`] holds in-memory stand-ins for the runtime and the
//! image store, for reconcile tests without root; `browser` (feature `browser`) drives a real headless
//! Chromium for the dashboard's tests.
//!
//! When a test panics, the daemon is killed but its data directory and log are kept, and
//! their path is printed, so the evidence survives.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skiff_client::Client;

#[cfg(feature = "browser")]
pub mod browser;
pub mod fakes;
pub mod images;
pub mod net;
pub mod oci;
pub mod otlp;
pub mod registry;

/// The longest any condition is waited for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Polls `check` every `interval` until it returns `Some`, or fails after `max`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    interval: Duration,
    max: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + max;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {max:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// A running `skiff server` for one test.
pub struct TestDaemon {
    binary: PathBuf,
    root: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
    api: String,
    ingress: String,
    token: String,
}

impl TestDaemon {
    /// Starts a daemon from `binary` (`env!("CARGO_BIN_EXE_skiff")`) with a fresh data dir.
    pub async fn start(binary: &str) -> anyhow::Result<TestDaemon> {
        Self::start_with(binary, &[]).await
    }

    /// Starts a daemon with extra `skiff server` flags.
    pub async fn start_with(binary: &str, extra_args: &[&str]) -> anyhow::Result<TestDaemon> {
        let root = tempfile::Builder::new()
            .prefix("skiff-test-")
            .tempdir()
            .context("temp dir")?;
        let data_dir = root.path().join("data");
        let log = root.path().join("daemon.log");
        let mut d = TestDaemon {
            binary: PathBuf::from(binary),
            root: Some(root),
            data_dir,
            log,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            api: String::new(),
            ingress: String::new(),
            token: String::new(),
        };
        d.launch().await?;
        Ok(d)
    }

    /// A `Command` for the skiff binary with a clean `SKIFF_*` environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SKIFF_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let endpoints = self.data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("daemon log")?;
        // A restart keeps the addresses of the first start, as a restarted daemon would.
        let api_listen = match self.api.strip_prefix("http://") {
            Some(a) => a.to_owned(),
            None => "127.0.0.1:0".to_owned(),
        };
        let ingress_listen = if self.ingress.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.ingress.clone()
        };
        let mut cmd = self.command();
        cmd.args([
            "server",
            "--api-listen",
            &api_listen,
            "--ingress-listen",
            &ingress_listen,
            "--log",
            "info",
        ])
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(&self.extra_args)
        .env("SKIFF_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log")?)
        .stderr(log);
        let child = cmd.spawn().context("spawning skiff server")?;
        let pid = child.id();
        self.child = Some(child);
        let found = wait_for(
            "the daemon to write endpoints.json",
            Duration::from_millis(10),
            MAX_WAIT,
            || {
                let endpoints = endpoints.clone();
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    let v: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&endpoints).ok()?).ok()?;
                    (v["pid"].as_u64() == Some(u64::from(pid))).then_some(Ok(v))
                }
            },
        )
        .await?;
        let v = match found {
            Ok(v) => v,
            Err(status) => bail!(
                "skiff server exited ({status}) before it was ready; log:\n{}",
                self.log_text()
            ),
        };
        self.api = v["api"].as_str().unwrap_or_default().to_owned();
        self.ingress = v["ingress"].as_str().unwrap_or_default().to_owned();
        self.token = std::fs::read_to_string(self.data_dir.join("token"))
            .context("token")?
            .trim()
            .to_owned();
        Ok(())
    }

    /// The API base URL.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// The ingress address (`127.0.0.1:PORT`).
    pub fn ingress(&self) -> &str {
        &self.ingress
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sets the daemon's open-file limit (soft and hard), as `prlimit --nofile` would.
    pub fn set_nofile_limit(&self, limit: u64) -> anyhow::Result<()> {
        let pid = self.pid().context("the daemon is not running")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
        rustix::process::prlimit(
            Some(pid),
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            },
        )
        .context("prlimit")?;
        Ok(())
    }

    /// The daemon's resident memory now and at its peak (VmRSS, VmHWM), in bytes.
    pub fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let pid = self.pid().context("the daemon is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name}"))?;
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad {line}"))?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// An authenticated API client.
    pub fn client(&self) -> Client {
        Client::new(&self.api, Some(self.token.clone())).expect("valid server URL")
    }

    /// Runs the CLI against this daemon (it finds the server and token in the data dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    /// Runs the CLI with `stdin` as standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = self.command();
        cmd.args(args)
            .env("SKIFF_DATA_DIR", &self.data_dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning the skiff CLI");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("writing stdin");
        }
        child.wait_with_output().expect("running the skiff CLI")
    }

    /// Runs the CLI without the data directory (so without the token or endpoints), with
    /// `--server` pointing at this daemon.
    pub fn cli_remote(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args)
            .args(["--server", &self.api])
            .env("SKIFF_DATA_DIR", "/nonexistent-skiff-data")
            .stdin(Stdio::null());
        cmd.output().expect("running the skiff CLI")
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its exit code.
    pub async fn stop(&mut self) -> anyhow::Result<Option<i32>> {
        if self.child.is_none() {
            return Ok(None);
        }
        self.terminate()?;
        self.wait_exit().await
    }

    /// Sends SIGTERM without waiting (a second one makes the daemon exit at once).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("the daemon is not running")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("SIGTERM")?;
        Ok(())
    }

    /// Waits for the daemon to exit; returns its exit code.
    pub async fn wait_exit(&mut self) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let status = wait_for(
            "the daemon to exit",
            Duration::from_millis(20),
            MAX_WAIT,
            || {
                let s = child.try_wait().ok().flatten();
                async move { s }
            },
        )
        .await?;
        Ok(status.code())
    }

    /// Starts the daemon again on the same data directory (after [`kill9`](Self::kill9) or
    /// [`stop`](Self::stop)).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch().await
    }

    /// Removes what the daemon's instances may have left (after a `kill -9`, or a test that
    /// failed before stopping them): runtime containers under its runc root, mounts under its
    /// data directory, and their cgroups. Returns what it removed.
    pub fn force_cleanup(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let root = self.data_dir.join("run/runc");
        // `runc list` makes its root directory when it is missing: after the data directory
        // is gone (a second cleanup, from drop), it would leave `run/runc` behind in /tmp.
        let listed = if root.is_dir() {
            Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
                for h in [
                    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                    "systemd", "unified",
                ] {
                    let cg = Path::new("/sys/fs/cgroup")
                        .join(h)
                        .join("skiff")
                        .join(id.trim_start_matches("skiff-"));
                    let _ = std::fs::remove_dir(cg);
                }
                removed.push(format!("container {id}"));
            }
        }
        let dir = self.data_dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
            removed.push(format!("mount {m}"));
        }
        removed
    }

    /// Stops the daemon and removes its directory.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let leftovers = self.force_cleanup();
        if !leftovers.is_empty() {
            bail!("the daemon left behind: {leftovers:?}");
        }
        if let Some(root) = self.root.take() {
            root.close().context("removing the test directory")?;
        }
        Ok(())
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
        let removed = self.force_cleanup();
        if !removed.is_empty() {
            eprintln!(
                "test daemon left {} things behind; removed them",
                removed.len()
            );
        }
        if std::thread::panicking()
            && let Some(root) = self.root.take()
        {
            let kept = root.keep();
            eprintln!(
                "test failed: skiff data dir and daemon.log kept in {}",
                kept.display()
            );
        }
    }
}
