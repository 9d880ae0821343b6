//! Router: wrk against one instance of skiff-test-server (`GET /healthz`) three ways, in the
//! same run, interleaved, each repetition rotating the order:
//!
//! - **direct**: wrk inside the instance's network namespace (`nsenter --net`), straight to
//!   `127.0.0.1:8080`;
//! - **skiff**: wrk on the host, through skiff's ingress with the Service's `Host`;
//! - **nginx**: nginx started inside the instance's network namespace, listening on
//!   `127.0.0.1:8081` and proxying to `127.0.0.1:8080` with an upstream keep-alive pool; wrk
//!   inside the namespace too.
//!
//! Latency at one connection (added latency = case − direct, per repetition), throughput at
//! many; medians over the repetitions.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::bench::{Bench, PORT, Procs, progress};
use crate::http;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Direct,
    Skiff,
    Nginx,
}

impl Case {
    pub const ALL: [Case; 3] = [Case::Direct, Case::Skiff, Case::Nginx];
    pub fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::Skiff => "skiff",
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

/// `/proc/PID/stat` fields after the command name: state is index 0, ppid 1, utime 11,
/// stime 12.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system) a process has used, in ms.
fn process_cpu_ms(pid: u32) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    stat_fields(pid).map_or(0.0, |f| {
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (n(11) + n(12)) * 1000.0 / ticks
    })
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
    daemon: u32,
    nginx: Vec<u32>,
    /// The instance's container cgroup.
    backend: String,
}

impl CpuMeters {
    /// (daemon, nginx, backend) CPU ms so far.
    fn read(&self) -> (f64, f64, f64) {
        (
            process_cpu_ms(self.daemon),
            self.nginx.iter().map(|p| process_cpu_ms(*p)).sum(),
            skiff_runtime::cgroups::usage(&self.backend).cpu_nanos as f64 / 1e6,
        )
    }
}

/// What the router part measured.
#[derive(Debug, Clone)]
pub struct RouterResults {
    pub settings: RouterSettings,
    /// The server behind every case.
    pub backend: String,
    pub runs: Vec<WrkRun>,
    pub instance: String,
    pub nginx_version: String,
    pub total_s: f64,
}

const LUA: &str = r#"done = function(summary, latency, requests)
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
    host: String,
    ingress: std::net::SocketAddr,
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
        Case::Skiff => Command::new("wrk"),
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
            Case::Skiff => Some(after.0 - before.0),
            Case::Nginx => Some(after.1 - before.1),
        },
        backend_cpu_ms: after.2 - before.2,
    })
}

pub async fn run(b: &Bench, s: &RouterSettings) -> anyhow::Result<RouterResults> {
    let started = Instant::now();
    let name = b.service("router");
    progress(format!(
        "router: Service {name} ({}, min-scale = max-scale = 1)",
        b.router_backend_name
    ));
    b.daemon
        .apply(&manifest(&name, &b.router_backend.reference))
        .await?;
    let ids = b
        .daemon
        .wait_ready(&name, 1, Duration::from_secs(60))
        .await?;
    let instance = ids[0].clone();
    let netns = b.daemon.instance_dir(&instance).join("netns");
    anyhow::ensure!(
        netns.exists(),
        "the instance's network namespace is not at {}",
        netns.display()
    );
    // Each way answers before anything is timed.
    let mut c = http::Conn::new(TcpStream::connect(b.daemon.ingress).await?);
    c.send(&http::get(&b.host(&name), PATH, true)).await?;
    let through = c.answer().await?.status;
    let direct = get_in_netns(b, &netns, PORT).await?;
    anyhow::ensure!(
        through == 200 && direct == 200,
        "{PATH} answered {through} through skiff and {direct} directly"
    );
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
            nginx: with_children(nginx_pid),
            backend: skiff_runtime::instance::cgroup_path(&instance, 0),
        },
        netns: &netns,
        host: b.host(&name),
        ingress: b.daemon.ingress,
        lua,
        logs,
    };

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
    b.daemon.delete(&name).await?;
    b.daemon.wait_gone(&ids, Duration::from_secs(60)).await?;
    Ok(RouterResults {
        settings: s.clone(),
        backend: b.router_backend_name.clone(),
        runs,
        instance,
        nginx_version,
        total_s: started.elapsed().as_secs_f64(),
    })
}
