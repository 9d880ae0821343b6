//! `skiff logs SERVICE`: the stdout and stderr of a Service's instances.

use std::io::Write;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};

/// Print the logs of a Service's instances (every revision, or one), oldest first.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The Service.
    pub service: String,
    /// Only this revision.
    #[arg(long)]
    pub revision: Option<String>,
    /// Keep printing new lines as they come.
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
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs the command.
pub async fn run(args: LogsArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
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
    client
        .logs(&args.namespace, &args.service, &query, |l| {
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
        })
        .await?;
    Ok(OK)
}
