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
    let _ = writeln!(o, "## Serving: cold start, router, burst ({})\n", r.date);
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
    let _ = writeln!(
        o,
        "- Versions: {} ({}), release build; runc {}; {}; nginx {}; {}",
        v.skiff, v.git, m.runc, v.wrk, v.nginx, v.busybox
    );
    let _ = writeln!(
        o,
        "- Daemon: `{}` with its own data directory (`DATA`), the API and the ingress on free loopback ports; the benchmark's clients, wrk and nginx run on the same {} cores",
        r.daemon_command, m.cpus
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
    let _ = writeln!(
        o,
        "Everything the run started (daemon, nginx, containers, mounts, cgroups, the working directory) was checked gone at the end: `runc list` of the daemon's and the floor's runc roots, `/proc/self/mountinfo`, `/sys/fs/cgroup/*/skiff/<prefix>-*`."
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
    if c.problems.is_empty() {
        let _ = writeln!(
            o,
            "- Checked: {n}/{n} skiff answers were 200, and after each one the Service's scale API (`GET …/services/{{name}}/scale`) showed exactly one cold start, one request that waited through it, and one instance; {n}/{n} floor answers were 200."
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
        "### Router: added latency and throughput, skiff vs nginx vs direct\n"
    );
    let _ = writeln!(
        o,
        "- Backend: one instance of {} from a Service with `min-scale` = `max-scale` = 1; every request is `GET /healthz`.",
        rt.backend
    );
    let _ = writeln!(
        o,
        "- **direct**: wrk inside the instance's network namespace (`nsenter --net=DATA/run/instances/<id>/netns`) → `127.0.0.1:8080`. **skiff**: wrk on the host → skiff's ingress with `Host: <service>.default.localhost` → the router's pooled connections into the namespace. **nginx** ({}): started inside the same namespace (`worker_processes {}`, as many as skiff's router threads, `--router-threads`), `listen 127.0.0.1:8081`, `proxy_pass` to an upstream `127.0.0.1:8080` with `keepalive 64`, `proxy_http_version 1.1`, `Host`, `X-Forwarded-For` and `X-Forwarded-Proto` set (skiff adds `X-Forwarded-*`, `Forwarded`, `X-Request-Id` and `traceparent`); wrk in the namespace too.",
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
        "CPU per request is from the throughput runs: the CPU time (user + system) skiff's daemon process or nginx's master and workers (`/proc/PID/stat`), and the instance's cgroup (`cpuacct.usage`), used during the run, divided by the requests wrk completed. wrk's own CPU is not counted.\n"
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
    for case in [Case::Skiff, Case::Nginx] {
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
    let skiff_rps = med(&of(Case::Skiff, Mode::Throughput), |r| r.rps);
    let nginx_rps = med(&of(Case::Nginx, Mode::Throughput), |r| r.rps);
    let direct_rps = med(&of(Case::Direct, Mode::Throughput), |r| r.rps);
    let _ = writeln!(
        o,
        "- Goal, skiff's added p50 ≤ 0.1 ms: {} ({:.3} ms)",
        met(skiff_added <= 100.0),
        skiff_added / 1000.0
    );
    let _ = writeln!(
        o,
        "- Goal, skiff's throughput ≥ nginx's: {} ({:.0} / {:.0} req/s = {:.2}; direct {:.0} req/s, skiff reaches {:.0}% of it, nginx {:.0}%)",
        met(skiff_rps >= nginx_rps),
        skiff_rps,
        nginx_rps,
        skiff_rps / nginx_rps,
        direct_rps,
        100.0 * skiff_rps / direct_rps,
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
    serde_json::to_string_pretty(&json!({ "cold": cold, "router": router, "burst": burst }))
        .unwrap_or_default()
}
