//! What every part of the run shares: the working directory, the id prefix, the daemon, the
//! two images (imported once), the processes to stop whatever happens, and progress output.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use skiff_runtime::netns::Connector;
use tokio::process::Child;

use crate::daemon::Daemon;

/// The port both images listen on (`PORT`, the Knative default).
pub const PORT: u16 = 8080;

/// Prints a progress line on stderr.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[serving-bench {}] {}",
        jiff::Zoned::now().strftime("%H:%M:%S"),
        msg.as_ref()
    );
}

/// Processes the run started that must be stopped in order at the end, whatever happened.
#[derive(Debug, Default)]
pub struct Procs {
    pub daemon: Mutex<Option<Child>>,
    /// The second daemon, with request logs and traces on (router part only).
    pub telemetry_daemon: Mutex<Option<Child>>,
    /// The daemon that parks sandboxes (cold-start part only).
    pub parking_daemon: Mutex<Option<Child>>,
    pub nginx: Mutex<Option<Child>>,
}

impl Procs {
    pub fn take(slot: &Mutex<Option<Child>>) -> Option<Child> {
        slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// An image imported into the daemon, and where its layers are unpacked.
#[derive(Debug, Clone)]
pub struct Image {
    /// `skiff.local/serving-bench/NAME:v1`.
    pub reference: String,
    /// Its unpacked layers in the daemon's content store, top first.
    pub lowers: Vec<PathBuf>,
    /// Entrypoint + cmd.
    pub args: Vec<String>,
    /// The image's environment.
    pub env: Vec<(String, String)>,
    /// Layer count and compressed size.
    pub layers: usize,
    pub size: u64,
}

/// Builds `builder`'s image as an OCI layout in `dir`, imports it into the daemon as
/// `reference`, and finds its unpacked layers in the daemon's content store.
pub async fn import(
    daemon: &Daemon,
    builder: &skiff_test_utils::oci::ImageBuilder,
    dir: &Path,
    reference: &str,
) -> anyhow::Result<Image> {
    let info = builder
        .write_oci_layout(dir, "v1")
        .with_context(|| format!("writing the OCI layout of {reference}"))?;
    let dir_s = dir.display().to_string();
    daemon
        .cli(&["images", "import", &dir_s, "--tag", reference])
        .await
        .with_context(|| format!("importing {reference}"))?;
    let config: serde_json::Value =
        serde_json::from_slice(&info.config).context("the image config")?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = strings(&config["config"]["Entrypoint"]);
    args.extend(strings(&config["config"]["Cmd"]));
    let env = strings(&config["config"]["Env"])
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut lowers = Vec::new();
    for l in info.layers.iter().rev() {
        let hex = l.diff_id.trim_start_matches("sha256:");
        let path = daemon.data_dir.join("images/layers/sha256").join(hex);
        anyhow::ensure!(
            path.is_dir(),
            "layer {} of {reference} is not unpacked at {}",
            l.diff_id,
            path.display()
        );
        lowers.push(path);
    }
    Ok(Image {
        reference: reference.to_owned(),
        lowers,
        args,
        env,
        layers: info.layers.len(),
        size: info.layers.iter().map(|l| l.size).sum(),
    })
}

/// The run's shared state.
#[derive(Debug)]
pub struct Bench {
    /// Every Service, instance, container and cgroup of the run starts with `<prefix>-`.
    pub prefix: String,
    /// The working directory (everything on disk lives below it).
    pub work: PathBuf,
    /// The daemon of every part, with request logs and traces off.
    pub daemon: Daemon,
    /// The router part's second daemon, with request logs and traces on, and its OTLP sink.
    pub telemetry: Option<TelemetryDaemon>,
    /// The cold-start part's daemon that parks sandboxes (its default), with request logs
    /// off like the first (which parks none).
    pub parking: Option<Daemon>,
    /// busybox httpd (cold starts).
    pub httpd: Image,
    /// skiff-test-server (burst).
    pub server: Image,
    /// The server behind the router cases, and its description.
    pub router_backend: Image,
    pub router_backend_name: String,
    /// Processes to stop at the end.
    pub procs: std::sync::Arc<Procs>,
    /// Sockets inside instances' network namespaces (readiness checks of nginx).
    pub connector: Connector,
}

/// The router part's traced daemon: its own data directory (`data-telemetry`), loopback
/// ports and router threads like the first; request logs on, traces exported to `sink`.
#[derive(Debug)]
pub struct TelemetryDaemon {
    pub daemon: Daemon,
    pub sink: crate::otlp::Sink,
}

impl Bench {
    /// A Service name of this run.
    pub fn service(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// The Host header that reaches a Service through the ingress.
    pub fn host(&self, service: &str) -> String {
        format!("{service}.default.localhost")
    }
}
