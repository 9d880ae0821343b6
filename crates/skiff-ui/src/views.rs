//! The views: each a pure function from the figures the daemon gathered (with the same
//! functions its API answers with) to a [`Page`].

use skiff_api::wire::{
    Alert, DecisionView, InstanceView, LogLine, MetricsPoint, RequestLogLine, RequestTrail,
    ScaleStatus,
};
use skiff_slo::{ObjectiveKind, Report};

use crate::chart::{self, BarSeries, Bars, HBar, Line, Series, Unit, format_value};
use crate::page::{Card, Cell, Page, Range, Section, Table, Tone, View};

/// When a page is made and what range it shows.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The range.
    pub range: Range,
    /// Now (Unix seconds).
    pub now: i64,
}

impl Context {
    /// The range's start (Unix seconds).
    pub fn from(&self) -> i64 {
        self.now - self.range.seconds()
    }

    fn page(&self, view: View, title: impl Into<String>) -> Page {
        Page::new(view, title, self.range, rfc3339(self.now))
    }
}

/// A Service's figures over the range, added up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Requests that waited for a cold start.
    pub cold_starts: u64,
    /// Requests the router refused.
    pub throttled: u64,
    /// Latency quantiles, seconds.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// CPU used, seconds.
    pub cpu_seconds: f64,
    /// Cost, dollars.
    pub cost: f64,
}

impl Summary {
    /// The share of requests not answered 5xx, with requests.
    pub fn success(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.errors as f64 / self.requests as f64)
    }

    /// The share of requests that waited for a cold start.
    pub fn cold_start_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cold_starts as f64 / self.requests as f64)
    }
}

/// One Service's history over the range.
#[derive(Debug, Clone, Default)]
pub struct ServiceHistory {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Everything in the range, added up.
    pub summary: Summary,
    /// Seconds per point.
    pub step: i64,
    /// One point per step (the API's points).
    pub points: Vec<MetricsPoint>,
}

impl ServiceHistory {
    fn name(&self) -> String {
        display_name(&self.namespace, &self.service)
    }

    fn times(&self) -> impl Iterator<Item = (i64, &MetricsPoint)> {
        self.points.iter().map(|p| (parse_time(&p.at), p))
    }
}

/// A cost budget as last evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Dollars per period.
    pub dollars: f64,
    /// `day` or `month`.
    pub per: String,
    /// Spent in this period.
    pub spent: f64,
    /// When the period ends (Unix seconds).
    pub period_end: i64,
    /// Whether scale-up is stopped.
    pub scale_up_stopped: bool,
}

/// A Service's SLO and budget as last evaluated.
#[derive(Debug, Clone)]
pub struct ServiceSlo {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Its SLO's report.
    pub report: Option<Report>,
    /// Its cost budget.
    pub budget: Option<Budget>,
}

/// A Service as it stands now.
#[derive(Debug, Clone, Default)]
pub struct ServiceNow {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Its URL.
    pub url: Option<String>,
    /// Its `Ready` condition: status and reason.
    pub ready: (String, Option<String>),
    /// Its scale (desired and ready per revision).
    pub scale: Option<ScaleStatus>,
}

/// A revision, for the deployments table and the debug view's tabs.
#[derive(Debug, Clone, Default)]
pub struct Revision {
    /// The namespace.
    pub namespace: String,
    /// Its Service.
    pub service: String,
    /// The revision.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Its `Ready` condition: status, reason, message.
    pub ready: (String, Option<String>, Option<String>),
    /// Its images (as written).
    pub images: Vec<String>,
}

/// One instance's start, phase by phase.
#[derive(Debug, Clone)]
pub struct Startup {
    /// The instance.
    pub instance: String,
    /// Its revision.
    pub revision: String,
    /// When it was scheduled (Unix seconds).
    pub at: i64,
    /// Milliseconds in each phase: image, container, ready.
    pub image_ms: f64,
    /// Container phase, ms.
    pub container_ms: f64,
    /// Ready phase, ms (none if it never got ready).
    pub ready_ms: Option<f64>,
}

impl Startup {
    /// Decision to ready, ms.
    pub fn total_ms(&self) -> Option<f64> {
        self.ready_ms.map(|r| self.image_ms + self.container_ms + r)
    }
}

/// What the debug view shows of one Service.
#[derive(Debug, Clone, Default)]
pub struct DebugInput {
    /// The Service now.
    pub service: ServiceNow,
    /// Its revisions, newest first.
    pub revisions: Vec<Revision>,
    /// The revision shown, if one is picked.
    pub selected: Option<String>,
    /// Its history.
    pub history: ServiceHistory,
    /// Its instances now.
    pub instances: Vec<InstanceView>,
    /// Recent starts, newest first.
    pub startups: Vec<Startup>,
    /// Recent requests (of the picked revision, if one is), newest first.
    pub requests: Vec<RequestLogLine>,
    /// Recent log lines (of the picked revision, if one is), newest first.
    pub logs: Vec<LogLine>,
    /// A request over this many seconds is slow (its latency SLO, else a default).
    pub slow_seconds: f64,
    /// Whether traces are exported.
    pub traces: Option<String>,
    /// Image pulls that failed: revision and message.
    pub pull_failures: Vec<(String, String)>,
}

/// `namespace/service`, or the bare name in `default`.
pub fn display_name(namespace: &str, service: &str) -> String {
    if namespace == "default" {
        service.to_owned()
    } else {
        format!("{namespace}/{service}")
    }
}

/// The debug view's address for a Service.
pub fn debug_href(namespace: &str, service: &str) -> String {
    format!(
        "/ui/services/{}/{}",
        path_segment(namespace),
        path_segment(service)
    )
}

fn path_segment(s: &str) -> String {
    // Names are DNS labels; anything else is escaped so a link cannot break out.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn short_time(ts: &str) -> String {
    ts.parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| ts.to_owned())
}

fn parse_time(ts: &str) -> i64 {
    ts.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .unwrap_or_default()
}

fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "—".to_owned(), |s| format_value(s, Unit::Percent))
}

fn seconds(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |s| format_value(s, Unit::Seconds))
}

fn dollars(v: f64) -> String {
    format_value(v, Unit::Dollars)
}

fn ms(v: f64) -> String {
    format_value(v / 1000.0, Unit::Seconds)
}

fn sum_of(histories: &[ServiceHistory]) -> Summary {
    let mut s = Summary::default();
    for h in histories {
        s.requests += h.summary.requests;
        s.errors += h.summary.errors;
        s.cold_starts += h.summary.cold_starts;
        s.throttled += h.summary.throttled;
        s.cpu_seconds += h.summary.cpu_seconds;
        s.cost += h.summary.cost;
    }
    s
}

fn success_tone(share: Option<f64>, objective: Option<f64>) -> Tone {
    match (share, objective) {
        (None, _) => Tone::Plain,
        (Some(s), Some(o)) if s >= o => Tone::Good,
        (Some(_), Some(_)) => Tone::Bad,
        (Some(s), None) if s >= 0.99 => Tone::Good,
        (Some(s), None) if s >= 0.95 => Tone::Warn,
        (Some(_), None) => Tone::Bad,
    }
}

fn budget_tone(left: f64) -> Tone {
    if left <= 0.0 {
        Tone::Bad
    } else if left < 0.25 {
        Tone::Warn
    } else {
        Tone::Good
    }
}

fn objective_label(kind: ObjectiveKind, objective: f64, threshold: Option<f64>) -> String {
    let target = format_value(objective, Unit::Percent);
    match (kind, threshold) {
        (ObjectiveKind::Latency, Some(t)) => {
            format!("latency: {target} under {}", format_value(t, Unit::Seconds))
        }
        (ObjectiveKind::Latency, None) => format!("latency: {target}"),
        (ObjectiveKind::Availability, _) => format!("availability: {target}"),
    }
}

fn period_label(seconds: u64) -> String {
    match seconds {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{s}s"),
    }
}

/// The series of one figure of each Service (at most eight, busiest first).
fn per_service(
    histories: &[ServiceHistory],
    value: impl Fn(&ServiceHistory, &MetricsPoint) -> Option<f64>,
) -> Vec<Series> {
    let mut busiest: Vec<&ServiceHistory> = histories.iter().collect();
    busiest.sort_by_key(|h| std::cmp::Reverse(h.summary.requests));
    busiest
        .into_iter()
        .take(8)
        .map(|h| Series {
            name: h.name(),
            points: h.times().map(|(t, p)| (t, value(h, p))).collect(),
        })
        .collect()
}

fn rate(h: &ServiceHistory, p: &MetricsPoint) -> Option<f64> {
    Some(p.requests as f64 / h.step.max(1) as f64)
}

/// The executive view: overall success, cost per day and Service, error budgets left, the
/// Services that fail most.
pub fn executive(
    ctx: Context,
    histories: &[ServiceHistory],
    costs: &[ServiceHistory],
    slos: &[ServiceSlo],
    alerts: &[Alert],
) -> Page {
    let mut page = ctx.page(View::Executive, "Executive overview");
    let total = sum_of(histories);
    page.cards.push(Card {
        id: "success",
        label: "Success rate".into(),
        value: percent(total.success()),
        detail: format!("{} requests, {} answered 5xx", total.requests, total.errors),
        tone: success_tone(total.success(), None),
    });
    page.cards.push(Card {
        id: "cost",
        label: "Cost".into(),
        value: dollars(total.cost),
        detail: format!(
            "{} of CPU in {} Services",
            format_value(total.cpu_seconds, Unit::Seconds),
            histories.len()
        ),
        tone: Tone::Plain,
    });
    let pages = alerts.iter().filter(|a| a.severity == "page").count();
    page.cards.push(Card {
        id: "alerts",
        label: "Alerts firing".into(),
        value: alerts.len().to_string(),
        detail: format!("{pages} page, {} ticket", alerts.len() - pages),
        tone: if pages > 0 {
            Tone::Bad
        } else if alerts.is_empty() {
            Tone::Good
        } else {
            Tone::Warn
        },
    });
    let lowest = slos
        .iter()
        .flat_map(|s| {
            s.report.iter().flat_map(move |r| {
                r.objectives
                    .iter()
                    .map(move |o| (o.budget_remaining, display_name(&s.namespace, &s.service)))
            })
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    page.cards.push(match lowest {
        Some((left, name)) => Card {
            id: "budget",
            label: "Lowest error budget left".into(),
            value: budget_left(left),
            detail: name,
            tone: budget_tone(left),
        },
        None => Card {
            id: "budget",
            label: "Lowest error budget left".into(),
            value: "—".into(),
            detail: "no Service sets an SLO (skiff.dev/slo-availability)".into(),
            tone: Tone::Plain,
        },
    });

    // Success over time, all Services together.
    let mut overall: Vec<(i64, u64, u64)> = Vec::new();
    for h in histories {
        for (i, (t, p)) in h.times().enumerate() {
            match overall.get_mut(i) {
                Some(o) => {
                    o.1 += p.requests;
                    o.2 += p.errors;
                }
                None => overall.push((t, p.requests, p.errors)),
            }
        }
    }
    let success = Line {
        title: "Success rate, all Services".into(),
        unit: Unit::Percent,
        series: vec![Series {
            name: "success".into(),
            points: overall
                .iter()
                .map(|(t, n, e)| (*t, (*n > 0).then(|| 1.0 - *e as f64 / *n as f64)))
                .collect(),
        }],
        threshold: None,
        from: ctx.from(),
        to: ctx.now,
    };
    let traffic = Line {
        title: "Requests per second, by Service".into(),
        unit: Unit::PerSecond,
        series: per_service(histories, rate),
        threshold: None,
        from: ctx.from(),
        to: ctx.now,
    };
    page.sections.push(Section {
        id: "success".into(),
        heading: "Success".into(),
        note: Some("Requests not answered 5xx, over all requests the ingress answered.".into()),
        charts: vec![chart::line_chart(&success), chart::line_chart(&traffic)],
        table: None,
    });

    // Cost per day (or hour) per Service.
    let step = ctx.range.cost_step();
    let mut categories: Vec<i64> = Vec::new();
    for h in costs {
        for (t, _) in h.times() {
            if !categories.contains(&t) {
                categories.push(t);
            }
        }
    }
    categories.sort_unstable();
    let mut by_cost: Vec<&ServiceHistory> = costs.iter().collect();
    by_cost.sort_by(|a, b| b.summary.cost.total_cmp(&a.summary.cost));
    let bars = Bars {
        title: if step == 86400 {
            "Cost per day, by Service".into()
        } else {
            "Cost per hour, by Service".into()
        },
        unit: Unit::Dollars,
        categories: categories
            .iter()
            .map(|t| {
                jiff::Timestamp::from_second(*t)
                    .map(|ts| {
                        let fmt = if step == 86400 { "%m-%d" } else { "%H:%M" };
                        ts.strftime(fmt).to_string()
                    })
                    .unwrap_or_default()
            })
            .collect(),
        series: by_cost
            .iter()
            .take(8)
            .map(|h| BarSeries {
                name: h.name(),
                values: categories
                    .iter()
                    .map(|c| h.times().find(|(t, _)| t == c).map_or(0.0, |(_, p)| p.cost))
                    .collect(),
            })
            .collect(),
    };
    let mut table = Table::new(
        &[
            "Service",
            "Cost",
            "Share",
            "Requests",
            "Cost per million requests",
        ],
        "No Service ran in this range.",
    );
    for h in &by_cost {
        let s = &h.summary;
        table.row(
            format!("{}/{}", h.namespace, h.service),
            vec![
                Cell::link(h.name(), debug_href(&h.namespace, &h.service)),
                Cell::text(dollars(s.cost)),
                Cell::text(percent((total.cost > 0.0).then(|| s.cost / total.cost))).meter(
                    if total.cost > 0.0 {
                        s.cost / total.cost
                    } else {
                        0.0
                    },
                ),
                Cell::text(s.requests.to_string()),
                Cell::text(if s.requests > 0 {
                    dollars(s.cost / s.requests as f64 * 1e6)
                } else {
                    "—".into()
                }),
            ],
        );
    }
    page.sections.push(Section {
        id: "cost".into(),
        heading: "Cost".into(),
        note: Some(
            "Instance time × the CPU and memory allotted, plus requests, at the daemon's prices."
                .into(),
        ),
        charts: vec![chart::bar_chart(&bars)],
        table: Some(table),
    });

    // Error budgets.
    let mut table = Table::new(
        &[
            "Service",
            "Objective",
            "SLI over the period",
            "Error budget left",
            "Period",
        ],
        "No Service sets an SLO or a budget. Add skiff.dev/slo-availability, skiff.dev/slo-latency or skiff.dev/budget to a Service's annotations.",
    );
    for s in slos {
        let name = display_name(&s.namespace, &s.service);
        let key = format!("{}/{}", s.namespace, s.service);
        if let Some(r) = &s.report {
            for o in &r.objectives {
                table.row(
                    format!("{key}/{}", o.kind.as_str()),
                    vec![
                        Cell::link(name.clone(), debug_href(&s.namespace, &s.service)),
                        Cell::text(objective_label(o.kind, o.objective, o.threshold_seconds)),
                        Cell::text(percent(o.sli)).tone(success_tone(o.sli, Some(o.objective))),
                        Cell::text(budget_left(o.budget_remaining))
                            .tone(budget_tone(o.budget_remaining))
                            .meter(o.budget_remaining),
                        Cell::text(period_label(r.period_seconds)),
                    ],
                );
            }
        }
        if let Some(b) = &s.budget {
            let left = if b.dollars > 0.0 {
                1.0 - b.spent / b.dollars
            } else {
                0.0
            };
            table.row(
                format!("{key}/cost"),
                vec![
                    Cell::link(name.clone(), debug_href(&s.namespace, &s.service)),
                    Cell::text(format!("cost: {}/{}", dollars(b.dollars), b.per)),
                    Cell::text(format!("{} spent", dollars(b.spent))),
                    Cell::text(if b.scale_up_stopped {
                        format!("{} (scale-up stopped)", format_value(left, Unit::Percent))
                    } else {
                        format_value(left, Unit::Percent)
                    })
                    .tone(budget_tone(left))
                    .meter(left),
                    Cell::text(format!("until {}", rfc3339(b.period_end))),
                ],
            );
        }
    }
    page.sections.push(Section::of_table(
        "budgets",
        "Error budgets and cost budgets",
        None,
        table,
    ));

    // The Services that fail most.
    let mut failing: Vec<&ServiceHistory> =
        histories.iter().filter(|h| h.summary.errors > 0).collect();
    failing.sort_by(|a, b| {
        b.summary
            .errors
            .cmp(&a.summary.errors)
            .then_with(|| a.service.cmp(&b.service))
    });
    let mut table = Table::new(
        &["Service", "5xx", "Requests", "Error rate"],
        format!("No Service answered 5xx in the {}.", ctx.range.label()),
    );
    for h in failing.into_iter().take(10) {
        let s = &h.summary;
        table.row(
            format!("{}/{}", h.namespace, h.service),
            vec![
                Cell::link(h.name(), debug_href(&h.namespace, &h.service)),
                Cell::text(s.errors.to_string()).tone(Tone::Bad),
                Cell::text(s.requests.to_string()),
                Cell::text(percent(s.success().map(|x| 1.0 - x))).tone(Tone::Bad),
            ],
        );
    }
    page.sections.push(Section::of_table(
        "failing",
        "Top failing Services",
        None,
        table,
    ));
    page
}

fn alerts_table(now: i64, alerts: &[Alert]) -> Table {
    let mut table = Table::new(
        &["Severity", "Alert", "Service", "Since", "For"],
        "No alert is firing.",
    );
    let mut sorted: Vec<&Alert> = alerts.iter().collect();
    sorted.sort_by(|a, b| {
        (a.severity != "page")
            .cmp(&(b.severity != "page"))
            .then_with(|| a.since.cmp(&b.since))
    });
    for a in sorted {
        let since = parse_time(&a.since);
        table.row(
            format!("{}/{}/{}/{}", a.namespace, a.service, a.name, a.severity),
            vec![
                Cell::text(a.severity.clone()).tone(if a.severity == "page" {
                    Tone::Bad
                } else {
                    Tone::Warn
                }),
                Cell::text(a.name.clone()),
                Cell::link(
                    display_name(&a.namespace, &a.service),
                    debug_href(&a.namespace, &a.service),
                ),
                Cell::text(short_time(&a.since)),
                Cell::text(ago(now, since)),
            ],
        );
    }
    table
}

fn ready_desired(scale: Option<&ScaleStatus>) -> (u32, u32) {
    scale.map_or((0, 0), |s| {
        s.revisions
            .iter()
            .fold((0, 0), |(r, d), x| (r + x.ready, d + x.desired))
    })
}

/// A job as the on-call view lists it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRow {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Executions so far.
    pub executions: u64,
    /// The newest execution and how it stands (`EXECUTION_SUCCEEDED`, …).
    pub latest: Option<(String, String)>,
    /// Its schedule and time zone, when it has one.
    pub schedule: Option<String>,
    /// The next scheduled run.
    pub next_run: Option<String>,
    /// Scheduled runs not started.
    pub missed_runs: u64,
    /// Executions running now.
    pub running: u64,
}

/// One subscription's delivery, as the on-call view lists it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryRow {
    /// `trigger/<ns>/<name>`, `ping/<ns>/<name>`, `deadletter/…`.
    pub subscription: String,
    /// Where its events go (`Service/x`, `Job/y`).
    pub target: String,
    /// Events waiting or in flight.
    pub depth: u64,
    /// Delivered since the daemon started.
    pub delivered: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// Events given up (dead-lettered or dropped).
    pub dead_lettered: u64,
}

/// A Service's rollout, as the on-call view lists it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutRow {
    /// Its namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The new revision.
    pub revision: String,
    /// The stable revision it replaces.
    pub from: String,
    /// `rolling out`, `paused`, or the reason it stands rolled back (`RolloutFailed`, …).
    pub state: String,
    /// Whether it stands rolled back by its analysis.
    pub failed: bool,
    /// `2 of 3 (50%)`, while it rolls out.
    pub step: Option<String>,
    /// The step's figures so far, or why it was rolled back.
    pub detail: String,
}

/// The on-call view's rollouts: those in progress, and the Services whose latest revision
/// stands rolled back or aborted.
pub fn rollout_section(rows: &[RolloutRow]) -> Section {
    let mut t = Table::new(
        &["Service", "Revision", "From", "State", "Step", "Figures"],
        "No rollout in progress. Revisions with `skiff.dev/rollout` on their template roll out in steps.",
    );
    for r in rows {
        let tone = if r.failed {
            Tone::Bad
        } else if r.step.is_some() {
            Tone::Warn
        } else {
            Tone::Plain
        };
        t.row(
            format!("{}/{}", r.namespace, r.service),
            vec![
                Cell::text(display_name(&r.namespace, &r.service)),
                Cell::text(r.revision.clone()).mono(),
                Cell::text(r.from.clone()).mono(),
                Cell::text(r.state.clone()).tone(tone),
                Cell::text(r.step.clone().unwrap_or_else(|| "-".into())),
                Cell::text(r.detail.clone()),
            ],
        );
    }
    Section::of_table(
        "rollouts",
        "Rollouts",
        Some("Rollouts in progress with their step's figures (new revision against the stable one), and Services whose latest revision was rolled back.".into()),
        t,
    )
}

/// The on-call view's jobs and event-delivery sections.
pub fn work_sections(jobs: &[JobRow], deliveries: &[DeliveryRow]) -> Vec<Section> {
    let mut jt = Table::new(
        &[
            "Job",
            "Executions",
            "Running",
            "Latest",
            "Schedule",
            "Next run",
            "Missed runs",
        ],
        "No Jobs. Apply a Cloud Run Job with `skiff apply -f job.yaml`.",
    );
    for j in jobs {
        let latest = match &j.latest {
            Some((name, status)) => {
                let tone = match status.as_str() {
                    "EXECUTION_SUCCEEDED" => Tone::Good,
                    "EXECUTION_FAILED" => Tone::Bad,
                    "EXECUTION_CANCELLED" => Tone::Warn,
                    _ => Tone::Plain,
                };
                Cell::text(format!(
                    "{name}: {}",
                    status.trim_start_matches("EXECUTION_").to_lowercase()
                ))
                .tone(tone)
            }
            None => Cell::text("never run"),
        };
        jt.row(
            format!("{}/{}", j.namespace, j.name),
            vec![
                Cell::text(display_name(&j.namespace, &j.name)),
                Cell::text(j.executions.to_string()),
                Cell::text(j.running.to_string()),
                latest,
                Cell::text(j.schedule.clone().unwrap_or_else(|| "none".into())).mono(),
                Cell::text(j.next_run.clone().unwrap_or_else(|| "-".into())),
                Cell::text(j.missed_runs.to_string()).tone(if j.missed_runs > 0 {
                    Tone::Warn
                } else {
                    Tone::Plain
                }),
            ],
        );
    }
    let mut dt = Table::new(
        &[
            "Subscription",
            "Target",
            "Queued",
            "Delivered",
            "Retried",
            "Dead-lettered",
        ],
        "No Triggers or PingSources.",
    );
    for d in deliveries {
        dt.row(
            d.subscription.clone(),
            vec![
                Cell::text(d.subscription.clone()).mono(),
                Cell::text(d.target.clone()),
                Cell::text(d.depth.to_string()).tone(if d.depth > 0 {
                    Tone::Warn
                } else {
                    Tone::Plain
                }),
                Cell::text(d.delivered.to_string()),
                Cell::text(d.retried.to_string()),
                Cell::text(d.dead_lettered.to_string()).tone(if d.dead_lettered > 0 {
                    Tone::Bad
                } else {
                    Tone::Plain
                }),
            ],
        );
    }
    vec![
        Section::of_table(
            "jobs",
            "Jobs",
            Some("Cloud Run Jobs: executions, the latest's outcome, schedules.".into()),
            jt,
        ),
        Section::of_table(
            "deliveries",
            "Event delivery",
            Some(
                "Per Trigger and PingSource: events queued (durably, waiting or in flight), delivered, retried and given up since the daemon started."
                    .into(),
            ),
            dt,
        ),
    ]
}

/// The on-call view: SLIs against SLOs, alerts firing, p95, instances ready and desired,
/// cold starts, recent deployments.
pub fn oncall(
    ctx: Context,
    histories: &[ServiceHistory],
    slos: &[ServiceSlo],
    alerts: &[Alert],
    services: &[ServiceNow],
    revisions: &[Revision],
) -> Page {
    let mut page = ctx.page(View::OnCall, "On-call");
    let pages = alerts.iter().filter(|a| a.severity == "page").count();
    page.cards.push(Card {
        id: "pages",
        label: "Pages firing".into(),
        value: pages.to_string(),
        detail: format!("{} tickets", alerts.len() - pages),
        tone: if pages > 0 { Tone::Bad } else { Tone::Good },
    });
    let with_slo: Vec<&ServiceSlo> = slos.iter().filter(|s| s.report.is_some()).collect();
    let meeting = with_slo
        .iter()
        .filter(|s| {
            s.report.as_ref().is_some_and(|r| {
                r.objectives
                    .iter()
                    .all(|o| o.sli.is_none_or(|sli| sli >= o.objective))
            })
        })
        .count();
    page.cards.push(Card {
        id: "slos",
        label: "SLOs met".into(),
        value: format!("{meeting}/{}", with_slo.len()),
        detail: "over each SLO's period".into(),
        tone: if meeting == with_slo.len() {
            Tone::Good
        } else {
            Tone::Bad
        },
    });
    let (ready, desired) = services.iter().fold((0, 0), |(r, d), s| {
        let (a, b) = ready_desired(s.scale.as_ref());
        (r + a, d + b)
    });
    page.cards.push(Card {
        id: "instances",
        label: "Instances ready / desired".into(),
        value: format!("{ready}/{desired}"),
        detail: format!("{} Services", services.len()),
        tone: if ready >= desired {
            Tone::Good
        } else {
            Tone::Warn
        },
    });
    let total = sum_of(histories);
    page.cards.push(Card {
        id: "coldstarts",
        label: "Cold-start rate".into(),
        value: percent(total.cold_start_rate()),
        detail: format!(
            "{} of {} requests waited for an instance",
            total.cold_starts, total.requests
        ),
        tone: Tone::Plain,
    });

    page.sections.push(Section::of_table(
        "alerts",
        "Alerts firing",
        Some(
            "SLO burn-rate alerts (page, ticket) and spent cost budgets, evaluated every 10 s."
                .into(),
        ),
        alerts_table(ctx.now, alerts),
    ));

    let mut table = Table::new(
        &[
            "Service",
            "Availability SLI / SLO",
            "Latency SLI / SLO",
            "Success (range)",
            "p95 (range)",
            "Requests/s",
            "Ready / desired",
            "Cold-start rate",
            "State",
        ],
        "No Services. Apply one with `skiff apply -f service.yaml`.",
    );
    for s in services {
        let h = histories
            .iter()
            .find(|h| h.namespace == s.namespace && h.service == s.service);
        let summary = h.map(|h| h.summary.clone()).unwrap_or_default();
        let report = slos
            .iter()
            .find(|x| x.namespace == s.namespace && x.service == s.service)
            .and_then(|x| x.report.as_ref());
        let objective = |kind: ObjectiveKind| -> Cell {
            match report.and_then(|r| r.objectives.iter().find(|o| o.kind == kind)) {
                Some(o) => Cell::text(format!(
                    "{} / {}",
                    percent(o.sli),
                    format_value(o.objective, Unit::Percent)
                ))
                .tone(success_tone(o.sli, Some(o.objective))),
                None => Cell::text("no SLO"),
            }
        };
        let (ready, desired) = ready_desired(s.scale.as_ref());
        let state = match &s.ready {
            (status, _) if status == "True" => Cell::text("Ready").tone(Tone::Good),
            (status, Some(reason)) => Cell::text(format!("{status}: {reason}")).tone(Tone::Bad),
            (status, None) => Cell::text(status.clone()),
        };
        table.row(
            format!("{}/{}", s.namespace, s.service),
            vec![
                Cell::link(
                    display_name(&s.namespace, &s.service),
                    debug_href(&s.namespace, &s.service),
                ),
                objective(ObjectiveKind::Availability),
                objective(ObjectiveKind::Latency),
                Cell::text(percent(summary.success())).tone(success_tone(summary.success(), None)),
                Cell::text(seconds(summary.p95)),
                Cell::text(format_value(
                    summary.requests as f64 / ctx.range.seconds() as f64,
                    Unit::PerSecond,
                )),
                Cell::text(format!("{ready}/{desired}")).tone(if ready >= desired {
                    Tone::Plain
                } else {
                    Tone::Warn
                }),
                Cell::text(percent(summary.cold_start_rate())),
                state,
            ],
        );
    }
    page.sections.push(Section::of_table(
        "slis",
        "Services: SLIs against their SLOs",
        Some(
            "SLIs against SLOs are over each SLO's period; the other figures over the range."
                .into(),
        ),
        table,
    ));

    // p95 per Service, each against its latency objective.
    let mut charts = Vec::new();
    let mut busiest: Vec<&ServiceHistory> = histories.iter().collect();
    busiest.sort_by_key(|h| std::cmp::Reverse(h.summary.requests));
    for h in busiest.iter().take(6) {
        let threshold = slos
            .iter()
            .find(|x| x.namespace == h.namespace && x.service == h.service)
            .and_then(|x| x.report.as_ref())
            .and_then(|r| {
                r.objectives
                    .iter()
                    .find(|o| o.kind == ObjectiveKind::Latency)
            })
            .and_then(|o| o.threshold_seconds)
            .map(|t| (t, "latency SLO".to_owned()));
        charts.push(chart::line_chart(&Line {
            title: format!("p95 latency: {}", h.name()),
            unit: Unit::Seconds,
            series: vec![Series {
                name: "p95".into(),
                points: h.times().map(|(t, p)| (t, p.p95)).collect(),
            }],
            threshold,
            from: ctx.from(),
            to: ctx.now,
        }));
    }
    if charts.is_empty() {
        charts.push(chart::line_chart(&Line {
            title: "p95 latency".into(),
            unit: Unit::Seconds,
            series: Vec::new(),
            threshold: None,
            from: ctx.from(),
            to: ctx.now,
        }));
    }
    charts.push(chart::line_chart(&Line {
        title: "Instances running, by Service".into(),
        unit: Unit::Count,
        series: per_service(histories, |_, p| Some(f64::from(p.instances))),
        threshold: None,
        from: ctx.from(),
        to: ctx.now,
    }));
    charts.push(chart::line_chart(&Line {
        title: "Requests that waited for a cold start, per second".into(),
        unit: Unit::PerSecond,
        series: per_service(histories, |h, p| {
            Some(p.cold_starts as f64 / h.step.max(1) as f64)
        }),
        threshold: None,
        from: ctx.from(),
        to: ctx.now,
    }));
    page.sections.push(Section {
        id: "latency".into(),
        heading: "Latency, instances and cold starts".into(),
        note: None,
        charts,
        table: None,
    });

    page.sections.push(Section::of_table(
        "deployments",
        "Recent deployments",
        Some("Revisions, newest first: a new revision is a deployment.".into()),
        deployments_table(ctx.now, revisions, 10),
    ));
    page
}

fn deployments_table(now: i64, revisions: &[Revision], max: usize) -> Table {
    let mut table = Table::new(
        &["Revision", "Service", "Created", "Ago", "Ready", "Why"],
        "No revisions yet.",
    );
    let mut sorted: Vec<&Revision> = revisions.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    for r in sorted.into_iter().take(max) {
        let (status, reason, message) = &r.ready;
        let tone = match status.as_str() {
            "True" => Tone::Good,
            "False" => Tone::Bad,
            _ => Tone::Warn,
        };
        table.row(
            format!("{}/{}", r.namespace, r.name),
            vec![
                Cell::link(
                    r.name.clone(),
                    format!(
                        "{}?revision={}",
                        debug_href(&r.namespace, &r.service),
                        path_segment(&r.name)
                    ),
                ),
                Cell::text(display_name(&r.namespace, &r.service)),
                Cell::text(short_time(&r.created)),
                Cell::text(ago(now, parse_time(&r.created))),
                Cell::text(status.clone()).tone(tone),
                Cell::text(match (reason, message) {
                    (Some(r), Some(m)) => format!("{r}: {m}"),
                    (Some(r), None) => r.clone(),
                    (None, Some(m)) => m.clone(),
                    (None, None) => String::new(),
                }),
            ],
        );
    }
    table
}

/// The debug view's index: every Service, to pick one.
pub fn debug_index(ctx: Context, services: &[ServiceNow], histories: &[ServiceHistory]) -> Page {
    let mut page = ctx.page(View::Debug, "Debug: pick a Service");
    let mut table = Table::new(
        &["Service", "URL", "Requests (range)", "5xx (range)", "State"],
        "No Services. Apply one with `skiff apply -f service.yaml`.",
    );
    for s in services {
        let summary = histories
            .iter()
            .find(|h| h.namespace == s.namespace && h.service == s.service)
            .map(|h| h.summary.clone())
            .unwrap_or_default();
        table.row(
            format!("{}/{}", s.namespace, s.service),
            vec![
                Cell::link(
                    display_name(&s.namespace, &s.service),
                    debug_href(&s.namespace, &s.service),
                ),
                Cell::text(s.url.clone().unwrap_or_default()).mono(),
                Cell::text(summary.requests.to_string()),
                Cell::text(summary.errors.to_string()),
                Cell::text(s.ready.0.clone()),
            ],
        );
    }
    page.sections
        .push(Section::of_table("services", "Services", None, table));
    page
}

/// A phase's duration in a start, ms.
type PhaseOf = fn(&Startup) -> Option<f64>;

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).copied()
}

fn bytes(v: u64) -> String {
    format_value(v as f64, Unit::Bytes)
}

/// The debug view of one Service (and revision): start-up phases, instances against their
/// limits, scaling decisions, slow and failed requests, recent requests and logs, image pulls.
pub fn debug(ctx: Context, d: &DebugInput) -> Page {
    let s = &d.service;
    let name = display_name(&s.namespace, &s.service);
    let title = match &d.selected {
        Some(r) => format!("Debug: {name}, revision {r}"),
        None => format!("Debug: {name}"),
    };
    let mut page = ctx.page(View::Debug, title);
    let base = debug_href(&s.namespace, &s.service);
    let range = format!("range={}", ctx.range.param());
    page.tabs.push((
        "All revisions".into(),
        format!("{base}?{range}"),
        d.selected.is_none(),
    ));
    for r in &d.revisions {
        page.tabs.push((
            r.name.clone(),
            format!("{base}?revision={}&{range}", path_segment(&r.name)),
            d.selected.as_deref() == Some(r.name.as_str()),
        ));
    }
    if let Some(r) = &d.selected {
        page.keep.push(("revision".into(), r.clone()));
    }
    let of_revision = |rev: &str| d.selected.as_deref().is_none_or(|s| s == rev);

    let (ready, desired) = ready_desired(s.scale.as_ref());
    page.cards.push(Card {
        id: "instances",
        label: "Instances ready / desired".into(),
        value: format!("{ready}/{desired}"),
        detail: s.url.clone().unwrap_or_default(),
        tone: if ready >= desired {
            Tone::Good
        } else {
            Tone::Warn
        },
    });
    let sum = &d.history.summary;
    page.cards.push(Card {
        id: "requests",
        label: "Requests".into(),
        value: sum.requests.to_string(),
        detail: format!(
            "{} answered 5xx, {} refused by skiff",
            sum.errors, sum.throttled
        ),
        tone: success_tone(sum.success(), None),
    });
    page.cards.push(Card {
        id: "p95",
        label: "p95 latency".into(),
        value: seconds(sum.p95),
        detail: format!("p50 {}, p99 {}", seconds(sum.p50), seconds(sum.p99)),
        tone: Tone::Plain,
    });
    let startups: Vec<&Startup> = d
        .startups
        .iter()
        .filter(|x| of_revision(&x.revision))
        .collect();
    let mut totals: Vec<f64> = startups.iter().filter_map(|x| x.total_ms()).collect();
    totals.sort_by(f64::total_cmp);
    page.cards.push(Card {
        id: "startup",
        label: "Start-up p50".into(),
        value: quantile(&totals, 0.5).map_or_else(|| "—".into(), ms),
        detail: format!(
            "{} starts seen, p90 {}",
            totals.len(),
            quantile(&totals, 0.9).map_or_else(|| "—".into(), ms)
        ),
        tone: Tone::Plain,
    });

    // Start-up: phases per start, and their distribution.
    let rows: Vec<HBar> = startups
        .iter()
        .take(20)
        .map(|x| HBar {
            label: format!("{} …{}", clock(x.at), tail(&x.instance, 5)),
            segments: vec![
                ("image".into(), x.image_ms),
                ("container".into(), x.container_ms),
                ("ready".into(), x.ready_ms.unwrap_or(0.0)),
            ],
        })
        .collect();
    let mut table = Table::new(
        &["Phase", "p50", "p90", "max", "Starts"],
        "No instance has started since the daemon did.",
    );
    let phases: [(&str, PhaseOf); 4] = [
        ("image (decision to plan)", |x| Some(x.image_ms)),
        ("container (to the process running)", |x| {
            Some(x.container_ms)
        }),
        ("ready (to the first passing readiness)", |x| x.ready_ms),
        ("total", Startup::total_ms),
    ];
    if !startups.is_empty() {
        for (label, f) in phases {
            let mut v: Vec<f64> = startups.iter().filter_map(|x| f(x)).collect();
            v.sort_by(f64::total_cmp);
            let fmt = |q: Option<f64>| q.map_or_else(|| "—".into(), ms);
            table.row(
                label.to_owned(),
                vec![
                    Cell::text(label),
                    Cell::text(fmt(quantile(&v, 0.5))),
                    Cell::text(fmt(quantile(&v, 0.9))),
                    Cell::text(fmt(v.last().copied())),
                    Cell::text(v.len().to_string()),
                ],
            );
        }
    }
    page.sections.push(Section {
        id: "startup".into(),
        heading: "Instance start-up".into(),
        note: Some("Each start from the daemon's decision: image (plan made), container (process running), ready (first passing readiness). Newest first.".into()),
        charts: vec![chart::phase_bars("Start-up phases of recent instances", Unit::Milliseconds, &rows)],
        table: Some(table),
    });

    // Instances against their limits.
    let mut table = Table::new(
        &[
            "Instance",
            "Revision",
            "Phase",
            "Ready",
            "Started",
            "CPU used",
            "Memory / limit",
            "OOM kills",
            "Restarts",
            "Why not ready",
        ],
        "No instance runs: the Service is at zero (the next request starts one).",
    );
    for i in d.instances.iter().filter(|i| of_revision(&i.revision)) {
        let u = &i.usage;
        let why = i
            .status
            .containers
            .iter()
            .find_map(|c| {
                c.waiting_reason
                    .clone()
                    .or_else(|| c.readiness_failure.as_ref().map(|f| f.message.clone()))
                    .or_else(|| {
                        c.last_termination
                            .as_ref()
                            .map(|t| format!("last exit: {}", t.message))
                    })
            })
            .unwrap_or_default();
        let restarts: u32 = i.status.containers.iter().map(|c| c.restarts).sum();
        let memory = if u.memory_limit_bytes > 0 {
            Cell::text(format!(
                "{} / {}",
                bytes(u.memory_bytes),
                bytes(u.memory_limit_bytes)
            ))
            .meter(u.memory_bytes as f64 / u.memory_limit_bytes as f64)
        } else {
            Cell::text(format!("{} (no limit)", bytes(u.memory_bytes)))
        };
        table.row(
            i.id.clone(),
            vec![
                Cell::text(short_id(&i.id)).mono(),
                Cell::text(i.revision.clone()),
                Cell::text(i.status.phase.as_str()),
                Cell::text(if i.status.ready { "yes" } else { "no" }).tone(if i.status.ready {
                    Tone::Good
                } else {
                    Tone::Warn
                }),
                Cell::text(short_time(&i.status.started_at)),
                Cell::text(format_value(u.cpu_nanos as f64 / 1e9, Unit::Seconds)),
                memory,
                Cell::text(u.oom_kills.to_string()).tone(if u.oom_kills > 0 {
                    Tone::Bad
                } else {
                    Tone::Plain
                }),
                Cell::text(restarts.to_string()),
                Cell::text(why),
            ],
        );
    }
    let step = d.history.step.max(1) as f64;
    page.sections.push(Section {
        id: "instances".into(),
        heading: "Instances: CPU and memory against limits".into(),
        note: None,
        charts: vec![
            chart::line_chart(&Line {
                title: "CPU used (cores)".into(),
                unit: Unit::Cores,
                series: vec![Series {
                    name: "cores".into(),
                    points: d
                        .history
                        .times()
                        .map(|(t, p)| (t, Some(p.cpu_seconds / step)))
                        .collect(),
                }],
                threshold: None,
                from: ctx.from(),
                to: ctx.now,
            }),
            chart::line_chart(&Line {
                title: "Instances running".into(),
                unit: Unit::Count,
                series: vec![Series {
                    name: "instances".into(),
                    points: d
                        .history
                        .times()
                        .map(|(t, p)| (t, Some(f64::from(p.instances))))
                        .collect(),
                }],
                threshold: None,
                from: ctx.from(),
                to: ctx.now,
            }),
        ],
        table: Some(table),
    });

    // Scaling decisions.
    let mut table = Table::new(
        &["When", "Revision", "Desired", "Ready then", "Panic", "Why"],
        "No scaling decision yet.",
    );
    let mut decisions: Vec<(&str, &DecisionView)> = s
        .scale
        .iter()
        .flat_map(|sc| sc.revisions.iter())
        .filter(|r| of_revision(&r.revision))
        .flat_map(|r| r.decisions.iter().map(move |x| (r.revision.as_str(), x)))
        .collect();
    decisions.sort_by(|a, b| b.1.at.cmp(&a.1.at));
    for (rev, x) in decisions.into_iter().take(30) {
        table.row(
            format!("{rev}/{}", x.at),
            vec![
                Cell::text(short_time(&x.at)),
                Cell::text(rev),
                Cell::text(x.desired.to_string()),
                Cell::text(x.ready.to_string()),
                Cell::text(if x.panicking { "yes" } else { "no" }),
                Cell::text(x.reason.clone()),
            ],
        );
    }
    let note = s
        .scale
        .as_ref()
        .and_then(|sc| sc.scale_up_stopped.clone())
        .or_else(|| {
            s.scale
                .as_ref()
                .and_then(|sc| sc.replicas_override)
                .map(|n| {
                    format!("Scale is set by hand to {n} (`skiff scale … auto` hands it back).")
                })
        });
    page.sections.push(Section::of_table(
        "scaling",
        "Scaling decisions",
        note,
        table,
    ));

    // Slow and failed requests (the daemon reads only the picked revision's request log).
    let requests = &d.requests;
    let mut table = Table::new(
        &[
            "When",
            "Request id",
            "Status",
            "Duration",
            "Cold-start wait",
            "Trace id",
            "Path",
        ],
        format!(
            "No request failed or took over {} among the recent ones.",
            format_value(d.slow_seconds, Unit::Seconds)
        ),
    );
    for r in requests
        .iter()
        .filter(|r| {
            r.status >= 500 || r.throttled.is_some() || r.duration_ms / 1000.0 > d.slow_seconds
        })
        .take(30)
    {
        table.row(r.request_id.clone(), request_cells(&base, r, true));
    }
    let slow = format_value(d.slow_seconds, Unit::Seconds);
    let note = match &d.traces {
        Some(to) => format!(
            "Their traces are kept whatever the sampling ratio and exported to {to}: look a trace id up there. Slow means over {slow}."
        ),
        None => format!(
            "Traces are off (set OTEL_EXPORTER_OTLP_ENDPOINT to export them); the trace ids still tie each request to its logs. Slow means over {slow}."
        ),
    };
    page.sections.push(Section::of_table(
        "slow",
        "Slow and failed requests",
        Some(note),
        table,
    ));

    let mut table = Table::new(
        &[
            "When",
            "Request id",
            "Status",
            "Duration",
            "Cold-start wait",
            "Method",
            "Path",
            "Instance",
        ],
        "No request in the request log yet (or request logs are off: request_logs).",
    );
    for r in requests.iter().take(50) {
        let mut cells = request_cells(&base, r, false);
        cells.push(Cell::text(r.instance.as_deref().map(short_id).unwrap_or_default()).mono());
        table.row(r.request_id.clone(), cells);
    }
    page.sections.push(Section::of_table(
        "requests",
        "Recent requests",
        Some(
            "Newest first; a request id opens its log line with its instance's output around it."
                .into(),
        ),
        table,
    ));

    let mut table = Table::new(&["When", "Instance", "Stream", "Line"], "No log lines yet.");
    // The daemon reads only the picked revision's log.
    for (n, l) in d.logs.iter().take(100).enumerate() {
        table.row(
            format!("{}-{n}", l.ts),
            vec![
                Cell::text(short_time(&l.ts)),
                Cell::text(short_id(&l.instance)).mono(),
                Cell::text(l.stream.clone()).tone(if l.stream == "stderr" {
                    Tone::Warn
                } else {
                    Tone::Plain
                }),
                Cell::text(l.line.clone()).mono(),
            ],
        );
    }
    page.sections.push(Section::of_table(
        "logs",
        "Recent logs",
        Some("The instances' output, newest first.".into()),
        table,
    ));

    let mut table = Table::new(
        &["Revision", "Images", "Error"],
        "No image pull failed for this Service's revisions.",
    );
    for (rev, message) in d.pull_failures.iter().filter(|(r, _)| of_revision(r)) {
        let images = d
            .revisions
            .iter()
            .find(|r| &r.name == rev)
            .map(|r| r.images.join(", "))
            .unwrap_or_default();
        table.row(
            rev.clone(),
            vec![
                Cell::text(rev.clone()),
                Cell::text(images).mono(),
                Cell::text(message.clone()).tone(Tone::Bad),
            ],
        );
    }
    page.sections.push(Section::of_table(
        "images",
        "Image pull errors",
        None,
        table,
    ));

    page.sections.push(Section::of_table(
        "deployments",
        "Revisions",
        None,
        deployments_table(ctx.now, &d.revisions, 20),
    ));
    page
}

fn request_cells(base: &str, r: &RequestLogLine, trace: bool) -> Vec<Cell> {
    let status = match &r.throttled {
        Some(why) => format!("{} ({why})", r.status),
        None => r.status.to_string(),
    };
    let mut cells = vec![
        Cell::text(short_time(&r.ts)),
        Cell::link(
            r.request_id.clone(),
            format!("{base}/requests/{}", path_segment(&r.request_id)),
        )
        .mono(),
        Cell::text(status).tone(if r.status >= 500 || r.throttled.is_some() {
            Tone::Bad
        } else if r.status >= 400 {
            Tone::Warn
        } else {
            Tone::Plain
        }),
        Cell::text(ms(r.duration_ms)),
        Cell::text(r.cold_start_ms.map(ms).unwrap_or_default()),
    ];
    if trace {
        cells.push(Cell::text(r.trace_id.clone()).mono());
        cells.push(Cell::text(r.path.clone()).mono());
    } else {
        cells.push(Cell::text(r.method.clone()));
        cells.push(Cell::text(r.path.clone()).mono());
    }
    cells
}

/// One request: its log line and its instance's output around it.
pub fn trail(ctx: Context, namespace: &str, service: &str, t: &RequestTrail) -> Page {
    let r = &t.request;
    let mut page = ctx.page(View::Debug, format!("Request {}", r.request_id));
    page.live_seconds = 0;
    let base = debug_href(namespace, service);
    page.tabs.push((
        format!("Back to {}", display_name(namespace, service)),
        base.clone(),
        false,
    ));
    page.cards.push(Card {
        id: "status",
        label: "Status".into(),
        value: r.status.to_string(),
        detail: r
            .throttled
            .clone()
            .map(|t| format!("refused by skiff: {t}"))
            .unwrap_or_default(),
        tone: if r.status >= 500 {
            Tone::Bad
        } else if r.status >= 400 {
            Tone::Warn
        } else {
            Tone::Good
        },
    });
    page.cards.push(Card {
        id: "duration",
        label: "Duration".into(),
        value: ms(r.duration_ms),
        detail: r
            .cold_start_ms
            .map(|c| format!("{} waiting for a cold start", ms(c)))
            .unwrap_or_else(|| "no cold start".into()),
        tone: Tone::Plain,
    });
    let mut table = Table::new(&["Field", "Value"], "");
    let fields = [
        ("time", r.ts.clone()),
        ("request id", r.request_id.clone()),
        ("trace id", r.trace_id.clone()),
        ("method", r.method.clone()),
        ("host", r.host.clone()),
        ("path", r.path.clone()),
        ("bytes", r.bytes.to_string()),
        ("revision", r.revision.clone()),
        ("instance", r.instance.clone().unwrap_or_default()),
        ("cold start", r.cold_start.to_string()),
        ("incomplete", r.incomplete.to_string()),
    ];
    for (k, v) in fields {
        table.row(k, vec![Cell::text(k), Cell::text(v).mono()]);
    }
    page.sections
        .push(Section::of_table("request", "The request", None, table));
    let mut table = Table::new(
        &["When", "Stream", "Line"],
        "Its instance wrote nothing from a second before it to a second after it.",
    );
    for (n, l) in t.logs.iter().enumerate() {
        table.row(
            format!("{n}"),
            vec![
                Cell::text(short_time(&l.ts)),
                Cell::text(l.stream.clone()),
                Cell::text(l.line.clone()).mono(),
            ],
        );
    }
    page.sections.push(Section::of_table(
        "logs",
        "Its instance's output around it",
        None,
        table,
    ));
    page
}

fn tail(id: &str, n: usize) -> String {
    let skip = id.chars().count().saturating_sub(n);
    id.chars().skip(skip).collect()
}

/// A share of a budget left, or how many times over it is spent.
fn budget_left(left: f64) -> String {
    if left < 0.0 {
        format!("spent {:.1}× over", 1.0 - left)
    } else {
        format_value(left, Unit::Percent)
    }
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

fn clock(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%H:%M:%S").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use askama::Template;

    use super::*;

    #[test]
    fn jobs_and_deliveries_are_listed_with_their_trouble_marked() {
        let jobs = [JobRow {
            namespace: "default".into(),
            name: "etl".into(),
            executions: 3,
            latest: Some(("etl-abcde".into(), "EXECUTION_FAILED".into())),
            schedule: Some("0 3 * * * (Europe/Berlin)".into()),
            next_run: Some("2026-12-06T02:00:00Z".into()),
            missed_runs: 1,
            running: 0,
        }];
        let deliveries = [DeliveryRow {
            subscription: "trigger/default/orders".into(),
            target: "Service/worker".into(),
            depth: 12,
            delivered: 100,
            retried: 4,
            dead_lettered: 2,
        }];
        let s = work_sections(&jobs, &deliveries);
        assert_eq!(s.len(), 2);
        let jt = s[0].table.as_ref().expect("table");
        let row = &jt.rows[0].1;
        assert_eq!(row[3].text, "etl-abcde: failed");
        assert_eq!(row[3].tone, Tone::Bad);
        assert_eq!(row[6].tone, Tone::Warn);
        let dt = s[1].table.as_ref().expect("table");
        let row = &dt.rows[0].1;
        assert_eq!(row[2].text, "12");
        assert_eq!(row[5].tone, Tone::Bad);
        let empty = work_sections(&[], &[]);
        assert!(empty[0].table.as_ref().expect("t").rows.is_empty());
        assert!(
            empty[0]
                .table
                .as_ref()
                .expect("t")
                .empty
                .contains("skiff apply")
        );
    }

    #[test]
    fn rollouts_are_listed_with_their_state() {
        let rows = [
            RolloutRow {
                namespace: "default".into(),
                service: "web".into(),
                revision: "web-00002".into(),
                from: "web-00001".into(),
                state: "rolling out".into(),
                failed: false,
                step: Some("1 of 3 (5%)".into()),
                detail: "new 40 req, 5xx 0.0% | stable 760 req, 5xx 0.0%".into(),
            },
            RolloutRow {
                namespace: "default".into(),
                service: "api".into(),
                revision: "api-00007".into(),
                from: "api-00006".into(),
                state: "RolloutFailed".into(),
                failed: true,
                step: None,
                detail: "errors: 5xx 33.3% (4 of 12)".into(),
            },
        ];
        let s = rollout_section(&rows);
        let t = s.table.as_ref().expect("table");
        assert_eq!(t.rows[0].1[3].tone, Tone::Warn);
        assert_eq!(t.rows[0].1[4].text, "1 of 3 (5%)");
        assert_eq!(t.rows[1].1[3].tone, Tone::Bad);
        assert!(rollout_section(&[]).table.expect("t").rows.is_empty());
    }

    fn ctx() -> Context {
        Context {
            range: Range::H1,
            now: 1_800_000_000,
        }
    }

    fn history(service: &str, requests: u64, errors: u64) -> ServiceHistory {
        let at = rfc3339(ctx().from());
        ServiceHistory {
            namespace: "default".into(),
            service: service.into(),
            summary: Summary {
                requests,
                errors,
                cost: 0.5,
                ..Summary::default()
            },
            step: 20,
            points: vec![MetricsPoint {
                at,
                requests,
                errors,
                cost: 0.5,
                ..MetricsPoint::default()
            }],
        }
    }

    #[test]
    fn the_executive_view_adds_services_up_and_ranks_failures() {
        let h = [
            history("web", 90, 0),
            history("pay", 10, 4),
            history("db", 100, 6),
        ];
        let page = executive(ctx(), &h, &h, &[], &[]);
        let success = page.cards.iter().find(|c| c.id == "success").expect("card");
        assert_eq!(success.value, "95%");
        assert_eq!(success.detail, "200 requests, 10 answered 5xx");
        let failing = page
            .sections
            .iter()
            .find(|s| s.id == "failing")
            .and_then(|s| s.table.as_ref())
            .expect("failing table");
        let keys: Vec<&str> = failing.rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["default/db", "default/pay"],
            "most 5xx first, none without"
        );
        let html = page.render().expect("renders");
        assert!(html.contains("Cost per hour, by Service"));
    }

    #[test]
    fn empty_views_say_so() {
        let page = executive(ctx(), &[], &[], &[], &[]);
        let html = page.render().expect("renders");
        assert!(html.contains("No Service answered 5xx in the last hour."));
        assert!(html.contains("No Service sets an SLO"));
        assert!(html.contains("No data in this range"));
        assert!(!html.contains("NaN"));
        let page = oncall(ctx(), &[], &[], &[], &[], &[]);
        let html = page.render().expect("renders");
        assert!(html.contains("No alert is firing."));
        let page = debug(ctx(), &DebugInput::default());
        let html = page.render().expect("renders");
        assert!(html.contains("No instance runs"));
        assert!(html.contains("No image pull failed"));
    }

    #[test]
    fn the_debug_view_lists_slow_and_failed_requests_with_links() {
        let line = |id: &str, status: u16, ms: f64| RequestLogLine {
            ts: "2027-01-15T08:00:00Z".into(),
            request_id: id.into(),
            trace_id: "t".into(),
            method: "GET".into(),
            host: "h".into(),
            path: "/".into(),
            status,
            duration_ms: ms,
            bytes: 0,
            revision: "web-00001".into(),
            instance: None,
            cold_start: false,
            cold_start_ms: None,
            throttled: None,
            incomplete: false,
        };
        let d = DebugInput {
            service: ServiceNow {
                namespace: "default".into(),
                service: "web".into(),
                ..ServiceNow::default()
            },
            requests: vec![
                line("fast", 200, 3.0),
                line("slow", 200, 2500.0),
                line("bad", 503, 1.0),
            ],
            slow_seconds: 1.0,
            ..DebugInput::default()
        };
        let page = debug(ctx(), &d);
        let slow = page
            .sections
            .iter()
            .find(|s| s.id == "slow")
            .and_then(|s| s.table.as_ref())
            .expect("slow table");
        let keys: Vec<&str> = slow.rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["slow", "bad"]);
        assert_eq!(
            slow.rows[0].1[1].href.as_deref(),
            Some("/ui/services/default/web/requests/slow")
        );
    }

    #[test]
    fn budgets_overspent_read_as_times_over() {
        assert_eq!(budget_left(0.5), "50%");
        assert_eq!(budget_left(-2.0), "spent 3.0× over");
    }
}
