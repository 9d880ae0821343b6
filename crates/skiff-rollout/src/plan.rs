//! When a rollout starts, what each look at it decides, and the commands, as changes of a
//! Service's [`RolloutStatus`].
//!
//! A rollout moves only the traffic of the Service's `latestRevision: true` targets: at each
//! step the new revision gets the step's percent of it and the stable revision the rest
//! ([`latest_split`]). A look ([`decide`]) rolls back at once when a check fails or the new
//! revision fails; advances when the step's time is up and its checks passed (or could not
//! judge after ten steps' time without enough requests); and completes after the last step.
//! A rolled-back or aborted revision is held: it is not rolled out again by itself, while a
//! newer one is.

use std::time::Duration;

use jiff::Timestamp;
use skiff_api::rollout::{
    Figures, HISTORY, RolloutPolicy, RolloutProgress, RolloutRecord, RolloutStatus, StepResult,
};

use crate::analysis::{SloTargets, Verdict, analyse};

/// How often a rollout in progress is looked at, at most this far apart.
pub const TICK: Duration = Duration::from_millis(250);
/// A step without enough canary requests goes on, inconclusive, after this many times its
/// duration.
pub const INCONCLUSIVE_AFTER_STEPS: u32 = 10;

/// A revision, as rollouts need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rev {
    /// Its name.
    pub name: String,
    /// Its configuration generation (newer revisions have larger ones).
    pub generation: i64,
    /// Its health.
    pub health: Health,
}

/// A revision's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Ready.
    Ready,
    /// Failed, with its reason.
    Failed(String),
    /// Neither yet.
    Pending,
    /// It does not exist.
    Missing,
}

fn find<'a>(revs: &'a [Rev], name: &str) -> Option<&'a Rev> {
    revs.iter().find(|r| r.name == name)
}

fn ready<'a>(revs: &'a [Rev], name: &str) -> Option<&'a Rev> {
    find(revs, name).filter(|r| r.health == Health::Ready)
}

/// The revision the latest-revision traffic goes to outside a rollout: the stored one, else
/// the one the Service's traffic sent it to (`served`) before a policy applied.
pub fn stable_of(status: Option<&RolloutStatus>, served: Option<&str>) -> Option<String> {
    status
        .and_then(|s| s.stable_revision.clone())
        .or_else(|| served.map(str::to_owned))
}

/// Whether a rollout of `latest` (the latest ready revision, under `policy`) should start
/// from `stable`: a newer revision than the stable one, not held, with a ready stable one.
pub fn wants_rollout(
    status: &RolloutStatus,
    stable: Option<&str>,
    latest: &Rev,
    revs: &[Rev],
    policy: Option<&RolloutPolicy>,
) -> bool {
    let Some(stable) = stable.and_then(|s| ready(revs, s)) else {
        return false;
    };
    status.current.is_none()
        && policy.is_some()
        && latest.health == Health::Ready
        && stable.name != latest.name
        && status.held_revision.as_deref() != Some(latest.name.as_str())
        && latest.generation > stable.generation
}

/// Where the latest-revision traffic goes: each revision with its percent of that traffic
/// (summing to 100), the newest last. `latest`: the latest ready revision.
pub fn latest_split(
    status: &RolloutStatus,
    stable: Option<&str>,
    latest: &Rev,
    revs: &[Rev],
    policy: Option<&RolloutPolicy>,
) -> Vec<(String, u32)> {
    if let Some(c) = &status.current {
        let from = ready(revs, &c.from).is_some();
        let to = ready(revs, &c.revision).is_some();
        let p = c.percent();
        return match (from, to) {
            (true, true) if p < 100 => vec![(c.from.clone(), 100 - p), (c.revision.clone(), p)],
            (true, false) => vec![(c.from.clone(), 100)],
            _ => vec![(c.revision.clone(), 100)],
        };
    }
    let stable_ready = stable.and_then(|s| ready(revs, s));
    if let Some(s) = stable_ready {
        let held = status.held_revision.as_deref() == Some(latest.name.as_str());
        if held || wants_rollout(status, stable, latest, revs, policy) {
            return vec![(s.name.clone(), 100)];
        }
    }
    vec![(latest.name.clone(), 100)]
}

/// What one look at a rollout sees.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Now.
    pub now: Timestamp,
    /// The new revision's health.
    pub canary: Health,
    /// The stable revision's.
    pub stable: Health,
    /// What both revisions' requests did since the step started: `None` when they have not
    /// been measured since then (the daemon restarted): the step starts again.
    pub windows: Option<(Figures, Figures)>,
    /// The Service's objectives.
    pub slo: SloTargets,
}

/// What a look decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to change; look again after this long.
    Wait(Duration),
    /// The step's requests were not measured since it started: start it again now.
    RestartStep,
    /// The step passed: on to the next.
    Advance(StepResult),
    /// The last step passed (or nothing is left to compare with): done.
    Complete {
        /// The last step, if it ran.
        step: Option<StepResult>,
        /// Why, for people.
        message: String,
    },
    /// Back to the stable revision.
    RollBack {
        /// The step that failed.
        step: StepResult,
        /// Why, for people (the figures that failed).
        message: String,
    },
}

/// RFC 3339 with milliseconds.
pub fn stamp(t: Timestamp) -> String {
    format!("{t:.3}")
}

fn parse(t: &str) -> Option<Timestamp> {
    t.parse().ok()
}

fn step_result(
    p: &RolloutProgress,
    now: Timestamp,
    verdict: &str,
    windows: Option<(Figures, Figures)>,
    checks: &Verdict,
) -> StepResult {
    let (canary, stable) = windows.unwrap_or_default();
    StepResult {
        percent: p.percent(),
        started_at: p.step_started_at.clone(),
        ended_at: stamp(now),
        verdict: verdict.to_owned(),
        canary,
        stable,
        checks: checks.results(),
    }
}

/// What the new revision is compared with: the stable revision's requests in the same
/// step, or, at 100% (where the stable revision gets none) or when it got too few, its
/// requests in the latest step that had enough.
fn baseline(p: &RolloutProgress, stable: &Figures) -> Figures {
    let min = p.policy.min_requests.max(1);
    if p.percent() < 100 && stable.requests >= min {
        return *stable;
    }
    p.steps
        .iter()
        .rev()
        .map(|s| s.stable)
        .find(|f| f.requests >= min)
        .unwrap_or(*stable)
}

/// What a look at rollout `p` decides, given what it sees.
pub fn decide(p: &RolloutProgress, o: &Observation) -> Decision {
    let none = Verdict { checks: Vec::new() };
    match &o.canary {
        Health::Failed(reason) => {
            return Decision::RollBack {
                step: step_result(p, o.now, "failed", o.windows, &none),
                message: format!("revision {} failed: {reason}", p.revision),
            };
        }
        Health::Missing => {
            return Decision::RollBack {
                step: step_result(p, o.now, "failed", o.windows, &none),
                message: format!("revision {} was deleted", p.revision),
            };
        }
        Health::Pending => return Decision::Wait(TICK),
        Health::Ready => {}
    }
    if o.stable != Health::Ready {
        return Decision::Complete {
            step: None,
            message: format!(
                "the stable revision {} is no longer ready: nothing to compare with, so {} takes \
                 all of the latest-revision traffic",
                p.from, p.revision
            ),
        };
    }
    let Some((canary, stable)) = o.windows else {
        return Decision::RestartStep;
    };
    let Some(started) = parse(&p.step_started_at) else {
        return Decision::RestartStep;
    };
    let step = p.policy.step();
    let elapsed = Duration::try_from(o.now.duration_since(started)).unwrap_or_default();
    let last = elapsed >= step;
    let a = &p.policy.analysis;
    let min = p.policy.min_requests;
    let verdict = analyse(a, &o.slo, &canary, &baseline(p, &stable), min, last);
    if verdict.failed() {
        let message = format!(
            "revision {} rolled back at {}% (step {} of {}): {}",
            p.revision,
            p.percent(),
            p.step + 1,
            p.policy.steps.len(),
            verdict.failures()
        );
        return Decision::RollBack {
            step: step_result(p, o.now, "failed", o.windows, &verdict),
            message,
        };
    }
    if !last {
        return Decision::Wait(TICK.min(step - elapsed));
    }
    if p.paused {
        return Decision::Wait(TICK);
    }
    let mut outcome = "passed";
    if !a.is_none() && verdict.inconclusive() {
        if elapsed < step * INCONCLUSIVE_AFTER_STEPS {
            return Decision::Wait(TICK);
        }
        outcome = "inconclusive";
    }
    let result = step_result(p, o.now, outcome, o.windows, &verdict);
    if p.step + 1 >= p.policy.steps.len() {
        Decision::Complete {
            step: Some(result),
            message: format!(
                "revision {} takes all of the latest-revision traffic after {} steps",
                p.revision,
                p.policy.steps.len()
            ),
        }
    } else {
        Decision::Advance(result)
    }
}

fn end(status: &mut RolloutStatus, record: RolloutRecord) {
    status.history.insert(0, record);
    status.history.truncate(HISTORY);
}

fn record(p: RolloutProgress, outcome: &str, message: String, now: Timestamp) -> RolloutRecord {
    RolloutRecord {
        revision: p.revision,
        from: p.from,
        outcome: outcome.to_owned(),
        message,
        started_at: p.started_at,
        ended_at: stamp(now),
        steps: p.steps,
    }
}

/// Starts a rollout of `revision` from `from` under `policy`. A rollout already in progress
/// (of an older revision) ends `superseded`, its traffic going back to the stable revision
/// first.
pub fn start(
    status: &mut RolloutStatus,
    revision: &str,
    from: &str,
    policy: RolloutPolicy,
    now: Timestamp,
) {
    if let Some(old) = status.current.take() {
        let message = format!("superseded by revision {revision}");
        end(status, record(old, "superseded", message, now));
    }
    status.stable_revision = Some(from.to_owned());
    status.current = Some(RolloutProgress {
        revision: revision.to_owned(),
        from: from.to_owned(),
        policy,
        step: 0,
        started_at: stamp(now),
        step_started_at: stamp(now),
        paused: false,
        steps: Vec::new(),
    });
}

/// Ends a rollout in progress as `superseded` by revision `by`, which takes all of the
/// latest-revision traffic at once (it has no rollout policy).
pub fn supersede(status: &mut RolloutStatus, by: &str, now: Timestamp) -> bool {
    let Some(old) = status.current.take() else {
        return false;
    };
    let message = format!("superseded by revision {by}, which has no rollout policy");
    end(status, record(old, "superseded", message, now));
    status.stable_revision = Some(by.to_owned());
    status.held_revision = None;
    true
}

/// Carries out a [`decide`] decision. Returns whether anything changed.
pub fn apply(status: &mut RolloutStatus, decision: Decision, now: Timestamp) -> bool {
    let Some(p) = status.current.as_mut() else {
        return false;
    };
    match decision {
        Decision::Wait(_) => return false,
        Decision::RestartStep => p.step_started_at = stamp(now),
        Decision::Advance(result) => {
            p.steps.push(result);
            p.step += 1;
            p.step_started_at = stamp(now);
        }
        Decision::Complete { step, message } => {
            let mut p = status.current.take().expect("checked above");
            p.steps.extend(step);
            complete(status, p, "succeeded", message, now);
        }
        Decision::RollBack { step, message } => {
            let mut p = status.current.take().expect("checked above");
            p.steps.push(step);
            status.held_revision = Some(p.revision.clone());
            end(status, record(p, "rolled_back", message, now));
        }
    }
    true
}

fn complete(
    status: &mut RolloutStatus,
    p: RolloutProgress,
    outcome: &str,
    message: String,
    now: Timestamp,
) {
    status.stable_revision = Some(p.revision.clone());
    status.held_revision = None;
    end(status, record(p, outcome, message, now));
}

/// Why a command cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No rollout is in progress.
    #[error("no rollout is in progress")]
    NoRollout,
    /// Resume of a rollout that is not paused, with nothing held either.
    #[error("the rollout is not paused, and no rolled-back revision waits to be rolled out")]
    NothingToResume,
    /// The revision asked for is not one of the Service's.
    #[error("the service has no revision `{0}`")]
    UnknownRevision(String),
    /// The revision asked for is not ready.
    #[error("revision `{0}` is not ready, so it cannot take traffic")]
    NotReady(String),
    /// The revision asked for already takes the traffic.
    #[error("revision `{0}` already takes the latest-revision traffic")]
    AlreadyServing(String),
    /// No older ready revision to roll back to.
    #[error("there is no older ready revision to roll back to; name one with --to")]
    NoPrevious,
}

/// `skiff rollout pause`: the rollout stays at its step (its analysis still runs).
pub fn pause(status: &mut RolloutStatus) -> Result<(), CommandError> {
    let p = status.current.as_mut().ok_or(CommandError::NoRollout)?;
    p.paused = true;
    Ok(())
}

/// `skiff rollout resume`: a paused rollout goes on (its step starts again); with no rollout
/// in progress, a held revision (rolled back or aborted) is let go, so that it rolls out
/// again if it is the latest ready one.
pub fn resume(status: &mut RolloutStatus, now: Timestamp) -> Result<(), CommandError> {
    match status.current.as_mut() {
        Some(p) if p.paused => {
            p.paused = false;
            p.step_started_at = stamp(now);
            Ok(())
        }
        Some(_) => Err(CommandError::NothingToResume),
        None if status.held_revision.is_some() => {
            status.held_revision = None;
            Ok(())
        }
        None => Err(CommandError::NothingToResume),
    }
}

/// `skiff rollout promote`: the new revision takes all of the latest-revision traffic now.
pub fn promote(
    status: &mut RolloutStatus,
    windows: Option<(Figures, Figures)>,
    now: Timestamp,
) -> Result<(), CommandError> {
    let mut p = status.current.take().ok_or(CommandError::NoRollout)?;
    let none = Verdict { checks: Vec::new() };
    p.steps
        .push(step_result(&p, now, "promoted", windows, &none));
    let message = format!("promoted at {}% by hand", p.percent());
    complete(status, p, "promoted", message, now);
    Ok(())
}

/// `skiff rollout abort`: back to the stable revision now; the new one is held.
pub fn abort(
    status: &mut RolloutStatus,
    windows: Option<(Figures, Figures)>,
    now: Timestamp,
) -> Result<(), CommandError> {
    let mut p = status.current.take().ok_or(CommandError::NoRollout)?;
    let none = Verdict { checks: Vec::new() };
    p.steps
        .push(step_result(&p, now, "aborted", windows, &none));
    status.held_revision = Some(p.revision.clone());
    let message = format!("aborted at {}% by hand", p.percent());
    end(status, record(p, "aborted", message, now));
    Ok(())
}

/// `skiff rollback [--to REVISION]`: the latest-revision traffic goes to `to` (default: the
/// stable revision of a rollout in progress, else the newest ready revision older than the
/// one serving), which becomes the stable revision; the latest ready revision (`latest`) is
/// held unless it is `to`. `serving`: the revision that takes the latest-revision traffic
/// now, outside a rollout. Returns `to`.
#[allow(clippy::too_many_arguments)]
pub fn rollback(
    status: &mut RolloutStatus,
    to: Option<&str>,
    serving: &str,
    latest: &str,
    revs: &[Rev],
    windows: Option<(Figures, Figures)>,
    now: Timestamp,
) -> Result<String, CommandError> {
    let (from, default) = match &status.current {
        Some(p) => (p.revision.clone(), Some(p.from.clone())),
        None => {
            let generation = find(revs, serving).map_or(i64::MAX, |r| r.generation);
            let previous = revs
                .iter()
                .filter(|r| r.health == Health::Ready && r.generation < generation)
                .max_by_key(|r| r.generation)
                .map(|r| r.name.clone());
            (serving.to_owned(), previous)
        }
    };
    let to = match to {
        Some(t) => t.to_owned(),
        None => default.ok_or(CommandError::NoPrevious)?,
    };
    match find(revs, &to) {
        None => return Err(CommandError::UnknownRevision(to)),
        Some(r) if r.health != Health::Ready => return Err(CommandError::NotReady(to)),
        Some(_) if to == from => return Err(CommandError::AlreadyServing(to)),
        Some(_) => {}
    }
    if status.current.is_some() {
        abort(status, windows, now)?;
        if let Some(r) = status.history.first_mut() {
            r.outcome = "rolled_back".into();
            r.message = format!("rolled back to {to} by hand");
        }
    }
    status.stable_revision = Some(to.clone());
    status.held_revision = (latest != to).then(|| latest.to_owned());
    Ok(to)
}

#[cfg(test)]
mod tests;
