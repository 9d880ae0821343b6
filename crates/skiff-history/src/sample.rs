//! [`Sample`]: what one revision did during one interval, and the estimates read from it.

/// Upper bounds, in seconds, of the request-latency buckets. A request that took `d` seconds
/// counts in the first bucket whose bound is `>= d` (Prometheus' `le`, "less or equal"); a
/// 23rd bucket, `+Inf`, counts the slower ones. See [`latency_bucket`].
///
/// These are not the router's Prometheus buckets (exponential, from 0.5 ms): they are chosen so
/// that the usual SLO thresholds (100, 200, 250, 300, 500 ms, 1 s…) are bucket bounds, which
/// makes a latency SLO an exact count ([`Sample::count_within`]) rather than an estimate.
pub const LATENCY_BOUNDS: [f64; 22] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Number of latency buckets: one per bound in [`LATENCY_BOUNDS`], plus `+Inf`.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// The largest finite bound, which [`Sample::quantile`] returns for the `+Inf` bucket.
const LAST_BOUND: f64 = LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1];

/// The index in [`Sample::latency`] of the bucket that counts a request of `seconds`.
///
/// `NaN` counts as `+Inf` (index 22): a latency that could not be measured is not fast.
pub fn latency_bucket(seconds: f64) -> usize {
    LATENCY_BOUNDS
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(LATENCY_BOUNDS.len())
}

/// The index of `seconds` in [`LATENCY_BOUNDS`] if it is exactly one of the bounds: what a
/// latency SLO's threshold must be for [`Sample::count_within`] to be exact.
pub fn latency_bound_index(seconds: f64) -> Option<usize> {
    LATENCY_BOUNDS.iter().position(|&bound| bound == seconds)
}

/// What happened to one revision during one interval (or, once added up, over a window).
///
/// Counters are deltas within the interval and add up; gauges (`instances_max`,
/// `memory_bytes_max`) are the maximum within the interval and combine by `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Requests answered by the router, by status class: index 0 is 1xx, …, index 4 is 5xx.
    pub requests_by_class: [u64; 5],
    /// Requests per latency bucket, not cumulative: `latency[i]` counts requests slower than
    /// `LATENCY_BOUNDS[i - 1]` and at most `LATENCY_BOUNDS[i]`; `latency[22]` is `+Inf`.
    pub latency: [u64; LATENCY_BUCKETS],
    /// Requests that had to wait for an instance to start.
    pub cold_starts: u64,
    /// Requests the router refused (429 or 503) for lack of capacity.
    pub throttled: u64,
    /// Billable instance time, in seconds.
    pub instance_seconds: f64,
    /// Instance time multiplied by the vCPUs each instance was allotted, in seconds.
    pub vcpu_seconds: f64,
    /// Instance time multiplied by the GiB of memory each instance was allotted, in seconds.
    pub gib_seconds: f64,
    /// CPU time the instances actually used, in seconds.
    pub cpu_used_seconds: f64,
    /// The most instances that existed at once (gauge).
    pub instances_max: u32,
    /// The largest memory use measured across instances, in bytes (gauge).
    pub memory_bytes_max: u64,
}

impl Sample {
    /// Adds `other` into `self`: counters and durations are summed (counters saturate instead
    /// of wrapping), gauges keep the larger value.
    pub fn add(&mut self, other: &Sample) {
        for (mine, theirs) in self
            .requests_by_class
            .iter_mut()
            .zip(other.requests_by_class)
        {
            *mine = mine.saturating_add(theirs);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine = mine.saturating_add(theirs);
        }
        self.cold_starts = self.cold_starts.saturating_add(other.cold_starts);
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.instance_seconds += other.instance_seconds;
        self.vcpu_seconds += other.vcpu_seconds;
        self.gib_seconds += other.gib_seconds;
        self.cpu_used_seconds += other.cpu_used_seconds;
        self.instances_max = self.instances_max.max(other.instances_max);
        self.memory_bytes_max = self.memory_bytes_max.max(other.memory_bytes_max);
    }

    /// Whether nothing happened: every counter, duration and gauge is zero.
    pub fn is_empty(&self) -> bool {
        *self == Sample::default()
    }

    /// Requests answered, all status classes together.
    pub fn total(&self) -> u64 {
        saturating_sum(&self.requests_by_class)
    }

    /// Requests answered with a 5xx status.
    pub fn errors(&self) -> u64 {
        self.requests_by_class[4]
    }

    /// Requests whose latency was measured: the sum of the latency buckets.
    pub fn latency_count(&self) -> u64 {
        saturating_sum(&self.latency)
    }

    /// Requests that took at most `LATENCY_BOUNDS[bound_index]`: the "good" events of a
    /// latency SLO. An index past the last bound (22 or more) counts every measured request.
    /// This is exact, not an estimate, because the threshold is a bucket bound.
    pub fn count_within(&self, bound_index: usize) -> u64 {
        let buckets = bound_index.saturating_add(1).min(LATENCY_BUCKETS);
        saturating_sum(&self.latency[..buckets])
    }

    /// The `q`-quantile of latency in seconds (`q` in `0.0..=1.0`), estimated from the buckets
    /// the way Prometheus' `histogram_quantile` does: find the bucket holding the `q × count`-th
    /// request and interpolate linearly inside it, taking the first bucket's lower bound as 0.
    /// When that bucket is `+Inf` the answer is the last finite bound (300 s).
    ///
    /// `None` when no latency was measured or `q` is outside `0.0..=1.0` (or NaN).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let count = self.latency_count();
        if count == 0 {
            return None;
        }
        let rank = q * count as f64;
        let mut below = 0u64;
        for (index, &in_bucket) in self.latency.iter().enumerate() {
            // Empty buckets are skipped so that q = 0 lands in the first bucket with requests.
            if in_bucket == 0 {
                continue;
            }
            let through = below.saturating_add(in_bucket);
            if through as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS.get(index) else {
                    return Some(LAST_BOUND);
                };
                let lower = index
                    .checked_sub(1)
                    .and_then(|i| LATENCY_BOUNDS.get(i))
                    .copied()
                    .unwrap_or(0.0);
                let fraction = (rank - below as f64) / in_bucket as f64;
                return Some(lower + (upper - lower) * fraction);
            }
            below = through;
        }
        // Only reachable through float rounding on counts beyond 2^53.
        Some(LAST_BOUND)
    }
}

fn saturating_sum(counts: &[u64]) -> u64 {
    counts.iter().fold(0, |sum, &n| sum.saturating_add(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample holding `latencies` (seconds) observed one by one.
    fn observed(latencies: impl IntoIterator<Item = f64>) -> Sample {
        let mut sample = Sample::default();
        for seconds in latencies {
            sample.latency[latency_bucket(seconds)] += 1;
        }
        sample
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn buckets_follow_prometheus_le() {
        // A latency equal to a bound counts in that bound's bucket; slower ones go to the next,
        // and anything above 300 s (or NaN) to +Inf.
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(0.0005), 0);
        assert_eq!(latency_bucket(0.0006), 1);
        assert_eq!(latency_bucket(0.3), 10);
        assert_eq!(latency_bucket(300.0), 21);
        assert_eq!(latency_bucket(300.1), 22);
        assert_eq!(latency_bucket(f64::NAN), 22);
        assert_eq!(latency_bound_index(0.3), Some(10));
        assert_eq!(latency_bound_index(0.31), None);
    }

    #[test]
    fn add_sums_counters_and_keeps_max_gauges() {
        // Counters and durations add, gauges take the max, and counters saturate rather than
        // wrap.
        let mut a = Sample {
            requests_by_class: [1, 2, 3, 4, u64::MAX],
            cold_starts: 1,
            instance_seconds: 1.5,
            instances_max: 3,
            memory_bytes_max: 100,
            ..Sample::default()
        };
        a.latency[7] = 5;
        let mut b = Sample {
            requests_by_class: [1, 1, 1, 1, 1],
            cold_starts: 2,
            throttled: 4,
            instance_seconds: 2.5,
            vcpu_seconds: 1.0,
            instances_max: 2,
            memory_bytes_max: 300,
            ..Sample::default()
        };
        b.latency[7] = 1;
        a.add(&b);
        assert_eq!(a.requests_by_class, [2, 3, 4, 5, u64::MAX]);
        assert_eq!(a.latency[7], 6);
        assert_eq!((a.cold_starts, a.throttled), (3, 4));
        assert!(close(a.instance_seconds, 4.0) && close(a.vcpu_seconds, 1.0));
        assert_eq!((a.instances_max, a.memory_bytes_max), (3, 300));
        assert_eq!(a.total(), u64::MAX);
        assert_eq!(a.errors(), u64::MAX);
        assert!(!a.is_empty());
        assert!(Sample::default().is_empty());
    }

    #[test]
    fn count_within_is_cumulative_up_to_the_bound() {
        // count_within(i) counts requests in buckets 0..=i, and an index past the last bound
        // counts them all.
        let sample = observed([0.0001, 0.05, 0.1, 0.15, 0.3, 2.0, 400.0]);
        assert_eq!(sample.count_within(0), 1);
        assert_eq!(sample.count_within(7), 3, "<= 100 ms");
        assert_eq!(sample.count_within(10), 5, "<= 300 ms");
        assert_eq!(sample.count_within(21), 6, "<= 300 s");
        assert_eq!(sample.count_within(22), 7);
        assert_eq!(sample.count_within(usize::MAX), 7);
    }

    #[test]
    fn quantile_interpolates_within_a_bucket() {
        // Requests all in (0.1, 0.2] are assumed spread evenly across it, as Prometheus does.
        let mut sample = Sample::default();
        sample.latency[8] = 100;
        assert!(close(sample.quantile(0.5).expect("p50"), 0.15));
        assert!(close(sample.quantile(0.9).expect("p90"), 0.19));
        assert!(close(sample.quantile(1.0).expect("p100"), 0.2));
        assert!(close(sample.quantile(0.0).expect("p0"), 0.1));
    }

    #[test]
    fn quantile_of_two_clusters() {
        // Half the requests in (5, 10] ms and half in (100, 200] ms: the median is the top of
        // the first cluster's bucket and p75 the middle of the second's.
        let mut sample = Sample::default();
        sample.latency[4] = 50;
        sample.latency[8] = 50;
        assert!(close(sample.quantile(0.5).expect("p50"), 0.01));
        assert!(close(sample.quantile(0.75).expect("p75"), 0.15));
    }

    #[test]
    fn quantile_edges() {
        // The first bucket's lower bound is 0, +Inf answers the last finite bound, and there
        // is no answer without requests or for q outside 0..=1.
        let mut sample = Sample::default();
        sample.latency[0] = 10;
        assert!(close(sample.quantile(0.5).expect("p50"), 0.00025));
        let mut slow = Sample::default();
        slow.latency[22] = 10;
        assert_eq!(slow.quantile(0.99), Some(300.0));
        assert_eq!(Sample::default().quantile(0.5), None);
        assert_eq!(sample.quantile(1.5), None);
        assert_eq!(sample.quantile(-0.1), None);
        assert_eq!(sample.quantile(f64::NAN), None);
    }

    #[test]
    fn quantile_of_an_exponential_distribution() {
        // 100,000 latencies drawn (deterministically, by the inverse CDF) from an exponential
        // distribution with a 100 ms mean: each estimate falls in the bucket holding the true
        // quantile, so it is off by less than that bucket's width.
        let mean = 0.1;
        let n = 100_000;
        let sample =
            observed((0..n).map(|i| -mean * (1.0 - (f64::from(i) + 0.5) / f64::from(n)).ln()));
        for q in [0.5f64, 0.9, 0.95, 0.99, 0.999] {
            let truth = -mean * (1.0 - q).ln();
            let estimate = sample.quantile(q).expect("requests were observed");
            let bucket = latency_bucket(truth);
            assert_eq!(
                latency_bucket(estimate),
                bucket,
                "q={q}: {estimate} vs {truth}"
            );
            let width =
                LATENCY_BOUNDS[bucket] - bucket.checked_sub(1).map_or(0.0, |i| LATENCY_BOUNDS[i]);
            assert!(
                (estimate - truth).abs() < width,
                "q={q}: {estimate} vs {truth}"
            );
        }
    }

    #[test]
    fn quantile_of_a_uniform_distribution_is_close() {
        // Latencies spread evenly over 0..1 s match the interpolation's assumption, so the
        // estimates are within a millisecond of the truth.
        let sample = observed((0..10_000).map(|i| (f64::from(i) + 0.5) / 10_000.0));
        for q in [0.1, 0.5, 0.9, 0.99] {
            let estimate = sample.quantile(q).expect("requests were observed");
            assert!((estimate - q).abs() < 1e-3, "q={q}: {estimate}");
        }
    }
}
