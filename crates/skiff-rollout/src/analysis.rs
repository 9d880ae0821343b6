//! The checks of a step: the canary against the stable revision, on the same step's
//! requests. See the crate's documentation for the statistics.

use std::time::Duration;

use skiff_api::rollout::{Analysis, CheckResult, Figures};

/// p-value under which a look during the step fails the canary.
pub const EARLY_ALPHA: f64 = 0.001;
/// p-value under which the look at the step's end fails it.
pub const FINAL_ALPHA: f64 = 0.05;
/// 5xx a look during the step needs before it can fail the canary.
pub const EARLY_MIN_ERRORS: u64 = 3;
/// A latency regression smaller than this never fails a step (at sub-millisecond
/// latencies a ratio alone is noise).
pub const LATENCY_FLOOR_MS: f64 = 5.0;

/// A check's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Within bounds.
    Passed,
    /// Out of bounds: roll back.
    Failed,
    /// Too few requests to judge.
    Inconclusive,
}

impl Outcome {
    /// `passed`, `failed` or `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

/// The Service's objectives, as the `slo` check needs them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SloTargets {
    /// The availability objective, 0 to 1 (0.999).
    pub availability: Option<f64>,
    /// The latency objective: the threshold and the share that must be within it.
    pub latency: Option<(Duration, f64)>,
}

/// What the checks say of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Each check that ran.
    pub checks: Vec<(String, Outcome, String)>,
}

impl Verdict {
    /// Whether a check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|(_, o, _)| *o == Outcome::Failed)
    }

    /// Whether a check could not judge.
    pub fn inconclusive(&self) -> bool {
        self.checks
            .iter()
            .any(|(_, o, _)| *o == Outcome::Inconclusive)
    }

    /// The failed checks' messages, joined.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|(_, o, _)| *o == Outcome::Failed)
            .map(|(c, _, m)| format!("{c}: {m}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// As stored in a step's result.
    pub fn results(&self) -> Vec<CheckResult> {
        self.checks
            .iter()
            .map(|(c, o, m)| CheckResult {
                check: c.clone(),
                outcome: o.as_str().to_owned(),
                message: m.clone(),
            })
            .collect()
    }
}

/// Kullback–Leibler divergence of Bernoulli(q) from Bernoulli(p), for q > p.
fn kl(q: f64, p: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(q, p) + term(1.0 - q, 1.0 - p)
}

/// An upper bound of P(X ≥ k) for X ~ Binomial(n, t) (Chernoff): 1 when k/n ≤ t.
pub fn tail_bound(k: u64, n: u64, t: f64) -> f64 {
    if n == 0 || k == 0 {
        return 1.0;
    }
    let q = k as f64 / n as f64;
    if q <= t || t >= 1.0 {
        return 1.0;
    }
    if t <= 0.0 {
        return 0.0;
    }
    (-(n as f64) * kl(q, t)).exp()
}

/// Whether `bad` of `n` is significantly above rate `t`: at the step's end (`last`) with
/// at least `min` requests and p < [`FINAL_ALPHA`], during it with [`EARLY_MIN_ERRORS`]
/// and p < [`EARLY_ALPHA`].
fn significant(bad: u64, n: u64, t: f64, min: u64, last: bool) -> Option<bool> {
    if last {
        (n >= min.max(1)).then(|| tail_bound(bad, n, t) < FINAL_ALPHA)
    } else {
        Some(bad >= EARLY_MIN_ERRORS && tail_bound(bad, n, t) < EARLY_ALPHA)
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn share(bad: u64, n: u64) -> String {
    let r = if n == 0 { 0.0 } else { bad as f64 / n as f64 };
    format!("{} ({bad} of {n})", pct(r))
}

/// Runs the checks of `analysis` over a step's figures. `last`: the step's time is up (the
/// final look); before that only plain failures count, and nothing passes.
pub fn analyse(
    analysis: &Analysis,
    slo: &SloTargets,
    canary: &Figures,
    stable: &Figures,
    min_requests: u64,
    last: bool,
) -> Verdict {
    let mut checks = Vec::new();
    let min = min_requests.max(1);
    if let Some(points) = analysis.errors {
        let base = if stable.requests >= min {
            stable.error_rate()
        } else {
            0.0
        };
        let allowed = (base + points / 100.0).min(1.0);
        let outcome = match significant(canary.errors, canary.requests, allowed, min, last) {
            Some(true) => Outcome::Failed,
            Some(false) => Outcome::Passed,
            None => Outcome::Inconclusive,
        };
        let stable_said = if stable.requests >= min {
            format!("stable {}", share(stable.errors, stable.requests))
        } else {
            format!(
                "stable {} (too few to compare: against 0%)",
                share(stable.errors, stable.requests)
            )
        };
        checks.push((
            "errors".to_owned(),
            outcome,
            format!(
                "5xx {} vs {stable_said}; allowed up to {}",
                share(canary.errors, canary.requests),
                pct(allowed)
            ),
        ));
    }
    if let Some(ratio) = analysis.latency
        && last
    {
        let checked = match (canary.p95_ms, stable.p95_ms) {
            _ if canary.requests < min => Some((
                Outcome::Inconclusive,
                format!(
                    "too few new requests to compare p95: {} (needs {min})",
                    canary.requests
                ),
            )),
            (Some(c), Some(s)) if stable.requests >= min => {
                let over = c > ratio * s && c - s > LATENCY_FLOOR_MS;
                let times = if s > 0.0 { c / s } else { f64::INFINITY };
                Some((
                    if over {
                        Outcome::Failed
                    } else {
                        Outcome::Passed
                    },
                    format!("p95 {c:.1} ms vs stable {s:.1} ms ({times:.1}×); allowed {ratio}×"),
                ))
            }
            // Nothing to compare with: the stable revision had too few requests.
            _ => None,
        };
        if let Some((outcome, message)) = checked {
            checks.push(("latency".to_owned(), outcome, message));
        }
    }
    if let Some(burn) = analysis.slo {
        if let Some(a) = slo.availability {
            let allowed = ((1.0 - a) * burn).min(1.0);
            let outcome = match significant(canary.errors, canary.requests, allowed, min, last) {
                Some(true) => Outcome::Failed,
                Some(false) => Outcome::Passed,
                None => Outcome::Inconclusive,
            };
            checks.push((
                "slo".to_owned(),
                outcome,
                format!(
                    "availability: 5xx {} vs {} allowed ({burn}× the budget of a {} objective)",
                    share(canary.errors, canary.requests),
                    pct(allowed),
                    pct(a)
                ),
            ));
        }
        if let (Some((threshold, objective)), Some(slow)) = (slo.latency, canary.slow) {
            let allowed = ((1.0 - objective) * burn).min(1.0);
            let outcome = match significant(slow, canary.requests, allowed, min, last) {
                Some(true) => Outcome::Failed,
                Some(false) => Outcome::Passed,
                None => Outcome::Inconclusive,
            };
            checks.push((
                "slo".to_owned(),
                outcome,
                format!(
                    "latency: {} slower than {} ms vs {} allowed ({burn}× the budget of {} within it)",
                    share(slow, canary.requests),
                    threshold.as_millis(),
                    pct(allowed),
                    pct(objective)
                ),
            ));
        }
    }
    if !last {
        // During the step only failures count.
        checks.retain(|(_, o, _)| *o == Outcome::Failed);
    }
    Verdict { checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(requests: u64, errors: u64, p95_ms: f64) -> Figures {
        Figures {
            requests,
            errors,
            p95_ms: Some(p95_ms),
            slow: None,
        }
    }

    #[test]
    fn the_tail_bound_is_an_upper_bound_of_the_exact_tail() {
        // P(X ≥ 3 | n = 10, p = 0.01) = 1.14e-4 exactly.
        let b = tail_bound(3, 10, 0.01);
        assert!((1.14e-4..1e-3).contains(&b), "{b}");
        assert_eq!(tail_bound(0, 10, 0.01), 1.0);
        assert_eq!(tail_bound(1, 100, 0.05), 1.0);
        assert_eq!(tail_bound(1, 10, 0.0), 0.0);
        assert_eq!(tail_bound(5, 5, 1.0), 1.0);
    }

    /// A third of the canary's requests failing is caught within its first few requests,
    /// before the step ends.
    #[test]
    fn a_bad_canary_fails_early() {
        let a = Analysis::DEFAULT;
        let stable = figures(300, 0, 10.0);
        let v = analyse(
            &a,
            &SloTargets::default(),
            &figures(9, 3, 10.0),
            &stable,
            20,
            false,
        );
        assert!(v.failed(), "{v:?}");
        assert!(
            v.failures().contains("5xx 33.3% (3 of 9)"),
            "{}",
            v.failures()
        );
        // Two 5xx are not enough during the step, however few the requests.
        let v = analyse(
            &a,
            &SloTargets::default(),
            &figures(2, 2, 10.0),
            &stable,
            20,
            false,
        );
        assert!(!v.failed());
        assert!(v.checks.is_empty(), "nothing passes before the step's end");
    }

    /// One 5xx in 20 over a stable baseline of 0.5% is luck, not a regression.
    #[test]
    fn one_unlucky_error_does_not_fail_a_good_canary() {
        let a = Analysis::DEFAULT;
        let stable = figures(2000, 10, 10.0);
        let v = analyse(
            &a,
            &SloTargets::default(),
            &figures(20, 1, 10.5),
            &stable,
            20,
            true,
        );
        assert!(!v.failed(), "{v:?}");
        assert!(!v.inconclusive());
        // A steady 5% over a 0.5% baseline, over enough requests, is one.
        let v = analyse(
            &a,
            &SloTargets::default(),
            &figures(400, 20, 10.5),
            &stable,
            20,
            true,
        );
        assert!(v.failed(), "{v:?}");
    }

    #[test]
    fn latency_fails_over_the_ratio_and_the_floor() {
        let a = Analysis::DEFAULT;
        let slo = SloTargets::default();
        let v = analyse(
            &a,
            &slo,
            &figures(50, 0, 61.0),
            &figures(900, 0, 20.0),
            20,
            true,
        );
        assert!(v.failed());
        assert!(
            v.failures()
                .contains("p95 61.0 ms vs stable 20.0 ms (3.0×)"),
            "{}",
            v.failures()
        );
        // 1.5× of a sub-millisecond p95 is under the floor.
        let v = analyse(
            &a,
            &slo,
            &figures(50, 0, 0.9),
            &figures(900, 0, 0.4),
            20,
            true,
        );
        assert!(!v.failed());
        // Not judged during the step; not at all without enough stable requests to compare
        // with (nothing to wait for); inconclusive with too few new ones.
        let v = analyse(
            &a,
            &slo,
            &figures(50, 0, 61.0),
            &figures(900, 0, 20.0),
            20,
            false,
        );
        assert!(!v.failed());
        let v = analyse(
            &a,
            &slo,
            &figures(50, 0, 61.0),
            &figures(5, 0, 20.0),
            20,
            true,
        );
        assert!(!v.failed() && !v.inconclusive());
        assert!(v.checks.iter().all(|(c, _, _)| c != "latency"));
        let v = analyse(
            &a,
            &slo,
            &figures(5, 0, 61.0),
            &figures(900, 0, 20.0),
            20,
            true,
        );
        assert!(v.inconclusive());
    }

    #[test]
    fn a_step_with_too_few_requests_is_inconclusive() {
        let v = analyse(
            &Analysis::DEFAULT,
            &SloTargets::default(),
            &figures(4, 0, 10.0),
            &figures(500, 0, 10.0),
            20,
            true,
        );
        assert!(v.inconclusive() && !v.failed());
    }

    #[test]
    fn the_slo_check_uses_the_budget() {
        let a = Analysis {
            errors: None,
            latency: None,
            slo: Some(14.4),
        };
        let slo = SloTargets {
            availability: Some(0.99),
            latency: Some((Duration::from_millis(100), 0.95)),
        };
        // 99% allows 1% 5xx; 14.4× that is 14.4%: 30% fails, 5% does not.
        let v = analyse(
            &a,
            &slo,
            &figures(100, 30, 1.0),
            &figures(0, 0, 1.0),
            20,
            true,
        );
        assert!(v.failed(), "{v:?}");
        let mut ok = figures(100, 5, 1.0);
        ok.slow = Some(10);
        let v = analyse(&a, &slo, &ok, &figures(0, 0, 1.0), 20, true);
        assert!(!v.failed(), "{v:?}");
        assert_eq!(v.checks.len(), 2);
        // Without objectives the check has nothing to say.
        let v = analyse(
            &a,
            &SloTargets::default(),
            &ok,
            &figures(0, 0, 1.0),
            20,
            true,
        );
        assert!(v.checks.is_empty());
    }
}
