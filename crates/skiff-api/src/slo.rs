//! Service-level objectives and cost budgets, written as annotations on a Service's own
//! `metadata.annotations` (not on the revision template: an objective belongs to the Service
//! and outlives its revisions).
//!
//! | annotation | example | meaning |
//! |---|---|---|
//! | `skiff.dev/slo-availability` | `"99.9"` | that percent of requests do not answer 5xx |
//! | `skiff.dev/slo-latency` | `"300ms@95"` | that percent of requests answer within 300 ms |
//! | `skiff.dev/slo-period` | `"30d"` | the period the objectives are measured over (default 30d) |
//! | `skiff.dev/slo-policy` | `"workbook"` | how burn-rate alerts are chosen (`workbook` or `simple`) |
//! | `skiff.dev/budget` | `"5/day"`, `"150/month"` | dollars the Service may cost per day or per calendar month (UTC) |
//!
//! A latency threshold must be one of [`LATENCY_BUCKETS_SECONDS`], the bucket bounds of the
//! router's request-duration histogram: the share of requests under a bound is then exact,
//! both here and in Prometheus rules reading `_bucket{le=…}`, where a threshold between two
//! bounds could only be interpolated.
//!
//! Pure: parsing only. `skiff-slo` computes burn rates and alerts from these.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The availability objective: a percent of requests that do not answer 5xx.
pub const SLO_AVAILABILITY_ANNOTATION: &str = "skiff.dev/slo-availability";
/// The latency objective: `DURATION@PERCENT`.
pub const SLO_LATENCY_ANNOTATION: &str = "skiff.dev/slo-latency";
/// The period objectives are measured over.
pub const SLO_PERIOD_ANNOTATION: &str = "skiff.dev/slo-period";
/// Which burn-rate alerts apply.
pub const SLO_POLICY_ANNOTATION: &str = "skiff.dev/slo-policy";
/// The cost budget: `DOLLARS/day` or `DOLLARS/month`.
pub const BUDGET_ANNOTATION: &str = "skiff.dev/budget";

/// Every annotation of this module: they are all set on the Service's metadata.
pub const SERVICE_ANNOTATIONS: [&str; 5] = [
    SLO_AVAILABILITY_ANNOTATION,
    SLO_LATENCY_ANNOTATION,
    SLO_PERIOD_ANNOTATION,
    SLO_POLICY_ANNOTATION,
    BUDGET_ANNOTATION,
];

/// The bucket bounds, in seconds, of the router's request-duration histogram
/// (`skiff_router_request_duration_seconds`). A latency objective's threshold is one of them.
pub const LATENCY_BUCKETS_SECONDS: [f64; 22] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The period when `skiff.dev/slo-period` is not set (the SRE Workbook's).
pub const DEFAULT_SLO_PERIOD: Duration = Duration::from_secs(30 * DAY);
/// The shortest period accepted.
pub const MIN_SLO_PERIOD: Duration = Duration::from_secs(HOUR);
/// The longest period accepted (longer periods need more history than skiff keeps).
pub const MAX_SLO_PERIOD: Duration = Duration::from_secs(90 * DAY);

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
/// Digits after the decimal point a percent may have (`99.9999`).
const MAX_PERCENT_DECIMALS: usize = 4;

/// How burn-rate alerts are chosen for an objective (`skiff-slo` defines both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The SRE Workbook's multiwindow, multi-burn-rate alerts: two pages and a ticket.
    #[default]
    Workbook,
    /// One ticket on a sustained moderate burn; never a page.
    Simple,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Workbook => "workbook",
            Policy::Simple => "simple",
        })
    }
}

/// A latency objective: `objective` of requests answer within `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyObjective {
    /// The threshold, one of [`LATENCY_BUCKETS_SECONDS`].
    pub threshold: Duration,
    /// The threshold's index in [`LATENCY_BUCKETS_SECONDS`].
    pub bucket_index: usize,
    /// The share of requests that must answer within the threshold (0 to 1, exclusive).
    pub objective: f64,
}

impl LatencyObjective {
    /// The threshold in seconds, exactly as the histogram's `le` label has it.
    pub fn threshold_seconds(&self) -> f64 {
        LATENCY_BUCKETS_SECONDS[self.bucket_index]
    }
}

/// A Service's objectives. At least one of `availability` and `latency` is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// The share of requests that must not answer 5xx (0 to 1, exclusive).
    pub availability: Option<f64>,
    /// The latency objective.
    pub latency: Option<LatencyObjective>,
    /// The period both are measured over.
    pub period: Duration,
    /// Which burn-rate alerts apply.
    pub policy: Policy,
}

/// What a budget is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetPeriod {
    /// A day, from 00:00 UTC.
    Day,
    /// A calendar month, from the 1st at 00:00 UTC.
    Month,
}

/// A cost budget: at most `dollars` per day or per calendar month (both in UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Dollars per period (more than zero).
    pub dollars: f64,
    /// The period.
    pub per: BudgetPeriod,
}

/// Why the annotations of this module are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SloError {
    /// One annotation's value does not parse or is out of range.
    #[error("annotation `{annotation}`: {why}")]
    Invalid {
        /// The annotation.
        annotation: &'static str,
        /// What is wrong and what is accepted, for the user.
        why: String,
    },
    /// A period or policy is set but no objective is.
    #[error("{} set without an objective", .annotations.join(" and "))]
    WithoutObjective {
        /// The annotations set in vain.
        annotations: Vec<&'static str>,
    },
}

impl SloError {
    /// The annotations the error is about.
    pub fn annotations(&self) -> Vec<&'static str> {
        match self {
            SloError::Invalid { annotation, .. } => vec![annotation],
            SloError::WithoutObjective { annotations } => annotations.clone(),
        }
    }

    /// The message to show at an annotation's path (the path names the annotation).
    pub fn reason(&self) -> String {
        match self {
            SloError::Invalid { why, .. } => why.clone(),
            SloError::WithoutObjective { .. } => format!(
                "has no effect without an objective: set {SLO_AVAILABILITY_ANNOTATION} or \
                 {SLO_LATENCY_ANNOTATION} too"
            ),
        }
    }
}

fn invalid(annotation: &'static str, why: impl Into<String>) -> SloError {
    SloError::Invalid {
        annotation,
        why: why.into(),
    }
}

/// Parses a plain decimal (`99`, `99.95`) into its digits and number of decimals, so that
/// ratios are computed by one correctly rounded division (`999 / 1000`, not `99.9 / 100`).
fn decimal(s: &str) -> Option<(u64, usize)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return None;
    }
    if int.len() + frac.len() > 15 {
        return None;
    }
    let n = format!("{int}{frac}").parse().ok()?;
    Some((n, frac.len()))
}

/// Parses a percent strictly between 0 and 100 (`99.9`) into a ratio (`0.999`).
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let accepted = "a percent above 0 and below 100, such as 99 or 99.95 (no % sign)";
    let (n, decimals) = decimal(s).ok_or_else(|| format!("`{s}` is not {accepted}"))?;
    if decimals > MAX_PERCENT_DECIMALS {
        return Err(format!(
            "`{s}` has more than {MAX_PERCENT_DECIMALS} decimals; write {accepted}"
        ));
    }
    let scale = 10u64.pow(decimals as u32 + 2);
    if n == 0 || n >= scale {
        return Err(format!("`{s}` is out of range: write {accepted}"));
    }
    Ok(n as f64 / scale as f64)
}

/// A bucket bound written as a Go duration (`500us`, `2.5ms`, `1s`, `5m`).
pub fn bucket_label(seconds: f64) -> String {
    if seconds >= 60.0 && seconds % 60.0 == 0.0 {
        format!("{}m", seconds / 60.0)
    } else if seconds >= 1.0 {
        format!("{seconds}s")
    } else if seconds >= 0.001 {
        format!("{}ms", (seconds * 1e7).round() / 1e4)
    } else {
        format!("{}us", (seconds * 1e7).round() / 10.0)
    }
}

/// Parses `DURATION@PERCENT` (`300ms@95`).
pub fn parse_latency(s: &str) -> Result<LatencyObjective, String> {
    let (d, pct) = s.split_once('@').ok_or_else(|| {
        format!("`{s}` must be DURATION@PERCENT, such as 300ms@95 (95% of requests within 300 ms)")
    })?;
    let threshold = crate::names::parse_go_duration(d.trim())?;
    let objective = parse_percent(pct.trim())?;
    let secs = threshold.as_secs_f64();
    let bucket_index = LATENCY_BUCKETS_SECONDS
        .iter()
        .position(|b| (b - secs).abs() < 1e-9)
        .ok_or_else(|| {
            let allowed: Vec<String> = LATENCY_BUCKETS_SECONDS
                .iter()
                .map(|b| bucket_label(*b))
                .collect();
            format!(
                "`{d}` is not a bucket bound of the request-duration histogram; use one of {}",
                allowed.join(", ")
            )
        })?;
    Ok(LatencyObjective {
        threshold,
        bucket_index,
        objective,
    })
}

/// Parses a period: a whole number of hours or days (`6h`, `30d`), from 1h to 90d.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let accepted = "a whole number of hours or days from 1h to 90d, such as 6h, 7d or 30d";
    let unit = match s.chars().last() {
        Some('h') => HOUR,
        Some('d') => DAY,
        _ => return Err(format!("`{s}` is not {accepted}")),
    };
    let n: u64 = s[..s.len() - 1]
        .parse()
        .ok()
        .filter(|_| s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("`{s}` is not {accepted}"))?;
    let d = Duration::from_secs(n.saturating_mul(unit));
    if d < MIN_SLO_PERIOD || d > MAX_SLO_PERIOD {
        return Err(format!("`{s}` is out of range: write {accepted}"));
    }
    Ok(d)
}

/// Parses a policy: `workbook` or `simple`.
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    match s {
        "workbook" => Ok(Policy::Workbook),
        "simple" => Ok(Policy::Simple),
        _ => Err(format!("`{s}` must be `workbook` or `simple`")),
    }
}

/// Parses a budget: `DOLLARS/day` or `DOLLARS/month` (`5/day`, `$150/month`, `12.50/month`).
pub fn parse_budget(s: &str) -> Result<Budget, String> {
    let accepted = "dollars per day or month, such as 5/day or 150/month";
    let (amount, per) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` must be {accepted}"))?;
    let per = match per.trim() {
        "day" => BudgetPeriod::Day,
        "month" => BudgetPeriod::Month,
        other => return Err(format!("`{other}` must be `day` or `month`")),
    };
    let amount = amount.trim();
    let digits = amount.strip_prefix('$').unwrap_or(amount);
    let (n, decimals) = decimal(digits)
        .ok_or_else(|| format!("`{amount}` is not an amount of dollars; write {accepted}"))?;
    if n == 0 {
        return Err(format!("`{amount}` must be more than zero"));
    }
    Ok(Budget {
        dollars: n as f64 / 10f64.powi(decimals as i32),
        per,
    })
}

fn read<T>(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, SloError> {
    annotations
        .get(key)
        .map(|v| parse(v.trim()).map_err(|why| invalid(key, why)))
        .transpose()
}

/// The Service's objectives from its annotations: `None` when neither an availability nor a
/// latency objective is set. Returns the first problem; [`slo_errors`] returns all.
pub fn slo_of(annotations: &BTreeMap<String, String>) -> Result<Option<Slo>, SloError> {
    let availability = read(annotations, SLO_AVAILABILITY_ANNOTATION, parse_percent)?;
    let latency = read(annotations, SLO_LATENCY_ANNOTATION, parse_latency)?;
    let period = read(annotations, SLO_PERIOD_ANNOTATION, parse_period)?;
    let policy = read(annotations, SLO_POLICY_ANNOTATION, parse_policy)?;
    if availability.is_none() && latency.is_none() {
        return match without_objective(annotations) {
            None => Ok(None),
            Some(e) => Err(e),
        };
    }
    Ok(Some(Slo {
        availability,
        latency,
        period: period.unwrap_or(DEFAULT_SLO_PERIOD),
        policy: policy.unwrap_or_default(),
    }))
}

/// The Service's cost budget from its annotations, if it has one.
pub fn budget_of(annotations: &BTreeMap<String, String>) -> Result<Option<Budget>, SloError> {
    read(annotations, BUDGET_ANNOTATION, parse_budget)
}

/// Every problem of this module's annotations (for validation, which reports them all).
pub fn slo_errors(annotations: &BTreeMap<String, String>) -> Vec<SloError> {
    let mut out: Vec<SloError> = [
        read(annotations, SLO_AVAILABILITY_ANNOTATION, parse_percent).err(),
        read(annotations, SLO_LATENCY_ANNOTATION, parse_latency).err(),
        read(annotations, SLO_PERIOD_ANNOTATION, parse_period).err(),
        read(annotations, SLO_POLICY_ANNOTATION, parse_policy).err(),
        budget_of(annotations).err(),
    ]
    .into_iter()
    .flatten()
    .collect();
    out.extend(without_objective(annotations));
    out
}

/// The error for a period or policy set when no objective is.
fn without_objective(annotations: &BTreeMap<String, String>) -> Option<SloError> {
    if annotations.contains_key(SLO_AVAILABILITY_ANNOTATION)
        || annotations.contains_key(SLO_LATENCY_ANNOTATION)
    {
        return None;
    }
    let set: Vec<&'static str> = [SLO_PERIOD_ANNOTATION, SLO_POLICY_ANNOTATION]
        .into_iter()
        .filter(|k| annotations.contains_key(*k))
        .collect();
    (!set.is_empty()).then_some(SloError::WithoutObjective { annotations: set })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Percents become ratios by one exact division, so 99.9 is the f64 nearest 0.999.
    #[test]
    fn percents_parse_exactly() {
        assert_eq!(parse_percent("99.9"), Ok(0.999));
        assert_eq!(parse_percent("99"), Ok(0.99));
        assert_eq!(parse_percent("99.95"), Ok(0.9995));
        assert_eq!(parse_percent("99.9999"), Ok(0.999999));
        assert_eq!(parse_percent("0.5"), Ok(0.005));
        for (bad, why) in [
            ("0", "out of range"),
            ("100", "out of range"),
            ("100.0", "out of range"),
            ("150", "out of range"),
            ("99.9%", "no % sign"),
            ("", "not a percent"),
            ("-1", "not a percent"),
            ("99.", "not a percent"),
            (".9", "not a percent"),
            ("1e2", "not a percent"),
            ("NaN", "not a percent"),
            ("99.99999", "more than 4 decimals"),
        ] {
            let e = parse_percent(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// A latency objective names a histogram bound and a percent; other thresholds are
    /// refused with the list of bounds.
    #[test]
    fn latency_objectives() {
        let l = parse_latency("300ms@95").expect("parses");
        assert_eq!(l.threshold, Duration::from_millis(300));
        assert_eq!(l.threshold_seconds(), 0.3);
        assert_eq!(l.bucket_index, 10);
        assert_eq!(l.objective, 0.95);
        assert_eq!(parse_latency("1s@99.9").expect("1s").bucket_index, 13);
        assert_eq!(parse_latency("500us@50").expect("500us").bucket_index, 0);
        assert_eq!(parse_latency("2.5ms@90").expect("2.5ms").bucket_index, 2);
        assert_eq!(parse_latency("5m@99").expect("5m").bucket_index, 21);
        assert_eq!(parse_latency("1m0s@99").expect("1m0s").bucket_index, 20);
        assert_eq!(
            parse_latency(" 250ms @ 95 ").expect("250ms").bucket_index,
            9
        );
        for (bad, why) in [
            ("300ms", "DURATION@PERCENT"),
            (
                "301ms@95",
                "use one of 500us, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 200ms, 250ms, 300ms, 500ms, 750ms, 1s, 1.5s, 2s, 2.5s, 5s, 10s, 30s, 1m, 5m",
            ),
            ("0@95", "not a bucket bound"),
            ("300@95", "not a duration"),
            ("300ms@100", "out of range"),
            ("300ms@", "not a percent"),
        ] {
            let e = parse_latency(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Every bucket bound prints as a duration that parses back to itself.
    #[test]
    fn bucket_labels_parse_back() {
        for b in LATENCY_BUCKETS_SECONDS {
            let label = bucket_label(b);
            let d = crate::names::parse_go_duration(&label).expect(&label);
            assert!((d.as_secs_f64() - b).abs() < 1e-12, "{label}");
        }
    }

    /// Periods are whole hours or days from 1h to 90d.
    #[test]
    fn periods() {
        assert_eq!(parse_period("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_period("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_period("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_period("28d"), Ok(Duration::from_secs(28 * 86400)));
        assert_eq!(parse_period("30d"), Ok(DEFAULT_SLO_PERIOD));
        assert_eq!(parse_period("90d"), Ok(MAX_SLO_PERIOD));
        assert_eq!(parse_period("2160h"), Ok(MAX_SLO_PERIOD));
        for (bad, why) in [
            ("0h", "out of range"),
            ("91d", "out of range"),
            ("30m", "not a whole number"),
            ("1.5d", "not a whole number"),
            ("d", "not a whole number"),
            ("+5d", "not a whole number"),
            ("30", "not a whole number"),
            ("", "not a whole number"),
            ("99999999999999999999d", "not a whole number"),
        ] {
            let e = parse_period(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Budgets are positive dollars per day or per month.
    #[test]
    fn budgets() {
        let b = |s| parse_budget(s).expect(s);
        assert_eq!(
            b("5/day"),
            Budget {
                dollars: 5.0,
                per: BudgetPeriod::Day
            }
        );
        assert_eq!(b("150/month").per, BudgetPeriod::Month);
        assert_eq!(b("12.50/month").dollars, 12.5);
        assert_eq!(b("$0.25/day").dollars, 0.25);
        for (bad, why) in [
            ("5", "dollars per day or month"),
            ("5/week", "`day` or `month`"),
            ("0/day", "more than zero"),
            ("0.00/day", "more than zero"),
            ("-5/day", "not an amount"),
            ("five/day", "not an amount"),
            ("1e3/day", "not an amount"),
            ("/day", "not an amount"),
        ] {
            let e = parse_budget(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(budget_of(&ann(&[])), Ok(None));
        assert_eq!(
            budget_of(&ann(&[(BUDGET_ANNOTATION, " 5/day ")])).expect("ok"),
            Some(b("5/day"))
        );
        assert!(budget_of(&ann(&[(BUDGET_ANNOTATION, "5")])).is_err());
    }

    /// Policies are the two names.
    #[test]
    fn policies() {
        assert_eq!(parse_policy("workbook"), Ok(Policy::Workbook));
        assert_eq!(parse_policy("simple"), Ok(Policy::Simple));
        assert!(parse_policy("Workbook").is_err());
        assert_eq!(Policy::Simple.to_string(), "simple");
    }

    /// An SLO needs an objective; period and policy default; alone they are an error naming
    /// them.
    #[test]
    fn slo_from_annotations() {
        assert_eq!(slo_of(&ann(&[])), Ok(None));
        assert_eq!(slo_of(&ann(&[(BUDGET_ANNOTATION, "5/day")])), Ok(None));
        let slo = slo_of(&ann(&[(SLO_AVAILABILITY_ANNOTATION, "99.9")]))
            .expect("ok")
            .expect("some");
        assert_eq!(slo.availability, Some(0.999));
        assert_eq!(slo.latency, None);
        assert_eq!(slo.period, DEFAULT_SLO_PERIOD);
        assert_eq!(slo.policy, Policy::Workbook);
        let slo = slo_of(&ann(&[
            (SLO_LATENCY_ANNOTATION, "300ms@95"),
            (SLO_PERIOD_ANNOTATION, "1h"),
            (SLO_POLICY_ANNOTATION, "simple"),
        ]))
        .expect("ok")
        .expect("some");
        assert_eq!(slo.availability, None);
        assert_eq!(slo.latency.map(|l| l.bucket_index), Some(10));
        assert_eq!(slo.period, MIN_SLO_PERIOD);
        assert_eq!(slo.policy, Policy::Simple);

        let alone = ann(&[(SLO_PERIOD_ANNOTATION, "7d"), (SLO_POLICY_ANNOTATION, "x")]);
        let e = slo_of(&alone).expect_err("bad policy");
        assert_eq!(e.annotations(), vec![SLO_POLICY_ANNOTATION]);
        let errors = slo_errors(&alone);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[1].annotations(),
            vec![SLO_PERIOD_ANNOTATION, SLO_POLICY_ANNOTATION]
        );
        assert!(errors[1].reason().contains("without an objective"));
        let e = slo_of(&ann(&[(SLO_PERIOD_ANNOTATION, "7d")])).expect_err("alone");
        assert_eq!(
            e.to_string(),
            "skiff.dev/slo-period set without an objective"
        );
    }

    /// Validation sees every problem at once, each naming its annotation.
    #[test]
    fn every_problem_is_reported() {
        let bad = ann(&[
            (SLO_AVAILABILITY_ANNOTATION, "100"),
            (SLO_LATENCY_ANNOTATION, "301ms@95"),
            (SLO_PERIOD_ANNOTATION, "30m"),
            (SLO_POLICY_ANNOTATION, "strict"),
            (BUDGET_ANNOTATION, "5/week"),
        ]);
        let keys: Vec<&str> = slo_errors(&bad)
            .iter()
            .flat_map(|e| e.annotations())
            .collect();
        assert_eq!(keys, SERVICE_ANNOTATIONS.to_vec());
        assert!(slo_errors(&ann(&[(SLO_AVAILABILITY_ANNOTATION, "99.9")])).is_empty());
    }
}
