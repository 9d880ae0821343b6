//! The Markdown section for BENCHMARKS.md, and every figure as JSON.

use std::fmt::Write;

use serde_json::json;
use skiff_bench_runtime::machine::Machine;
use skiff_bench_runtime::stats::{Summary, median, percentile, summarize};

use crate::Results;
use crate::burst::BurstResults;
use crate::cold::{self, ColdResults};
use crate::daemon::Daemon;
use crate::router::{Case, Mode, RouterResults, WrkRun};

/// Versions of what runs, for the report.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub skiff: String,
    pub git: String,
    pub wrk: String,
    pub nginx: String,
    pub busybox: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    crate::version_of(cmd, args).unwrap_or_else(|e| format!("unknown ({e:#})"))
}

impl Versions {
    pub async fn gather(daemon: &Daemon) -> Versions {
        let skiff = daemon
            .cli(&["--version"])
            .await
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e:#})"));
        let root = skiff_test_utils::images::workspace_root();
        let git = std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let dirty = std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .ok()
            .map(|o| !o.stdout.is_empty());
        let git = match (git, dirty) {
            (Some(g), Some(true)) => format!("git {g} with uncommitted changes"),
            (Some(g), _) => format!("git {g}"),
            (None, _) => "git revision unknown".into(),
        };
        let wrk = first_line("wrk", &["-v"]);
        Versions {
            skiff,
            git,
            wrk: wrk
                .split(" Copyright")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            nginx: first_line("nginx", &["-v"])
                .trim_start_matches("nginx version: ")
                .trim_start_matches("nginx/")
                .to_owned(),
            busybox: first_line("/usr/bin/busybox", &[])
                .trim_end_matches(" multi-call binary.")
                .to_owned(),
        }
    }
}

pub struct Report<'a> {
    pub invocation: &'a str,
    pub date: String,
    pub machine: &'a Machine,
    pub versions: &'a Versions,
    pub daemon_command: &'a str,
    pub load_before: String,
    pub load_after: String,
    pub total_s: f64,
    pub cold_runs: usize,
    pub partial: bool,
    pub results: &'a Results,
}

fn row(out: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.p50, s.p90, s.p99, s.min, s.max, s.mean
    );
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// Milliseconds between two wall-clock instants.
fn between(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    b.duration_since(a).as_secs_f64() * 1000.0
}

pub fn markdown(r: &Report<'_>) -> String {
    let m = r.machine;
    let v = r.versions;
    let res = r.results;
    let mut o = String::new();
    let events_only =
        res.events.is_some() && res.cold.is_none() && res.router.is_none() && res.burst.is_none();
    if events_only {
        let _ = writeln!(
            o,
            "## Events: accepted/s at a Broker, delivered/s to a subscriber ({})\n",
            r.date
        );
    } else {
        let _ = writeln!(o, "## Serving: cold start, router, burst ({})\n", r.date);
    }
    let _ = writeln!(o, "```\n{}\n```\n", r.invocation);
    if r.partial {
        let _ = writeln!(
            o,
            "> **Partial run** (`--only`): not every part ran. Not for BENCHMARKS.md.\n"
        );
    }
    if res.cold.is_some() && r.cold_runs < 50 {
        let _ = writeln!(
            o,
            "> **Smoke run**: fewer than 50 cold starts per case, so p99 means little. Not for BENCHMARKS.md.\n"
        );
    }
    let _ = writeln!(
        o,
        "- Machine: Linux {}, {} × {}, {:.1} GiB RAM, work dir on {}; load average (1/5/15 min) {} before, {} after",
        m.kernel, m.cpu_model, m.cpus, m.mem_gib, m.fs, r.load_before, r.load_after
    );
    if events_only {
        let _ = writeln!(
            o,
            "- Versions: {} ({}), release build; runc {}; {}; {} (in the image)",
            v.skiff, v.git, m.runc, v.wrk, v.busybox
        );
    } else {
        let _ = writeln!(
            o,
            "- Versions: {} ({}), release build; runc {}; {}; nginx {}; {}",
            v.skiff, v.git, m.runc, v.wrk, v.nginx, v.busybox
        );
    }
    let _ = writeln!(
        o,
        "- Daemon: `{}` with its own data directory (`DATA`), the API and the ingress on free loopback ports, request logs and traces off{}; the benchmark's clients, wrk{} run on the same {} cores",
        r.daemon_command,
        if res.router.is_some() {
            " (the router part's skiff+telemetry case runs a second daemon with them on, see there)"
        } else {
            ""
        },
        if events_only { "" } else { " and nginx" },
        m.cpus
    );
    let mut parts = Vec::new();
    if let Some(c) = &res.cold {
        parts.push(format!("cold start {:.0} s", c.total_s));
    }
    if let Some(rt) = &res.router {
        parts.push(format!("router {:.0} s", rt.total_s));
    }
    if let Some(b) = &res.burst {
        parts.push(format!("burst {:.0} s", b.total_s));
    }
    if let Some(e) = &res.events {
        parts.push(format!("events {:.0} s", e.total_s));
    }
    let _ = writeln!(
        o,
        "- The whole run took {:.0} s ({}; the rest is building the images, starting and stopping the daemon, and the cleanup checks)\n",
        r.total_s,
        parts.join(", ")
    );
    if let Some(c) = &res.cold {
        cold_section(&mut o, c);
    }
    if let Some(rt) = &res.router {
        router_section(&mut o, rt);
    }
    if let Some(b) = &res.burst {
        burst_section(&mut o, b);
    }
    if let Some(e) = &res.events {
        crate::report_events::section(&mut o, e);
    }
    let _ = writeln!(
        o,
        "Everything the run started ({}containers, mounts, cgroups, the working directory) was checked gone at the end: `runc list` of the daemons' and the floor's runc roots, `/proc/self/mountinfo`, `/sys/fs/cgroup/*/skiff/<prefix>-*`.",
        if events_only {
            "the daemon, "
        } else {
            "daemons, nginx, "
        }
    );
    o
}

fn cold_section(o: &mut String, c: &ColdResults) {
    let n = c.skiff.len();
    let ttfb = summarize(&c.skiff.iter().map(|s| s.ttfb_ms).collect::<Vec<_>>());
    let full = summarize(&c.skiff.iter().map(|s| s.full_ms).collect::<Vec<_>>());
    let accept = summarize(&c.floor.iter().map(|f| f.total_ms).collect::<Vec<_>>());
    let f_fb: Vec<f64> = c
        .floor
        .iter()
        .filter_map(|f| f.response.as_ref().map(|x| x.first_byte_ms))
        .collect();
    let f_fb = summarize(&f_fb);
    let _ = writeln!(
        o,
        "### Cold start: scale from zero to first byte, skiff vs bare runc\n"
    );
    let _ = writeln!(
        o,
        "- Image: busybox httpd from `skiff-test-utils` ({} gzip layers, {:.0} KiB compressed), `/bin/sh -c 'exec httpd -f -p \"${{PORT:-8080}}\" -h /www'`, imported once as `{}`; 64 MiB memory limit in both cases. The floor mounts the very layers skiff unpacked into its content store.",
        c.image_layers, c.image_kib, c.image
    );
    let _ = writeln!(
        o,
        "- {} Services created up front, each with `autoscaling.knative.dev/initial-scale: \"0\"` and `timeoutSeconds: {}` (its revision pins the image and runs nothing; creating them and seeing every revision pinned took {:.1} s). Then, in turn, one `GET /` to each on a fresh connection to the ingress (`Host: <service>.default.localhost`, `Connection: close`), then the Service deleted and its instance awaited gone; interleaved with the floor, skiff first, after {} unmeasured warmup pair(s); {} runs per case.\n",
        c.services,
        cold::TIMEOUT_SECONDS,
        c.create_s,
        c.warmup,
        n
    );
    let _ = writeln!(o, "| Case (ms) | p50 | p90 | p99 | min | max | mean |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    row(
        o,
        "skiff: request written → first byte (scale from zero, through the ingress)",
        &ttfb,
    );
    row(o, "skiff: request written → whole answer", &full);
    let parked = summarize(&c.parked.iter().map(|s| s.ttfb_ms).collect::<Vec<_>>());
    row(
        o,
        "skiff parked: request written → first byte (from a parked sandbox, through the ingress)",
        &parked,
    );
    row(
        o,
        "floor: overlay mount → first accepted connection (`runc run -d`, bare)",
        &accept,
    );
    row(
        o,
        "floor: overlay mount → first byte of the same `GET /` on that connection",
        &f_fb,
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Percentiles interpolate linearly between the closest ranks; with {n} runs p99 lies between the two largest values.\n"
    );
    let ratio = ttfb.p50 / accept.p50;
    let _ = writeln!(
        o,
        "- skiff / floor at p50: {:.1} / {:.1} = **{:.2}** (goal ≤ 1.5: {}); against the floor's first byte {:.1} / {:.1} = {:.2}",
        ttfb.p50,
        accept.p50,
        ratio,
        met(ratio <= 1.5),
        ttfb.p50,
        f_fb.p50,
        ttfb.p50 / f_fb.p50
    );
    let _ = writeln!(
        o,
        "- skiff / floor at p99: {:.1} / {:.1} = **{:.2}**; against the floor's first byte {:.2}",
        ttfb.p99,
        accept.p99,
        ttfb.p99 / accept.p99,
        ttfb.p99 / f_fb.p99
    );
    let pr = parked.p50 / accept.p50;
    let _ = writeln!(
        o,
        "- skiff parked / floor at p50: {:.2} / {:.1} = **{:.3}** (goal ≤ 0.25: {}; moonshot under 4 ms: {}); at p99 {:.2} / {:.1} = {:.3}",
        parked.p50,
        accept.p50,
        pr,
        met(pr <= 0.25),
        met(parked.p50 < 4.0),
        parked.p99,
        accept.p99,
        parked.p99 / accept.p99
    );
    let mem = summarize(
        &c.parked_memory
            .iter()
            .map(|b| *b as f64 / 1048576.0)
            .collect::<Vec<_>>(),
    );
    let (rss_parked, rss_before) = c.parking_daemon_rss_kib;
    let _ = writeln!(
        o,
        "- The parking daemon: {} Services created at zero, each with its sandbox parked (the fresh daemon parks nothing: `--parked-sandboxes 0`). A parked sandbox's cgroup memory (its held `runc init`): p50 {:.2} MiB, max {:.2} MiB; the daemon's own resident memory {:.1} MiB with all of them parked, {:.1} MiB before.",
        c.parked_memory.len(),
        mem.p50,
        mem.max,
        rss_parked as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    if c.problems.is_empty() {
        let _ = writeln!(
            o,
            "- Checked: {n}/{n} skiff answers of each kind were 200, and after each one the Service's scale API (`GET …/services/{{name}}/scale`) showed exactly one cold start, one request that waited through it, and one instance running (not counting the sandbox parked after it), started `fresh` on the first daemon and `parked` on the second; {n}/{n} floor answers were 200."
        );
    } else {
        let _ = writeln!(
            o,
            "- **Checks failed** ({} problem(s)): {}",
            c.problems.len(),
            c.problems
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    // Does the number of Services around matter? The first runs had the most.
    if n >= 20 {
        let half = n / 2;
        let first = median(
            &c.skiff[..half]
                .iter()
                .map(|s| s.ttfb_ms)
                .collect::<Vec<_>>(),
        );
        let last = median(
            &c.skiff[half..]
                .iter()
                .map(|s| s.ttfb_ms)
                .collect::<Vec<_>>(),
        );
        let f_first = median(
            &c.floor[..half]
                .iter()
                .map(|s| s.total_ms)
                .collect::<Vec<_>>(),
        );
        let f_last = median(
            &c.floor[half..]
                .iter()
                .map(|s| s.total_ms)
                .collect::<Vec<_>>(),
        );
        let reconcile = |xs: &[cold::SkiffCold]| {
            median(
                &xs.iter()
                    .filter_map(|s| Some(between(s.decided_at?, s.starting_at?)))
                    .collect::<Vec<_>>(),
            )
        };
        let _ = writeln!(
            o,
            "- Does the number of Services matter? Over the first {half} runs ({}–{} Services stored) skiff's p50 was {:.1} ms (decision → `starting instance` {:.2} ms), over the last {} ({}–1 stored) {:.1} ms ({:.2} ms); the floor's {:.1} and {:.1} ms.",
            c.services - c.warmup,
            c.services - c.warmup - half + 1,
            first,
            reconcile(&c.skiff[..half]),
            n - half,
            c.services - c.warmup - half,
            last,
            reconcile(&c.skiff[half..]),
            f_first,
            f_last
        );
    }
    let _ = writeln!(o);

    // The breakdown.
    let phase = |f: &dyn Fn(&cold::SkiffCold) -> Option<f64>| -> Summary {
        summarize(&c.skiff.iter().filter_map(f).collect::<Vec<_>>())
    };
    let decide = phase(&|s| s.decided_at.map(|d| between(s.sent_at, d)));
    let reconcile = phase(&|s| Some(between(s.decided_at?, s.starting_at?)));
    let start = phase(&|s| Some(between(s.starting_at?, s.served_at?)));
    let runtime = phase(&|s| s.start_to_ready_ms);
    let forward = phase(&|s| s.served_at.map(|d| between(d, s.first_byte_at())));
    let router_cold = phase(&|s| s.router_cold_ms);
    let with_log = c
        .skiff
        .iter()
        .filter(|s| s.decided_at.is_some() && s.starting_at.is_some() && s.served_at.is_some())
        .count();
    let _ = writeln!(
        o,
        "Where skiff's cold start goes ({with_log}/{n} runs found in the daemon's log; its timestamps have microseconds and the same clock as the client's; medians of parts do not add up to the median of the whole):\n"
    );
    let _ = writeln!(o, "| Phase (ms) | p50 | p90 | max |");
    let _ = writeln!(o, "|---|---|---|---|");
    let prow = |o: &mut String, name: &str, s: &Summary| {
        let _ = writeln!(o, "| {name} | {:.2} | {:.2} | {:.2} |", s.p50, s.p90, s.max);
    };
    prow(
        o,
        "request written → the autoscaler decides 0 → 1 (log: `scale changed`; routing, the activator queue, the poke)",
        &decide,
    );
    prow(
        o,
        "decision → the instance reconciler starts an instance (log: `starting instance`)",
        &reconcile,
    );
    prow(
        o,
        "`starting instance` → instance ready and in the router's pool (log: `cold start served`)",
        &start,
    );
    prow(
        o,
        "… of which the runtime's own `startToReadyMs` (instances API: `start()` → readiness probe passed)",
        &runtime,
    );
    prow(
        o,
        "in the pool → first byte at the client (the held request forwarded into the instance over a new connection, answered, relayed)",
        &forward,
    );
    prow(
        o,
        "the router's cold start figure (scale API `lastColdStartSeconds`: first waiter → instance in the pool)",
        &router_cold,
    );
    prow(
        o,
        "floor: `runc run -d` (same layers and config; runc makes the network namespace)",
        &summarize(&c.floor.iter().map(|f| f.runc_ms).collect::<Vec<_>>()),
    );
    prow(
        o,
        "floor: before `runc run -d` (dirs, overlay mount, spec, `config.json`)",
        &summarize(
            &c.floor
                .iter()
                .map(|f| f.mount_ms + f.spec_ms)
                .collect::<Vec<_>>(),
        ),
    );
    prow(
        o,
        "floor: `runc run -d` returned → accepted (1 ms connect attempts)",
        &summarize(&c.floor.iter().map(|f| f.after_runc_ms).collect::<Vec<_>>()),
    );
    prow(
        o,
        "(not timed) skiff: connecting to the ingress before the request",
        &summarize(&c.skiff.iter().map(|s| s.connect_ms).collect::<Vec<_>>()),
    );
    prow(
        o,
        "(not timed) skiff: Service deleted → instance gone (SIGTERM ignored by httpd as pid 1, SIGKILL after `timeoutSeconds`)",
        &summarize(&c.skiff.iter().map(|s| s.gone_ms).collect::<Vec<_>>()),
    );
    prow(
        o,
        "(not timed) floor: kill, reap, `runc delete`, unmount",
        &summarize(&c.floor.iter().map(|f| f.teardown_ms).collect::<Vec<_>>()),
    );
    let _ = writeln!(o);
    // Where a parked start goes.
    let pphase = |f: &dyn Fn(&cold::SkiffCold) -> Option<f64>| -> Summary {
        summarize(&c.parked.iter().filter_map(f).collect::<Vec<_>>())
    };
    let startup = |s: &cold::SkiffCold, k: &str| s.phases.as_ref().and_then(|p| p[k].as_f64());
    let _ = writeln!(
        o,
        "Where a parked start goes ({} runs; phases from the instance's status):\n",
        c.parked.len()
    );
    let _ = writeln!(o, "| Phase (ms) | p50 | p90 | max |");
    let _ = writeln!(o, "|---|---|---|---|");
    prow(
        o,
        "request written → the autoscaler decides 0 → 1",
        &pphase(&|s| s.decided_at.map(|d| between(s.sent_at, d))),
    );
    prow(
        o,
        "decision → the sandbox released (log: `unparked`)",
        &pphase(&|s| Some(between(s.decided_at?, s.starting_at?))),
    );
    prow(
        o,
        "… the instance's `imageMs` (the reconciler's decision → the runtime's unpark call)",
        &pphase(&|s| startup(s, "imageMs")),
    );
    prow(
        o,
        "… `containerMs` (unpark → its process released from the exec FIFO)",
        &pphase(&|s| startup(s, "containerMs")),
    );
    prow(
        o,
        "… `readyMs` (released → readiness probe passed: exec, the shell, httpd listening)",
        &pphase(&|s| startup(s, "readyMs")),
    );
    prow(
        o,
        "in the pool → first byte at the client",
        &pphase(&|s| s.served_at.map(|d| between(d, s.first_byte_at()))),
    );
    let _ = writeln!(o);
}

fn med(runs: &[&WrkRun], f: impl Fn(&WrkRun) -> f64) -> f64 {
    median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn router_section(o: &mut String, rt: &RouterResults) {
    let s = &rt.settings;
    let of = |case: Case, mode: Mode| -> Vec<&WrkRun> {
        rt.runs
            .iter()
            .filter(|r| r.case == case && r.mode == mode)
            .collect()
    };
    let _ = writeln!(
        o,
        "### Router: added latency and throughput, skiff (request telemetry off and on) vs nginx vs direct\n"
    );
    let _ = writeln!(
        o,
        "- Backend: one instance of {} from a Service with `min-scale` = `max-scale` = 1; every request is `GET /healthz`.",
        rt.backend
    );
    let t = &rt.telemetry;
    let _ = writeln!(
        o,
        "- **direct**: wrk inside the instance's network namespace (`nsenter --net=DATA/run/instances/<id>/netns`) → `127.0.0.1:8080`. **skiff**: wrk on the host → the ingress of the run's daemon, request logs and traces off (`--request-logs false`, no OTLP endpoint), with `Host: <service>.default.localhost` → the router's pooled connections into the namespace. **skiff+telemetry**: the same through a second daemon, `{}` (its own data directory and loopback ports, the same `--router-threads`; request logs on, traces exported over OTLP/HTTP to a sink in the benchmark, see below), to an instance of its own of the same image (its backend CPU is that instance's).",
        t.command_line
    );
    let _ = writeln!(
        o,
        "- **nginx** ({}): started inside the first instance's namespace (`worker_processes {}`, as many as skiff's router threads, `--router-threads`), `listen 127.0.0.1:8081`, `proxy_pass` to an upstream `127.0.0.1:8080` with `keepalive 64`, `proxy_http_version 1.1`, `Host`, `X-Forwarded-For` and `X-Forwarded-Proto` set (skiff adds `X-Forwarded-*`, `Forwarded`, `X-Request-Id` and `traceparent`); wrk in the namespace too.",
        rt.nginx_version, s.nginx_workers
    );
    let _ = writeln!(
        o,
        "- Latency runs: `wrk -t1 -c{} --latency`; throughput runs: `wrk -t{} -c{}`; {} s each, {} repetitions of every case and mode, the case order rotated each repetition, after a {} s warmup per case; medians over the repetitions. wrk reports latency in whole microseconds. wrk, the proxy and the backend share the {} cores, so throughput is the CPU cost of the whole path, not the proxy alone.\n",
        s.latency_connections,
        s.throughput_threads,
        s.throughput_connections,
        s.seconds,
        s.reps,
        s.warmup_seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        o,
        "| Case | 1 connection: p50 (µs) | p99 (µs) | req/s | {} connections: req/s | p50 (µs) | p99 (µs) | proxy CPU per request (µs) | backend CPU per request (µs) | errors, non-2xx |",
        s.throughput_connections
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for case in Case::ALL {
        let (l, t) = (of(case, Mode::Latency), of(case, Mode::Throughput));
        let errors: u64 = l
            .iter()
            .chain(t.iter())
            .map(|r| r.socket_errors + r.bad_status)
            .sum();
        let proxy_cpu = if case == Case::Direct {
            "—".to_owned()
        } else {
            format!(
                "{:.1}",
                med(&t, |r| r.proxy_us_per_request().unwrap_or(f64::NAN))
            )
        };
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} |",
            case.name(),
            med(&l, |r| r.p50_us),
            med(&l, |r| r.p99_us),
            med(&l, |r| r.rps),
            med(&t, |r| r.rps),
            med(&t, |r| r.p50_us),
            med(&t, |r| r.p99_us),
            proxy_cpu,
            med(&t, |r| r.backend_us_per_request()),
            errors
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "CPU per request is from the throughput runs: the CPU time (user + system) of the case's own skiff daemon process (each skiff case has its own) or of nginx's master and workers (`/proc/PID/stat`), and the instance's cgroup (`cpuacct.usage`), used during the run, divided by the requests wrk completed. wrk's own CPU is not counted.\n"
    );
    // Added latency, paired by repetition.
    let added = |case: Case, f: fn(&WrkRun) -> f64, mode: Mode| -> (f64, f64, f64) {
        let direct = of(Case::Direct, mode);
        let diffs: Vec<f64> = of(case, mode)
            .iter()
            .filter_map(|r| direct.iter().find(|d| d.rep == r.rep).map(|d| f(r) - f(d)))
            .collect();
        let mut sorted = diffs.clone();
        sorted.sort_by(f64::total_cmp);
        (
            median(&diffs),
            sorted.first().copied().unwrap_or(f64::NAN),
            sorted.last().copied().unwrap_or(f64::NAN),
        )
    };
    for case in [Case::Skiff, Case::SkiffTelemetry, Case::Nginx] {
        let (p50, p50_lo, p50_hi) = added(case, |r| r.p50_us, Mode::Latency);
        let (p99, p99_lo, p99_hi) = added(case, |r| r.p99_us, Mode::Latency);
        let _ = writeln!(
            o,
            "- Added latency of {} at 1 connection (minus direct, same repetition; median, range over repetitions): p50 **{:.3} ms** ({:.3} to {:.3}), p99 **{:.3} ms** ({:.3} to {:.3})",
            case.name(),
            p50 / 1000.0,
            p50_lo / 1000.0,
            p50_hi / 1000.0,
            p99 / 1000.0,
            p99_lo / 1000.0,
            p99_hi / 1000.0
        );
    }
    let (skiff_added, _, _) = added(Case::Skiff, |r| r.p50_us, Mode::Latency);
    let (tel_added, _, _) = added(Case::SkiffTelemetry, |r| r.p50_us, Mode::Latency);
    let skiff_rps = med(&of(Case::Skiff, Mode::Throughput), |r| r.rps);
    let tel_rps = med(&of(Case::SkiffTelemetry, Mode::Throughput), |r| r.rps);
    let nginx_rps = med(&of(Case::Nginx, Mode::Throughput), |r| r.rps);
    let direct_rps = med(&of(Case::Direct, Mode::Throughput), |r| r.rps);
    let _ = writeln!(
        o,
        "- Goal, skiff's added p50 ≤ 0.1 ms: {} ({:.3} ms; with request telemetry on {:.3} ms: {})",
        met(skiff_added <= 100.0),
        skiff_added / 1000.0,
        tel_added / 1000.0,
        met(tel_added <= 100.0)
    );
    let _ = writeln!(
        o,
        "- Goal, skiff's throughput ≥ nginx's: {} ({:.0} / {:.0} req/s = {:.2}; with request telemetry on {:.0} req/s = {:.2}: {}; direct {:.0} req/s, skiff reaches {:.0}% of it, skiff+telemetry {:.0}%, nginx {:.0}%)",
        met(skiff_rps >= nginx_rps),
        skiff_rps,
        nginx_rps,
        skiff_rps / nginx_rps,
        tel_rps,
        tel_rps / nginx_rps,
        met(tel_rps >= nginx_rps),
        direct_rps,
        100.0 * skiff_rps / direct_rps,
        100.0 * tel_rps / direct_rps,
        100.0 * nginx_rps / direct_rps
    );
    let spread = |case: Case| {
        let rps: Vec<f64> = of(case, Mode::Throughput).iter().map(|r| r.rps).collect();
        let s = summarize(&rps);
        format!("{} {:.0}–{:.0}", case.name(), s.min, s.max)
    };
    let _ = writeln!(
        o,
        "- Spread of the throughput runs (req/s, min–max over repetitions): {}\n",
        Case::ALL.map(spread).join(", ")
    );
    telemetry_section(o, rt);
}

/// Request logs and traces on vs off, and what the traced daemon and the sink counted.
fn telemetry_section(o: &mut String, rt: &RouterResults) {
    let s = &rt.settings;
    let t = &rt.telemetry;
    let of = |case: Case, mode: Mode| -> Vec<&WrkRun> {
        rt.runs
            .iter()
            .filter(|r| r.case == case && r.mode == mode)
            .collect()
    };
    // on − off, paired by repetition: median.
    let paired = |mode: Mode, f: fn(&WrkRun) -> f64| -> f64 {
        let off = of(Case::Skiff, mode);
        median(
            &of(Case::SkiffTelemetry, mode)
                .iter()
                .filter_map(|r| off.iter().find(|x| x.rep == r.rep).map(|x| f(r) - f(x)))
                .collect::<Vec<_>>(),
        )
    };
    let vs_direct = |case: Case| -> f64 {
        let direct = of(Case::Direct, Mode::Latency);
        median(
            &of(case, Mode::Latency)
                .iter()
                .filter_map(|r| {
                    direct
                        .iter()
                        .find(|d| d.rep == r.rep)
                        .map(|d| r.p50_us - d.p50_us)
                })
                .collect::<Vec<_>>(),
        )
    };
    let rps = |case: Case, mode: Mode| med(&of(case, mode), |r| r.rps);
    let cpu = |case: Case| {
        med(&of(case, Mode::Throughput), |r| {
            r.proxy_us_per_request().unwrap_or(f64::NAN)
        })
    };
    let _ = writeln!(
        o,
        "#### Request logs and traces: on (skiff+telemetry) vs off (skiff)\n"
    );
    let _ = writeln!(
        o,
        "- On: one JSON line per request appended to the revision's request log, and traces at `parentbased_traceidratio` {} (wrk sends no `traceparent`, so the ratio decides; failed, slow and cold-started requests are kept whatever it says), exported over OTLP/HTTP protobuf by the daemon's batch processor (OpenTelemetry's defaults) to a sink in the benchmark on 127.0.0.1 that answers `200` at once and counts requests, bytes and spans (walking the protobuf to the spans without decoding them), on a thread of its own.",
        s.trace_ratio
    );
    let (on_t, off_t) = (
        rps(Case::SkiffTelemetry, Mode::Throughput),
        rps(Case::Skiff, Mode::Throughput),
    );
    let (on_l, off_l) = (
        rps(Case::SkiffTelemetry, Mode::Latency),
        rps(Case::Skiff, Mode::Latency),
    );
    let _ = writeln!(
        o,
        "- Throughput on / off: **{:.3}** at {} connections ({:.0} / {:.0} req/s), {:.3} at 1 connection ({:.0} / {:.0} req/s)",
        on_t / off_t,
        s.throughput_connections,
        on_t,
        off_t,
        on_l / off_l,
        on_l,
        off_l
    );
    let _ = writeln!(
        o,
        "- Added p50 at 1 connection, on − off (same repetition, median): **{:+.3} ms**; against direct: off {:+.3} ms, on {:+.3} ms. At {} connections, p50 on − off: {:+.3} ms, p99 on − off: {:+.3} ms",
        paired(Mode::Latency, |r| r.p50_us) / 1000.0,
        vs_direct(Case::Skiff) / 1000.0,
        vs_direct(Case::SkiffTelemetry) / 1000.0,
        s.throughput_connections,
        paired(Mode::Throughput, |r| r.p50_us) / 1000.0,
        paired(Mode::Throughput, |r| r.p99_us) / 1000.0
    );
    let (cpu_on, cpu_off) = (cpu(Case::SkiffTelemetry), cpu(Case::Skiff));
    let _ = writeln!(
        o,
        "- The daemon's CPU per request (throughput runs, its own `/proc/PID/stat`, every thread: router, request log writer, exporter): on **{:.1} µs** vs off **{:.1} µs** ({:+.1} µs, {:+.0}%)",
        cpu_on,
        cpu_off,
        cpu_on - cpu_off,
        100.0 * (cpu_on - cpu_off) / cpu_off
    );
    let sampled = if t.sampled.is_empty() {
        "none".to_owned()
    } else {
        t.sampled
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let head = t
        .sampled
        .iter()
        .find(|(r, _)| r == "head")
        .map_or(0, |(_, n)| *n);
    let _ = writeln!(
        o,
        "- The sink received **{} POSTs `/v1/traces`, {:.1} KiB, {} spans** ({:.2} spans and {:.0} bytes per sampled request; {} rejected, {} connection(s); counted after the traced daemon's shutdown flushed its exporter); its thread used {:.1} ms of CPU over the router part ({:.2} µs per span)",
        t.sink.requests,
        t.sink.bytes as f64 / 1024.0,
        t.sink.spans,
        t.sink.spans as f64 / t.sampled_total.max(1) as f64,
        t.sink.bytes as f64 / t.sampled_total.max(1) as f64,
        t.sink.rejected,
        t.sink.connections,
        t.sink_cpu_ms,
        t.sink_cpu_ms * 1000.0 / t.sink.spans.max(1) as f64
    );
    let _ = writeln!(
        o,
        "- The traced daemon's `/metrics` after the last run, before its shutdown: `skiff_trace_spans_exported_total` {}, `skiff_trace_spans_export_failed_total` {}, `skiff_trace_requests_sampled_total` {} ({sampled}), `skiff_request_records_dropped_total` **{}**, `skiff_router_requests_total` {} (wrk completed {} through it, the check request included); head-sampled / requests = {:.4} (the ratio asked: {})",
        t.spans_exported,
        t.spans_failed,
        t.sampled_total,
        t.records_dropped,
        t.router_requests,
        t.wrk_requests,
        head as f64 / t.router_requests.max(1) as f64,
        s.trace_ratio
    );
    let rotated = if t.log_lines < t.router_requests {
        format!(
            "; rotation (at 10 MiB, 5 kept) removed the oldest lines: about {:.0} MiB were written in all ({} requests at this size per line)",
            (t.log_bytes as f64 / t.log_lines.max(1) as f64) * t.router_requests as f64
                / (1024.0 * 1024.0),
            t.router_requests
        )
    } else if t.log_files > 1 {
        "; rotated at 10 MiB, every line still on disk".to_owned()
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "- Request log on disk after the run: {} file(s), {:.1} MiB, {} lines ({:.0} bytes per line){rotated}",
        t.log_files,
        t.log_bytes as f64 / (1024.0 * 1024.0),
        t.log_lines,
        t.log_bytes as f64 / t.log_lines.max(1) as f64
    );
    let mut problems = Vec::new();
    if t.sink.requests == 0 {
        problems.push("no export reached the sink".to_owned());
    }
    if t.records_dropped > 0 {
        problems.push(format!(
            "{} records dropped (the request telemetry worker fell behind)",
            t.records_dropped
        ));
    }
    if t.spans_failed > 0 || t.sink.rejected > 0 {
        problems.push(format!(
            "{} spans failed to export, the sink rejected {} requests",
            t.spans_failed, t.sink.rejected
        ));
    }
    if t.sink.spans < t.spans_exported {
        problems.push(format!(
            "the sink counted fewer spans ({}) than the daemon exported ({})",
            t.sink.spans, t.spans_exported
        ));
    }
    if t.log_files == 0 {
        problems.push("no request log was written".to_owned());
    }
    let _ = writeln!(
        o,
        "- Checks: {}; the traced daemon {}\n",
        if problems.is_empty() {
            "exports reached the sink, nothing was dropped or failed, the request log was written"
                .to_owned()
        } else {
            format!("**{}**", problems.join("; "))
        },
        t.stopped
    );
}

/// The panic window of a stable window written as `<n>s` or `<n>m` (`None`: the default 60 s).
fn panic_window(window: Option<&str>) -> Option<f64> {
    let w = window.unwrap_or("60s");
    let secs = if let Some(n) = w.strip_suffix('s') {
        n.parse::<f64>().ok()?
    } else if let Some(n) = w.strip_suffix('m') {
        n.parse::<f64>().ok()? * 60.0
    } else {
        return None;
    };
    Some(secs / 10.0)
}

fn burst_section(o: &mut String, b: &BurstResults) {
    let s = &b.settings;
    let needed = u64::from(s.needed());
    let _ = writeln!(o, "### Burst: {} → {} concurrent clients\n", s.from, s.to);
    let _ = writeln!(
        o,
        "- Service: skiff-test-server, `containerConcurrency: {}` (a hard limit: requests beyond it wait in skiff's activator), `autoscaling.knative.dev/target-utilization-percentage: \"{}\"`{}, otherwise Knative's defaults (initial scale 1, panic window 10% of the stable window{}, panic threshold 200%). {} clients need {} instances.",
        s.cc,
        s.utilization,
        match &s.window {
            Some(w) =>
                format!(", `autoscaling.knative.dev/window: \"{w}\"` (not the default 60 s)"),
            None => ", the default 60 s stable window".to_owned(),
        },
        panic_window(s.window.as_deref()).map_or(String::new(), |p| format!(", so {p:.1} s")),
        s.to,
        needed
    );
    let _ = writeln!(
        o,
        "- Load: closed-loop clients, each one request at a time on a keep-alive connection through the ingress, `GET /delay?ms={}`; {} clients for {:.0} s, then {} for {:.0} s. The scale API was read every 50 ms ({} readings).\n",
        s.delay_ms,
        s.from,
        s.before_s,
        s.to,
        s.after_s,
        b.samples.len()
    );
    let fmt_t = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:.2} s"));
    let t_enough = b.ready_at_least(needed);
    let _ = writeln!(
        o,
        "- From the step until ready ≥ {needed} (what the load needs): **{}**; until the autoscaler first wanted ≥ {needed}: {}; until ready first met what it wanted: {}",
        fmt_t(t_enough),
        fmt_t(b.desired_at_least(needed)),
        fmt_t(b.ready_meets_desired(needed))
    );
    let after_step: Vec<&crate::burst::ScaleSample> =
        b.samples.iter().filter(|x| x.t_s >= b.step_s).collect();
    let max_desired = after_step.iter().map(|x| x.desired).max().unwrap_or(0);
    let max_ready = after_step.iter().map(|x| x.ready).max().unwrap_or(0);
    let max_waiting = after_step.iter().map(|x| x.waiting).max().unwrap_or(0);
    let last = b.samples.last();
    let _ = writeln!(
        o,
        "- After the step the autoscaler wanted at most {max_desired} and at most {max_ready} were ready; at most {max_waiting} requests waited in the activator at a reading; at the end desired {}, ready {}",
        last.map_or(0, |x| x.desired),
        last.map_or(0, |x| x.ready)
    );
    let non2xx = b
        .reqs
        .iter()
        .filter(|r| r.status.is_some_and(|c| !(200..300).contains(&c)))
        .count();
    let errors = b.reqs.iter().filter(|r| r.status.is_none()).count();
    let _ = writeln!(
        o,
        "- Non-2xx answers: **{non2xx}** of {} requests (goal: 0: {}); requests without an answer (connection errors, 30 s timeouts): {errors}{}\n",
        b.reqs.len(),
        met(non2xx == 0 && errors == 0),
        if b.errors.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", b.errors.join("; "))
        }
    );
    let warm = (b.step_s / 10.0).min(2.0);
    let t_after = t_enough.map_or(b.end_s, |t| b.step_s + t);
    let phases = [
        (
            format!(
                "before: {} clients (from {:.1} s to the step, {:.1} s)",
                s.from,
                warm,
                b.step_s - warm
            ),
            warm,
            b.step_s,
        ),
        (
            format!("during: the step → ready ≥ {needed}"),
            b.step_s,
            t_after,
        ),
        (
            format!(
                "after: ready ≥ {needed} → the end ({:.0} s)",
                b.end_s - t_after
            ),
            t_after,
            b.end_s,
        ),
    ];
    let _ = writeln!(
        o,
        "| Phase (by when a request started) | requests | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | non-2xx | no answer |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for (name, from, to) in phases {
        let reqs: Vec<&crate::burst::Req> = b
            .reqs
            .iter()
            .filter(|r| r.start_s >= from && r.start_s < to)
            .collect();
        let mut lat: Vec<f64> = reqs.iter().map(|r| r.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        let bad = reqs
            .iter()
            .filter(|r| r.status.is_some_and(|c| !(200..300).contains(&c)))
            .count();
        let none = reqs.iter().filter(|r| r.status.is_none()).count();
        let _ = writeln!(
            o,
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {bad} | {none} |",
            reqs.len(),
            percentile(&lat, 50.0),
            percentile(&lat, 90.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Instance count (scale API readings where desired or ready changed; seconds from the step):\n"
    );
    let _ = writeln!(
        o,
        "| t (s) | desired | ready | waiting | in flight | panic | panic-window average | stable-window average |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    let mut prev: Option<(u64, u64)> = None;
    let mut rows = 0;
    let mut omitted = 0;
    for x in &b.samples {
        let changed = prev != Some((x.desired, x.ready));
        let at_step_edge = x.t_s < b.step_s;
        prev = Some((x.desired, x.ready));
        if !changed || (at_step_edge && rows > 0) {
            continue;
        }
        if rows >= 30 {
            omitted += 1;
            continue;
        }
        rows += 1;
        let _ = writeln!(
            o,
            "| {:+.2} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            x.t_s - b.step_s,
            x.desired,
            x.ready,
            x.waiting,
            x.in_flight,
            if x.panicking { "yes" } else { "no" },
            x.panic_average,
            x.stable_average
        );
    }
    let _ = writeln!(o);
    if omitted > 0 {
        let _ = writeln!(o, "({omitted} later changes omitted.)\n");
    }
    let mut decisions: Vec<String> = b
        .decisions
        .iter()
        .rev()
        .filter_map(|d| {
            let at: jiff::Timestamp = d["at"].as_str()?.parse().ok()?;
            let t = between(b.step_at, at) / 1000.0;
            (t >= -1.0).then(|| {
                format!(
                    "{:+.2} s → {} ({})",
                    t,
                    d["desired"].as_u64().unwrap_or(0),
                    d["reason"].as_str().unwrap_or_default()
                )
            })
        })
        .collect();
    decisions.truncate(12);
    if !decisions.is_empty() {
        let _ = writeln!(
            o,
            "The autoscaler's decisions from the step on (scale API, oldest first; seconds from the step → desired, reason): {}.\n",
            decisions.join("; ")
        );
    }
}

/// Every figure of the run as JSON.
pub fn raw_json(r: &Results) -> String {
    let cold = r.cold.as_ref().map(|c| {
        json!({
            "skiff": c.skiff.iter().map(|s| json!({
                "service": s.service,
                "sentAt": s.sent_at.to_string(),
                "connectMs": s.connect_ms,
                "ttfbMs": s.ttfb_ms,
                "fullMs": s.full_ms,
                "status": s.status,
                "coldStarts": s.cold_starts,
                "coldStartRequests": s.cold_start_requests,
                "routerColdMs": s.router_cold_ms,
                "instances": s.instances,
                "instance": s.instance,
                "startToReadyMs": s.start_to_ready_ms,
                "decidedAt": s.decided_at.map(|t| t.to_string()),
                "startingAt": s.starting_at.map(|t| t.to_string()),
                "servedAt": s.served_at.map(|t| t.to_string()),
                "goneMs": s.gone_ms,
            })).collect::<Vec<_>>(),
            "floor": c.floor.iter().map(|f| json!({
                "totalMs": f.total_ms,
                "mountMs": f.mount_ms,
                "specMs": f.spec_ms,
                "runcMs": f.runc_ms,
                "afterRuncMs": f.after_runc_ms,
                "attempts": f.attempts,
                "firstByteMs": f.response.as_ref().map(|x| x.first_byte_ms),
                "fullMs": f.response.as_ref().map(|x| x.full_ms),
                "status": f.response.as_ref().map(|x| x.status),
                "teardownMs": f.teardown_ms,
            })).collect::<Vec<_>>(),
            "problems": c.problems,
        })
    });
    let router = r.router.as_ref().map(|rt| {
        rt.runs
            .iter()
            .map(|w| {
                json!({
                    "case": w.case.name(),
                    "mode": w.mode.name(),
                    "rep": w.rep,
                    "requests": w.requests,
                    "durationS": w.duration_s,
                    "rps": w.rps,
                    "p50Us": w.p50_us,
                    "p90Us": w.p90_us,
                    "p99Us": w.p99_us,
                    "maxUs": w.max_us,
                    "meanUs": w.mean_us,
                    "socketErrors": w.socket_errors,
                    "badStatus": w.bad_status,
                    "proxyCpuMs": w.proxy_cpu_ms,
                    "backendCpuMs": w.backend_cpu_ms,
                })
            })
            .collect::<Vec<_>>()
    });
    let burst = r.burst.as_ref().map(|b| {
        json!({
            "stepS": b.step_s,
            "endS": b.end_s,
            "requests": b.reqs.iter().map(|q| json!([q.start_s, q.latency_ms, q.status])).collect::<Vec<_>>(),
            "scale": b.samples.iter().map(|x| json!({
                "t": x.t_s, "desired": x.desired, "ready": x.ready, "waiting": x.waiting,
                "inFlight": x.in_flight, "panicking": x.panicking,
                "panicAverage": x.panic_average, "stableAverage": x.stable_average,
            })).collect::<Vec<_>>(),
            "decisions": b.decisions,
            "errors": b.errors,
        })
    });
    let telemetry = r.router.as_ref().map(|rt| {
        let t = &rt.telemetry;
        json!({
            "traceRatio": rt.settings.trace_ratio,
            "commandLine": t.command_line,
            "sink": {
                "connections": t.sink.connections,
                "requests": t.sink.requests,
                "bytes": t.sink.bytes,
                "spans": t.sink.spans,
                "rejected": t.sink.rejected,
                "cpuMs": t.sink_cpu_ms,
            },
            "spansExported": t.spans_exported,
            "spansFailed": t.spans_failed,
            "sampled": t.sampled.iter().map(|(r, n)| (r.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "recordsDropped": t.records_dropped,
            "routerRequests": t.router_requests,
            "wrkRequests": t.wrk_requests,
            "requestLog": { "files": t.log_files, "bytes": t.log_bytes, "lines": t.log_lines },
        })
    });
    let events = r.events.as_ref().map(crate::report_events::raw);
    serde_json::to_string_pretty(&json!({
        "cold": cold,
        "router": router,
        "routerTelemetry": telemetry,
        "burst": burst,
        "events": events,
    }))
    .unwrap_or_default()
}
