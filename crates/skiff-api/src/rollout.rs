//! Progressive rollouts: the policy a revision template asks for, and the rollout's state as
//! a Service's status shows it.
//!
//! | annotation (on `spec.template.metadata`) | example | meaning |
//! |---|---|---|
//! | `skiff.dev/rollout` | `"5,25,50,100"` | percent of the latest-revision traffic at each step; `off` turns a daemon default off |
//! | `skiff.dev/rollout-step` | `"30s"` | time at each step (default 30s) |
//! | `skiff.dev/rollout-analysis` | `"errors,latency:2x"` | checks run at every step (default `errors,latency,slo`; `none`: a timed ramp) |
//! | `skiff.dev/rollout-min-requests` | `"20"` | canary requests a step needs before it can pass (default 20) |
//!
//! Knative's `serving.knative.dev/rollout-duration` on the Service's `metadata.annotations` is
//! honoured as Knative means it: a timed ramp without analysis (ten steps of 10%).
//!
//! Pure: parsing and types only; `skiff-rollout` decides, `skiff-control` acts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The steps.
pub const ROLLOUT_ANNOTATION: &str = "skiff.dev/rollout";
/// The time at each step.
pub const ROLLOUT_STEP_ANNOTATION: &str = "skiff.dev/rollout-step";
/// The checks.
pub const ROLLOUT_ANALYSIS_ANNOTATION: &str = "skiff.dev/rollout-analysis";
/// The canary requests a step needs.
pub const ROLLOUT_MIN_REQUESTS_ANNOTATION: &str = "skiff.dev/rollout-min-requests";
/// Knative's timed ramp (on the Service's metadata).
pub const KNATIVE_ROLLOUT_DURATION_ANNOTATION: &str = "serving.knative.dev/rollout-duration";

/// The template annotations of this module.
pub const TEMPLATE_ANNOTATIONS: [&str; 4] = [
    ROLLOUT_ANNOTATION,
    ROLLOUT_STEP_ANNOTATION,
    ROLLOUT_ANALYSIS_ANNOTATION,
    ROLLOUT_MIN_REQUESTS_ANNOTATION,
];

/// Time at each step when `skiff.dev/rollout-step` is not set.
pub const DEFAULT_STEP: Duration = Duration::from_secs(30);
/// The longest step.
pub const MAX_STEP: Duration = Duration::from_secs(24 * 3600);
/// Canary requests a step needs when `skiff.dev/rollout-min-requests` is not set.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// The default error check: the canary's 5xx share may exceed the stable's by this many
/// percentage points.
pub const DEFAULT_ERROR_POINTS: f64 = 1.0;
/// The default latency check: the canary's p95 may be this many times the stable's.
pub const DEFAULT_LATENCY_RATIO: f64 = 1.5;
/// The default SLO check: the canary may burn the error budget this fast (the SRE
/// Workbook's fast-burn page factor).
pub const DEFAULT_SLO_BURN: f64 = 14.4;
/// The longest Knative rollout duration accepted.
pub const MAX_ROLLOUT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Steps of a Knative timed ramp.
const KNATIVE_STEPS: [u32; 10] = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];

/// What the analysis checks at every step.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// The canary's 5xx share may exceed the stable's by at most this many points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<f64>,
    /// The canary's p95 latency may be at most this many times the stable's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<f64>,
    /// The canary may burn the Service's SLO error budgets at most this fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<f64>,
}

impl Analysis {
    /// `errors,latency,slo` at their defaults.
    pub const DEFAULT: Analysis = Analysis {
        errors: Some(DEFAULT_ERROR_POINTS),
        latency: Some(DEFAULT_LATENCY_RATIO),
        slo: Some(DEFAULT_SLO_BURN),
    };

    /// No check: a timed ramp.
    pub fn is_none(&self) -> bool {
        self.errors.is_none() && self.latency.is_none() && self.slo.is_none()
    }
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = self.errors {
            parts.push(format!("errors:{p}"));
        }
        if let Some(r) = self.latency {
            parts.push(format!("latency:{r}x"));
        }
        if let Some(b) = self.slo {
            parts.push(format!("slo:{b}x"));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl std::str::FromStr for Analysis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" {
            return Ok(Analysis::default());
        }
        if s.is_empty() {
            return Err("is empty: name checks (errors, latency, slo) or `none`".into());
        }
        let mut a = Analysis::default();
        for item in s.split(',').map(str::trim) {
            let (name, value) = match item.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let number = |v: &str, suffix: char| -> Result<f64, String> {
                let digits = v.strip_suffix(suffix).unwrap_or(v);
                digits
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("`{item}`: `{v}` is not a number"))
            };
            let slot = match name {
                "errors" => &mut a.errors,
                "latency" => &mut a.latency,
                "slo" => &mut a.slo,
                "none" => return Err("`none` cannot be combined with checks".into()),
                other => {
                    return Err(format!(
                        "unknown check `{other}` (known: errors, latency, slo, or none)"
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!("check `{name}` is named twice"));
            }
            let value = match (name, value) {
                ("errors", None) => DEFAULT_ERROR_POINTS,
                ("errors", Some(v)) => {
                    let p = number(v, '%')?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!(
                            "`{item}`: the allowed excess is 0 to 100 percentage points"
                        ));
                    }
                    p
                }
                ("latency", None) => DEFAULT_LATENCY_RATIO,
                ("slo", None) => DEFAULT_SLO_BURN,
                (_, Some(v)) => {
                    let r = number(v, 'x')?;
                    if !(r > 1.0 && r <= 1000.0) {
                        return Err(format!(
                            "`{item}`: the factor must be over 1 and at most 1000 (like 1.5x)"
                        ));
                    }
                    r
                }
                (_, None) => unreachable!("every check name is matched above"),
            };
            *slot = Some(value);
        }
        Ok(a)
    }
}

/// A rollout policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Percent of the latest-revision traffic at each step, increasing, the last 100.
    pub steps: Vec<u32>,
    /// Time at each step, in milliseconds.
    pub step_millis: u64,
    /// The checks.
    pub analysis: Analysis,
    /// Canary requests a step needs before it can pass.
    pub min_requests: u64,
    /// Where the policy comes from: `annotation`, `knative` (rollout-duration) or `default`
    /// (the daemon's).
    pub source: String,
}

impl RolloutPolicy {
    /// Time at each step.
    pub fn step(&self) -> Duration {
        Duration::from_millis(self.step_millis)
    }

    /// Knative's timed ramp over `duration`.
    pub fn knative(duration: Duration) -> RolloutPolicy {
        RolloutPolicy {
            steps: KNATIVE_STEPS.to_vec(),
            step_millis: (duration.as_millis() as u64 / KNATIVE_STEPS.len() as u64).max(1000),
            analysis: Analysis::default(),
            min_requests: 0,
            source: "knative".into(),
        }
    }
}

/// What a revision asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyChoice {
    /// Nothing: the daemon's default applies.
    Unset,
    /// `skiff.dev/rollout: off`: traffic moves at once.
    Off,
    /// A policy.
    On(RolloutPolicy),
}

/// A rollout annotation that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutError {
    /// The annotation.
    pub annotation: &'static str,
    /// Why.
    pub reason: String,
}

/// Parses `skiff.dev/rollout` steps.
pub fn parse_steps(v: &str) -> Result<Vec<u32>, String> {
    let mut steps = Vec::new();
    for part in v.split(',').map(str::trim) {
        let p = part
            .strip_suffix('%')
            .unwrap_or(part)
            .parse::<u32>()
            .map_err(|_| format!("`{part}` is not a whole percent (like 5,25,50,100)"))?;
        if p == 0 || p > 100 {
            return Err(format!(
                "step {p} is out of range: steps are 1 to 100 percent"
            ));
        }
        if let Some(last) = steps.last()
            && p <= *last
        {
            return Err(format!(
                "steps must increase: {p} comes after {last} (like 5,25,50,100)"
            ));
        }
        steps.push(p);
    }
    if steps.last() != Some(&100) {
        return Err(
            "the last step must be 100: a rollout ends with all of the latest \
                    revision's traffic on the new revision"
                .into(),
        );
    }
    Ok(steps)
}

/// Parses a step duration (`skiff.dev/rollout-step`).
pub fn parse_step(v: &str) -> Result<Duration, String> {
    let d = crate::names::parse_go_duration(v.trim())?;
    if d < Duration::from_secs(1) || d > MAX_STEP {
        return Err(format!("`{v}` is out of range: a step lasts 1s to 24h"));
    }
    Ok(d)
}

/// Parses `skiff.dev/rollout-min-requests`.
pub fn parse_min_requests(v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .ok_or_else(|| format!("`{v}` is not a whole number from 1 to 1000000"))
}

/// The policy a revision's template annotations ask for; `service` annotations carry
/// Knative's rollout-duration. Every bad annotation is reported.
pub fn policy_of(
    template: &BTreeMap<String, String>,
    service: &BTreeMap<String, String>,
) -> Result<PolicyChoice, Vec<RolloutError>> {
    let mut errors = Vec::new();
    let mut err =
        |annotation: &'static str, reason: String| errors.push(RolloutError { annotation, reason });
    let steps = template.get(ROLLOUT_ANNOTATION).map(|v| v.trim());
    let step = template.get(ROLLOUT_STEP_ANNOTATION);
    let analysis = template.get(ROLLOUT_ANALYSIS_ANNOTATION);
    let min = template.get(ROLLOUT_MIN_REQUESTS_ANNOTATION);
    let step = step.and_then(|v| {
        parse_step(v)
            .map_err(|e| err(ROLLOUT_STEP_ANNOTATION, e))
            .ok()
    });
    let analysis = analysis.and_then(|v| {
        v.parse::<Analysis>()
            .map_err(|e| err(ROLLOUT_ANALYSIS_ANNOTATION, e))
            .ok()
    });
    let min = min.and_then(|v| {
        parse_min_requests(v)
            .map_err(|e| err(ROLLOUT_MIN_REQUESTS_ANNOTATION, e))
            .ok()
    });
    let knative = service
        .get(KNATIVE_ROLLOUT_DURATION_ANNOTATION)
        .and_then(|v| {
            let d = crate::names::parse_go_duration(v.trim())
                .map_err(|e| err(KNATIVE_ROLLOUT_DURATION_ANNOTATION, e))
                .ok()?;
            if d > MAX_ROLLOUT_DURATION {
                err(
                    KNATIVE_ROLLOUT_DURATION_ANNOTATION,
                    format!("`{v}` is out of range (at most 24h)"),
                );
                return None;
            }
            Some(d)
        });
    let choice = match steps {
        Some("off") => PolicyChoice::Off,
        Some(v) => match parse_steps(v) {
            Ok(steps) => PolicyChoice::On(RolloutPolicy {
                steps,
                step_millis: step.unwrap_or(DEFAULT_STEP).as_millis() as u64,
                analysis: analysis.unwrap_or(Analysis::DEFAULT),
                min_requests: min.unwrap_or(DEFAULT_MIN_REQUESTS),
                source: "annotation".into(),
            }),
            Err(e) => {
                err(ROLLOUT_ANNOTATION, e);
                PolicyChoice::Unset
            }
        },
        None => {
            for (k, set) in [
                (
                    ROLLOUT_STEP_ANNOTATION,
                    template.contains_key(ROLLOUT_STEP_ANNOTATION),
                ),
                (
                    ROLLOUT_ANALYSIS_ANNOTATION,
                    template.contains_key(ROLLOUT_ANALYSIS_ANNOTATION),
                ),
                (
                    ROLLOUT_MIN_REQUESTS_ANNOTATION,
                    template.contains_key(ROLLOUT_MIN_REQUESTS_ANNOTATION),
                ),
            ] {
                if set {
                    err(
                        k,
                        format!(
                            "needs `{ROLLOUT_ANNOTATION}` (the steps, like \"5,25,50,100\") beside it"
                        ),
                    );
                }
            }
            match knative {
                Some(d) if !d.is_zero() => PolicyChoice::On(RolloutPolicy::knative(d)),
                _ => PolicyChoice::Unset,
            }
        }
    };
    if errors.is_empty() {
        Ok(choice)
    } else {
        Err(errors)
    }
}

/// The policy that governs a revision: its own, else the daemon's `default`.
pub fn effective_policy(
    template: &BTreeMap<String, String>,
    service: &BTreeMap<String, String>,
    default: Option<&RolloutPolicy>,
) -> Option<RolloutPolicy> {
    // Validation refused bad values; one that no longer parses counts as unset.
    match policy_of(template, service).unwrap_or(PolicyChoice::Unset) {
        PolicyChoice::On(p) => Some(p),
        PolicyChoice::Off => None,
        PolicyChoice::Unset => default.cloned(),
    }
}

/// A rollout as a Service's status shows it (`status.rollout`, skiff's own).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision the latest-revision traffic goes to outside a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// A revision that is not rolled out again by itself (rolled back, aborted, or rolled
    /// back from): a newer one, or `skiff rollout resume`, moves on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_revision: Option<String>,
    /// The rollout in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<RolloutProgress>,
    /// Ended rollouts, newest first (at most [`HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RolloutRecord>,
}

/// Ended rollouts kept in a Service's status.
pub const HISTORY: usize = 10;

/// A rollout in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// The new revision.
    pub revision: String,
    /// The stable revision it replaces.
    pub from: String,
    /// The policy it follows (the new revision's).
    pub policy: RolloutPolicy,
    /// The step it is on (0-based).
    pub step: usize,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When the step started, or restarted after a daemon restart or a resume (RFC 3339,
    /// milliseconds).
    pub step_started_at: String,
    /// Paused: it stays at this step (the analysis still runs and can roll it back).
    #[serde(default)]
    pub paused: bool,
    /// The steps done, with their analysis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepResult>,
}

impl RolloutProgress {
    /// The percent of the latest-revision traffic the new revision gets now.
    pub fn percent(&self) -> u32 {
        self.policy.steps.get(self.step).copied().unwrap_or(100)
    }
}

/// What a request window showed of one revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Requests answered.
    pub requests: u64,
    /// Answered 5xx.
    pub errors: u64,
    /// The 95th percentile of their durations, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    /// Slower than the Service's latency objective, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<u64>,
}

impl Figures {
    /// The 5xx share, 0 to 1 (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// One check of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// `errors`, `latency` or `slo`.
    pub check: String,
    /// `passed`, `failed` or `inconclusive`.
    pub outcome: String,
    /// The figures compared, for people.
    pub message: String,
}

/// One step, once it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    /// The new revision's percent.
    pub percent: u32,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub ended_at: String,
    /// `passed`, `failed`, `inconclusive` (too few requests to judge), `promoted` or
    /// `aborted`.
    pub verdict: String,
    /// The new revision's requests in the step.
    pub canary: Figures,
    /// The stable revision's.
    pub stable: Figures,
    /// Each check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
}

/// An ended rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// The new revision.
    pub revision: String,
    /// The stable revision it replaced (or was to).
    pub from: String,
    /// `succeeded`, `promoted`, `rolled_back`, `aborted` or `superseded`.
    pub outcome: String,
    /// Why, for people.
    pub message: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub ended_at: String,
    /// Its steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepResult>,
}

/// The figures of the step a rollout is on, so far (stored only when the step ends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveStep {
    /// The new revision's requests in the step so far.
    pub canary: Figures,
    /// The stable revision's.
    pub stable: Figures,
}

/// A Service's rollout, as `GET …/services/{name}/rollout` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutReport {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The latest revision stamped from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision: Option<String>,
    /// The latest ready revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision: Option<String>,
    /// The policy of the latest ready revision (none: its traffic moves at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RolloutPolicy>,
    /// The rollout state (none: no policy applies and no rollback was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The step in progress so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveStep>,
    /// The Service's `RolledOut` condition: reason and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<crate::object::Condition>,
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

    #[test]
    fn steps_parse_and_bad_ones_say_why() {
        assert_eq!(parse_steps("5,25,50,100"), Ok(vec![5, 25, 50, 100]));
        assert_eq!(parse_steps("10%, 100%"), Ok(vec![10, 100]));
        assert_eq!(parse_steps("100"), Ok(vec![100]));
        for (bad, says) in [
            ("5,50,25,100", "must increase"),
            ("5,5,100", "must increase"),
            ("5,150", "out of range"),
            ("0,100", "out of range"),
            ("5,50", "last step must be 100"),
            ("five", "not a whole percent"),
            ("", "not a whole percent"),
        ] {
            let e = parse_steps(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn analysis_parses_with_defaults_and_thresholds() {
        assert_eq!(
            "errors,latency,slo".parse::<Analysis>(),
            Ok(Analysis::DEFAULT)
        );
        let a: Analysis = "errors:2%, latency:3x".parse().expect("valid");
        assert_eq!(a.errors, Some(2.0));
        assert_eq!(a.latency, Some(3.0));
        assert_eq!(a.slo, None);
        assert!("none".parse::<Analysis>().expect("valid").is_none());
        for (bad, says) in [
            ("errors,p99", "unknown check `p99`"),
            ("latency:1x", "over 1"),
            ("latency:fast", "not a number"),
            ("errors,errors", "twice"),
            ("errors:200", "0 to 100"),
            ("none,errors", "cannot be combined"),
            ("", "empty"),
        ] {
            let e = bad.parse::<Analysis>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Shown as it parses back.
        let shown = a.to_string();
        assert_eq!(shown.parse::<Analysis>(), Ok(a));
    }

    #[test]
    fn policies_from_annotations() {
        let none = BTreeMap::new();
        assert_eq!(policy_of(&none, &none), Ok(PolicyChoice::Unset));
        assert_eq!(
            policy_of(&ann(&[(ROLLOUT_ANNOTATION, "off")]), &none),
            Ok(PolicyChoice::Off)
        );
        let Ok(PolicyChoice::On(p)) = policy_of(
            &ann(&[
                (ROLLOUT_ANNOTATION, "5,50,100"),
                (ROLLOUT_STEP_ANNOTATION, "2s"),
            ]),
            &none,
        ) else {
            panic!("a policy")
        };
        assert_eq!(p.steps, vec![5, 50, 100]);
        assert_eq!(p.step(), Duration::from_secs(2));
        assert_eq!(p.analysis, Analysis::DEFAULT);
        assert_eq!(p.min_requests, DEFAULT_MIN_REQUESTS);
        // Knative's timed ramp.
        let Ok(PolicyChoice::On(k)) = policy_of(
            &none,
            &ann(&[(KNATIVE_ROLLOUT_DURATION_ANNOTATION, "100s")]),
        ) else {
            panic!("a ramp")
        };
        assert_eq!(k.steps.len(), 10);
        assert_eq!(k.step(), Duration::from_secs(10));
        assert!(k.analysis.is_none());
        // Every bad annotation is reported, each by name.
        let errs = policy_of(
            &ann(&[
                (ROLLOUT_ANNOTATION, "50,5"),
                (ROLLOUT_STEP_ANNOTATION, "0s"),
                (ROLLOUT_ANALYSIS_ANNOTATION, "errors,p99"),
                (ROLLOUT_MIN_REQUESTS_ANNOTATION, "0"),
            ]),
            &none,
        )
        .expect_err("bad");
        let named: Vec<&str> = errs.iter().map(|e| e.annotation).collect();
        assert_eq!(
            named,
            vec![
                ROLLOUT_STEP_ANNOTATION,
                ROLLOUT_ANALYSIS_ANNOTATION,
                ROLLOUT_MIN_REQUESTS_ANNOTATION,
                ROLLOUT_ANNOTATION
            ]
        );
        // Settings without steps are refused rather than ignored.
        let errs = policy_of(&ann(&[(ROLLOUT_STEP_ANNOTATION, "10s")]), &none).expect_err("bad");
        assert!(errs[0].reason.contains("needs `skiff.dev/rollout`"));
    }
}
