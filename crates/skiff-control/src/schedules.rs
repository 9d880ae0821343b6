//! Jobs on a schedule (`skiff.dev/schedule`): the schedule reconciler.
//!
//! Per job with a schedule: read its status (the scheduled time of the last run, when the
//! schedule was set), ask [`skiff_cron::decide`] what is due now, act, and come back at the
//! next fire time. The decision is `skiff-cron`'s (pure, tested on a simulated clock: DST,
//! missed runs, starting deadline, concurrency policy); this module only reads and acts.
//! A run and the scheduled time it is for are stored in one transaction
//! ([`Jobs::run_scheduled`]), so a time runs once even if the daemon dies between the two.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use skiff_api::job::{Job, JobSchedule, Overrides};
use skiff_cron::{ConcurrencyPolicy, Decision, Schedule};
use skiff_store::keys;
use tracing::{info, warn};

use crate::controller::ControllerError;
use crate::jobs::Jobs;
use crate::reconciler::{Next, ReconcileError, Reconciler};

/// (namespace, job).
pub type JobKey = (String, String);

/// The longest wait before a schedule is looked at again (a clock set forward is noticed
/// within this).
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The parsed schedule of a job, with its policy and deadline.
pub struct Parsed {
    /// The cron schedule.
    pub schedule: Schedule,
    /// The concurrency policy.
    pub policy: ConcurrencyPolicy,
    /// The starting deadline.
    pub deadline: Option<Duration>,
}

/// Reads a job's schedule settings (validated at apply; a stored one that no longer parses,
/// e.g. a time zone removed from the host's tzdb, is `Err` with the reason).
pub fn parse(s: &JobSchedule) -> Result<Parsed, String> {
    let schedule =
        Schedule::parse(&s.schedule, s.timezone.as_deref()).map_err(|e| e.to_string())?;
    let policy = s
        .concurrency_policy
        .parse::<ConcurrencyPolicy>()
        .map_err(|_| format!("`{}` is not a concurrency policy", s.concurrency_policy))?;
    Ok(Parsed {
        schedule,
        policy,
        deadline: s.starting_deadline_seconds.map(Duration::from_secs),
    })
}

fn time(s: Option<&str>) -> Option<jiff::Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// How long from `now` until `until`, at most [`MAX_WAIT`].
pub fn wait_until(now: jiff::Timestamp, until: Option<jiff::Timestamp>) -> Duration {
    until
        .map(|u| u.duration_since(now).unsigned_abs())
        .unwrap_or(MAX_WAIT)
        .clamp(Duration::from_millis(10), MAX_WAIT)
}

/// Runs jobs on their schedules.
pub struct JobScheduler(pub Arc<Jobs>);

impl JobScheduler {
    async fn tick(&self, job: &Job, now: jiff::Timestamp) -> Result<Next, ReconcileError> {
        let (ns, name) = (&job.metadata.namespace, &job.metadata.name);
        let Some(settings) = JobSchedule::of(&job.metadata.annotations) else {
            return Ok(Next::Done);
        };
        let p = match parse(&settings) {
            Ok(p) => p,
            Err(why) => {
                warn!(namespace = %ns, job = %name, error = %why, "the job's schedule cannot be read; it does not run");
                return Ok(Next::Done);
            }
        };
        let since = time(job.status.schedule_since.as_deref())
            .or_else(|| time(Some(&job.metadata.creation_timestamp)))
            .unwrap_or(now);
        let last = time(job.status.last_schedule_time.as_deref());
        let active: Vec<String> = self
            .0
            .executions(ns, Some(name))
            .await?
            .into_iter()
            .filter(|e| !e.is_done())
            .map(|e| e.metadata.name)
            .collect();
        let decision = skiff_cron::decide(
            &p.schedule,
            last,
            since,
            now,
            p.deadline,
            p.policy,
            !active.is_empty(),
        );
        let next = p.schedule.next_after(now);
        match decision {
            Decision::Run {
                scheduled,
                missed,
                replace,
            } => {
                if replace {
                    for e in &active {
                        info!(namespace = %ns, job = %name, execution = %e, "replacing the running execution (concurrency policy Replace)");
                        self.0.cancel(ns, e).await?;
                    }
                }
                if missed > 0 {
                    info!(namespace = %ns, job = %name, missed, "runs missed while the daemon was down; only the latest runs");
                }
                match self
                    .0
                    .run_scheduled(
                        ns,
                        name,
                        &Overrides::default(),
                        "schedule",
                        None,
                        Some((scheduled, missed)),
                    )
                    .await
                {
                    Ok(e) => {
                        info!(namespace = %ns, job = %name, execution = %e.metadata.name, scheduled = %scheduled, "scheduled run started")
                    }
                    // Already run for that time (a concurrent pass): nothing to do.
                    Err(ControllerError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Decision::Skip {
                scheduled,
                missed,
                reason,
            } => {
                let at = scheduled.to_string();
                let why = format!("{scheduled}: {reason}");
                info!(namespace = %ns, job = %name, scheduled = %scheduled, reason = %reason, "scheduled run skipped");
                self.0
                    .update_job_status(ns, name, |j| {
                        if j.status.last_schedule_time.as_deref() == Some(&at) {
                            return false;
                        }
                        j.status.last_schedule_time = Some(at.clone());
                        j.status.missed_runs += missed + 1;
                        j.status.last_skip = Some(why.clone());
                        true
                    })
                    .await?;
            }
            Decision::Wait { .. } => {}
        }
        let next_text = next.map(|n| n.to_string());
        self.0
            .update_job_status(ns, name, |j| {
                if j.status.next_schedule_time == next_text {
                    return false;
                }
                j.status.next_schedule_time = next_text.clone();
                true
            })
            .await?;
        Ok(Next::RequeueAfter(wait_until(now, next)))
    }
}

#[async_trait]
impl Reconciler for JobScheduler {
    type Key = JobKey;

    fn name(&self) -> &'static str {
        "schedules"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[keys::JOBS, keys::EXECUTIONS]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<JobKey> {
        if let Some((ns, name)) = keys::parse_job(store_key) {
            return vec![(ns.to_owned(), name.to_owned())];
        }
        // An execution is `<job>-<suffix>`: its end may let a Forbid schedule run.
        if let Some((ns, exec)) = keys::parse_execution(store_key)
            && let Some((job, _)) = exec.rsplit_once('-')
        {
            return vec![(ns.to_owned(), job.to_owned())];
        }
        Vec::new()
    }

    async fn all_keys(&self) -> Result<Vec<JobKey>, ReconcileError> {
        Ok(self
            .0
            .list(None)
            .await?
            .into_iter()
            .filter(|j| JobSchedule::of(&j.metadata.annotations).is_some())
            .map(|j| (j.metadata.namespace, j.metadata.name))
            .collect())
    }

    async fn reconcile(&self, key: &JobKey) -> Result<Next, ReconcileError> {
        let job = match self.0.get(&key.0, &key.1).await {
            Ok(j) => j,
            Err(ControllerError::NotFound { .. }) => return Ok(Next::Done),
            Err(e) => return Err(e.into()),
        };
        let now = self.0.now();
        self.tick(&job, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_bounded() {
        let now = jiff::Timestamp::from_second(1_800_000_000).expect("a time");
        assert_eq!(wait_until(now, None), MAX_WAIT);
        let soon = now + jiff::SignedDuration::from_secs(5);
        assert_eq!(wait_until(now, Some(soon)), Duration::from_secs(5));
        let later = now + jiff::SignedDuration::from_secs(3600);
        assert_eq!(wait_until(now, Some(later)), MAX_WAIT);
        assert_eq!(wait_until(now, Some(now)), Duration::from_millis(10));
    }

    #[test]
    fn settings_are_read_with_their_policy_and_deadline() {
        let p = parse(&JobSchedule {
            schedule: "0 3 * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            concurrency_policy: "Forbid".into(),
            starting_deadline_seconds: Some(600),
        })
        .expect("valid");
        assert_eq!(p.policy, ConcurrencyPolicy::Forbid);
        assert_eq!(p.deadline, Some(Duration::from_secs(600)));
        assert!(
            parse(&JobSchedule {
                schedule: "0 3 * * *".into(),
                timezone: None,
                concurrency_policy: "Sometimes".into(),
                starting_deadline_seconds: None,
            })
            .is_err()
        );
    }
}
