//! The daemon's history: every [`INTERVAL`], what each revision served (the router's
//! tallies) and used (billing and cgroups) goes into `skiff-history` in the data directory,
//! then the SLOs are evaluated over it ([`crate::slo::SloEngine`]).
//!
//! The history is opened off the start-up path (reading a large one takes seconds); until
//! it is open, samples wait in memory and queries answer that it is not ready. A file that
//! is not a usable history is moved aside (`history.db.unusable-<time>`) and a new one
//! started, with an error in the log: the daemon never refuses to start over its metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_api::wire::Phase;
use skiff_history::{History, HistoryError, Sample, SeriesKey};
use skiff_router::{RevisionLabels, Router};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::runtime::InstanceRuntime;
use crate::telemetry::{Billing, Used};

/// How often samples are taken and written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The history, once open (`None` before, or when it could not be opened).
#[derive(Clone, Default)]
pub struct SharedHistory(Arc<Mutex<Option<History>>>);

impl std::fmt::Debug for SharedHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedHistory")
    }
}

/// The history is not open (yet).
#[derive(Debug, thiserror::Error)]
#[error("the metrics history is not open yet (the daemon opens it at start)")]
pub struct NotOpen;

impl SharedHistory {
    /// Runs `f` on the history, on a blocking thread (queries read SQLite).
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut History) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<Result<T, HistoryError>, NotOpen> {
        let h = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
            g.as_mut().map(f).ok_or(NotOpen)
        })
        .await
        .unwrap_or(Err(NotOpen))
    }

    fn set(&self, h: History) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
    }
}

/// Opens the history in `dir`; an unusable file is moved aside and a new one started.
fn open(dir: &std::path::Path) -> Result<History, HistoryError> {
    match History::open(dir) {
        Err(e) if e.is_unusable_file() => {
            let file = dir.join(skiff_history::FILE_NAME);
            let aside = dir.join(format!(
                "{}.unusable-{}",
                skiff_history::FILE_NAME,
                jiff::Timestamp::now().as_second()
            ));
            error!(error = %skiff_telemetry::ErrorChain(&e), file = %file.display(), moved_to = %aside.display(),
                "the metrics history is unusable; moved aside, starting a new one (SLO budgets restart)");
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", file.display()));
                let _ = std::fs::rename(&from, format!("{}{suffix}", aside.display()));
            }
            History::open(dir)
        }
        other => other,
    }
}

/// Takes each interval's samples from the router, billing and the runtime.
pub struct Sampler {
    router: Arc<Router>,
    runtime: Arc<dyn InstanceRuntime>,
    billing: Arc<Billing>,
    last_used: HashMap<RevisionLabels, Used>,
    last_cpu: HashMap<String, u64>,
}

fn key_of(l: &RevisionLabels) -> SeriesKey {
    SeriesKey::new(&l.namespace, &l.service, &l.revision)
}

impl Sampler {
    /// A sampler over the router's pools, the runtime's instances and billing.
    pub fn new(
        router: Arc<Router>,
        runtime: Arc<dyn InstanceRuntime>,
        billing: Arc<Billing>,
    ) -> Self {
        Sampler {
            router,
            runtime,
            billing,
            last_used: HashMap::new(),
            last_cpu: HashMap::new(),
        }
    }

    /// What each revision did since the last call (revisions that did nothing are left out).
    pub fn sample(&mut self, now: jiff::Timestamp) -> Vec<(SeriesKey, Sample)> {
        let mut out: HashMap<RevisionLabels, Sample> = HashMap::new();
        for (_, pool) in self.router.pools() {
            let t = pool.handles.tally.take();
            if t.is_empty() {
                continue;
            }
            let s = out.entry(pool.handles.labels.clone()).or_default();
            s.requests_by_class = t.by_class;
            s.latency = t.latency;
            s.cold_starts = t.cold_start_requests;
            s.throttled = t.throttled;
        }
        let instances = self.runtime.instances();
        self.billing.observe(&instances, now);
        let used = self.billing.used(now, &|_| true);
        for (l, u) in &used {
            let last = self.last_used.get(l).copied().unwrap_or_default();
            let d = |now: f64, then: f64| (now - then).max(0.0);
            if u.instance_seconds > last.instance_seconds {
                let s = out.entry(l.clone()).or_default();
                s.instance_seconds = d(u.instance_seconds, last.instance_seconds);
                s.vcpu_seconds = d(u.vcpu_seconds, last.vcpu_seconds);
                s.gib_seconds = d(u.gib_seconds, last.gib_seconds);
            }
        }
        self.last_used = used;
        self.sample_instances(&instances, &mut out);
        out.into_iter().map(|(l, s)| (key_of(&l), s)).collect()
    }

    /// Instances running, their memory and the CPU they used.
    fn sample_instances(
        &mut self,
        instances: &[crate::runtime::InstanceInfo],
        out: &mut HashMap<RevisionLabels, Sample>,
    ) {
        let mut cpu_now = HashMap::with_capacity(instances.len());
        for i in instances
            .iter()
            .filter(|i| i.status.phase != Phase::Stopped)
        {
            let u = self.runtime.usage(&i.plan.id);
            let before = self.last_cpu.get(&i.plan.id).copied().unwrap_or(0);
            cpu_now.insert(i.plan.id.clone(), u.cpu_nanos);
            let l = RevisionLabels {
                namespace: i.plan.namespace.clone(),
                service: i.plan.service.clone(),
                revision: i.plan.revision.clone(),
            };
            let s = out.entry(l).or_default();
            s.instances_max += 1;
            s.memory_bytes_max += u.memory_bytes;
            s.cpu_used_seconds += u.cpu_nanos.saturating_sub(before) as f64 / 1e9;
        }
        self.last_cpu = cpu_now;
    }
}

/// Opens the history in `dir`, then every [`INTERVAL`] records the sampler's samples,
/// flushes, and has `after` evaluate what depends on it, until `shutdown` (when a last flush
/// writes what was taken).
pub async fn run(
    dir: PathBuf,
    history: SharedHistory,
    mut sampler: Sampler,
    after: Arc<dyn AfterFlush>,
    shutdown: CancellationToken,
) {
    match tokio::task::spawn_blocking(move || open(&dir)).await {
        Ok(Ok(h)) => history.set(h),
        Ok(Err(e)) => {
            error!(error = %skiff_telemetry::ErrorChain(&e), "the metrics history cannot be opened; SLOs, budgets and `skiff top` are unavailable");
            return;
        }
        Err(e) => {
            error!(error = %e, "opening the metrics history failed");
            return;
        }
    }
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let now = jiff::Timestamp::now();
        let samples = sampler.sample(now);
        let at = now.as_second();
        let written = history
            .with(move |h| {
                for (k, s) in &samples {
                    h.record(k, at, s);
                }
                // At shutdown the open interval is written too.
                h.flush(if stopping {
                    at + INTERVAL.as_secs() as i64
                } else {
                    at
                })
            })
            .await;
        if let Ok(Err(e)) = written {
            warn!(error = %skiff_telemetry::ErrorChain(&e), "writing the metrics history; the samples are kept and written again next time");
        }
        if stopping {
            return;
        }
        after.flushed(now).await;
    }
}

/// What runs after each flush (the SLO evaluation).
#[async_trait::async_trait]
pub trait AfterFlush: Send + Sync + 'static {
    /// The history has every sample up to `now`.
    async fn flushed(&self, now: jiff::Timestamp);
}
