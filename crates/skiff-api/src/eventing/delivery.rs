//! Knative's duck/v1 `DeliverySpec`: retries, backoff and the dead-letter sink of a Broker or
//! Trigger, with its ISO 8601 durations read by jiff.
//!
//! # Durations
//! Knative reads `backoffDelay`, `timeout` and `retryAfterMax` as ISO 8601 periods. skiff
//! accepts days (as 24 hours each), hours, minutes and seconds, with a fraction on the last
//! unit (`PT0.5S`), and refuses years, months and weeks: a delay that depends on the calendar
//! is never what a retry means, and `P1W` is better written `P7D`. Negative durations are
//! refused; zero is allowed except for `timeout` (Knative refuses a zero timeout).

use std::time::Duration;

use jiff::SpanRelativeTo;
use jiff::fmt::temporal::SpanParser;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::destination::{Destination, SinkRef, check_destination, default_namespace};
use crate::problems::{FieldPath, Problems};

/// How long to wait between retries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BackoffPolicy {
    /// `backoffDelay × n` before the n-th retry.
    Linear,
    /// `backoffDelay × 2^n` before the n-th retry (Knative's default).
    #[default]
    Exponential,
}

impl BackoffPolicy {
    /// `linear` or `exponential`, as written in `backoffPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackoffPolicy::Linear => "linear",
            BackoffPolicy::Exponential => "exponential",
        }
    }
}

/// How events are delivered, as a user writes it (Knative duck/v1 `DeliverySpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Where an event goes once its retries are spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
    /// How many times a failed delivery is retried (at least 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i64>,
    /// `linear` or `exponential` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<String>,
    /// The base delay between retries, an ISO 8601 duration such as `PT0.5S`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    /// How long one delivery attempt may take, an ISO 8601 duration above zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The longest `Retry-After` honoured on a 429 or 503, an ISO 8601 duration (`PT0S`
    /// ignores the header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
    /// `binary` (the default): skiff sends binary-mode CloudEvents; `json` is not supported
    /// yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A checked delivery spec with its durations parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Retries after the first attempt; `None` when unset (Knative then does not retry).
    pub retry: Option<u32>,
    /// How the delay grows.
    pub backoff_policy: BackoffPolicy,
    /// The base delay between retries.
    pub backoff_delay: Option<Duration>,
    /// Where events go once their retries are spent.
    pub dead_letter: Option<SinkRef>,
    /// How long one attempt may take.
    pub timeout: Option<Duration>,
    /// The longest `Retry-After` honoured.
    pub retry_after_max: Option<Duration>,
}

/// Parses an ISO 8601 duration (`PT0.5S`, `PT1M30S`, `P1DT2H`) with jiff. Days count as 24
/// hours; years, months and weeks are refused, and so are negative durations.
pub fn parse_iso8601_duration(input: &str) -> Result<Duration, String> {
    static PARSER: SpanParser = SpanParser::new();
    let span = PARSER.parse_span(input).map_err(|_| {
        format!("`{input}` is not an ISO 8601 duration (examples: PT0.5S, PT10S, PT1M30S)")
    })?;
    if span.is_negative() {
        return Err(format!("`{input}` is negative"));
    }
    if span.get_years() != 0 || span.get_months() != 0 || span.get_weeks() != 0 {
        return Err(format!(
            "`{input}` uses years, months or weeks; write days (24 hours each), hours, minutes \
             or seconds, such as P7D or PT36H"
        ));
    }
    let signed = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("`{input}` is too long"))?;
    Duration::try_from(signed).map_err(|_| format!("`{input}` is negative"))
}

/// Reads the ISO 8601 duration at `path`, recording a problem when it is not one.
fn duration_at(value: Option<&str>, path: FieldPath, p: &mut Problems) -> Option<Duration> {
    match parse_iso8601_duration(value?) {
        Ok(d) => Some(d),
        Err(e) => {
            p.invalid(&path, e);
            None
        }
    }
}

/// Checks the delivery spec at `at` of an object in `namespace`.
pub(crate) fn check_delivery(
    d: &DeliverySpec,
    at: &FieldPath,
    namespace: &str,
    p: &mut Problems,
) -> Delivery {
    let retry = d.retry.and_then(|r| match u32::try_from(r) {
        Ok(r) => Some(r),
        Err(_) => {
            let why = if r < 0 {
                format!("{r} is negative; write 0 or more")
            } else {
                format!("{r} is too large")
            };
            p.invalid(&at.key("retry"), why);
            None
        }
    });
    let backoff_policy = match d.backoff_policy.as_deref() {
        None | Some("exponential") => BackoffPolicy::Exponential,
        Some("linear") => BackoffPolicy::Linear,
        Some(other) => {
            p.invalid(
                &at.key("backoffPolicy"),
                format!("`{other}` must be `linear` or `exponential`"),
            );
            BackoffPolicy::default()
        }
    };
    let backoff_delay = duration_at(d.backoff_delay.as_deref(), at.key("backoffDelay"), p);
    let timeout = duration_at(d.timeout.as_deref(), at.key("timeout"), p);
    if timeout.is_some_and(|t| t.is_zero()) {
        p.invalid(&at.key("timeout"), "must be more than zero");
    }
    let retry_after_max = duration_at(d.retry_after_max.as_deref(), at.key("retryAfterMax"), p);
    match d.format.as_deref() {
        None | Some("binary") => {}
        Some("json") => p.not_supported(
            &at.key("format"),
            "structured (`json`) delivery; skiff sends binary-mode CloudEvents: leave \
             `format` out or write `binary`",
        ),
        Some(other) => p.invalid(
            &at.key("format"),
            format!("`{other}` must be `binary` or `json`"),
        ),
    }
    let dead_letter = d
        .dead_letter_sink
        .as_ref()
        .and_then(|dls| check_destination(Some(dls), &at.key("deadLetterSink"), namespace, p));
    Delivery {
        retry,
        backoff_policy,
        backoff_delay,
        dead_letter,
        timeout,
        retry_after_max,
    }
}

/// The delivery spec as stored: the dead-letter sink's namespace filled in.
pub(crate) fn defaulted(d: &DeliverySpec, namespace: &str) -> DeliverySpec {
    let mut d = d.clone();
    default_namespace(&mut d.dead_letter_sink, namespace);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventing::SinkKind;

    fn check(v: serde_json::Value) -> (Delivery, Vec<(String, String)>) {
        let d: DeliverySpec = serde_json::from_value(v).expect("shape");
        let mut p = Problems::new();
        let out = check_delivery(&d, &FieldPath::parse("spec.delivery"), "default", &mut p);
        let list = p
            .iter()
            .map(|(path, _, msg)| (path.to_string(), msg.to_owned()))
            .collect();
        (out, list)
    }

    /// ISO 8601 durations: fractions, days as 24 h, zero; calendar units, negatives and
    /// friendly forms refused.
    #[test]
    fn iso8601_durations() {
        assert_eq!(
            parse_iso8601_duration("PT0.5S"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_iso8601_duration("PT0.2S"),
            Ok(Duration::from_millis(200))
        );
        assert_eq!(
            parse_iso8601_duration("PT1M30S"),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            parse_iso8601_duration("P1DT1H"),
            Ok(Duration::from_secs(25 * 3600))
        );
        assert_eq!(parse_iso8601_duration("PT0S"), Ok(Duration::ZERO));
        for bad in [
            "P1Y", "P1M", "P1W", "-PT1S", "1s", "1 second", "PT", "", "10",
        ] {
            assert!(parse_iso8601_duration(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_iso8601_duration("P2M")
                .expect_err("months")
                .contains("years, months or weeks")
        );
    }

    /// Knative's docs example: every field read, the policy and delays typed.
    #[test]
    fn reads_a_full_spec() {
        let (d, p) = check(serde_json::json!({
            "deadLetterSink": {"ref": {
                "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "example-sink"
            }},
            "backoffDelay": "PT0.2S", "backoffPolicy": "linear", "retry": 5,
            "timeout": "PT10S", "retryAfterMax": "PT0S", "format": "binary"
        }));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(d.retry, Some(5));
        assert_eq!(d.backoff_policy, BackoffPolicy::Linear);
        assert_eq!(d.backoff_delay, Some(Duration::from_millis(200)));
        assert_eq!(d.timeout, Some(Duration::from_secs(10)));
        assert_eq!(d.retry_after_max, Some(Duration::ZERO));
        let dl = d.dead_letter.expect("dead letter");
        assert_eq!(
            (dl.kind, dl.name.as_str()),
            (SinkKind::Service, "example-sink")
        );
        let (d, p) = check(serde_json::json!({}));
        assert!(p.is_empty());
        assert_eq!(d, Delivery::default());
        assert_eq!(d.backoff_policy, BackoffPolicy::Exponential);
    }

    /// Every bad value is reported at its own path.
    #[test]
    fn every_problem_at_its_path() {
        let (_, p) = check(serde_json::json!({
            "retry": -1, "backoffPolicy": "fibonacci", "backoffDelay": "1s", "timeout": "PT0S",
            "retryAfterMax": "-PT1S", "format": "json",
            "deadLetterSink": {"ref": {"apiVersion": "v1", "kind": "Pod", "name": "p"}}
        }));
        assert_eq!(
            p,
            [
                (
                    "spec.delivery.retry".into(),
                    "-1 is negative; write 0 or more".into()
                ),
                (
                    "spec.delivery.backoffPolicy".into(),
                    "`fibonacci` must be `linear` or `exponential`".into()
                ),
                (
                    "spec.delivery.backoffDelay".into(),
                    "`1s` is not an ISO 8601 duration (examples: PT0.5S, PT10S, PT1M30S)".into()
                ),
                (
                    "spec.delivery.timeout".into(),
                    "must be more than zero".into()
                ),
                (
                    "spec.delivery.retryAfterMax".into(),
                    "`-PT1S` is negative".into()
                ),
                (
                    "spec.delivery.format".into(),
                    "not supported by skiff yet (structured (`json`) delivery; skiff sends \
                     binary-mode CloudEvents: leave `format` out or write `binary`)"
                        .into()
                ),
                (
                    "spec.delivery.deadLetterSink.ref.kind".into(),
                    "not supported by skiff yet (sinks of kind `Pod`; supported: Service \
                     (serving.knative.dev/v1), Broker (eventing.knative.dev/v1), Job \
                     (run.googleapis.com/v1))"
                        .into()
                ),
            ]
        );
    }
}
