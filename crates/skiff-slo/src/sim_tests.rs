//! Evaluations and alerts on a simulated clock: a request history in 10-second slots,
//! evaluated after every slot (or every few), the transitions recorded.

use std::time::Duration;

use skiff_api::slo::{LatencyObjective, Policy, Slo};

use crate::*;

const SLOT: i64 = 10;
const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// A request history in slots of [`SLOT`] seconds from t = 0; slot `i` covers
/// `(i × SLOT, (i + 1) × SLOT]`. Prefix sums make every range O(1).
struct History {
    total: Vec<u64>,
    bad: Vec<u64>,
}

impl History {
    fn new() -> Self {
        History {
            total: vec![0],
            bad: vec![0],
        }
    }

    /// Appends `slots` slots of `total` requests, `bad` of them bad.
    fn push(&mut self, slots: i64, total: u64, bad: u64) {
        for _ in 0..slots {
            let (t, b) = (
                self.total[self.total.len() - 1],
                self.bad[self.bad.len() - 1],
            );
            self.total.push(t + total);
            self.bad.push(b + bad);
        }
    }

    /// The end of the last slot.
    fn now(&self) -> i64 {
        (self.total.len() as i64 - 1) * SLOT
    }

    /// Slots that ended at or before `t`.
    fn index(&self, t: i64) -> usize {
        t.div_euclid(SLOT).clamp(0, self.total.len() as i64 - 1) as usize
    }
}

impl Sli for History {
    fn counts(&self, _kind: SliKind, from_unix: i64, to_unix: i64) -> Counts {
        let (a, b) = (self.index(from_unix), self.index(to_unix));
        Counts {
            total: self.total[b] - self.total[a],
            bad: self.bad[b] - self.bad[a],
        }
    }
}

fn availability(percent: f64, period: i64, policy: Policy) -> Slo {
    Slo {
        availability: Some(percent / 100.0),
        latency: None,
        period: Duration::from_secs(period as u64),
        policy,
    }
}

/// Evaluates `slo` at the history's end and steps the alerts; returns the transitions.
fn step(alerts: &mut Alerts, slo: &Slo, h: &History) -> Vec<Transition> {
    let report = evaluate(slo, h, h.now());
    alerts.step(h.now(), &slo_conditions("default", "hello", &report))
}

fn fired(t: &[Transition], severity: Severity) -> Option<i64> {
    t.iter().find_map(|t| match t {
        Transition::Fired { key, since } if key.severity == severity => Some(*since),
        _ => None,
    })
}

fn resolved(t: &[Transition], severity: Severity) -> Option<i64> {
    t.iter().find_map(|t| match t {
        Transition::Resolved { key, at, .. } if key.severity == severity => Some(*at),
        _ => None,
    })
}

/// Runs `slots` slots of `total`/`bad` requests, evaluating after each; returns the times at
/// which page and ticket fired and resolved.
struct Timeline {
    page_fired: Option<i64>,
    page_resolved: Option<i64>,
    ticket_fired: Option<i64>,
    ticket_resolved: Option<i64>,
}

fn run(
    alerts: &mut Alerts,
    slo: &Slo,
    h: &mut History,
    slots: i64,
    total: u64,
    bad: u64,
) -> Timeline {
    let mut tl = Timeline {
        page_fired: None,
        page_resolved: None,
        ticket_fired: None,
        ticket_resolved: None,
    };
    for _ in 0..slots {
        h.push(1, total, bad);
        let t = step(alerts, slo, h);
        tl.page_fired = tl.page_fired.or(fired(&t, Severity::Page));
        tl.page_resolved = tl.page_resolved.or(resolved(&t, Severity::Page));
        tl.ticket_fired = tl.ticket_fired.or(fired(&t, Severity::Ticket));
        tl.ticket_resolved = tl.ticket_resolved.or(resolved(&t, Severity::Ticket));
    }
    tl
}

/// 100% errors page within a minute on a 99.9%/30d SLO; after the errors stop, the
/// 14.4× condition clears with its 5-minute window and the page resolves when the 6×
/// condition's 30-minute window clears; the ticket (6-hour short window) stays.
#[test]
fn outage_pages_then_resolves() {
    let slo = availability(99.9, 30 * DAY, Policy::Workbook);
    let mut h = History::new();
    let mut alerts = Alerts::new();
    h.push(DAY / SLOT, 10, 0);
    assert!(step(&mut alerts, &slo, &h).is_empty());
    let t0 = h.now();

    let outage = run(&mut alerts, &slo, &mut h, 10 * MINUTE / SLOT, 10, 10);
    // 1h window: 60 bad of 3600 > 14.4 × 0.001 after 6 slots; 5m window long before.
    assert_eq!(outage.page_fired, Some(t0 + 60));
    // 6h window: 30 bad of 21600 > 0.001 after 3 slots; 3d window (1 day of history):
    // 90 bad of 86490 after 9 slots.
    assert_eq!(outage.ticket_fired, Some(t0 + 90));
    assert_eq!(outage.page_resolved, None);

    let t1 = h.now();
    let after = run(&mut alerts, &slo, &mut h, HOUR / SLOT, 10, 0);
    // The 5m window is clean 5 minutes after the outage: the first page condition clears...
    let report = evaluate(&slo, &h, t1 + 5 * MINUTE);
    assert!(!report.objectives[0].conditions[0].holds);
    // ...but the second (6× over 6h and 30m) holds until its 30m window keeps at most one
    // bad slot (10 of 1800 ≤ 6 × 0.001 × 1800 = 10.8): 30 minutes after the outage, less a
    // slot.
    assert_eq!(after.page_resolved, Some(t1 + 30 * MINUTE - SLOT));
    assert_eq!(after.ticket_resolved, None);
    let firing = alerts.firing();
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].key.severity, Severity::Ticket);
    assert_eq!(firing[0].since, t0 + 90);
}

/// A 2× burn (0.2% errors on 99.9%) raises only a ticket, once the 3-day window holds more
/// than half of it: 1.5 days after it starts.
#[test]
fn slow_burn_tickets_only() {
    let slo = availability(99.9, 30 * DAY, Policy::Workbook);
    let mut h = History::new();
    let mut alerts = Alerts::new();
    h.push(3 * DAY / SLOT, 100, 0);
    let t0 = h.now();
    let mut ticket = None;
    for _ in 0..(3 * DAY / (10 * MINUTE)) {
        // One bad request in five slots of 100: 0.2%, evaluated every 10 minutes.
        for _ in 0..(10 * MINUTE / SLOT / 5) {
            h.push(1, 100, 1);
            h.push(4, 100, 0);
        }
        let t = step(&mut alerts, &slo, &h);
        assert_eq!(fired(&t, Severity::Page), None, "{t:?}");
        ticket = ticket.or(fired(&t, Severity::Ticket));
    }
    let ticket = ticket.expect("a ticket fires");
    assert!(
        (t0 + DAY * 3 / 2..=t0 + DAY * 3 / 2 + 10 * MINUTE).contains(&ticket),
        "ticket at t0 + {}s",
        ticket - t0
    );
    assert!(
        alerts
            .firing()
            .iter()
            .all(|a| a.key.severity == Severity::Ticket)
    );
}

/// No traffic burns nothing: no alert, burn rates 0, the whole budget left, no SLI.
#[test]
fn no_traffic_fires_nothing() {
    let slo = availability(99.9, 30 * DAY, Policy::Workbook);
    let mut h = History::new();
    let mut alerts = Alerts::new();
    let tl = run(&mut alerts, &slo, &mut h, DAY / SLOT, 0, 0);
    assert!(tl.page_fired.is_none() && tl.ticket_fired.is_none());
    let report = evaluate(&slo, &h, h.now());
    let o = &report.objectives[0];
    assert_eq!(o.sli, None);
    assert_eq!(o.budget_remaining, 1.0);
    assert!(
        o.conditions
            .iter()
            .all(|c| c.long.burn_rate == 0.0 && c.short.burn_rate == 0.0 && !c.holds)
    );
}

/// A 1-hour period works on 10-second windows: a minute of errors pages and tickets at the
/// first evaluation, and both resolve within 30 seconds of the errors stopping.
#[test]
fn one_hour_period() {
    let slo = availability(99.0, HOUR, Policy::Workbook);
    let mut h = History::new();
    let mut alerts = Alerts::new();
    h.push(HOUR / SLOT, 10, 0);
    let t0 = h.now();
    let outage = run(&mut alerts, &slo, &mut h, MINUTE / SLOT, 10, 10);
    assert_eq!(outage.page_fired, Some(t0 + SLOT));
    // Ticket: 6 min > 1 × 0.01 (10 of 360) and 30 s (10 of 30).
    assert_eq!(outage.ticket_fired, Some(t0 + SLOT));
    let t1 = h.now();
    let after = run(&mut alerts, &slo, &mut h, 10 * MINUTE / SLOT, 10, 0);
    // Both page conditions have a 10 s short window; the ticket's is 30 s.
    assert_eq!(after.page_resolved, Some(t1 + SLOT));
    assert_eq!(after.ticket_resolved, Some(t1 + 30));
    let report = evaluate(&slo, &h, h.now());
    let windows: Vec<(u64, u64)> = report.objectives[0]
        .conditions
        .iter()
        .map(|c| (c.long.window_seconds, c.short.window_seconds))
        .collect();
    assert_eq!(windows, vec![(10, 10), (30, 10), (360, 30)]);
    // The period (the last hour) holds 60 bad of 3600: 1.67 budgets spent, -0.67 left.
    let left = report.objectives[0].budget_remaining;
    assert!(
        (left - (1.0 - (60.0 / 3600.0) / 0.01)).abs() < 1e-9,
        "{left}"
    );
    assert!(left < 0.0);
}

/// The simple policy raises a ticket on a total outage and never a page.
#[test]
fn simple_policy_never_pages() {
    let slo = availability(99.9, 30 * DAY, Policy::Simple);
    let mut h = History::new();
    let mut alerts = Alerts::new();
    h.push(DAY / SLOT, 10, 0);
    let t0 = h.now();
    let outage = run(&mut alerts, &slo, &mut h, 10 * MINUTE / SLOT, 10, 10);
    assert_eq!(outage.page_fired, None);
    // 6h window: 1.5 × 0.001 × 21600 = 32.4 bad, so 4 slots.
    assert_eq!(outage.ticket_fired, Some(t0 + 40));
}

/// Records the kinds it is asked about.
struct Kinds(std::cell::RefCell<Vec<SliKind>>);

impl Sli for Kinds {
    fn counts(&self, kind: SliKind, _from: i64, _to: i64) -> Counts {
        self.0.borrow_mut().push(kind);
        Counts { total: 100, bad: 1 }
    }
}

/// A latency objective is counted with its bucket; the report serializes in camelCase with
/// availability first.
#[test]
fn latency_and_report_json() {
    let slo = Slo {
        availability: Some(0.999),
        latency: Some(LatencyObjective {
            threshold: Duration::from_millis(300),
            bucket_index: 10,
            objective: 0.95,
        }),
        period: Duration::from_secs(30 * DAY as u64),
        policy: Policy::Workbook,
    };
    let sli = Kinds(Default::default());
    let report = evaluate(&slo, &sli, 1_000_000);
    assert!(
        sli.0
            .borrow()
            .contains(&SliKind::Latency { bucket_index: 10 })
    );
    assert!(sli.0.borrow().contains(&SliKind::Availability));
    let kinds: Vec<ObjectiveKind> = report.objectives.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        vec![ObjectiveKind::Availability, ObjectiveKind::Latency]
    );
    let latency = &report.objectives[1];
    assert_eq!(latency.threshold_seconds, Some(0.3));
    assert_eq!(latency.sli, Some(0.99));
    // 1% slow against a 5% budget: a fifth of the budget spent.
    assert!((latency.budget_remaining - 0.8).abs() < 1e-12);
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["policy"], "workbook");
    assert_eq!(json["periodSeconds"], 2_592_000);
    assert_eq!(json["objectives"][1]["kind"], "latency");
    assert_eq!(json["objectives"][1]["thresholdSeconds"], 0.3);
    assert_eq!(json["objectives"][0]["conditions"][0]["severity"], "page");
    assert_eq!(
        json["objectives"][0]["conditions"][0]["long"]["windowSeconds"],
        3600
    );
    assert_eq!(json["objectives"][0]["periodCounts"]["total"], 100);
}
