//! `skiff server`: runs the daemon in the foreground.

use std::path::PathBuf;

use anyhow::Context;
use skiff_daemon::config::{self, Flags, ProcessEnv};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::exit::{Exit, FAILURE, OK};

/// Run the skiff daemon (API, ingress and state store) in the foreground.
///
/// Settings come from a TOML file, then SKIFF_* environment variables, then these flags.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The TOML config file [default: /etc/skiff/skiff.toml when it exists; env SKIFF_CONFIG].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory [default: /var/lib/skiff].
    #[arg(long)]
    pub data_dir: Option<String>,
    /// API address [default: 127.0.0.1:7070].
    #[arg(long)]
    pub api_listen: Option<String>,
    /// HTTP ingress address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub ingress_listen: Option<String>,
    /// Domain of service URLs [default: localhost].
    #[arg(long)]
    pub domain: Option<String>,
    /// Log filter, e.g. `info` or `info,skiff_store=debug` [default: info].
    #[arg(long)]
    pub log: Option<String>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Largest API request body in bytes [default: 1048576].
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    /// Seconds shutdown waits for in-flight requests [default: 30].
    #[arg(long)]
    pub shutdown_grace_period_seconds: Option<String>,
    /// Seconds a stopped instance has between SIGTERM and SIGKILL, after its requests in
    /// flight are done [default: 10].
    #[arg(long)]
    pub termination_grace_period_seconds: Option<String>,
    /// A Docker config.json with registry credentials.
    #[arg(long)]
    pub registry_auth_file: Option<String>,
    /// Registries reached over plain HTTP, comma-separated.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Option<String>,
    /// Registry mirrors: `REGISTRY=MIRROR[,MIRROR][;REGISTRY2=…]`.
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Option<String>,
    /// The OCI runtime: `runc` or `crun` [default: runc].
    #[arg(long)]
    pub runtime: Option<String>,
    /// The pids limit of every container [default: 1024].
    #[arg(long)]
    pub pids_limit: Option<String>,
    /// Seconds an idle revision keeps its last instance before scaling to zero [default: 30].
    #[arg(long)]
    pub scale_to_zero_grace_period_seconds: Option<String>,
    /// Whether idle revisions may scale to zero: true or false [default: true].
    #[arg(long)]
    pub enable_scale_to_zero: Option<String>,
    /// Most growth per autoscaler decision, as a factor of ready instances [default: 1000].
    #[arg(long)]
    pub max_scale_up_rate: Option<String>,
    /// Most shrinking per decision, as a divisor of ready instances [default: 2].
    #[arg(long)]
    pub max_scale_down_rate: Option<String>,
    /// Most requests waiting for instances of one revision [default: 1000].
    #[arg(long)]
    pub activator_queue_depth: Option<String>,
    /// Seconds a request waits for an instance before a 503 [default: 60].
    #[arg(long)]
    pub activator_queue_timeout_seconds: Option<String>,
    /// Threads the router serves on, 0 for one per core [default: 0].
    #[arg(long)]
    pub router_threads: Option<String>,
    /// Most client connections the ingress keeps open, 0 for 40% of the open-file limit
    /// [default: 0].
    #[arg(long)]
    pub ingress_max_connections: Option<String>,
    /// Seconds a new ingress connection has to send a complete request head [default: 30].
    #[arg(long)]
    pub ingress_header_read_timeout_seconds: Option<String>,
    /// Seconds an ingress connection may stay open with no request in flight [default: 60].
    #[arg(long)]
    pub ingress_idle_timeout_seconds: Option<String>,
    /// Most client connections the API keeps open [default: 512].
    #[arg(long)]
    pub api_max_connections: Option<String>,
}

impl ServerArgs {
    fn flags(&self) -> Flags {
        let mut flags = Flags::new();
        let pairs: [(&'static str, &Option<String>); 25] = [
            ("data_dir", &self.data_dir),
            ("api_listen", &self.api_listen),
            ("ingress_listen", &self.ingress_listen),
            ("domain", &self.domain),
            ("log", &self.log),
            ("log_format", &self.log_format),
            ("max_body_bytes", &self.max_body_bytes),
            (
                "shutdown_grace_period_seconds",
                &self.shutdown_grace_period_seconds,
            ),
            (
                "termination_grace_period_seconds",
                &self.termination_grace_period_seconds,
            ),
            ("registry_auth_file", &self.registry_auth_file),
            ("insecure_registries", &self.insecure_registries),
            ("registry_mirrors", &self.registry_mirrors),
            ("runtime", &self.runtime),
            ("pids_limit", &self.pids_limit),
            (
                "scale_to_zero_grace_period_seconds",
                &self.scale_to_zero_grace_period_seconds,
            ),
            ("enable_scale_to_zero", &self.enable_scale_to_zero),
            ("max_scale_up_rate", &self.max_scale_up_rate),
            ("max_scale_down_rate", &self.max_scale_down_rate),
            ("activator_queue_depth", &self.activator_queue_depth),
            (
                "activator_queue_timeout_seconds",
                &self.activator_queue_timeout_seconds,
            ),
            ("router_threads", &self.router_threads),
            ("ingress_max_connections", &self.ingress_max_connections),
            (
                "ingress_header_read_timeout_seconds",
                &self.ingress_header_read_timeout_seconds,
            ),
            (
                "ingress_idle_timeout_seconds",
                &self.ingress_idle_timeout_seconds,
            ),
            ("api_max_connections", &self.api_max_connections),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                flags.insert(k, v.clone());
            }
        }
        flags
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: ServerArgs) -> Result<i32, Exit> {
    let (config, report) = config::load(args.config.as_deref(), &ProcessEnv, &args.flags())
        .map_err(|e| Exit::new(crate::exit::USAGE, e.to_string()))?;
    skiff_telemetry::init_logging(&config.log.filter, config.log.format)
        .context("setting up logging")?;
    if let Some(file) = &report.file {
        info!(file = %file.display(), "configuration file read");
    }
    for var in &report.unknown_env {
        warn!(variable = %var, "unknown SKIFF_ environment variable ignored");
    }
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
        }
        signals.cancel();
        // A second signal stops at once.
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
    match skiff_daemon::server::run(config, shutdown).await {
        Ok(()) => Ok(OK),
        Err(e) => Err(Exit::new(
            FAILURE,
            format!("skiff server: {}", skiff_telemetry::ErrorChain(&e)),
        )),
    }
}
