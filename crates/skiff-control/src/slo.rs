//! SLOs and budgets evaluated over the history after every flush: each Service with
//! `skiff.dev/slo-*` or `skiff.dev/budget` annotations gets a [`skiff_slo::Report`], its
//! alert conditions go through one [`Alerts`] state, and the transitions (fired, resolved)
//! go to a [`Notify`] (Alertmanager, a webhook). Firing alerts are sent again every
//! [`RESEND`], as Prometheus does, so Alertmanager keeps them until they resolve.
//!
//! Each evaluation also publishes the Services whose cost budget is spent
//! ([`SloEngine::budget_stops`], at the same threshold as the budget's page alert): serving
//! stops their scale-up ([`crate::budget`]). An evaluation that cannot read the store or the
//! history publishes nothing, so the last set stands.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use skiff_api::slo::{Budget, Slo, budget_of, slo_of};
use skiff_api::wire::Alert;
use skiff_history::{History, ServiceKey};
use skiff_slo::{
    AlertKey, Alerts, Counts, FiringAlert, Report, Sli, SliKind, Transition, budget_conditions,
    budget_period_end, budget_period_start, budget_severities, evaluate, slo_conditions,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::budget::{BudgetStop, BudgetStops};
use crate::controller::Controller;
use crate::history::SharedHistory;
use crate::telemetry::Prices;

/// How often firing alerts are sent again.
pub const RESEND: Duration = Duration::from_secs(60);

/// A Service's requests in the history, as [`skiff_slo`] asks for them.
struct HistorySli<'a> {
    history: &'a History,
    service: ServiceKey,
}

impl Sli for HistorySli<'_> {
    fn counts(&self, kind: SliKind, from_unix: i64, to_unix: i64) -> Counts {
        let Ok(s) = self.history.sum(&self.service, None, from_unix, to_unix) else {
            return Counts::default();
        };
        match kind {
            SliKind::Availability => Counts {
                total: s.total(),
                bad: s.errors(),
            },
            SliKind::Latency { bucket_index } => {
                let total = s.latency_count();
                Counts {
                    total,
                    bad: total.saturating_sub(s.count_within(bucket_index)),
                }
            }
        }
    }
}

/// A cost budget now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// Dollars per period.
    pub dollars: f64,
    /// `day` or `month` (UTC).
    pub per: &'static str,
    /// Spent since the period began.
    pub spent: f64,
    /// When the period began (Unix seconds).
    pub period_start: i64,
    /// When it ends and the spend starts from zero again (Unix seconds).
    pub period_end: i64,
    /// Whether the budget is spent (as much as its page alert asks), so that the Service's
    /// revisions are not scaled up until the period ends or the budget is raised.
    pub scale_up_stopped: bool,
}

/// One Service's SLO and budget now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSlo {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Its SLO evaluated, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    /// Its budget, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
}

/// Where alert changes go.
#[async_trait::async_trait]
pub trait Notify: Send + Sync + 'static {
    /// Sends the alerts: `firing` ones (sent again every [`RESEND`]) and `resolved` ones.
    async fn send(&self, firing: &[Alert], resolved: &[Alert]);
}

fn alert_name(key: &AlertKey) -> String {
    match key.kind {
        skiff_slo::AlertKind::Availability => "AvailabilityBurn".into(),
        skiff_slo::AlertKind::Latency => "LatencyBurn".into(),
        skiff_slo::AlertKind::Budget => "BudgetSpent".into(),
        skiff_slo::AlertKind::Rollout => "RolloutFailed".into(),
    }
}

fn view(key: &AlertKey, since: i64) -> Alert {
    let kind = serde_json::to_value(key.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Alert {
        name: alert_name(key),
        namespace: key.namespace.clone(),
        service: key.service.clone(),
        kind,
        severity: key.severity.as_str().to_owned(),
        since: jiff::Timestamp::from_second(since)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

#[derive(Default)]
struct State {
    alerts: Alerts,
    services: BTreeMap<(String, String), ServiceSlo>,
    last_sent: i64,
}

/// Evaluates SLOs and budgets after each history flush.
pub struct SloEngine {
    controller: Controller,
    history: SharedHistory,
    prices: Prices,
    notify: Option<Arc<dyn Notify>>,
    state: Mutex<State>,
    /// The Services whose cost budget is spent, published after each evaluation.
    stops: watch::Sender<Arc<BudgetStops>>,
}

/// What one Service asks for.
struct Asked {
    namespace: String,
    service: String,
    slo: Option<Slo>,
    budget: Option<Budget>,
    /// Its latest revision stands rolled back by its rollout's analysis.
    rolled_back: bool,
}

impl SloEngine {
    /// An engine over `history`, pricing budgets at `prices`, sending alerts to `notify`.
    pub fn new(
        controller: Controller,
        history: SharedHistory,
        prices: Prices,
        notify: Option<Arc<dyn Notify>>,
    ) -> Self {
        SloEngine {
            controller,
            history,
            prices,
            notify,
            state: Mutex::default(),
            stops: watch::Sender::new(Arc::default()),
        }
    }

    /// The Services whose cost budget is spent, as last evaluated (empty until the first
    /// evaluation).
    pub fn budget_stops(&self) -> watch::Receiver<Arc<BudgetStops>> {
        self.stops.subscribe()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prices budgets and costs are computed at.
    pub fn prices(&self) -> Prices {
        self.prices
    }

    /// The alerts firing now.
    pub fn firing(&self) -> Vec<Alert> {
        let st = self.state();
        st.alerts
            .firing()
            .iter()
            .map(|FiringAlert { key, since }| view(key, *since))
            .collect()
    }

    /// Every Service's SLO and budget as last evaluated (those in `namespace`, if given).
    pub fn services(&self, namespace: Option<&str>) -> Vec<ServiceSlo> {
        self.state()
            .services
            .values()
            .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
            .cloned()
            .collect()
    }

    /// The SLOs as Prometheus rules (Sloth's names), for every Service that has one.
    pub async fn prometheus_rules(&self) -> String {
        let slos: Vec<skiff_slo::ServiceSlo> = self
            .asked()
            .await
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a.namespace, a.service, a.slo?)))
            .collect();
        skiff_slo::prometheus_rules(&slos)
    }

    /// What every Service asks for; `None` when the store cannot be read (then nothing is
    /// evaluated, rather than every alert resolving as if its Service were gone).
    async fn asked(&self) -> Option<Vec<Asked>> {
        let services = match self.controller.list_services(None).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %skiff_telemetry::ErrorChain(&e), "listing Services for their SLOs");
                return None;
            }
        };
        let asked = services
            .into_iter()
            .filter_map(|s| {
                let a = &s.metadata.annotations;
                // Validation refused bad values; one that no longer parses counts as unset.
                let slo = slo_of(a).ok().flatten();
                let budget = budget_of(a).ok().flatten();
                let rolled_back = skiff_api::object::condition(
                    &s.status.conditions,
                    crate::status::conditions::ROLLED_OUT,
                )
                .is_some_and(|c| {
                    c.reason.as_deref() == Some(crate::status::reasons::ROLLOUT_FAILED)
                });
                (slo.is_some() || budget.is_some() || rolled_back).then(|| Asked {
                    namespace: s.metadata.namespace.clone(),
                    service: s.metadata.name.clone(),
                    slo,
                    budget,
                    rolled_back,
                })
            })
            .collect();
        Some(asked)
    }

    /// Evaluates every Service's SLO and budget at `now`, steps the alerts, and sends what
    /// changed (and what still fires, every [`RESEND`]).
    pub async fn evaluate(&self, now: jiff::Timestamp) {
        let Some(asked) = self.asked().await else {
            return;
        };
        let prices = self.prices;
        let at = now.as_second();
        let Ok(Ok(evaluated)) = self
            .history
            .with(move |h| {
                Ok(asked
                    .iter()
                    .map(|a| evaluate_one(h, a, at, prices))
                    .collect::<Vec<_>>())
            })
            .await
        else {
            return;
        };
        self.publish_stops(budget_stops(&evaluated));
        let (transitions, firing, resend) = {
            let mut st = self.state();
            let (transitions, kept) = step(&mut st, &evaluated, at);
            st.services = kept;
            let resend = at - st.last_sent >= RESEND.as_secs() as i64;
            if resend || !transitions.is_empty() {
                st.last_sent = at;
            }
            let firing: Vec<Alert> = st
                .alerts
                .firing()
                .iter()
                .map(|f| view(&f.key, f.since))
                .collect();
            (transitions, firing, resend)
        };
        let mut resolved = Vec::new();
        for t in &transitions {
            match t {
                Transition::Fired { key, since } => {
                    warn!(alert = %alert_name(key), namespace = %key.namespace, service = %key.service, severity = key.severity.as_str(), since, "alert firing")
                }
                Transition::Resolved { key, since, .. } => {
                    info!(alert = %alert_name(key), namespace = %key.namespace, service = %key.service, severity = key.severity.as_str(), "alert resolved");
                    resolved.push(view(key, *since));
                }
            }
        }
        if let Some(n) = &self.notify
            && (resend || !transitions.is_empty())
            && (!firing.is_empty() || !resolved.is_empty())
        {
            n.send(&firing, &resolved).await;
        }
    }
}

impl SloEngine {
    /// Publishes the Services whose budget is spent, when that changed, saying which
    /// stopped or resumed scaling up.
    fn publish_stops(&self, stops: BudgetStops) {
        self.stops.send_if_modified(|current| {
            if **current == stops {
                return false;
            }
            for (ns, svc) in stops.keys().filter(|k| !current.contains_key(*k)) {
                warn!(namespace = %ns, service = %svc, "cost budget spent: scale-up stopped");
            }
            for (ns, svc) in current.keys().filter(|k| !stops.contains_key(*k)) {
                info!(namespace = %ns, service = %svc, "cost budget no longer spent: scale-up resumed");
            }
            *current = Arc::new(stops);
            true
        });
    }
}

/// The Services whose budget is spent, from an evaluation.
fn budget_stops(evaluated: &[(ServiceSlo, Vec<skiff_slo::Condition>)]) -> BudgetStops {
    evaluated
        .iter()
        .filter_map(|(s, _)| {
            let b = s.budget.as_ref().filter(|b| b.scale_up_stopped)?;
            let per = match b.per {
                "month" => skiff_api::slo::BudgetPeriod::Month,
                _ => skiff_api::slo::BudgetPeriod::Day,
            };
            let stop = BudgetStop {
                dollars: b.dollars,
                per,
                until_unix: b.period_end,
            };
            Some(((s.namespace.clone(), s.service.clone()), stop))
        })
        .collect()
}

/// Steps the alerts with every Service's conditions; Services no longer asking resolve.
fn step(
    st: &mut State,
    evaluated: &[(ServiceSlo, Vec<skiff_slo::Condition>)],
    at: i64,
) -> (Vec<Transition>, BTreeMap<(String, String), ServiceSlo>) {
    let mut transitions = Vec::new();
    let mut kept = BTreeMap::new();
    for (s, conditions) in evaluated {
        transitions.extend(st.alerts.step(at, conditions));
        kept.insert((s.namespace.clone(), s.service.clone()), s.clone());
    }
    let gone: HashSet<(String, String)> = st
        .alerts
        .firing()
        .iter()
        .map(|f| (f.key.namespace.clone(), f.key.service.clone()))
        .filter(|k| !kept.contains_key(k))
        .collect();
    for (ns, svc) in gone {
        transitions.extend(st.alerts.forget(&ns, &svc, at));
    }
    (transitions, kept)
}

/// One Service's report, budget and alert conditions at `at`.
fn evaluate_one(
    h: &History,
    a: &Asked,
    at: i64,
    prices: Prices,
) -> (ServiceSlo, Vec<skiff_slo::Condition>) {
    let key = ServiceKey::new(&a.namespace, &a.service);
    let report = a.slo.as_ref().map(|slo| {
        let sli = HistorySli {
            history: h,
            service: key.clone(),
        };
        evaluate(slo, &sli, at)
    });
    let mut conditions = report
        .as_ref()
        .map(|r| slo_conditions(&a.namespace, &a.service, r))
        .unwrap_or_default();
    conditions.push(skiff_slo::rollout_condition(
        &a.namespace,
        &a.service,
        a.rolled_back,
    ));
    let budget = a.budget.map(|b| {
        let start = budget_period_start(b.per, at);
        let s = h.sum(&key, None, start, at + 1).unwrap_or_default();
        let spent = s.vcpu_seconds * prices.vcpu_second
            + s.gib_seconds * prices.gib_second
            + s.total() as f64 * prices.million_requests / 1e6;
        conditions.extend(budget_conditions(&a.namespace, &a.service, spent, &b));
        // The page alert's threshold: the alert fires and scale-up stops together.
        let [(_, spent_all), _] = budget_severities(spent, &b);
        BudgetStatus {
            dollars: b.dollars,
            per: match b.per {
                skiff_api::slo::BudgetPeriod::Day => "day",
                skiff_api::slo::BudgetPeriod::Month => "month",
            },
            spent,
            period_start: start,
            period_end: budget_period_end(b.per, at),
            scale_up_stopped: spent_all,
        }
    });
    let s = ServiceSlo {
        namespace: a.namespace.clone(),
        service: a.service.clone(),
        report,
        budget,
    };
    (s, conditions)
}

#[async_trait::async_trait]
impl crate::history::AfterFlush for SloEngine {
    async fn flushed(&self, now: jiff::Timestamp) {
        self.evaluate(now).await;
    }
}

#[cfg(test)]
mod tests {
    use skiff_history::{Sample, SeriesKey};

    use super::*;

    fn asked(annotations: &[(&str, &str)]) -> Asked {
        let a: std::collections::BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Asked {
            namespace: "default".into(),
            service: "hello".into(),
            slo: slo_of(&a).expect("valid"),
            budget: budget_of(&a).expect("valid"),
            rolled_back: false,
        }
    }

    fn requests(ok: u64, errors: u64) -> Sample {
        let mut latency = [0; 23];
        latency[3] = ok + errors;
        Sample {
            requests_by_class: [0, ok, 0, 0, errors],
            latency,
            ..Default::default()
        }
    }

    /// Every 10 s of a simulated minute, with `sample` recorded in each interval.
    fn run(h: &mut History, from: i64, secs: i64, sample: &Sample) {
        let key = SeriesKey::new("default", "hello", "hello-00001");
        for t in (from..from + secs).step_by(10) {
            h.record(&key, t, sample);
            h.flush(t + 10).expect("flush");
        }
    }

    /// On an in-memory history and a simulated clock: all requests failing a 99.9%/1h SLO
    /// fires the page alert; once requests succeed again it resolves; the Service's alerts
    /// resolve when it stops asking for an SLO.
    #[test]
    fn errors_page_and_then_resolve() {
        let mut h = History::open_in_memory().expect("history");
        let a = asked(&[
            ("skiff.dev/slo-availability", "99.9"),
            ("skiff.dev/slo-period", "1h"),
        ]);
        let mut st = State::default();
        let t0 = 1_800_000_000;
        run(&mut h, t0, 60, &requests(0, 10));
        let now = t0 + 60;
        let (s, conditions) = evaluate_one(&h, &a, now, Prices::default());
        let (fired, _) = step(&mut st, &[(s.clone(), conditions)], now);
        assert!(
            fired.iter().any(|t| matches!(t, Transition::Fired { key, .. } if key.severity == skiff_slo::Severity::Page)),
            "{fired:?}"
        );
        let budget = s.report.expect("a report").objectives[0].budget_remaining;
        assert!(budget < 0.0, "{budget}");
        run(&mut h, now, 60, &requests(10, 0));
        let later = now + 60;
        let (s, conditions) = evaluate_one(&h, &a, later, Prices::default());
        let (resolved, _) = step(&mut st, &[(s, conditions)], later);
        assert!(
            resolved.iter().any(|t| matches!(t, Transition::Resolved { key, .. } if key.severity == skiff_slo::Severity::Page)),
            "{resolved:?}"
        );
        run(&mut h, later, 20, &requests(0, 10));
        let (s, conditions) = evaluate_one(&h, &a, later + 20, Prices::default());
        step(&mut st, &[(s, conditions)], later + 20);
        assert!(!st.alerts.firing().is_empty());
        let (gone, kept) = step(&mut st, &[], later + 30);
        assert!(kept.is_empty() && st.alerts.firing().is_empty(), "{gone:?}");
    }

    /// A budget's spend is the history's vCPU-, GiB-seconds and requests at the prices;
    /// past it, the budget's page alert holds.
    #[test]
    fn budgets_are_priced_from_the_history() {
        let mut h = History::open_in_memory().expect("history");
        let a = asked(&[("skiff.dev/budget", "0.0005/day")]);
        let t0 = 1_800_000_000 - 1_800_000_000 % 86_400 + 3_600;
        let mut s = requests(1000, 0);
        s.vcpu_seconds = 10.0;
        s.gib_seconds = 5.0;
        run(&mut h, t0, 10, &s);
        let (status, conditions) = evaluate_one(&h, &a, t0 + 10, Prices::default());
        let spent = status.budget.expect("a budget").spent;
        let expected = 10.0 * 0.000_024 + 5.0 * 0.000_002_5 + 1000.0 * 0.40 / 1e6;
        assert!((spent - expected).abs() < 1e-12, "{spent} {expected}");
        assert!(
            conditions
                .iter()
                .any(|c| c.holds && c.key.severity == skiff_slo::Severity::Page)
        );
    }

    /// On a simulated clock: a Service that spent its budget is published as stopped (with
    /// the end of its day), one under its budget is not, a raised budget lifts the stop, and
    /// so does the next day, when the spend starts from zero.
    #[test]
    fn spent_budgets_are_published_until_the_period_turns() {
        let mut h = History::open_in_memory().expect("history");
        let day = 86_400;
        let t0 = 1_800_000_000 - 1_800_000_000 % day + 3_600;
        let mut s = requests(1000, 0);
        s.vcpu_seconds = 10.0;
        run(&mut h, t0, 10, &s);
        let stops_at = |annotation: &str, at: i64| {
            let a = asked(&[("skiff.dev/budget", annotation)]);
            let evaluated = vec![evaluate_one(&h, &a, at, Prices::default())];
            let status = evaluated[0].0.budget.clone().expect("a budget");
            (status, budget_stops(&evaluated))
        };
        let (status, stops) = stops_at("0.0001/day", t0 + 10);
        assert!(status.scale_up_stopped, "{status:?}");
        assert_eq!(status.period_end, t0 - 3_600 + day);
        let key = ("default".to_owned(), "hello".to_owned());
        assert_eq!(
            stops.get(&key),
            Some(&BudgetStop {
                dollars: 0.0001,
                per: skiff_api::slo::BudgetPeriod::Day,
                until_unix: t0 - 3_600 + day,
            })
        );
        let json = serde_json::to_value(&status).expect("JSON");
        assert_eq!(json["scaleUpStopped"], true, "{json}");
        // At 80% the ticket fires, but scale-up goes on.
        let (status, stops) = stops_at("0.0007/day", t0 + 10);
        assert!(!status.scale_up_stopped && stops.is_empty(), "{status:?}");
        let (_, stops) = stops_at("0.0001/month", t0 + 10);
        assert_eq!(
            stops.get(&key).map(|s| s.per),
            Some(skiff_api::slo::BudgetPeriod::Month)
        );
        // The next day nothing is spent yet.
        let (status, stops) = stops_at("0.0001/day", t0 - 3_600 + day + 10);
        assert_eq!(status.spent, 0.0);
        assert!(stops.is_empty());
    }
}
