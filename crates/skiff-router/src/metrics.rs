//! Router metrics under `skiff_router_`: requests by status code, latency (with the trace id
//! as an exemplar), activator waits, refusals by reason, cold starts; and a [`Tally`] per
//! revision that the daemon's history drains every few seconds.
//!
//! Every series is labelled with its revision ([`RevisionLabels`]) and lives as long as the
//! revision: [`RouterMetrics::handles`] creates a revision's series when its pool is made,
//! [`RouterMetrics::forget_revision`] removes all of them when the revision is deleted (not
//! when it scales to zero), so `/metrics` does not keep deleted Services. Status codes are a
//! bounded label: a code outside 100–599 is counted as 500.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The request-latency histogram's bucket bounds, in seconds. Latency SLOs name one of them
/// (`skiff.dev/slo-latency`), so Prometheus rules can read `_bucket{le=…}`; the history
/// keeps counts per bucket with the same bounds.
pub const LATENCY_BUCKETS: [f64; 22] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Labels of request counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
    /// The status code, e.g. `200`.
    pub code: String,
    /// `1xx` to `5xx`.
    pub code_class: String,
}

/// Why the router refused a request itself (429 or 503 without reaching an instance).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Throttle {
    /// The activator's queue was full.
    QueueFull,
    /// No instance had room within the queue timeout.
    QueueTimeout,
    /// As `QueueTimeout`, while the revision ran at its max scale.
    MaxScale,
    /// The Service's budget is spent: scale-up stopped.
    Budget,
}

impl Throttle {
    /// The label value: `queue_full`, `queue_timeout`, `max_scale`, `budget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Throttle::QueueFull => "queue_full",
            Throttle::QueueTimeout => "queue_timeout",
            Throttle::MaxScale => "max_scale",
            Throttle::Budget => "budget",
        }
    }
}

impl EncodeLabelValue for Throttle {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
    /// Why.
    pub reason: Throttle,
}

/// The exemplar on a latency bucket: the request's trace.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    /// W3C trace id, 32 hex digits.
    pub trace_id: String,
}

/// Labels of per-revision metrics (the router's and the autoscaler's).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
}

impl RevisionLabels {
    /// The labels of a revision's pool.
    pub fn of(spec: &crate::PoolSpec) -> Self {
        RevisionLabels {
            namespace: spec.namespace.clone(),
            service: spec.service.clone(),
            revision: spec.revision.clone(),
        }
    }

    fn with_code(&self, code: u16) -> RequestLabels {
        RequestLabels {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            revision: self.revision.clone(),
            code: code.to_string(),
            code_class: format!("{}xx", code / 100),
        }
    }

    fn with_reason(&self, reason: Throttle) -> ThrottleLabels {
        ThrottleLabels {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            revision: self.revision.clone(),
            reason,
        }
    }
}

const THROTTLES: [Throttle; 4] = [
    Throttle::QueueFull,
    Throttle::QueueTimeout,
    Throttle::MaxScale,
    Throttle::Budget,
];

/// Status codes whose series exist before any request.
const PRESET_CODES: [u16; 2] = [200, 500];

/// The router's metrics.
#[derive(Debug, Clone)]
pub struct RouterMetrics {
    /// Requests answered, by status code (M1, M4).
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency, from the request's arrival to its response's end (M2).
    pub duration: Family<RevisionLabels, HistogramWithExemplars<TraceLabel>>,
    /// Time requests waited in the activator for an instance.
    pub queue_wait: Family<RevisionLabels, Histogram>,
    /// Requests the router refused itself, by reason (M11).
    pub throttled: Family<ThrottleLabels, Counter>,
    /// Cold starts (an instance made ready while requests waited for a revision at zero).
    pub cold_starts: Family<RevisionLabels, Counter>,
    /// Their duration.
    pub cold_start_duration: Family<RevisionLabels, Histogram>,
    /// Requests that waited for an instance to start (M3).
    pub cold_start_requests: Family<RevisionLabels, Counter>,
}

fn latency() -> HistogramWithExemplars<TraceLabel> {
    HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter())
}

fn wait() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl RouterMetrics {
    /// Registers the metrics in `registry` (give it a `skiff_router` sub-registry).
    pub fn new(registry: &mut Registry) -> Self {
        let m = RouterMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
            queue_wait: Family::new_with_constructor(wait),
            throttled: Family::default(),
            cold_starts: Family::default(),
            cold_start_duration: Family::new_with_constructor(wait),
            cold_start_requests: Family::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by status code",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Request latency through the router, to the response's end",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register_with_unit(
            "activator_wait",
            "Time requests waited for an instance",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        registry.register(
            "throttled",
            "Requests the router refused itself, by reason",
            m.throttled.clone(),
        );
        registry.register(
            "cold_starts",
            "Instances made ready while requests waited for a revision at zero",
            m.cold_starts.clone(),
        );
        registry.register_with_unit(
            "cold_start_duration",
            "How long a cold start kept its first request waiting",
            Unit::Seconds,
            m.cold_start_duration.clone(),
        );
        registry.register(
            "cold_start_requests",
            "Requests that waited for an instance to start",
            m.cold_start_requests.clone(),
        );
        m
    }

    /// Metrics registered nowhere.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    /// The metrics of one revision, looked up once (requests then update them without
    /// hashing labels, except the first time a status code is seen). The series of 200 and
    /// 500 exist from the start, at 0, so error ratios and `rate()` have both from the first
    /// request.
    pub fn handles(&self, spec: &crate::PoolSpec) -> PoolHandles {
        let rl = RevisionLabels::of(spec);
        let codes = PRESET_CODES
            .map(|c| (c, self.requests.get_or_create_owned(&rl.with_code(c))))
            .to_vec();
        PoolHandles {
            requests: self.requests.clone(),
            codes: RwLock::new(codes),
            duration: self.duration.get_or_create_owned(&rl),
            queue_wait: self.queue_wait.get_or_create_owned(&rl),
            throttled: THROTTLES.map(|t| self.throttled.get_or_create_owned(&rl.with_reason(t))),
            cold_starts: self.cold_starts.get_or_create_owned(&rl),
            cold_start_duration: self.cold_start_duration.get_or_create_owned(&rl),
            cold_start_requests: self.cold_start_requests.get_or_create_owned(&rl),
            tally: Tally::default(),
            labels: rl,
        }
    }

    /// Removes every series of a revision (each family, each status code) from the
    /// exposition. Handles still held keep counting into nothing; [`RouterMetrics::handles`]
    /// for the same revision starts its series again from zero.
    pub fn forget_revision(&self, h: &PoolHandles) {
        let rl = &h.labels;
        for (code, _) in h.codes.read().unwrap_or_else(|p| p.into_inner()).iter() {
            self.requests.remove(&rl.with_code(*code));
        }
        for t in THROTTLES {
            self.throttled.remove(&rl.with_reason(t));
        }
        self.duration.remove(rl);
        self.queue_wait.remove(rl);
        self.cold_starts.remove(rl);
        self.cold_start_duration.remove(rl);
        self.cold_start_requests.remove(rl);
    }
}

/// What one revision's requests did since the last [`Tally::take`]: counters the router
/// adds to with relaxed atomics, for the daemon's history.
#[derive(Debug, Default)]
pub struct Tally {
    by_class: [AtomicU64; 5],
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    cold_start_requests: AtomicU64,
    throttled: AtomicU64,
}

/// A [`Tally`] read and reset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TallySnapshot {
    /// Answers by status class, 1xx to 5xx.
    pub by_class: [u64; 5],
    /// Answers per latency bucket (not cumulative; the last is above the last bound).
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
    /// Requests that waited for a cold start.
    pub cold_start_requests: u64,
    /// Requests the router refused itself.
    pub throttled: u64,
}

impl TallySnapshot {
    /// Nothing happened.
    pub fn is_empty(&self) -> bool {
        *self == TallySnapshot::default()
    }
}

impl Tally {
    /// Reads the counters and sets them to zero.
    pub fn take(&self) -> TallySnapshot {
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        TallySnapshot {
            by_class: self.by_class.each_ref().map(take),
            latency: self.latency.each_ref().map(take),
            cold_start_requests: take(&self.cold_start_requests),
            throttled: take(&self.throttled),
        }
    }
}

/// The latency bucket of `seconds`: the first bound at or above it.
fn bucket_of(seconds: f64) -> usize {
    LATENCY_BUCKETS.partition_point(|b| *b < seconds)
}

/// One revision's metric handles.
#[derive(Debug)]
pub struct PoolHandles {
    requests: Family<RequestLabels, Counter>,
    /// The codes seen so far and their counters.
    codes: RwLock<Vec<(u16, Counter)>>,
    /// Request latency.
    pub duration: HistogramWithExemplars<TraceLabel>,
    /// Activator waits.
    pub queue_wait: Histogram,
    /// Refusals, in [`THROTTLES`] order.
    throttled: [Counter; 4],
    /// Cold starts.
    pub cold_starts: Counter,
    /// Their duration.
    pub cold_start_duration: Histogram,
    /// Requests that waited for a cold start.
    pub cold_start_requests: Counter,
    /// What happened since the history last looked.
    pub tally: Tally,
    /// The labels they were made with, to forget them by.
    pub labels: RevisionLabels,
}

impl PoolHandles {
    /// Counts an answer with its latency; `trace_id` becomes the bucket's exemplar.
    pub fn answered(&self, status: http::StatusCode, seconds: f64, trace_id: Option<String>) {
        let code = status.as_u16();
        self.code_counter(code).inc();
        let class = (usize::from(code) / 100).clamp(1, 5) - 1;
        self.tally.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.tally.latency[bucket_of(seconds)].fetch_add(1, Ordering::Relaxed);
        let exemplar = trace_id.map(|trace_id| TraceLabel { trace_id });
        // Exemplars carry the time they were taken (OpenMetrics allows it).
        let at = exemplar.as_ref().map(|_| SystemTime::now());
        self.duration.observe(seconds, exemplar, at);
    }

    /// Requests answered since the revision's series began.
    pub fn answered_total(&self) -> u64 {
        self.codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, c)| c.get())
            .sum()
    }

    /// Counts a refusal (its answer is counted by [`PoolHandles::answered`]).
    pub fn throttled(&self, why: Throttle) {
        let i = THROTTLES.iter().position(|t| *t == why).unwrap_or(0);
        self.throttled[i].inc();
        self.tally.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that waited for a cold start.
    pub fn waited_for_cold_start(&self) {
        self.cold_start_requests.inc();
        self.tally
            .cold_start_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    fn code_counter(&self, code: u16) -> Counter {
        let code = if (100..600).contains(&code) {
            code
        } else {
            500
        };
        if let Some((_, c)) = self
            .codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(k, _)| *k == code)
        {
            return c.clone();
        }
        let mut codes = self.codes.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = codes.iter().find(|(k, _)| *k == code) {
            return c.clone();
        }
        let c = self
            .requests
            .get_or_create_owned(&self.labels.with_code(code));
        codes.push((code, c.clone()));
        c
    }
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(service: &str, revision: &str) -> crate::PoolSpec {
        crate::PoolSpec {
            namespace: "default".into(),
            service: service.into(),
            revision: revision.into(),
            container_concurrency: 0,
            port: 8080,
            h2c: false,
            timeout: Duration::from_secs(300),
            response_start_timeout: None,
            idle_timeout: None,
            unavailable: None,
        }
    }

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    /// Forgetting a revision removes every one of its series (each family, each status
    /// class) from the exposition, and leaves another revision's series as they were.
    #[test]
    fn forget_revision_removes_all_its_series_and_only_them() {
        let mut registry = Registry::with_prefix("skiff_router");
        let m = RouterMetrics::new(&mut registry);
        let a = m.handles(&spec("alpha", "alpha-00001"));
        let b = m.handles(&spec("beta", "beta-00001"));
        for h in [&a, &b] {
            h.answered(http::StatusCode::OK, 0.01, Some("ab".repeat(16)));
            h.answered(http::StatusCode::SERVICE_UNAVAILABLE, 0.2, None);
            h.queue_wait.observe(0.5);
            h.throttled(Throttle::QueueFull);
            h.cold_starts.inc();
            h.cold_start_duration.observe(0.5);
            h.waited_for_cold_start();
        }
        let before = render(&registry);
        // Requests have one series per code seen, the histograms a line a bucket.
        assert!(before.contains(r#"revision="alpha-00001""#), "{before}");
        for (code, class) in [("200", "2xx"), ("503", "5xx")] {
            assert!(
                before.contains(&format!(
                    r#"skiff_router_requests_total{{namespace="default",service="alpha",revision="alpha-00001",code="{code}",code_class="{class}"}} 1"#
                )),
                "{before}"
            );
        }
        assert!(before.contains(r#"reason="queue_full"} 1"#), "{before}");

        m.forget_revision(&a);

        let after = render(&registry);
        assert!(!after.contains("alpha"), "{after}");
        let beta_lines = |text: &str| {
            text.lines()
                .filter(|l| l.contains(r#"revision="beta-00001""#))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(beta_lines(&after), beta_lines(&before));
        assert!(!beta_lines(&after).is_empty());
        // A handle kept past the forgetting counts into nothing: the series stay gone.
        a.answered(http::StatusCode::OK, 0.01, None);
        assert!(!render(&registry).contains("alpha"));
    }

    /// A revision made again after it was forgotten starts its series from zero.
    #[test]
    fn a_revision_made_again_starts_from_zero() {
        let mut registry = Registry::with_prefix("skiff_router");
        let m = RouterMetrics::new(&mut registry);
        let s = spec("alpha", "alpha-00001");
        let old = m.handles(&s);
        old.answered(http::StatusCode::OK, 0.01, None);
        m.forget_revision(&old);
        let new = m.handles(&s);
        new.answered(http::StatusCode::OK, 0.01, None);
        let text = render(&registry);
        assert!(
            text.contains(
                r#"skiff_router_requests_total{namespace="default",service="alpha",revision="alpha-00001",code="200",code_class="2xx"} 1"#
            ),
            "{text}"
        );
    }

    /// The tally counts answers by class and latency bucket (a value on a bound is in that
    /// bound's bucket, as `le` says), refusals and cold-start waits, and `take` resets it.
    #[test]
    fn the_tally_counts_and_resets() {
        let m = RouterMetrics::unregistered();
        let h = m.handles(&spec("alpha", "alpha-00001"));
        h.answered(http::StatusCode::OK, 0.3, None);
        h.answered(http::StatusCode::NOT_FOUND, 0.0001, None);
        h.answered(http::StatusCode::BAD_GATEWAY, 1000.0, None);
        h.throttled(Throttle::Budget);
        h.waited_for_cold_start();
        let t = h.tally.take();
        assert_eq!(t.by_class, [0, 1, 0, 1, 1]);
        let at_300ms = LATENCY_BUCKETS
            .iter()
            .position(|b| *b == 0.3)
            .expect("a bound");
        assert_eq!(t.latency[at_300ms], 1);
        assert_eq!(t.latency[0], 1);
        assert_eq!(t.latency[LATENCY_BUCKETS.len()], 1);
        assert_eq!((t.throttled, t.cold_start_requests), (1, 1));
        assert!(h.tally.take().is_empty());
    }

    /// The latency histogram carries the trace id as an exemplar, in OpenMetrics form.
    #[test]
    fn latency_buckets_carry_the_trace_as_exemplar() {
        let mut registry = Registry::with_prefix("skiff_router");
        let m = RouterMetrics::new(&mut registry);
        let h = m.handles(&spec("alpha", "alpha-00001"));
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736".to_owned();
        h.answered(http::StatusCode::OK, 0.004, Some(trace.clone()));
        let text = render(&registry);
        let line = text
            .lines()
            .find(|l| l.contains(r#"le="0.005""#) && l.contains("request_duration"))
            .expect("the 5 ms bucket");
        assert!(
            line.contains(&format!(r#"# {{trace_id="{trace}"}} 0.004"#)),
            "{line}"
        );
    }
}
