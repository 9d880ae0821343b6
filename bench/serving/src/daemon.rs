//! The benchmark's own `skiff server`: a private copy of the binary, a data directory inside
//! the run's working directory, the API and the ingress on free loopback ports, logs as JSON
//! at `info` into a file; and the few API calls the benchmark makes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skiff_client::Client;
use tokio::process::{Child, Command};

/// How long the daemon may take to stop after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// `shutdown_grace_period_seconds` of the daemon: in-flight requests, then each instance's stop.
pub const SHUTDOWN_GRACE_SECONDS: u32 = 5;

/// A running daemon: where it is and how to talk to it. Its process handle is kept apart (see
/// [`Daemon::start`]) by whoever stops it.
#[derive(Debug)]
pub struct Daemon {
    pub pid: u32,
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub api: String,
    pub ingress: SocketAddr,
    pub client: Client,
    /// The exact command line, for the report.
    pub command_line: String,
}

/// Stops a process: `signal`, then SIGKILL if it has not exited within `timeout`. Returns how
/// it ended, described.
pub async fn stop_child(
    mut child: Child,
    signal: rustix::process::Signal,
    timeout: Duration,
) -> String {
    if let Ok(Some(status)) = child.try_wait() {
        return format!("had exited already ({status})");
    }
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => format!("stopped by {signal:?} ({status})"),
        Ok(Err(e)) => format!("waiting for it failed: {e}"),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            format!("ignored {signal:?} for {timeout:?}: killed")
        }
    }
}

/// A `Command` for the skiff binary with no `SKIFF_*` setting from our environment.
pub fn skiff_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SKIFF_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

impl Daemon {
    /// The arguments of `skiff server`, `extra` last.
    fn server_args(data_dir: &Path, router_threads: usize, extra: &[String]) -> Vec<String> {
        let mut args = vec![
            "server".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--api-listen".into(),
            "127.0.0.1:0".into(),
            "--ingress-listen".into(),
            "127.0.0.1:0".into(),
            "--log".into(),
            "info".into(),
            "--log-format".into(),
            "json".into(),
            "--shutdown-grace-period-seconds".into(),
            SHUTDOWN_GRACE_SECONDS.to_string(),
            // busybox httpd as PID 1 ignores SIGTERM: each cold-start run's teardown would
            // otherwise wait out the default 10 s termination grace (not a measured figure).
            "--termination-grace-period-seconds".into(),
            "1".into(),
        ];
        args.extend(["--router-threads".into(), router_threads.to_string()]);
        args.extend(extra.iter().cloned());
        args
    }

    /// Starts `bin` with its data directory `data_dir` and its log in `log`, `extra`
    /// arguments after the usual ones (`shown`: as the report shows them); returns once it
    /// has written `endpoints.json`. The process is put in `slot` at once, so that it is
    /// stopped even if this fails or is cancelled.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        log: &Path,
        slot: &std::sync::Mutex<Option<Child>>,
        router_threads: usize,
        extra: &[String],
        shown: &[String],
    ) -> anyhow::Result<Daemon> {
        let endpoints = data_dir.join("endpoints.json");
        let out = std::fs::File::create(log).context("creating the daemon log")?;
        let args = Self::server_args(data_dir, router_threads, extra);
        let mut cmd = skiff_command(bin);
        cmd.args(&args)
            .env("SKIFF_CONFIG", "/dev/null")
            .stdout(out.try_clone().context("daemon log")?)
            .stderr(out)
            // Its own process group: a ^C on the terminal reaches only the benchmark, which
            // stops the daemon in order.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawning skiff server")?;
        let pid = child.id().context("the daemon has no pid")?;
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let v = loop {
            let exited = slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "skiff server exited ({status}) before it was ready; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Some(v) = std::fs::read(&endpoints)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
            {
                break v;
            }
            if Instant::now() > deadline {
                bail!("skiff server wrote no endpoints.json within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let api = v["api"].as_str().context("endpoints.json: api")?.to_owned();
        let ingress: SocketAddr = v["ingress"]
            .as_str()
            .context("endpoints.json: ingress")?
            .parse()
            .context("endpoints.json: ingress address")?;
        let token = std::fs::read_to_string(data_dir.join("token"))
            .context("reading the daemon's token")?
            .trim()
            .to_owned();
        let client = Client::new(&api, Some(token)).context("API client")?;
        Ok(Daemon {
            pid,
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            api,
            ingress,
            client,
            command_line: format!(
                "skiff {}",
                Self::server_args(Path::new("DATA"), router_threads, shown).join(" ")
            ),
        })
    }

    /// Runs the CLI against this daemon; fails with its output unless it succeeds.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = skiff_command(&self.bin)
            .args(args)
            .env("SKIFF_DATA_DIR", &self.data_dir)
            .output()
            .await
            .context("running the skiff CLI")?;
        if !out.status.success() {
            bail!(
                "`skiff {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The API's `/metrics` (OpenMetrics text; it needs no token).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.api.trim_start_matches("http://").trim_end_matches('/');
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the API at {addr}"))?;
        // HTTP/1.0: the answer ends with the connection, whatever its framing.
        conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .context("asking for /metrics")?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut raw))
            .await
            .context("/metrics did not answer within 30 s")?
            .context("reading /metrics")?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("/metrics: no header block")?;
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body.to_owned())
    }

    /// Creates (or updates) a Service from its manifest.
    pub async fn apply(&self, manifest: &serde_json::Value) -> anyhow::Result<()> {
        let name = manifest["metadata"]["name"]
            .as_str()
            .context("manifest without a name")?;
        self.client
            .apply_service(
                "default",
                Some(name),
                manifest.to_string(),
                "application/json",
                false,
            )
            .await
            .with_context(|| format!("applying Service {name}"))?;
        Ok(())
    }

    /// Deletes a Service with its revisions.
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        self.client
            .delete_service("default", name, false)
            .await
            .with_context(|| format!("deleting Service {name}"))?;
        Ok(())
    }

    /// The scale of a Service's only revision (`GET …/services/{name}/scale`, `revisions[0]`).
    pub async fn scale(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let v = self
            .client
            .scale("default", name)
            .await
            .with_context(|| format!("reading the scale of {name}"))?;
        Ok(v.revisions
            .first()
            .map(serde_json::to_value)
            .transpose()?
            .unwrap_or(serde_json::Value::Null))
    }

    /// A Service's instances (`GET …/services/{name}/instances`).
    pub async fn instances(&self, name: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let list = self
            .client
            .instances("default", name)
            .await
            .with_context(|| format!("listing the instances of {name}"))?;
        Ok(list
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?)
    }

    /// Whether every container of the Service's revisions has its image pinned to a digest.
    pub async fn pinned(&self, name: &str) -> anyhow::Result<bool> {
        let revs = self
            .client
            .list_revisions(Some("default"), Some(name))
            .await
            .with_context(|| format!("listing the revisions of {name}"))?;
        Ok(!revs.is_empty()
            && revs.iter().all(|r| {
                !r.status.container_statuses.is_empty()
                    && r.status
                        .container_statuses
                        .iter()
                        .all(|c| c.image_digest.is_some())
            }))
    }

    /// The directory of an instance (it is removed when the instance is gone); its network
    /// namespace is pinned at `netns` inside it.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("run/instances").join(id)
    }

    /// Waits until the Service has `n` ready instances; returns their ids.
    pub async fn wait_ready(
        &self,
        name: &str,
        n: u64,
        max: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + max;
        loop {
            let s = self.scale(name).await?;
            if s["ready"].as_u64() == Some(n) {
                let ids: Vec<String> = self
                    .instances(name)
                    .await?
                    .iter()
                    .filter(|i| i["status"]["ready"].as_bool() == Some(true))
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect();
                if ids.len() as u64 == n {
                    return Ok(ids);
                }
            }
            if Instant::now() > deadline {
                bail!("{name}: not {n} ready instance(s) within {max:?}; scale: {s}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until none of `ids` has an instance directory any more (each was stopped and
    /// removed).
    pub async fn wait_gone(&self, ids: &[String], max: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + max;
        while ids.iter().any(|id| self.instance_dir(id).exists()) {
            if Instant::now() > deadline {
                bail!("instances {ids:?} still exist {max:?} after their Service was deleted");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}
