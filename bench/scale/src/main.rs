//! `scale-bench`: how skiff's control plane costs grow with the Services it holds. For each
//! size (10 and 1,000 by default), one after another in one run, a fresh `skiff server`
//! (skiff-test-utils' `TestDaemon`: temporary data directory, loopback ports) gets that many
//! idle Services (`initial-scale: "0"`, so no instance runs), and the run measures:
//!
//! - the daemon's resident memory before and after them (`VmRSS`), per Service;
//! - its CPU while they sit idle;
//! - the latency of an apply at that size (a new Service, timed from the client, then
//!   deleted untimed);
//! - a cold start at that size (a request to a Service at zero until the first byte);
//! - a `kill -9` and a start on the same data directory: the time until the ingress answers,
//!   until a known Service answers, and until the scale API shows every Service routed.
//!
//! It prints the figures as JSON on stdout (and to `--out`), a short summary on stderr, and
//! the ratio of each figure between the largest and the smallest size (goal ≤ 1.5). Needs
//! root and runc. The methodology is in bench/README.md; the figures go in BENCHMARKS.md.

mod http;
mod size;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

/// Apply latency, cold start, restart and memory at several counts of idle Services.
#[derive(Parser, Debug)]
#[command(name = "scale-bench")]
struct Args {
    /// The counts of idle Services, each on a fresh daemon (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,1000")]
    sizes: Vec<usize>,
    /// Timed applies at each size.
    #[arg(long, default_value_t = 50)]
    applies: usize,
    /// Cold starts at each size.
    #[arg(long, default_value_t = 10)]
    colds: usize,
    /// Seconds of idle over which the daemon's CPU is measured (at most 12: the end of the
    /// quiet time before the memory reading).
    #[arg(long, default_value_t = 5.0)]
    idle_seconds: f64,
    /// The skiff binary under test (default: `skiff` beside this program).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// Also write the JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command line the output shows (bench/scale.sh passes its own).
    #[arg(long, hide = true)]
    invocation: Option<String>,
    /// The code under test (bench/scale.sh passes `git describe`).
    #[arg(long, hide = true)]
    code: Option<String>,
}

/// What every size shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub applies: usize,
    pub colds: usize,
    pub idle_window: Duration,
    /// Quiet time before each memory reading: tokio's blocking threads (image import,
    /// manifest parsing) exit after 10 s idle, and only then is their heap given back.
    pub settle: Duration,
    /// The longest any one condition is waited for.
    pub max_wait: Duration,
}

/// Prints a progress line on stderr.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[scale-bench {}] {}",
        jiff::Zoned::now().strftime("%H:%M:%S"),
        msg.as_ref()
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scale-bench: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT/SIGTERM the run is dropped: the daemon (`TestDaemon`) is killed and what its
    // instances left is removed.
    let result = rt.block_on(async {
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        tokio::select! {
            r = run(args) => r,
            _ = int.recv() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
            _ = term.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ratio largest / smallest size of the figure at `path` (JSON pointer).
fn ratio(sizes: &[Value], path: &str) -> Value {
    let (Some(first), Some(last)) = (sizes.first(), sizes.last()) else {
        return Value::Null;
    };
    match (
        first.pointer(path).and_then(Value::as_f64),
        last.pointer(path).and_then(Value::as_f64),
    ) {
        (Some(a), Some(b)) if a > 0.0 => json!(b / a),
        _ => Value::Null,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "needs root (the daemon runs containers: overlay mounts, network namespaces, cgroups)"
    );
    anyhow::ensure!(!args.sizes.is_empty(), "--sizes names no size");
    anyhow::ensure!(
        (0.1..=12.0).contains(&args.idle_seconds),
        "--idle-seconds must be between 0.1 and 12"
    );
    anyhow::ensure!(
        args.sizes.iter().all(|&n| n > 0) && args.applies > 0 && args.colds > 0,
        "--sizes, --applies and --colds must be at least 1"
    );
    let bin = match &args.skiff {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this program")?
            .with_file_name("skiff"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "the skiff binary {} does not exist (cargo build --release --bin skiff)",
        bin.display()
    );
    let settings = Settings {
        applies: args.applies,
        colds: args.colds,
        idle_window: Duration::from_secs_f64(args.idle_seconds),
        settle: Duration::from_secs(12),
        max_wait: Duration::from_secs(60),
    };
    let started = Instant::now();
    let load_before = loadavg();
    let date = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string();
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        progress(format!("{n} Services: starting a daemon"));
        sizes.push(size::run(&bin, n, &settings).await?);
    }
    let ratios = json!({
        "applyP50": ratio(&sizes, "/applyMs/p50"),
        "applyP90": ratio(&sizes, "/applyMs/p90"),
        "coldStartP50": ratio(&sizes, "/coldStartFirstByteMs/p50"),
        "restartReady": ratio(&sizes, "/restart/readyS"),
        "restartIngressAnswer": ratio(&sizes, "/restart/ingressAnswerS"),
        "restartKnownHostAnswer": ratio(&sizes, "/restart/knownHostAnswerS"),
        "restartAllRouted": ratio(&sizes, "/restart/allRoutedS"),
        "perServiceKiB": ratio(&sizes, "/memory/perServiceKiB"),
    });
    // The memory of one more idle Service from the two sizes' readings after their Services,
    // both taken the same way (the reading before them holds memory the daemon gives back
    // later, so a difference against it understates).
    let per_service_between = match (sizes.first(), sizes.last()) {
        (Some(a), Some(b)) if b["services"].as_f64() > a["services"].as_f64() => {
            let f = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
            json!(
                (f(b, "/memory/rssAfterKiB") - f(a, "/memory/rssAfterKiB"))
                    / (f(b, "/services") - f(a, "/services"))
            )
        }
        _ => Value::Null,
    };
    let out = json!({
        "bench": "scale",
        "date": date,
        "invocation": args.invocation.clone().unwrap_or_else(|| {
            std::env::args().collect::<Vec<_>>().join(" ")
        }),
        "code": args.code,
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned()).unwrap_or_default(),
            "loadavgBefore": load_before,
            "loadavgAfter": loadavg(),
        },
        "daemonArgs": size::DAEMON_ARGS,
        "image": size::IMAGE,
        "applies": args.applies,
        "colds": args.colds,
        "sizes": sizes,
        "ratioLargestToSmallest": ratios,
        "rssPerServiceKiBBetweenSizes": per_service_between,
        "totalSeconds": started.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&out).context("JSON")?;
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    summary(&out);
    Ok(())
}

/// A short table on stderr.
fn summary(out: &Value) {
    let sizes = out["sizes"].as_array().cloned().unwrap_or_default();
    let f = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let rows: [(&str, &str, &str); 9] = [
        ("apply p50 (ms)", "/applyMs/p50", "/applyP50"),
        ("apply p90 (ms)", "/applyMs/p90", "/applyP90"),
        (
            "cold start p50, first byte (ms)",
            "/coldStartFirstByteMs/p50",
            "/coldStartP50",
        ),
        (
            "restart: endpoints.json (s)",
            "/restart/readyS",
            "/restartReady",
        ),
        (
            "restart: ingress answers (s)",
            "/restart/ingressAnswerS",
            "/restartIngressAnswer",
        ),
        (
            "restart: last Service answers (s)",
            "/restart/knownHostAnswerS",
            "/restartKnownHostAnswer",
        ),
        (
            "restart: every Service routed (s)",
            "/restart/allRoutedS",
            "/restartAllRouted",
        ),
        (
            "RSS per idle Service, own size (KiB)",
            "/memory/perServiceKiB",
            "/perServiceKiB",
        ),
        ("idle CPU (%)", "/idleCpuPercent", ""),
    ];
    let mut t = format!("{:<36}", "figure");
    for s in &sizes {
        t += &format!("{:>12}", format!("{} svc", s["services"]));
    }
    t += &format!("{:>10}\n", "ratio");
    for (label, path, r) in rows {
        t += &format!("{label:<36}");
        for s in &sizes {
            t += &format!("{:>12.2}", f(s, path));
        }
        if r.is_empty() {
            t += "\n";
        } else {
            t += &format!("{:>10.2}\n", f(&out["ratioLargestToSmallest"], r));
        }
    }
    t += &format!(
        "RSS per idle Service between the sizes (KiB): {:.1}\n",
        out["rssPerServiceKiBBetweenSizes"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    eprintln!("\n{t}");
}
