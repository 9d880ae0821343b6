//! Cost-budget alerts: a ticket once 80% of the period's budget is spent, a page at 100%.
//!
//! The caller adds up what the Service cost since [`budget_period_start`]; both alerts go
//! through the same [`crate::Alerts`] state as burn-rate alerts, under
//! [`AlertKind::Budget`]. At 100% both hold (the ticket does not resolve when the page
//! fires), as two Prometheus alerts on the same expression at two thresholds would.

use skiff_api::slo::{Budget, BudgetPeriod};

use crate::alerts::{AlertKey, AlertKind, Condition};
use crate::windows::Severity;

/// The share of the budget at which a ticket is raised.
pub const BUDGET_TICKET_SHARE: f64 = 0.8;
/// The share of the budget at which a page is raised.
pub const BUDGET_PAGE_SHARE: f64 = 1.0;

/// Whether each budget alert holds after spending `spent_dollars` in the budget's period:
/// `[(Page, spent ≥ 100%), (Ticket, spent ≥ 80%)]`.
pub fn budget_severities(spent_dollars: f64, budget: &Budget) -> [(Severity, bool); 2] {
    let share = if budget.dollars > 0.0 {
        spent_dollars / budget.dollars
    } else {
        f64::INFINITY
    };
    [
        (Severity::Page, share >= BUDGET_PAGE_SHARE),
        (Severity::Ticket, share >= BUDGET_TICKET_SHARE),
    ]
}

/// The budget alerts' conditions for a Service, for [`crate::Alerts::step`].
pub fn budget_conditions(
    namespace: &str,
    service: &str,
    spent_dollars: f64,
    budget: &Budget,
) -> Vec<Condition> {
    budget_severities(spent_dollars, budget)
        .into_iter()
        .map(|(severity, holds)| Condition {
            key: AlertKey {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
                kind: AlertKind::Budget,
                severity,
            },
            holds,
        })
        .collect()
}

const DAY: i64 = 86_400;

/// When the budget period containing `now_unix` began (Unix seconds): 00:00 UTC of the day,
/// or of the 1st of the calendar month.
pub fn budget_period_start(per: BudgetPeriod, now_unix: i64) -> i64 {
    let days = now_unix.div_euclid(DAY);
    match per {
        BudgetPeriod::Day => days * DAY,
        BudgetPeriod::Month => {
            let (y, m, _) = civil_from_days(days);
            days_from_civil(y, m, 1) * DAY
        }
    }
}

/// When the budget period containing `now_unix` ends (Unix seconds): the start of the next
/// day or calendar month, when the spend starts again from zero.
pub fn budget_period_end(per: BudgetPeriod, now_unix: i64) -> i64 {
    let start = budget_period_start(per, now_unix);
    match per {
        BudgetPeriod::Day => start + DAY,
        // 31 days after the 1st is always in the next month.
        BudgetPeriod::Month => budget_period_start(per, start + 31 * DAY),
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, <https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day count since 1970-01-01 of a proleptic Gregorian date (Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Alerts, Transition};

    fn budget(dollars: f64, per: BudgetPeriod) -> Budget {
        Budget { dollars, per }
    }

    /// 80% raises a ticket, 100% a page as well; below 80% nothing.
    #[test]
    fn thresholds() {
        let b = budget(5.0, BudgetPeriod::Day);
        assert_eq!(
            budget_severities(3.99, &b),
            [(Severity::Page, false), (Severity::Ticket, false)]
        );
        assert_eq!(
            budget_severities(4.0, &b),
            [(Severity::Page, false), (Severity::Ticket, true)]
        );
        assert_eq!(
            budget_severities(5.0, &b),
            [(Severity::Page, true), (Severity::Ticket, true)]
        );
    }

    /// Budget alerts go through the same state machine: ticket, then page, then both
    /// resolve when a new period starts and spending is back to zero.
    #[test]
    fn budget_alerts_in_the_state_machine() {
        let b = budget(150.0, BudgetPeriod::Month);
        let mut a = Alerts::new();
        assert!(
            a.step(0, &budget_conditions("ns", "s", 100.0, &b))
                .is_empty()
        );
        let t = a.step(60, &budget_conditions("ns", "s", 121.0, &b));
        assert!(
            matches!(&t[..], [Transition::Fired { key, since: 60 }] if key.severity == Severity::Ticket && key.kind == AlertKind::Budget)
        );
        let t = a.step(120, &budget_conditions("ns", "s", 150.0, &b));
        assert!(
            matches!(&t[..], [Transition::Fired { key, since: 120 }] if key.severity == Severity::Page)
        );
        assert_eq!(a.firing().len(), 2);
        let t = a.step(180, &budget_conditions("ns", "s", 0.0, &b));
        assert_eq!(t.len(), 2);
        assert!(a.firing().is_empty());
    }

    /// Periods start at 00:00 UTC of the day or of the 1st of the month, leap years and
    /// times before 1970 included.
    #[test]
    fn period_starts() {
        // 2024-02-29T13:45:00Z
        let t = 1_709_214_300;
        assert_eq!(budget_period_start(BudgetPeriod::Day, t), 1_709_164_800);
        // 2024-02-01T00:00:00Z
        assert_eq!(budget_period_start(BudgetPeriod::Month, t), 1_706_745_600);
        // 2023-12-31T23:59:59Z → 2023-12-01
        assert_eq!(
            budget_period_start(BudgetPeriod::Month, 1_704_067_199),
            1_701_388_800
        );
        // 2024-01-01T00:00:00Z is its own start.
        assert_eq!(
            budget_period_start(BudgetPeriod::Month, 1_704_067_200),
            1_704_067_200
        );
        // 1969-12-31T12:00:00Z → 1969-12-01
        assert_eq!(
            budget_period_start(BudgetPeriod::Month, -43_200),
            -2_678_400
        );
        assert_eq!(budget_period_start(BudgetPeriod::Day, -43_200), -86_400);
        // Ends: the next day, the 1st of the next month (February 2024 has 29 days, December
        // ends the year).
        assert_eq!(budget_period_end(BudgetPeriod::Day, t), 1_709_251_200);
        // 2024-03-01T00:00:00Z
        assert_eq!(budget_period_end(BudgetPeriod::Month, t), 1_709_251_200);
        // 2024-01-01T00:00:00Z
        assert_eq!(
            budget_period_end(BudgetPeriod::Month, 1_704_067_199),
            1_704_067_200
        );
        // 2024-01-31T23:59:59Z → 2024-02-01
        assert_eq!(
            budget_period_end(BudgetPeriod::Month, 1_706_745_599),
            1_706_745_600
        );
        for days in [-1_000_000, -1, 0, 59, 365 * 30 + 7, 1_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{days}");
        }
    }
}
