//! Health probes run against an instance: TCP connect and HTTP GET inside its network
//! namespace (through the [`Connector`]), and commands run inside a container.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::Connector;
use crate::oci::OciRuntime;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    /// Connect to the port.
    Tcp {
        /// The port.
        port: u16,
    },
    /// `GET path` and expect 200–399.
    Http {
        /// The port.
        port: u16,
        /// The path.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// Run a command in the container and expect exit code 0.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
    },
}

/// A probe with its timing, Kubernetes-style.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// What to do.
    pub action: ProbeAction,
    /// Wait before the first attempt.
    pub initial_delay: Duration,
    /// Limit of one attempt.
    pub timeout: Duration,
    /// Between attempts (zero: as fast as sensible, Knative's "aggressive" readiness).
    pub period: Duration,
    /// Consecutive successes that count.
    pub success_threshold: u32,
    /// Consecutive failures that count.
    pub failure_threshold: u32,
}

/// Runs probes.
#[derive(Clone)]
pub struct Prober {
    /// The namespace connector.
    pub connector: Connector,
    /// The OCI runtime (for exec probes).
    pub oci: Arc<dyn OciRuntime>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prober")
    }
}

impl Prober {
    /// One attempt of `action` against the instance (`container` is the runtime id for
    /// exec probes). Returns `Ok(())` on success and what failed otherwise.
    pub async fn attempt(
        &self,
        action: &ProbeAction,
        netns: &Arc<OwnedFd>,
        container: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        match action {
            ProbeAction::Tcp { port } => {
                match tokio::time::timeout(timeout, self.connector.connect(netns.clone(), *port))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("tcp connect to port {port}: {e}")),
                    Err(_) => Err(format!(
                        "tcp connect to port {port}: timed out after {timeout:?}"
                    )),
                }
            }
            ProbeAction::Http {
                port,
                path,
                headers,
            } => {
                let work = async {
                    let mut s = self
                        .connector
                        .connect(netns.clone(), *port)
                        .await
                        .map_err(|e| format!("GET :{port}{path}: connect: {e}"))?;
                    let mut req = format!(
                        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: skiff-probe\r\nConnection: close\r\n"
                    );
                    for (k, v) in headers {
                        req.push_str(&format!("{k}: {v}\r\n"));
                    }
                    req.push_str("\r\n");
                    s.write_all(req.as_bytes())
                        .await
                        .map_err(|e| format!("GET :{port}{path}: write: {e}"))?;
                    let mut buf = vec![0u8; 256];
                    let mut got = 0;
                    while got < 12 {
                        let n = s
                            .read(&mut buf[got..])
                            .await
                            .map_err(|e| format!("GET :{port}{path}: read: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let line = String::from_utf8_lossy(&buf[..got]);
                    let status: u16 = line
                        .strip_prefix("HTTP/1.")
                        .and_then(|r| r.get(2..5))
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| format!("GET :{port}{path}: not an HTTP response"))?;
                    if (200..400).contains(&status) {
                        Ok(())
                    } else {
                        Err(format!("GET :{port}{path}: HTTP {status}"))
                    }
                };
                match tokio::time::timeout(timeout, work).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("GET :{port}{path}: timed out after {timeout:?}")),
                }
            }
            ProbeAction::Exec { command } => match self.oci.exec(container, command, timeout).await
            {
                Ok(0) => Ok(()),
                Ok(-1) => Err(format!(
                    "`{}` timed out after {timeout:?}",
                    command.join(" ")
                )),
                Ok(code) => Err(format!("`{}` exited with code {code}", command.join(" "))),
                Err(e) => Err(format!("`{}`: {e}", command.join(" "))),
            },
        }
    }
}
