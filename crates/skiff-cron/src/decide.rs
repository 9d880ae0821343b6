//! What a scheduler should do at `now`: run the latest due time, skip it, or wait.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::Schedule;

/// What to do when a run is due while a run started earlier is still active (Kubernetes'
/// `concurrencyPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConcurrencyPolicy {
    /// Start the new run alongside the active one (the default, as in Kubernetes).
    #[default]
    Allow,
    /// Skip the new run while one is active; the skipped time counts as done, it is not run
    /// when the active run ends.
    Forbid,
    /// Stop the active run, then start the new one.
    Replace,
}

impl ConcurrencyPolicy {
    /// The policy's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "Allow",
            ConcurrencyPolicy::Forbid => "Forbid",
            ConcurrencyPolicy::Replace => "Replace",
        }
    }
}

impl fmt::Display for ConcurrencyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A concurrency policy name that is not `Allow`, `Forbid` or `Replace`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown concurrency policy `{given}`; use Allow, Forbid or Replace{}",
    hint(given)
)]
pub struct ParsePolicyError {
    /// The name as given.
    pub given: String,
}

/// Points at the right spelling when only the case is wrong (names are case-sensitive, as in
/// Kubernetes).
fn hint(given: &str) -> String {
    [
        ConcurrencyPolicy::Allow,
        ConcurrencyPolicy::Forbid,
        ConcurrencyPolicy::Replace,
    ]
    .into_iter()
    .find(|p| p.as_str().eq_ignore_ascii_case(given))
    .map(|p| format!(" (names are case-sensitive: {p})"))
    .unwrap_or_default()
}

impl FromStr for ConcurrencyPolicy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Allow" => Ok(ConcurrencyPolicy::Allow),
            "Forbid" => Ok(ConcurrencyPolicy::Forbid),
            "Replace" => Ok(ConcurrencyPolicy::Replace),
            _ => Err(ParsePolicyError {
                given: s.to_owned(),
            }),
        }
    }
}

/// Why a due time was skipped rather than run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `now` is more than the starting deadline past the due time.
    DeadlineExceeded,
    /// A run is still active and the policy is [`ConcurrencyPolicy::Forbid`].
    ConcurrencyForbid,
}

impl SkipReason {
    /// A stable name for events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::DeadlineExceeded => "DeadlineExceeded",
            SkipReason::ConcurrencyForbid => "ConcurrencyForbid",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::DeadlineExceeded => "the starting deadline had passed",
            SkipReason::ConcurrencyForbid => {
                "the previous run is still active and the concurrency policy is Forbid"
            }
        })
    }
}

/// What the scheduler should do now. After [`Decision::Run`] and [`Decision::Skip`] the caller
/// records `scheduled` as its new `last` and calls [`decide`] again (which then answers
/// [`Decision::Wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start one run for `scheduled` (the latest due time); `missed` = how many earlier due
    /// times since `last` are skipped (0 normally); `replace` = stop the active run first
    /// (Replace policy).
    Run {
        /// The due time this run is for (its scheduled time, not its start).
        scheduled: Timestamp,
        /// How many earlier due times are skipped, exactly.
        missed: u64,
        /// Stop the active run before starting this one.
        replace: bool,
    },
    /// The latest due time is past its starting deadline (or Forbid with an active run):
    /// record it as skipped, don't run; then wait.
    Skip {
        /// The due time that is skipped.
        scheduled: Timestamp,
        /// How many due times before it are skipped too, exactly.
        missed: u64,
        /// Why it is skipped.
        reason: SkipReason,
    },
    /// Nothing due; look again at `until` (the next fire time).
    Wait {
        /// The next fire time; `None` only past the end of the supported calendar.
        until: Option<Timestamp>,
    },
}

/// What the scheduler should do now (pure): given the schedule, when it last scheduled a run
/// (`last`, None if never; then count from `since` = object creation/update time), `now`, an
/// optional starting deadline, the concurrency policy, and whether a run it started is still
/// active.
///
/// The due times are the fire times in `(start, now]` where `start` is the later of `last` and
/// `since`: a fire time equal to `now` is due, one equal to `last` or `since` is not, and an
/// update of the schedule at `since` never makes the new expression's earlier times due. Only
/// the latest due time is acted on; the earlier ones are reported in `missed`. When `last` is
/// after `now` (the clock went back), nothing is due until the first fire time after `last`, so
/// no time is run twice.
pub fn decide(
    s: &Schedule,
    last: Option<Timestamp>,
    since: Timestamp,
    now: Timestamp,
    starting_deadline: Option<Duration>,
    policy: ConcurrencyPolicy,
    active: bool,
) -> Decision {
    let start = last.map_or(since, |last| last.max(since));
    let Some(scheduled) = (start < now)
        .then(|| s.last_fire(now, Some(start)))
        .flatten()
    else {
        return Decision::Wait {
            until: s.next_after(start.max(now)),
        };
    };
    let missed = s.count_between(start, scheduled);
    // A deadline too large for a SignedDuration can never be exceeded.
    let late = starting_deadline
        .and_then(|d| SignedDuration::try_from(d).ok())
        .is_some_and(|d| now.duration_since(scheduled) > d);
    if late {
        return Decision::Skip {
            scheduled,
            missed,
            reason: SkipReason::DeadlineExceeded,
        };
    }
    match (policy, active) {
        (ConcurrencyPolicy::Forbid, true) => Decision::Skip {
            scheduled,
            missed,
            reason: SkipReason::ConcurrencyForbid,
        },
        (ConcurrencyPolicy::Replace, true) => Decision::Run {
            scheduled,
            missed,
            replace: true,
        },
        _ => Decision::Run {
            scheduled,
            missed,
            replace: false,
        },
    }
}
