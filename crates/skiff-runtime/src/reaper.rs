//! Reaping container processes: skiff is a child subreaper, so when `runc run -d` exits the
//! container's init becomes skiff's child; this module waits for exactly the pids it was
//! told about (never `waitpid(-1)`, which would steal tokio's own children) and reports how
//! each one ended. Processes that are not skiff's children (containers re-adopted after a
//! restart) are watched through a pidfd instead; their exit status is unknown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustix::process::{Pid, WaitOptions, WaitStatus};
use tokio::sync::oneshot;
use tracing::warn;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with a code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ended, but it was not skiff's child, so how is unknown.
    Unknown,
}

impl Exit {
    /// The exit code as a shell reports it (128 + signal for signals).
    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(*c),
            Exit::Signal(s) => Some(128 + s),
            Exit::Unknown => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s} (exit code {})", 128 + s),
            Exit::Unknown => {
                f.write_str("exited (status unknown: the process was adopted after a restart)")
            }
        }
    }
}

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>;

/// Waits for tracked processes.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Waiters,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reaper")
    }
}

fn status_to_exit(s: WaitStatus) -> Exit {
    if let Some(code) = s.exit_status() {
        Exit::Code(code)
    } else if let Some(sig) = s.terminating_signal() {
        Exit::Signal(sig)
    } else {
        Exit::Unknown
    }
}

impl Reaper {
    /// Makes this process a child subreaper and starts reaping on SIGCHLD.
    pub fn start() -> std::io::Result<Reaper> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
        let reaper = Reaper::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.poll();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn poll(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let pids: Vec<i32> = waiters.keys().copied().collect();
        for pid in pids {
            let Some(p) = Pid::from_raw(pid) else {
                continue;
            };
            match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    if let Some(tx) = waiters.remove(&pid) {
                        let _ = tx.send(status_to_exit(status));
                    }
                }
                Ok(None) => {}
                Err(rustix::io::Errno::CHILD) => {
                    // Not our child (adopted after a restart): a pidfd watcher handles it.
                }
                Err(e) => warn!(pid, error = %e, "waitpid failed"),
            }
        }
    }

    /// Resolves when `pid` ends. Works whether or not it is skiff's child.
    pub fn wait(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let is_child = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    .and_then(|pp| pp.parse::<u32>().ok())
            })
            == Some(std::process::id());
        if is_child {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, tx);
            self.poll();
        } else {
            tokio::spawn(async move {
                let exit = watch_pidfd(pid).await;
                let _ = tx.send(exit);
            });
        }
        rx
    }
}

/// Waits for a process that is not our child to end, through a pidfd.
async fn watch_pidfd(pid: i32) -> Exit {
    let Some(p) = Pid::from_raw(pid) else {
        return Exit::Unknown;
    };
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(_) => return Exit::Unknown, // already gone
    };
    // SAFETY: `fd` is an owned pidfd that lives as long as the AsyncFd and is not closed or
    // registered elsewhere.
    match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    } {
        Ok(afd) => {
            let _ = afd.readable().await;
            Exit::Unknown
        }
        Err(_) => Exit::Unknown,
    }
}
