//! Evaluating an SLO over a request history: the SLI over the period, the budget left, the
//! burn rate over every window, and which alert conditions hold.

use std::time::Duration;

use serde::Serialize;
use skiff_api::slo::Slo;

use crate::windows::{
    self, BurnCondition, DEFAULT_MIN_WINDOW, Severity, burn_conditions, burn_rate,
};

/// Requests answered in a time range, and how many of them were bad.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests answered.
    pub total: u64,
    /// Requests that count against the objective (never more than `total`).
    pub bad: u64,
}

/// Which requests are bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SliKind {
    /// Those answered 5xx.
    Availability,
    /// Those answered slower than the bound at `bucket_index` of
    /// [`skiff_api::slo::LATENCY_BUCKETS_SECONDS`], that is, not counted in that bucket.
    Latency {
        /// The threshold's index in the histogram's bounds.
        bucket_index: usize,
    },
}

/// A Service's request history, implemented by the caller over its store.
pub trait Sli {
    /// The requests answered in `(from_unix, to_unix]` (Unix seconds) and the bad ones among
    /// them. A range before the history begins counts what the history has.
    fn counts(&self, kind: SliKind, from_unix: i64, to_unix: i64) -> Counts;
}

/// What an objective is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    /// Requests that do not answer 5xx.
    Availability,
    /// Requests answered within a threshold.
    Latency,
}

impl ObjectiveKind {
    /// `availability` or `latency` (the `sloth_slo` label).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectiveKind::Availability => "availability",
            ObjectiveKind::Latency => "latency",
        }
    }
}

/// The burn rate over one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowBurn {
    /// The window, in seconds.
    pub window_seconds: u64,
    /// The requests in it.
    pub counts: Counts,
    /// Their burn rate.
    pub burn_rate: f64,
    /// The factor the burn rate is compared with.
    pub threshold: f64,
}

/// One alert condition now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    /// How urgent it is.
    pub severity: Severity,
    /// The long window.
    pub long: WindowBurn,
    /// The short window.
    pub short: WindowBurn,
    /// Whether both windows exceed their thresholds.
    pub holds: bool,
}

/// One objective now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveReport {
    /// What it is about.
    pub kind: ObjectiveKind,
    /// The share of good requests it asks for (0 to 1).
    pub objective: f64,
    /// The latency threshold in seconds (latency objectives only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_seconds: Option<f64>,
    /// The requests over the whole period.
    pub period_counts: Counts,
    /// The share of good requests over the period; `None` without traffic.
    pub sli: Option<f64>,
    /// The share of the period's error budget left: 1 untouched, 0 spent, negative overspent.
    pub budget_remaining: f64,
    /// Every alert condition of the policy, with its windows.
    pub conditions: Vec<ConditionReport>,
}

impl ObjectiveReport {
    /// Whether some condition of `severity` holds.
    pub fn firing(&self, severity: Severity) -> bool {
        self.conditions
            .iter()
            .any(|c| c.severity == severity && c.holds)
    }
}

/// An SLO evaluated at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When (Unix seconds).
    pub now_unix: i64,
    /// The period, in seconds.
    pub period_seconds: u64,
    /// `workbook` or `simple`.
    pub policy: String,
    /// Availability first, then latency, those the SLO sets.
    pub objectives: Vec<ObjectiveReport>,
}

/// Evaluates `slo` at `now_unix` with windows clamped to [`DEFAULT_MIN_WINDOW`].
pub fn evaluate(slo: &Slo, sli: &impl Sli, now_unix: i64) -> Report {
    evaluate_with_min_window(slo, sli, now_unix, DEFAULT_MIN_WINDOW)
}

/// Evaluates `slo` at `now_unix` with windows clamped to `min_window`.
pub fn evaluate_with_min_window(
    slo: &Slo,
    sli: &impl Sli,
    now_unix: i64,
    min_window: Duration,
) -> Report {
    let conditions = burn_conditions(slo.policy, slo.period, min_window);
    let objectives = objectives_of(slo)
        .into_iter()
        .map(|(kind, sli_kind, objective, threshold_seconds)| {
            let at = Evaluation {
                sli,
                kind: sli_kind,
                objective,
                now_unix,
            };
            let period_counts = at.counts(slo.period);
            ObjectiveReport {
                kind,
                objective,
                threshold_seconds,
                period_counts,
                sli: (period_counts.total > 0)
                    .then(|| 1.0 - period_counts.bad as f64 / period_counts.total as f64),
                budget_remaining: windows::budget_remaining(
                    period_counts.total,
                    period_counts.bad,
                    objective,
                ),
                conditions: conditions.iter().map(|c| at.condition(c)).collect(),
            }
        })
        .collect();
    Report {
        now_unix,
        period_seconds: slo.period.as_secs(),
        policy: slo.policy.to_string(),
        objectives,
    }
}

/// The objectives an SLO sets: kind, how to count, objective, latency threshold.
pub(crate) fn objectives_of(slo: &Slo) -> Vec<(ObjectiveKind, SliKind, f64, Option<f64>)> {
    let mut out = Vec::new();
    if let Some(a) = slo.availability {
        out.push((ObjectiveKind::Availability, SliKind::Availability, a, None));
    }
    if let Some(l) = slo.latency {
        let kind = SliKind::Latency {
            bucket_index: l.bucket_index,
        };
        out.push((
            ObjectiveKind::Latency,
            kind,
            l.objective,
            Some(l.threshold_seconds()),
        ));
    }
    out
}

/// One objective's evaluation at one instant.
struct Evaluation<'a, S> {
    sli: &'a S,
    kind: SliKind,
    objective: f64,
    now_unix: i64,
}

impl<S: Sli> Evaluation<'_, S> {
    fn counts(&self, window: Duration) -> Counts {
        let from = self
            .now_unix
            .saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
        self.sli.counts(self.kind, from, self.now_unix)
    }

    fn window(&self, window: Duration, threshold: f64) -> WindowBurn {
        let counts = self.counts(window);
        WindowBurn {
            window_seconds: window.as_secs(),
            counts,
            burn_rate: burn_rate(counts.total, counts.bad, self.objective),
            threshold,
        }
    }

    fn condition(&self, c: &BurnCondition) -> ConditionReport {
        let long = self.window(c.long, c.long_factor);
        let short = self.window(c.short, c.short_factor);
        ConditionReport {
            severity: c.severity,
            long,
            short,
            holds: long.burn_rate > long.threshold && short.burn_rate > short.threshold,
        }
    }
}
