//! Cost budgets that stop scale-up (`skiff.dev/budget`). After each evaluation the SLO engine
//! ([`crate::slo::SloEngine`]) publishes the Services whose period's spend has reached their
//! budget ([`BudgetStops`]); [`crate::serving::Serving`] caps the desired scale of their
//! revisions ([`cap`]) and marks their pools, so that requests beyond the instances left
//! queue and are then refused with 429 and reason `budget`.
//!
//! # Design
//! At the first decision after a Service's budget is found spent, each of its revisions is
//! held at the instances it has then (starting or running, not stopping). From there the
//! hold only goes down: the autoscaler may scale down, and to zero by its usual idle rules,
//! but never back up, and a request waiting for a revision at zero does not start an
//! instance. The hold ends when the Service is no longer in the published set: its period
//! turned (the spend starts from zero again), its budget was raised enough or removed, or
//! it was deleted. Instances that crash while held are replaced (the hold counts what was
//! running, not what is running now).
//!
//! # Limitations
//! - The set is published after each history flush, every 10 s: spending goes on for up to
//!   10 s past the budget, a raised budget takes up to 10 s to lift the hold, and after a
//!   restart nothing is held until the first evaluation.
//! - A manual `skiff scale` override is an operator's explicit choice and is not capped.

use std::collections::BTreeMap;

use skiff_api::slo::BudgetPeriod;
use skiff_autoscaler::Decision;

use crate::serving::ServiceKey;

/// A Service whose budget is spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetStop {
    /// Its budget, in dollars per period.
    pub dollars: f64,
    /// The period.
    pub per: BudgetPeriod,
    /// When the period turns (Unix seconds).
    pub until_unix: i64,
}

/// The Services whose budget is spent, as last evaluated.
pub type BudgetStops = BTreeMap<ServiceKey, BudgetStop>;

impl BudgetStop {
    /// The budget as a user writes it: `$5/day`.
    pub fn budget(&self) -> String {
        let per = match self.per {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        };
        format!("${}/{per}", self.dollars)
    }

    /// When the period turns, in RFC 3339.
    pub fn until(&self) -> String {
        jiff::Timestamp::from_second(self.until_unix)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| self.until_unix.to_string())
    }

    /// What the router says in its refusals.
    pub fn for_router(&self) -> skiff_router::BudgetStop {
        skiff_router::BudgetStop {
            budget: self.budget(),
            until: self.until(),
            until_unix: self.until_unix,
        }
    }

    /// One line for people: why scale-up is stopped and until when.
    pub fn describe(&self) -> String {
        format!(
            "the cost budget ({}) is spent: no scale-up until {} or until skiff.dev/budget is raised",
            self.budget(),
            self.until()
        )
    }
}

/// Caps an autoscaler decision while the revision's Service has spent its budget (`stop`).
/// `held` is the revision's hold, kept between decisions: set from `live()` (the instances
/// the revision has now) at the first decision under the stop, lowered with every lower
/// decision, cleared once there is no stop. Pure: the caller passes the state.
pub fn cap(
    mut d: Decision,
    stop: Option<&BudgetStop>,
    held: &mut Option<u32>,
    live: impl FnOnce() -> u32,
) -> Decision {
    let Some(stop) = stop else {
        *held = None;
        return d;
    };
    let hold = held.get_or_insert_with(live);
    if d.desired > *hold {
        d.reason = format!("{}; held at {hold}: {}", d.reason, stop.describe());
        d.desired = *hold;
    }
    *hold = d.desired;
    d
}

#[cfg(test)]
mod tests {
    use skiff_autoscaler::{Autoscaler, Bucket, Settings};

    use super::*;

    fn stop() -> BudgetStop {
        BudgetStop {
            dollars: 0.5,
            per: BudgetPeriod::Day,
            until_unix: 1_800_057_600,
        }
    }

    /// A revision driven as `Serving::decide` drives it: a bucket of `concurrency` every
    /// second, a decision every 2 s, capped under `stop`.
    struct Sim {
        autoscaler: Autoscaler,
        settings: Settings,
        held: Option<u32>,
        now_ms: u64,
        /// Instances: every decision's desired count is running at the next.
        running: u32,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                autoscaler: Autoscaler::new(0),
                settings: Settings {
                    container_concurrency: 1,
                    stable_window_ms: 6_000,
                    scale_to_zero_grace_ms: 4_000,
                    initial_scale: 0,
                    ..Settings::default()
                },
                held: None,
                now_ms: 0,
                running: 0,
            }
        }

        /// Two seconds at `concurrency` (and `waiting` requests queued), then a decision.
        fn step(&mut self, concurrency: f64, waiting: u32, stop: Option<&BudgetStop>) -> Decision {
            for _ in 0..2 {
                self.now_ms += 1_000;
                self.autoscaler.record(Bucket {
                    at_ms: self.now_ms - 1_000,
                    concurrency,
                    requests: concurrency as u64,
                });
            }
            let d = self
                .autoscaler
                .decide(&self.settings, self.now_ms, self.running, waiting);
            let running = self.running;
            let d = cap(d, stop, &mut self.held, || running);
            self.running = d.desired;
            d
        }
    }

    /// On a simulated clock: load grows the revision to 3; once the budget is spent, more
    /// load does not grow it (the reason says why); less load scales it down, and that is
    /// where it stays; idle, it goes to zero, and a waiting request does not start an
    /// instance; when the stop lifts, the load scales it up at once.
    #[test]
    fn a_spent_budget_holds_then_lets_go() {
        let mut sim = Sim::new();
        let mut d = sim.step(2.0, 0, None);
        for _ in 0..3 {
            d = sim.step(2.0, 0, None);
        }
        assert_eq!(d.desired, 3, "{d:?}");
        let s = stop();
        for _ in 0..5 {
            d = sim.step(6.0, 0, Some(&s));
            assert_eq!(d.desired, 3, "{d:?}");
        }
        assert!(
            d.reason
                .contains("held at 3: the cost budget ($0.5/day) is spent"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("2027-01-16T00:00:00Z"), "{}", d.reason);
        // Less load: down to what it needs, and not back up.
        for _ in 0..6 {
            d = sim.step(1.0, 0, Some(&s));
        }
        assert_eq!(d.desired, 2, "{d:?}");
        d = sim.step(6.0, 0, Some(&s));
        assert_eq!(d.desired, 2, "{d:?}");
        // Idle: to zero after the grace period, and a waiting request starts nothing.
        for _ in 0..10 {
            d = sim.step(0.0, 0, Some(&s));
        }
        assert_eq!(d.desired, 0, "{d:?}");
        d = sim.step(1.0, 1, Some(&s));
        assert_eq!(d.desired, 0, "{d:?}");
        assert!(d.reason.contains("held at 0"), "{}", d.reason);
        // The period turned or the budget was raised.
        d = sim.step(1.0, 1, None);
        assert!(d.desired >= 1, "{d:?}");
        assert_eq!(sim.held, None);
    }

    /// The hold is what the revision had when the stop began, starting instances included,
    /// and it is not lowered by instances that stop on their own (they are replaced).
    #[test]
    fn the_hold_counts_what_ran_when_the_budget_was_spent() {
        let decision = |desired| Decision {
            at_ms: 0,
            desired,
            panicking: false,
            stable_average: 0.0,
            panic_average: 0.0,
            reason: "stable".into(),
        };
        let s = stop();
        let mut held = None;
        assert_eq!(cap(decision(5), Some(&s), &mut held, || 3).desired, 3);
        // Live is read once, when the hold starts.
        assert_eq!(
            cap(decision(5), Some(&s), &mut held, || unreachable!()).desired,
            3
        );
        assert_eq!(cap(decision(3), Some(&s), &mut held, || 1).desired, 3);
        assert_eq!(cap(decision(1), Some(&s), &mut held, || 1).desired, 1);
        assert_eq!(cap(decision(4), None, &mut held, || 1).desired, 4);
        assert_eq!(held, None);
        let uncapped = cap(decision(2), Some(&s), &mut held, || 2);
        assert_eq!((uncapped.desired, uncapped.reason.as_str()), (2, "stable"));
    }

    /// A budget reads back as it is written, with its period's end in RFC 3339.
    #[test]
    fn what_people_read() {
        let s = stop();
        assert_eq!(s.budget(), "$0.5/day");
        let tiny = BudgetStop {
            dollars: 0.000001,
            per: BudgetPeriod::Month,
            ..s
        };
        assert_eq!(tiny.budget(), "$0.000001/month");
        let r = s.for_router();
        assert_eq!(
            (r.budget.as_str(), r.until.as_str(), r.until_unix),
            ("$0.5/day", "2027-01-16T00:00:00Z", 1_800_057_600)
        );
    }
}
