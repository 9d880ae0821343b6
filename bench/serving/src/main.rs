//! `serving-bench`: from one run, with its own `skiff server`, three figures of issue 6 beside
//! peers measured in the same run, printed as Markdown for BENCHMARKS.md (progress on stderr):
//!
//! 1. **cold start**: scale from zero to first byte through skiff's ingress, beside the floor
//!    (bare `runc run -d` of the same layers until the port accepts), interleaved ([`cold`]);
//! 2. **router**: added latency and throughput of skiff's ingress, with request logs and
//!    traces off and on (a second daemon, exporting to an OTLP sink of ours, [`otlp`]), beside
//!    a direct connection and nginx ([`router`]);
//! 3. **burst**: a 10× step in concurrent clients: time until enough instances are ready,
//!    the instance count timeline, latency before/during/after, non-2xx answers ([`burst`]);
//! 4. **events** (only when named, `bench/events.sh`): events accepted/s at a Broker beside
//!    the same requests posted to the subscriber Service and its instance, and how fast and
//!    how late the dispatcher delivers a batch ([`events`]).
//!
//! Everything it starts lives below one working directory and carries one prefix
//! (`sb<pid>-`): the daemons (their data dirs), nginx, the floor's containers, every Service.
//! At the end, on failure and on SIGINT/SIGTERM it stops nginx and the daemons, checks that
//! nothing is left (containers in both runc roots, mounts, cgroups `/sys/fs/cgroup/*/skiff/
//! sb<pid>-*`), sweeps whatever is, and checks again. Needs root, runc, wrk, nsenter, and nginx
//! for the router part.

mod bench;
mod burst;
mod cold;
mod daemon;
mod daemonlog;
mod events;
mod http;
mod otlp;
mod report;
mod report_events;
mod router;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use skiff_bench_runtime::cleanup::Cleanup;
use skiff_bench_runtime::floor::Floor;
use skiff_bench_runtime::machine;
use skiff_runtime::netns::Connector;
use tokio::signal::unix::{SignalKind, signal};

use crate::bench::{Bench, Procs, progress};
use crate::burst::{BurstResults, BurstSettings};
use crate::cold::ColdResults;
use crate::daemon::Daemon;
use crate::events::{EventsResults, EventsSettings};
use crate::router::{RouterResults, RouterSettings};

/// The server behind the router cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// skiff-test-h2 when it builds, else skiff-test-server.
    Auto,
    /// skiff-test-server: std only, one thread per connection.
    TestServer,
    /// skiff-test-h2: hyper on tokio.
    TestH2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Cold,
    Router,
    Burst,
    /// Not in the default set: `bench/events.sh` runs it alone.
    Events,
}

/// Cold start, router and burst of skiff beside their peers, from one run.
#[derive(Parser, Debug)]
#[command(name = "serving-bench")]
struct Args {
    /// Cold starts per case (skiff and floor, interleaved); at least 50 for BENCHMARKS.md.
    #[arg(long, default_value_t = 60)]
    cold_runs: usize,
    /// Unmeasured cold-start pairs first.
    #[arg(long, default_value_t = 2)]
    cold_warmup: usize,
    /// Router: repetitions of each case and mode, interleaved.
    #[arg(long, default_value_t = 5)]
    router_reps: usize,
    /// Router: seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    router_seconds: u64,
    /// Router: connections of the throughput runs (latency runs use one).
    #[arg(long, default_value_t = 32)]
    router_connections: usize,
    /// Router: wrk threads of the throughput runs (latency runs use one).
    #[arg(long, default_value_t = 2)]
    router_threads: usize,
    /// Router: skiff's router threads (`--router-threads`) and nginx's `worker_processes`,
    /// the same number for both (default: one per core).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, |n| n.get()))]
    router_workers: usize,
    /// Router: the server behind every case (auto: skiff-test-h2 when it builds, which
    /// serves about twice what skiff-test-server does here, else skiff-test-server).
    #[arg(long, value_enum, default_value = "auto")]
    router_backend: Backend,
    /// Router: the ratio of the traced daemon's `parentbased_traceidratio` sampler (the
    /// skiff+telemetry case), 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    router_trace_ratio: f64,
    /// Burst: clients before the step.
    #[arg(long, default_value_t = 2)]
    burst_from: usize,
    /// Burst: clients after the step.
    #[arg(long, default_value_t = 20)]
    burst_to: usize,
    /// Burst: how long the server holds each request (ms).
    #[arg(long, default_value_t = 50)]
    burst_delay_ms: u64,
    /// Burst: the Service's containerConcurrency.
    #[arg(long, default_value_t = 2)]
    burst_cc: u32,
    /// Burst: autoscaling.knative.dev/target-utilization-percentage.
    #[arg(long, default_value_t = 100)]
    burst_utilization: u32,
    /// Burst: autoscaling.knative.dev/window (default: not set, so 60s).
    #[arg(long)]
    burst_window: Option<String>,
    /// Burst: seconds before the step.
    #[arg(long, default_value_t = 20.0)]
    burst_before: f64,
    /// Burst: seconds after the step.
    #[arg(long, default_value_t = 40.0)]
    burst_after: f64,
    /// Events: seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    events_seconds: u64,
    /// Events: seconds of each target's warmup run (0: none).
    #[arg(long, default_value_t = 2)]
    events_warmup: u64,
    /// Events: wrk's connection counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    events_connections: Vec<usize>,
    /// Events: events in the delivery batch.
    #[arg(long, default_value_t = 20_000)]
    events_batch: usize,
    /// Events: connections the batch is posted over.
    #[arg(long, default_value_t = 32)]
    events_batch_connections: usize,
    /// Events: the subscriber's containerConcurrency.
    #[arg(long, default_value_t = 32)]
    events_sub_cc: u32,
    /// Events: the subscriber's instances (min-scale = max-scale).
    #[arg(long, default_value_t = 1)]
    events_sub_instances: u32,
    /// Events: longest wait for a backlog to drain, in seconds.
    #[arg(long, default_value_t = 600)]
    events_drain_timeout: u64,
    /// Which parts to run (comma-separated; `events` only when named); a partial run of
    /// cold, router and burst is marked as such.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cold,router,burst"
    )]
    only: Vec<Part>,
    /// Also write the Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every figure (each request, run and sample) as JSON to this file.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Copy the daemon's log, nginx's logs and wrk's outputs into this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Where the working directory is made (unless --work-dir is given).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// The working directory to use: must exist and be empty (bench/serving.sh makes it).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The skiff binary under test (default: `skiff` beside this program); a private copy
    /// runs.
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// The command line the report shows (bench/serving.sh passes its own).
    #[arg(long, hide = true)]
    invocation: Option<String>,
    /// Only stop and remove what an earlier run in --work-dir left (after it was killed).
    #[arg(long, hide = true)]
    cleanup_only: bool,
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
            eprintln!("serving-bench: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.cleanup_only {
        rt.block_on(cleanup_only(&args))
    } else {
        rt.block_on(run(args))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serving-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the parts measured.
#[derive(Debug, Default)]
pub struct Results {
    pub cold: Option<ColdResults>,
    pub router: Option<RouterResults>,
    pub burst: Option<BurstResults>,
    pub events: Option<EventsResults>,
}

/// The data directory of the router part's traced daemon, below the working directory.
const TELEMETRY_DATA: &str = "data-telemetry";
/// The data directory of the cold-start part's parking daemon.
const PARKING_DATA: &str = "data-parking";

fn runc_roots(work: &Path) -> Vec<PathBuf> {
    vec![
        work.join("data/run/runc"),
        work.join(TELEMETRY_DATA).join("run/runc"),
        work.join(PARKING_DATA).join("run/runc"),
        Floor::runc_root(&work.join("floor")),
    ]
}

fn version_of(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running `{cmd}`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// The tools the run needs, with how to install each (nginx only for the router part).
fn check_tools(nginx: bool) -> anyhow::Result<()> {
    let tools: [(&str, &[&str], &str); 4] = [
        ("runc", &["--version"], "apt-get install -y runc"),
        ("wrk", &["-v"], "apt-get install -y wrk"),
        (
            "nginx",
            &["-v"],
            "apt-get install -y nginx-light (or nginx)",
        ),
        ("nsenter", &["--version"], "apt-get install -y util-linux"),
    ];
    let mut missing = Vec::new();
    for (tool, args, how) in tools {
        if tool == "nginx" && !nginx {
            continue;
        }
        if std::process::Command::new(tool)
            .args(args)
            .output()
            .is_err()
        {
            missing.push(format!("`{tool}` ({how})"));
        }
    }
    if !Path::new("/usr/bin/busybox").is_file() {
        missing.push("/usr/bin/busybox (apt-get install -y busybox-static)".into());
    }
    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("needs root (the daemon runs containers; overlay mounts, network namespaces)");
    }
    if args.only.is_empty() {
        bail!("--only names no part");
    }
    if args.only.contains(&Part::Router) && !(0.0..=1.0).contains(&args.router_trace_ratio) {
        bail!("--router-trace-ratio must be between 0 and 1");
    }
    if args.only.contains(&Part::Cold) && args.cold_runs == 0 {
        bail!("--cold-runs must be at least 1 (50 or more for BENCHMARKS.md)");
    }
    if args.only.contains(&Part::Burst)
        && (args.burst_from == 0 || args.burst_to <= args.burst_from)
    {
        bail!("--burst-to must be above --burst-from, which must be at least 1");
    }
    if args.only.contains(&Part::Events) {
        if args.events_connections.is_empty() || args.events_connections.contains(&0) {
            bail!("--events-connections must list counts of at least 1");
        }
        if args.events_batch == 0 || args.events_batch_connections == 0 {
            bail!("--events-batch and --events-batch-connections must be at least 1");
        }
        if args.events_sub_instances == 0 {
            bail!("--events-sub-instances must be at least 1");
        }
    }
    check_tools(args.only.contains(&Part::Router))?;
    // The floor's container inits are reparented to us when `runc run -d` exits, and reaped
    // at once; without this they would go to PID 1, which reaps slowly here.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming a child subreaper")?;
    let started = Instant::now();
    let pid = std::process::id();
    let prefix = format!("sb{pid}");
    let work = match &args.work_dir {
        Some(w) => {
            let empty = std::fs::read_dir(w)
                .with_context(|| format!("--work-dir {}", w.display()))?
                .next()
                .is_none();
            if !empty {
                bail!("--work-dir {} is not empty", w.display());
            }
            w.clone()
        }
        None => {
            let w = args.dir.join(format!("skiff-serving-bench-{pid}"));
            if w.exists() {
                bail!("{} exists already", w.display());
            }
            std::fs::create_dir_all(&w).with_context(|| format!("creating {}", w.display()))?;
            w
        }
    };
    let work = work.canonicalize().context("working directory")?;
    std::fs::write(
        work.join("run.json"),
        serde_json::json!({ "prefix": prefix }).to_string(),
    )
    .context("writing run.json")?;
    let mut cleanup = Cleanup::new(work.clone(), runc_roots(&work), format!("{prefix}-"));
    let machine = machine::gather(&work);
    let load_before = machine::loadavg();
    let date = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M UTC")
        .to_string();
    let invocation = args.invocation.clone().unwrap_or_else(|| {
        std::iter::once("serving-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    });
    progress(format!("working directory {}", work.display()));

    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let procs = Arc::new(Procs::default());

    let setup = tokio::select! {
        r = setup(&args, &work, &prefix, procs.clone()) => r,
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
    };
    let outcome: anyhow::Result<(Results, report::Versions, String)> = match setup {
        Err(e) => Err(e.context("setting up")),
        Ok((b, versions)) => {
            let b = Arc::new(b);
            let command_line = b.daemon.command_line.clone();
            let task = tokio::spawn(measure(b.clone(), settings(&args)));
            let abort = task.abort_handle();
            let r = tokio::select! {
                r = task => r.unwrap_or_else(|e| Err(anyhow::anyhow!("the benchmark task failed: {e}"))),
                _ = sigint.recv() => { abort.abort(); Err(anyhow::anyhow!("interrupted (SIGINT)")) }
                _ = sigterm.recv() => { abort.abort(); Err(anyhow::anyhow!("interrupted (SIGTERM)")) }
            };
            r.map(|res| (res, versions, command_line))
        }
    };

    // Whatever happened: nginx, then the daemons (SIGTERM: each stops its instances), then
    // what is left is checked, swept and checked again.
    if let Some(how) = router::stop_nginx(&procs).await {
        progress(format!("nginx: {how}"));
    }
    if let Some(how) = router::stop_telemetry_daemon(&procs).await {
        progress(format!("traced daemon: {how}"));
    }
    if let Some(child) = Procs::take(&procs.parking_daemon) {
        let how =
            daemon::stop_child(child, rustix::process::Signal::TERM, daemon::STOP_TIMEOUT).await;
        progress(format!("parking daemon: {how}"));
    }
    if let Some(child) = Procs::take(&procs.daemon) {
        progress("stopping the daemon (SIGTERM)");
        let how =
            daemon::stop_child(child, rustix::process::Signal::TERM, daemon::STOP_TIMEOUT).await;
        progress(format!("daemon: {how}"));
    }
    if let Some(dir) = &args.keep_logs {
        keep_logs(&work, dir);
    }
    let before_sweep = cleanup.leftovers(false);
    cleanup.sweep();
    reap_strays();
    let after_sweep = cleanup.leftovers(true);
    if !after_sweep.is_empty() {
        bail!("left behind after cleanup:\n  {}", after_sweep.join("\n  "));
    }
    if before_sweep.is_empty() {
        progress(
            "cleanup checked: no container in the daemons' or the floor's runc roots, no mount under the working directory, no cgroup of this run, working directory removed",
        );
    }
    let (results, versions, command_line) = outcome?;
    if !before_sweep.is_empty() {
        bail!(
            "the daemons' shutdown or the floor's teardown left these behind (swept now):\n  {}",
            before_sweep.join("\n  ")
        );
    }

    let md = report::markdown(&report::Report {
        invocation: &invocation,
        date,
        machine: &machine,
        versions: &versions,
        daemon_command: &command_line,
        load_before,
        load_after: machine::loadavg(),
        total_s: started.elapsed().as_secs_f64(),
        cold_runs: args.cold_runs,
        partial: {
            let serving = [Part::Cold, Part::Router, Part::Burst]
                .iter()
                .filter(|p| args.only.contains(p))
                .count();
            serving > 0 && serving < 3
        },
        results: &results,
    });
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        progress(format!("Markdown written to {}", out.display()));
    }
    if let Some(raw) = &args.raw {
        std::fs::write(raw, report::raw_json(&results))
            .with_context(|| format!("writing {}", raw.display()))?;
        progress(format!("raw figures written to {}", raw.display()));
    }
    Ok(())
}

/// The parts' settings from the arguments.
#[derive(Debug, Clone)]
struct Settings {
    cold: Option<(usize, usize)>,
    router: Option<RouterSettings>,
    burst: Option<BurstSettings>,
    events: Option<EventsSettings>,
}

fn settings(a: &Args) -> Settings {
    Settings {
        cold: a
            .only
            .contains(&Part::Cold)
            .then_some((a.cold_runs, a.cold_warmup)),
        router: a.only.contains(&Part::Router).then_some(RouterSettings {
            reps: a.router_reps,
            seconds: a.router_seconds,
            warmup_seconds: 2,
            latency_connections: 1,
            throughput_threads: a.router_threads,
            throughput_connections: a.router_connections,
            nginx_workers: a.router_workers,
            trace_ratio: a.router_trace_ratio,
        }),
        burst: a.only.contains(&Part::Burst).then(|| BurstSettings {
            from: a.burst_from,
            to: a.burst_to,
            delay_ms: a.burst_delay_ms,
            cc: a.burst_cc,
            utilization: a.burst_utilization,
            window: a.burst_window.clone(),
            before_s: a.burst_before,
            after_s: a.burst_after,
        }),
        events: a.only.contains(&Part::Events).then(|| EventsSettings {
            seconds: a.events_seconds,
            warmup_seconds: a.events_warmup,
            connections: a.events_connections.clone(),
            batch: a.events_batch,
            batch_connections: a.events_batch_connections,
            sub_cc: a.events_sub_cc,
            sub_instances: a.events_sub_instances,
            drain_timeout: Duration::from_secs(a.events_drain_timeout),
        }),
    }
}

/// The daemon (a private copy of the binary), the images, the versions.
async fn setup(
    args: &Args,
    work: &Path,
    prefix: &str,
    procs: Arc<Procs>,
) -> anyhow::Result<(Bench, report::Versions)> {
    let src = match &args.skiff {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this program")?
            .with_file_name("skiff"),
    };
    anyhow::ensure!(
        src.is_file(),
        "the skiff binary {} does not exist (cargo build --release --bin skiff)",
        src.display()
    );
    // A private copy: someone rebuilding target/release mid-run must not swap the binary.
    let bin = work.join("bin/skiff");
    std::fs::create_dir_all(work.join("bin")).context("creating bin/")?;
    std::fs::copy(&src, &bin).with_context(|| format!("copying {}", src.display()))?;

    progress("building the images (busybox httpd; the test servers, built static by cargo)");
    let want_h2 = args.only.contains(&Part::Router) && args.router_backend != Backend::TestServer;
    let (httpd_img, server_img, h2_img) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            skiff_test_utils::images::busybox_httpd_image()?,
            skiff_test_utils::images::runtime_info_image()?,
            want_h2.then(skiff_test_utils::images::h2_server_image),
        ))
    })
    .await
    .context("building the images")??;
    let mut h2_failed = None;
    let h2_img = match (h2_img, args.router_backend) {
        (Some(Err(e)), Backend::TestH2) => return Err(e.context("building skiff-test-h2")),
        (Some(Err(e)), _) => {
            progress(format!(
                "skiff-test-h2 does not build ({e:#}); the router cases use skiff-test-server"
            ));
            h2_failed = Some(format!("{e:#}").chars().take(200).collect::<String>());
            None
        }
        (Some(Ok(img)), _) => Some(img),
        (None, _) => None,
    };

    // Request logs and traces off: the router part's `skiff` case (and the cold start and
    // burst parts). Request logs are on by default.
    let off = ["--request-logs".to_owned(), "false".to_owned()];
    // The first daemon parks nothing: its cold starts are fresh ones.
    let fresh: Vec<String> = off
        .iter()
        .cloned()
        .chain(["--parked-sandboxes".to_owned(), "0".to_owned()])
        .collect();
    let daemon = Daemon::start(
        &bin,
        &work.join("data"),
        &work.join("daemon.log"),
        &procs.daemon,
        args.router_workers,
        &fresh,
        &fresh,
    )
    .await?;
    progress(format!(
        "daemon pid {} (API {}, ingress {})",
        daemon.pid, daemon.api, daemon.ingress
    ));
    // The cold-start part's parked starts: a second daemon, parking as it does by default.
    let parking = if args.only.contains(&Part::Cold) {
        let daemon = Daemon::start(
            &bin,
            &work.join(PARKING_DATA),
            &work.join("daemon-parking.log"),
            &procs.parking_daemon,
            args.router_workers,
            &off,
            &off,
        )
        .await
        .context("starting the parking daemon")?;
        progress(format!(
            "parking daemon pid {} (API {}, ingress {})",
            daemon.pid, daemon.api, daemon.ingress
        ));
        Some(daemon)
    } else {
        None
    };
    // The router part's `skiff+telemetry` case: a second daemon with request logs on and
    // traces exported to a sink of ours.
    let telemetry = if args.only.contains(&Part::Router) {
        let sink = otlp::Sink::start().context("starting the OTLP sink")?;
        let ratio = args.router_trace_ratio.to_string();
        let on = |endpoint: &str| {
            [
                "--request-logs",
                "true",
                "--otlp-endpoint",
                endpoint,
                "--traces-sampler",
                "parentbased_traceidratio",
                "--traces-sampler-arg",
                &ratio,
            ]
            .map(str::to_owned)
        };
        let daemon = Daemon::start(
            &bin,
            &work.join(TELEMETRY_DATA),
            &work.join("daemon-telemetry.log"),
            &procs.telemetry_daemon,
            args.router_workers,
            &on(&sink.url),
            &on("SINK"),
        )
        .await
        .context("starting the traced daemon")?;
        progress(format!(
            "traced daemon pid {} (API {}, ingress {}; OTLP sink {})",
            daemon.pid, daemon.api, daemon.ingress, sink.url
        ));
        Some(bench::TelemetryDaemon { daemon, sink })
    } else {
        None
    };
    let httpd = bench::import(
        &daemon,
        &httpd_img,
        &work.join("layouts/httpd"),
        "skiff.local/serving-bench/httpd:v1",
    )
    .await?;
    if let Some(p) = &parking {
        bench::import(
            p,
            &httpd_img,
            &work.join("layouts/httpd-parking"),
            "skiff.local/serving-bench/httpd:v1",
        )
        .await?;
    }
    let server = bench::import(
        &daemon,
        &server_img,
        &work.join("layouts/server"),
        "skiff.local/serving-bench/test-server:v1",
    )
    .await?;
    let h2 = match &h2_img {
        Some(img) => Some(
            bench::import(
                &daemon,
                img,
                &work.join("layouts/h2"),
                "skiff.local/serving-bench/test-h2:v1",
            )
            .await?,
        ),
        None => None,
    };
    // The traced daemon gets the router's backend only, under the same reference.
    if let Some(t) = &telemetry {
        let (img, layout, reference) = match &h2_img {
            Some(img) => (
                img,
                "layouts/h2-telemetry",
                "skiff.local/serving-bench/test-h2:v1",
            ),
            None => (
                &server_img,
                "layouts/server-telemetry",
                "skiff.local/serving-bench/test-server:v1",
            ),
        };
        bench::import(&t.daemon, img, &work.join(layout), reference).await?;
    }
    let versions = report::Versions::gather(&daemon).await;
    let backend = match &h2 {
        Some(img) => (
            img.clone(),
            "skiff-test-h2 (static; hyper 1 on a multi-threaded tokio runtime; HTTP/1.1 keep-alive)".to_owned(),
        ),
        None => (
            server.clone(),
            format!(
                "skiff-test-server (static; std only, one thread per connection; keep-alive){}",
                h2_failed
                    .map(|e| format!(" (skiff-test-h2 was not used: it did not build: {e})"))
                    .unwrap_or_default()
            ),
        ),
    };
    Ok((
        Bench {
            prefix: prefix.to_owned(),
            work: work.to_path_buf(),
            daemon,
            telemetry,
            parking,
            httpd,
            router_backend: backend.0,
            router_backend_name: backend.1,
            server,
            procs,
            connector: Connector::new(1).context("starting a connector")?,
        },
        versions,
    ))
}

async fn measure(b: Arc<Bench>, s: Settings) -> anyhow::Result<Results> {
    let mut r = Results::default();
    if let Some((runs, warmup)) = s.cold {
        r.cold = Some(cold::run(&b, runs, warmup).await.context("cold start")?);
    }
    if let Some(rs) = &s.router {
        r.router = Some(router::run(&b, rs).await.context("router")?);
    }
    if let Some(bs) = &s.burst {
        r.burst = Some(burst::run(&b, bs).await.context("burst")?);
    }
    if let Some(es) = &s.events {
        r.events = Some(events::run(&b, es).await.context("events")?);
    }
    Ok(r)
}

/// Copies the logs out of the working directory before it is removed.
fn keep_logs(work: &Path, dir: &Path) {
    let _ = std::fs::create_dir_all(dir);
    for (from, to) in [
        (work.join("daemon.log"), dir.join("daemon.log")),
        (
            work.join("daemon-telemetry.log"),
            dir.join("daemon-telemetry.log"),
        ),
        (work.join("nginx/error.log"), dir.join("nginx-error.log")),
        (work.join("nginx/nginx.conf"), dir.join("nginx.conf")),
    ] {
        let _ = std::fs::copy(from, to);
    }
    if let Ok(entries) = std::fs::read_dir(work.join("wrk")) {
        let wrk = dir.join("wrk");
        let _ = std::fs::create_dir_all(&wrk);
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), wrk.join(e.file_name()));
        }
    }
    progress(format!("logs copied to {}", dir.display()));
}

/// Reaps children that ended without a waiter: container processes reparented to us (a
/// subreaper) if the daemon died before its instances. Only called once every child we
/// spawned ourselves has been waited for.
fn reap_strays() {
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

/// Whether process `pid` runs a command line that mentions `work` (so it is ours).
fn is_ours(pid: i32, work: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*work.to_string_lossy()))
        .unwrap_or(false)
}

/// Sends `signal` to `pid` if it is ours, waits up to `max` for it to go, then SIGKILL.
async fn stop_pid(pid: i32, work: &Path, what: &str, max: Duration) {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    if !is_ours(pid, work) {
        return;
    }
    progress(format!("stopping the {what} left running (pid {pid})"));
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let deadline = Instant::now() + max;
    while is_ours(pid, work) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        reap_strays();
    }
    if is_ours(pid, work) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// `--cleanup-only`: after a run was killed (SIGKILL), stop its nginx and daemon and remove
/// everything else it made, then check.
async fn cleanup_only(args: &Args) -> anyhow::Result<()> {
    let work = args
        .work_dir
        .as_ref()
        .context("--cleanup-only needs --work-dir")?;
    if !work.exists() {
        return Ok(());
    }
    let work = work.canonicalize().context("working directory")?;
    let read_json = |p: PathBuf| -> serde_json::Value {
        std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let prefix = read_json(work.join("run.json"))["prefix"]
        .as_str()
        .map(str::to_owned);
    if let Some(pid) = std::fs::read_to_string(work.join("nginx/nginx.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        stop_pid(pid, &work, "nginx", Duration::from_secs(10)).await;
    }
    if let Some(pid) = read_json(work.join(TELEMETRY_DATA).join("endpoints.json"))["pid"].as_i64() {
        stop_pid(pid as i32, &work, "traced daemon", daemon::STOP_TIMEOUT).await;
    }
    if let Some(pid) = read_json(work.join(PARKING_DATA).join("endpoints.json"))["pid"].as_i64() {
        stop_pid(pid as i32, &work, "parking daemon", daemon::STOP_TIMEOUT).await;
    }
    if let Some(pid) = read_json(work.join("data/endpoints.json"))["pid"].as_i64() {
        stop_pid(pid as i32, &work, "daemon", daemon::STOP_TIMEOUT).await;
    }
    let Some(prefix) = prefix else {
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    };
    let mut cleanup = Cleanup::new(work.clone(), runc_roots(&work), format!("{prefix}-"));
    let found = cleanup.leftovers(false);
    cleanup.sweep();
    reap_strays();
    let left = cleanup.leftovers(true);
    if !found.is_empty() {
        progress(format!(
            "removed what the killed run left:\n  {}",
            found.join("\n  ")
        ));
    }
    if !left.is_empty() {
        bail!("still left after cleanup:\n  {}", left.join("\n  "));
    }
    Ok(())
}
