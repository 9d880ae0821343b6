//! Knative-shaped status, computed as a pure function of a Service, its revisions and what the
//! daemon can observe. The controller stores the result with every write, and recomputes it
//! at start (so a changed domain or port shows at once).

use std::time::Duration;

use skiff_api::object::{
    Addressable, Condition, ConditionStatus, Revision, RevisionStatus, Service, ServiceStatus,
    TrafficStatus, condition, set_condition,
};
use skiff_api::rollout::{RolloutPolicy, RolloutStatus, effective_policy};
use skiff_api::types::TrafficTarget;
use skiff_api::wire::ProbeFailure;
use skiff_rollout::plan::{Health, Rev, latest_split, stable_of, wants_rollout};
use skiff_runtime::instance::{ContainerStatus, InstanceStatus, Phase, Termination};

/// What status computation needs to know besides the objects.
#[derive(Debug, Clone)]
pub struct StatusContext {
    /// The domain of service URLs.
    pub domain: String,
    /// The ingress port, shown in URLs unless it is 80.
    pub ingress_port: u16,
    /// The current time, RFC 3339.
    pub now: String,
    /// The daemon's rollout policy for revisions that set none.
    pub default_rollout: Option<RolloutPolicy>,
}

impl StatusContext {
    /// `http://<host>[:port]`.
    pub fn url(&self, host: &str) -> String {
        if self.ingress_port == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{}", self.ingress_port)
        }
    }
}

/// Condition types, as Knative names them.
pub mod conditions {
    /// The object can serve (the top-level condition).
    pub const READY: &str = "Ready";
    /// A revision's instances have been able to run.
    pub const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";
    /// A revision's containers are healthy.
    pub const CONTAINER_HEALTHY: &str = "ContainerHealthy";
    /// A revision has instances running.
    pub const ACTIVE: &str = "Active";
    /// A Service's configuration (its latest revision) is ready.
    pub const CONFIGURATIONS_READY: &str = "ConfigurationsReady";
    /// A Service's traffic targets are ready.
    pub const ROUTES_READY: &str = "RoutesReady";
    /// A Service's latest ready revision takes all of its latest-revision traffic (present
    /// when a rollout policy applies or a rollback was made).
    pub const ROLLED_OUT: &str = "RolledOut";
}

/// Condition reasons skiff writes.
pub mod reasons {
    /// Images are being resolved to digests.
    pub const RESOLVING: &str = "ResolvingImages";
    /// Images are being pulled.
    pub const PULLING: &str = "Pulling";
    /// An image cannot be pulled.
    pub const PULL_FAILED: &str = "ImagePullFailed";
    /// The revision has never had a ready instance and none runs.
    pub const NO_INSTANCES: &str = "NoInstances";
    /// Instances run but none is ready yet.
    pub const DEPLOYING: &str = "Deploying";
    /// A container keeps exiting.
    pub const CRASH_LOOP: &str = "CrashLoopBackOff";
    /// A container ran out of memory.
    pub const OOM_KILLED: &str = "OOMKilled";
    /// No instance became ready within the revision's progress deadline.
    pub const PROGRESS_DEADLINE: &str = "ProgressDeadlineExceeded";
    /// A Secret, ConfigMap or key the revision needs is missing (Kubernetes' reason).
    pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
    /// A rollout is in progress.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// A rollout is about to start.
    pub const ROLLOUT_PENDING: &str = "RolloutPending";
    /// The latest revision was rolled back by its analysis (the Service is not Ready).
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    /// The latest revision's rollout was aborted by hand.
    pub const ROLLOUT_ABORTED: &str = "RolloutAborted";
    /// The traffic was rolled back by hand.
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// Why a revision has no instance yet (with [`reasons::NO_INSTANCES`]).
pub const MESSAGE_NO_INSTANCES: &str = "no instance has run yet; one starts when the autoscaler asks for it (initial scale, or the first request)";

/// The reason of a revision whose images are not resolved yet.
pub const REASON_RESOLVING: &str = reasons::RESOLVING;
/// The message that goes with [`REASON_RESOLVING`].
pub const MESSAGE_RESOLVING: &str = "resolving the revision's images to digests";

/// Why a revision cannot serve, as anyone who reaches the ingress may read it: one phrase
/// made from its `Ready` reason alone. Condition messages stay behind the API token: they
/// can hold a container's output, host paths and a registry's answers.
pub fn public_failure(reason: Option<&str>) -> String {
    match reason {
        Some("CrashLoopBackOff") => "its container keeps exiting (CrashLoopBackOff)".to_owned(),
        Some("OOMKilled") => "its container ran out of memory (OOMKilled)".to_owned(),
        Some(reasons::PULL_FAILED) => "its image could not be pulled (ImagePullFailed)".to_owned(),
        Some(reasons::PROGRESS_DEADLINE) => {
            "no instance became ready within its progress deadline (ProgressDeadlineExceeded)"
                .to_owned()
        }
        // Reasons are skiff's own CamelCase words; anything else is not repeated.
        Some(r)
            if !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("it failed ({r})")
        }
        _ => "it failed".to_owned(),
    }
}

/// Whether a revision still needs its images pinned to digests.
pub fn needs_images(r: &Revision) -> bool {
    r.spec.containers.len()
        != r.status
            .container_statuses
            .iter()
            .filter(|c| c.image_digest.is_some())
            .count()
}

/// Whether a revision's images could not be pulled (it waits for a retry, not instances).
pub fn pull_failed(r: &Revision) -> bool {
    condition(&r.status.conditions, conditions::READY)
        .is_some_and(|c| c.reason.as_deref() == Some(reasons::PULL_FAILED))
}

/// The initial status of a freshly stamped revision.
pub fn initial_revision_status(now: &str) -> RevisionStatus {
    let mut status = RevisionStatus {
        observed_generation: 1,
        ..Default::default()
    };
    for t in ["ResourcesAvailable", "ContainerHealthy", "Ready"] {
        set_condition(
            &mut status.conditions,
            t,
            ConditionStatus::Unknown,
            Some(REASON_RESOLVING),
            Some(MESSAGE_RESOLVING.to_owned()),
            now,
        );
    }
    set_condition(
        &mut status.conditions,
        "Active",
        ConditionStatus::Unknown,
        Some("NoInstances"),
        Some("no instance of this revision is running".to_owned()),
        now,
    );
    status
}

fn is_ready(r: &Revision) -> bool {
    r.condition("Ready")
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// The traffic targets of a Service: its own, or 100% to the latest revision.
pub fn traffic_targets(service: &Service) -> Vec<TrafficTarget> {
    service.spec.traffic.clone().unwrap_or_else(|| {
        vec![TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            ..Default::default()
        }]
    })
}

/// Computes a Service's status from its revisions (those labelled with its name).
pub fn service_status(
    service: &Service,
    revisions: &[&Revision],
    ctx: &StatusContext,
) -> ServiceStatus {
    let mut status = ServiceStatus {
        observed_generation: service.metadata.generation,
        conditions: service.status.conditions.clone(),
        ..Default::default()
    };
    let name = &service.metadata.name;
    let ns = &service.metadata.namespace;
    let url = ctx.url(&format!("{name}.{ns}.{}", ctx.domain));
    status.url = Some(url.clone());
    status.address = Some(Addressable { url });

    let mut ordered: Vec<&Revision> = revisions.to_vec();
    ordered.sort_by_key(|r| r.configuration_generation());
    let latest_created = ordered.last().copied();
    let latest_ready = ordered.iter().rev().find(|r| is_ready(r)).copied();
    status.latest_created_revision_name = latest_created.map(|r| r.metadata.name.clone());
    status.latest_ready_revision_name = latest_ready.map(|r| r.metadata.name.clone());

    let rollout = rollout_view(service, &ordered, latest_ready, ctx);
    let split = rollout.as_ref().and_then(|v| v.split.clone());
    let (cfg_status, cfg_reason, cfg_message) = configurations_ready(latest_created);
    set_condition(
        &mut status.conditions,
        "ConfigurationsReady",
        cfg_status,
        cfg_reason.as_deref(),
        cfg_message,
        &ctx.now,
    );
    match resolve_traffic(service, &ordered, latest_ready, split.as_deref(), ctx) {
        Ok(traffic) => {
            status.traffic = traffic;
            set_condition(
                &mut status.conditions,
                "RoutesReady",
                ConditionStatus::True,
                None,
                None,
                &ctx.now,
            );
        }
        Err(message) => set_condition(
            &mut status.conditions,
            "RoutesReady",
            ConditionStatus::Unknown,
            Some("RevisionMissing"),
            Some(message),
            &ctx.now,
        ),
    }
    match rollout {
        Some(view) => {
            let (st, reason, message) = view.condition;
            set_condition(
                &mut status.conditions,
                conditions::ROLLED_OUT,
                st,
                reason.as_deref(),
                message,
                &ctx.now,
            );
            status.rollout = Some(view.status);
        }
        None => status
            .conditions
            .retain(|c| c.condition_type != conditions::ROLLED_OUT),
    }
    let (ready, reason, message) = service_ready(&status.conditions);
    set_condition(
        &mut status.conditions,
        "Ready",
        ready,
        reason.as_deref(),
        message,
        &ctx.now,
    );
    // Keep a stable, Knative-like order.
    let order = |t: &str| match t {
        "ConfigurationsReady" => 0,
        "Ready" => 1,
        "RoutesReady" => 2,
        "RolledOut" => 3,
        _ => 4,
    };
    status.conditions.sort_by_key(|c| order(&c.condition_type));
    status
}

/// A condition's status, reason and message, as [`set_condition`] takes them.
type ConditionParts = (ConditionStatus, Option<String>, Option<String>);

/// A Service's ConfigurationsReady: it mirrors the latest created revision.
fn configurations_ready(latest_created: Option<&Revision>) -> ConditionParts {
    match latest_created.and_then(|r| r.condition("Ready")) {
        Some(c) if c.status == ConditionStatus::True => (ConditionStatus::True, None, None),
        Some(c) => (
            c.status,
            Some(if c.status == ConditionStatus::False {
                "RevisionFailed".to_owned()
            } else {
                c.reason
                    .clone()
                    .unwrap_or_else(|| "RevisionNotReady".to_owned())
            }),
            Some(format!(
                "revision {} is not ready: {}",
                latest_created
                    .map(|r| r.metadata.name.as_str())
                    .unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )),
        ),
        None => (
            ConditionStatus::Unknown,
            Some("RevisionMissing".to_owned()),
            Some("no revision has been created".to_owned()),
        ),
    }
}

/// A Service's traffic, for RoutesReady: every traffic target must resolve to a ready
/// revision (`ordered` by configuration generation; a latest target goes to `latest_ready`,
/// or is shared as `split` says while a rollout moves it). Otherwise says why the first
/// target that does not is not ready.
fn resolve_traffic(
    service: &Service,
    ordered: &[&Revision],
    latest_ready: Option<&Revision>,
    split: Option<&[(String, u32)]>,
    ctx: &StatusContext,
) -> Result<Vec<TrafficStatus>, String> {
    let name = &service.metadata.name;
    let ns = &service.metadata.namespace;
    let mut out = Vec::new();
    for t in traffic_targets(service) {
        let percent = t.percent.unwrap_or(0);
        let url = t
            .tag
            .as_ref()
            .map(|tag| ctx.url(&format!("{tag}-{name}.{ns}.{}", ctx.domain)));
        if t.revision_name.is_none()
            && let Some(split) = split
        {
            let shares = share_out(percent, split);
            let last = shares.len().saturating_sub(1);
            for (i, (rev, p)) in shares.into_iter().enumerate() {
                out.push(TrafficStatus {
                    tag: t.tag.clone().filter(|_| i == last),
                    revision_name: rev,
                    latest_revision: true,
                    percent: p,
                    url: url.clone().filter(|_| i == last),
                });
            }
            continue;
        }
        let target = match &t.revision_name {
            Some(rev) => ordered.iter().find(|r| &r.metadata.name == rev).copied(),
            None => latest_ready,
        };
        match target {
            Some(r) if is_ready(r) => out.push(TrafficStatus {
                tag: t.tag.clone(),
                revision_name: r.metadata.name.clone(),
                latest_revision: t.revision_name.is_none(),
                percent,
                url,
            }),
            _ => {
                return Err(match &t.revision_name {
                    Some(rev) => format!("revision {rev} is not ready"),
                    None => {
                        format!("configuration {name} is waiting for a revision to become ready")
                    }
                });
            }
        }
    }
    Ok(out)
}

/// A latest target's `percent` shared as `split` says (percents of it, newest last): each
/// share rounded, at least 1 when its part is not 0, the first taking what rounding left.
/// Shares of 0 are left out unless nothing else is left.
fn share_out(percent: i64, split: &[(String, u32)]) -> Vec<(String, i64)> {
    let mut shares: Vec<(String, i64)> = split
        .iter()
        .map(|(rev, part)| {
            let p = (percent * i64::from(*part) + 50) / 100;
            let p = if *part > 0 && percent > 0 {
                p.max(1)
            } else {
                p
            };
            (rev.clone(), p)
        })
        .collect();
    let rest: i64 = shares.iter().skip(1).map(|(_, p)| p).sum();
    if let Some(first) = shares.first_mut() {
        first.1 = (percent - rest).max(0);
    }
    let kept: Vec<(String, i64)> = shares.iter().filter(|(_, p)| *p > 0).cloned().collect();
    if kept.is_empty() {
        shares.split_off(shares.len().saturating_sub(1))
    } else {
        kept
    }
}

/// What a rollout makes of a Service's status: its `status.rollout`, the `RolledOut`
/// condition, and where the latest-revision traffic goes.
struct RolloutView {
    status: RolloutStatus,
    condition: ConditionParts,
    /// The latest-revision traffic's split; `None` before any revision is ready.
    split: Option<Vec<(String, u32)>>,
}

/// A revision's health, as rollouts need it.
pub fn health(r: &Revision) -> Health {
    match r.condition(conditions::READY).map(|c| c.status) {
        Some(ConditionStatus::True) => Health::Ready,
        Some(ConditionStatus::False) => Health::Failed(
            r.condition(conditions::READY)
                .and_then(|c| c.reason.clone())
                .unwrap_or_else(|| "Failed".into()),
        ),
        _ => Health::Pending,
    }
}

/// Revisions as rollouts see them.
pub fn rollout_revs(revisions: &[&Revision]) -> Vec<Rev> {
    revisions
        .iter()
        .map(|r| Rev {
            name: r.metadata.name.clone(),
            generation: r.configuration_generation(),
            health: health(r),
        })
        .collect()
}

/// The rollout policy of a Service's revision.
pub fn policy_for(service: &Service, r: &Revision, ctx: &StatusContext) -> Option<RolloutPolicy> {
    effective_policy(
        &r.metadata.annotations,
        &service.metadata.annotations,
        ctx.default_rollout.as_ref(),
    )
}

/// The revision a Service's status sent most of its latest-revision traffic to.
pub fn served_latest(service: &Service) -> Option<&str> {
    service
        .status
        .traffic
        .iter()
        .filter(|t| t.latest_revision)
        .max_by_key(|t| t.percent)
        .map(|t| t.revision_name.as_str())
}

/// The rollout part of a Service's status: `None` when no policy applies and no rollout or
/// rollback ever happened (then the latest ready revision takes the traffic, as in Knative).
fn rollout_view(
    service: &Service,
    ordered: &[&Revision],
    latest_ready: Option<&Revision>,
    ctx: &StatusContext,
) -> Option<RolloutView> {
    let policy = latest_ready.and_then(|r| policy_for(service, r, ctx));
    let prev = service.status.rollout.as_ref();
    if prev.is_none() && policy.is_none() {
        return None;
    }
    let mut rollout = prev.cloned().unwrap_or_default();
    let stable = stable_of(prev, served_latest(service));
    let Some(latest) = latest_ready else {
        rollout.stable_revision = stable;
        return Some(RolloutView {
            status: rollout,
            condition: (
                ConditionStatus::Unknown,
                Some(reasons::ROLLOUT_PENDING.to_owned()),
                Some("waiting for a revision to become ready".to_owned()),
            ),
            split: None,
        });
    };
    let revs = rollout_revs(ordered);
    let latest_rev = Rev {
        name: latest.metadata.name.clone(),
        generation: latest.configuration_generation(),
        health: Health::Ready,
    };
    let split = latest_split(
        &rollout,
        stable.as_deref(),
        &latest_rev,
        &revs,
        policy.as_ref(),
    );
    let pending = wants_rollout(
        &rollout,
        stable.as_deref(),
        &latest_rev,
        &revs,
        policy.as_ref(),
    );
    let latest_name = latest_rev.name.as_str();
    let serving_latest = split.len() == 1 && split[0].0 == latest_name;
    rollout.stable_revision = if rollout.current.is_none() && serving_latest {
        Some(latest_name.to_owned())
    } else {
        stable
    };
    let condition = rollout_condition(&rollout, latest_name, pending, serving_latest);
    Some(RolloutView {
        status: rollout,
        condition,
        split: Some(split),
    })
}

/// The `RolledOut` condition.
fn rollout_condition(
    r: &RolloutStatus,
    latest: &str,
    pending: bool,
    serving_latest: bool,
) -> ConditionParts {
    let unknown = |reason: &str, message: String| {
        (
            ConditionStatus::Unknown,
            Some(reason.to_owned()),
            Some(message),
        )
    };
    if let Some(p) = &r.current {
        return unknown(
            reasons::ROLLING_OUT,
            format!(
                "revision {} takes {}% of the latest-revision traffic (step {} of {}{}); {} the rest",
                p.revision,
                p.percent(),
                p.step + 1,
                p.policy.steps.len(),
                if p.paused { ", paused" } else { "" },
                p.from
            ),
        );
    }
    if pending {
        return unknown(
            reasons::ROLLOUT_PENDING,
            format!("revision {latest} is about to roll out"),
        );
    }
    if serving_latest {
        return (ConditionStatus::True, None, None);
    }
    let stable = r.stable_revision.as_deref().unwrap_or_default();
    let again = format!(
        "traffic stays on {stable}; apply a new revision, or run `skiff rollout resume` to roll {latest} out again"
    );
    let record = r.history.iter().find(|h| h.revision == latest);
    let (reason, message) = match record.map(|h| (h.outcome.as_str(), h)) {
        Some(("rolled_back", h)) if !h.message.contains("by hand") => {
            (reasons::ROLLOUT_FAILED, format!("{}; {again}", h.message))
        }
        Some(("aborted", h)) => (reasons::ROLLOUT_ABORTED, format!("{}; {again}", h.message)),
        _ => (
            reasons::ROLLED_BACK,
            format!(
                "rolled back by hand: the latest-revision traffic goes to {stable}, not {latest}; run `skiff rollout resume` to send it to {latest} again"
            ),
        ),
    };
    (
        ConditionStatus::False,
        Some(reason.to_owned()),
        Some(message),
    )
}

/// A Service's Ready: True when ConfigurationsReady and RoutesReady are and its latest
/// revision was not rolled back by its analysis, else the first of them that is not.
fn service_ready(conditions: &[Condition]) -> ConditionParts {
    let cfg = condition(conditions, "ConfigurationsReady").cloned();
    let routes = condition(conditions, "RoutesReady").cloned();
    let rolled_back = condition(conditions, conditions::ROLLED_OUT)
        .filter(|c| {
            c.status == ConditionStatus::False
                && c.reason.as_deref() == Some(reasons::ROLLOUT_FAILED)
        })
        .cloned();
    match (cfg, routes) {
        (Some(c), Some(r))
            if c.status == ConditionStatus::True && r.status == ConditionStatus::True =>
        {
            match rolled_back {
                Some(f) => (f.status, f.reason, f.message),
                None => (ConditionStatus::True, None, None),
            }
        }
        (Some(c), _) if c.status != ConditionStatus::True => (c.status, c.reason, c.message),
        (_, Some(r)) => (r.status, r.reason, r.message),
        _ => (ConditionStatus::Unknown, None, None),
    }
}

/// Derives a revision's runtime conditions from its instances.
pub fn apply_instance_status(
    r: &mut Revision,
    instances: &[InstanceStatus],
    desired: u32,
    now: &str,
) {
    let live = live(instances);
    let actual = live
        .iter()
        .filter(|s| matches!(s.phase, Phase::Running | Phase::Starting))
        .count() as u32;
    let ready_now = live.iter().filter(|s| s.ready).count();
    // Knative's actualReplicas counts ready instances.
    r.status.actual_replicas = ready_now as u32;
    r.status.desired_replicas = desired;
    let was_ready = condition(&r.status.conditions, conditions::READY)
        .is_some_and(|c| c.status == ConditionStatus::True);
    let ever_ready = ever_ready(r, ready_now > 0);
    let progress = Progress::of(r, &live, ever_ready, now);
    match newest_crash(&live) {
        Some((c, t)) if ready_now == 0 => set_crashed(r, c, t, now),
        _ => {
            let serves = ready_now > 0 || was_ready || (actual == 0 && ever_ready);
            set_health(r, serves, actual, &progress, now);
        }
    }
    set_resources_available(r, ever_ready, actual, &progress, now);
    set_active(r, ready_now, actual, now);
}

/// How a revision that has never been ready is getting on: its readiness probe's failure and
/// how long its oldest instance has tried, against its progress deadline.
struct Progress {
    /// The serving container's readiness failure, said for people (with a hint).
    probe: Option<String>,
    /// The deadline.
    deadline: Duration,
    /// Time left before it (None: not counting: ready once, or nothing runs).
    left: Option<Duration>,
}

impl Progress {
    fn of(r: &Revision, live: &[&InstanceStatus], ever_ready: bool, now: &str) -> Progress {
        let (serving, port) = skiff_api::validate::serving_port(&r.spec);
        let probe = live
            .iter()
            .filter_map(|s| s.containers.get(serving))
            .find_map(|c| c.readiness_failure.as_ref())
            .map(|f| probe_failure(f, port));
        let deadline = skiff_api::validate::progress_deadline(&r.metadata.annotations);
        let now = now.parse::<jiff::Timestamp>().ok();
        let oldest = live
            .iter()
            .filter_map(|s| s.started_at.parse::<jiff::Timestamp>().ok())
            .min();
        let left = match (ever_ready, now, oldest) {
            (false, Some(now), Some(start)) => {
                let tried = Duration::try_from(now.duration_since(start)).unwrap_or_default();
                Some(deadline.saturating_sub(tried))
            }
            _ => None,
        };
        Progress {
            probe,
            deadline,
            left,
        }
    }

    fn overdue(&self) -> bool {
        self.left.is_some_and(|l| l.is_zero())
    }

    /// What the revision waits for, for people.
    fn waiting(&self, actual: u32) -> String {
        let waiting = format!("waiting for {actual} instance(s) to become ready");
        match &self.probe {
            Some(p) => format!("{waiting}: {p}"),
            None => waiting,
        }
    }
}

/// A readiness failure for people: what failed, since when, and the likely cause.
fn probe_failure(f: &ProbeFailure, port: u16) -> String {
    let m = f.message.to_ascii_lowercase();
    let hint = if m.contains("refused") {
        format!("; is the app listening on $PORT={port}?")
    } else if m.contains("timed out") {
        "; the app does not answer within the probe's timeout".to_owned()
    } else if m.contains("http ") {
        "; the app answers the probe with an error status".to_owned()
    } else {
        String::new()
    };
    format!(
        "readiness probe failing since {}: {}{hint}",
        f.since, f.message
    )
}

/// When a revision's instances should be looked at again: at its progress deadline, while
/// one that has never been ready is still within it.
pub fn progress_recheck(r: &Revision, instances: &[InstanceStatus], now: &str) -> Option<Duration> {
    let live = live(instances);
    let ever_ready = ever_ready(r, live.iter().any(|s| s.ready));
    Progress::of(r, &live, ever_ready, now)
        .left
        .filter(|l| !l.is_zero())
        // Just past the deadline, so that it is overdue when looked at.
        .map(|l| l + Duration::from_millis(10))
}

/// The instances not stopped.
fn live(instances: &[InstanceStatus]) -> Vec<&InstanceStatus> {
    instances
        .iter()
        .filter(|s| !matches!(s.phase, Phase::Stopped))
        .collect()
}

/// Whether a revision has had a ready instance (`ready_now`: it has one now).
/// ResourcesAvailable turns True when an instance is first ready and stays so (as in
/// Knative): the revision is known to be able to serve, so scaled to zero it is Ready and
/// starts on demand.
fn ever_ready(r: &Revision, ready_now: bool) -> bool {
    ready_now
        || condition(&r.status.conditions, conditions::RESOURCES_AVAILABLE)
            .is_some_and(|c| c.status == ConditionStatus::True)
}

/// A container that keeps failing: the newest termination of a container waiting in
/// CrashLoopBackOff.
fn newest_crash<'a>(live: &[&'a InstanceStatus]) -> Option<(&'a ContainerStatus, &'a Termination)> {
    live.iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.waiting_reason.as_deref() == Some(reasons::CRASH_LOOP))
        .filter_map(|c| c.last_termination.as_ref().map(|t| (c, t)))
        .max_by(|a, b| a.1.at.cmp(&b.1.at))
}

/// Sets a revision's ContainerHealthy and Ready alike.
fn set_health_and_ready(
    r: &mut Revision,
    status: ConditionStatus,
    reason: Option<&str>,
    message: Option<String>,
    now: &str,
) {
    set_condition(
        &mut r.status.conditions,
        conditions::CONTAINER_HEALTHY,
        status,
        reason,
        message.clone(),
        now,
    );
    set_condition(
        &mut r.status.conditions,
        conditions::READY,
        status,
        reason,
        message,
        now,
    );
}

/// What a missing Secret, ConfigMap or key does to a revision's status, given `missing`
/// (one phrase per problem, from [`crate::plan::missing_config`]; empty when nothing is
/// missing). A revision without a ready instance is `Ready=False` with
/// [`reasons::CREATE_CONTAINER_CONFIG_ERROR`]; once nothing is missing that failure is
/// cleared, so the instance conditions are computed afresh (call this before and after
/// [`apply_instance_status`]: `clear` first, then `set`).
pub fn apply_config_error(r: &mut Revision, missing: &[String], now: &str, set: bool) {
    let failed_for_config = condition(&r.status.conditions, conditions::READY)
        .is_some_and(|c| c.reason.as_deref() == Some(reasons::CREATE_CONTAINER_CONFIG_ERROR));
    if !set {
        if missing.is_empty() && failed_for_config {
            set_health_and_ready(
                r,
                ConditionStatus::Unknown,
                Some(reasons::NO_INSTANCES),
                Some(MESSAGE_NO_INSTANCES.to_owned()),
                now,
            );
        }
        return;
    }
    if missing.is_empty() || r.status.actual_replicas > 0 {
        return;
    }
    set_health_and_ready(
        r,
        ConditionStatus::False,
        Some(reasons::CREATE_CONTAINER_CONFIG_ERROR),
        Some(format!("cannot start an instance: {}", missing.join("; "))),
        now,
    );
}

/// A crash-looping container `c` (whose last termination is `t`) fails the revision, saying
/// how it ended, with its last log lines.
fn set_crashed(r: &mut Revision, c: &ContainerStatus, t: &Termination, now: &str) {
    let reason = if t.reason == reasons::OOM_KILLED {
        reasons::OOM_KILLED
    } else {
        reasons::CRASH_LOOP
    };
    let lines = if t.last_lines.is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{}", t.last_lines.join("\n"))
    };
    let msg = format!(
        "container {} {} ({}; restarted {} times){lines}",
        c.name,
        match t.exit_code {
            Some(code) => format!("exited with code {code}"),
            None => "failed to start".to_owned(),
        },
        t.message,
        c.restarts
    );
    set_health_and_ready(r, ConditionStatus::False, Some(reason), Some(msg), now);
}

/// ContainerHealthy and Ready when nothing crash-loops: True when the revision `serves`;
/// Deploying while `actual` instances start (with why they are not ready), failed with
/// ProgressDeadlineExceeded once they have tried longer than the deadline (until one is
/// ready); else NoInstances, unless it failed.
fn set_health(r: &mut Revision, serves: bool, actual: u32, progress: &Progress, now: &str) {
    let failed_deadline = condition(&r.status.conditions, conditions::READY).is_some_and(|c| {
        c.status == ConditionStatus::False
            && c.reason.as_deref() == Some(reasons::PROGRESS_DEADLINE)
    });
    if serves {
        set_health_and_ready(r, ConditionStatus::True, None, None, now);
    } else if actual > 0 && (progress.overdue() || failed_deadline) {
        let msg = format!(
            "not ready within the progress deadline of {}s ({}): {}",
            progress.deadline.as_secs(),
            skiff_api::validate::PROGRESS_DEADLINE_ANNOTATION,
            progress.waiting(actual)
        );
        set_health_and_ready(
            r,
            ConditionStatus::False,
            Some(reasons::PROGRESS_DEADLINE),
            Some(msg),
            now,
        );
    } else if actual > 0 {
        let msg = progress.waiting(actual);
        set_health_and_ready(
            r,
            ConditionStatus::Unknown,
            Some(reasons::DEPLOYING),
            Some(msg),
            now,
        );
    } else if condition(&r.status.conditions, conditions::READY)
        .is_some_and(|c| c.status == ConditionStatus::False)
    {
        // A revision that never served and failed keeps saying why after its
        // instances are gone.
    } else {
        set_health_and_ready(
            r,
            ConditionStatus::Unknown,
            Some(reasons::NO_INSTANCES),
            Some(MESSAGE_NO_INSTANCES.to_owned()),
            now,
        );
    }
}

/// ResourcesAvailable: True once an instance has been ready (`ever_ready`), else why not yet.
fn set_resources_available(
    r: &mut Revision,
    ever_ready: bool,
    actual: u32,
    progress: &Progress,
    now: &str,
) {
    let (status, reason, message) = if ever_ready {
        (ConditionStatus::True, None, None)
    } else if actual > 0 && progress.overdue() {
        (
            ConditionStatus::False,
            Some(reasons::PROGRESS_DEADLINE),
            Some(progress.waiting(actual)),
        )
    } else if actual > 0 {
        (
            ConditionStatus::Unknown,
            Some(reasons::DEPLOYING),
            Some("no instance has been ready yet".to_owned()),
        )
    } else {
        (
            ConditionStatus::Unknown,
            Some(reasons::NO_INSTANCES),
            Some("no instance is running".to_owned()),
        )
    };
    set_condition(
        &mut r.status.conditions,
        conditions::RESOURCES_AVAILABLE,
        status,
        reason,
        message,
        now,
    );
}

/// Active: True while instances run (`actual`, of which `ready_now` are ready).
fn set_active(r: &mut Revision, ready_now: usize, actual: u32, now: &str) {
    let (status, reason, message) = if actual > 0 {
        (
            ConditionStatus::True,
            None,
            format!("{ready_now} of {actual} instance(s) ready"),
        )
    } else {
        (
            ConditionStatus::False,
            Some(reasons::NO_INSTANCES),
            "no instance is running".to_owned(),
        )
    };
    set_condition(
        &mut r.status.conditions,
        conditions::ACTIVE,
        status,
        reason,
        Some(message),
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::object::{LABEL_SERVICE, ObjectMeta};
    use skiff_api::types::ServiceSpec;

    fn ctx() -> StatusContext {
        StatusContext {
            domain: "localhost".into(),
            ingress_port: 8080,
            now: "2026-11-25T00:00:00Z".into(),
            default_rollout: None,
        }
    }

    fn service(traffic: Option<Vec<TrafficTarget>>) -> Service {
        Service {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Service".into(),
            metadata: ObjectMeta {
                name: "hello".into(),
                namespace: "default".into(),
                generation: 2,
                ..Default::default()
            },
            spec: ServiceSpec {
                template: None,
                traffic,
            },
            status: Default::default(),
        }
    }

    fn revision(name: &str, generation: i64, ready: ConditionStatus) -> Revision {
        let mut status = initial_revision_status("t");
        set_condition(
            &mut status.conditions,
            "Ready",
            ready,
            Some("Because"),
            Some("details".into()),
            "t",
        );
        Revision {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Revision".into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                labels: [
                    (LABEL_SERVICE.to_owned(), "hello".to_owned()),
                    (
                        skiff_api::object::LABEL_CONFIGURATION_GENERATION.to_owned(),
                        generation.to_string(),
                    ),
                ]
                .into(),
                ..Default::default()
            },
            spec: Default::default(),
            autoscaling: Default::default(),
            status,
        }
    }

    /// With no ready revision, the Service is Unknown with the revision's reason, and has a URL.
    #[test]
    fn not_ready_until_a_revision_is() {
        let r1 = revision("hello-00001", 1, ConditionStatus::Unknown);
        let s = service_status(&service(None), &[&r1], &ctx());
        assert_eq!(
            s.url.as_deref(),
            Some("http://hello.default.localhost:8080")
        );
        assert_eq!(
            s.latest_created_revision_name.as_deref(),
            Some("hello-00001")
        );
        assert_eq!(s.latest_ready_revision_name, None);
        assert_eq!(s.observed_generation, 2);
        let ready = condition(&s.conditions, "Ready").expect("ready");
        assert_eq!(ready.status, ConditionStatus::Unknown);
        assert_eq!(ready.reason.as_deref(), Some("Because"));
        assert!(s.traffic.is_empty());
    }

    /// Traffic resolves latest targets to the latest ready revision and pinned ones to
    /// themselves; tags get their own URLs.
    #[test]
    fn resolves_traffic() {
        let r1 = revision("hello-00001", 1, ConditionStatus::True);
        let r2 = revision("hello-00002", 2, ConditionStatus::True);
        let r3 = revision("hello-00003", 3, ConditionStatus::Unknown);
        let traffic = vec![
            TrafficTarget {
                revision_name: Some("hello-00001".into()),
                percent: Some(50),
                tag: Some("old".into()),
                ..Default::default()
            },
            TrafficTarget {
                latest_revision: Some(true),
                percent: Some(50),
                ..Default::default()
            },
        ];
        let s = service_status(&service(Some(traffic)), &[&r1, &r3, &r2], &ctx());
        assert_eq!(
            s.latest_created_revision_name.as_deref(),
            Some("hello-00003")
        );
        assert_eq!(s.latest_ready_revision_name.as_deref(), Some("hello-00002"));
        assert_eq!(s.traffic.len(), 2);
        assert_eq!(
            s.traffic[0].url.as_deref(),
            Some("http://old-hello.default.localhost:8080")
        );
        assert_eq!(s.traffic[1].revision_name, "hello-00002");
        assert!(s.traffic[1].latest_revision);
        // Routes are ready, but the latest created revision is not: the Service is not Ready.
        assert_eq!(
            condition(&s.conditions, "RoutesReady").map(|c| c.status),
            Some(ConditionStatus::True)
        );
        assert_eq!(
            condition(&s.conditions, "Ready").map(|c| c.status),
            Some(ConditionStatus::Unknown)
        );
    }

    /// A failed latest revision makes the Service False with RevisionFailed.
    #[test]
    fn failed_revision_fails_the_service() {
        let r1 = revision("hello-00001", 1, ConditionStatus::False);
        let s = service_status(&service(None), &[&r1], &ctx());
        let ready = condition(&s.conditions, "Ready").expect("ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason.as_deref(), Some("RevisionFailed"));
    }

    fn with_rollout(mut r: Revision, steps: &str) -> Revision {
        r.metadata
            .annotations
            .insert(skiff_api::rollout::ROLLOUT_ANNOTATION.into(), steps.into());
        r
    }

    fn latest(s: &ServiceStatus) -> Vec<(String, i64, Option<String>)> {
        s.traffic
            .iter()
            .map(|t| (t.revision_name.clone(), t.percent, t.tag.clone()))
            .collect()
    }

    /// Under a policy, a new ready revision waits on the stable one, then gets each step's
    /// share of every latest-revision target (a tag follows the new revision); pinned targets
    /// stay as written.
    #[test]
    fn a_rollout_shares_only_the_latest_targets() {
        let r1 = revision("hello-00001", 1, ConditionStatus::True);
        let r2 = with_rollout(
            revision("hello-00002", 2, ConditionStatus::True),
            "5,50,100",
        );
        let mut svc = service(Some(vec![
            TrafficTarget {
                latest_revision: Some(true),
                percent: Some(80),
                tag: Some("latest".into()),
                ..Default::default()
            },
            TrafficTarget {
                revision_name: Some("hello-00001".into()),
                percent: Some(20),
                ..Default::default()
            },
        ]));
        // The first revision: nothing to roll out from.
        svc.status = service_status(&svc, &[&r1], &ctx());
        assert_eq!(
            latest(&svc.status)[0],
            ("hello-00001".into(), 80, Some("latest".into()))
        );
        // The second, ready, under a policy: it stays on the stable one until its rollout.
        svc.status = service_status(&svc, &[&r1, &r2], &ctx());
        let rollout = svc.status.rollout.clone().expect("a rollout status");
        assert_eq!(rollout.stable_revision.as_deref(), Some("hello-00001"));
        let rolled = condition(&svc.status.conditions, conditions::ROLLED_OUT).expect("cond");
        assert_eq!(rolled.reason.as_deref(), Some(reasons::ROLLOUT_PENDING));
        assert_eq!(latest(&svc.status)[0].0, "hello-00001");
        // At its first step: 5% of the 80.
        let mut r = rollout;
        let policy = policy_for(&svc, &r2, &ctx()).expect("a policy");
        skiff_rollout::plan::start(
            &mut r,
            "hello-00002",
            "hello-00001",
            policy,
            "2026-11-25T00:00:00Z".parse().expect("t"),
        );
        svc.status.rollout = Some(r);
        svc.status = service_status(&svc, &[&r1, &r2], &ctx());
        assert_eq!(
            latest(&svc.status),
            vec![
                ("hello-00001".into(), 76, None),
                ("hello-00002".into(), 4, Some("latest".into())),
                ("hello-00001".into(), 20, None),
            ]
        );
        let ready = condition(&svc.status.conditions, "Ready").expect("ready");
        assert_eq!(
            ready.status,
            ConditionStatus::True,
            "serving during a rollout"
        );
    }

    /// A revision rolled back by its analysis leaves the traffic on the stable revision and
    /// the Service not Ready, saying why.
    #[test]
    fn a_rolled_back_revision_fails_the_service() {
        let r1 = revision("hello-00001", 1, ConditionStatus::True);
        let r2 = with_rollout(revision("hello-00002", 2, ConditionStatus::True), "5,100");
        let mut svc = service(None);
        svc.status = service_status(&svc, &[&r1], &ctx());
        svc.status = service_status(&svc, &[&r1, &r2], &ctx());
        let mut r = svc.status.rollout.clone().expect("rollout");
        let t0: jiff::Timestamp = "2026-11-25T00:00:00Z".parse().expect("t");
        skiff_rollout::plan::start(
            &mut r,
            "hello-00002",
            "hello-00001",
            policy_for(&svc, &r2, &ctx()).expect("policy"),
            t0,
        );
        let p = r.current.clone().expect("running");
        skiff_rollout::plan::apply(
            &mut r,
            skiff_rollout::Decision::RollBack {
                step: skiff_api::rollout::StepResult {
                    percent: 5,
                    started_at: p.step_started_at.clone(),
                    ended_at: p.step_started_at.clone(),
                    verdict: "failed".into(),
                    canary: Default::default(),
                    stable: Default::default(),
                    checks: Vec::new(),
                },
                message: "errors: 5xx 33.3% (4 of 12)".into(),
            },
            t0,
        );
        svc.status.rollout = Some(r);
        svc.status = service_status(&svc, &[&r1, &r2], &ctx());
        assert_eq!(latest(&svc.status), vec![("hello-00001".into(), 100, None)]);
        let ready = condition(&svc.status.conditions, "Ready").expect("ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason.as_deref(), Some(reasons::ROLLOUT_FAILED));
        assert!(
            ready
                .message
                .as_deref()
                .is_some_and(|m| m.contains("33.3%") && m.contains("traffic stays on hello-00001")),
            "{ready:?}"
        );
        // A newer revision rolls out from the stable one.
        let r3 = with_rollout(revision("hello-00003", 3, ConditionStatus::True), "5,100");
        svc.status = service_status(&svc, &[&r1, &r2, &r3], &ctx());
        let rolled = condition(&svc.status.conditions, conditions::ROLLED_OUT).expect("cond");
        assert_eq!(rolled.reason.as_deref(), Some(reasons::ROLLOUT_PENDING));
    }

    /// Without a policy nothing changes: no rollout status, no condition.
    #[test]
    fn no_policy_no_rollout_status() {
        let r1 = revision("hello-00001", 1, ConditionStatus::True);
        let r2 = revision("hello-00002", 2, ConditionStatus::True);
        let svc = service(None);
        let s = service_status(&svc, &[&r1, &r2], &ctx());
        assert!(s.rollout.is_none());
        assert!(condition(&s.conditions, conditions::ROLLED_OUT).is_none());
        assert_eq!(latest(&s), vec![("hello-00002".into(), 100, None)]);
    }

    /// Port 80 is left out of URLs.
    #[test]
    fn port_80_is_implicit() {
        let mut c = ctx();
        c.ingress_port = 80;
        assert_eq!(c.url("a.b.c"), "http://a.b.c");
    }
}

#[cfg(test)]
mod instance_status_tests {
    use super::*;
    use skiff_runtime::instance::{ContainerStatus, Termination};

    fn revision() -> Revision {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {"name": "r-00001", "namespace": "default", "uid": "u", "generation": 1, "creationTimestamp": "t"},
            "spec": {"containers": [{"image": "x"}]}
        }))
        .expect("revision")
    }

    fn running(ready: bool) -> InstanceStatus {
        InstanceStatus {
            phase: Phase::Running,
            ready,
            ..Default::default()
        }
    }

    fn crashing() -> InstanceStatus {
        InstanceStatus {
            phase: Phase::Running,
            containers: vec![ContainerStatus {
                name: "user-container".into(),
                waiting_reason: Some("CrashLoopBackOff".into()),
                restarts: 2,
                last_termination: Some(Termination {
                    reason: "Error".into(),
                    exit_code: Some(3),
                    at: "t".into(),
                    message: "exited".into(),
                    last_lines: vec!["boom".into()],
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ready_status(r: &Revision) -> ConditionStatus {
        condition(&r.status.conditions, "Ready")
            .map(|c| c.status)
            .unwrap_or(ConditionStatus::Unknown)
    }

    /// A revision that has served is Ready at zero (it starts on demand), even when its
    /// last instance crashed before it went; one that never served keeps its failure.
    #[test]
    fn readiness_across_scale_to_zero() {
        let mut r = revision();
        apply_instance_status(&mut r, &[running(false)], 1, "t1");
        assert_eq!(ready_status(&r), ConditionStatus::Unknown);
        apply_instance_status(&mut r, &[running(true)], 1, "t2");
        assert_eq!(ready_status(&r), ConditionStatus::True);
        assert_eq!(
            (r.status.actual_replicas, r.status.desired_replicas),
            (1, 1)
        );
        apply_instance_status(&mut r, &[crashing()], 1, "t3");
        assert_eq!(ready_status(&r), ConditionStatus::False);
        apply_instance_status(&mut r, &[], 0, "t4");
        assert_eq!(
            ready_status(&r),
            ConditionStatus::True,
            "{:?}",
            r.status.conditions
        );
        assert_eq!(
            condition(&r.status.conditions, "Active").map(|c| c.status),
            Some(ConditionStatus::False)
        );

        let mut never = revision();
        apply_instance_status(&mut never, &[crashing()], 1, "t1");
        assert_eq!(ready_status(&never), ConditionStatus::False);
        apply_instance_status(&mut never, &[], 0, "t2");
        let c = condition(&never.status.conditions, "Ready").expect("Ready");
        assert_eq!(c.status, ConditionStatus::False);
        assert!(
            c.message.as_deref().is_some_and(|m| m.contains("boom")),
            "{c:?}"
        );
    }

    /// A not-ready instance whose readiness probe is refused, started at `started`.
    fn refused(started: &str) -> InstanceStatus {
        InstanceStatus {
            phase: Phase::Running,
            started_at: started.into(),
            containers: vec![ContainerStatus {
                name: "user-container".into(),
                running: true,
                readiness_failure: Some(ProbeFailure {
                    message: "tcp connect to port 8080: Connection refused (os error 111)".into(),
                    since: started.into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ready_condition(r: &Revision) -> Condition {
        condition(&r.status.conditions, "Ready")
            .cloned()
            .expect("Ready")
    }

    /// A revision whose probe is refused says so while deploying, fails with
    /// ProgressDeadlineExceeded past its deadline (and stays failed while it is not ready),
    /// and heals when an instance becomes ready.
    #[test]
    fn a_refused_probe_explains_itself_and_meets_the_deadline() {
        let mut r = revision();
        r.metadata.annotations.insert(
            skiff_api::validate::PROGRESS_DEADLINE_ANNOTATION.into(),
            "30s".into(),
        );
        let start = "2026-12-04T10:00:00Z";
        let inst = [refused(start)];
        apply_instance_status(&mut r, &inst, 1, "2026-12-04T10:00:10Z");
        let c = ready_condition(&r);
        assert_eq!(c.status, ConditionStatus::Unknown);
        assert_eq!(c.reason.as_deref(), Some(reasons::DEPLOYING));
        let m = c.message.unwrap_or_default();
        assert!(
            m.contains("readiness probe failing since 2026-12-04T10:00:00Z")
                && m.contains("Connection refused")
                && m.contains("is the app listening on $PORT=8080?"),
            "{m}"
        );
        assert_eq!(
            progress_recheck(&r, &inst, "2026-12-04T10:00:10Z"),
            Some(Duration::from_millis(20_010))
        );

        apply_instance_status(&mut r, &inst, 1, "2026-12-04T10:00:31Z");
        let c = ready_condition(&r);
        assert_eq!(c.status, ConditionStatus::False);
        assert_eq!(c.reason.as_deref(), Some(reasons::PROGRESS_DEADLINE));
        assert!(
            c.message.as_deref().is_some_and(|m| m.contains("progress deadline of 30s")
                && m.contains("$PORT=8080")),
            "{c:?}"
        );
        assert_eq!(progress_recheck(&r, &inst, "2026-12-04T10:00:31Z"), None);
        assert_eq!(
            public_failure(c.reason.as_deref()),
            "no instance became ready within its progress deadline (ProgressDeadlineExceeded)"
        );
        // A replacement instance within the deadline does not make it Deploying again.
        apply_instance_status(
            &mut r,
            &[refused("2026-12-04T10:00:40Z")],
            1,
            "2026-12-04T10:00:41Z",
        );
        assert_eq!(
            ready_condition(&r).reason.as_deref(),
            Some(reasons::PROGRESS_DEADLINE)
        );
        apply_instance_status(&mut r, &[running(true)], 1, "2026-12-04T10:01:00Z");
        assert_eq!(ready_condition(&r).status, ConditionStatus::True);
    }

    /// The default deadline is 120 s.
    #[test]
    fn the_default_progress_deadline() {
        let mut r = revision();
        let inst = [refused("2026-12-04T10:00:00Z")];
        apply_instance_status(&mut r, &inst, 1, "2026-12-04T10:01:59Z");
        assert_eq!(
            ready_condition(&r).reason.as_deref(),
            Some(reasons::DEPLOYING)
        );
        apply_instance_status(&mut r, &inst, 1, "2026-12-04T10:02:01Z");
        assert_eq!(
            ready_condition(&r).reason.as_deref(),
            Some(reasons::PROGRESS_DEADLINE)
        );
    }
}
