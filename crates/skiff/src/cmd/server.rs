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
    /// One flag per setting, as the daemon's configuration lists them.
    #[command(flatten)]
    pub settings: SettingFlags,
}

/// The settings given as flags: one `--flag VALUE` per entry of
/// [`skiff_daemon::config::settings`], so a new setting brings its flag along.
#[derive(Debug, Clone, Default)]
pub struct SettingFlags(Flags);

impl clap::FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::new();
        for spec in config::settings() {
            if let Some(v) = matches.get_one::<String>(spec.key) {
                flags.insert(spec.key, v.clone());
            }
        }
        Ok(SettingFlags(flags))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.extend(Self::from_arg_matches(matches)?.0);
        Ok(())
    }
}

impl clap::Args for SettingFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        config::settings().into_iter().fold(cmd, |cmd, spec| {
            cmd.arg(
                clap::Arg::new(spec.key)
                    .long(spec.flag.trim_start_matches("--"))
                    .value_name(spec.key.to_ascii_uppercase())
                    .action(clap::ArgAction::Set)
                    .help(spec.help),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: ServerArgs) -> Result<i32, Exit> {
    let (config, report) = config::load(args.config.as_deref(), &ProcessEnv, &args.settings.0)
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
