//! `start-bench`: start to ready of a busybox httpd instance through skiff's runtime (case A)
//! beside bare runc on the same image layers and container config (case B, the floor),
//! interleaved A, B, A, B, … in one run so machine noise hits both alike. Prints a Markdown
//! section for BENCHMARKS.md on stdout; progress goes to stderr.
//!
//! Everything it creates lives under one working directory and carries one id prefix; it is
//! removed at the end, on failure and on SIGINT/SIGTERM, and then checked gone (containers in
//! both runc roots, mounts, cgroups, the directory). Needs root and runc.

mod ctx;
mod micro;
mod report;
mod skiff_case;
mod timed_oci;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use skiff_bench_runtime::cleanup::Cleanup;
use skiff_bench_runtime::floor::FloorSample;
use skiff_bench_runtime::machine;
use tokio::signal::unix::{SignalKind, signal};

use crate::ctx::Ctx;
use crate::skiff_case::SkiffSample;

/// Start to ready: skiff's runtime beside bare runc, interleaved in one run.
#[derive(Parser, Debug)]
#[command(name = "start-bench")]
struct Args {
    /// Measured runs per case (at least 50 for BENCHMARKS.md).
    #[arg(long, default_value_t = 60)]
    runs: usize,
    /// Unmeasured warmup pairs (A, B) before the measured runs.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Also write the Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every run's figures as JSON to this file.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Where the working directory is made (content store, runc roots, bundles).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Diagnostic: also poll skiff's instance port every 1 ms, to see when it opens (adds load;
    /// the figures are then not for BENCHMARKS.md).
    #[arg(long)]
    watch_port: bool,
    /// Diagnostic: after the measured runs, time skiff's start steps one by one in isolation,
    /// this many times each, and append a table.
    #[arg(long, default_value_t = 0)]
    micro: usize,
    /// The command line the report shows (bench/start.sh passes its own).
    #[arg(long, hide = true)]
    invocation: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.runs == 0 {
        eprintln!("start-bench: --runs must be at least 1 (50 or more for BENCHMARKS.md)");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("start-bench: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("start-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[start-bench {}] {}",
        jiff::Zoned::now().strftime("%H:%M:%S"),
        msg.as_ref()
    );
}

struct Samples {
    skiff: Vec<SkiffSample>,
    floor: Vec<FloorSample>,
    micro: Option<String>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("needs root (overlay mounts, network namespaces, runc)");
    }
    std::process::Command::new("runc")
        .arg("--version")
        .output()
        .context("runc is not installed (apt-get install -y runc)")?;
    let started = Instant::now();
    let pid = std::process::id();
    let prefix = format!("startbench-{pid}");
    let work = args.dir.join(format!("skiff-{prefix}"));
    if work.exists() {
        bail!("{} exists already", work.display());
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = work.canonicalize().context("working directory")?;
    let mut cleanup = Cleanup::new(
        work.clone(),
        vec![ctx::skiff_runc_root(&work), ctx::floor_runc_root(&work)],
        format!("{prefix}-"),
    );
    let machine = machine::gather(&work);
    let load_before = machine::loadavg();
    let date = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string();
    let invocation = args.invocation.clone().unwrap_or_else(|| {
        std::iter::once("start-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    });
    progress(format!("working directory {}", work.display()));

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;

    let setup = tokio::select! {
        r = Ctx::setup(&work, prefix.clone(), args.watch_port) => r,
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
    };
    let ctx = match setup {
        Ok(c) => Arc::new(c),
        Err(e) => {
            cleanup.sweep();
            return Err(e.context("setting up"));
        }
    };

    let (image_layers, image_size) = (ctx.image_layers, ctx.image_size);
    let task = tokio::spawn(measure(
        ctx.clone(),
        work.clone(),
        args.runs,
        args.warmup,
        args.micro,
    ));
    let abort = task.abort_handle();
    let outcome: anyhow::Result<Samples> = tokio::select! {
        r = task => r.unwrap_or_else(|e| Err(anyhow::anyhow!("the benchmark task failed: {e}"))),
        _ = sigint.recv() => { abort.abort(); Err(anyhow::anyhow!("interrupted (SIGINT)")) }
        _ = sigterm.recv() => { abort.abort(); Err(anyhow::anyhow!("interrupted (SIGTERM)")) }
    };

    // Whatever happened: stop skiff's instances through the runtime, then check what the
    // benchmark's own stop paths left, then sweep and check again.
    if tokio::time::timeout(
        Duration::from_secs(30),
        ctx.rt.stop_all(Duration::from_millis(0)),
    )
    .await
    .is_err()
    {
        progress("stopping skiff's instances took over 30 s; sweeping");
    }
    let before_sweep = cleanup.leftovers(false);
    cleanup.sweep();
    drop(ctx);
    let after_sweep = cleanup.leftovers(true);
    if !after_sweep.is_empty() {
        bail!("left behind after cleanup:\n  {}", after_sweep.join("\n  "));
    }
    let samples = outcome?;
    if !before_sweep.is_empty() {
        bail!(
            "the benchmark's stop paths left these behind (swept now):\n  {}",
            before_sweep.join("\n  ")
        );
    }
    progress(
        "cleanup checked: no container in either runc root, no mount under the working directory, no cgroup of this run, working directory removed",
    );

    let total_s = started.elapsed().as_secs_f64();
    let md = report::markdown(&report::Report {
        invocation: &invocation,
        date,
        machine: &machine,
        load_before,
        load_after: machine::loadavg(),
        image_layers,
        image_size,
        runs: args.runs,
        warmup: args.warmup,
        total_s,
        watch_port: args.watch_port,
        skiff: &samples.skiff,
        floor: &samples.floor,
    });
    let md = match &samples.micro {
        Some(m) => format!("{md}\n{m}"),
        None => md,
    };
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        progress(format!("Markdown written to {}", out.display()));
    }
    if let Some(raw) = &args.raw {
        write_raw(raw, &samples)?;
        progress(format!("raw figures written to {}", raw.display()));
    }
    Ok(())
}

/// Warmup pairs, then `runs` measured pairs, A before B in each.
async fn measure(
    ctx: Arc<Ctx>,
    work: PathBuf,
    runs: usize,
    warmup: usize,
    micro: usize,
) -> anyhow::Result<Samples> {
    let mut samples = Samples {
        skiff: Vec::with_capacity(runs),
        floor: Vec::with_capacity(runs),
        micro: None,
    };
    for i in 0..warmup + runs {
        let a = skiff_case::once(&ctx, i)
            .await
            .with_context(|| format!("skiff, run {i}"))?;
        let b = ctx
            .floor
            .once(i)
            .await
            .with_context(|| format!("floor, run {i}"))?;
        let label = if i < warmup {
            format!("warmup {}/{warmup}", i + 1)
        } else {
            format!("run {}/{runs}", i - warmup + 1)
        };
        progress(format!(
            "{label}: skiff {:.1} ms (runtime {:.1}; start() {:.1}, runc {:.1}, after runc {:.1}), floor {:.1} ms (runc {:.1}, after runc {:.1}, {} attempts)",
            a.wall_ms,
            a.runtime_ms,
            a.start_returned_ms,
            a.runc_ms,
            a.after_runc_ms,
            b.total_ms,
            b.runc_ms,
            b.after_runc_ms,
            b.attempts
        ));
        if i >= warmup {
            samples.skiff.push(a);
            samples.floor.push(b);
        }
    }
    if micro > 0 {
        progress(format!(
            "timing skiff's start steps in isolation, {micro} times each"
        ));
        samples.micro = Some(micro::run(&ctx, &work, micro).await?);
    }
    Ok(samples)
}

fn write_raw(path: &std::path::Path, s: &Samples) -> anyhow::Result<()> {
    let skiff: Vec<serde_json::Value> = s
        .skiff
        .iter()
        .map(|a| {
            serde_json::json!({
                "runtimeMs": a.runtime_ms,
                "wallMs": a.wall_ms,
                "startReturnedMs": a.start_returned_ms,
                "beforeRuncMs": a.before_runc_ms,
                "runcMs": a.runc_ms,
                "afterRuncMs": a.after_runc_ms,
                "portOpenAfterRuncMs": a.port_open_after_runc_ms,
                "stopMs": a.stop_ms,
            })
        })
        .collect();
    let floor: Vec<serde_json::Value> = s
        .floor
        .iter()
        .map(|b| {
            serde_json::json!({
                "totalMs": b.total_ms,
                "mountMs": b.mount_ms,
                "specMs": b.spec_ms,
                "runcMs": b.runc_ms,
                "afterRuncMs": b.after_runc_ms,
                "attempts": b.attempts,
                "teardownMs": b.teardown_ms,
            })
        })
        .collect();
    let text =
        serde_json::to_string_pretty(&serde_json::json!({ "skiff": skiff, "floor": floor }))?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
