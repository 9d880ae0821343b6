//! Instance usage and cost, computed when `/metrics` is scraped: each instance's CPU and
//! memory from its cgroups (M6/M7), and each revision's billable instance time and cost
//! (M10) from its instances' lifetimes, what they are allotted, and the requests the router
//! answered, at configurable prices (Cloud Run's request-based ones by default).
//!
//! Billable time is an instance's lifetime, from its start to its stop, times what it is
//! allotted: CPU and memory limits, else requests, else [`DEFAULT_VCPU`] and
//! [`DEFAULT_MEMORY_BYTES`] (Cloud Run's defaults). Instances that stopped are summed per
//! revision in [`Billing`] as their stop event arrives; running ones count up to the scrape.
//! A revision's series go when it has neither a router pool nor an instance (it was
//! deleted); they start from zero after a daemon restart, as counters may.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use skiff_api::wire::Phase;
use skiff_router::{RevisionLabels, Router};
use skiff_runtime::instance::{InstanceEvent, InstancePlan};
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
            .filter(|i| i.status.phase != Phase::Stopped)
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
        for i in self.runtime.instances() {
            if i.status.phase == Phase::Stopped {
                continue;
            }
            let u = self.runtime.usage(&i.plan.id);
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

/// Registers the instance and cost metrics; returns what keeps billing in step with the
/// runtime's events ([`BillingFollower::follow`]).
pub fn register(
    metrics: &skiff_telemetry::Metrics,
    runtime: Arc<dyn InstanceRuntime>,
    router: Arc<Router>,
    prices: Prices,
) -> BillingFollower {
    let billing = Arc::new(Billing::default());
    metrics.register("instance", |r| {
        r.register_collector(Box::new(InstanceCollector {
            runtime: runtime.clone(),
        }))
    });
    metrics.register_root(|r| {
        r.register_collector(Box::new(CostCollector {
            billing: billing.clone(),
            runtime: runtime.clone(),
            router,
            prices,
        }))
    });
    BillingFollower { billing, runtime }
}

/// Closes instances' billable time as their stop events arrive.
pub struct BillingFollower {
    billing: Arc<Billing>,
    runtime: Arc<dyn InstanceRuntime>,
}

impl BillingFollower {
    /// The billing it keeps.
    pub fn billing(&self) -> Arc<Billing> {
        self.billing.clone()
    }

    /// Follows the runtime's events until `shutdown`.
    pub async fn follow(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut events = self.runtime.events();
        self.billing
            .observe(&self.runtime.instances(), jiff::Timestamp::now());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.recv() => match ev {
                    // A new instance is read whole from the runtime (its plan says what it
                    // is allotted); a stopped one is closed.
                    Ok(ev) if ev.status.phase != Phase::Stopped && !self.billing.knows(&ev.id) => {
                        self.billing.observe(&self.runtime.instances(), jiff::Timestamp::now())
                    }
                    Ok(ev) => self.billing.on_event(&ev, jiff::Timestamp::now()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self
                        .billing
                        .observe(&self.runtime.instances(), jiff::Timestamp::now()),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
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

    /// Latency SLOs name a bound of the router's histogram: both lists are one.
    #[test]
    fn slo_latency_bounds_are_the_routers_buckets() {
        assert_eq!(
            skiff_api::slo::LATENCY_BUCKETS_SECONDS,
            skiff_router::LATENCY_BUCKETS
        );
    }
}
