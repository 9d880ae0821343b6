//! Service-level objectives as pure code: burn rates over multiwindow alert conditions, the
//! error budget left, alert state over successive evaluations, cost-budget alerts, and
//! Prometheus rules with Sloth's names. No I/O and no clock: the caller passes the time and
//! a request history ([`Sli`]); tests pass a simulated one.
//!
//! The objectives come from a Service's annotations, parsed by [`skiff_api::slo`]
//! (`skiff.dev/slo-availability: "99.9"`, `skiff.dev/slo-latency: "300ms@95"`,
//! `skiff.dev/slo-period`, `skiff.dev/slo-policy`, `skiff.dev/budget`).
//!
//! # What is computed
//!
//! For each objective (availability: bad = answered 5xx; latency: bad = slower than the
//! threshold, a bound of the router's histogram), [`evaluate`] gives:
//! - the SLI over the period (the share of good requests; none without traffic);
//! - the error budget left: `1 − (bad/total)/(1 − objective)` over the period; 1 untouched,
//!   0 spent, **negative** once overspent;
//! - for every alert condition, the burn rate over its long and short windows, their
//!   thresholds, and whether both exceed them.
//!
//! The burn rate over a window is `(bad/total) / (1 − objective)`: 1 spends the budget
//! exactly by the end of the period. A window without traffic burns nothing (0).
//!
//! # Policies and windows
//!
//! `workbook` (the default) is the SRE Workbook's table 5-8, written for 30 days. A condition
//! holds when the burn rate exceeds its factor over **both** windows:
//!
//! | severity | long window | short window | factor | budget spent over the long window |
//! |---|---|---|---|---|
//! | page | 1h | 5m | 14.4 | 2% |
//! | page | 6h | 30m | 6 | 5% |
//! | ticket | 3d | 6h | 1 | 10% |
//!
//! For another period every window is multiplied by `period / 30d`, rounded to whole
//! seconds, and the factors are kept (a factor is `budget share × period ÷ window`, which
//! scaling leaves unchanged). Windows are then clamped up to a minimum: [`DEFAULT_MIN_WINDOW`]
//! (10 s, skiff's sampling resolution) for skiff's own evaluation,
//! [`DEFAULT_RULES_MIN_WINDOW`] (1 min, a few Prometheus scrapes) for the rules. For a
//! 1-hour period (scale 1/720):
//!
//! | severity | long (scaled → evaluated / rules) | short (scaled → evaluated / rules) | factor |
//! |---|---|---|---|
//! | page | 5 s → 10 s / 1m | 0.42 s → 10 s / 1m | 14.4 |
//! | page | 30 s → 30 s / 1m | 2.5 s → 10 s / 1m | 6 |
//! | ticket | 6 min → 6 min / 6m | 30 s → 30 s / 1m | 1 |
//!
//! A clamped window only makes its condition slower to start and to clear.
//!
//! `simple` is **one ticket, never a page**: it holds when the burn rate exceeds **1.5× over
//! 6 h** and **2× over 30 min** (scaled like the Workbook's). This is how skiff reads the
//! "2× over the short window, 1.5× over the long one" rule of thumb. Those thresholds are
//! too low to page on: a 2× burn for an hour spends 0.28% of a 30-day budget. As a ticket
//! they mean something. The long window at 1.5× means 1.25% of the budget went in 6 hours,
//! and that pace would exhaust the budget in 20 days. The short window at 2× means the burn
//! is still going on, and the ticket clears about 30 minutes after it stops. A short spike
//! does not fire: an hour at 2× averages 0.33× over 6 h. A total outage still opens the
//! ticket within about half a minute, but it does not wake anyone.
//!
//! # Alerts
//!
//! [`Alerts`] keeps which alerts fire, keyed by (namespace, Service, availability | latency
//! | budget, page | ticket). [`slo_conditions`] turns a [`Report`] into conditions, one per
//! objective and severity; [`budget_conditions`] does the same for the cost budget (a ticket
//! at 80% of the period's budget spent, a page at 100%; the day or calendar month in UTC,
//! from [`budget_period_start`]). An alert fires when its condition holds (after an optional
//! hold time), keeps its `since`, and resolves at the first evaluation where its condition
//! does not hold.
//!
//! # Prometheus rules
//!
//! [`prometheus_rules`] writes a rules file over skiff's metrics with
//! [Sloth](https://github.com/slok/sloth)'s names, one Sloth SLO per objective, with id
//! `<namespace>-<service>-<availability|latency>`:
//! - group `sloth-slo-sli-recordings-<id>`: `slo:sli_error:ratio_rate<window>` for every
//!   window of the policy, e.g. `…rate5m`, `…rate3d`. Availability is
//!   `rate(skiff_router_requests_total{code_class="5xx"})` over all classes. Latency is
//!   `_count − _bucket{le=threshold}` over `_count` of `skiff_router_request_duration_seconds`.
//!   Both are summed by namespace and Service over revisions. The ratio has no sample when
//!   there was no traffic: it is not NaN. The period's ratio `…rate<period>` is Sloth's
//!   approximation: the `sum_over_time ÷ count_over_time` of the shortest window's ratio.
//!   That is an average of ratios. It is not weighted by traffic, and idle windows are
//!   skipped.
//! - group `sloth-slo-meta-recordings-<id>`: `slo:objective:ratio`, `slo:error_budget:ratio`,
//!   `slo:time_period:days`, `slo:current_burn_rate:ratio` (the shortest window),
//!   `slo:period_burn_rate:ratio`, `slo:period_error_budget_remaining:ratio`,
//!   `sloth_slo_info`.
//! - group `sloth-slo-alerts-<id>`: `SkiffSloAvailabilityBurn` or `SkiffSloLatencyBurn`, one
//!   rule per severity (`sloth_severity="page"|"ticket"`), its conditions joined by `or`,
//!   each `max(short > factor × budget) and max(long > factor × budget)`.
//!
//! Labels: `sloth_id, sloth_service, sloth_slo` (and `sloth_window` on SLI recordings), plus
//! `namespace` and `service`.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod budget;
pub mod report;
pub mod rules;
pub mod windows;

pub use alerts::{
    AlertKey, AlertKind, Alerts, Condition, FiringAlert, Transition, rollout_condition,
    slo_conditions,
};
pub use budget::{
    BUDGET_PAGE_SHARE, budget_conditions, budget_period_end, budget_period_start, budget_severities,
};
pub use report::{
    ConditionReport, Counts, ObjectiveKind, ObjectiveReport, Report, Sli, SliKind, WindowBurn,
    evaluate, evaluate_with_min_window,
};
pub use rules::{
    DEFAULT_RULES_MIN_WINDOW, ServiceSlo, prometheus_rules, prometheus_rules_with_min_window,
};
pub use windows::{
    BurnCondition, DEFAULT_MIN_WINDOW, Severity, budget_remaining, burn_conditions, burn_rate,
};

#[cfg(test)]
mod sim_tests;
