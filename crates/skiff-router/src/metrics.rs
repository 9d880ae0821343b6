//! Router metrics under `skiff_router_`: requests by service, revision and status class,
//! latency, activator waits and queue depth, cold starts.
//!
//! Every series is labelled with its revision ([`RevisionLabels`]) and lives as long as the
//! revision: [`RouterMetrics::handles`] creates a revision's series when its pool is made,
//! [`RouterMetrics::forget_revision`] removes all of them when the revision is deleted (not
//! when it scales to zero), so `/metrics` does not keep deleted Services.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of request metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub code_class: String,
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

    fn with_class(&self, code_class: &str) -> RequestLabels {
        RequestLabels {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            revision: self.revision.clone(),
            code_class: code_class.to_owned(),
        }
    }
}

/// The status classes requests are counted by, in [`PoolHandles::by_class`] order.
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The router's metrics.
#[derive(Debug, Clone)]
pub struct RouterMetrics {
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency.
    pub duration: Family<RevisionLabels, Histogram>,
    /// Time requests waited in the activator for an instance.
    pub queue_wait: Family<RevisionLabels, Histogram>,
    /// Requests refused by the activator (queue full or waited too long).
    pub rejected: Family<RevisionLabels, Counter>,
    /// Cold starts (a request that waited while the revision had no instance).
    pub cold_starts: Family<RevisionLabels, Counter>,
    /// Their duration.
    pub cold_start_duration: Family<RevisionLabels, Histogram>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl RouterMetrics {
    /// Registers the metrics in `registry` (give it a `skiff_router` sub-registry).
    pub fn new(registry: &mut Registry) -> Self {
        let m = RouterMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
            queue_wait: Family::new_with_constructor(latency),
            rejected: Family::default(),
            cold_starts: Family::default(),
            cold_start_duration: Family::new_with_constructor(latency),
        };
        registry.register(
            "requests",
            "Requests answered, by status class",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Request latency through the router",
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
            "activator_rejected",
            "Requests refused by the activator",
            m.rejected.clone(),
        );
        registry.register(
            "cold_starts",
            "Requests that waited for an instance to start from zero",
            m.cold_starts.clone(),
        );
        registry.register_with_unit(
            "cold_start_duration",
            "How long cold-start requests waited",
            Unit::Seconds,
            m.cold_start_duration.clone(),
        );
        m
    }

    /// Metrics registered nowhere.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    /// The metrics of one revision, looked up once (requests then update them without
    /// hashing labels).
    pub fn handles(&self, spec: &crate::PoolSpec) -> PoolHandles {
        let rl = RevisionLabels::of(spec);
        PoolHandles {
            by_class: CODE_CLASSES.map(|c| self.requests.get_or_create_owned(&rl.with_class(c))),
            duration: self.duration.get_or_create_owned(&rl),
            queue_wait: self.queue_wait.get_or_create_owned(&rl),
            rejected: self.rejected.get_or_create_owned(&rl),
            cold_starts: self.cold_starts.get_or_create_owned(&rl),
            cold_start_duration: self.cold_start_duration.get_or_create_owned(&rl),
            labels: rl,
        }
    }

    /// Removes every series of a revision (each family, each status class) from the
    /// exposition. Handles still held keep counting into nothing; [`RouterMetrics::handles`]
    /// for the same revision starts its series again from zero.
    pub fn forget_revision(&self, rl: &RevisionLabels) {
        for c in CODE_CLASSES {
            self.requests.remove(&rl.with_class(c));
        }
        self.duration.remove(rl);
        self.queue_wait.remove(rl);
        self.rejected.remove(rl);
        self.cold_starts.remove(rl);
        self.cold_start_duration.remove(rl);
    }
}

/// One revision's metric handles.
#[derive(Debug, Clone)]
pub struct PoolHandles {
    /// Requests answered, by status class 1xx–5xx.
    pub by_class: [Counter; 5],
    /// Request latency.
    pub duration: Histogram,
    /// Activator waits.
    pub queue_wait: Histogram,
    /// Activator refusals.
    pub rejected: Counter,
    /// Cold starts.
    pub cold_starts: Counter,
    /// Their duration.
    pub cold_start_duration: Histogram,
    /// The labels they were made with, to forget them by.
    pub labels: RevisionLabels,
}

impl PoolHandles {
    /// Counts an answer.
    pub fn answered(&self, status: http::StatusCode) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].inc();
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
            h.answered(http::StatusCode::OK);
            h.answered(http::StatusCode::SERVICE_UNAVAILABLE);
            h.duration.observe(0.01);
            h.queue_wait.observe(0.5);
            h.rejected.inc();
            h.cold_starts.inc();
            h.cold_start_duration.observe(0.5);
        }
        let before = render(&registry);
        // Six families; requests has one series per class, the histograms a line a bucket.
        assert!(before.contains(r#"revision="alpha-00001""#), "{before}");
        for class in CODE_CLASSES {
            assert!(
                before.contains(&format!(
                    r#"skiff_router_requests_total{{namespace="default",service="alpha",revision="alpha-00001",code_class="{class}"}}"#
                )),
                "{before}"
            );
        }

        m.forget_revision(&a.labels);

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
        a.answered(http::StatusCode::OK);
        assert!(!render(&registry).contains("alpha"));
    }

    /// A revision made again after it was forgotten starts its series from zero.
    #[test]
    fn a_revision_made_again_starts_from_zero() {
        let mut registry = Registry::with_prefix("skiff_router");
        let m = RouterMetrics::new(&mut registry);
        let s = spec("alpha", "alpha-00001");
        let old = m.handles(&s);
        old.answered(http::StatusCode::OK);
        m.forget_revision(&old.labels);
        let new = m.handles(&s);
        assert_eq!(new.by_class[1].get(), 0);
        let text = render(&registry);
        assert!(
            text.contains(
                r#"skiff_router_requests_total{namespace="default",service="alpha",revision="alpha-00001",code_class="2xx"} 0"#
            ),
            "{text}"
        );
    }
}
