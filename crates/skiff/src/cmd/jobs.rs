//! `skiff jobs execute|list|describe|delete` and `skiff executions
//! list|describe|cancel|delete`: running Cloud Run Jobs and following their executions.
//!
//! `execute` maps its flags to the execution's overrides as `gcloud run jobs execute` does:
//! `--args` replaces the container's arguments, `--update-env-vars` sets variables beside the
//! template's, `--tasks` and `--task-timeout` replace the template's. With `--wait` it
//! follows the execution to its end and exits non-zero unless it succeeded.

use std::collections::HashMap;
use std::time::Duration;

use skiff_api::job::{
    CompletionStatus, ContainerOverride, Execution, OverrideEnv, Overrides, TaskState,
};
use skiff_client::Client;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, FAILURE, OK, USAGE};
use crate::output::{self, Format};

/// Run Cloud Run Jobs and manage them.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The `skiff jobs` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Start an execution of a Job, with overrides; prints the execution's name.
    #[command(alias = "run")]
    Execute(ExecuteArgs),
    /// List Jobs (as `skiff get jobs`).
    #[command(alias = "ls")]
    List(ListJobsArgs),
    /// Show a Job, its template and its recent executions.
    Describe(NameArgs),
    /// Delete Jobs with their executions (their running tasks are stopped).
    #[command(alias = "rm")]
    Delete(DeleteJobsArgs),
}

/// `skiff jobs execute JOB`.
#[derive(Debug, clap::Args)]
pub struct ExecuteArgs {
    /// The Job.
    pub job: String,
    /// Arguments replacing the container's `args`, comma-separated (`--args=` with nothing
    /// runs the image's default arguments).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ARG,...",
        allow_hyphen_values = true
    )]
    pub args: Option<Vec<String>>,
    /// Variables to set for this execution, beside the template's (which they replace when
    /// named alike): `KEY=VALUE,KEY2=VALUE2`. Repeatable.
    #[arg(
        long = "update-env-vars",
        value_delimiter = ',',
        value_name = "KEY=VALUE,..."
    )]
    pub env: Vec<String>,
    /// Tasks to run instead of the template's `taskCount`.
    #[arg(long)]
    pub tasks: Option<i64>,
    /// The longest one attempt of a task may run, instead of the template's
    /// `timeoutSeconds`: `30s`, `10m`, `1h`.
    #[arg(long, value_name = "DURATION")]
    pub task_timeout: Option<String>,
    /// Follow the execution to its end (progress on standard error); exit non-zero unless it
    /// succeeded.
    #[arg(long)]
    pub wait: bool,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `skiff jobs list`.
#[derive(Debug, clap::Args)]
pub struct ListJobsArgs {
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// One object by name.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// Its name.
    pub name: String,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `skiff jobs delete JOB...`.
#[derive(Debug, clap::Args)]
pub struct DeleteJobsArgs {
    /// The Jobs.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Check that they exist without deleting.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// A Job's executions.
#[derive(Debug, clap::Args)]
pub struct ExecutionsArgs {
    #[command(subcommand)]
    pub command: ExecutionsCommand,
}

/// The `skiff executions` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ExecutionsCommand {
    /// List executions, newest first (as `skiff get executions`).
    #[command(alias = "ls")]
    List(ListExecutionsArgs),
    /// Show an execution: conditions, counts, each task and how its attempts ended.
    Describe(NameArgs),
    /// Cancel an execution: running tasks are stopped, pending ones never start.
    Cancel(NameArgs),
    /// Delete an execution that has ended.
    #[command(alias = "rm")]
    Delete(NameArgs),
}

/// `skiff executions list`.
#[derive(Debug, clap::Args)]
pub struct ListExecutionsArgs {
    /// Only the executions of this Job.
    #[arg(long)]
    pub job: Option<String>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `skiff jobs`.
pub async fn run(args: JobsArgs) -> Result<i32, Exit> {
    match args.command {
        JobsCommand::Execute(a) => execute(a).await,
        JobsCommand::List(a) => {
            let client = a.connect.client()?;
            let ns = (!a.all_namespaces).then_some(a.namespace.as_str());
            let jobs = client.list_jobs(ns).await?;
            match a.output {
                Format::Table if jobs.is_empty() => eprintln!(
                    "no jobs found{}",
                    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                ),
                Format::Table => output::print_table(&output::jobs_table(&jobs, a.all_namespaces)),
                f => print!(
                    "{}",
                    output::render(
                        &skiff_api::object::List {
                            api_version: skiff_api::job::JOBS_API_VERSION.to_owned(),
                            kind: "JobList".to_owned(),
                            items: jobs,
                        },
                        f
                    )?
                ),
            }
            Ok(OK)
        }
        JobsCommand::Describe(a) => {
            let client = a.connect.client()?;
            print!("{}", describe_job(&client, &a.namespace, &a.name).await?);
            Ok(OK)
        }
        JobsCommand::Delete(a) => {
            let client = a.connect.client()?;
            delete_jobs(&client, &a.namespace, &a.names, a.dry_run).await
        }
    }
}

/// Runs `skiff executions`.
pub async fn executions(args: ExecutionsArgs) -> Result<i32, Exit> {
    match args.command {
        ExecutionsCommand::List(a) => {
            let client = a.connect.client()?;
            let items = client
                .list_executions(&a.namespace, a.job.as_deref())
                .await?;
            super::get::print_executions(&items, a.output, false, &a.namespace)?;
            Ok(OK)
        }
        ExecutionsCommand::Describe(a) => {
            let e = a
                .connect
                .client()?
                .get_execution(&a.namespace, &a.name)
                .await?;
            print!("{}", output::describe_execution(&e));
            Ok(OK)
        }
        ExecutionsCommand::Cancel(a) => {
            let e = a
                .connect
                .client()?
                .cancel_execution(&a.namespace, &a.name)
                .await?;
            if e.is_done() && !e.spec.cancelled {
                println!(
                    "execution/{} had already ended ({})",
                    a.name,
                    output::completion_word(e.completion_status())
                );
            } else {
                println!(
                    "execution/{} cancelled (its running tasks are being stopped)",
                    a.name
                );
            }
            Ok(OK)
        }
        ExecutionsCommand::Delete(a) => {
            a.connect
                .client()?
                .delete_execution(&a.namespace, &a.name)
                .await?;
            println!("execution/{} deleted", a.name);
            Ok(OK)
        }
    }
}

/// `skiff describe job`: the Job and its recent executions.
pub async fn describe_job(client: &Client, namespace: &str, name: &str) -> Result<String, Exit> {
    let job = client.get_job(namespace, name).await?;
    let executions = client.list_executions(namespace, Some(name)).await?;
    Ok(output::describe_job(&job, &executions))
}

/// Deletes Jobs (with their executions), each reported; the worst exit code.
pub async fn delete_jobs(
    client: &Client,
    namespace: &str,
    names: &[String],
    dry_run: bool,
) -> Result<i32, Exit> {
    let mut code = OK;
    for name in names {
        match client.delete_job(namespace, name, dry_run).await {
            Ok(()) if dry_run => {
                println!("job/{name} would be deleted with its executions (dry run)")
            }
            Ok(()) => println!("job/{name} deleted with its executions"),
            Err(e) => {
                let e = Exit::from(e);
                eprintln!("error: {}", e.message);
                code = code.max(e.code);
            }
        }
    }
    Ok(code)
}

/// The overrides `execute`'s flags ask for.
fn overrides(a: &ExecuteArgs) -> Result<Overrides, Exit> {
    let mut container = ContainerOverride::default();
    match a.args.as_deref() {
        None => {}
        Some([only]) if only.is_empty() => container.clear_args = true,
        Some(args) => container.args = args.to_vec(),
    }
    for kv in a.env.iter().filter(|kv| !kv.is_empty()) {
        let Some((name, value)) = kv.split_once('=') else {
            return Err(Exit::new(
                USAGE,
                format!("--update-env-vars takes KEY=VALUE pairs: `{kv}` has no `=`"),
            ));
        };
        container.env.push(OverrideEnv {
            name: name.to_owned(),
            value: value.to_owned(),
        });
    }
    let timeout_seconds = match &a.task_timeout {
        None => None,
        Some(t) => {
            let d = skiff_api::names::parse_go_duration(t)
                .map_err(|e| Exit::new(USAGE, format!("--task-timeout: {e}")))?;
            // Whole seconds, rounded up: a timeout is never shorter than asked.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            if secs == 0 {
                return Err(Exit::new(USAGE, "--task-timeout must be at least 1s"));
            }
            Some(i64::try_from(secs).unwrap_or(i64::MAX))
        }
    };
    let changed = container != ContainerOverride::default();
    Ok(Overrides {
        container_overrides: if changed { vec![container] } else { Vec::new() },
        task_count: a.tasks,
        timeout_seconds,
    })
}

async fn execute(a: ExecuteArgs) -> Result<i32, Exit> {
    let overrides = overrides(&a)?;
    let client = a.connect.client()?;
    let e = client.run_job(&a.namespace, &a.job, &overrides).await?;
    let name = e.metadata.name.clone();
    println!("{name}");
    if !a.wait {
        let ns = if a.namespace == "default" {
            String::new()
        } else {
            format!(" -n {}", a.namespace)
        };
        eprintln!(
            "execution {name} started: {} task(s); follow it with `skiff executions describe {name}{ns}` or `skiff logs --execution {name}{ns} -f`",
            e.spec.task_count
        );
        return Ok(OK);
    }
    let e = wait(&client, &a.namespace, &name).await?;
    let completed = e
        .status
        .conditions
        .iter()
        .find(|c| c.condition_type == "Completed")
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    match e.completion_status() {
        CompletionStatus::ExecutionSucceeded => {
            eprintln!("execution {name} succeeded: {completed}");
            Ok(OK)
        }
        status => {
            let failed: Vec<_> = e
                .status
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .collect();
            for t in failed.iter().take(SHOWN_FAILURES) {
                let last = t.last_attempt_result.as_ref();
                let why = format!(
                    "{}{}{}",
                    last.map_or("failed", |r| r.reason.as_str()),
                    last.and_then(|r| r.exit_code)
                        .map(|c| format!(", exit code {c}"))
                        .unwrap_or_default(),
                    // An `Error`'s message only repeats its exit code.
                    last.filter(|r| !r.message.is_empty() && r.reason != "Error")
                        .map(|r| format!(" ({})", r.message))
                        .unwrap_or_default()
                );
                match t.attempts.len() {
                    0 => eprintln!("task {} failed before it started: {why}", t.index),
                    n => eprintln!("task {} failed after {n} attempt(s): {why}", t.index),
                }
            }
            if failed.len() > SHOWN_FAILURES {
                eprintln!(
                    "… and {} more failed task(s): `skiff describe execution {name}` shows each",
                    failed.len() - SHOWN_FAILURES
                );
            }
            let what = if status == CompletionStatus::ExecutionCancelled {
                "was cancelled"
            } else {
                "failed"
            };
            Err(Exit::new(
                FAILURE,
                format!("execution {name} {what}: {completed}"),
            ))
        }
    }
}

/// Failed tasks `--wait` describes at the end, at most.
const SHOWN_FAILURES: usize = 5;

/// How often `--wait` looks at the execution.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Follows an execution to its end, printing a line on standard error whenever its counts
/// change and one per attempt that failed; returns it ended.
async fn wait(client: &Client, namespace: &str, name: &str) -> Result<Execution, Exit> {
    let mut last = None;
    let mut reported: HashMap<u32, usize> = HashMap::new();
    loop {
        let e = client.get_execution(namespace, name).await?;
        for t in &e.status.tasks {
            let seen = reported.entry(t.index).or_default();
            for (i, a) in t.attempts.iter().enumerate().skip(*seen) {
                if a.reason == "Completed" || a.reason == "Cancelled" {
                    continue;
                }
                let retried = i + 1 < t.attempts.len() || !t.state.is_terminal();
                eprintln!(
                    "task {} attempt {} ended: {}{}{}",
                    t.index,
                    a.attempt,
                    a.reason,
                    a.exit_code
                        .map(|c| format!(", exit code {c}"))
                        .unwrap_or_default(),
                    if retried {
                        "; retrying"
                    } else {
                        "; no retries left"
                    }
                );
            }
            *seen = t.attempts.len();
        }
        let s = &e.status;
        let counts = (
            s.running_count,
            s.succeeded_count,
            s.failed_count,
            s.cancelled_count,
            s.retried_count,
        );
        if last != Some(counts) {
            let cancelled = if s.cancelled_count > 0 {
                format!(", {} cancelled", s.cancelled_count)
            } else {
                String::new()
            };
            eprintln!(
                "{name}: {}/{} succeeded, {} running, {} failed, {} retried{cancelled}",
                s.succeeded_count,
                e.spec.task_count,
                s.running_count,
                s.failed_count,
                s.retried_count
            );
            last = Some(counts);
        }
        if e.is_done() {
            return Ok(e);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        execute: ExecuteArgs,
    }

    fn parse(args: &[&str]) -> ExecuteArgs {
        let mut all = vec!["skiff", "etl"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses").execute
    }

    /// The flags map to overrides as gcloud's do.
    #[test]
    fn flags_become_overrides() {
        let o = overrides(&parse(&[
            "--args",
            "-c,echo hi",
            "--update-env-vars",
            "A=1,B=x=y",
            "--update-env-vars",
            "C=",
            "--tasks",
            "1",
            "--task-timeout",
            "1m30s",
        ]))
        .expect("valid");
        assert_eq!(o.task_count, Some(1));
        assert_eq!(o.timeout_seconds, Some(90));
        let c = &o.container_overrides[0];
        assert_eq!(c.args, ["-c", "echo hi"]);
        let env: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "x=y"), ("C", "")]);
        assert!(!c.clear_args);

        assert_eq!(overrides(&parse(&[])).expect("valid"), Overrides::default());
        let cleared = overrides(&parse(&["--args="])).expect("valid");
        assert!(cleared.container_overrides[0].clear_args);
        assert_eq!(
            overrides(&parse(&["--task-timeout", "500ms"]))
                .expect("valid")
                .timeout_seconds,
            Some(1)
        );
        assert!(overrides(&parse(&["--update-env-vars", "NOEQUALS"])).is_err());
        assert!(overrides(&parse(&["--task-timeout", "0s"])).is_err());
        assert!(overrides(&parse(&["--task-timeout", "soon"])).is_err());
    }
}
