//! `skiff rollout status|pause|resume|promote|abort SERVICE` and `skiff rollback SERVICE
//! [--to REVISION]`: following and steering a Service's progressive rollout.

use std::time::Duration;

use skiff_api::rollout::RolloutReport;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, FAILURE, OK};
use crate::output::{self, Format};

/// Follow and steer a Service's progressive rollout.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The `skiff rollout` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// The rollout's step, its figures so far, the steps done with their analysis, and past
    /// rollouts; with --watch, follow it to its end (exit 1 unless it succeeds).
    Status(StatusArgs),
    /// Stay at the current step (the analysis still runs and can roll back).
    Pause(ServiceArgs),
    /// Go on from the current step (it starts again); with no rollout in progress, let a
    /// rolled-back revision roll out again.
    Resume(ServiceArgs),
    /// Send all the latest-revision traffic to the new revision now.
    Promote(ServiceArgs),
    /// Send all the latest-revision traffic back to the stable revision now; the new
    /// revision is held.
    Abort(ServiceArgs),
}

/// One Service.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The Service.
    pub service: String,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `skiff rollout status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Follow the rollout to its end, a line per change; exit 1 if it is rolled back or
    /// aborted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `skiff rollback SERVICE [--to REVISION]`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The revision to send the latest-revision traffic to [default: the stable revision of
    /// the rollout in progress, else the newest ready revision older than the one serving].
    #[arg(long, value_name = "REVISION")]
    pub to: Option<String>,
}

/// How often `--watch` looks.
const WATCH_EVERY: Duration = Duration::from_millis(500);

fn summary(r: &RolloutReport) -> String {
    let Some(status) = &r.rollout else {
        return "no rollout policy applies and no rollout has run".into();
    };
    if let Some(p) = &status.current {
        let live = r
            .live
            .map(|l| {
                format!(
                    " — new {} req, 5xx {:.1}% | stable {} req, 5xx {:.1}%",
                    l.canary.requests,
                    l.canary.error_rate() * 100.0,
                    l.stable.requests,
                    l.stable.error_rate() * 100.0
                )
            })
            .unwrap_or_default();
        return format!(
            "{} at {}% (step {} of {}){}{live}",
            p.revision,
            p.percent(),
            p.step + 1,
            p.policy.steps.len(),
            if p.paused { ", paused" } else { "" },
        );
    }
    match (&r.condition, status.history.first()) {
        (Some(c), _) if c.status != skiff_api::object::ConditionStatus::True => format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("not rolled out"),
            c.message.as_deref().unwrap_or_default()
        ),
        (_, Some(h)) => format!("{} {}: {}", h.revision, h.outcome, h.message),
        _ => format!(
            "{} takes all of the latest-revision traffic",
            status.stable_revision.as_deref().unwrap_or("-")
        ),
    }
}

/// Whether the last rollout failed (rolled back or aborted), for `--watch`'s exit code.
fn failed(r: &RolloutReport) -> bool {
    r.condition
        .as_ref()
        .is_some_and(|c| c.status == skiff_api::object::ConditionStatus::False)
}

/// Runs `skiff rollout …`.
pub async fn run(args: RolloutArgs) -> Result<i32, Exit> {
    let (a, action) = match args.command {
        RolloutCommand::Status(s) => return status(s).await,
        RolloutCommand::Pause(a) => (a, "pause"),
        RolloutCommand::Resume(a) => (a, "resume"),
        RolloutCommand::Promote(a) => (a, "promote"),
        RolloutCommand::Abort(a) => (a, "abort"),
    };
    let client = a.connect.client()?;
    let r = client
        .rollout_command(&a.namespace, &a.service, action)
        .await?;
    let done = match action {
        "pause" => "paused",
        "resume" => "resumed",
        "promote" => "promoted",
        _ => "aborted",
    };
    println!("service/{} rollout {done}: {}", a.service, summary(&r));
    Ok(OK)
}

async fn status(args: StatusArgs) -> Result<i32, Exit> {
    let a = &args.service;
    let client = a.connect.client()?;
    let mut r = client.rollout(&a.namespace, &a.service).await?;
    if !args.watch {
        match args.output {
            Format::Table => print!("{}", output::describe_rollout(&r)),
            f => print!(
                "{}",
                output::render(&r, f).map_err(|e| Exit::new(FAILURE, e.to_string()))?
            ),
        }
        return Ok(OK);
    }
    let mut last = String::new();
    loop {
        // A revision just applied: wait for it to be ready (or to fail) first.
        let created = r.latest_created_revision.clone();
        let line = match created.as_deref() {
            Some(c) if r.latest_ready_revision.as_deref() != Some(c) => {
                let rev = client.get_revision(&a.namespace, c).await?;
                match rev.condition("Ready") {
                    Some(cond) if cond.status == skiff_api::object::ConditionStatus::False => {
                        println!(
                            "revision {c} failed ({}): {}",
                            cond.reason.as_deref().unwrap_or("Failed"),
                            cond.message.as_deref().unwrap_or_default()
                        );
                        return Ok(FAILURE);
                    }
                    _ => format!("waiting for revision {c} to become ready"),
                }
            }
            _ => summary(&r),
        };
        let waiting = line.starts_with("waiting for revision");
        if line != last {
            println!("{line}");
            last = line;
        }
        let running = r.rollout.as_ref().is_some_and(|s| s.current.is_some());
        let pending = r
            .condition
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some("RolloutPending"));
        if !waiting && !running && !pending {
            return Ok(if failed(&r) { FAILURE } else { OK });
        }
        tokio::time::sleep(WATCH_EVERY).await;
        r = client.rollout(&a.namespace, &a.service).await?;
    }
}

/// Runs `skiff rollback`.
pub async fn rollback(args: RollbackArgs) -> Result<i32, Exit> {
    let a = &args.service;
    let client = a.connect.client()?;
    let r = client
        .rollback(&a.namespace, &a.service, args.to.as_deref())
        .await?;
    let to = r
        .rollout
        .as_ref()
        .and_then(|s| s.stable_revision.clone())
        .unwrap_or_default();
    let held = r
        .rollout
        .as_ref()
        .and_then(|s| s.held_revision.clone())
        .map(|h| {
            format!(
                "; {h} is held until a newer revision or `skiff rollout resume {}`",
                a.service
            )
        })
        .unwrap_or_default();
    println!(
        "service/{} rolled back: the latest-revision traffic goes to {to}{held}",
        a.service
    );
    Ok(OK)
}
