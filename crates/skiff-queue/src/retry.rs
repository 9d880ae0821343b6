//! [`RetryPolicy`]: what a dispatcher does with a failed delivery. Pure arithmetic, no SQLite.

use std::time::Duration;

use jiff::Timestamp;

/// How the delay before a retry grows with the retry's number: Knative's DeliverySpec
/// `backoffPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The `n`th retry waits `delay × n`.
    Linear,
    /// The `n`th retry waits `delay × 2^n`.
    Exponential,
}

/// A subscription's retry settings, after Knative's DeliverySpec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt before a delivery is dead-lettered (DeliverySpec
    /// `retry`): a delivery is attempted at most `retries + 1` times. 0 dead-letters it at its
    /// first failure.
    pub retries: u32,
    /// How the delay grows (DeliverySpec `backoffPolicy`).
    pub backoff: Backoff,
    /// The base delay (DeliverySpec `backoffDelay`).
    pub delay: Duration,
    /// The longest any one delay may be, also for a receiver's `Retry-After`. Knative has no
    /// such cap; without one an exponential policy would reach centuries after a few dozen
    /// retries.
    pub max_delay: Duration,
}

/// What to do with a delivery whose attempt failed (with a retryable error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Release it with [`crate::Queue::retry`], due at `run_at`.
    Retry {
        /// When the next attempt is due.
        run_at: Timestamp,
    },
    /// Retries are used up: [`crate::Queue::dead`].
    Dead,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry, after attempt 1 failed):
    /// `delay × retry` (linear) or `delay × 2^retry` (exponential), as Knative documents them,
    /// at most `max_delay`. Saturates instead of overflowing.
    pub fn delay_before(&self, retry: u32) -> Duration {
        let factor = match self.backoff {
            Backoff::Linear => retry,
            Backoff::Exponential => 1u32.checked_shl(retry).unwrap_or(u32::MAX),
        };
        self.delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Decides the fate of a delivery whose attempt number `attempt` ([`crate::Claimed`]'s,
    /// 1-based) failed at `now`. `retry_after` is the receiver's `Retry-After`, if it sent
    /// one: the retry waits at least that long (up to `max_delay`).
    pub fn after_failure(
        &self,
        attempt: u32,
        now: Timestamp,
        retry_after: Option<Duration>,
    ) -> AfterFailure {
        // Attempt n failed after n - 1 retries; the next one would be retry number n.
        if attempt > self.retries {
            return AfterFailure::Dead;
        }
        let mut delay = self.delay_before(attempt);
        if let Some(retry_after) = retry_after {
            delay = delay.max(retry_after.min(self.max_delay));
        }
        AfterFailure::Retry {
            run_at: now.checked_add(delay).unwrap_or(Timestamp::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff,
            delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_grow_linearly_or_exponentially_up_to_the_cap() {
        let linear = policy(Backoff::Linear, 10);
        let got: Vec<u64> = (1..=4)
            .map(|n| linear.delay_before(n).as_millis() as u64)
            .collect();
        assert_eq!(got, [500, 1000, 1500, 2000]);
        let exponential = policy(Backoff::Exponential, 10);
        let got: Vec<u64> = (1..=4)
            .map(|n| exponential.delay_before(n).as_millis() as u64)
            .collect();
        assert_eq!(got, [1000, 2000, 4000, 8000]);
        // 500 ms × 2^7 = 64 s is over the 60 s cap, and huge retry numbers saturate.
        assert_eq!(exponential.delay_before(7), Duration::from_secs(60));
        assert_eq!(exponential.delay_before(200), Duration::from_secs(60));
        assert_eq!(linear.delay_before(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn retries_run_out_into_the_dead_letter_state() {
        let now = Timestamp::from_second(1_700_000_000).expect("valid time");
        let p = policy(Backoff::Linear, 2);
        assert_eq!(
            p.after_failure(1, now, None),
            AfterFailure::Retry {
                run_at: now + Duration::from_millis(500)
            }
        );
        assert_eq!(
            p.after_failure(2, now, None),
            AfterFailure::Retry {
                run_at: now + Duration::from_millis(1000)
            }
        );
        // Attempt 3 was the second retry: no retries left.
        assert_eq!(p.after_failure(3, now, None), AfterFailure::Dead);
        assert_eq!(
            policy(Backoff::Linear, 0).after_failure(1, now, None),
            AfterFailure::Dead
        );
    }

    #[test]
    fn retry_after_lengthens_the_delay_but_not_past_the_cap() {
        let now = Timestamp::from_second(1_700_000_000).expect("valid time");
        let p = policy(Backoff::Linear, 5);
        let at = |retry_after| match p.after_failure(1, now, Some(retry_after)) {
            AfterFailure::Retry { run_at } => run_at.duration_since(now).as_secs_f64(),
            AfterFailure::Dead => panic!("retries left"),
        };
        assert_eq!(at(Duration::from_secs(10)), 10.0);
        // Shorter than the backoff: the backoff wins.
        assert_eq!(at(Duration::from_millis(100)), 0.5);
        assert_eq!(at(Duration::from_secs(3600)), 60.0);
        // A time near the end of jiff's range saturates rather than failing.
        assert_eq!(
            p.after_failure(1, Timestamp::MAX, None),
            AfterFailure::Retry {
                run_at: Timestamp::MAX
            }
        );
    }
}
