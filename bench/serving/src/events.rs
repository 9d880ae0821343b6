//! Events: what a Broker accepts per second and what its dispatcher delivers, beside posting
//! the same requests straight to the subscriber, from one run on one daemon.
//!
//! The subscriber is skiff-test-server, whose `POST /` is a CloudEvents sink (one stdout line
//! per event, `202`), as a Service with a fixed number of instances. A Trigger with no filter
//! sends everything Broker `<prefix>-broker` accepts to it; Broker `<prefix>-notrigger` has no
//! Trigger, so what it accepts is parsed and matched but nothing is stored (no fsync). All of
//! it is applied with `skiff apply -f` from one YAML file.
//!
//! 1. **Accepted/s** (`runs`): wrk posts binary-mode CloudEvents (a Lua script: a `ce-id`
//!    unique per request, from the thread's number and a counter; a small JSON body) for S
//!    seconds at each connection count, to four targets in turn: the instance (wrk inside its
//!    network namespace, `127.0.0.1:8080`), the Service through the ingress (its `Host`), the
//!    Broker without a Trigger and the Broker with it, both at the broker ingress
//!    (`Host: broker-ingress.localhost`, `POST /default/<broker>`). The dispatcher delivers
//!    while wrk posts; after each Broker run the harness waits until every accepted event is
//!    delivered (the metrics' counters) and notes how long that took, so each run starts
//!    with an empty queue. CPU: the daemon's (`/proc/PID/stat`) and the sink's (its cgroup)
//!    over the wrk run, and until the backlog is drained.
//! 2. **Delivery of a batch** (`batch`): the harness's own client posts N events as fast as
//!    it can over K keep-alive connections, each id `<tag>-<seq>`, noting each event's send
//!    time and the time its `202` arrived (wall clock, µs). Meanwhile `/metrics` is read
//!    every 100 ms (delivered and received counters, the queue-depth gauge) with the scale
//!    API's in-flight count. Once every event is delivered, the sink's log lines are read
//!    from the daemon's log of the revision (each line has the daemon's timestamp, taken when
//!    it read the line from the container's stdout): each event's delivery latency is that
//!    timestamp minus its `202`; the dispatcher's own view is its latency histogram,
//!    interpolated within buckets.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::bench::{Bench, PORT, progress};
use crate::http;
use crate::router::{metric_sum, stat_cpu_ms};

/// The broker ingress's host under the daemon's default domain.
pub const BROKER_HOST: &str = "broker-ingress.localhost";
/// The body of every event (JSON, 18 bytes).
pub const BODY: &str = r#"{"bench":"events"}"#;
/// The events' `ce-type`.
pub const CE_TYPE: &str = "dev.skiff.bench";
/// The dispatcher's delivery-latency histogram.
pub const HISTOGRAM: &str = "skiff_event_delivery_latency_seconds";
/// How long "every event delivered" must hold before a backlog counts as drained.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How often `/metrics` is read during the batch.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How the events part runs.
#[derive(Debug, Clone)]
pub struct EventsSettings {
    /// Seconds per wrk run.
    pub seconds: u64,
    /// Seconds of each target's warmup run (at the largest connection count).
    pub warmup_seconds: u64,
    /// wrk's connection counts.
    pub connections: Vec<usize>,
    /// Events in the batch.
    pub batch: usize,
    /// Connections the batch is posted over.
    pub batch_connections: usize,
    /// The subscriber's containerConcurrency.
    pub sub_cc: u32,
    /// Its min-scale = max-scale.
    pub sub_instances: u32,
    /// Longest wait for a backlog to drain.
    pub drain_timeout: Duration,
}

impl EventsSettings {
    /// Deliveries the dispatcher keeps in flight to the subscriber: containerConcurrency ×
    /// max instances, from 1 to 256 (`skiff_control::dispatch`'s `capacity`).
    pub fn capacity(&self) -> u32 {
        let per = if self.sub_cc > 0 { self.sub_cc } else { 10 };
        (per * self.sub_instances.max(1)).clamp(1, 256)
    }
}

/// Where wrk posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Inside the instance's network namespace, straight to its port.
    Instance,
    /// The Service through skiff's ingress.
    Service,
    /// The Broker with no Trigger: parsed and matched, nothing stored.
    BrokerNoTrigger,
    /// The Broker whose Trigger delivers to the Service.
    Broker,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Instance,
        Target::Service,
        Target::BrokerNoTrigger,
        Target::Broker,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Target::Instance => "instance",
            Target::Service => "service",
            Target::BrokerNoTrigger => "broker-no-trigger",
            Target::Broker => "broker",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Target::Instance => "instance, direct (wrk in its netns)",
            Target::Service => "Service, through the ingress",
            Target::BrokerNoTrigger => "Broker without Trigger (nothing stored)",
            Target::Broker => "Broker → Trigger → Service",
        }
    }
}

/// One wrk run.
#[derive(Debug, Clone)]
pub struct EventRun {
    pub target: Target,
    pub connections: usize,
    pub threads: usize,
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub socket_errors: u64,
    pub bad_status: u64,
    /// CPU over the wrk run, ms: the daemon, the sink's instances.
    pub daemon_cpu_ms: f64,
    pub sink_cpu_ms: f64,
    /// Broker runs: events the Broker counted as received during the run
    /// (`skiff_events_received_total`), deliveries not yet ended when wrk stopped, seconds
    /// from wrk's end until all had, and CPU from wrk's start until then.
    pub received: Option<u64>,
    pub backlog_at_end: Option<u64>,
    pub drain_s: Option<f64>,
    pub daemon_cpu_to_drained_ms: Option<f64>,
    pub sink_cpu_to_drained_ms: Option<f64>,
    /// Deliveries of the run that failed (retried, dead-lettered or dropped), and those
    /// that succeeded (counted until drained).
    pub failed: Option<u64>,
    pub delivered: Option<u64>,
    /// Deliveries during the wrk run itself.
    pub delivered_during_run: Option<u64>,
    /// The dispatcher's latency histogram over the run, until drained.
    pub histogram: Option<Buckets>,
}

impl EventRun {
    pub fn per_request(&self, ms: f64) -> f64 {
        ms * 1000.0 / self.requests.max(1) as f64
    }
}

/// One reading of `/metrics` and the scale API during the batch.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Wall clock, µs since the epoch.
    pub at_us: i64,
    pub received: u64,
    pub delivered: u64,
    pub depth: u64,
    pub in_flight: u64,
}

/// One event of the batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Posted {
    /// When its request was written and its `202` read (wall clock, µs).
    pub sent_us: i64,
    pub accepted_us: i64,
    /// When the daemon read the sink's line of its first delivery (wall clock, µs).
    pub delivered_us: Option<i64>,
    /// Deliveries the sink logged for it.
    pub attempts: u64,
}

/// A histogram's cumulative buckets: (upper bound in s, count).
pub type Buckets = Vec<(f64, u64)>;

/// What the batch measured.
#[derive(Debug, Clone)]
pub struct BatchResults {
    pub events: usize,
    pub connections: usize,
    pub posted: Vec<Posted>,
    pub samples: Vec<Sample>,
    /// The counters before the batch.
    pub base_delivered: u64,
    pub base_received: u64,
    /// The latency histogram's buckets over the batch (after − before), and its sum (s).
    pub histogram: Buckets,
    pub histogram_sum_s: f64,
    /// Daemon CPU (ms) while posting, and from the last `202` until every event was delivered.
    pub daemon_cpu_posting_ms: f64,
    pub daemon_cpu_drain_ms: f64,
    pub sink_cpu_ms: f64,
    /// The daemon's CPU over the batch by thread name (ms), with the number of threads.
    pub threads: Vec<(String, usize, f64)>,
    /// When every event had been delivered, per the counters (wall clock, µs).
    pub all_delivered_us: i64,
    /// Deliveries that failed, per the counters.
    pub failed: u64,
    /// Lines of the sink's log that named a batch event.
    pub log_lines: u64,
}

/// What the events part measured.
#[derive(Debug, Clone)]
pub struct EventsResults {
    pub settings: EventsSettings,
    pub service: String,
    pub broker: String,
    pub no_trigger_broker: String,
    pub trigger: String,
    pub subscription: String,
    pub instances: Vec<String>,
    pub warmup: Vec<EventRun>,
    pub runs: Vec<EventRun>,
    pub batch: BatchResults,
    /// The YAML applied.
    pub manifests: String,
    pub total_s: f64,
}

// --- Manifests --------------------------------------------------------------------------

fn manifests(
    service: &str,
    image: &str,
    broker: &str,
    no_trigger: &str,
    trigger: &str,
    s: &EventsSettings,
) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {service}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: \"{n}\"
        autoscaling.knative.dev/max-scale: \"{n}\"
    spec:
      containerConcurrency: {cc}
      timeoutSeconds: 30
      containers:
        - image: {image}
          ports:
            - containerPort: {PORT}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {broker}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {no_trigger}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {trigger}
spec:
  broker: {broker}
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: {service}
",
        n = s.sub_instances,
        cc = s.sub_cc,
    )
}

// --- wrk ---------------------------------------------------------------------------------

/// wrk's script: a binary-mode CloudEvent per request, `ce-id` = `<label>-<thread>-<n>` (the
/// label is the script's argument), and the report line of the router part.
fn lua() -> String {
    format!(
        r#"local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
local label = "x"
function init(args)
  label = args[1] or "x"
  wrk.method = "POST"
  wrk.body = '{BODY}'
  wrk.headers["ce-specversion"] = "1.0"
  wrk.headers["ce-source"] = "/serving-bench/wrk"
  wrk.headers["ce-type"] = "{CE_TYPE}"
  wrk.headers["content-type"] = "application/json"
end
function request()
  n = n + 1
  wrk.headers["ce-id"] = label .. "-" .. tid .. "-" .. n
  return wrk.format()
end
{}"#,
        crate::router::LUA
    )
}

struct Ctx<'a> {
    b: &'a Bench,
    netns: PathBuf,
    service_host: String,
    broker_path: String,
    no_trigger_path: String,
    lua: PathBuf,
    logs: PathBuf,
    cgroups: Vec<String>,
    subscription: String,
    broker_source: String,
    /// Events the Broker accepted before the Trigger's route was in place (probes): received
    /// but with no delivery.
    offset: u64,
}

/// The counters of the subscription and its Broker.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    received: u64,
    delivered: u64,
    /// Retried, dead-lettered or dropped.
    failed: u64,
    /// Deliveries that ended (delivered, dead-lettered, dropped).
    ended: u64,
    depth: u64,
}

/// The counters of `subscription` and of `source` (`broker/<name>`) in `/metrics`.
fn counts(text: &str, subscription: &str, source: &str) -> Counts {
    let sub = |outcome: &str| {
        metric_sum(
            text,
            "skiff_events_delivered_total",
            &format!("subscription=\"{subscription}\",outcome=\"{outcome}\""),
        )
    };
    let delivered = sub("delivered");
    let dead = sub("dead_lettered") + sub("dropped");
    Counts {
        received: metric_sum(
            text,
            "skiff_events_received_total",
            &format!("source=\"{source}\""),
        ),
        delivered,
        failed: sub("retried") + dead,
        ended: delivered + dead,
        depth: metric_sum(
            text,
            "skiff_events_queue_depth",
            &format!("subscription=\"{subscription}\""),
        ),
    }
}

/// When a backlog was first seen drained, and the CPU readings then.
#[derive(Debug, Clone, Copy)]
struct Drained {
    at: Instant,
    received: u64,
    daemon_cpu_ms: f64,
    sink_cpu_ms: f64,
}

impl Ctx<'_> {
    fn daemon_cpu(&self) -> f64 {
        stat_cpu_ms(&format!("/proc/{}/stat", self.b.daemon.pid))
    }

    fn sink_cpu(&self) -> f64 {
        self.cgroups
            .iter()
            .map(|c| skiff_runtime::cgroups::usage(c).cpu_nanos as f64 / 1e6)
            .sum()
    }

    fn counts(&self, text: &str) -> Counts {
        counts(text, &self.subscription, &self.broker_source)
    }

    /// The subscription's delivery-latency histogram in `/metrics`.
    fn histogram(&self, text: &str) -> Buckets {
        buckets(
            text,
            HISTOGRAM,
            &format!("subscription=\"{}\"", self.subscription),
        )
    }

    async fn read_counts(&self) -> anyhow::Result<Counts> {
        Ok(self.counts(&self.b.daemon.metrics().await?))
    }

    /// Waits until every event the Broker received has ended its delivery, and it stays so
    /// for [`SETTLE`] (a request wrk cut off may still be committing: its event is counted
    /// once stored); returns the counts then, and when the condition first held with the
    /// daemon's and the sink's CPU (ms) at that reading.
    async fn drained(&self, max: Duration) -> anyhow::Result<(Counts, Drained)> {
        let deadline = Instant::now() + max;
        let mut since: Option<Drained> = None;
        loop {
            let c = self.read_counts().await?;
            if c.ended + self.offset > c.received {
                bail!(
                    "the counters disagree: {} deliveries ended but the Broker counted {} events received ({} before the Trigger's route)",
                    c.ended,
                    c.received,
                    self.offset
                );
            }
            if c.ended + self.offset == c.received {
                match since {
                    Some(d) if d.received == c.received => {
                        if d.at.elapsed() >= SETTLE {
                            return Ok((c, d));
                        }
                    }
                    _ => {
                        since = Some(Drained {
                            at: Instant::now(),
                            received: c.received,
                            daemon_cpu_ms: self.daemon_cpu(),
                            sink_cpu_ms: self.sink_cpu(),
                        })
                    }
                }
            } else {
                since = None;
            }
            if Instant::now() > deadline {
                bail!(
                    "the backlog did not drain within {max:?}: {} received, {} delivered, {} failed",
                    c.received,
                    c.delivered,
                    c.failed
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wrk(
        &self,
        target: Target,
        connections: usize,
        seconds: u64,
        label: &str,
        drain: Duration,
    ) -> anyhow::Result<EventRun> {
        let threads = connections.clamp(1, 2);
        let ingress = self.b.daemon.ingress;
        let mut cmd = match target {
            Target::Instance => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", self.netns.display()))
                    .args(["--", "wrk"]);
                c
            }
            _ => Command::new("wrk"),
        };
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "10s", "--latency", "-s"])
            .arg(&self.lua);
        let (host, url) = match target {
            Target::Instance => (
                self.service_host.clone(),
                format!("http://127.0.0.1:{PORT}/"),
            ),
            Target::Service => (self.service_host.clone(), format!("http://{ingress}/")),
            Target::BrokerNoTrigger => (
                BROKER_HOST.to_owned(),
                format!("http://{ingress}{}", self.no_trigger_path),
            ),
            Target::Broker => (
                BROKER_HOST.to_owned(),
                format!("http://{ingress}{}", self.broker_path),
            ),
        };
        let id_label = format!("{label}-{}-c{connections}", target.name());
        cmd.args(["-H", &format!("Host: {host}")])
            .arg(url)
            .arg(&id_label)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let broker = target == Target::Broker;
        let (before, hist_before) = if broker {
            let text = self.b.daemon.metrics().await?;
            (Some(self.counts(&text)), self.histogram(&text))
        } else {
            (None, Vec::new())
        };
        let (cpu0, sink0) = (self.daemon_cpu(), self.sink_cpu());
        let out = cmd.output().await.context("running wrk")?;
        let (cpu1, sink1) = (self.daemon_cpu(), self.sink_cpu());
        let ended = Instant::now();
        let after = if broker {
            Some(self.read_counts().await?)
        } else {
            None
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = std::fs::write(
            self.logs.join(format!("{id_label}.txt")),
            format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        );
        if !out.status.success() {
            bail!(
                "wrk ({}) failed ({}): {}{}",
                target.name(),
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
        let mut run = EventRun {
            target,
            connections,
            threads,
            requests: n("requests"),
            duration_s,
            rps: f("requests") / duration_s,
            p50_us: f("p50"),
            p90_us: f("p90"),
            p99_us: f("p99"),
            max_us: f("max"),
            socket_errors: n("connect") + n("read") + n("write") + n("timeout"),
            bad_status: n("status"),
            daemon_cpu_ms: cpu1 - cpu0,
            sink_cpu_ms: sink1 - sink0,
            received: None,
            backlog_at_end: None,
            drain_s: None,
            daemon_cpu_to_drained_ms: None,
            sink_cpu_to_drained_ms: None,
            failed: None,
            delivered: None,
            delivered_during_run: None,
            histogram: None,
        };
        if let (Some(before), Some(after)) = (before, after) {
            let (done, d) = self.drained(drain).await?;
            let drain_s = d.at.saturating_duration_since(ended).as_secs_f64();
            let (cpu_done, sink_done) = (d.daemon_cpu_ms, d.sink_cpu_ms);
            // Counted until drained: a request wrk cut off may be stored after it stopped.
            run.received = Some(done.received - before.received);
            run.backlog_at_end = Some(after.received.saturating_sub(after.ended + self.offset));
            run.drain_s = Some(if after.ended + self.offset >= after.received {
                0.0
            } else {
                drain_s
            });
            run.daemon_cpu_to_drained_ms = Some(cpu_done - cpu0);
            run.sink_cpu_to_drained_ms = Some(sink_done - sink0);
            run.failed = Some(done.failed - before.failed);
            run.delivered = Some(done.delivered - before.delivered);
            run.delivered_during_run = Some(after.delivered - before.delivered);
            let text = self.b.daemon.metrics().await?;
            run.histogram = Some(bucket_delta(&self.histogram(&text), &hist_before));
        }
        Ok(run)
    }
}

// --- The batch ---------------------------------------------------------------------------

/// The request of event `id`, binary mode, to the Broker.
fn event_request(path: &str, id: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {BROKER_HOST}\r\nUser-Agent: serving-bench\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /serving-bench/batch\r\nce-type: {CE_TYPE}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Posts events `0..n` (ids `<tag>-<seq>`) over `conns` keep-alive connections, each taking
/// the next sequence number when its previous event is answered.
async fn post_batch(
    ingress: std::net::SocketAddr,
    path: &str,
    tag: &str,
    n: usize,
    conns: usize,
) -> anyhow::Result<Vec<Posted>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (next, path, tag) = (next.clone(), path.to_owned(), tag.to_owned());
        tasks.spawn(async move {
            let mut out: Vec<(usize, Posted)> = Vec::new();
            let mut conn: Option<http::Conn> = None;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= n {
                    return anyhow::Ok(out);
                }
                let req = event_request(&path, &format!("{tag}-{seq}"));
                let c = match &mut conn {
                    Some(c) => c,
                    None => conn.insert(http::Conn::new(
                        TcpStream::connect(ingress)
                            .await
                            .context("connecting to the ingress")?,
                    )),
                };
                let sent_us = now_us();
                c.send(&req).await?;
                let a = c.answer().await?;
                let accepted_us = now_us();
                if a.status != 202 {
                    bail!("event {tag}-{seq}: the Broker answered {}", a.status);
                }
                if !a.keep_alive {
                    conn = None;
                }
                out.push((
                    seq,
                    Posted {
                        sent_us,
                        accepted_us,
                        ..Posted::default()
                    },
                ));
            }
        });
    }
    let mut posted = vec![Posted::default(); n];
    while let Some(r) = tasks.join_next().await {
        for (seq, p) in r.context("a posting task failed")?? {
            posted[seq] = p;
        }
    }
    Ok(posted)
}

/// The cumulative buckets of histogram `name` whose labels contain `label`.
fn buckets(text: &str, name: &str, label: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{");
    let mut out: Buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            if !rest.contains(label) {
                return None;
            }
            let at = rest.find("le=\"")? + 4;
            let le = rest[at..].split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit_once(' ')?.1.parse::<f64>().ok()? as u64;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The buckets of `after` minus those of `before` (the same bounds; absent ones are 0).
fn bucket_delta(after: &Buckets, before: &Buckets) -> Buckets {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|(l, _)| *l == le).map_or(0, |(_, n)| *n);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// The `q`-quantile (0–1) of cumulative buckets, interpolated linearly inside its bucket (as
/// Prometheus's `histogram_quantile`; the first bucket's lower bound is 0). Returns the value
/// and its bucket's bounds; in the `+Inf` bucket the value is its lower bound.
pub fn bucket_quantile(b: &Buckets, q: f64) -> Option<(f64, f64, f64)> {
    let total = b.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for &(le, count) in b {
        if count as f64 >= rank && count > below {
            if le.is_infinite() {
                return Some((lo, lo, le));
            }
            let v = lo + (le - lo) * (rank - below as f64) / (count - below) as f64;
            return Some((v, lo, le));
        }
        lo = le;
        below = count;
    }
    None
}

/// CPU ms of each thread of `pid` by its name (`/proc/PID/task/*/comm`), digits at the end
/// folded (`skiff-router-0` and `-1` are `skiff-router-*`), keyed by thread id.
fn thread_cpu(pid: u32) -> HashMap<u32, (String, f64)> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let name = match comm.trim_end_matches(|c: char| c.is_ascii_digit()) {
            n if n.len() < comm.len() => format!("{n}*"),
            _ => comm.to_owned(),
        };
        let cpu = stat_cpu_ms(&format!("/proc/{pid}/task/{tid}/stat"));
        out.insert(tid, (name, cpu));
    }
    out
}

/// The sink's log lines of the batch, from every file of the Service's revisions (rotated
/// ones too): each event's first delivery time and its delivery count. Returns the lines.
fn read_sink_log(dir: &Path, service: &str, tag: &str, posted: &mut [Posted]) -> u64 {
    let mut lines = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let needle = format!("event id={tag}-");
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{service}-"))
            || !name.contains(".log")
            || name.contains(".requests.log")
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for l in text.lines() {
            if !l.contains(&needle) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let (Some(ts), Some(line)) = (v["ts"].as_str(), v["line"].as_str()) else {
                continue;
            };
            let Some(seq) = line
                .strip_prefix(&needle)
                .and_then(|r| r.split(' ').next())
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let Ok(at) = ts.parse::<jiff::Timestamp>() else {
                continue;
            };
            let Some(p) = posted.get_mut(seq) else {
                continue;
            };
            lines += 1;
            p.attempts += 1;
            let at = at.as_microsecond();
            p.delivered_us = Some(p.delivered_us.map_or(at, |d| d.min(at)));
        }
    }
    lines
}

async fn batch(c: &Ctx<'_>, s: &EventsSettings, tag: &str) -> anyhow::Result<BatchResults> {
    let daemon = &c.b.daemon;
    let text = daemon.metrics().await?;
    let base = c.counts(&text);
    let hist_label = format!("subscription=\"{}\"", c.subscription);
    let hist_before = c.histogram(&text);
    let sum_before = metric_sum_f(&text, &format!("{HISTOGRAM}_sum"), &hist_label);
    let target = base.received + s.batch as u64 - c.offset;
    let service = c
        .service_host
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();

    // The sampler: /metrics and the scale API every SAMPLE_EVERY until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        let (sub, src, service) = (&c.subscription, &c.broker_source, &service);
        let deadline = Instant::now() + s.drain_timeout;
        async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                tick.tick().await;
                let at_us = now_us();
                let (m, scale) = tokio::join!(daemon.metrics(), daemon.scale(service));
                let Ok(m) = m else { continue };
                let k = counts(&m, sub, src);
                let in_flight = scale.ok().and_then(|v| v["inFlight"].as_u64()).unwrap_or(0);
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Sample {
                        at_us,
                        received: k.received,
                        delivered: k.delivered,
                        depth: k.depth,
                        in_flight,
                    });
                if k.ended >= target {
                    break;
                }
            }
        }
    };
    let threads_before = thread_cpu(daemon.pid);
    let (cpu0, sink0) = (c.daemon_cpu(), c.sink_cpu());
    let started = Instant::now();
    let poster = async {
        let r = post_batch(
            daemon.ingress,
            &c.broker_path,
            tag,
            s.batch,
            s.batch_connections,
        )
        .await;
        (r, c.daemon_cpu())
    };
    let ((posted, cpu_posted), ()) = tokio::join!(poster, sampler);
    let mut posted = posted?;
    // The sampler stops once every event ended; wait for that without it if it gave up.
    let all_delivered_us = now_us();
    let (cpu1, sink1) = (c.daemon_cpu(), c.sink_cpu());
    let threads_after = thread_cpu(daemon.pid);
    let (done, _) = c.drained(s.drain_timeout).await?;
    stop.store(true, Ordering::Release);
    progress(format!(
        "events: batch of {} delivered {:.1} s after the first post",
        s.batch,
        started.elapsed().as_secs_f64()
    ));
    let text = daemon.metrics().await?;
    let histogram = bucket_delta(&c.histogram(&text), &hist_before);
    let sum_after = metric_sum_f(&text, &format!("{HISTOGRAM}_sum"), &hist_label);
    anyhow::ensure!(
        done.delivered - base.delivered == s.batch as u64,
        "{} deliveries of the batch's {} events",
        done.delivered - base.delivered,
        s.batch
    );
    // Threads by name: those that ended during the batch are missing from `after`, so their
    // CPU is lost; those born during it count from 0.
    let mut by_name: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (tid, (name, after)) in &threads_after {
        let before = threads_before.get(tid).map_or(0.0, |(_, b)| *b);
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += after - before;
    }
    let mut threads: Vec<(String, usize, f64)> =
        by_name.into_iter().map(|(k, (n, ms))| (k, n, ms)).collect();
    threads.sort_by(|a, b| b.2.total_cmp(&a.2));

    // Give the log pump a moment for the last lines.
    let mut log_lines = 0;
    let dir = daemon.data_dir.join("logs/default");
    for _ in 0..50 {
        for p in posted.iter_mut() {
            p.delivered_us = None;
            p.attempts = 0;
        }
        log_lines = read_sink_log(&dir, &service, tag, &mut posted);
        if posted.iter().all(|p| p.delivered_us.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(BatchResults {
        events: s.batch,
        connections: s.batch_connections,
        posted,
        samples,
        base_delivered: base.delivered,
        base_received: base.received,
        histogram,
        histogram_sum_s: sum_after - sum_before,
        daemon_cpu_posting_ms: cpu_posted - cpu0,
        daemon_cpu_drain_ms: cpu1 - cpu_posted,
        sink_cpu_ms: sink1 - sink0,
        threads,
        all_delivered_us,
        failed: done.failed - base.failed,
        log_lines,
    })
}

/// Like [`metric_sum`], as a float.
fn metric_sum_f(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

// --- The part ----------------------------------------------------------------------------

/// Posts one event to the Broker at a time until one is delivered (the counters): the
/// Trigger's route is in place and the path works end to end. Returns the events the Broker
/// received that have no delivery (accepted before the route was in place).
async fn probe(c: &Ctx<'_>, tag: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ingress = c.b.daemon.ingress;
    let mut n = 0;
    loop {
        n += 1;
        let before = c.read_counts().await?;
        let mut conn = http::Conn::new(TcpStream::connect(ingress).await?);
        conn.send(&event_request(&c.broker_path, &format!("{tag}-{n}")))
            .await?;
        let status = conn.answer().await?.status;
        let wait = Instant::now() + Duration::from_secs(3);
        while status == 202 && Instant::now() < wait {
            let now = c.read_counts().await?;
            if now.delivered > before.delivered && now.ended == now.delivered {
                // Any earlier probe that was stored has been delivered before this one.
                return Ok(now.received - now.ended);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if Instant::now() > deadline {
            bail!("no probe event was delivered within 60 s (last answer {status})");
        }
    }
}

pub async fn run(b: &Bench, s: &EventsSettings) -> anyhow::Result<EventsResults> {
    let started = Instant::now();
    let service = b.service("sink");
    let broker = b.service("broker");
    let no_trigger = b.service("notrigger");
    let trigger = b.service("trigger");
    let subscription = format!("trigger/default/{trigger}");
    let yaml = manifests(
        &service,
        &b.server.reference,
        &broker,
        &no_trigger,
        &trigger,
        s,
    );
    let file = b.work.join("events.yaml");
    std::fs::write(&file, &yaml).context("writing events.yaml")?;
    progress(format!(
        "events: skiff apply -f {} (Service {service}: containerConcurrency {}, {} instance(s); Brokers {broker} and {no_trigger}; Trigger {trigger})",
        file.display(),
        s.sub_cc,
        s.sub_instances
    ));
    let out = b
        .daemon
        .cli(&["apply", "-f", &file.display().to_string()])
        .await?;
    for l in out.lines() {
        progress(format!("events: {l}"));
    }
    let instances = b
        .daemon
        .wait_ready(
            &service,
            u64::from(s.sub_instances),
            Duration::from_secs(60),
        )
        .await?;
    // The Trigger is Ready once its Broker and subscriber are.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t: serde_json::Value = b
            .daemon
            .client
            .get_eventing("triggers", "default", &trigger)
            .await
            .context("reading the Trigger")?;
        let ready = t["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("Trigger {trigger} not Ready within 30 s: {}", t["status"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let netns = b.daemon.instance_dir(&instances[0]).join("netns");
    anyhow::ensure!(
        netns.exists(),
        "the instance's network namespace is not at {}",
        netns.display()
    );
    let logs = b.work.join("wrk");
    std::fs::create_dir_all(&logs).context("creating the wrk output dir")?;
    let lua_path = logs.join("events.lua");
    std::fs::write(&lua_path, lua()).context("writing the wrk script")?;
    let mut c = Ctx {
        b,
        netns,
        service_host: b.host(&service),
        broker_path: format!("/default/{broker}"),
        no_trigger_path: format!("/default/{no_trigger}"),
        lua: lua_path,
        logs,
        cgroups: instances
            .iter()
            .map(|i| skiff_runtime::instance::cgroup_path(i, 0))
            .collect(),
        subscription: subscription.clone(),
        broker_source: format!("broker/{broker}"),
        offset: 0,
    };
    c.offset = probe(&c, "probe").await?;
    progress(format!(
        "events: a probe event went Broker → Trigger → sink ({} accepted before the Trigger's route was in place)",
        c.offset
    ));

    let max_c = s.connections.iter().copied().max().unwrap_or(1);
    let mut warmup = Vec::new();
    if s.warmup_seconds > 0 {
        progress(format!(
            "events: warmup, {} s per target at {max_c} connections",
            s.warmup_seconds
        ));
        for t in Target::ALL {
            let r = c
                .wrk(t, max_c, s.warmup_seconds, "warmup", s.drain_timeout)
                .await?;
            if let Err(e) = check_run(&r) {
                bail!("{e:#}; {}", sink_report(&c).await);
            }
            warmup.push(r);
        }
    }
    let mut runs = Vec::new();
    for &conns in &s.connections {
        let mut line = Vec::new();
        for t in Target::ALL {
            let r = c.wrk(t, conns, s.seconds, "run", s.drain_timeout).await?;
            if let Err(e) = check_run(&r) {
                bail!("{e:#}; {}", sink_report(&c).await);
            }
            line.push(format!(
                "{} {:.0}/s p50 {:.2} ms p99 {:.2} ms{}",
                t.name(),
                r.rps,
                r.p50_us / 1000.0,
                r.p99_us / 1000.0,
                r.drain_s
                    .map(|d| format!(
                        " (backlog {} drained in {d:.1} s)",
                        r.backlog_at_end.unwrap_or(0)
                    ))
                    .unwrap_or_default()
            ));
            runs.push(r);
        }
        progress(format!("events c{conns}: {}", line.join("; ")));
    }

    progress(format!(
        "events: batch of {} events over {} connections",
        s.batch, s.batch_connections
    ));
    let batch = batch(&c, s, "batch").await?;

    // Remove what was applied, then wait for the instances to go.
    for (kind, name) in [
        ("triggers", &trigger),
        ("brokers", &broker),
        ("brokers", &no_trigger),
    ] {
        b.daemon
            .client
            .delete_eventing(kind, "default", name)
            .await
            .with_context(|| format!("deleting {kind}/{name}"))?;
    }
    b.daemon.delete(&service).await?;
    b.daemon
        .wait_gone(&instances, Duration::from_secs(60))
        .await?;
    Ok(EventsResults {
        settings: s.clone(),
        service,
        broker,
        no_trigger_broker: no_trigger,
        trigger,
        subscription,
        instances,
        warmup,
        runs,
        batch,
        manifests: yaml,
        total_s: started.elapsed().as_secs_f64(),
    })
}

/// What the sink's `GET /events` says (through the ingress): deliveries, distinct ids, and
/// the ids delivered more than once (at most 10 of them), for the error of a failed check.
async fn sink_report(c: &Ctx<'_>) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("Host: {}", c.service_host))
        .arg(format!("http://{}/events", c.b.daemon.ingress))
        .stdin(Stdio::null())
        .output()
        .await;
    let Ok(out) = out else {
        return "(curl did not run)".into();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return format!("(not JSON: {})", String::from_utf8_lossy(&out.stderr));
    };
    let attempts = v["attempts"].as_object().cloned().unwrap_or_default();
    let dups: Vec<String> = attempts
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 1)
        .map(|(id, n)| format!("{id} ×{n}"))
        .collect();
    format!(
        "the sink received {} deliveries of {} distinct ids; {} ids more than once: {}",
        v["received"],
        attempts.len(),
        dups.len(),
        dups.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    )
}

fn check_run(r: &EventRun) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.requests > 0 && r.socket_errors == 0 && r.bad_status == 0 && r.failed.unwrap_or(0) == 0,
        "{} at {} connections: {} requests, {} socket errors, {} bad statuses, {} failed deliveries",
        r.target.name(),
        r.connections,
        r.requests,
        r.socket_errors,
        r.bad_status,
        r.failed.unwrap_or(0)
    );
    if let Some(received) = r.received {
        // wrk counts answers it read; the Broker may have accepted one more that wrk cut off.
        anyhow::ensure!(
            received >= r.requests && received <= r.requests + r.connections as u64,
            "the Broker counted {received} events received, wrk {} answers",
            r.requests
        );
        anyhow::ensure!(
            r.delivered == Some(received),
            "the Broker counted {received} events received, the Trigger {:?} delivered",
            r.delivered
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE skiff_event_delivery_latency_seconds histogram
skiff_event_delivery_latency_seconds_sum{namespace="default",subscription="trigger/default/t"} 1.5
skiff_event_delivery_latency_seconds_count{namespace="default",subscription="trigger/default/t"} 10
skiff_event_delivery_latency_seconds_bucket{le="0.001",namespace="default",subscription="trigger/default/t"} 0
skiff_event_delivery_latency_seconds_bucket{le="0.01",namespace="default",subscription="trigger/default/t"} 4
skiff_event_delivery_latency_seconds_bucket{le="0.1",namespace="default",subscription="trigger/default/t"} 9
skiff_event_delivery_latency_seconds_bucket{le="+Inf",namespace="default",subscription="trigger/default/t"} 10
skiff_event_delivery_latency_seconds_bucket{le="0.01",namespace="default",subscription="trigger/default/u"} 7
# EOF
"#;

    #[test]
    fn reads_and_interpolates_buckets() {
        let b = buckets(
            METRICS,
            "skiff_event_delivery_latency_seconds",
            "subscription=\"trigger/default/t\"",
        );
        assert_eq!(
            b,
            vec![(0.001, 0), (0.01, 4), (0.1, 9), (f64::INFINITY, 10)]
        );
        // Rank 5 of 10: the first of the 5 in (0.01, 0.1].
        let (v, lo, hi) = bucket_quantile(&b, 0.5).expect("a quantile");
        assert!((v - 0.028).abs() < 1e-9, "{v}");
        assert_eq!((lo, hi), (0.01, 0.1));
        // Rank 9.9: in +Inf, so its lower bound.
        assert_eq!(bucket_quantile(&b, 0.99), Some((0.1, 0.1, f64::INFINITY)));
        assert_eq!(bucket_quantile(&vec![(1.0, 0)], 0.5), None);
        assert_eq!(
            metric_sum_f(
                METRICS,
                "skiff_event_delivery_latency_seconds_sum",
                "trigger/default/t\""
            ),
            1.5
        );
    }

    #[test]
    fn the_script_gives_each_request_an_id() {
        let l = lua();
        assert!(l.contains("wrk.headers[\"ce-id\"] = label"));
        assert!(l.contains("SERVING_BENCH"));
    }

    #[test]
    fn the_request_is_binary_mode() {
        let r = String::from_utf8(event_request("/default/b", "x-1")).expect("utf-8");
        assert!(r.starts_with("POST /default/b HTTP/1.1\r\nHost: broker-ingress.localhost\r\n"));
        assert!(r.contains("\r\nce-id: x-1\r\n"));
        assert!(r.ends_with(&format!("content-length: {}\r\n\r\n{BODY}", BODY.len())));
    }
}
