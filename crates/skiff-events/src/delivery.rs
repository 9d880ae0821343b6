//! Knative DeliverySpec decisions, as pure functions: what a sink's answer means, and what to
//! do after a failed attempt.
//!
//! # Classes of answers
//! [`classify`] follows the eventing data-plane table: 200 accepted and may carry a reply; any
//! other 2xx accepted without one (202 never carries a reply); 404, 408, 409 and 429 are
//! retryable failures, as is every 5xx; 400 and every other 4xx are permanent; codes outside
//! the table (1xx, 3xx, 600 and up) are retryable, as the table says they SHOULD be (Knative's
//! dispatcher does not retry 1xx and 3xx). No answer at all (a connection error, or the
//! policy's `timeout` ran out) is retryable: [`classify_outcome`]`(None)`.
//!
//! # Backoff
//! Retry `n` (1-based: the first retry follows the first failed attempt) waits
//! - linear: `backoffDelay × n` (PT0.2S: 0.2 s, 0.4 s, 0.6 s, …),
//! - exponential: `backoffDelay × 2^n` (PT0.2S: 0.4 s, 0.8 s, 1.6 s, …; PT0.5S: 1 s, 2 s, 4 s),
//!
//! as knative/eventing's `pkg/kncloudevents/retries.go` computes it (`delayDuration *
//! time.Duration(attemptNum)` and `delayDuration * time.Duration(math.Exp2(attemptNum))`), as
//! its `retries_test.go` asserts for attempts 1, 2, 3… (PT0.5S exponential: 1 s, 2 s, 4 s, 8 s,
//! 16 s) and as Knative's docs state (`backoffDelay*2^<numberOfRetries>`). Note: Knative's
//! dispatcher calls that function through go-retryablehttp, whose `attemptNum` starts at 0, so
//! its actual waits are one step earlier (linear 0, d, 2d…; exponential d, 2d, 4d…); skiff
//! follows the documented and tested formula instead.
//!
//! A wait is capped at [`MAX_BACKOFF`] (24 h; Knative has no cap, and its durations overflow
//! after enough exponential retries).
//!
//! # Retry-After
//! A `Retry-After` header (delta-seconds, or an IMF-fixdate HTTP-date such as
//! `Wed, 21 Oct 2015 07:28:00 GMT`; the obsolete RFC 850 and asctime forms are ignored) is
//! honoured when it asks for a later retry than the backoff, up to [`MAX_RETRY_AFTER`]
//! (10 min), so a sink cannot park an event for days. The caller passes the header of any
//! retryable response (Knative reads it on 429 and 503 only), or `None` to ignore it.
//!
//! # Giving up
//! After `retry` retries (so `retry + 1` attempts), or at once on a permanent failure, the
//! event goes to the dead-letter sink when one is configured, else it is dropped. With no
//! DeliverySpec ([`DeliveryPolicy::default`]), a failed event is dropped after one attempt.

use std::time::Duration;

use http::HeaderValue;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The longest backoff wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest wait a `Retry-After` header can ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// How the wait grows from one retry to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackoffPolicy {
    /// `delay × n`.
    Linear,
    /// `delay × 2^n`.
    #[default]
    Exponential,
}

/// A Trigger's (or Broker's) DeliverySpec, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryPolicy {
    /// How many retries after the first attempt before giving up.
    pub retry: u32,
    /// How waits grow.
    pub backoff_policy: BackoffPolicy,
    /// The base wait (`backoffDelay`).
    pub backoff_delay: Duration,
    /// Whether a dead-letter sink is configured.
    pub dead_letter: bool,
    /// How long one attempt may take before it counts as a (retryable) failure.
    pub timeout: Option<Duration>,
}

impl DeliveryPolicy {
    /// The wait before retry `n` (1-based), capped at [`MAX_BACKOFF`].
    pub fn backoff(&self, n: u32) -> Duration {
        let delay = self.backoff_delay.as_nanos();
        let nanos = match self.backoff_policy {
            BackoffPolicy::Linear => delay.saturating_mul(u128::from(n)),
            BackoffPolicy::Exponential => match 1u128.checked_shl(n) {
                Some(factor) => delay.saturating_mul(factor),
                None if delay == 0 => 0,
                None => u128::MAX,
            },
        };
        let capped = nanos.min(MAX_BACKOFF.as_nanos());
        // Below MAX_BACKOFF, so it fits in u64 nanoseconds.
        Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
    }
}

/// What a sink's answer means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Accepted, no reply (2xx other than 200).
    Success,
    /// Accepted (200); the body may carry a reply event.
    SuccessWithPossibleReply,
    /// Failed; try again.
    Retryable,
    /// Failed; trying again will not help.
    Permanent,
}

/// The class of an HTTP status (see the module docs).
pub fn classify(status: u16) -> Class {
    match status {
        200 => Class::SuccessWithPossibleReply,
        201..=299 => Class::Success,
        404 | 408 | 409 | 429 => Class::Retryable,
        400..=499 => Class::Permanent,
        _ => Class::Retryable,
    }
}

/// The class of an attempt's outcome: its status, or `None` when there was no answer (a
/// connection error or a timeout), which is retryable.
pub fn classify_outcome(status: Option<u16>) -> Class {
    status.map_or(Class::Retryable, classify)
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The attempt succeeded: nothing more to do (a 200's reply is the caller's to read).
    Done,
    /// Try again at this instant.
    Retry {
        /// When.
        at: Timestamp,
    },
    /// Give up and send the event to the dead-letter sink.
    DeadLetter,
    /// Give up and drop the event (no dead-letter sink).
    Drop,
}

/// What to do after attempt `attempt_just_failed` (1-based) ended in `class`, at `now`
/// (see the module docs). A successful class gives [`Next::Done`].
pub fn next_attempt(
    policy: &DeliveryPolicy,
    attempt_just_failed: u32,
    class: Class,
    retry_after: Option<&HeaderValue>,
    now: Timestamp,
) -> Next {
    let give_up = if policy.dead_letter {
        Next::DeadLetter
    } else {
        Next::Drop
    };
    match class {
        Class::Success | Class::SuccessWithPossibleReply => Next::Done,
        Class::Permanent => give_up,
        Class::Retryable => {
            let retries_done = attempt_just_failed.saturating_sub(1);
            if retries_done >= policy.retry {
                return give_up;
            }
            let mut wait = policy.backoff(retries_done + 1);
            if let Some(asked) = retry_after.and_then(|v| retry_after_delay(v, now)) {
                wait = wait.max(asked.min(MAX_RETRY_AFTER));
            }
            Next::Retry {
                at: now.checked_add(wait).unwrap_or(Timestamp::MAX),
            }
        }
    }
}

/// The wait a `Retry-After` header asks for, from `now`: delta-seconds, or an HTTP-date
/// (IMF-fixdate; one in the past asks for no wait). `None` when it is neither. Not capped.
pub fn retry_after_delay(value: &HeaderValue, now: Timestamp) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(text)
        .ok()?;
    Some(Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO))
}

/// Why a string is not a usable ISO 8601 duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not ISO 8601 duration syntax.
    #[error("`{input}` is not an ISO 8601 duration (e.g. PT0.5S, PT10S, PT1M30S, P1D): {reason}")]
    Syntax {
        /// The text given.
        input: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A negative duration.
    #[error("`{input}` is negative; a duration must be zero or more")]
    Negative {
        /// The text given.
        input: String,
    },
    /// Years or months.
    #[error(
        "`{input}` uses years or months, which have no fixed length; use weeks, days, hours, minutes and seconds (e.g. P1D, PT12H)"
    )]
    CalendarUnit {
        /// The text given.
        input: String,
    },
    /// Too long to represent.
    #[error("`{input}` is too long")]
    TooLarge {
        /// The text given.
        input: String,
    },
}

/// Parses an ISO 8601 duration as DeliverySpec's `backoffDelay` and `timeout` use it
/// (`PT0.5S`, `PT1M30S`, `P1D`), with jiff's ISO 8601 span parser. Weeks and days count as
/// 7 × 24 h and 24 h; years, months and negative durations are refused.
pub fn parse_iso8601_duration(input: &str) -> Result<Duration, DurationError> {
    let span = jiff::fmt::temporal::SpanParser::new()
        .parse_span(input.trim())
        .map_err(|e| DurationError::Syntax {
            input: input.to_owned(),
            reason: e.to_string(),
        })?;
    if span.is_negative() {
        return Err(DurationError::Negative {
            input: input.to_owned(),
        });
    }
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(DurationError::CalendarUnit {
            input: input.to_owned(),
        });
    }
    let too_large = || DurationError::TooLarge {
        input: input.to_owned(),
    };
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| too_large())?;
    Duration::try_from(signed).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(
        backoff_policy: BackoffPolicy,
        delay: &str,
        retry: u32,
        dead_letter: bool,
    ) -> DeliveryPolicy {
        DeliveryPolicy {
            retry,
            backoff_policy,
            backoff_delay: parse_iso8601_duration(delay).expect("delay"),
            dead_letter,
            timeout: None,
        }
    }

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().expect("timestamp")
    }

    fn wait(next: Next) -> Duration {
        match next {
            Next::Retry { at } => Duration::try_from(now().duration_until(at)).expect("later"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn classify_follows_the_data_plane_table() {
        let table = [
            (200, Class::SuccessWithPossibleReply),
            (201, Class::Success),
            (202, Class::Success),
            (204, Class::Success),
            (299, Class::Success),
            (400, Class::Permanent),
            (401, Class::Permanent),
            (403, Class::Permanent),
            (404, Class::Retryable),
            (405, Class::Permanent),
            (408, Class::Retryable),
            (409, Class::Retryable),
            (410, Class::Permanent),
            (413, Class::Permanent),
            (422, Class::Permanent),
            (429, Class::Retryable),
            (499, Class::Permanent),
            (500, Class::Retryable),
            (502, Class::Retryable),
            (503, Class::Retryable),
            (504, Class::Retryable),
            (599, Class::Retryable),
            (100, Class::Retryable),
            (101, Class::Retryable),
            (301, Class::Retryable),
            (304, Class::Retryable),
            (600, Class::Retryable),
            (0, Class::Retryable),
        ];
        for (status, class) in table {
            assert_eq!(classify(status), class, "{status}");
        }
        assert_eq!(classify_outcome(None), Class::Retryable);
        assert_eq!(classify_outcome(Some(202)), Class::Success);
    }

    #[test]
    fn linear_backoff() {
        let p = policy(BackoffPolicy::Linear, "PT0.2S", 5, false);
        let waits: Vec<Duration> = (1..=3).map(|n| p.backoff(n)).collect();
        assert_eq!(waits, [ms(200), ms(400), ms(600)]);
        // Knative's retries_test: PT2.5S linear.
        let p = policy(BackoffPolicy::Linear, "PT2.5S", 5, false);
        let waits: Vec<Duration> = (1..=5).map(|n| p.backoff(n)).collect();
        assert_eq!(waits, [ms(2500), ms(5000), ms(7500), ms(10000), ms(12500)]);
    }

    #[test]
    fn exponential_backoff() {
        let p = policy(BackoffPolicy::Exponential, "PT0.2S", 5, false);
        let waits: Vec<Duration> = (1..=3).map(|n| p.backoff(n)).collect();
        assert_eq!(waits, [ms(400), ms(800), ms(1600)]);
        // Knative's retries_test: PT0.5S and PT1.5S exponential.
        let p = policy(BackoffPolicy::Exponential, "PT0.5S", 5, false);
        let waits: Vec<Duration> = (1..=5).map(|n| p.backoff(n)).collect();
        assert_eq!(waits, [ms(1000), ms(2000), ms(4000), ms(8000), ms(16000)]);
        let p = policy(BackoffPolicy::Exponential, "PT1.5S", 5, false);
        let waits: Vec<Duration> = (1..=5).map(|n| p.backoff(n)).collect();
        assert_eq!(waits, [ms(3000), ms(6000), ms(12000), ms(24000), ms(48000)]);
    }

    #[test]
    fn backoff_is_capped_and_never_overflows() {
        let p = policy(BackoffPolicy::Exponential, "PT1S", 1000, false);
        assert_eq!(p.backoff(16), Duration::from_secs(65536));
        assert_eq!(p.backoff(17), MAX_BACKOFF);
        assert_eq!(p.backoff(200), MAX_BACKOFF);
        assert_eq!(p.backoff(u32::MAX), MAX_BACKOFF);
        let p = policy(BackoffPolicy::Linear, "P1W", 1000, false);
        assert_eq!(p.backoff(u32::MAX), MAX_BACKOFF);
        let p = policy(BackoffPolicy::Exponential, "PT0S", 1000, false);
        assert_eq!(p.backoff(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn next_attempt_walks_the_retries_then_gives_up() {
        let p = policy(BackoffPolicy::Linear, "PT0.2S", 3, true);
        let mut waits = Vec::new();
        let mut attempt = 1;
        loop {
            match next_attempt(&p, attempt, Class::Retryable, None, now()) {
                next @ Next::Retry { .. } => waits.push(wait(next)),
                Next::DeadLetter => break,
                other => panic!("{other:?}"),
            }
            attempt += 1;
        }
        assert_eq!(waits, [ms(200), ms(400), ms(600)]);
        assert_eq!(attempt, 4, "three retries, four attempts");
        // Without a dead-letter sink the event is dropped.
        let p = DeliveryPolicy {
            dead_letter: false,
            ..p
        };
        assert_eq!(
            next_attempt(&p, 4, Class::Retryable, None, now()),
            Next::Drop
        );
        let p = policy(BackoffPolicy::Exponential, "PT0.2S", 3, false);
        let waits: Vec<Duration> = (1..=3)
            .map(|a| wait(next_attempt(&p, a, Class::Retryable, None, now())))
            .collect();
        assert_eq!(waits, [ms(400), ms(800), ms(1600)]);
    }

    #[test]
    fn no_delivery_spec_drops_after_one_attempt() {
        let p = DeliveryPolicy::default();
        assert_eq!(
            next_attempt(&p, 1, Class::Retryable, None, now()),
            Next::Drop
        );
        assert_eq!(
            next_attempt(&p, 1, Class::Permanent, None, now()),
            Next::Drop
        );
    }

    #[test]
    fn permanent_failures_skip_the_retries() {
        let p = policy(BackoffPolicy::Linear, "PT1S", 10, true);
        assert_eq!(
            next_attempt(&p, 1, classify(400), None, now()),
            Next::DeadLetter
        );
        let p = DeliveryPolicy {
            dead_letter: false,
            ..p
        };
        assert_eq!(next_attempt(&p, 1, classify(403), None, now()), Next::Drop);
    }

    #[test]
    fn success_is_done_and_connection_errors_retry() {
        let p = policy(BackoffPolicy::Linear, "PT1S", 2, true);
        assert_eq!(next_attempt(&p, 1, classify(200), None, now()), Next::Done);
        assert_eq!(next_attempt(&p, 3, classify(202), None, now()), Next::Done);
        assert_eq!(
            wait(next_attempt(&p, 1, classify_outcome(None), None, now())),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn retry_after_in_seconds_is_honoured_when_later() {
        let p = policy(BackoffPolicy::Linear, "PT2S", 5, false);
        let later = HeaderValue::from_static("120");
        assert_eq!(
            wait(next_attempt(&p, 1, classify(429), Some(&later), now())),
            Duration::from_secs(120)
        );
        let sooner = HeaderValue::from_static("1");
        assert_eq!(
            wait(next_attempt(&p, 1, classify(503), Some(&sooner), now())),
            Duration::from_secs(2)
        );
        let huge = HeaderValue::from_static("99999999999999999999999");
        assert_eq!(
            wait(next_attempt(&p, 1, classify(429), Some(&huge), now())),
            MAX_RETRY_AFTER
        );
        let garbage = HeaderValue::from_static("soon");
        assert_eq!(
            wait(next_attempt(&p, 1, classify(429), Some(&garbage), now())),
            Duration::from_secs(2)
        );
        // Retry-After does not bring back retries that are used up.
        assert_eq!(
            next_attempt(&p, 6, classify(429), Some(&later), now()),
            Next::Drop
        );
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let p = policy(BackoffPolicy::Linear, "PT1S", 5, false);
        let date = HeaderValue::from_static("Wed, 01 May 2024 12:05:00 GMT");
        assert_eq!(
            retry_after_delay(&date, now()),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            wait(next_attempt(&p, 1, classify(503), Some(&date), now())),
            Duration::from_secs(300)
        );
        let far = HeaderValue::from_static("Thu, 02 May 2024 12:00:00 GMT");
        assert_eq!(
            wait(next_attempt(&p, 1, classify(503), Some(&far), now())),
            MAX_RETRY_AFTER
        );
        let past = HeaderValue::from_static("Tue, 30 Apr 2024 12:00:00 GMT");
        assert_eq!(retry_after_delay(&past, now()), Some(Duration::ZERO));
        assert_eq!(
            wait(next_attempt(&p, 1, classify(503), Some(&past), now())),
            Duration::from_secs(1)
        );
        let asctime = HeaderValue::from_static("Wed May  1 12:05:00 2024");
        assert_eq!(retry_after_delay(&asctime, now()), None);
    }

    #[test]
    fn iso8601_durations() {
        let ok = [
            ("PT0.5S", ms(500)),
            ("PT0.2S", ms(200)),
            ("PT10S", Duration::from_secs(10)),
            ("PT1M30S", Duration::from_secs(90)),
            ("PT1H", Duration::from_secs(3600)),
            ("P1D", Duration::from_secs(86400)),
            ("P1W", Duration::from_secs(7 * 86400)),
            ("P1DT1S", Duration::from_secs(86401)),
            ("PT0S", Duration::ZERO),
            ("pt1s", Duration::from_secs(1)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_iso8601_duration(text), Ok(want), "{text}");
        }
        assert_eq!(
            parse_iso8601_duration("P1M")
                .expect_err("months")
                .to_string(),
            "`P1M` uses years or months, which have no fixed length; use weeks, days, hours, minutes and seconds (e.g. P1D, PT12H)"
        );
        assert!(matches!(
            parse_iso8601_duration("P1Y"),
            Err(DurationError::CalendarUnit { .. })
        ));
        assert_eq!(
            parse_iso8601_duration("-PT1S")
                .expect_err("negative")
                .to_string(),
            "`-PT1S` is negative; a duration must be zero or more"
        );
        for bad in ["1s", "", "PT", "10", "P", "soon", "PT1S garbage"] {
            let e = parse_iso8601_duration(bad).expect_err(bad);
            assert!(matches!(e, DurationError::Syntax { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("is not an ISO 8601 duration"), "{e}");
        }
    }

    #[test]
    fn backoff_policy_serde_is_knative_spelling() {
        assert_eq!(
            serde_json::to_string(&BackoffPolicy::Exponential).expect("ser"),
            r#""exponential""#
        );
        assert_eq!(
            serde_json::from_str::<BackoffPolicy>(r#""linear""#).expect("de"),
            BackoffPolicy::Linear
        );
    }
}
