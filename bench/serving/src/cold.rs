//! Cold start: scale from zero to the first byte through skiff's ingress, beside the floor
//! (bare `runc run -d` of the same layers until the port accepts), interleaved.
//!
//! Two kinds of skiff start: `fresh` on the first daemon, which parks nothing, and `parked`
//! on a second daemon that keeps a parked sandbox per revision (its default); each run takes
//! one of each and the floor, in turn.
//!
//! Every skiff run uses a Service of its own, created up front with `initial-scale: "0"` (its
//! revision pins the image's digest and runs nothing), so that each one is a true cold start:
//! one request on a fresh connection, timed from just before it is written to the first byte
//! and to the end of the answer. Then the Service's scale API must show exactly one cold start
//! that one request waited through, the Service is deleted, and the next run begins once its
//! instance is gone.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use skiff_bench_runtime::floor::{Floor, FloorSample, FloorSettings};
use tokio::net::TcpStream;

use crate::bench::{Bench, PORT, progress};
use crate::daemon::Daemon;
use crate::daemonlog::LogEvent;
use crate::http;

/// Memory limit of both cases' container (as `bench/start.sh`).
pub const MEMORY_LIMIT: i64 = 64 << 20;
/// `timeoutSeconds` of the cold-start Services. skiff's stop grace period is the revision's
/// `timeoutSeconds`, and busybox httpd (the container's pid 1, with no SIGTERM handler) only
/// ends with the SIGKILL after it: a short one keeps each run short. It bounds the wait for
/// the instance's answer once the request has an instance, not the wait for the instance.
pub const TIMEOUT_SECONDS: u32 = 1;

/// One cold start through skiff.
#[derive(Debug, Clone)]
pub struct SkiffCold {
    pub service: String,
    pub revision: String,
    /// Wall clock just before the request was written.
    pub sent_at: jiff::Timestamp,
    /// Connecting to the ingress (not included in the other figures).
    pub connect_ms: f64,
    /// Request written → first byte of the answer.
    pub ttfb_ms: f64,
    /// Request written → end of the answer.
    pub full_ms: f64,
    pub status: u16,
    /// From the scale API after the answer.
    pub cold_starts: u64,
    pub cold_start_requests: u64,
    /// The router's own figure for the cold start (first waiter → instance in the pool).
    pub router_cold_ms: Option<f64>,
    /// Instances the Service had after the answer, and the first one's figures.
    pub instances: usize,
    pub instance: Option<String>,
    pub start_to_ready_ms: Option<f64>,
    /// From the daemon's log: the autoscaler's decision 0 → 1, the instance reconciler's
    /// "starting instance", and the router's "cold start served" (instance in the pool).
    pub decided_at: Option<jiff::Timestamp>,
    pub starting_at: Option<jiff::Timestamp>,
    pub served_at: Option<jiff::Timestamp>,
    /// Not timed: Service deleted → instance directory gone.
    pub gone_ms: f64,
    /// How the instance that served was started (`fresh` or `parked`), and its phases.
    pub start_kind: String,
    pub phases: Option<serde_json::Value>,
}

impl SkiffCold {
    /// The wall clock of the first byte.
    pub fn first_byte_at(&self) -> jiff::Timestamp {
        self.sent_at
            .checked_add(jiff::SignedDuration::from_secs_f64(self.ttfb_ms / 1000.0))
            .unwrap_or(self.sent_at)
    }
}

/// What the cold-start part measured.
#[derive(Debug, Clone)]
pub struct ColdResults {
    pub skiff: Vec<SkiffCold>,
    /// The same through the parking daemon: each from a parked sandbox.
    pub parked: Vec<SkiffCold>,
    /// Each parked sandbox's cgroup memory before its request (bytes).
    pub parked_memory: Vec<u64>,
    /// The parking daemon's resident memory with every sandbox parked, and before any
    /// Service (KiB).
    pub parking_daemon_rss_kib: (u64, u64),
    pub floor: Vec<FloorSample>,
    pub warmup: usize,
    /// The image: its reference, layer count and compressed size.
    pub image: String,
    pub image_layers: usize,
    pub image_kib: f64,
    /// Services created up front (runs + warmup).
    pub services: usize,
    /// Seconds to create them and see every revision pinned.
    pub create_s: f64,
    /// Problems found by the checks (empty when every run was a verified cold start with a 200).
    pub problems: Vec<String>,
    pub total_s: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn manifest(name: &str, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "template": {
            "metadata": { "annotations": { "autoscaling.knative.dev/initial-scale": "0" } },
            "spec": {
                "timeoutSeconds": TIMEOUT_SECONDS,
                "containers": [{
                    "image": image,
                    "ports": [{ "containerPort": PORT }],
                    "resources": { "limits": { "memory": "64Mi" } },
                }],
            },
        }},
    })
}

/// Creates `names` on `daemon` and waits until each is pinned (and, with `parked`, has a
/// parked sandbox whose containers are created; without, runs nothing).
async fn create(
    daemon: &Daemon,
    image: &str,
    names: &[String],
    parked: bool,
) -> anyhow::Result<()> {
    for name in names {
        daemon.apply(&manifest(name, image)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in names {
        loop {
            let ready = daemon.pinned(name).await? && {
                let list = daemon.instances(name).await?;
                if parked {
                    list.len() == 1
                        && list[0]["status"]["phase"] == "parked"
                        && list[0]["status"]["containers"]
                            .as_array()
                            .is_some_and(|c| c.iter().all(|c| c["pid"].is_number()))
                } else {
                    list.is_empty()
                }
            };
            if ready {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name}: not pinned{} after 120 s",
                if parked { " and parked" } else { "" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = daemon.scale(name).await?;
        anyhow::ensure!(
            s["ready"].as_u64() == Some(0),
            "{name} runs an instance before any request: {s}"
        );
    }
    Ok(())
}

/// The resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub async fn run(b: &Bench, runs: usize, warmup: usize) -> anyhow::Result<ColdResults> {
    let started = Instant::now();
    let parking = b
        .parking
        .as_ref()
        .context("the parking daemon was not started")?;
    let n = runs + warmup;
    let names: Vec<String> = (0..n).map(|i| b.service(&format!("cold-{i:03}"))).collect();
    let parked_names: Vec<String> = (0..n).map(|i| b.service(&format!("park-{i:03}"))).collect();
    progress(format!(
        "cold start: creating {n} Services with initial-scale 0 on each daemon"
    ));
    let rss_before = rss_kib(parking.pid);
    let t_create = Instant::now();
    create(&b.daemon, &b.httpd.reference, &names, false).await?;
    let create_s = t_create.elapsed().as_secs_f64();
    create(parking, &b.httpd.reference, &parked_names, true).await?;
    let mut parked_memory = Vec::with_capacity(n);
    for name in &parked_names {
        let list = parking.instances(name).await?;
        parked_memory.extend(
            list.first()
                .and_then(|i| i["usage"]["memoryBytes"].as_u64()),
        );
    }
    let rss_parked = rss_kib(parking.pid);
    // Let the writes and the autoscaler's first decisions settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut plan_env = b.httpd.env.clone();
    plan_env.push(("PORT".into(), PORT.to_string()));
    let floor = Floor::new(
        &b.work.join("floor"),
        FloorSettings {
            prefix: b.prefix.clone(),
            lowers: b.httpd.lowers.clone(),
            args: b.httpd.args.clone(),
            env: plan_env,
            port: PORT,
            memory_limit: MEMORY_LIMIT,
            ready_timeout: Duration::from_secs(20),
        },
    )?;
    let floor_request = http::get("localhost", "/", true);

    let mut out = ColdResults {
        skiff: Vec::with_capacity(runs),
        parked: Vec::with_capacity(runs),
        parked_memory,
        parking_daemon_rss_kib: (rss_parked, rss_before),
        floor: Vec::with_capacity(runs),
        warmup,
        image: b.httpd.reference.clone(),
        image_layers: b.httpd.layers,
        image_kib: b.httpd.size as f64 / 1024.0,
        services: n,
        create_s,
        problems: Vec::new(),
        total_s: 0.0,
    };
    for (i, (name, parked_name)) in names.iter().zip(&parked_names).enumerate() {
        let a = skiff_once(b, &b.daemon, name, "fresh", &mut out.problems)
            .await
            .with_context(|| format!("cold start {i} through skiff ({name})"))?;
        let p = skiff_once(b, parking, parked_name, "parked", &mut out.problems)
            .await
            .with_context(|| format!("parked start {i} through skiff ({parked_name})"))?;
        let f = floor
            .once_with_request(i, &floor_request)
            .await
            .with_context(|| format!("floor run {i}"))?;
        let f_status = f.response.as_ref().map_or(0, |r| r.status);
        if f_status != 200 {
            out.problems
                .push(format!("floor run {i} answered {f_status}, not 200"));
        }
        let label = if i < warmup {
            format!("warmup {}/{warmup}", i + 1)
        } else {
            format!("run {}/{runs}", i - warmup + 1)
        };
        progress(format!(
            "cold {label}: skiff fresh {:.1} ms to first byte ({}; runtime {:.1} ms), parked {:.1} ms ({}; runtime {:.1} ms), floor {:.1} ms to accept, {:.1} ms to first byte",
            a.ttfb_ms,
            a.status,
            a.start_to_ready_ms.unwrap_or(f64::NAN),
            p.ttfb_ms,
            p.status,
            p.start_to_ready_ms.unwrap_or(f64::NAN),
            f.total_ms,
            f.response.as_ref().map_or(f64::NAN, |r| r.first_byte_ms),
        ));
        if i >= warmup {
            out.skiff.push(a);
            out.parked.push(p);
            out.floor.push(f);
        }
    }
    attach_log(&mut out.skiff, &crate::daemonlog::read(&b.daemon.log));
    attach_log(&mut out.parked, &crate::daemonlog::read(&parking.log));
    out.total_s = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One request to a Service at zero on `daemon`, its checks (the instance that served was
/// started `kind`), and the Service's removal.
async fn skiff_once(
    b: &Bench,
    daemon: &Daemon,
    name: &str,
    kind: &str,
    problems: &mut Vec<String>,
) -> anyhow::Result<SkiffCold> {
    let request = http::get(&b.host(name), "/", true);
    let t_connect = Instant::now();
    let stream = TcpStream::connect(daemon.ingress)
        .await
        .context("connecting to the ingress")?;
    let mut conn = http::Conn::new(stream);
    let connect_ms = ms(t_connect.elapsed());
    let sent_at = jiff::Timestamp::now();
    let t0 = Instant::now();
    conn.send(&request).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), conn.answer())
        .await
        .context("no answer within 30 s")??;
    drop(conn);

    let scale = daemon.scale(name).await?;
    let all = daemon.instances(name).await?;
    // The sandbox parked after the start is not the instance that served.
    let instances: Vec<&serde_json::Value> = all
        .iter()
        .filter(|i| i["status"]["phase"] != "parked")
        .collect();
    let first = instances.first().copied();
    let sample = SkiffCold {
        service: name.to_owned(),
        revision: scale["revision"].as_str().unwrap_or_default().to_owned(),
        sent_at,
        connect_ms,
        ttfb_ms: ms(answer.first_byte - t0),
        full_ms: ms(answer.done - t0),
        status: answer.status,
        cold_starts: scale["coldStarts"].as_u64().unwrap_or(0),
        cold_start_requests: scale["coldStartRequests"].as_u64().unwrap_or(0),
        router_cold_ms: scale["lastColdStartSeconds"].as_f64().map(|s| s * 1000.0),
        instances: instances.len(),
        instance: first.and_then(|i| i["id"].as_str().map(str::to_owned)),
        start_to_ready_ms: first.and_then(|i| i["status"]["startToReadyMs"].as_f64()),
        decided_at: None,
        starting_at: None,
        served_at: None,
        gone_ms: 0.0,
        start_kind: first
            .and_then(|i| i["status"]["startKind"].as_str())
            .unwrap_or("fresh")
            .to_owned(),
        phases: first.map(|i| i["status"]["startup"].clone()),
    };
    if sample.status != 200 {
        problems.push(format!("{name} answered {}, not 200", sample.status));
    }
    if sample.start_kind != kind {
        problems.push(format!(
            "{name}: served by a {} start, not {kind}",
            sample.start_kind
        ));
    }
    if sample.cold_starts != 1 || sample.cold_start_requests != 1 || sample.instances != 1 {
        problems.push(format!(
            "{name}: {} cold start(s), {} request(s) waited through one, {} instance(s); expected 1, 1, 1",
            sample.cold_starts, sample.cold_start_requests, sample.instances
        ));
    }

    let ids: Vec<String> = all
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    let t_delete = Instant::now();
    daemon.delete(name).await?;
    daemon.wait_gone(&ids, Duration::from_secs(30)).await?;
    Ok(SkiffCold {
        gone_ms: ms(t_delete.elapsed()),
        ..sample
    })
}

/// Finds each run's events in the daemon's log.
fn attach_log(samples: &mut [SkiffCold], events: &[LogEvent]) {
    fn first<'e>(
        events: &'e [LogEvent],
        revision: &str,
        message: &str,
        also: impl Fn(&LogEvent) -> bool,
    ) -> Option<&'e LogEvent> {
        events.iter().find(|e| {
            e.message == message && e.fields["revision"].as_str() == Some(revision) && also(e)
        })
    }
    for s in samples {
        let rev = s.revision.clone();
        s.decided_at = first(events, &rev, "scale changed", |e| {
            e.fields["to"].as_u64().unwrap_or(0) >= 1
        })
        .map(|e| e.at);
        s.starting_at = first(events, &rev, "starting instance", |_| true)
            .or_else(|| first(events, &rev, "unparked", |_| true))
            .map(|e| e.at);
        s.served_at = first(events, &rev, "cold start served", |_| true).map(|e| e.at);
    }
}
