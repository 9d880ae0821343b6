//! Serving: ties the router, the autoscaler and the runtime together.
//!
//! # Design
//! * **Routes.** The route reconciler ([`crate::routing`]) hands [`Serving::update`] the part
//!   of the route table ([`crate::routes::build_service`]) of each Service that changed; only
//!   those hosts and pools change in the router, and the autoscalers follow. The instance reconciler drains a deleted revision's instances
//!   only once the router has let the revision go.
//! * **Readiness.** Runtime events move instances in and out of their revision's pool: an
//!   instance takes requests once ready and until it is not (or is being removed).
//! * **Autoscaling.** Each revision has an [`Autoscaler`] (Knative's KPA, a pure function).
//!   Every second the router's pools hand over a bucket of average concurrency and request
//!   count; every 2 s each revision gets a decision. A request that has to wait pokes its
//!   revision's autoscaler at once, so a revision at zero starts an instance without waiting
//!   for the tick. A decision that changes a revision's scale queues it with the instance
//!   reconciler. A revision that no traffic target names goes to zero at once (Knative's
//!   unreachable revisions), unless requests still wait for it.
//! * **Budgets.** While a Service's cost budget is spent (as the SLO engine last published
//!   it, [`Serving::follow_budgets`]), its revisions are held at the instances they had
//!   ([`crate::budget::cap`]) and their pools say so, so that the router refuses what they
//!   cannot take with 429 `budget`. A change of the published set re-decides the revisions
//!   of the Services it concerns at once.
//! * **Visible state.** The last decisions of each revision, with their reasons, and its cold
//!   starts are kept in memory for `skiff describe` and exported as metrics.
//! * **Metric series follow revisions.** A revision's autoscaler series (and, through
//!   [`Router::remove_pools`], its router series) are removed when [`Serving::update`] no
//!   longer finds the revision, that is when it or its Service is deleted; a revision at zero
//!   keeps them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use skiff_api::autoscaling::AutoscalingSettings;
use skiff_api::object::Revision;
use skiff_api::wire::{DecisionView, RevisionScale};
use skiff_autoscaler::{Aggregation, Autoscaler, Bucket, Decision, Metric, Settings};
use skiff_router::{RevisionKey, RevisionLabels, Router};
use skiff_runtime::instance::{InstanceEvent, Phase};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::budget::{BudgetStops, cap};
use crate::routes::RouteTable;
use crate::runtime::InstanceRuntime;

/// What [`Serving`] calls when a revision's desired scale changes.
pub type ScaledHook = Box<dyn Fn(&RevisionKey) + Send + Sync>;

/// How many decisions that changed the desired scale are kept per revision.
const DECISION_HISTORY: usize = 20;

/// The autoscaler's metrics under `skiff_autoscaler_`, one series per revision and family.
#[derive(Debug, Clone)]
struct AutoscalerMetrics {
    desired: Family<RevisionLabels, Gauge>,
    ready: Family<RevisionLabels, Gauge>,
    panic: Family<RevisionLabels, Gauge>,
    waiting: Family<RevisionLabels, Gauge>,
    stable_concurrency: Family<RevisionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    panic_concurrency: Family<RevisionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    decisions: Family<RevisionLabels, Counter>,
    reaction: Family<RevisionLabels, Histogram>,
}

fn reaction_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.01, 2.0, 14,
    ))
}

impl AutoscalerMetrics {
    fn new(r: &mut Registry) -> Self {
        let m = AutoscalerMetrics {
            desired: Family::default(),
            ready: Family::default(),
            panic: Family::default(),
            waiting: Family::default(),
            stable_concurrency: Family::default(),
            panic_concurrency: Family::default(),
            decisions: Family::default(),
            reaction: Family::new_with_constructor(reaction_buckets),
        };
        r.register(
            "desired_instances",
            "Instances the autoscaler wants per revision",
            m.desired.clone(),
        );
        r.register(
            "ready_instances",
            "Ready instances per revision",
            m.ready.clone(),
        );
        r.register(
            "panic_mode",
            "1 while the revision's autoscaler is in panic mode",
            m.panic.clone(),
        );
        r.register(
            "waiting_requests",
            "Requests waiting in the activator per revision",
            m.waiting.clone(),
        );
        r.register(
            "stable_metric",
            "Stable-window average of the scaling metric",
            m.stable_concurrency.clone(),
        );
        r.register(
            "panic_metric",
            "Panic-window average of the scaling metric",
            m.panic_concurrency.clone(),
        );
        r.register(
            "scale_changes",
            "Decisions that changed a revision's desired scale",
            m.decisions.clone(),
        );
        r.register_with_unit(
            "scale_up_reaction",
            "From a scale-up's cause (the first waiting request, or the decision) to its instances ready",
            prometheus_client::registry::Unit::Seconds,
            m.reaction.clone(),
        );
        m
    }

    /// Removes a revision's series from every family.
    fn forget_revision(&self, rl: &RevisionLabels) {
        self.desired.remove(rl);
        self.ready.remove(rl);
        self.panic.remove(rl);
        self.waiting.remove(rl);
        self.stable_concurrency.remove(rl);
        self.panic_concurrency.remove(rl);
        self.reaction.remove(rl);
        self.decisions.remove(rl);
    }
}

struct Scaler {
    service: String,
    autoscaler: Autoscaler,
    settings: Settings,
    last: Option<Decision>,
    history: VecDeque<DecisionView>,
    /// What the revision is held at while its Service's budget is spent.
    budget_hold: Option<u32>,
    /// Whether the hold kept the last decision below the autoscaler's.
    held: bool,
}

impl Scaler {
    fn new(r: &Revision, autoscaler: Autoscaler, settings: Settings) -> Self {
        Scaler {
            service: r.service_name().unwrap_or_default().to_owned(),
            autoscaler,
            settings,
            last: None,
            history: VecDeque::new(),
            budget_hold: None,
            held: false,
        }
    }

    /// The labels of the revision's series.
    fn labels(&self, key: &RevisionKey) -> RevisionLabels {
        RevisionLabels {
            namespace: key.0.clone(),
            service: self.service.clone(),
            revision: key.1.clone(),
        }
    }
}

/// A revision's age, so that after a restart old revisions do not get their initial scale
/// again.
fn age_ms(r: &Revision) -> u64 {
    r.metadata
        .creation_timestamp
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| jiff::Timestamp::now().duration_since(t).try_into().ok())
        .map_or(0, |d: Duration| d.as_millis() as u64)
}

/// (namespace, Service).
pub type ServiceKey = (String, String);

/// The instances a revision has (starting or running, not stopping), which a spent budget
/// holds it at.
fn live_instances(runtime: &dyn InstanceRuntime, key: &RevisionKey) -> u32 {
    let n = runtime
        .instances()
        .iter()
        .filter(|i| i.plan.namespace == key.0 && i.plan.revision == key.1)
        .filter(|i| !matches!(i.status.phase, Phase::Stopping | Phase::Stopped))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One Service's share of the route table, as the route reconciler built it.
#[derive(Debug)]
pub struct ServiceRoutes<'a> {
    /// The Service (which may be deleted: then `table` has only its revisions' pools).
    pub key: ServiceKey,
    /// Its hosts, its revisions' pools and which of them are reachable.
    pub table: RouteTable,
    /// Its revisions.
    pub revisions: Vec<&'a Revision>,
}

/// What each Service last gave the router, so an update touches only what changed.
#[derive(Default)]
struct Applied {
    services: HashMap<ServiceKey, Given>,
    /// Which Service a host belongs to (the last one to claim it, when two make the same
    /// host: a tag `b` on `a` and a Service `b-a`).
    owners: HashMap<String, ServiceKey>,
}

#[derive(Default)]
struct Given {
    hosts: Vec<String>,
    pools: Vec<RevisionKey>,
    reachable: Vec<RevisionKey>,
}

/// The router changes of one update.
#[derive(Default)]
struct Delta {
    hosts: HashMap<String, skiff_router::HostRoute>,
    hosts_gone: Vec<String>,
    pools_gone: Vec<RevisionKey>,
    pools_new: Vec<RevisionKey>,
    unreachable: Vec<RevisionKey>,
}

impl Applied {
    /// Sets the pools of one Service's `c` in the router and records what else changes.
    fn apply(&mut self, router: &Router, c: &ServiceRoutes<'_>, delta: &mut Delta) {
        let old = self.services.remove(&c.key).unwrap_or_default();
        let mut pools = Vec::with_capacity(c.table.pools.len());
        for p in &c.table.pools {
            let key = (p.namespace.clone(), p.revision.clone());
            if router.set_pool(p.clone()) {
                delta.pools_new.push(key.clone());
            }
            pools.push(key);
        }
        delta
            .pools_gone
            .extend(old.pools.into_iter().filter(|k| !pools.contains(k)));
        delta.unreachable.extend(old.reachable);
        for h in old.hosts {
            if !c.table.hosts.contains_key(&h) && self.owners.get(&h) == Some(&c.key) {
                self.owners.remove(&h);
                delta.hosts_gone.push(h);
            }
        }
        let hosts: Vec<String> = c.table.hosts.keys().cloned().collect();
        for (h, route) in &c.table.hosts {
            self.owners.insert(h.clone(), c.key.clone());
            delta.hosts.insert(h.clone(), route.clone());
        }
        if !(hosts.is_empty() && pools.is_empty()) {
            let reachable = c.table.reachable.iter().cloned().collect();
            self.services.insert(
                c.key.clone(),
                Given {
                    hosts,
                    pools,
                    reachable,
                },
            );
        }
    }
}

#[derive(Default)]
struct State {
    scalers: HashMap<RevisionKey, Scaler>,
    reachable: HashSet<RevisionKey>,
    /// The Services whose cost budget is spent, as the SLO engine last published them.
    budget_stops: Arc<BudgetStops>,
    /// Events queued for delivery to each Service (a Trigger's or PingSource's backlog).
    backlogs: HashMap<ServiceKey, u64>,
}

/// Instances a backlog of `backlog` events asks for (KEDA's `ceil(queue length /
/// target)`), at most `max_scale` (0: no maximum).
pub fn backlog_demand(backlog: u64, target: f64, max_scale: u32) -> u32 {
    if backlog == 0 {
        return 0;
    }
    let want = (backlog as f64 / target.max(1.0)).ceil().max(1.0);
    let want = if want >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        want as u32
    };
    if max_scale > 0 {
        want.min(max_scale)
    } else {
        want
    }
}

/// Serving settings from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// Knative's `scale-to-zero-grace-period`.
    pub scale_to_zero_grace: Duration,
    /// Knative's `enable-scale-to-zero`: when false, every revision keeps an instance.
    pub enable_scale_to_zero: bool,
    /// Knative's `max-scale-up-rate`.
    pub max_scale_up_rate: f64,
    /// Knative's `max-scale-down-rate`.
    pub max_scale_down_rate: f64,
}

impl Default for ServingConfig {
    /// Knative's defaults.
    fn default() -> Self {
        let d = Settings::default();
        ServingConfig {
            scale_to_zero_grace: Duration::from_millis(d.scale_to_zero_grace_ms),
            enable_scale_to_zero: true,
            max_scale_up_rate: d.max_scale_up_rate,
            max_scale_down_rate: d.max_scale_down_rate,
        }
    }
}

/// The router, the autoscalers and the runtime, together.
pub struct Serving {
    router: Arc<Router>,
    runtime: Arc<dyn InstanceRuntime>,
    cfg: ServingConfig,
    epoch: Instant,
    state: Mutex<State>,
    applied: Mutex<Applied>,
    /// Called with each revision whose desired scale changed (queues it with the instance
    /// reconciler).
    on_scaled: std::sync::OnceLock<ScaledHook>,
    metrics: AutoscalerMetrics,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Serving")
    }
}

/// The autoscaler settings of a revision.
pub fn settings(
    a: &AutoscalingSettings,
    container_concurrency: u32,
    cfg: &ServingConfig,
) -> Settings {
    let d = Settings::default();
    Settings {
        metric: match a.metric {
            Some(skiff_api::autoscaling::Metric::Rps) => Metric::Rps,
            _ => Metric::Concurrency,
        },
        container_concurrency,
        target: a.target,
        utilization: a
            .target_utilization_percentage
            .map_or(d.utilization, |p| p / 100.0),
        stable_window_ms: a.window_seconds.map_or(d.stable_window_ms, |s| s * 1000),
        panic_window_fraction: a
            .panic_window_percentage
            .map_or(d.panic_window_fraction, |p| p / 100.0),
        panic_threshold: a
            .panic_threshold_percentage
            .map_or(d.panic_threshold, |p| p / 100.0),
        max_scale_up_rate: cfg.max_scale_up_rate,
        max_scale_down_rate: cfg.max_scale_down_rate,
        // With scale to zero disabled (cluster-wide), one instance is the floor.
        min_scale: a
            .min_scale
            .unwrap_or(d.min_scale)
            .max(u32::from(!cfg.enable_scale_to_zero)),
        max_scale: a.max_scale.unwrap_or(d.max_scale),
        initial_scale: a.initial_scale.unwrap_or(d.initial_scale),
        activation_scale: a.activation_scale.unwrap_or(d.activation_scale),
        scale_down_delay_ms: a.scale_down_delay_seconds.map_or(0, |s| s * 1000),
        scale_to_zero_grace_ms: cfg.scale_to_zero_grace.as_millis() as u64,
        scale_to_zero_retention_ms: a.scale_to_zero_retention_ms.unwrap_or(0),
        aggregation: match a.metric_aggregation {
            Some(skiff_api::autoscaling::Aggregation::WeightedExponential) => {
                Aggregation::WeightedExponential
            }
            _ => Aggregation::Linear,
        },
    }
}

impl Serving {
    /// Serving over `router` and `runtime`.
    pub fn new(
        router: Arc<Router>,
        runtime: Arc<dyn InstanceRuntime>,
        cfg: ServingConfig,
        metrics: &skiff_telemetry::Metrics,
    ) -> Arc<Serving> {
        Arc::new(Serving {
            router,
            runtime,
            cfg,
            epoch: Instant::now(),
            state: Mutex::default(),
            applied: Mutex::default(),
            on_scaled: std::sync::OnceLock::new(),
            metrics: metrics.register("autoscaler", AutoscalerMetrics::new),
        })
    }

    /// Sets what is called when a revision's desired scale changes (once).
    pub fn on_scaled(&self, hook: ScaledHook) {
        let _ = self.on_scaled.set(hook);
    }

    fn scaled(&self, key: &RevisionKey) {
        if let Some(hook) = self.on_scaled.get() {
            hook(key);
        }
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the router and the autoscalers in line with the Services in `changed` (each
    /// with the part of the route table it makes and its revisions); with `full`, every
    /// Service not in `changed` is gone. Costs what changed, not every Service.
    pub fn update(&self, changed: Vec<ServiceRoutes<'_>>, full: bool) {
        let mut applied = self.applied();
        let mut changed = changed;
        if full {
            let named: HashSet<&ServiceKey> = changed.iter().map(|c| &c.key).collect();
            let gone: Vec<ServiceKey> = applied
                .services
                .keys()
                .filter(|k| !named.contains(k))
                .cloned()
                .collect();
            changed.extend(gone.into_iter().map(|key| ServiceRoutes {
                key,
                table: RouteTable::default(),
                revisions: Vec::new(),
            }));
        }
        let mut delta = Delta::default();
        for c in &changed {
            applied.apply(&self.router, c, &mut delta);
        }
        drop(applied);
        let hosts = std::mem::take(&mut delta.hosts);
        self.router.update_routes(&delta.hosts_gone, hosts);
        self.router.remove_pools(&delta.pools_gone);
        let new = self.update_scalers(&changed, &delta);
        // A new revision gets its initial scale now, not at the next tick.
        for k in &new {
            if self.decide(k) {
                self.scaled(k);
            }
        }
        if !delta.pools_new.is_empty() {
            self.sync_instances_of(&delta.pools_new.into_iter().collect());
        }
    }

    /// Drops the autoscalers of gone revisions, makes or updates those of `changed`, and
    /// moves reachability; returns the revisions that are new.
    fn update_scalers(&self, changed: &[ServiceRoutes<'_>], delta: &Delta) -> Vec<RevisionKey> {
        let now = self.now_ms();
        let mut new = Vec::new();
        // Under the state lock, as `decide` sets the series: a deleted revision's are not
        // made again.
        let mut st = self.state();
        for k in &delta.pools_gone {
            if let Some(sc) = st.scalers.remove(k) {
                self.metrics.forget_revision(&sc.labels(k));
            }
        }
        for k in &delta.unreachable {
            st.reachable.remove(k);
        }
        for c in changed {
            st.reachable.extend(c.table.reachable.iter().cloned());
            for r in &c.revisions {
                let key = (r.metadata.namespace.clone(), r.metadata.name.clone());
                let cc = r
                    .spec
                    .container_concurrency
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(0);
                let s = settings(&r.autoscaling, cc, &self.cfg);
                match st.scalers.get_mut(&key) {
                    Some(sc) => sc.settings = s,
                    None => {
                        new.push(key.clone());
                        st.scalers
                            .insert(key, Scaler::new(r, Autoscaler::with_age(now, age_ms(r)), s));
                    }
                }
            }
        }
        new
    }

    /// Puts every ready instance in its pool and takes the others out.
    pub fn sync_instances(&self) {
        let all = self.runtime.instances();
        let live: HashSet<String> = all.iter().map(|i| i.plan.id.clone()).collect();
        for id in self.router.instance_ids() {
            if !live.contains(&id) {
                self.router.forget(&id);
            }
        }
        for i in all {
            self.apply_info(i);
        }
    }

    /// Puts the ready instances of new pools in them (instances that became ready before
    /// their revision had a pool).
    fn sync_instances_of(&self, pools: &HashSet<RevisionKey>) {
        for i in self.runtime.instances() {
            if pools.contains(&(i.plan.namespace.clone(), i.plan.revision.clone())) {
                self.apply_info(i);
            }
        }
    }

    /// [`Serving::apply`] of an instance's current state.
    fn apply_info(&self, i: crate::runtime::InstanceInfo) {
        self.apply(&InstanceEvent {
            id: i.plan.id,
            namespace: i.plan.namespace,
            service: i.plan.service,
            revision: i.plan.revision,
            task: i.plan.task,
            status: i.status,
        });
    }

    fn apply(&self, ev: &InstanceEvent) {
        if ev.task.is_some() {
            return;
        }
        match ev.status.phase {
            Phase::Running if ev.status.ready => {
                if let Some(netns) = self.runtime.netns(&ev.id) {
                    self.router.instance_ready(
                        &(ev.namespace.clone(), ev.revision.clone()),
                        &ev.id,
                        netns,
                    );
                }
            }
            Phase::Stopped => self.router.forget(&ev.id),
            _ => self.router.instance_gone(&ev.id),
        }
    }

    /// Follows runtime events into the router until `shutdown`.
    pub async fn follow_runtime(self: Arc<Self>, shutdown: CancellationToken) {
        let mut events = self.runtime.events();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.apply(&ev),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.sync_instances(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Takes the event backlog of every Service with one (absent: none), and re-decides at
    /// once the revisions of the Services whose backlog appeared, changed or went.
    pub fn set_backlogs(&self, backlogs: HashMap<ServiceKey, u64>) {
        let keys: Vec<RevisionKey> = {
            let mut st = self.state();
            let old = std::mem::replace(&mut st.backlogs, backlogs);
            st.scalers
                .iter()
                .filter(|(k, sc)| {
                    let svc = (k.0.clone(), sc.service.clone());
                    old.get(&svc) != st.backlogs.get(&svc)
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in &keys {
            if self.decide(k) {
                self.scaled(k);
            }
        }
    }

    /// Follows the Services whose cost budget is spent, as the SLO engine publishes them,
    /// until `shutdown`.
    pub async fn follow_budgets(
        self: Arc<Self>,
        mut stops: watch::Receiver<Arc<BudgetStops>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let now = stops.borrow_and_update().clone();
            self.set_budget_stops(now);
            tokio::select! {
                r = stops.changed() => if r.is_err() { break },
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Takes the Services whose cost budget is spent, and re-decides at once the revisions
    /// of those whose stop began, ended or changed.
    pub fn set_budget_stops(&self, stops: Arc<BudgetStops>) {
        let keys: Vec<RevisionKey> = {
            let mut st = self.state();
            let old = std::mem::replace(&mut st.budget_stops, stops.clone());
            st.scalers
                .iter()
                .filter(|(k, sc)| {
                    let svc = (k.0.clone(), sc.service.clone());
                    old.get(&svc) != stops.get(&svc)
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in &keys {
            if self.decide(k) {
                self.scaled(k);
            }
        }
    }

    /// Why scale-up of a Service is stopped, if its cost budget is spent.
    pub fn budget_stop_of(&self, ns: &str, svc: &str) -> Option<String> {
        self.state()
            .budget_stops
            .get(&(ns.to_owned(), svc.to_owned()))
            .map(|s| s.describe())
    }

    /// Drains an instance: no new requests, and those in flight finish (up to `timeout`).
    pub async fn drain(&self, id: &str, timeout: Duration) {
        self.router.drain(id, timeout).await;
    }

    /// Whether the autoscaler has decided a scale for a revision yet (it decides once the
    /// route reconciler has handed it the revision).
    pub fn has_decided(&self, key: &RevisionKey) -> bool {
        self.state()
            .scalers
            .get(key)
            .is_some_and(|s| s.last.is_some())
    }

    /// The autoscaler's desired scale of a revision (0 for one it does not know).
    pub fn desired_of(&self, key: &RevisionKey) -> u32 {
        self.state()
            .scalers
            .get(key)
            .and_then(|s| s.last.as_ref())
            .map_or(0, |d| d.desired)
    }

    /// Decides the scale of one revision now; returns whether its desired scale changed.
    fn decide(&self, key: &RevisionKey) -> bool {
        let pool = self.router.pool(key);
        let ready = pool.as_ref().map_or(0, |p| p.ready() as u32);
        let waiting = pool.as_ref().map_or(0, |p| p.waiting() as u32);
        let now = self.now_ms();
        let mut st = self.state();
        let routed = st.reachable.contains(key);
        let budget_stops = st.budget_stops.clone();
        let st = &mut *st;
        let Some(sc) = st.scalers.get_mut(key) else {
            return false;
        };
        let mut d = sc.autoscaler.decide(&sc.settings, now, ready, waiting);
        let backlog = st
            .backlogs
            .get(&(key.0.clone(), sc.service.clone()))
            .copied()
            .unwrap_or(0);
        if routed {
            let want = backlog_demand(
                backlog,
                sc.settings.effective_target(),
                sc.settings.max_scale,
            );
            if want > d.desired {
                d.desired = want;
                d.reason = format!(
                    "{backlog} event(s) queued for delivery: ceil(backlog / target {}) instances",
                    sc.settings.effective_target()
                );
            }
        }
        if !routed && waiting == 0 {
            d.desired = 0;
            d.reason = "no traffic target names this revision".to_owned();
        }
        let stop = budget_stops.get(&(key.0.clone(), sc.service.clone()));
        let runtime = &self.runtime;
        let wanted = d.desired;
        let d = cap(d, stop, &mut sc.budget_hold, || {
            live_instances(&**runtime, key)
        });
        // A hold that starts to bind is news even when the scale does not change.
        let held = d.desired < wanted;
        let newly_held = held && !sc.held;
        sc.held = held;
        let before = sc.last.as_ref().map(|d| d.desired);
        let changed = before != Some(d.desired);
        let labels = sc.labels(key);
        if let Some(p) = &pool {
            let max = sc.settings.max_scale;
            p.set_at_max_scale(max > 0 && d.desired >= max);
            p.set_budget_stop(stop.map(|s| s.for_router()));
            if d.desired > ready {
                let cause = p.waiting_since().unwrap_or_else(tokio::time::Instant::now);
                let reaction = self.metrics.reaction.get_or_create_owned(&labels);
                p.scaling_up(d.desired as usize, cause, reaction);
            } else {
                p.not_scaling_up();
            }
        }
        self.metrics
            .desired
            .get_or_create(&labels)
            .set(i64::from(d.desired));
        self.metrics
            .ready
            .get_or_create(&labels)
            .set(i64::from(ready));
        self.metrics
            .waiting
            .get_or_create(&labels)
            .set(i64::from(waiting));
        self.metrics
            .panic
            .get_or_create(&labels)
            .set(i64::from(d.panicking));
        self.metrics
            .stable_concurrency
            .get_or_create(&labels)
            .set(d.stable_average);
        self.metrics
            .panic_concurrency
            .get_or_create(&labels)
            .set(d.panic_average);
        if newly_held && !changed {
            info!(revision = %key.1, desired = d.desired, wanted, reason = %d.reason, "scale-up held by the cost budget");
        }
        if changed {
            self.metrics.decisions.get_or_create(&labels).inc();
            // A first decision of 0 (every idle revision after a restart) is not news.
            if before.is_none() && d.desired == 0 {
                debug!(revision = %key.1, reason = %d.reason, "first decision: 0");
            } else {
                info!(
                revision = %key.1,
                from = before.unwrap_or(0),
                to = d.desired,
                ready,
                waiting,
                panicking = d.panicking,
                reason = %d.reason,
                "scale changed"
                );
            }
        }
        // The decisions shown are those that changed the scale, and those the hold began
        // to bind.
        if changed || newly_held {
            sc.history.push_front(DecisionView {
                at: jiff::Timestamp::now().to_string(),
                desired: d.desired,
                ready,
                panicking: d.panicking,
                reason: d.reason.clone(),
            });
            sc.history.truncate(DECISION_HISTORY);
        }
        sc.last = Some(d);
        changed
    }

    /// Collects buckets every second and decides every 2 s, or at once for a revision a
    /// waiting request pokes, until `shutdown`.
    pub async fn run_autoscaler(
        self: Arc<Self>,
        mut pokes: mpsc::UnboundedReceiver<RevisionKey>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n += 1;
                    let now = self.now_ms();
                    let pools = self.router.pools();
                    {
                        let mut st = self.state();
                        for (key, pool) in &pools {
                            let (concurrency, requests) = pool.take_bucket();
                            if let Some(sc) = st.scalers.get_mut(key) {
                                sc.autoscaler.record(Bucket { at_ms: now.saturating_sub(1000), concurrency, requests });
                            }
                        }
                    }
                    if n.is_multiple_of(2) {
                        let keys: Vec<RevisionKey> = self.state().scalers.keys().cloned().collect();
                        for k in &keys {
                            if self.decide(k) {
                                self.scaled(k);
                            }
                        }
                    }
                }
                k = pokes.recv() => {
                    let Some(k) = k else { break };
                    let mut keys = HashSet::from([k]);
                    while let Ok(k) = pokes.try_recv() {
                        keys.insert(k);
                    }
                    for k in &keys {
                        debug!(revision = %k.1, "poked by a waiting request");
                        if self.decide(k) {
                            self.scaled(k);
                        }
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// The scale of a Service's revisions.
    pub fn scale_of(
        &self,
        ns: &str,
        svc: &str,
        replicas_override: Option<(String, u32)>,
    ) -> Vec<RevisionScale> {
        let st = self.state();
        let mut out: Vec<RevisionScale> = st
            .scalers
            .iter()
            .filter(|(k, s)| k.0 == ns && s.service == svc)
            .map(|(k, s)| {
                let pool = self.router.pool(k);
                let cold = pool.as_ref().map(|p| p.cold_starts()).unwrap_or_default();
                let auto = s.last.as_ref().map_or(0, |d| d.desired);
                let desired = match &replicas_override {
                    Some((rev, n)) if rev == &k.1 => *n,
                    _ => auto,
                };
                RevisionScale {
                    revision: k.1.clone(),
                    desired,
                    autoscaler_desired: auto,
                    ready: pool.as_ref().map_or(0, |p| p.ready() as u32),
                    in_flight: pool.as_ref().map_or(0, |p| p.in_flight()),
                    waiting: pool.as_ref().map_or(0, |p| p.waiting() as u32),
                    routed: st.reachable.contains(k),
                    panicking: s.last.as_ref().is_some_and(|d| d.panicking),
                    stable_average: s.last.as_ref().map_or(0.0, |d| d.stable_average),
                    panic_average: s.last.as_ref().map_or(0.0, |d| d.panic_average),
                    cold_starts: cold.count,
                    cold_start_seconds_total: cold.total_seconds,
                    last_cold_start_seconds: (cold.count > 0).then_some(cold.last_seconds),
                    cold_start_requests: cold.requests,
                    decisions: s.history.iter().cloned().collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| b.revision.cmp(&a.revision));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_asks_for_backlog_over_target_instances_within_max_scale() {
        assert_eq!(backlog_demand(0, 10.0, 0), 0);
        assert_eq!(backlog_demand(1, 10.0, 0), 1);
        assert_eq!(backlog_demand(200, 10.0, 0), 20);
        assert_eq!(backlog_demand(200, 10.0, 5), 5);
        assert_eq!(backlog_demand(7, 0.0, 0), 7);
    }
    /// Annotations map onto the autoscaler's settings; the cluster-wide grace comes from the
    /// daemon.
    #[test]
    fn settings_from_annotations() {
        let a = AutoscalingSettings {
            metric: Some(skiff_api::autoscaling::Metric::Rps),
            target: Some(50.0),
            target_utilization_percentage: Some(80.0),
            window_seconds: Some(6),
            panic_window_percentage: Some(50.0),
            panic_threshold_percentage: Some(150.0),
            min_scale: Some(1),
            max_scale: Some(4),
            initial_scale: Some(2),
            activation_scale: Some(3),
            scale_down_delay_seconds: Some(10),
            scale_to_zero_retention_ms: Some(5000),
            ..Default::default()
        };
        let cfg = ServingConfig {
            scale_to_zero_grace: Duration::from_secs(7),
            ..ServingConfig::default()
        };
        let s = settings(&a, 10, &cfg);
        assert_eq!(s.metric, Metric::Rps);
        assert_eq!(s.target, Some(50.0));
        assert!((s.utilization - 0.8).abs() < 1e-9);
        assert_eq!(s.stable_window_ms, 6000);
        assert_eq!(s.panic_window_ms(), 3000);
        assert!((s.panic_threshold - 1.5).abs() < 1e-9);
        assert_eq!(
            (
                s.min_scale,
                s.max_scale,
                s.initial_scale,
                s.activation_scale
            ),
            (1, 4, 2, 3)
        );
        assert_eq!(s.scale_down_delay_ms, 10_000);
        assert_eq!(s.scale_to_zero_grace_ms, 7000);
        assert_eq!(s.scale_to_zero_retention_ms, 5000);
        assert_eq!(s.container_concurrency, 10);
        let d = settings(&AutoscalingSettings::default(), 0, &cfg);
        assert_eq!(d.stable_window_ms, 60_000);
        assert_eq!(d.initial_scale, 1);
        assert_eq!((d.max_scale_up_rate, d.max_scale_down_rate), (1000.0, 2.0));
        assert_eq!(d.min_scale, 0);
    }

    /// Forgetting a revision removes its series from every autoscaler family and leaves
    /// another revision's series as they were.
    #[test]
    fn forget_revision_removes_its_autoscaler_series() {
        let mut registry = Registry::with_prefix("skiff_autoscaler");
        let m = AutoscalerMetrics::new(&mut registry);
        let labels = |svc: &str| RevisionLabels {
            namespace: "default".into(),
            service: svc.into(),
            revision: format!("{svc}-00001"),
        };
        for rl in [labels("alpha"), labels("beta")] {
            m.desired.get_or_create(&rl).set(1);
            m.ready.get_or_create(&rl).set(1);
            m.panic.get_or_create(&rl).set(0);
            m.waiting.get_or_create(&rl).set(0);
            m.stable_concurrency.get_or_create(&rl).set(0.5);
            m.panic_concurrency.get_or_create(&rl).set(0.5);
            m.decisions.get_or_create(&rl).inc();
        }
        let render = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
            out
        };
        let series = |text: &str, svc: &str| {
            text.lines()
                .filter(|l| l.contains(&format!(r#"service="{svc}""#)))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let before = render();
        assert_eq!(series(&before, "alpha").len(), 7, "{before}");

        m.forget_revision(&labels("alpha"));

        let after = render();
        assert!(series(&after, "alpha").is_empty(), "{after}");
        assert_eq!(series(&after, "beta"), series(&before, "beta"));
        assert_eq!(series(&after, "beta").len(), 7, "{after}");
    }

    /// The cluster-wide settings: scale-up and scale-down rates, and scale to zero turned
    /// off, which makes one instance the floor of every revision (min-scale stays when
    /// higher).
    #[test]
    fn cluster_wide_settings() {
        let cfg = ServingConfig {
            enable_scale_to_zero: false,
            max_scale_up_rate: 3.0,
            max_scale_down_rate: 4.0,
            ..ServingConfig::default()
        };
        let d = settings(&AutoscalingSettings::default(), 0, &cfg);
        assert_eq!(d.min_scale, 1);
        assert_eq!((d.max_scale_up_rate, d.max_scale_down_rate), (3.0, 4.0));
        let a = AutoscalingSettings {
            min_scale: Some(3),
            ..Default::default()
        };
        assert_eq!(settings(&a, 0, &cfg).min_scale, 3);
        // The autoscaler keeps the floor: an idle revision holds one instance past its grace.
        let mut scaler = skiff_autoscaler::Autoscaler::new(0);
        let decision = scaler.decide(&d, 600_000, 1, 0);
        assert_eq!(decision.desired, 1, "{decision:?}");
    }
}
