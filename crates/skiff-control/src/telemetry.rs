//! Instance usage and cost, computed when `/metrics` is scraped: each instance's CPU and
//! memory from its cgroups (M6/M7), and each revision's billable instance time and cost
//! (M10) from its instances' lifetimes, what they are allotted, and the requests the router
//! answered, at configurable prices (Cloud Run's request-based ones by default). Beside
//! them: how instances' starts were spent, phase by phase ([`StartupMetrics`], M5, from the
//! runtime's events), the log lines the runtime stored and lost ([`LogCollector`], M13, read
//! at the scrape), and the job counters a jobs reconciler feeds ([`JobMetrics`], M9).
//!
//! Billable time is an instance's lifetime, from its start to its stop, times what it is
//! allotted: CPU and memory limits, else requests, else [`DEFAULT_VCPU`] and
//! [`DEFAULT_MEMORY_BYTES`] (Cloud Run's defaults). Instances that stopped are summed per
//! revision in [`Billing`] as their stop event arrives; running ones count up to the scrape.
//! A revision's series go when it has neither a router pool nor an instance (it was
//! deleted); they start from zero after a daemon restart, as counters may.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use skiff_api::wire::{InstanceStatus, Phase, StartKind};
use skiff_router::{RevisionLabels, Router};
use skiff_runtime::instance::{InstanceEvent, InstancePlan};
use skiff_runtime::logs::{LogCounts, LogSource};
use skiff_runtime::spec::CPU_PERIOD_US;

use crate::runtime::{InstanceInfo, InstanceRuntime};

/// vCPUs billed for a container with neither a CPU limit nor a request.
pub const DEFAULT_VCPU: f64 = 1.0;
/// Memory billed for a container with neither a memory limit nor a request (512 MiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Prices, in dollars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    /// Per vCPU-second.
    pub vcpu_second: f64,
    /// Per GiB-second.
    pub gib_second: f64,
    /// Per million requests.
    pub million_requests: f64,
}

impl Default for Prices {
    /// Cloud Run's request-based prices (tier 1): $0.000024 per vCPU-second, $0.0000025
    /// per GiB-second, $0.40 per million requests.
    fn default() -> Self {
        Prices {
            vcpu_second: 0.000_024,
            gib_second: 0.000_002_5,
            million_requests: 0.40,
        }
    }
}

/// What an instance is billed for while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allotment {
    /// vCPUs.
    pub vcpu: f64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Allotment {
    /// The sum over an instance's containers: limits, else requests, else the defaults.
    pub fn of(plan: &InstancePlan) -> Self {
        let mut a = Allotment {
            vcpu: 0.0,
            memory_bytes: 0,
        };
        for c in &plan.containers {
            a.vcpu += match (c.cpu_quota, c.cpu_shares) {
                (Some(q), _) => q as f64 / CPU_PERIOD_US as f64,
                (None, Some(shares)) => shares as f64 / 1024.0,
                (None, None) => DEFAULT_VCPU,
            };
            a.memory_bytes += c
                .memory_limit
                .or(c.memory_request)
                .and_then(|b| u64::try_from(b).ok())
                .unwrap_or(DEFAULT_MEMORY_BYTES);
        }
        a
    }
}

/// Usage summed over time: instance-seconds and what they were allotted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Used {
    /// Instance-seconds.
    pub instance_seconds: f64,
    /// vCPU-seconds.
    pub vcpu_seconds: f64,
    /// GiB-seconds.
    pub gib_seconds: f64,
}

impl Used {
    fn add(&mut self, seconds: f64, a: Allotment) {
        self.instance_seconds += seconds;
        self.vcpu_seconds += seconds * a.vcpu;
        self.gib_seconds += seconds * a.memory_bytes as f64 / GIB;
    }
}

/// A running instance as billing knows it.
#[derive(Debug, Clone)]
struct Live {
    labels: RevisionLabels,
    started: jiff::Timestamp,
    allotment: Allotment,
}

/// Each revision's usage by instances that stopped, and the instances running.
#[derive(Debug, Default)]
pub struct Billing {
    inner: Mutex<BillingState>,
}

#[derive(Debug, Default)]
struct BillingState {
    live: HashMap<String, Live>,
    closed: HashMap<RevisionLabels, Used>,
}

fn labels_of(plan: &InstancePlan) -> RevisionLabels {
    RevisionLabels {
        namespace: plan.namespace.clone(),
        service: plan.service.clone(),
        revision: plan.revision.clone(),
    }
}

fn started_at(i: &InstanceInfo) -> jiff::Timestamp {
    i.status
        .started_at
        .parse()
        .unwrap_or_else(|_| jiff::Timestamp::now())
}

fn seconds_between(from: jiff::Timestamp, to: jiff::Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()).max(0) as f64 / 1000.0
}

impl Billing {
    /// Takes note of the instances held now (new ones start counting; ones no longer held,
    /// or stopped, are closed at `now`).
    pub fn observe(&self, instances: &[InstanceInfo], now: jiff::Timestamp) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let running: HashMap<&str, &InstanceInfo> = instances
            .iter()
            .filter(|i| {
                !matches!(
                    i.status.phase,
                    Phase::Stopped | Phase::Parked | Phase::Frozen
                )
            })
            .map(|i| (i.plan.id.as_str(), i))
            .collect();
        let gone: Vec<String> = st
            .live
            .keys()
            .filter(|id| !running.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            st.close(&id, now);
        }
        for (id, i) in running {
            if !st.live.contains_key(id) {
                st.live.insert(
                    id.to_owned(),
                    Live {
                        labels: labels_of(&i.plan),
                        started: started_at(i),
                        allotment: Allotment::of(&i.plan),
                    },
                );
            }
        }
    }

    /// Whether the instance `id` is counted as running.
    pub fn knows(&self, id: &str) -> bool {
        let st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.live.contains_key(id)
    }

    /// An instance stopped (its event): its lifetime is closed at `now`.
    pub fn on_event(&self, ev: &InstanceEvent, now: jiff::Timestamp) {
        if ev.status.phase == Phase::Stopped {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.close(&ev.id, now);
        }
    }

    /// Each revision's usage up to `now`, instances running included; revisions not in
    /// `keep` and without a running instance are forgotten.
    pub fn used(
        &self,
        now: jiff::Timestamp,
        keep: &dyn Fn(&RevisionLabels) -> bool,
    ) -> HashMap<RevisionLabels, Used> {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = st.closed.clone();
        for l in st.live.values() {
            out.entry(l.labels.clone())
                .or_default()
                .add(seconds_between(l.started, now), l.allotment);
        }
        let running: std::collections::HashSet<RevisionLabels> =
            st.live.values().map(|l| l.labels.clone()).collect();
        st.closed.retain(|k, _| keep(k) || running.contains(k));
        out.retain(|k, _| keep(k) || running.contains(k));
        out
    }
}

impl BillingState {
    fn close(&mut self, id: &str, now: jiff::Timestamp) {
        if let Some(l) = self.live.remove(id) {
            self.closed
                .entry(l.labels)
                .or_default()
                .add(seconds_between(l.started, now), l.allotment);
        }
    }
}

/// Labels of instance metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    namespace: String,
    service: String,
    revision: String,
    instance: String,
}

/// Labels of cost.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    namespace: String,
    service: String,
    revision: String,
    resource: &'static str,
}

/// `skiff_instance_*`: each running instance's CPU, memory and OOM kills, read from its
/// cgroups at the scrape.
pub struct InstanceCollector {
    /// The runtime whose instances are read.
    pub runtime: Arc<dyn InstanceRuntime>,
}

impl std::fmt::Debug for InstanceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceCollector")
    }
}

type Sample<L> = (L, f64);

fn encode_family<'a, L: EncodeLabelSet + 'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit, kind): (&str, &str, Option<Unit>, MetricType),
    rows: impl Iterator<Item = (&'a L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, metric) in rows {
        metric.encode(e.encode_family(labels)?)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    rows: &[Sample<L>],
) -> impl Iterator<Item = (&L, ConstCounter<f64>)> {
    rows.iter().map(|(l, v)| (l, ConstCounter::new(*v)))
}

fn gauges<L: EncodeLabelSet>(rows: &[Sample<L>]) -> impl Iterator<Item = (&L, ConstGauge<f64>)> {
    rows.iter().map(|(l, v)| (l, ConstGauge::new(*v)))
}

impl Collector for InstanceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut cpu, mut mem, mut limit, mut oom) = (vec![], vec![], vec![], vec![]);
        let mut parked: HashMap<RevisionLabels, (f64, f64)> = HashMap::new();
        let mut frozen: HashMap<RevisionLabels, (f64, f64)> = HashMap::new();
        for i in self.runtime.instances() {
            if i.status.phase == Phase::Stopped {
                continue;
            }
            let u = self.runtime.usage(&i.plan.id);
            if i.status.phase == Phase::Parked {
                // Parked: counted apart, never as an instance (nor billed).
                let p = parked.entry(labels_of(&i.plan)).or_default();
                p.0 += 1.0;
                p.1 += u.memory_bytes as f64;
                continue;
            }
            if i.status.phase == Phase::Frozen {
                let f = frozen.entry(labels_of(&i.plan)).or_default();
                f.0 += 1.0;
                f.1 += u.memory_bytes as f64;
            }
            let l = InstanceLabels {
                namespace: i.plan.namespace.clone(),
                service: i.plan.service.clone(),
                revision: i.plan.revision.clone(),
                instance: i.plan.id.clone(),
            };
            cpu.push((l.clone(), u.cpu_nanos as f64 / 1e9));
            mem.push((l.clone(), u.memory_bytes as f64));
            let allotted = Allotment::of(&i.plan).memory_bytes;
            let lim = if u.memory_limit_bytes > 0 {
                u.memory_limit_bytes
            } else {
                allotted
            };
            limit.push((l.clone(), lim as f64));
            oom.push((l, u.oom_kills as f64));
        }
        use MetricType::{Counter, Gauge};
        let help = "CPU time used by the instance's containers";
        encode_family(
            &mut encoder,
            ("cpu", help, Some(Unit::Seconds), Counter),
            counters(&cpu),
        )?;
        let help = "Memory the instance's containers use now";
        encode_family(
            &mut encoder,
            ("memory", help, Some(Unit::Bytes), Gauge),
            gauges(&mem),
        )?;
        let help = "The instance's memory limit (or what it is billed for without one)";
        let desc = ("memory_limit", help, Some(Unit::Bytes), Gauge);
        encode_family(&mut encoder, desc, gauges(&limit))?;
        let help = "Containers of the instance the kernel killed for memory";
        encode_family(
            &mut encoder,
            ("oom_kills", help, None, Counter),
            counters(&oom),
        )?;
        let (count, memory): (Vec<Sample<RevisionLabels>>, Vec<Sample<RevisionLabels>>) = parked
            .into_iter()
            .map(|(l, (n, m))| ((l.clone(), n), (l, m)))
            .unzip();
        let help = "Parked sandboxes of the revision: created, their processes held before exec until a request wants one (not billed)";
        encode_family(
            &mut encoder,
            ("parked_sandboxes", help, None, Gauge),
            gauges(&count),
        )?;
        let help = "Memory the revision's parked sandboxes use (their cgroups: the held runtime init processes)";
        encode_family(
            &mut encoder,
            ("parked_memory", help, Some(Unit::Bytes), Gauge),
            gauges(&memory),
        )?;
        let (count, memory): (Vec<Sample<RevisionLabels>>, Vec<Sample<RevisionLabels>>) = frozen
            .into_iter()
            .map(|(l, (n, m))| ((l.clone(), n), (l, m)))
            .unzip();
        let help = "Frozen instances of the revision (skiff.dev/warm: frozen): kept whole, no CPU, thawed when wanted (not billed)";
        encode_family(&mut encoder, ("frozen", help, None, Gauge), gauges(&count))?;
        let help = "Memory the revision's frozen instances hold";
        encode_family(
            &mut encoder,
            ("frozen_memory", help, Some(Unit::Bytes), Gauge),
            gauges(&memory),
        )
    }
}

/// `skiff_billable_instance_seconds_total` and `skiff_cost_dollars_total{resource}` per
/// revision.
pub struct CostCollector {
    /// Usage by instances.
    pub billing: Arc<Billing>,
    /// The runtime, observed at each scrape.
    pub runtime: Arc<dyn InstanceRuntime>,
    /// The router, for request counts and which revisions exist.
    pub router: Arc<Router>,
    /// The prices.
    pub prices: Prices,
}

impl std::fmt::Debug for CostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CostCollector")
    }
}

impl Collector for CostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = jiff::Timestamp::now();
        self.billing.observe(&self.runtime.instances(), now);
        let pools: HashMap<RevisionLabels, u64> = self
            .router
            .pools()
            .into_iter()
            .map(|(_, p)| (p.handles.labels.clone(), p.handles.answered_total()))
            .collect();
        let mut used = self.billing.used(now, &|l| pools.contains_key(l));
        // A revision with a pool and no instance time yet still shows its request cost.
        for l in pools.keys() {
            used.entry(l.clone()).or_default();
        }
        let billable: Vec<Sample<RevisionLabels>> = used
            .iter()
            .map(|(l, u)| (l.clone(), u.instance_seconds))
            .collect();
        let p = self.prices;
        let mut cost = Vec::with_capacity(used.len() * 3);
        for (l, u) in &used {
            let requests = pools.get(l).copied().unwrap_or(0) as f64;
            for (resource, dollars) in [
                ("cpu", u.vcpu_seconds * p.vcpu_second),
                ("memory", u.gib_seconds * p.gib_second),
                ("requests", requests * p.million_requests / 1e6),
            ] {
                let labels = CostLabels {
                    namespace: l.namespace.clone(),
                    service: l.service.clone(),
                    revision: l.revision.clone(),
                    resource,
                };
                cost.push((labels, dollars));
            }
        }
        let help = "Instance time billed: each instance's lifetime";
        let desc = (
            "billable_instance",
            help,
            Some(Unit::Seconds),
            MetricType::Counter,
        );
        encode_family(&mut encoder, desc, counters(&billable))?;
        let help = "Cost at the configured prices, by resource (cpu, memory, requests)";
        let desc = ("cost_dollars", help, None, MetricType::Counter);
        encode_family(&mut encoder, desc, counters(&cost))
    }
}

/// What [`register`] made: the follower of the runtime's events, and the job counters.
pub struct Registered {
    /// Keeps billing and start-up durations in step with the runtime's events.
    pub follower: InstanceFollower,
    /// The job counters (M9), for the jobs reconciler.
    pub jobs: JobMetrics,
}

/// Registers the instance, cost, log and job metrics; returns what keeps billing and
/// start-up durations in step with the runtime's events ([`InstanceFollower::follow`]).
pub fn register(
    metrics: &skiff_telemetry::Metrics,
    runtime: Arc<dyn InstanceRuntime>,
    router: Arc<Router>,
    prices: Prices,
) -> Registered {
    let billing = Arc::new(Billing::default());
    let startup = Arc::new(StartupMetrics::default());
    metrics.register("instance", |r| {
        r.register_collector(Box::new(InstanceCollector {
            runtime: runtime.clone(),
        }));
        let (router, runtime) = (router.clone(), runtime.clone());
        r.register_collector(Box::new(StartupCollector {
            metrics: startup.clone(),
            exists: Box::new(move || existing_revisions(&router, &*runtime)),
        }));
    });
    metrics.register("log", |r| {
        r.register_collector(Box::new(LogCollector {
            runtime: runtime.clone(),
            router: router.clone(),
        }))
    });
    let jobs = metrics.register("job", JobMetrics::new);
    metrics.register_root(|r| {
        r.register_collector(Box::new(CostCollector {
            billing: billing.clone(),
            runtime: runtime.clone(),
            router,
            prices,
        }))
    });
    Registered {
        follower: InstanceFollower {
            billing,
            startup,
            runtime,
        },
        jobs,
    }
}

/// Follows the runtime's events: closes instances' billable time as they stop, and observes
/// their start-up phases.
pub struct InstanceFollower {
    billing: Arc<Billing>,
    startup: Arc<StartupMetrics>,
    runtime: Arc<dyn InstanceRuntime>,
}

impl InstanceFollower {
    /// The billing it keeps.
    pub fn billing(&self) -> Arc<Billing> {
        self.billing.clone()
    }

    /// The start-up phases it observes.
    pub fn startup(&self) -> Arc<StartupMetrics> {
        self.startup.clone()
    }

    /// Follows the runtime's events until `shutdown`.
    pub async fn follow(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut events = self.runtime.events();
        let now = jiff::Timestamp::now;
        let instances = self.runtime.instances();
        self.billing.observe(&instances, now());
        self.startup.resync(&instances);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => match ev {
                    // Jobs' tasks are nobody's serving instances: not billed as one.
                    Ok(ev) if ev.task.is_some() => {}
                    Ok(ev) => {
                        self.startup.on_event(&ev);
                        // A new instance is read whole from the runtime (its plan says what
                        // it is allotted); a stopped one is closed.
                        if ev.status.phase != Phase::Stopped && !self.billing.knows(&ev.id) {
                            self.billing.observe(&self.runtime.instances(), now())
                        } else {
                            self.billing.on_event(&ev, now())
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let instances = self.runtime.instances();
                        self.billing.observe(&instances, now());
                        self.startup.resync(&instances);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Bucket bounds of start-up phases, in seconds: 1 ms (a phase that costs nothing) to 60 s
/// (an instance slow to get ready).
pub const STARTUP_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Labels of start-up durations.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartupLabels {
    namespace: String,
    service: String,
    revision: String,
    /// `image`, `container`, `ready` or `total`.
    phase: &'static str,
    /// How the instance was started: `fresh`, `parked` or `frozen` (thawed).
    kind: &'static str,
}

/// The durations to observe for an instance in `status`, in seconds by phase: every phase
/// and the total once it is ready; image and container only once it stopped without being
/// ready; nothing before either, or for an instance without phases (re-adopted).
pub fn startup_observations(status: &InstanceStatus) -> Vec<(&'static str, f64)> {
    let Some(p) = &status.startup else {
        return Vec::new();
    };
    let (image, container) = (p.image_ms / 1000.0, p.container_ms / 1000.0);
    match (p.ready_ms, p.total_ms()) {
        (Some(ready), Some(total)) => vec![
            ("image", image),
            ("container", container),
            ("ready", ready / 1000.0),
            ("total", total / 1000.0),
        ],
        _ if status.phase == Phase::Stopped => vec![("image", image), ("container", container)],
        _ => Vec::new(),
    }
}

/// `skiff_instance_startup_duration_seconds{phase}` (M5): how each instance's start was
/// spent, observed once per instance, when it is first ready (or, never ready, when it
/// stops). Instances re-adopted after a restart have no phases and are not observed.
pub struct StartupMetrics {
    durations: Family<StartupLabels, Histogram>,
    /// The last [`RECENT_STARTS`] starts of each revision, newest last, for the dashboard.
    recent: Mutex<HashMap<RevisionLabels, VecDeque<RecentStart>>>,
    /// Instances observed and not stopped yet (so each is observed once).
    observed: Mutex<HashSet<String>>,
    /// The revisions with series, to remove them by once the revision is gone.
    revisions: Mutex<HashSet<RevisionLabels>>,
}

impl Default for StartupMetrics {
    fn default() -> Self {
        StartupMetrics {
            durations: Family::new_with_constructor(|| Histogram::new(STARTUP_BUCKETS)),
            recent: Mutex::default(),
            observed: Mutex::default(),
            revisions: Mutex::default(),
        }
    }
}

/// Starts kept per revision for [`StartupMetrics::recent`].
pub const RECENT_STARTS: usize = 100;

/// One instance's start, as [`StartupMetrics::recent`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentStart {
    /// The instance.
    pub instance: String,
    /// Its revision.
    pub revision: String,
    /// How its start was spent.
    pub phases: skiff_api::wire::StartupPhases,
    /// How it was started.
    pub kind: StartKind,
}

/// The phases, as labelled.
const STARTUP_PHASES: [&str; 4] = ["image", "container", "ready", "total"];

/// The (namespace, revision) of every revision that exists: with a router pool (every
/// stored revision has one, at zero too) or an instance.
fn existing_revisions(router: &Router, runtime: &dyn InstanceRuntime) -> HashSet<(String, String)> {
    router
        .pools()
        .into_iter()
        .map(|(k, _)| k)
        .chain(
            runtime
                .instances()
                .into_iter()
                .map(|i| (i.plan.namespace, i.plan.revision)),
        )
        .collect()
}

/// Encodes [`StartupMetrics`] at the scrape, after removing the series of revisions that no
/// longer exist (deleting a Service leaves none of its series).
struct StartupCollector {
    metrics: Arc<StartupMetrics>,
    /// The (namespace, revision) of the revisions that exist now.
    exists: Box<dyn Fn() -> HashSet<(String, String)> + Send + Sync>,
}

impl std::fmt::Debug for StartupCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartupCollector")
    }
}

impl Collector for StartupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let exists = (self.exists)();
        self.metrics
            .prune(&|l| exists.contains(&(l.namespace.clone(), l.revision.clone())));
        let help = "How an instance's start was spent, by phase: image (decision to plan, or to the release of a parked instance), container (to its processes running), ready (to first readiness), total; by kind of start: fresh or parked";
        let durations = &self.metrics.durations;
        let e = encoder.encode_descriptor(
            "startup_duration",
            help,
            Some(&Unit::Seconds),
            durations.metric_type(),
        )?;
        durations.encode(e)
    }
}

impl std::fmt::Debug for StartupMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartupMetrics")
    }
}

impl StartupMetrics {
    /// Removes the series of the revisions `exists` denies.
    pub fn prune(&self, exists: &dyn Fn(&RevisionLabels) -> bool) {
        let mut revisions = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|r, _| exists(r));
        revisions.retain(|r| {
            if exists(r) {
                return true;
            }
            for phase in STARTUP_PHASES {
                for kind in StartKind::ALL {
                    self.durations.remove(&StartupLabels {
                        namespace: r.namespace.clone(),
                        service: r.service.clone(),
                        revision: r.revision.clone(),
                        phase,
                        kind: kind.as_str(),
                    });
                }
            }
            false
        });
    }

    /// The last starts of Service `service`'s revisions (each revision's last
    /// [`RECENT_STARTS`]), newest first.
    pub fn recent(&self, namespace: &str, service: &str) -> Vec<RecentStart> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut starts: Vec<RecentStart> = recent
            .iter()
            .filter(|(k, _)| k.namespace == namespace && k.service == service)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        starts.sort_by(|a, b| {
            b.phases
                .scheduled_unix_nanos
                .cmp(&a.phases.scheduled_unix_nanos)
        });
        starts
    }

    /// Takes note of an instance's status change.
    pub fn on_event(&self, ev: &InstanceEvent) {
        self.on_status(&ev.id, &ev.namespace, &ev.service, &ev.revision, &ev.status);
    }

    /// Catches up with the instances held now (at start, and after missed events); forgets
    /// instances no longer held.
    pub fn resync(&self, instances: &[crate::runtime::InstanceInfo]) {
        {
            let held: HashSet<&str> = instances.iter().map(|i| i.plan.id.as_str()).collect();
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            observed.retain(|id| held.contains(id.as_str()));
        }
        for i in instances {
            let p = &i.plan;
            self.on_status(&p.id, &p.namespace, &p.service, &p.revision, &i.status);
        }
    }

    fn on_status(
        &self,
        id: &str,
        namespace: &str,
        service: &str,
        revision: &str,
        s: &InstanceStatus,
    ) {
        let stopped = s.phase == Phase::Stopped;
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        if s.phase == Phase::Frozen {
            // Its next start (a thaw) is observed again, as `frozen`.
            observed.remove(id);
            return;
        }
        if !observed.contains(id) {
            let rows = startup_observations(s);
            for (phase, seconds) in &rows {
                let labels = StartupLabels {
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                    revision: revision.to_owned(),
                    phase,
                    kind: s.start_kind.as_str(),
                };
                self.durations.get_or_create(&labels).observe(*seconds);
            }
            if let (false, Some(phases)) = (rows.is_empty(), &s.startup) {
                let labels = RevisionLabels {
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                    revision: revision.to_owned(),
                };
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                let starts = recent.entry(labels.clone()).or_default();
                if starts.len() == RECENT_STARTS {
                    starts.pop_front();
                }
                starts.push_back(RecentStart {
                    instance: id.to_owned(),
                    revision: revision.to_owned(),
                    phases: phases.clone(),
                    kind: s.start_kind,
                });
                drop(recent);
                self.revisions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(labels);
                if !stopped {
                    observed.insert(id.to_owned());
                }
            }
        }
        if stopped {
            observed.remove(id);
        }
    }
}

/// Labels of log lines.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogLineLabels {
    namespace: String,
    service: String,
    revision: String,
    /// `stdout` or `stderr`.
    stream: &'static str,
}

/// Labels of lost log lines.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogDropLabels {
    namespace: String,
    service: String,
    revision: String,
    /// `rotation` or `write_error`.
    reason: &'static str,
}

/// `skiff_log_lines_total{stream}` and `skiff_log_lines_dropped_total{reason}` (M13), per
/// revision, from the runtime's log store at the scrape: lines stored, by stream, and lines
/// lost, by reason (`rotation`: deleted with the oldest rotated file; `write_error`: never
/// written). Every series of a revision shows from its first line, at 0 until it counts. A
/// revision's series go with it (once it has neither a router pool nor an instance).
pub struct LogCollector {
    /// The runtime whose log store is read.
    pub runtime: Arc<dyn InstanceRuntime>,
    /// The router, for which revisions exist.
    pub router: Arc<Router>,
}

impl std::fmt::Debug for LogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogCollector")
    }
}

type LogRows = (Vec<Sample<LogLineLabels>>, Vec<Sample<LogDropLabels>>);

/// The samples of `counts`, for the revisions `keep` says exist.
fn log_rows(counts: &[(LogSource, LogCounts)], keep: &dyn Fn(&LogSource) -> bool) -> LogRows {
    let (mut lines, mut dropped) = (Vec::new(), Vec::new());
    for (src, c) in counts.iter().filter(|(src, _)| keep(src)) {
        for (stream, n) in [("stdout", c.stdout), ("stderr", c.stderr)] {
            let l = LogLineLabels {
                namespace: src.namespace.clone(),
                service: src.service.clone(),
                revision: src.revision.clone(),
                stream,
            };
            lines.push((l, n as f64));
        }
        for (reason, n) in [
            ("rotation", c.dropped_rotation),
            ("write_error", c.dropped_write_error),
        ] {
            let l = LogDropLabels {
                namespace: src.namespace.clone(),
                service: src.service.clone(),
                revision: src.revision.clone(),
                reason,
            };
            dropped.push((l, n as f64));
        }
    }
    (lines, dropped)
}

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let exists = existing_revisions(&self.router, &*self.runtime);
        let counts = self.runtime.log_counts();
        let (lines, dropped) = log_rows(&counts, &|s| {
            exists.contains(&(s.namespace.clone(), s.revision.clone()))
        });
        let help = "Lines of containers' output stored in the revision's log, by stream";
        let desc = ("lines", help, None, MetricType::Counter);
        encode_family(&mut encoder, desc, counters(&lines))?;
        let help = "Log lines lost: deleted by rotation beyond the files kept, or never written";
        let desc = ("lines_dropped", help, None, MetricType::Counter);
        encode_family(&mut encoder, desc, counters(&dropped))
    }
}

/// How a job's execution ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// Every task succeeded.
    Succeeded,
    /// A task failed past its retries.
    Failed,
    /// Cancelled before it ended.
    Cancelled,
}

impl ExecutionOutcome {
    /// Every outcome.
    pub const ALL: [ExecutionOutcome; 3] = [Self::Succeeded, Self::Failed, Self::Cancelled];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How one task attempt of a job's execution ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum TaskOutcome {
    /// It succeeded.
    Succeeded,
    /// It failed, with no retry left.
    Failed,
    /// Cancelled with its execution.
    Cancelled,
    /// It failed and is retried.
    Retried,
}

impl TaskOutcome {
    /// Every outcome.
    pub const ALL: [TaskOutcome; 4] = [
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Retried,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Retried => "retried",
        }
    }
}

/// Labels of job counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    namespace: String,
    job: String,
    outcome: &'static str,
}

fn job_labels(namespace: &str, job: &str, outcome: &'static str) -> JobLabels {
    JobLabels {
        namespace: namespace.to_owned(),
        job: job.to_owned(),
        outcome,
    }
}

/// `skiff_job_executions_total{namespace,job,outcome}` and
/// `skiff_job_tasks_total{namespace,job,outcome}` (M9), for the jobs reconciler to count
/// ended executions and task attempts. Listed on `/metrics` from the start (HELP and TYPE),
/// with no series until a job has one.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    executions: Family<JobLabels, Counter>,
    tasks: Family<JobLabels, Counter>,
}

/// Counter families listed even without a series: the registry leaves an empty family out,
/// and these should be there for rules and dashboards to name before the first job runs.
#[derive(Debug)]
struct Listed(Vec<(&'static str, &'static str, Family<JobLabels, Counter>)>);

impl Collector for Listed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, family) in &self.0 {
            let e = encoder.encode_descriptor(name, help, None, family.metric_type())?;
            family.encode(e)?;
        }
        Ok(())
    }
}

impl JobMetrics {
    /// Registers the counters in `registry` (give it a `skiff_job` sub-registry).
    pub fn new(registry: &mut Registry) -> Self {
        let m = JobMetrics {
            executions: Family::default(),
            tasks: Family::default(),
        };
        registry.register_collector(Box::new(Listed(vec![
            (
                "executions",
                "Job executions ended, by outcome (succeeded, failed, cancelled)",
                m.executions.clone(),
            ),
            (
                "tasks",
                "Job task attempts ended, by outcome (succeeded, failed, cancelled, retried)",
                m.tasks.clone(),
            ),
        ])));
        m
    }

    /// Makes every outcome's series of a job, at 0 (so `rate()` has them from the start).
    pub fn preset(&self, namespace: &str, job: &str) {
        for o in ExecutionOutcome::ALL {
            self.executions
                .get_or_create_owned(&job_labels(namespace, job, o.as_str()));
        }
        for o in TaskOutcome::ALL {
            self.tasks
                .get_or_create_owned(&job_labels(namespace, job, o.as_str()));
        }
    }

    /// Counts an execution of `job` that ended.
    pub fn execution(&self, namespace: &str, job: &str, outcome: ExecutionOutcome) {
        self.executions
            .get_or_create(&job_labels(namespace, job, outcome.as_str()))
            .inc();
    }

    /// Counts a task attempt of `job` that ended.
    pub fn task(&self, namespace: &str, job: &str, outcome: TaskOutcome) {
        self.tasks
            .get_or_create(&job_labels(namespace, job, outcome.as_str()))
            .inc();
    }

    /// Removes a deleted job's series.
    pub fn forget(&self, namespace: &str, job: &str) {
        for o in ExecutionOutcome::ALL {
            self.executions
                .remove(&job_labels(namespace, job, o.as_str()));
        }
        for o in TaskOutcome::ALL {
            self.tasks.remove(&job_labels(namespace, job, o.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, limits: (Option<i64>, Option<i64>)) -> InstancePlan {
        let mut p = skiff_test_utils::fakes::instance_plan(id);
        p.containers[0].cpu_quota = limits.0;
        p.containers[0].memory_limit = limits.1;
        p
    }

    /// Limits are billed when set, else the defaults (1 vCPU, 512 MiB).
    #[test]
    fn allotment_from_limits_else_defaults() {
        let a = Allotment::of(&plan("a", (Some(50_000), Some(256 << 20))));
        assert_eq!((a.vcpu, a.memory_bytes), (0.5, 256 << 20));
        let mut p = plan("b", (None, None));
        p.containers[0].cpu_shares = None;
        p.containers[0].memory_request = None;
        let a = Allotment::of(&p);
        assert_eq!(
            (a.vcpu, a.memory_bytes),
            (DEFAULT_VCPU, DEFAULT_MEMORY_BYTES)
        );
        p.containers[0].memory_request = Some(1 << 30);
        p.containers[0].cpu_shares = Some(2048);
        let a = Allotment::of(&p);
        assert_eq!((a.vcpu, a.memory_bytes), (2.0, 1 << 30));
    }

    fn info(id: &str, started: &str, phase: Phase) -> InstanceInfo {
        let status = skiff_runtime::instance::InstanceStatus {
            started_at: started.into(),
            phase,
            ..Default::default()
        };
        InstanceInfo {
            plan: plan(id, (Some(100_000), Some(1 << 30))),
            status,
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("a timestamp")
    }

    /// A running instance counts up to the time asked; a stopped one is closed once at its
    /// stop and keeps its total; a deleted revision's usage is forgotten.
    #[test]
    fn billing_counts_lifetimes() {
        let b = Billing::default();
        let t0 = "2026-12-04T10:00:00Z";
        b.observe(&[info("i1", t0, Phase::Running)], at(t0));
        let u = b.used(at("2026-12-04T10:00:10Z"), &|_| true);
        let one = u.values().next().expect("one revision");
        assert_eq!(
            (one.instance_seconds, one.vcpu_seconds, one.gib_seconds),
            (10.0, 10.0, 10.0)
        );
        b.observe(
            &[info("i1", t0, Phase::Stopped)],
            at("2026-12-04T10:00:20Z"),
        );
        b.observe(&[], at("2026-12-04T10:00:30Z"));
        let u = b.used(at("2026-12-04T10:01:00Z"), &|_| true);
        assert_eq!(u.values().next().expect("kept").instance_seconds, 20.0);
        assert!(b.used(at("2026-12-04T10:01:00Z"), &|_| false).is_empty());
        assert!(
            b.used(at("2026-12-04T10:01:00Z"), &|_| true).is_empty(),
            "forgotten"
        );
    }

    /// Cloud Run's example: one request at 1 vCPU and 512 MiB for 200 ms costs $0.00000545.
    #[test]
    fn prices_match_cloud_runs_example() {
        let p = Prices::default();
        let cost = 0.2 * p.vcpu_second + 0.2 * 0.5 * p.gib_second + p.million_requests / 1e6;
        assert!((cost - 0.000_005_45).abs() < 1e-12, "{cost}");
    }

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    fn phases(ready_ms: Option<f64>) -> skiff_api::wire::StartupPhases {
        skiff_api::wire::StartupPhases {
            scheduled_unix_nanos: 1,
            image_ms: 2.0,
            container_ms: 300.0,
            ready_ms,
        }
    }

    fn event(
        id: &str,
        phase: Phase,
        startup: Option<skiff_api::wire::StartupPhases>,
    ) -> InstanceEvent {
        InstanceEvent {
            id: id.into(),
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            task: None,
            status: InstanceStatus {
                phase,
                ready: startup.as_ref().is_some_and(|p| p.ready_ms.is_some()),
                startup,
                ..Default::default()
            },
        }
    }

    fn count_line(text: &str, phase: &str) -> Option<String> {
        let prefix = format!(
            r#"skiff_instance_startup_duration_seconds_count{{namespace="default",service="hello",revision="hello-00001",phase="{phase}",kind="fresh"}} "#
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }

    /// Each instance is observed once, at its first ready status (every phase and the
    /// total); one that stops without being ready gives image and container only; one
    /// without phases (re-adopted) gives nothing; nothing is observed before either. The
    /// revision's series go once it no longer exists.
    #[test]
    fn startup_phases_are_observed_once_per_instance() {
        let mut registry = Registry::with_prefix("skiff_instance");
        let m = Arc::new(StartupMetrics::default());
        let existing = Arc::new(Mutex::new(HashSet::from([(
            "default".to_owned(),
            "hello-00001".to_owned(),
        )])));
        let exists = existing.clone();
        registry.register_collector(Box::new(StartupCollector {
            metrics: m.clone(),
            exists: Box::new(move || exists.lock().expect("not poisoned").clone()),
        }));
        m.on_event(&event("a", Phase::Running, Some(phases(None))));
        assert_eq!(
            count_line(&render(&registry), "image"),
            None,
            "not ready yet"
        );
        m.on_event(&event("a", Phase::Running, Some(phases(Some(700.0)))));
        m.on_event(&event("a", Phase::Running, Some(phases(Some(700.0)))));
        m.on_event(&event("a", Phase::Stopping, Some(phases(Some(700.0)))));
        m.on_event(&event("a", Phase::Stopped, Some(phases(Some(700.0)))));
        let text = render(&registry);
        for phase in ["image", "container", "ready", "total"] {
            assert_eq!(
                count_line(&text, phase).as_deref(),
                Some("1"),
                "{phase}: {text}"
            );
        }
        assert!(
            text.contains(r#"skiff_instance_startup_duration_seconds_sum{namespace="default",service="hello",revision="hello-00001",phase="total",kind="fresh"} 1.002"#),
            "{text}"
        );
        // Never ready: image and container when it stops.
        m.on_event(&event("b", Phase::Running, Some(phases(None))));
        m.on_event(&event("b", Phase::Stopped, Some(phases(None))));
        // Re-adopted: no phases, nothing.
        m.on_event(&event("c", Phase::Running, None));
        let text = render(&registry);
        assert_eq!(count_line(&text, "image").as_deref(), Some("2"), "{text}");
        assert_eq!(count_line(&text, "container").as_deref(), Some("2"));
        assert_eq!(count_line(&text, "ready").as_deref(), Some("1"));
        // A resync (after missed events) does not observe an instance again.
        let mut held = info("a", "2026-12-04T10:00:00Z", Phase::Running);
        held.plan.id = "d".into();
        held.status.startup = Some(phases(Some(5.0)));
        m.resync(&[held.clone()]);
        m.resync(&[held]);
        assert_eq!(
            count_line(&render(&registry), "ready").as_deref(),
            Some("2")
        );
        // The revision is deleted: its series go, the family stays listed.
        existing.lock().expect("not poisoned").clear();
        let text = render(&registry);
        assert!(!text.contains("hello-00001"), "{text}");
        assert!(
            text.contains("# TYPE skiff_instance_startup_duration_seconds histogram"),
            "{text}"
        );
    }

    /// Each revision with lines has every stream and reason, at 0 until it counts; a
    /// revision that no longer exists shows nothing.
    #[test]
    fn log_counts_become_series_of_existing_revisions() {
        let src = |rev: &str| LogSource {
            namespace: "default".into(),
            service: "hello".into(),
            revision: rev.into(),
        };
        let counts = vec![
            (
                src("hello-00001"),
                LogCounts {
                    stdout: 5,
                    stderr: 0,
                    dropped_rotation: 2,
                    dropped_write_error: 0,
                },
            ),
            (src("hello-00000"), LogCounts::default()),
        ];
        let (lines, dropped) = log_rows(&counts, &|s| s.revision == "hello-00001");
        let lines: Vec<(&str, f64)> = lines.iter().map(|(l, v)| (l.stream, *v)).collect();
        assert_eq!(lines, vec![("stdout", 5.0), ("stderr", 0.0)]);
        let dropped: Vec<(&str, &str, f64)> = dropped
            .iter()
            .map(|(l, v)| (l.service.as_str(), l.reason, *v))
            .collect();
        assert_eq!(
            dropped,
            vec![("hello", "rotation", 2.0), ("hello", "write_error", 0.0)]
        );
    }

    /// The job counters are on /metrics from the start with no series; a job's series are
    /// made at 0, count by outcome and go with the job.
    #[test]
    fn job_counters_are_registered_and_count() {
        let mut registry = Registry::with_prefix("skiff_job");
        let m = JobMetrics::new(&mut registry);
        let text = render(&registry);
        for name in ["skiff_job_executions", "skiff_job_tasks"] {
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
            assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
        }
        assert!(!text.contains("outcome="), "{text}");
        m.preset("default", "nightly");
        m.execution("default", "nightly", ExecutionOutcome::Failed);
        m.task("default", "nightly", TaskOutcome::Retried);
        m.task("default", "nightly", TaskOutcome::Retried);
        let text = render(&registry);
        for (line, n) in [
            (
                r#"skiff_job_executions_total{namespace="default",job="nightly",outcome="failed"}"#,
                1,
            ),
            (
                r#"skiff_job_executions_total{namespace="default",job="nightly",outcome="succeeded"}"#,
                0,
            ),
            (
                r#"skiff_job_executions_total{namespace="default",job="nightly",outcome="cancelled"}"#,
                0,
            ),
            (
                r#"skiff_job_tasks_total{namespace="default",job="nightly",outcome="retried"}"#,
                2,
            ),
            (
                r#"skiff_job_tasks_total{namespace="default",job="nightly",outcome="succeeded"}"#,
                0,
            ),
        ] {
            assert!(text.contains(&format!("{line} {n}")), "{line} {n}: {text}");
        }
        m.forget("default", "nightly");
        assert!(!render(&registry).contains("nightly"));
    }

    /// Latency SLOs name a bound of the router's histogram: both lists are one.
    #[test]
    fn slo_latency_bounds_are_the_routers_buckets() {
        assert_eq!(
            skiff_api::slo::LATENCY_BUCKETS_SECONDS,
            skiff_router::LATENCY_BUCKETS
        );
    }
}
