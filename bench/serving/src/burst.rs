//! Burst: closed-loop clients against `GET /delay?ms=D` of skiff-test-server through the
//! ingress; `from` clients for `before` seconds, then a step to `to` clients for `after`
//! seconds. `containerConcurrency` makes each instance take at most `cc` requests at once,
//! so the step needs `ceil(to / cc)` instances and, until they are ready, requests wait in
//! skiff's activator. The scale API is read every 50 ms for the instance count timeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::bench::{Bench, PORT, progress};
use crate::http;

/// How the burst runs.
#[derive(Debug, Clone)]
pub struct BurstSettings {
    pub from: usize,
    pub to: usize,
    pub delay_ms: u64,
    /// `containerConcurrency`.
    pub cc: u32,
    /// `autoscaling.knative.dev/target-utilization-percentage`.
    pub utilization: u32,
    /// `autoscaling.knative.dev/window`, when set.
    pub window: Option<String>,
    pub before_s: f64,
    pub after_s: f64,
}

impl BurstSettings {
    /// Instances the load after the step needs.
    pub fn needed(&self) -> u32 {
        (self.to as u32).div_ceil(self.cc.max(1))
    }
}

/// One request: when it started (seconds since the clients began), how long it took, and its
/// status (`None`: the connection failed, or no answer within 30 s).
#[derive(Debug, Clone)]
pub struct Req {
    pub start_s: f64,
    pub latency_ms: f64,
    pub status: Option<u16>,
}

/// One reading of the scale API.
#[derive(Debug, Clone)]
pub struct ScaleSample {
    pub t_s: f64,
    pub desired: u64,
    pub ready: u64,
    pub waiting: u64,
    pub in_flight: u64,
    pub panicking: bool,
    /// The autoscaler's last panic-window and stable-window averages.
    pub panic_average: f64,
    pub stable_average: f64,
}

/// What the burst part measured.
#[derive(Debug, Clone)]
pub struct BurstResults {
    pub settings: BurstSettings,
    pub reqs: Vec<Req>,
    pub samples: Vec<ScaleSample>,
    /// When the step happened and the clients stopped (seconds since they began).
    pub step_s: f64,
    /// The wall clock of the step (the decisions' timestamps are wall clock).
    pub step_at: jiff::Timestamp,
    pub end_s: f64,
    /// First errors seen (at most 10).
    pub errors: Vec<String>,
    /// The scale API's decisions at the end (newest first).
    pub decisions: Vec<serde_json::Value>,
    pub total_s: f64,
}

impl BurstResults {
    /// Seconds from the step until the scale API first showed `ready ≥ n`.
    pub fn ready_at_least(&self, n: u64) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.t_s >= self.step_s && s.ready >= n)
            .map(|s| s.t_s - self.step_s)
    }

    /// Seconds from the step until ready first met what the autoscaler wanted, once it wanted
    /// at least what the load needs.
    pub fn ready_meets_desired(&self, needed: u64) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.t_s >= self.step_s && s.desired >= needed && s.ready >= s.desired)
            .map(|s| s.t_s - self.step_s)
    }

    /// The first time after the step the autoscaler wanted at least `n`.
    pub fn desired_at_least(&self, n: u64) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.t_s >= self.step_s && s.desired >= n)
            .map(|s| s.t_s - self.step_s)
    }
}

fn manifest(name: &str, image: &str, s: &BurstSettings) -> serde_json::Value {
    let mut annotations = json!({
        "autoscaling.knative.dev/target-utilization-percentage": s.utilization.to_string(),
    });
    if let Some(w) = &s.window {
        annotations["autoscaling.knative.dev/window"] = json!(w);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "template": {
            "metadata": { "annotations": annotations },
            "spec": {
                "containerConcurrency": s.cc,
                "timeoutSeconds": 30,
                "containers": [{
                    "image": image,
                    "ports": [{ "containerPort": PORT }],
                }],
            },
        }},
    })
}

/// One closed-loop client: one request at a time on a keep-alive connection (a new one after
/// an error or a `Connection: close`) until `stop`.
async fn client(
    ingress: std::net::SocketAddr,
    request: Arc<Vec<u8>>,
    begin: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Req>, Vec<String>) {
    let mut reqs = Vec::new();
    let mut errors = Vec::new();
    let mut conn: Option<http::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let result = async {
            let mut c = match conn.take() {
                Some(c) => c,
                None => http::Conn::new(
                    TcpStream::connect(ingress)
                        .await
                        .context("connecting to the ingress")?,
                ),
            };
            c.send(&request).await?;
            let a = c.answer().await?;
            anyhow::Ok((c, a))
        };
        match tokio::time::timeout(Duration::from_secs(30), result).await {
            Ok(Ok((c, a))) => {
                reqs.push(Req {
                    start_s: (t0 - begin).as_secs_f64(),
                    latency_ms: (a.done - t0).as_secs_f64() * 1000.0,
                    status: Some(a.status),
                });
                if a.keep_alive {
                    conn = Some(c);
                }
            }
            Ok(Err(e)) => {
                reqs.push(Req {
                    start_s: (t0 - begin).as_secs_f64(),
                    latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    status: None,
                });
                if errors.len() < 10 {
                    errors.push(format!("{e:#}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                reqs.push(Req {
                    start_s: (t0 - begin).as_secs_f64(),
                    latency_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    status: None,
                });
                if errors.len() < 10 {
                    errors.push("no answer within 30 s".into());
                }
            }
        }
    }
    (reqs, errors)
}

pub async fn run(b: &Bench, s: &BurstSettings) -> anyhow::Result<BurstResults> {
    let started = Instant::now();
    let name = b.service("burst");
    progress(format!(
        "burst: Service {name} (containerConcurrency {}, target utilization {}%{}), {} → {} clients, /delay?ms={}",
        s.cc,
        s.utilization,
        s.window
            .as_ref()
            .map(|w| format!(", window {w}"))
            .unwrap_or_default(),
        s.from,
        s.to,
        s.delay_ms
    ));
    b.daemon
        .apply(&manifest(&name, &b.server.reference, s))
        .await?;
    b.daemon
        .wait_ready(&name, 1, Duration::from_secs(60))
        .await?;

    let request = Arc::new(http::get(
        &b.host(&name),
        &format!("/delay?ms={}", s.delay_ms),
        false,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let begin = Instant::now();

    // The scale API, every 50 ms.
    let sampler = {
        let client = b.daemon.client.clone();
        let (stop, name) = (stop.clone(), name.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(s) = client.scale("default", &name).await {
                    let v = serde_json::to_value(s).unwrap_or_default();
                    let r = &v["revisions"][0];
                    let n = |k: &str| r[k].as_u64().unwrap_or(0);
                    out.push(ScaleSample {
                        t_s: begin.elapsed().as_secs_f64(),
                        desired: n("desired"),
                        ready: n("ready"),
                        waiting: n("waiting"),
                        in_flight: n("inFlight"),
                        panicking: r["panicking"].as_bool().unwrap_or(false),
                        panic_average: r["panicAverage"].as_f64().unwrap_or(f64::NAN),
                        stable_average: r["stableAverage"].as_f64().unwrap_or(f64::NAN),
                    });
                }
            }
            out
        })
    };

    let mut clients = JoinSet::new();
    for _ in 0..s.from {
        clients.spawn(client(
            b.daemon.ingress,
            request.clone(),
            begin,
            stop.clone(),
        ));
    }
    tokio::time::sleep_until((begin + Duration::from_secs_f64(s.before_s)).into()).await;
    let step_s = begin.elapsed().as_secs_f64();
    let step_at = jiff::Timestamp::now();
    progress(format!("burst: step to {} clients", s.to));
    for _ in s.from..s.to {
        clients.spawn(client(
            b.daemon.ingress,
            request.clone(),
            begin,
            stop.clone(),
        ));
    }
    tokio::time::sleep_until((begin + Duration::from_secs_f64(s.before_s + s.after_s)).into())
        .await;
    stop.store(true, Ordering::Relaxed);
    let end_s = begin.elapsed().as_secs_f64();
    let mut reqs = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = clients.join_next().await {
        let (rq, er) = r.context("a client task failed")?;
        reqs.extend(rq);
        errors.extend(er);
    }
    errors.truncate(10);
    let samples = sampler.await.context("the scale sampler failed")?;
    reqs.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));

    let scale = b.daemon.scale(&name).await?;
    let decisions = scale["decisions"].as_array().cloned().unwrap_or_default();
    let ids: Vec<String> = b
        .daemon
        .instances(&name)
        .await?
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    b.daemon.delete(&name).await?;
    b.daemon.wait_gone(&ids, Duration::from_secs(60)).await?;
    let out = BurstResults {
        settings: s.clone(),
        reqs,
        samples,
        step_s,
        step_at,
        end_s,
        errors,
        decisions,
        total_s: started.elapsed().as_secs_f64(),
    };
    progress(format!(
        "burst: {} requests, ready ≥ {} {} after the step",
        out.reqs.len(),
        s.needed(),
        out.ready_at_least(u64::from(s.needed()))
            .map_or("never".to_owned(), |t| format!("{t:.2} s"))
    ));
    Ok(out)
}
