//! `skiff logs SERVICE`: the stdout and stderr of a Service's instances; with `--requests`,
//! its request log; with `--request-id`, one request and its instance's lines around it.
//! `skiff logs --execution E [--task I]`: the output of an execution's tasks (every attempt,
//! each under its instance `E-<task>-<attempt>`).

use std::io::Write;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};

/// Print the logs of a Service's instances (every revision, or one), or of an execution's
/// tasks, oldest first.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The Service.
    #[arg(required_unless_present = "execution")]
    pub service: Option<String>,
    /// Only this revision.
    #[arg(long)]
    pub revision: Option<String>,
    /// The output of this execution's tasks instead of a Service's.
    #[arg(long, value_name = "EXECUTION", conflicts_with_all = ["service", "revision", "requests", "request_id"])]
    pub execution: Option<String>,
    /// With --execution: only this task's output (its index, every attempt).
    #[arg(long, value_name = "INDEX", requires = "execution")]
    pub task: Option<u32>,
    /// Keep printing new lines as they come (for an execution: until it ends).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines newer than this: `10m`, `1h`, or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Show timestamps and streams.
    #[arg(long)]
    pub timestamps: bool,
    /// The request log instead: one line per request (time, status, duration, method, host,
    /// path, request id, instance, cold start).
    #[arg(long, conflicts_with = "request_id")]
    pub requests: bool,
    /// One request by its X-Request-Id: its request line and its instance's output from a
    /// second before it to a second after.
    #[arg(long, value_name = "ID", conflicts_with_all = ["follow", "since", "tail", "revision"])]
    pub request_id: Option<String>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// One request as a line: `TIME STATUS DURATION METHOD HOST PATH id=… instance=… [cold start …]`.
fn request_line(l: &skiff_api::wire::RequestLogLine) -> String {
    let mut s = format!(
        "{} {} {:.1}ms {} {}{} id={}",
        l.ts, l.status, l.duration_ms, l.method, l.host, l.path, l.request_id
    );
    if let Some(i) = &l.instance {
        s.push_str(&format!(" instance={i}"));
    }
    if let Some(ms) = l.cold_start_ms {
        s.push_str(&format!(" cold-start={ms:.1}ms"));
    }
    if let Some(t) = &l.throttled {
        s.push_str(&format!(" refused={t}"));
    }
    if l.incomplete {
        s.push_str(" incomplete");
    }
    s.push_str(&format!(" trace={}", l.trace_id));
    s
}

/// Runs the command.
pub async fn run(args: LogsArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    let service = args.service.clone().unwrap_or_default();
    if let Some(id) = &args.request_id {
        let t = client.request_trail(&args.namespace, &service, id).await?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", request_line(&t.request));
        if t.logs.is_empty() {
            let _ = writeln!(out, "(no output from its instance around it)");
        }
        for l in &t.logs {
            let _ = writeln!(
                out,
                "  {} {} [{}/{}] {}",
                l.ts, l.stream, l.instance, l.container, l.line
            );
        }
        return Ok(OK);
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(r) = &args.revision {
        query.push(("revision", r.clone()));
    }
    if let Some(s) = &args.since {
        query.push(("since", s.clone()));
    }
    if let Some(t) = args.tail {
        query.push(("tail", t.to_string()));
    }
    if args.follow {
        query.push(("follow", "true".into()));
    }
    let stdout = std::io::stdout();
    let print = |l: skiff_api::wire::LogLine| {
        let mut out = stdout.lock();
        let _ = if args.timestamps {
            writeln!(
                out,
                "{} {} [{}/{}] {}",
                l.ts, l.stream, l.instance, l.container, l.line
            )
        } else {
            writeln!(out, "[{}] {}", l.instance, l.line)
        };
        let _ = out.flush();
    };
    if let Some(execution) = &args.execution {
        if let Some(t) = args.task {
            query.push(("task", t.to_string()));
        }
        client
            .execution_logs(&args.namespace, execution, &query, print)
            .await?;
        return Ok(OK);
    }
    if args.requests {
        client
            .request_log(&args.namespace, &service, &query, |l| {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{}", request_line(&l));
                let _ = out.flush();
            })
            .await?;
        return Ok(OK);
    }
    client
        .logs(&args.namespace, &service, &query, print)
        .await?;
    Ok(OK)
}
