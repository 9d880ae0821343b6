//! Knative's KPA autoscaler as a pure function: settings, observed metrics and a clock in,
//! a desired instance count and its reason out. No tokio, no wall clock: the daemon's driver
//! feeds 1-second metric buckets and the current time in milliseconds; tests feed a
//! simulated clock.
//!
//! # Design
//! Follows knative/serving `pkg/autoscaler/scaling/autoscaler.go` as `../shared/KNATIVE.md`
//! spells it (every 2 s tick):
//! ```text
//! ready   = max(1, readyInstances)
//! maxUp   = ceil(maxScaleUpRate × ready); maxDown = floor(ready / maxScaleDownRate)
//! dspc    = ceil(stableAvg / target);      dppc    = ceil(panicAvg / target)
//! stable  = clamp(dspc, maxDown, maxUp);   panic   = clamp(dppc, maxDown, maxUp)
//! panic mode: entered when dppc / ready ≥ panicThreshold; left after a stable window without
//! desired = panicking ? max(stable, panic, highest desired while panicking) : stable
//! then scale-down delay (max over the delay window), activation scale, min/max bounds
//! ```
//! `target = max(0.01, perInstanceTarget × utilization)`, where the per-instance target is the
//! `target` annotation (capped by containerConcurrency), else containerConcurrency, else 100
//! (concurrency) or 200 (rps).
//!
//! Scale to zero: a revision goes to zero only once it has been active for a whole stable
//! window, its stable average is zero, nothing waits for it, and it has stayed so for the
//! scale-to-zero grace period (and the retention period); until then it holds one instance.
//! A request waiting for a revision at zero scales it to `max(1, activationScale)` at once.
//!
//! # Averaging
//! Buckets are averaged linearly over the window (Knative's default), or, with
//! `metric-aggregation-algorithm: weighted-exponential`, as Knative's `WeightedFloat64Buckets`
//! do: the bucket `i` seconds old weighs `α(1−α)^i`, with
//! `α = max(1 − 0.0001^(1/n), 0.2)` for a window of `n` one-second buckets (so the weights of a
//! whole window add up to at least 0.9999, and long windows decay no slower than 0.8 per
//! second). Seconds without a bucket count as zeros.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Which metric drives scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Requests in flight per instance.
    Concurrency,
    /// Requests per second per instance.
    Rps,
}

/// How the buckets of a window are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Aggregation {
    /// Every bucket of the window weighs the same (Knative's default).
    #[default]
    Linear,
    /// Recent buckets weigh more, decaying exponentially with age.
    WeightedExponential,
}

/// Everything that decides scaling for one revision (Knative's defaults in [`Default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The metric.
    pub metric: Metric,
    /// `containerConcurrency` (0: unlimited).
    pub container_concurrency: u32,
    /// The `target` annotation.
    pub target: Option<f64>,
    /// Target utilization, 0–1 (default 0.7).
    pub utilization: f64,
    /// Stable window in milliseconds (default 60 s).
    pub stable_window_ms: u64,
    /// Panic window as a share of the stable window (default 0.10).
    pub panic_window_fraction: f64,
    /// Panic threshold as a ratio (default 2.0 = 200%).
    pub panic_threshold: f64,
    /// Most growth per tick, as a factor of ready instances (default 1000).
    pub max_scale_up_rate: f64,
    /// Most shrinking per tick, as a divisor of ready instances (default 2).
    pub max_scale_down_rate: f64,
    /// Fewest instances (default 0).
    pub min_scale: u32,
    /// Most instances (0: no limit).
    pub max_scale: u32,
    /// Instances when the revision is created (default 1).
    pub initial_scale: u32,
    /// Fewest instances when scaling up from zero (default 1).
    pub activation_scale: u32,
    /// Scale-down decisions are held back this long, in milliseconds (default 0).
    pub scale_down_delay_ms: u64,
    /// How long an idle revision keeps its last instance, in milliseconds (default 30 s).
    pub scale_to_zero_grace_ms: u64,
    /// Knative's `scale-to-zero-pod-retention-period`, in milliseconds (default 0).
    pub scale_to_zero_retention_ms: u64,
    /// How buckets are averaged over a window (default linear).
    #[serde(default)]
    pub aggregation: Aggregation,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            metric: Metric::Concurrency,
            container_concurrency: 0,
            target: None,
            utilization: 0.7,
            stable_window_ms: 60_000,
            panic_window_fraction: 0.10,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            min_scale: 0,
            max_scale: 0,
            initial_scale: 1,
            activation_scale: 1,
            scale_down_delay_ms: 0,
            scale_to_zero_grace_ms: 30_000,
            scale_to_zero_retention_ms: 0,
            aggregation: Aggregation::Linear,
        }
    }
}

impl Settings {
    /// The per-instance target after utilization (never below 0.01).
    pub fn effective_target(&self) -> f64 {
        let cc = f64::from(self.container_concurrency);
        let total = match (self.target, self.metric) {
            (Some(t), Metric::Concurrency) if self.container_concurrency > 0 => t.min(cc),
            (Some(t), _) => t,
            (None, Metric::Concurrency) if self.container_concurrency > 0 => cc,
            (None, Metric::Concurrency) => 100.0,
            (None, Metric::Rps) => 200.0,
        };
        (total * self.utilization).max(0.01)
    }

    /// The panic window in milliseconds (at least 1 s).
    pub fn panic_window_ms(&self) -> u64 {
        ((self.stable_window_ms as f64 * self.panic_window_fraction).round() as u64).max(1000)
    }
}

/// One second of observations of a revision (all its instances together, plus requests
/// waiting in the activator).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// The second this bucket covers, in milliseconds since the driver's epoch.
    pub at_ms: u64,
    /// Average number of requests in flight or waiting during the second.
    pub concurrency: f64,
    /// Requests that arrived during the second.
    pub requests: u64,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When it was made (ms).
    pub at_ms: u64,
    /// Instances wanted.
    pub desired: u32,
    /// Whether panic mode is on.
    pub panicking: bool,
    /// The stable-window average of the metric.
    pub stable_average: f64,
    /// The panic-window average of the metric.
    pub panic_average: f64,
    /// Why, for people.
    pub reason: String,
}

/// The autoscaler of one revision: its metric history and panic state.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    buckets: VecDeque<Bucket>,
    created_ms: Option<u64>,
    /// How old the revision already was when this autoscaler was made (a daemon restart
    /// makes new autoscalers for old revisions, which must not get their initial scale again).
    age_at_start_ms: u64,
    panic_since_ms: Option<u64>,
    last_over_threshold_ms: Option<u64>,
    max_panic_desired: u32,
    zero_since_ms: Option<u64>,
    recent: VecDeque<(u64, u32)>,
    active_since_ms: Option<u64>,
}

/// Knative's smoothing coefficient for a window of `slots` buckets: the weights of a whole
/// window add up to at least 0.9999, and never decay slower than by 0.8 per bucket.
fn smoothing_coefficient(slots: usize) -> f64 {
    (1.0 - 0.0001_f64.powf(1.0 / slots.max(1) as f64)).max(0.2)
}

fn average(
    buckets: &VecDeque<Bucket>,
    now_ms: u64,
    window_ms: u64,
    since_ms: u64,
    metric: Metric,
    aggregation: Aggregation,
) -> f64 {
    // The window is its last `window / 1 s` buckets, counted rather than cut by timestamp:
    // a decision between two bucket ticks, or a tick that fires late, must still see a whole
    // window (cutting at `now - window` drops one bucket in six of a 6 s panic window).
    // Stale buckets (older than the window, plus a tick of slack) do not count; a revision
    // younger than the window is averaged over the seconds it has existed.
    let slots = (window_ms / 1000).max(1) as usize;
    let value = |b: &Bucket| match metric {
        Metric::Concurrency => b.concurrency,
        Metric::Rps => b.requests as f64,
    };
    let fresh = |b: &&Bucket| b.at_ms >= since_ms && b.at_ms + window_ms + 1000 > now_ms;
    if aggregation == Aggregation::WeightedExponential {
        let alpha = smoothing_coefficient(slots);
        let Some(newest) = buckets.iter().rev().find(fresh) else {
            return 0.0;
        };
        // Whole seconds since the newest bucket beyond the one-tick slack: zeros.
        let lag = now_ms.saturating_sub(newest.at_ms + 1000) / 1000;
        let mut sum = 0.0;
        for b in buckets.iter().rev().filter(fresh) {
            let age = lag + (newest.at_ms.saturating_sub(b.at_ms) + 500) / 1000;
            if age >= slots as u64 {
                break;
            }
            sum += value(b) * alpha * (1.0 - alpha).powi(age as i32);
        }
        return if sum > 0.0 { sum } else { 0.0 };
    }
    let sum: f64 = buckets
        .iter()
        .rev()
        .filter(fresh)
        .take(slots)
        .map(value)
        .sum();
    let lived = buckets.iter().filter(|b| b.at_ms >= since_ms).count();
    let avg = sum / slots.min(lived).max(1) as f64;
    // An empty float sum is -0.0; averages are never negative.
    if avg > 0.0 { avg } else { 0.0 }
}

impl Autoscaler {
    /// A fresh autoscaler for a revision created at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Autoscaler {
            created_ms: Some(now_ms),
            ..Default::default()
        }
    }

    /// An autoscaler made at `now_ms` for a revision that is already `age_ms` old (the
    /// daemon restarted): its initial scale applies only for what remains of its first stable
    /// window.
    pub fn with_age(now_ms: u64, age_ms: u64) -> Self {
        Autoscaler {
            created_ms: Some(now_ms),
            age_at_start_ms: age_ms,
            ..Default::default()
        }
    }

    /// Records a 1-second bucket.
    pub fn record(&mut self, bucket: Bucket) {
        self.buckets.push_back(bucket);
        while self.buckets.len() > 3600 {
            self.buckets.pop_front();
        }
    }

    /// Decides the desired instance count at `now_ms`, with `ready` instances ready and
    /// `waiting` requests queued in the activator.
    pub fn decide(&mut self, s: &Settings, now_ms: u64, ready: u32, waiting: u32) -> Decision {
        let created = *self.created_ms.get_or_insert(now_ms);
        // Drop history older than the longest window we look at.
        let keep = s.stable_window_ms.max(s.scale_down_delay_ms) + 2000;
        while self
            .buckets
            .front()
            .is_some_and(|b| b.at_ms + keep < now_ms)
        {
            self.buckets.pop_front();
        }
        if ready > 0 && self.active_since_ms.is_none() {
            self.active_since_ms = Some(now_ms);
        }
        if ready == 0 {
            self.active_since_ms = None;
        }
        let target = s.effective_target();
        let stable_avg = average(
            &self.buckets,
            now_ms,
            s.stable_window_ms,
            created,
            s.metric,
            s.aggregation,
        );
        let panic_avg = average(
            &self.buckets,
            now_ms,
            s.panic_window_ms(),
            created,
            s.metric,
            s.aggregation,
        );
        let ready_f = f64::from(ready.max(1));
        let max_up = (s.max_scale_up_rate * ready_f).ceil() as u32;
        let max_down = (ready_f / s.max_scale_down_rate).floor() as u32;
        let dspc = (stable_avg / target).ceil() as u32;
        let dppc = (panic_avg / target).ceil() as u32;
        let clamp = |v: u32| v.clamp(max_down.min(max_up), max_up);
        let stable = clamp(dspc);
        let panic = clamp(dppc);
        let over = f64::from(dppc) / ready_f >= s.panic_threshold && ready > 0;
        if over {
            self.last_over_threshold_ms = Some(now_ms);
            if self.panic_since_ms.is_none() {
                self.panic_since_ms = Some(now_ms);
                self.max_panic_desired = ready;
            }
        } else if let (Some(_), Some(last)) = (self.panic_since_ms, self.last_over_threshold_ms)
            && now_ms.saturating_sub(last) >= s.stable_window_ms
        {
            self.panic_since_ms = None;
            self.max_panic_desired = 0;
        }
        let panicking = self.panic_since_ms.is_some();
        let mut desired;
        let mut reason;
        if panicking {
            desired = stable.max(panic).max(self.max_panic_desired);
            self.max_panic_desired = desired;
            reason = format!(
                "panic: {panic_avg:.2} over the {}s panic window vs target {target:.2} per instance",
                s.panic_window_ms() / 1000
            );
        } else {
            desired = stable;
            reason = format!(
                "stable: {stable_avg:.2} over the {}s window vs target {target:.2} per instance",
                s.stable_window_ms / 1000
            );
        }
        // Knative's activation scale applies whenever traffic asks for at least one instance.
        if s.activation_scale > 1 && desired > 0 && desired < s.activation_scale {
            desired = s.activation_scale;
            reason.push_str(&format!(
                "; raised to activation-scale {}",
                s.activation_scale
            ));
        }
        // Initial scale: a new revision gets its instances until it has been active for a
        // whole stable window.
        let young = now_ms
            .saturating_sub(created)
            .saturating_add(self.age_at_start_ms)
            < s.stable_window_ms
            && self
                .active_since_ms
                .is_none_or(|a| now_ms.saturating_sub(a) < s.stable_window_ms);
        if young && desired < s.initial_scale {
            desired = s.initial_scale;
            reason = format!("initial-scale {} for a new revision", s.initial_scale);
        }
        // Waiting requests always get an instance (scale from zero).
        if waiting > 0 && desired == 0 {
            desired = s.activation_scale.max(1);
            reason = format!("{waiting} request(s) waiting for a revision at zero");
        }
        // Scale-down delay: the highest decision of the delay window wins.
        if s.scale_down_delay_ms > 0 {
            self.recent.push_back((now_ms, desired));
            while self
                .recent
                .front()
                .is_some_and(|(t, _)| t + s.scale_down_delay_ms <= now_ms)
            {
                self.recent.pop_front();
            }
            let held = self.recent.iter().map(|(_, d)| *d).max().unwrap_or(desired);
            if held > desired {
                desired = held;
                reason.push_str(&format!(
                    "; held at {held} by scale-down-delay {}s",
                    s.scale_down_delay_ms / 1000
                ));
            }
        }
        // To zero only after the grace period (and retention) of idleness.
        if desired == 0 && s.min_scale == 0 {
            let since = *self.zero_since_ms.get_or_insert(now_ms);
            let idle = now_ms.saturating_sub(since);
            let wait = s.scale_to_zero_grace_ms.max(s.scale_to_zero_retention_ms);
            if ready > 0 && idle < wait {
                desired = 1;
                reason = format!(
                    "idle for {}s; keeping one instance for the scale-to-zero grace period ({}s)",
                    idle / 1000,
                    wait / 1000
                );
            } else if ready > 0 {
                reason = format!(
                    "scaled to zero: idle for {}s (grace {}s)",
                    idle / 1000,
                    wait / 1000
                );
            }
        } else {
            self.zero_since_ms = None;
        }
        if desired < s.min_scale {
            desired = s.min_scale;
            reason.push_str(&format!("; raised to min-scale {}", s.min_scale));
        }
        if s.max_scale > 0 && desired > s.max_scale {
            desired = s.max_scale;
            reason.push_str(&format!("; capped at max-scale {}", s.max_scale));
        }
        Decision {
            at_ms: now_ms,
            desired,
            panicking,
            stable_average: stable_avg,
            panic_average: panic_avg,
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
