//! The Markdown section for BENCHMARKS.md.

use std::fmt::Write;

use skiff_bench_runtime::floor::FloorSample;
use skiff_bench_runtime::machine::Machine;
use skiff_bench_runtime::stats::{Summary, median, summarize};

use crate::skiff_case::SkiffSample;

pub struct Report<'a> {
    pub invocation: &'a str,
    pub date: String,
    pub machine: &'a Machine,
    pub load_before: String,
    pub load_after: String,
    pub image_layers: usize,
    pub image_size: u64,
    pub runs: usize,
    pub warmup: usize,
    pub total_s: f64,
    pub watch_port: bool,
    pub skiff: &'a [SkiffSample],
    pub floor: &'a [FloorSample],
}

fn row(out: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.p50, s.p90, s.p99, s.min, s.max, s.mean
    );
}

fn col<T>(xs: &[T], f: impl Fn(&T) -> f64) -> Vec<f64> {
    xs.iter().map(f).collect()
}

pub fn markdown(r: &Report<'_>) -> String {
    let m = r.machine;
    let runtime = summarize(&col(r.skiff, |s| s.runtime_ms));
    let wall = summarize(&col(r.skiff, |s| s.wall_ms));
    let floor = summarize(&col(r.floor, |s| s.total_ms));
    let diff = summarize(&col(r.skiff, |s| s.wall_ms - s.runtime_ms));
    let returned = median(&col(r.skiff, |s| s.start_returned_ms));

    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Instance start to ready: skiff vs bare runc ({})\n",
        r.date
    );
    let _ = writeln!(o, "```\n{}\n```\n", r.invocation);
    if r.runs < 50 {
        let _ = writeln!(
            o,
            "> **Smoke run**: fewer than 50 runs per case, so p99 means little. Not for BENCHMARKS.md.\n"
        );
    }
    if r.watch_port {
        let _ = writeln!(
            o,
            "> **Diagnostic run** (`--watch-port`): a second poller connects to skiff's instance every 1 ms while it starts, which adds load. Not for BENCHMARKS.md.\n"
        );
    }
    let _ = writeln!(
        o,
        "- Machine: Linux {}, {} × {}, {:.1} GiB RAM, work dir on {}; load average (1/5/15 min) {} before, {} after",
        m.kernel, m.cpu_model, m.cpus, m.mem_gib, m.fs, r.load_before, r.load_after
    );
    let _ = writeln!(
        o,
        "- Versions: skiff {}; runc {}",
        env!("CARGO_PKG_VERSION"),
        m.runc
    );
    let _ = writeln!(
        o,
        "- Image: busybox httpd from `skiff-test-utils` ({} gzip layers, {:.0} KiB compressed), `/bin/sh -c 'exec httpd -f -p \"${{PORT:-8080}}\" -h /www'`, imported once into skiff's content store; both cases mount its unpacked layers as the overlay's lower dirs",
        r.image_layers,
        r.image_size as f64 / 1024.0
    );
    let _ = writeln!(
        o,
        "- {} runs per case, interleaved A, B, A, B, … after {} unmeasured warmup pair(s); the whole run took {:.1} s\n",
        r.runs, r.warmup, r.total_s
    );
    let _ = writeln!(o, "| Case (ms) | p50 | p90 | p99 | min | max | mean |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    row(
        &mut o,
        "A. skiff, wall clock: `start()` called → `ready` observed",
        &wall,
    );
    row(
        &mut o,
        "A. skiff, the runtime's own `start_to_ready_ms`",
        &runtime,
    );
    row(
        &mut o,
        "B. floor: overlay mount → first accepted connection (bare runc)",
        &floor,
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Percentiles interpolate linearly between the closest ranks; with {} runs p99 lies between the two largest values.\n",
        r.runs
    );
    let _ = writeln!(
        o,
        "- skiff / floor at p50: {:.1} / {:.1} = **{:.2}** (wall clock); {:.1} / {:.1} = {:.2} (runtime's figure)",
        wall.p50,
        floor.p50,
        wall.p50 / floor.p50,
        runtime.p50,
        floor.p50,
        runtime.p50 / floor.p50
    );
    let _ = writeln!(
        o,
        "- skiff / floor at p99: {:.1} / {:.1} = **{:.2}** (wall clock); {:.1} / {:.1} = {:.2} (runtime's figure)",
        wall.p99,
        floor.p99,
        wall.p99 / floor.p99,
        runtime.p99,
        floor.p99,
        runtime.p99 / floor.p99
    );
    let _ = writeln!(
        o,
        "- Wall clock minus the runtime's figure: median {:.2} ms (min {:.2}, max {:.2}). The runtime starts its clock inside `start()` once the instance directory, network namespace and `/etc` files exist (`start()` itself takes a median {:.2} ms), so its figure leaves those out; the rest is the hop from the runtime's status update to the observer.\n",
        diff.p50, diff.min, diff.max, returned
    );

    let _ = writeln!(
        o,
        "Where the time goes (median of each phase in ms; medians of parts do not add up to the median of the whole):\n"
    );
    let _ = writeln!(o, "| Phase | A. skiff | B. floor |");
    let _ = writeln!(o, "|---|---|---|");
    let _ = writeln!(
        o,
        "| instance dir, network namespace (unshare, `lo` up, pinned by a bind mount), `/etc` files: `start()` returns | {:.2} | — (runc makes the namespace during `runc run -d`) |",
        returned
    );
    let _ = writeln!(
        o,
        "| fresh dirs, overlay mount, (skiff: user lookup,) spec, `config.json`, (skiff: log FIFOs) | {:.2} | {:.2} + {:.2} |",
        median(&col(r.skiff, |s| s.before_runc_ms)),
        median(&col(r.floor, |s| s.mount_ms)),
        median(&col(r.floor, |s| s.spec_ms)),
    );
    let _ = writeln!(
        o,
        "| `runc run -d` | {:.2} | {:.2} |",
        median(&col(r.skiff, |s| s.runc_ms)),
        median(&col(r.floor, |s| s.runc_ms)),
    );
    if r.watch_port {
        let open: Vec<f64> = r
            .skiff
            .iter()
            .filter_map(|s| s.port_open_after_runc_ms)
            .collect();
        let lag: Vec<f64> = r
            .skiff
            .iter()
            .filter_map(|s| s.port_open_after_runc_ms.map(|p| s.after_runc_ms - p))
            .collect();
        let _ = writeln!(
            o,
            "| `runc run -d` returned → port accepts (1 ms poller) | {:.2} | {:.2} |",
            median(&open),
            median(&col(r.floor, |s| s.after_runc_ms)),
        );
        let lag_s = summarize(&lag);
        let _ = writeln!(
            o,
            "| port accepts → skiff's `ready` observed | {:.2} (p90 {:.2}, max {:.2}) | — |",
            lag_s.p50, lag_s.p90, lag_s.max
        );
    } else {
        let _ = writeln!(
            o,
            "| `runc run -d` returned → `ready` observed / first accepted connection | {:.2} | {:.2} (median attempts: {:.0}) |",
            median(&col(r.skiff, |s| s.after_runc_ms)),
            median(&col(r.floor, |s| s.after_runc_ms)),
            median(&col(r.floor, |s| f64::from(s.attempts))),
        );
    }
    let _ = writeln!(
        o,
        "| (not timed) stop and teardown | {:.1} (`stop()`, {} ms grace) | {:.1} |",
        median(&col(r.skiff, |s| s.stop_ms)),
        crate::ctx::STOP_GRACE.as_millis(),
        median(&col(r.floor, |s| s.teardown_ms)),
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "What each case does:\n");
    let _ = writeln!(
        o,
        "- **A. skiff**: `Runtime::start` (skiff-runtime, in-process, runc driver) of an instance with one container: 64 MiB memory limit, pids limit 1024, default capabilities, seccomp profile, TCP readiness probe on 8080. `start()` makes the instance directory, a network namespace pinned in it and the `/etc` files; the container task mounts a fresh overlay (upper/work) over the image's layers, resolves the user, writes `config.json` (joining the pinned namespace), makes the log FIFOs and runs `runc run -d`; the readiness task connects to 127.0.0.1:8080 inside the namespace every millisecond (tokio's timer makes that ~2 ms) until the first success, and once more when the container is seen running. Timed: the runtime's `start_to_ready_ms`, and the wall clock from calling `start()` to seeing `ready` on the instance's status channel. Then (not timed) `stop()`, awaited until the instance is gone (container deleted, mounts, namespace, cgroup and directory removed). `runc run -d` is timed through a wrapper around skiff's own runc driver."
    );
    let _ = writeln!(
        o,
        "- **B. floor**: the same image layers and the same `config.json` (skiff's `spec::build` with the same settings), except that runc creates the network namespace itself; no skiff code runs but the overlay mount helper. Timed from just before the fresh dirs and overlay mount to the first accepted TCP connection: spec written, `runc run -d` (stdout/stderr to a file), pid file read, `/proc/PID/ns/net` opened, then a connect to 127.0.0.1:8080 inside that namespace (skiff's setns connector) every 1 ms (slept on a blocking thread: tokio's `sleep(1 ms)` takes ~2.1 ms) until one is accepted. Then (not timed) `runc kill KILL`, reap, `runc delete --force`, unmount."
    );
    let _ = writeln!(
        o,
        "- Every container, mount, namespace and cgroup either case made is checked gone at the end (`runc list` of both roots, `/proc/self/mountinfo`, `/sys/fs/cgroup/*/skiff`)."
    );
    o
}
