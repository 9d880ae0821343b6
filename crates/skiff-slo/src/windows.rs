//! Alert windows and burn-rate arithmetic.
//!
//! The SRE Workbook's table is written for a 30-day period. For another period every window
//! is scaled by `period / 30d` and the factors are kept: a factor is
//! `budget share × period ÷ window`, so scaling the window with the period leaves it unchanged
//! (a long window still spends the same share of the budget when its condition holds).

use std::time::Duration;

use serde::Serialize;
use skiff_api::slo::Policy;

/// The period the Workbook's windows are written for.
pub const REFERENCE_PERIOD: Duration = Duration::from_secs(30 * DAY);

/// The shortest window skiff's own evaluation uses.
///
/// A scaled window can be absurdly short: a 1-hour period scales the Workbook's 5-minute
/// window to 0.42 s. skiff samples its request history every 10 s, so a shorter window would
/// hold one partial sample or none, and a burn rate over it would be noise. Windows are
/// therefore clamped up to this minimum (their factors are not changed; a clamped window
/// only makes its condition slower to start and slower to clear).
pub const DEFAULT_MIN_WINDOW: Duration = Duration::from_secs(10);

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Someone should act now.
    Page,
    /// Someone should act within working hours.
    Ticket,
}

impl Severity {
    /// `page` or `ticket` (the `sloth_severity` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// One multiwindow condition: it holds when the burn rate over `long` exceeds `long_factor`
/// and the burn rate over `short` exceeds `short_factor`.
///
/// The long window says enough budget was spent to matter; the short one says it is still
/// being spent, so the alert clears soon after the burn stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BurnCondition {
    /// How urgent it is.
    pub severity: Severity,
    /// The long window, scaled to the period and clamped.
    pub long: Duration,
    /// The burn-rate threshold over the long window.
    pub long_factor: f64,
    /// The short window, scaled to the period and clamped.
    pub short: Duration,
    /// The burn-rate threshold over the short window.
    pub short_factor: f64,
}

/// (severity, long window, long factor, short window, short factor) for a 30-day period.
type Row = (Severity, u64, f64, u64, f64);

/// The SRE Workbook's table 5-8 (multiwindow, multi-burn-rate alerts).
const WORKBOOK: [Row; 3] = [
    (Severity::Page, HOUR, 14.4, 5 * MINUTE, 14.4),
    (Severity::Page, 6 * HOUR, 6.0, 30 * MINUTE, 6.0),
    (Severity::Ticket, 3 * DAY, 1.0, 6 * HOUR, 1.0),
];

/// The `simple` policy: one ticket, 1.5× over 6 h and 2× over 30 min.
const SIMPLE: [Row; 1] = [(Severity::Ticket, 6 * HOUR, 1.5, 30 * MINUTE, 2.0)];

/// A window of the 30-day table scaled to `period`: rounded to whole seconds (Prometheus
/// durations are written in whole units) and clamped up to `min_window` and 1 s.
pub fn scale_window(reference: Duration, period: Duration, min_window: Duration) -> Duration {
    let scaled = reference.as_secs_f64() * period.as_secs_f64() / REFERENCE_PERIOD.as_secs_f64();
    let secs = (scaled.round() as u64).max(min_window.as_secs()).max(1);
    Duration::from_secs(secs)
}

/// The conditions of `policy` for a period, windows scaled and clamped to `min_window`.
pub fn burn_conditions(
    policy: Policy,
    period: Duration,
    min_window: Duration,
) -> Vec<BurnCondition> {
    let rows: &[Row] = match policy {
        Policy::Workbook => &WORKBOOK,
        Policy::Simple => &SIMPLE,
    };
    let scale = |secs| scale_window(Duration::from_secs(secs), period, min_window);
    rows.iter()
        .map(
            |&(severity, long, long_factor, short, short_factor)| BurnCondition {
                severity,
                long: scale(long),
                long_factor,
                short: scale(short),
                short_factor,
            },
        )
        .collect()
}

/// Every window the conditions use, shortest first, each once.
pub fn windows_of(conditions: &[BurnCondition]) -> Vec<Duration> {
    let mut out: Vec<Duration> = conditions.iter().flat_map(|c| [c.short, c.long]).collect();
    out.sort();
    out.dedup();
    out
}

/// The severities `policy` can raise, most urgent first.
pub fn severities(policy: Policy) -> &'static [Severity] {
    match policy {
        Policy::Workbook => &[Severity::Page, Severity::Ticket],
        Policy::Simple => &[Severity::Ticket],
    }
}

/// The error budget of an objective, `1 − objective`, rounded to 12 decimals so that
/// `1 − 0.999` is 0.001 and not 0.0010000000000000009.
pub fn error_budget(objective: f64) -> f64 {
    round12(1.0 - objective)
}

/// `x` rounded to 12 decimals.
pub(crate) fn round12(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}

/// The burn rate of `bad` out of `total` requests: the error ratio over the error budget.
/// 1 spends the budget exactly over the period. No traffic burns nothing: 0.
pub fn burn_rate(total: u64, bad: u64, objective: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (bad as f64 / total as f64) / error_budget(objective)
}

/// The share of the period's error budget left after `bad` out of `total` requests:
/// `1 − burn rate`. 1 with no traffic; negative once more than the budget was spent.
pub fn budget_remaining(total: u64, bad: u64, objective: f64) -> f64 {
    1.0 - burn_rate(total, bad, objective)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn table(c: &[BurnCondition]) -> Vec<(Severity, u64, f64, u64, f64)> {
        c.iter()
            .map(|c| {
                (
                    c.severity,
                    c.long.as_secs(),
                    c.long_factor,
                    c.short.as_secs(),
                    c.short_factor,
                )
            })
            .collect()
    }

    /// For 30 days the Workbook's table is reproduced as written.
    #[test]
    fn workbook_30d_is_the_table() {
        let c = burn_conditions(Policy::Workbook, REFERENCE_PERIOD, DEFAULT_MIN_WINDOW);
        assert_eq!(
            table(&c),
            vec![
                (Severity::Page, 3600, 14.4, 300, 14.4),
                (Severity::Page, 21600, 6.0, 1800, 6.0),
                (Severity::Ticket, 259_200, 1.0, 21600, 1.0),
            ]
        );
        assert_eq!(
            windows_of(&c),
            [300, 1800, 3600, 21600, 259_200].map(secs).to_vec()
        );
    }

    /// For 1 hour the windows shrink by 720 and the shortest are clamped to 10 s.
    #[test]
    fn workbook_1h_is_clamped() {
        let c = burn_conditions(Policy::Workbook, secs(HOUR), DEFAULT_MIN_WINDOW);
        assert_eq!(
            table(&c),
            vec![
                (Severity::Page, 10, 14.4, 10, 14.4),
                (Severity::Page, 30, 6.0, 10, 6.0),
                (Severity::Ticket, 360, 1.0, 30, 1.0),
            ]
        );
        assert_eq!(windows_of(&c), [10, 30, 360].map(secs).to_vec());
        let c = burn_conditions(Policy::Workbook, secs(HOUR), secs(60));
        assert_eq!(windows_of(&c), [60, 360].map(secs).to_vec());
    }

    /// A 7-day period scales by 7/30 to whole seconds; factors do not change.
    #[test]
    fn other_periods_scale() {
        let c = burn_conditions(Policy::Workbook, secs(7 * DAY), DEFAULT_MIN_WINDOW);
        assert_eq!(
            table(&c),
            vec![
                (Severity::Page, 840, 14.4, 70, 14.4),
                (Severity::Page, 5040, 6.0, 420, 6.0),
                (Severity::Ticket, 60480, 1.0, 5040, 1.0),
            ]
        );
        // The budget share a long window spends at its factor is the Workbook's.
        for (c, share) in c.iter().zip([0.02, 0.05, 0.1]) {
            let spent = c.long_factor * c.long.as_secs_f64() / (7.0 * DAY as f64);
            assert!((spent - share).abs() < 1e-9, "{c:?}: {spent}");
        }
    }

    /// The simple policy is one ticket: 1.5× over 6 h and 2× over 30 min, scaled.
    #[test]
    fn simple_policy() {
        let c = burn_conditions(Policy::Simple, REFERENCE_PERIOD, DEFAULT_MIN_WINDOW);
        assert_eq!(table(&c), vec![(Severity::Ticket, 21600, 1.5, 1800, 2.0)]);
        let c = burn_conditions(Policy::Simple, secs(HOUR), DEFAULT_MIN_WINDOW);
        assert_eq!(table(&c), vec![(Severity::Ticket, 30, 1.5, 10, 2.0)]);
        assert_eq!(severities(Policy::Simple), &[Severity::Ticket]);
    }

    /// Burn rate is the error ratio over the budget; no traffic burns nothing; the budget
    /// left goes negative once overspent.
    #[test]
    fn burn_and_budget() {
        assert_eq!(error_budget(0.999), 0.001);
        assert_eq!(burn_rate(1000, 1, 0.999), 1.0);
        assert_eq!(burn_rate(100, 100, 0.999), 1000.0);
        assert_eq!(burn_rate(0, 0, 0.999), 0.0);
        assert_eq!(budget_remaining(0, 0, 0.999), 1.0);
        assert!((budget_remaining(10_000, 5, 0.999) - 0.5).abs() < 1e-12);
        assert!((budget_remaining(1000, 3, 0.999) + 2.0).abs() < 1e-12);
    }
}
