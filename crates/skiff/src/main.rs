//! `skiff`: the daemon (`skiff server`) and the CLI over its REST API.
#![forbid(unsafe_code)]

mod cmd;
mod connect;
mod exit;
mod output;

use clap::{Parser, Subcommand};

/// mimalloc: the router allocates per request on every router thread; with mimalloc it
/// spends ~4% less CPU per proxied request than with glibc's malloc (measured with the
/// router throughput runs of bench/serving.sh). Built with `no_thp`: left to itself it asks
/// for transparent huge pages, so the daemon's memory grows in 2 MiB steps the kernel zeroes
/// whole (at 1,000 idle Services: 101 MiB resident instead of 59, and a slower restart).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// skiff: serverless containers on your own machines.
///
/// Apply Knative Serving v1 Service manifests; skiff pulls their images, stamps revisions,
/// runs them in isolated runc containers, routes HTTP to them by host name and scales them
/// with load, down to zero when idle. Cloud Run Jobs run tasks to completion.
#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Server(Box<cmd::server::ServerArgs>),
    /// Create or update Services, Jobs, Secrets and ConfigMaps from manifests.
    Apply(cmd::apply::ApplyArgs),
    /// List Services, Revisions, Jobs, Executions, Secrets or ConfigMaps.
    Get(cmd::get::GetArgs),
    /// Show a Service, a Revision, a Job, an Execution or a Secret in detail.
    Describe(cmd::describe::DescribeArgs),
    /// Delete Services (with their revisions), Jobs (with their executions), Secrets or
    /// ConfigMaps.
    Delete(cmd::delete::DeleteArgs),
    /// Check manifests offline, with the daemon's own rules.
    Validate(cmd::validate::ValidateArgs),
    /// Run N instances of a Service (manual override).
    Scale(cmd::scale::ScaleArgs),
    /// Print the logs of a Service's instances, or of an execution's tasks.
    Logs(cmd::logs::LogsArgs),
    /// Pull, import, list and remove images.
    #[command(alias = "image")]
    Images(cmd::images::ImagesArgs),
    /// Every Service now: RPS, success, latency, instances, cold starts, cost per hour.
    Top(cmd::observe::TopArgs),
    /// A Service's metrics over time, from the daemon's history.
    Metrics(cmd::observe::MetricsArgs),
    /// SLOs: SLI, error budget left and burn rates; `skiff slo rules` for Prometheus.
    Slo(cmd::observe::SloArgs),
    /// The alerts firing now (SLO burn rates, cost budgets).
    Alerts(cmd::observe::AlertsArgs),
    /// Print a one-time login link to the dashboard (executive, on-call and debug views).
    Dashboard(cmd::observe::DashboardArgs),
    /// Create Secrets and rotate the key they are encrypted with.
    #[command(alias = "secret")]
    Secrets(cmd::secrets::SecretsArgs),
    /// Run Cloud Run Jobs (`execute`, with overrides and `--wait`), list, describe, delete.
    #[command(alias = "job")]
    Jobs(cmd::jobs::JobsArgs),
    /// A Job's executions: list, describe, cancel, delete.
    #[command(alias = "execution")]
    Executions(cmd::jobs::ExecutionsArgs),
    /// A Service's progressive rollout: status (--watch), pause, resume, promote, abort.
    Rollout(cmd::rollout::RolloutArgs),
    /// Send a Service's latest-revision traffic back to the previous revision (or --to one).
    Rollback(cmd::rollout::RollbackArgs),
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Server(_)) {
        output::end_quietly_on_broken_pipe();
    }
    let result = match cli.command {
        Command::Validate(args) => cmd::validate::run(args),
        Command::Server(args) => multi_thread().and_then(|rt| rt.block_on(cmd::server::run(*args))),
        other => current_thread().and_then(|rt| {
            rt.block_on(async move {
                match other {
                    Command::Apply(args) => cmd::apply::run(args).await,
                    Command::Get(args) => cmd::get::run(args).await,
                    Command::Describe(args) => cmd::describe::run(args).await,
                    Command::Delete(args) => cmd::delete::run(args).await,
                    Command::Images(args) => cmd::images::run(args).await,
                    Command::Scale(args) => cmd::scale::run(args).await,
                    Command::Logs(args) => cmd::logs::run(args).await,
                    Command::Secrets(args) => cmd::secrets::run(args).await,
                    Command::Jobs(args) => cmd::jobs::run(args).await,
                    Command::Executions(args) => cmd::jobs::executions(args).await,
                    Command::Rollout(args) => cmd::rollout::run(args).await,
                    Command::Rollback(args) => cmd::rollout::rollback(args).await,
                    Command::Top(args) => cmd::observe::top(args).await,
                    Command::Metrics(args) => cmd::observe::metrics(args).await,
                    Command::Slo(args) => cmd::observe::slo(args).await,
                    Command::Alerts(args) => cmd::observe::alerts(args).await,
                    Command::Dashboard(args) => cmd::observe::dashboard(args).await,
                    Command::Server(_) | Command::Validate(_) => unreachable!("handled above"),
                }
            })
        }),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            e.code
        }
    };
    std::process::exit(code);
}

fn current_thread() -> Result<tokio::runtime::Runtime, exit::Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| exit::Exit::new(exit::FAILURE, format!("starting the async runtime: {e}")))
}

fn multi_thread() -> Result<tokio::runtime::Runtime, exit::Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| exit::Exit::new(exit::FAILURE, format!("starting the async runtime: {e}")))
}
