//! Progressive rollouts: the reconciler that starts, steps, completes and rolls back a
//! Service's rollouts, the request windows its analysis reads, and the commands.
//!
//! # Design
//! A rollout's state is the Service's `status.rollout`, written by the controller with the
//! rest of its status in one guarded write ([`Controller::update_rollout`]), so the traffic
//! split (computed by [`crate::status`]) always matches the step it is on, and a restart
//! resumes where the store says. The reconciler, keyed by Service, reads the Service, its
//! revisions and its request windows, asks the pure [`skiff_rollout::decide`], and writes
//! the decision; while a rollout runs it looks again every [`TICK`] or at the step's end.
//!
//! The request windows are in memory: every request record of a revision being compared
//! (the new one and the stable one) since its step began, fed by the request telemetry's
//! worker ([`RolloutWindows::took`]), not by the router's threads. A step whose window
//! started before this process (a restart) starts again, at the same step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use skiff_api::object::{Revision, Service};
use skiff_api::rollout::{Figures, LiveStep, RolloutReport, RolloutStatus};
use skiff_api::slo::slo_of;
use skiff_rollout::plan::{self, Decision, Health, Observation, Rev, TICK};
use skiff_rollout::{CommandError, SloTargets, Window};
use skiff_router::record::RequestRecord;
use skiff_store::keys;
use tracing::{info, warn};

use crate::controller::{Controller, ControllerError, parse_revision_key};
use crate::deployments::{DeploymentMetrics, Outcome};
use crate::reconciler::{Next, ReconcileError, Reconciler};
use crate::status::{self, StatusContext};

/// A revision's requests since its window began.
#[derive(Debug)]
struct Tracked {
    /// Its Service (to forget its windows with it).
    service: String,
    /// The step's start, as stored (RFC 3339).
    since_text: String,
    since: SystemTime,
    window: Window,
}

/// Windows by namespace, then revision (looked up by `&str`: no allocation per record).
type ByNamespace = HashMap<String, HashMap<String, Tracked>>;

/// The request windows of the revisions being compared.
#[derive(Debug, Default)]
pub struct RolloutWindows {
    tracked: Mutex<ByNamespace>,
}

fn system_time(t: jiff::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(t.as_nanosecond()).unwrap_or_default())
}

impl RolloutWindows {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByNamespace> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `revision`'s (of `service`) requests that arrive from `since` (a stored step
    /// start) on, unless they are counted from then already.
    pub fn track(&self, ns: &str, service: &str, revision: &str, since: &str) {
        let Ok(t) = since.parse::<jiff::Timestamp>() else {
            return;
        };
        let mut tracked = self.lock();
        let revisions = tracked.entry(ns.to_owned()).or_default();
        if revisions
            .get(revision)
            .is_some_and(|t| t.since_text == since)
        {
            return;
        }
        revisions.insert(
            revision.to_owned(),
            Tracked {
                service: service.to_owned(),
                since_text: since.to_owned(),
                since: system_time(t),
                window: Window::new(),
            },
        );
    }

    /// Counts the windows of the step a Service's rollout is on, if one is in progress.
    pub fn track_step(&self, ns: &str, service: &str, rollout: Option<&RolloutStatus>) {
        if let Some(p) = rollout.and_then(|r| r.current.as_ref()) {
            self.track(ns, service, &p.revision, &p.step_started_at);
            self.track(ns, service, &p.from, &p.step_started_at);
        }
    }

    /// What `revision`'s requests did since `since`, if they were counted from then.
    pub fn figures(
        &self,
        ns: &str,
        revision: &str,
        since: &str,
        slow_after: Option<Duration>,
    ) -> Option<Figures> {
        let tracked = self.lock();
        tracked
            .get(ns)?
            .get(revision)
            .filter(|t| t.since_text == since)
            .map(|t| t.window.figures(slow_after))
    }

    /// Stops counting `revisions` of `ns`.
    fn forget(&self, ns: &str, revisions: &[&str]) {
        let mut tracked = self.lock();
        if let Some(m) = tracked.get_mut(ns) {
            m.retain(|r, _| !revisions.contains(&r.as_str()));
            if m.is_empty() {
                tracked.remove(ns);
            }
        }
    }

    /// Stops counting every revision of a Service (it was deleted).
    fn forget_service(&self, ns: &str, service: &str) {
        let mut tracked = self.lock();
        if let Some(m) = tracked.get_mut(ns) {
            m.retain(|_, t| t.service != service);
            if m.is_empty() {
                tracked.remove(ns);
            }
        }
    }

    /// Takes a batch of request records.
    pub fn took(&self, records: &[RequestRecord]) {
        let mut tracked = self.lock();
        if tracked.is_empty() {
            return;
        }
        for r in records {
            if let Some(t) = tracked
                .get_mut(r.namespace.as_str())
                .and_then(|m| m.get_mut(r.revision.as_str()))
                && r.at >= t.since
            {
                t.window.record(r.status, r.duration);
            }
        }
    }
}

/// The Service's objectives, as the `slo` check needs them.
fn slo_targets(service: &Service) -> (SloTargets, Option<Duration>) {
    match slo_of(&service.metadata.annotations).ok().flatten() {
        Some(slo) => (
            SloTargets {
                availability: slo.availability,
                latency: slo.latency.map(|l| (l.threshold, l.objective)),
            },
            slo.latency.map(|l| l.threshold),
        ),
        None => (SloTargets::default(), None),
    }
}

fn health_of(revisions: &[&Revision], name: &str) -> Health {
    revisions
        .iter()
        .find(|r| r.metadata.name == name)
        .map_or(Health::Missing, |r| status::health(r))
}

fn latest_ready<'a>(revisions: &[&'a Revision]) -> Option<&'a Revision> {
    revisions
        .iter()
        .filter(|r| status::health(r) == Health::Ready)
        .max_by_key(|r| r.configuration_generation())
        .copied()
}

/// Both revisions' figures since the rollout's step began, when they were counted from then.
fn windows_of(
    windows: &RolloutWindows,
    ns: &str,
    p: &skiff_api::rollout::RolloutProgress,
    slow_after: Option<Duration>,
) -> Option<(Figures, Figures)> {
    let since = &p.step_started_at;
    Some((
        windows.figures(ns, &p.revision, since, slow_after)?,
        windows.figures(ns, &p.from, since, slow_after)?,
    ))
}

/// What a rollout look is about to write.
enum Change {
    Start { revision: String, from: String },
    Supersede { by: String },
    Decided(Decision),
}

/// Steps rollouts.
pub struct RolloutReconciler {
    controller: Controller,
    windows: Arc<RolloutWindows>,
    metrics: DeploymentMetrics,
}

impl RolloutReconciler {
    /// A reconciler over `windows`, counting rollbacks in `metrics`.
    pub fn new(
        controller: Controller,
        windows: Arc<RolloutWindows>,
        metrics: DeploymentMetrics,
    ) -> Self {
        RolloutReconciler {
            controller,
            windows,
            metrics,
        }
    }

    /// Decides what to write for a Service now, from what was read.
    fn plan(
        &self,
        rollout: &RolloutStatus,
        service: &Service,
        revisions: &[&Revision],
        ctx: &StatusContext,
        now: jiff::Timestamp,
    ) -> Option<Change> {
        let ns = &service.metadata.namespace;
        let latest = latest_ready(revisions)?;
        let policy = status::policy_for(service, latest, ctx);
        let revs: Vec<Rev> = status::rollout_revs(revisions);
        let latest_rev = Rev {
            name: latest.metadata.name.clone(),
            generation: latest.configuration_generation(),
            health: Health::Ready,
        };
        match &rollout.current {
            None => {
                let stable = rollout.stable_revision.as_deref();
                plan::wants_rollout(rollout, stable, &latest_rev, &revs, policy.as_ref()).then(
                    || Change::Start {
                        revision: latest_rev.name.clone(),
                        from: stable.unwrap_or_default().to_owned(),
                    },
                )
            }
            Some(p) => {
                // A newer ready revision supersedes this one, from the same stable revision.
                let newer = revisions
                    .iter()
                    .find(|r| r.metadata.name == p.revision)
                    .is_some_and(|r| {
                        latest.configuration_generation() > r.configuration_generation()
                    });
                if newer && rollout.held_revision.as_deref() != Some(&latest_rev.name) {
                    return Some(match policy {
                        Some(_) => Change::Start {
                            revision: latest_rev.name.clone(),
                            from: p.from.clone(),
                        },
                        None => Change::Supersede {
                            by: latest_rev.name.clone(),
                        },
                    });
                }
                let (slo, slow_after) = slo_targets(service);
                let o = Observation {
                    now,
                    canary: health_of(revisions, &p.revision),
                    stable: health_of(revisions, &p.from),
                    windows: windows_of(&self.windows, ns, p, slow_after),
                    slo,
                };
                Some(Change::Decided(plan::decide(p, &o)))
            }
        }
    }
}

#[async_trait]
impl Reconciler for RolloutReconciler {
    type Key = (String, String);

    fn name(&self) -> &'static str {
        "rollouts"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[keys::SERVICES, keys::REVISIONS]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<(String, String)> {
        if let Some((ns, name)) = keys::parse_service(store_key) {
            return vec![(ns.to_owned(), name.to_owned())];
        }
        if let Some((ns, rev)) = parse_revision_key(store_key)
            && let Ok(r) = self.controller.get_revision(&ns, &rev).await
            && let Some(s) = r.service_name()
        {
            return vec![(ns, s.to_owned())];
        }
        Vec::new()
    }

    async fn all_keys(&self) -> Result<Vec<(String, String)>, ReconcileError> {
        Ok(self
            .controller
            .list_services(None)
            .await?
            .into_iter()
            .map(|s| (s.metadata.namespace, s.metadata.name))
            .collect())
    }

    async fn reconcile(&self, key: &(String, String)) -> Result<Next, ReconcileError> {
        let (ns, name) = key;
        let service = match self.controller.get_service(ns, name).await {
            Ok(s) => s,
            Err(ControllerError::NotFound { .. }) => {
                self.windows.forget_service(ns, name);
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        if service.status.rollout.is_none() {
            return Ok(Next::Done);
        }
        let now = jiff::Timestamp::now();
        let wait = Mutex::new(None);
        let stored = self
            .controller
            .update_rollout(ns, name, |rollout, service, revisions, ctx| {
                let change = self.plan(rollout, service, revisions, ctx, now);
                Ok(match change {
                    None => false,
                    Some(Change::Start { revision, from }) => {
                        let policy = revisions
                            .iter()
                            .find(|r| r.metadata.name == revision)
                            .and_then(|r| status::policy_for(service, r, ctx));
                        match policy {
                            Some(policy) => {
                                plan::start(rollout, &revision, &from, policy, now);
                                true
                            }
                            None => false,
                        }
                    }
                    Some(Change::Supersede { by }) => plan::supersede(rollout, &by, now),
                    Some(Change::Decided(Decision::Wait(d))) => {
                        *wait.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
                        false
                    }
                    Some(Change::Decided(d)) => plan::apply(rollout, d, now),
                })
            })
            .await;
        let stored = match stored {
            Ok(s) => s,
            Err(ControllerError::NotFound { .. }) => {
                self.windows.forget_service(ns, name);
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let rollout = stored.status.rollout.as_ref();
        self.windows.track_step(ns, name, rollout);
        self.observe(&service, &stored);
        let wait = *wait.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match (rollout.and_then(|r| r.current.as_ref()), wait) {
            (Some(_), Some(d)) => Next::RequeueAfter(d.max(Duration::from_millis(20))),
            (Some(_), None) => Next::RequeueAfter(TICK),
            (None, _) => Next::Done,
        })
    }
}

impl RolloutReconciler {
    /// Logs and counts what changed between `before` and `after`, and forgets the windows of
    /// a rollout that ended.
    fn observe(&self, before: &Service, after: &Service) {
        let ns = &after.metadata.namespace;
        let name = &after.metadata.name;
        let (Some(b), Some(a)) = (
            before.status.rollout.as_ref(),
            after.status.rollout.as_ref(),
        ) else {
            return;
        };
        let step = |r: &RolloutStatus| r.current.as_ref().map(|p| (p.revision.clone(), p.step));
        if let Some((revision, s)) = step(a)
            && step(b) != Some((revision.clone(), s))
        {
            let p = a.current.as_ref().expect("checked");
            info!(namespace = %ns, service = %name, %revision, from = %p.from, percent = p.percent(), step = s + 1, "rollout step");
        }
        if (a.history.len() > b.history.len() || a.history.first() != b.history.first())
            && let Some(h) = a.history.first()
        {
            match h.outcome.as_str() {
                "rolled_back" => {
                    warn!(namespace = %ns, service = %name, revision = %h.revision, message = %h.message, "rollout rolled back");
                    if !h.message.contains("by hand") {
                        self.metrics.count(ns, name, Outcome::RolledBack);
                    }
                }
                outcome => {
                    info!(namespace = %ns, service = %name, revision = %h.revision, outcome, message = %h.message, "rollout ended")
                }
            }
            if a.current.is_none() {
                self.windows.forget(ns, &[&h.revision, &h.from]);
            }
        }
    }
}

/// The rollout commands, for the API.
#[derive(Clone)]
pub struct Rollouts {
    controller: Controller,
    windows: Arc<RolloutWindows>,
}

/// A rollout command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stay at the step.
    Pause,
    /// Go on, or let a held revision go.
    Resume,
    /// All traffic to the new revision now.
    Promote,
    /// All traffic back to the stable revision now.
    Abort,
}

impl Command {
    /// Parses `pause`, `resume`, `promote` or `abort`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            _ => return None,
        })
    }
}

fn refused(e: CommandError, ns: &str, service: &str) -> ControllerError {
    match e {
        CommandError::UnknownRevision(rev) => ControllerError::NotFound {
            kind: "revision",
            namespace: ns.to_owned(),
            name: rev,
        },
        e => ControllerError::Conflict {
            message: format!("service `{service}`: {e}"),
        },
    }
}

impl Rollouts {
    /// Commands over `controller`'s Services.
    pub fn new(controller: Controller, windows: Arc<RolloutWindows>) -> Self {
        Rollouts {
            controller,
            windows,
        }
    }

    /// A Service's rollout: its state, the latest ready revision's policy, and the step in
    /// progress so far.
    pub async fn report(&self, ns: &str, name: &str) -> Result<RolloutReport, ControllerError> {
        let service = self.controller.get_service(ns, name).await?;
        let revisions = self.controller.list_revisions(Some(ns), Some(name)).await?;
        let refs: Vec<&Revision> = revisions.iter().collect();
        let latest = latest_ready(&refs);
        let policy = latest.and_then(|r| {
            skiff_api::rollout::effective_policy(
                &r.metadata.annotations,
                &service.metadata.annotations,
                self.controller.default_rollout(),
            )
        });
        Ok(RolloutReport {
            namespace: ns.to_owned(),
            service: name.to_owned(),
            latest_created_revision: service.status.latest_created_revision_name.clone(),
            latest_ready_revision: latest.map(|r| r.metadata.name.clone()),
            policy,
            live: self.live(&service),
            condition: service
                .status
                .conditions
                .iter()
                .find(|c| c.condition_type == crate::status::conditions::ROLLED_OUT)
                .cloned(),
            rollout: service.status.rollout,
        })
    }

    /// The figures of the step a Service's rollout is on, so far.
    pub fn live(&self, service: &Service) -> Option<LiveStep> {
        let p = service.status.rollout.as_ref()?.current.as_ref()?;
        let (_, slow_after) = slo_targets(service);
        let (canary, stable) =
            windows_of(&self.windows, &service.metadata.namespace, p, slow_after)?;
        Some(LiveStep { canary, stable })
    }

    /// Runs `command` on a Service's rollout; returns the Service.
    pub async fn command(
        &self,
        ns: &str,
        name: &str,
        command: Command,
    ) -> Result<Service, ControllerError> {
        let now = jiff::Timestamp::now();
        let windows = self.windows.clone();
        let service = self
            .controller
            .update_rollout(ns, name, |rollout, service, _, _| {
                let live = rollout
                    .current
                    .as_ref()
                    .and_then(|p| windows_of(&windows, ns, p, slo_targets(service).1));
                match command {
                    Command::Pause => plan::pause(rollout),
                    Command::Resume => plan::resume(rollout, now),
                    Command::Promote => plan::promote(rollout, live, now),
                    Command::Abort => plan::abort(rollout, live, now),
                }
                .map_err(|e| refused(e, ns, name))?;
                Ok(true)
            })
            .await?;
        windows.track_step(ns, name, service.status.rollout.as_ref());
        info!(namespace = %ns, service = %name, command = ?command, "rollout command");
        Ok(service)
    }

    /// Sends a Service's latest-revision traffic to `to` (default: the previous revision).
    pub async fn rollback(
        &self,
        ns: &str,
        name: &str,
        to: Option<&str>,
    ) -> Result<Service, ControllerError> {
        let now = jiff::Timestamp::now();
        let windows = self.windows.clone();
        let service = self
            .controller
            .update_rollout(ns, name, |rollout, service, revisions, _| {
                if !status::traffic_targets(service)
                    .iter()
                    .any(|t| t.revision_name.is_none())
                {
                    return Err(ControllerError::Conflict {
                        message: format!(
                            "service `{name}` pins all its traffic to revisions (spec.traffic): change spec.traffic to move it"
                        ),
                    });
                }
                let Some(latest) = latest_ready(revisions) else {
                    return Err(ControllerError::Conflict {
                        message: format!("service `{name}` has no ready revision"),
                    });
                };
                // Outside a rollout, the revision taking the latest-revision traffic.
                let serving = status::served_latest(service)
                    .unwrap_or(&latest.metadata.name)
                    .to_owned();
                let live = rollout
                    .current
                    .as_ref()
                    .and_then(|p| windows_of(&windows, ns, p, slo_targets(service).1));
                plan::rollback(
                    rollout,
                    to,
                    &serving,
                    &latest.metadata.name,
                    &status::rollout_revs(revisions),
                    live,
                    now,
                )
                .map_err(|e| refused(e, ns, name))?;
                Ok(true)
            })
            .await?;
        info!(namespace = %ns, service = %name, to = ?service.status.rollout.as_ref().and_then(|r| r.stable_revision.clone()), "rolled back by hand");
        Ok(service)
    }
}
