//! One revision's requests over a window: how many, how many answered 5xx, and their
//! durations in an HDR histogram (two significant digits: 1% of the value, from 1 µs to an
//! hour), so the p95 and the share slower than an objective are read within 1%.

use std::time::Duration;

use hdrhistogram::Histogram;
use skiff_api::rollout::Figures;

/// The longest duration recorded, in microseconds (longer ones count as this).
const MAX_MICROS: u64 = 3_600_000_000;

/// One revision's requests over a window.
#[derive(Debug, Clone)]
pub struct Window {
    requests: u64,
    errors: u64,
    durations: Histogram<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    /// An empty window.
    pub fn new() -> Window {
        Window {
            requests: 0,
            errors: 0,
            durations: Histogram::new_with_bounds(1, MAX_MICROS, 2)
                .expect("the bounds are valid constants"),
        }
    }

    /// A request answered `status` after `duration`.
    pub fn record(&mut self, status: u16, duration: Duration) {
        self.requests += 1;
        if status >= 500 {
            self.errors += 1;
        }
        let micros = (duration.as_micros() as u64).clamp(1, MAX_MICROS);
        self.durations.saturating_record(micros);
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// What the window shows; `slow_after`: the Service's latency objective's threshold,
    /// to count the requests slower than it.
    pub fn figures(&self, slow_after: Option<Duration>) -> Figures {
        let p95_ms = (self.requests > 0)
            .then(|| self.durations.value_at_quantile(0.95) as f64 / 1000.0)
            .map(|ms| (ms * 100.0).round() / 100.0);
        let slow = slow_after.map(|t| {
            let at = (t.as_micros() as u64).clamp(1, MAX_MICROS);
            self.durations.len() - self.durations.count_between(0, at)
        });
        Figures {
            requests: self.requests,
            errors: self.errors,
            p95_ms,
            slow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_errors_and_read_the_p95_within_one_percent() {
        let mut w = Window::new();
        assert_eq!(w.figures(None), Figures::default());
        for i in 0..100u64 {
            let status = if i % 10 == 0 { 503 } else { 200 };
            w.record(status, Duration::from_millis(1 + i));
        }
        let f = w.figures(Some(Duration::from_millis(90)));
        assert_eq!((f.requests, f.errors), (100, 10));
        let p95 = f.p95_ms.expect("requests");
        assert!((p95 - 95.0).abs() <= 1.0, "{p95}");
        // 91..=100 ms are slower than 90 ms.
        assert_eq!(f.slow, Some(10));
        assert!((f.error_rate() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn extreme_durations_are_kept_in_range() {
        let mut w = Window::new();
        w.record(200, Duration::ZERO);
        w.record(200, Duration::from_secs(10_000));
        assert_eq!(w.figures(None).requests, 2);
    }
}
