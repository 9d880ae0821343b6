//! The OCI runtime command line (`runc`, or `crun`, which speaks the same CLI), behind the
//! [`OciRuntime`] trait so an embedded runtime (youki's libcontainer) can replace it later.
//!
//! Every call keeps what the runtime said when it fails: the exit status and its stderr.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::process::Command;
use tracing::debug;

/// A runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The binary could not be started.
    #[error("starting `{binary}`")]
    Spawn {
        /// The runtime binary.
        binary: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime exited with an error.
    #[error("`{binary} {command}` failed ({status}): {stderr}")]
    Failed {
        /// The runtime binary.
        binary: String,
        /// The subcommand and container.
        command: String,
        /// The exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// The runtime's output is not what its CLI promises.
    #[error("`{binary} {command}` printed unexpected output: {detail}")]
    Output {
        /// The runtime binary.
        binary: String,
        /// The subcommand.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

impl OciError {
    /// Whether the runtime said the container does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OciError::Failed { stderr, .. } if stderr.contains("does not exist") || stderr.contains("not found"))
    }
}

/// A container as `state`/`list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    /// The container id.
    pub id: String,
    /// Its init process on the host (0 once stopped).
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The bundle directory.
    pub bundle: PathBuf,
}

/// What skiff needs of an OCI runtime.
#[async_trait]
pub trait OciRuntime: Send + Sync + 'static {
    /// The binary's name, for messages.
    fn name(&self) -> &str;
    /// Creates and starts a container detached; its stdio are the given ones (the container's
    /// init inherits them). Returns its init pid.
    async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError>;
    /// Creates a container without starting it: its init sets everything up and waits
    /// before exec (runc's exec FIFO) until [`OciRuntime::start`]. Returns its init pid.
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError>;
    /// Starts a created container: its init execs the process.
    async fn start(&self, id: &str) -> Result<(), OciError>;
    /// Freezes every process of the container (cgroup freezer).
    async fn pause(&self, id: &str) -> Result<(), OciError>;
    /// Thaws a frozen container.
    async fn resume(&self, id: &str) -> Result<(), OciError>;
    /// Sends a signal (`TERM`, `KILL`, …) to the container's init.
    async fn kill(&self, id: &str, signal: &str) -> Result<(), OciError>;
    /// Deletes the container (force: kill it first if it runs).
    async fn delete(&self, id: &str, force: bool) -> Result<(), OciError>;
    /// The container's state.
    async fn state(&self, id: &str) -> Result<ContainerState, OciError>;
    /// Every container this runtime root knows.
    async fn list(&self) -> Result<Vec<ContainerState>, OciError>;
    /// Runs a command inside the container and returns its exit code.
    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: std::time::Duration,
    ) -> Result<i32, OciError>;
}

/// `runc` or `crun` driven through its command line.
#[derive(Debug, Clone)]
pub struct RuncCli {
    binary: String,
    root: PathBuf,
}

impl RuncCli {
    /// A driver for `binary` keeping its state in `root` (skiff's own, so `runc list` there
    /// shows only skiff's containers).
    pub fn new(binary: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        RuncCli {
            binary: binary.into(),
            root: root.into(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        c
    }

    /// Runs `run --detach` or `create` for a bundle with the container's stdio and returns
    /// its init pid (from `--pid-file`).
    async fn spawn_with_pid(
        &self,
        verb: &str,
        args: &[&str],
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError> {
        let pid_file = bundle.join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // runc writes its own errors to stderr, which is also the container's: its errors
        // reach the log, and its exit status tells us whether the start failed.
        let status = c
            .spawn()
            .map_err(|source| OciError::Spawn {
                binary: self.binary.clone(),
                source,
            })?
            .wait()
            .await
            .map_err(|source| OciError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if !status.success() {
            return Err(OciError::Failed {
                binary: self.binary.clone(),
                command: format!("{verb} {id}"),
                status: status.to_string(),
                stderr: "see the instance's log for the runtime's message".to_owned(),
            });
        }
        let text = tokio::fs::read_to_string(&pid_file)
            .await
            .map_err(|e| OciError::Output {
                binary: self.binary.clone(),
                command: format!("{verb} {id}"),
                detail: format!("no pid file: {e}"),
            })?;
        let pid = text.trim().parse::<i32>().map_err(|e| OciError::Output {
            binary: self.binary.clone(),
            command: format!("{verb} {id}"),
            detail: format!("bad pid file `{}`: {e}", text.trim()),
        })?;
        debug!(container = id, pid, verb, "container created");
        Ok(pid)
    }

    async fn output(&self, what: &str, mut c: Command) -> Result<std::process::Output, OciError> {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = c.output().await.map_err(|source| OciError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(OciError::Failed {
                binary: self.binary.clone(),
                command: what.to_owned(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .chars()
                    .take(2000)
                    .collect(),
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl OciRuntime for RuncCli {
    fn name(&self) -> &str {
        &self.binary
    }

    async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError> {
        self.spawn_with_pid("run", &["run", "--detach"], id, bundle, stdout, stderr)
            .await
    }

    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, OciError> {
        self.spawn_with_pid("create", &["create"], id, bundle, stdout, stderr)
            .await
    }

    async fn start(&self, id: &str) -> Result<(), OciError> {
        // What `runc start` does, without its process: open the exec FIFO (init waits on
        // its other end), read init's byte, and remove the FIFO (which is how runc's state
        // tells "created" from "running"). Falls back to `start` when there is no FIFO
        // (another runtime's layout).
        let fifo = self.root.join(id).join("exec.fifo");
        let released = tokio::task::spawn_blocking({
            let fifo = fifo.clone();
            move || -> std::io::Result<usize> {
                use std::io::Read;
                let mut f = std::fs::File::open(&fifo)?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                std::fs::remove_file(&fifo)?;
                Ok(buf.len())
            }
        })
        .await
        .map_err(|e| OciError::Output {
            binary: self.binary.clone(),
            command: format!("start {id}"),
            detail: format!("releasing the exec FIFO: {e}"),
        })?;
        match released {
            Ok(n) if n > 0 => {
                debug!(container = id, "released the exec FIFO");
                Ok(())
            }
            Ok(_) => Err(OciError::Output {
                binary: self.binary.clone(),
                command: format!("start {id}"),
                detail: "the container's init closed its exec FIFO without a byte (it is not waiting to start)".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self
                .output(&format!("start {id}"), self.command(&["start", id]))
                .await
                .map(|_| ()),
            Err(e) => Err(OciError::Output {
                binary: self.binary.clone(),
                command: format!("start {id}"),
                detail: format!("releasing the exec FIFO {}: {e}", fifo.display()),
            }),
        }
    }

    async fn pause(&self, id: &str) -> Result<(), OciError> {
        self.output(&format!("pause {id}"), self.command(&["pause", id]))
            .await
            .map(|_| ())
    }

    async fn resume(&self, id: &str) -> Result<(), OciError> {
        self.output(&format!("resume {id}"), self.command(&["resume", id]))
            .await
            .map(|_| ())
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        self.output(
            &format!("kill {id} {signal}"),
            self.command(&["kill", id, signal]),
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        let args: Vec<&str> = if force {
            vec!["delete", "--force", id]
        } else {
            vec!["delete", id]
        };
        self.output(&format!("delete {id}"), self.command(&args))
            .await
            .map(|_| ())
    }

    async fn state(&self, id: &str) -> Result<ContainerState, OciError> {
        let out = self
            .output(&format!("state {id}"), self.command(&["state", id]))
            .await?;
        serde_json::from_slice(&out.stdout).map_err(|e| OciError::Output {
            binary: self.binary.clone(),
            command: format!("state {id}"),
            detail: e.to_string(),
        })
    }

    async fn list(&self) -> Result<Vec<ContainerState>, OciError> {
        let out = self
            .output("list", self.command(&["list", "--format", "json"]))
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() || text.trim() == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(&text).map_err(|e| OciError::Output {
            binary: self.binary.clone(),
            command: "list".into(),
            detail: e.to_string(),
        })
    }

    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: std::time::Duration,
    ) -> Result<i32, OciError> {
        let mut c = self.command(&["exec", id]);
        c.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = c.spawn().map_err(|source| OciError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(status.code().unwrap_or(-1)),
            Ok(Err(source)) => Err(OciError::Spawn {
                binary: self.binary.clone(),
                source,
            }),
            Err(_) => {
                let _ = child.kill().await;
                Ok(-1)
            }
        }
    }
}
