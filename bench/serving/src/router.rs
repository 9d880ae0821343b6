//! Router: wrk against one instance of the backend (`GET /healthz`) four ways, in the same
//! run, interleaved, each repetition rotating the order:
//!
//! - **direct**: wrk inside the instance's network namespace (`nsenter --net`), straight to
//!   `127.0.0.1:8080`;
//! - **skiff**: wrk on the host, through the ingress of the run's daemon, which has request
//!   logs and traces off (`--request-logs false`, no OTLP endpoint), with the Service's `Host`;
//! - **skiff+telemetry**: the same through a second daemon with request logs on and traces
//!   exported to the run's OTLP sink ([`crate::otlp`]) at `parentbased_traceidratio`, to an
//!   instance of its own (same image, same Service but for its name);
//! - **nginx**: nginx started inside the first instance's network namespace, listening on
//!   `127.0.0.1:8081` and proxying to `127.0.0.1:8080` with an upstream keep-alive pool; wrk
//!   inside the namespace too.
//!
//! Latency at one connection (added latency = case − direct, per repetition), throughput at
//! many; medians over the repetitions. Each skiff case's CPU is its own daemon's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::bench::{Bench, PORT, Procs, progress};
use crate::daemon::Daemon;
use crate::http;
use crate::otlp::SinkCounts;

/// The port nginx listens on inside the instance's namespace.
pub const NGINX_PORT: u16 = 8081;
/// The path every case requests.
pub const PATH: &str = "/healthz";

/// How the router part runs.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub reps: usize,
    pub seconds: u64,
    pub warmup_seconds: u64,
    /// Latency runs: one thread, this many connections.
    pub latency_connections: usize,
    /// Throughput runs.
    pub throughput_threads: usize,
    pub throughput_connections: usize,
    /// nginx worker processes (skiff's tokio runtime has one worker per CPU).
    pub nginx_workers: usize,
    /// The traced daemon's `parentbased_traceidratio` ratio.
    pub trace_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Direct,
    /// Request logs and traces off.
    Skiff,
    /// Request logs and traces on (a second daemon).
    SkiffTelemetry,
    Nginx,
}

impl Case {
    pub const ALL: [Case; 4] = [Case::Direct, Case::Skiff, Case::SkiffTelemetry, Case::Nginx];
    pub fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::Skiff => "skiff",
            Case::SkiffTelemetry => "skiff+telemetry",
            Case::Nginx => "nginx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Latency,
    Throughput,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
        }
    }
}

/// One wrk run, as its Lua `done` hook reported it. Latencies in µs.
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub case: Case,
    pub mode: Mode,
    pub rep: usize,
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    /// Answers with a status ≥ 400.
    pub bad_status: u64,
    /// CPU time the proxy (skiff's daemon, or nginx's processes) and the backend (the
    /// instance's cgroup) used during the run, in ms.
    pub proxy_cpu_ms: Option<f64>,
    pub backend_cpu_ms: f64,
}

impl WrkRun {
    /// CPU per request in µs.
    pub fn proxy_us_per_request(&self) -> Option<f64> {
        self.proxy_cpu_ms
            .map(|ms| ms * 1000.0 / self.requests.max(1) as f64)
    }
    pub fn backend_us_per_request(&self) -> f64 {
        self.backend_cpu_ms * 1000.0 / self.requests.max(1) as f64
    }
}

/// The fields of a `stat` file (`/proc/PID/stat`, `/proc/PID/task/TID/stat`) after the
/// command name: state is index 0, ppid 1, utime 11, stime 12.
fn stat_file_fields(path: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    stat_file_fields(&format!("/proc/{pid}/stat"))
}

/// CPU time (user + system) in a `stat` file, in ms (a process's: all its threads').
pub fn stat_cpu_ms(path: &str) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    stat_file_fields(path).map_or(0.0, |f| {
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (n(11) + n(12)) * 1000.0 / ticks
    })
}

/// CPU time (user + system) a process has used, in ms.
fn process_cpu_ms(pid: u32) -> f64 {
    stat_cpu_ms(&format!("/proc/{pid}/stat"))
}

/// A process and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if stat_fields(p).and_then(|f| f.get(1).and_then(|v| v.parse::<u32>().ok()))
                == Some(pid)
            {
                pids.push(p);
            }
        }
    }
    pids
}

/// Where CPU time is read from around each run.
struct CpuMeters {
    /// The daemon without request telemetry, and the one with it.
    daemon: u32,
    telemetry_daemon: u32,
    nginx: Vec<u32>,
    /// The container cgroups of the instance behind direct, skiff and nginx, and of the
    /// traced daemon's instance.
    backend: String,
    telemetry_backend: String,
}

/// CPU ms used so far.
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    daemon: f64,
    telemetry_daemon: f64,
    nginx: f64,
    backend: f64,
    telemetry_backend: f64,
}

impl CpuMeters {
    fn read(&self) -> CpuReading {
        let cgroup = |c: &str| skiff_runtime::cgroups::usage(c).cpu_nanos as f64 / 1e6;
        CpuReading {
            daemon: process_cpu_ms(self.daemon),
            telemetry_daemon: process_cpu_ms(self.telemetry_daemon),
            nginx: self.nginx.iter().map(|p| process_cpu_ms(*p)).sum(),
            backend: cgroup(&self.backend),
            telemetry_backend: cgroup(&self.telemetry_backend),
        }
    }
}

/// What the traced daemon and the sink show after the router part.
#[derive(Debug, Clone)]
pub struct TelemetryResults {
    /// The traced daemon's command line (`DATA` for its data directory, `SINK` for the
    /// sink's URL).
    pub command_line: String,
    /// What the sink received, read after the daemon stopped (so with the spans its
    /// shutdown flushed).
    pub sink: SinkCounts,
    /// CPU the sink's thread used over the whole router part, in ms.
    pub sink_cpu_ms: f64,
    /// The daemon's `/metrics`, read after the last run, before its shutdown.
    pub spans_exported: u64,
    pub spans_failed: u64,
    /// `skiff_trace_requests_sampled_total` by `reason`, and summed.
    pub sampled: Vec<(String, u64)>,
    pub sampled_total: u64,
    pub records_dropped: u64,
    /// `skiff_router_requests_total`, summed over its labels.
    pub router_requests: u64,
    /// Requests wrk completed through the traced daemon (warmup included), and the checks'.
    pub wrk_requests: u64,
    /// The Service's request log files (`…requests.log*`, rotated ones too) after the
    /// daemon stopped: count, bytes and lines.
    pub log_files: usize,
    pub log_bytes: u64,
    pub log_lines: u64,
    /// How the daemon stopped.
    pub stopped: String,
}

/// What the router part measured.
#[derive(Debug, Clone)]
pub struct RouterResults {
    pub settings: RouterSettings,
    /// The server behind every case.
    pub backend: String,
    pub runs: Vec<WrkRun>,
    pub instance: String,
    pub telemetry_instance: String,
    pub nginx_version: String,
    pub telemetry: TelemetryResults,
    pub total_s: f64,
}

pub const LUA: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SERVING_BENCH {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.3f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"#;

fn manifest(name: &str, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "template": {
            "metadata": { "annotations": {
                "autoscaling.knative.dev/min-scale": "1",
                "autoscaling.knative.dev/max-scale": "1",
            }},
            "spec": {
                "timeoutSeconds": 30,
                "containers": [{
                    "image": image,
                    "ports": [{ "containerPort": PORT }],
                }],
            },
        }},
    })
}

/// nginx's `user`: Debian's `www-data` when it exists (nginx's default, `nobody`, has no group
/// of that name on Debian).
fn nginx_user() -> &'static str {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if passwd.lines().any(|l| l.starts_with("www-data:")) {
        "www-data"
    } else {
        "root"
    }
}

fn nginx_conf(dir: &Path, workers: usize) -> String {
    let d = dir.display();
    let nginx_v = std::process::Command::new("nginx")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let mut temp = format!(
        "    client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n    fastcgi_temp_path {d}/tmp/fastcgi;\n"
    );
    if !nginx_v.contains("--without-http_uwsgi_module") {
        temp.push_str(&format!("    uwsgi_temp_path {d}/tmp/uwsgi;\n"));
    }
    if !nginx_v.contains("--without-http_scgi_module") {
        temp.push_str(&format!("    scgi_temp_path {d}/tmp/scgi;\n"));
    }
    format!(
        "# serving-bench: a reverse proxy inside the instance's network namespace.
user {user};
worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp}    upstream instance {{
        server 127.0.0.1:{PORT};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        location / {{
            proxy_pass http://instance;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
",
        user = nginx_user(),
    )
}

/// One GET through a socket made inside `netns` to `port`; the status.
async fn get_in_netns(b: &Bench, netns: &Path, port: u16) -> anyhow::Result<u16> {
    let ns: std::os::fd::OwnedFd = std::fs::File::open(netns)
        .with_context(|| format!("opening {}", netns.display()))?
        .into();
    let stream = b
        .connector
        .connect(std::sync::Arc::new(ns), port)
        .await
        .with_context(|| format!("connecting to port {port} in {}", netns.display()))?;
    let mut c = http::Conn::new(stream);
    c.send(&http::get("localhost", PATH, true)).await?;
    Ok(c.answer().await?.status)
}

async fn start_nginx(b: &Bench, netns: &Path, workers: usize) -> anyhow::Result<()> {
    let dir = b.work.join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).context("creating nginx's directory")?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, workers)).context("writing nginx.conf")?;
    let prefix = format!("{}/", dir.display());
    let check = Command::new("nginx")
        .args(["-t", "-q", "-p", &prefix, "-c"])
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running nginx -t")?;
    if !check.status.success() {
        bail!(
            "nginx refuses the configuration {}: {}",
            conf.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let out = std::fs::File::create(dir.join("stdout.log")).context("nginx's output")?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "nginx", "-p", &prefix, "-c"])
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().context("nginx's output")?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx (nsenter --net=… nginx)")?;
    *b.procs.nginx.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(200) = get_in_netns(b, netns, NGINX_PORT).await {
            return Ok(());
        }
        let exited = b
            .procs
            .nginx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            bail!(
                "nginx exited ({status}): {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("nginx does not answer 200 on {PATH} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops nginx if it runs (SIGTERM: fast shutdown).
pub async fn stop_nginx(procs: &Procs) -> Option<String> {
    let child = Procs::take(&procs.nginx)?;
    Some(
        crate::daemon::stop_child(
            child,
            rustix::process::Signal::TERM,
            Duration::from_secs(10),
        )
        .await,
    )
}

struct Target<'a> {
    cpu: CpuMeters,
    netns: &'a Path,
    /// The Host header and the ingress of each skiff case.
    host: String,
    ingress: std::net::SocketAddr,
    telemetry_host: String,
    telemetry_ingress: std::net::SocketAddr,
    lua: PathBuf,
    logs: PathBuf,
}

async fn wrk(
    t: &Target<'_>,
    case: Case,
    threads: usize,
    connections: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<WrkRun> {
    let mut cmd = match case {
        Case::Skiff | Case::SkiffTelemetry => Command::new("wrk"),
        Case::Direct | Case::Nginx => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", t.netns.display()))
                .args(["--", "wrk"]);
            c
        }
    };
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "5s", "--latency", "-s"])
        .arg(&t.lua);
    match case {
        Case::Direct => cmd.arg(format!("http://127.0.0.1:{PORT}{PATH}")),
        Case::Nginx => cmd.arg(format!("http://127.0.0.1:{NGINX_PORT}{PATH}")),
        Case::Skiff => cmd
            .args(["-H", &format!("Host: {}", t.host)])
            .arg(format!("http://{}{PATH}", t.ingress)),
        Case::SkiffTelemetry => cmd
            .args(["-H", &format!("Host: {}", t.telemetry_host)])
            .arg(format!("http://{}{PATH}", t.telemetry_ingress)),
    };
    cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    let before = t.cpu.read();
    let out = cmd.output().await.context("running wrk")?;
    let after = t.cpu.read();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::write(
        t.logs.join(format!("{label}-{}.txt", case.name())),
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    );
    if !out.status.success() {
        bail!(
            "wrk ({}) failed ({}): {}{}",
            case.name(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SERVING_BENCH "))
        .with_context(|| format!("wrk printed no SERVING_BENCH line:\n{stdout}"))?;
    let v: serde_json::Value = serde_json::from_str(line).context("wrk's report line")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let duration_s = f("duration_us") / 1e6;
    Ok(WrkRun {
        case,
        mode: Mode::Latency,
        rep: 0,
        requests: n("requests"),
        duration_s,
        rps: f("requests") / duration_s,
        p50_us: f("p50"),
        p90_us: f("p90"),
        p99_us: f("p99"),
        max_us: f("max"),
        mean_us: f("mean"),
        socket_errors: n("connect") + n("read") + n("write") + n("timeout"),
        bad_status: n("status"),
        proxy_cpu_ms: match case {
            Case::Direct => None,
            Case::Skiff => Some(after.daemon - before.daemon),
            Case::SkiffTelemetry => Some(after.telemetry_daemon - before.telemetry_daemon),
            Case::Nginx => Some(after.nginx - before.nginx),
        },
        backend_cpu_ms: match case {
            Case::SkiffTelemetry => after.telemetry_backend - before.telemetry_backend,
            Case::Direct | Case::Skiff | Case::Nginx => after.backend - before.backend,
        },
    })
}

/// Applies the router Service on `daemon` and waits for its one instance; checks that it
/// answers 200 through the ingress. Returns the instance's id.
async fn deploy(b: &Bench, daemon: &Daemon, name: &str) -> anyhow::Result<String> {
    daemon
        .apply(&manifest(name, &b.router_backend.reference))
        .await?;
    let ids = daemon.wait_ready(name, 1, Duration::from_secs(60)).await?;
    let mut c = http::Conn::new(TcpStream::connect(daemon.ingress).await?);
    c.send(&http::get(&b.host(name), PATH, true)).await?;
    let through = c.answer().await?.status;
    anyhow::ensure!(
        through == 200,
        "{PATH} answered {through} through the ingress of the daemon at {}",
        daemon.api
    );
    Ok(ids[0].clone())
}

/// Sum of the samples of metric `name` in an OpenMetrics text whose labels contain `label`
/// (`""`: all of them).
pub fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>() as u64
}

/// The values of label `key` in the samples of metric `name`.
fn label_values(text: &str, name: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let at = rest.find(&format!("{key}=\""))? + key.len() + 2;
            Some(rest[at..].split('"').next()?.to_owned())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The request logs (`*.requests.log*`) below `dir`: files, bytes, lines.
fn request_logs(dir: &Path) -> (usize, u64, u64) {
    let mut found = (0, 0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            let (f, b, l) = request_logs(&path);
            found = (found.0 + f, found.1 + b, found.2 + l);
        } else if e.file_name().to_string_lossy().contains(".requests.log") {
            let bytes = std::fs::read(&path).unwrap_or_default();
            found.0 += 1;
            found.1 += bytes.len() as u64;
            found.2 += bytes.iter().filter(|&&c| c == b'\n').count() as u64;
        }
    }
    found
}

/// Stops the traced daemon (SIGTERM: it writes what is pending and flushes its exporter).
pub async fn stop_telemetry_daemon(procs: &Procs) -> Option<String> {
    let child = Procs::take(&procs.telemetry_daemon)?;
    Some(
        crate::daemon::stop_child(
            child,
            rustix::process::Signal::TERM,
            crate::daemon::STOP_TIMEOUT,
        )
        .await,
    )
}

pub async fn run(b: &Bench, s: &RouterSettings) -> anyhow::Result<RouterResults> {
    let started = Instant::now();
    let tel = b
        .telemetry
        .as_ref()
        .context("the traced daemon was not started")?;
    // The same length for both names, so the two Host headers are the same size.
    let name = b.service("router-off");
    let tel_name = b.service("router-tel");
    progress(format!(
        "router: Service {name} on the daemon without request telemetry and {tel_name} on the traced one ({}, min-scale = max-scale = 1)",
        b.router_backend_name
    ));
    let instance = deploy(b, &b.daemon, &name).await?;
    let telemetry_instance = deploy(b, &tel.daemon, &tel_name).await?;
    let netns = b.daemon.instance_dir(&instance).join("netns");
    anyhow::ensure!(
        netns.exists(),
        "the instance's network namespace is not at {}",
        netns.display()
    );
    // Each way answers before anything is timed.
    let direct = get_in_netns(b, &netns, PORT).await?;
    anyhow::ensure!(direct == 200, "{PATH} answered {direct} directly");
    start_nginx(b, &netns, s.nginx_workers).await?;
    let nginx_version = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_owned()
        })
        .unwrap_or_default();

    let logs = b.work.join("wrk");
    std::fs::create_dir_all(&logs).context("creating the wrk output dir")?;
    let lua = logs.join("report.lua");
    std::fs::write(&lua, LUA).context("writing the wrk script")?;
    let nginx_pid = b
        .procs
        .nginx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|c| c.id())
        .context("nginx has no pid")?;
    let target = Target {
        cpu: CpuMeters {
            daemon: b.daemon.pid,
            telemetry_daemon: tel.daemon.pid,
            nginx: with_children(nginx_pid),
            backend: skiff_runtime::instance::cgroup_path(&instance, 0),
            telemetry_backend: skiff_runtime::instance::cgroup_path(&telemetry_instance, 0),
        },
        netns: &netns,
        host: b.host(&name),
        ingress: b.daemon.ingress,
        telemetry_host: b.host(&tel_name),
        telemetry_ingress: tel.daemon.ingress,
        lua,
        logs,
    };
    let sink_cpu_before = tel.sink.cpu_ms();
    // The check request of `deploy`.
    let mut wrk_requests = 1;

    progress(format!("router: warmup, {} s per case", s.warmup_seconds));
    for case in Case::ALL {
        let w = wrk(
            &target,
            case,
            s.throughput_threads,
            s.throughput_connections,
            s.warmup_seconds,
            "warmup",
        )
        .await?;
        anyhow::ensure!(
            w.requests > 0 && w.socket_errors == 0 && w.bad_status == 0,
            "warmup of {}: {} requests, {} socket errors, {} bad statuses",
            case.name(),
            w.requests,
            w.socket_errors,
            w.bad_status
        );
        if case == Case::SkiffTelemetry {
            wrk_requests += w.requests;
        }
    }
    let mut runs = Vec::new();
    for rep in 0..s.reps {
        for mode in [Mode::Latency, Mode::Throughput] {
            let (threads, connections) = match mode {
                Mode::Latency => (1, s.latency_connections),
                Mode::Throughput => (s.throughput_threads, s.throughput_connections),
            };
            let mut line = Vec::new();
            for k in 0..Case::ALL.len() {
                let case = Case::ALL[(rep + k) % Case::ALL.len()];
                let mut r = wrk(
                    &target,
                    case,
                    threads,
                    connections,
                    s.seconds,
                    &format!("rep{rep}-{}", mode.name()),
                )
                .await?;
                r.mode = mode;
                r.rep = rep;
                line.push(format!(
                    "{} {:.0} req/s p50 {:.0} µs p99 {:.0} µs",
                    case.name(),
                    r.rps,
                    r.p50_us,
                    r.p99_us
                ));
                if case == Case::SkiffTelemetry {
                    wrk_requests += r.requests;
                }
                runs.push(r);
            }
            progress(format!(
                "router rep {}/{} {}: {}",
                rep + 1,
                s.reps,
                mode.name(),
                line.join("; ")
            ));
        }
    }

    if let Some(how) = stop_nginx(&b.procs).await {
        progress(format!("nginx: {how}"));
    }
    // The traced daemon's counters, then its shutdown (which flushes the exporter and the
    // request log), then what reached the sink and the disk.
    let metrics = tel
        .daemon
        .metrics()
        .await
        .context("the traced daemon's /metrics")?;
    let sampled: Vec<(String, u64)> =
        label_values(&metrics, "skiff_trace_requests_sampled_total", "reason")
            .into_iter()
            .map(|r| {
                let n = metric_sum(
                    &metrics,
                    "skiff_trace_requests_sampled_total",
                    &format!("reason=\"{r}\""),
                );
                (r, n)
            })
            .collect();
    let tel_ids = vec![telemetry_instance.clone()];
    tel.daemon.delete(&tel_name).await?;
    tel.daemon
        .wait_gone(&tel_ids, Duration::from_secs(60))
        .await?;
    let stopped = stop_telemetry_daemon(&b.procs)
        .await
        .unwrap_or_else(|| "had been stopped already".into());
    progress(format!("traced daemon: {stopped}"));
    let (log_files, log_bytes, log_lines) = request_logs(&tel.daemon.data_dir.join("logs"));
    let telemetry = TelemetryResults {
        command_line: tel.daemon.command_line.clone(),
        sink: tel.sink.counts(),
        sink_cpu_ms: tel.sink.cpu_ms() - sink_cpu_before,
        spans_exported: metric_sum(&metrics, "skiff_trace_spans_exported_total", ""),
        spans_failed: metric_sum(&metrics, "skiff_trace_spans_export_failed_total", ""),
        sampled_total: sampled.iter().map(|(_, n)| n).sum(),
        sampled,
        records_dropped: metric_sum(&metrics, "skiff_request_records_dropped_total", ""),
        router_requests: metric_sum(&metrics, "skiff_router_requests_total", ""),
        wrk_requests,
        log_files,
        log_bytes,
        log_lines,
        stopped,
    };
    progress(format!(
        "OTLP sink: {} POSTs, {} bytes, {} spans; the daemon counted {} spans exported, {} requests sampled, {} records dropped; request logs {} bytes, {} lines",
        telemetry.sink.requests,
        telemetry.sink.bytes,
        telemetry.sink.spans,
        telemetry.spans_exported,
        telemetry.sampled_total,
        telemetry.records_dropped,
        telemetry.log_bytes,
        telemetry.log_lines
    ));

    let ids = vec![instance.clone()];
    b.daemon.delete(&name).await?;
    b.daemon.wait_gone(&ids, Duration::from_secs(60)).await?;
    Ok(RouterResults {
        settings: s.clone(),
        backend: b.router_backend_name.clone(),
        runs,
        instance,
        telemetry_instance,
        nginx_version,
        telemetry,
        total_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP skiff_trace_requests_sampled Requests whose traces were kept
# TYPE skiff_trace_requests_sampled counter
skiff_trace_requests_sampled_total{namespace="default",service="a",revision="a-00001",reason="head"} 40
skiff_trace_requests_sampled_total{namespace="default",service="a",revision="a-00001",reason="cold_start"} 1
skiff_trace_requests_sampled_total{namespace="default",service="b",revision="b-00001",reason="head"} 2
skiff_trace_spans_exported_total 129
skiff_router_requests_total{namespace="default",service="a",code="200"} 400
skiff_router_requests_total{namespace="default",service="a",code="404"} 3
# EOF
"#;

    #[test]
    fn sums_metrics_by_label() {
        assert_eq!(
            metric_sum(METRICS, "skiff_trace_spans_exported_total", ""),
            129
        );
        assert_eq!(metric_sum(METRICS, "skiff_router_requests_total", ""), 403);
        assert_eq!(
            metric_sum(
                METRICS,
                "skiff_trace_requests_sampled_total",
                "reason=\"head\""
            ),
            42
        );
        assert_eq!(
            metric_sum(METRICS, "skiff_request_records_dropped_total", ""),
            0
        );
        assert_eq!(
            label_values(METRICS, "skiff_trace_requests_sampled_total", "reason"),
            ["cold_start", "head"]
        );
    }
}
