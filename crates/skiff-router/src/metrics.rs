//! Router metrics under `skiff_router_`: requests by service, revision and status class,
//! latency, activator waits and queue depth, cold starts.

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

/// Labels of per-revision metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
}

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
        let rl = RevisionLabels {
            namespace: spec.namespace.clone(),
            service: spec.service.clone(),
            revision: spec.revision.clone(),
        };
        let class = |c: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    namespace: rl.namespace.clone(),
                    service: rl.service.clone(),
                    revision: rl.revision.clone(),
                    code_class: c.to_owned(),
                })
                .clone()
        };
        PoolHandles {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.duration.get_or_create(&rl).clone(),
            queue_wait: self.queue_wait.get_or_create(&rl).clone(),
            rejected: self.rejected.get_or_create(&rl).clone(),
            cold_starts: self.cold_starts.get_or_create(&rl).clone(),
            cold_start_duration: self.cold_start_duration.get_or_create(&rl).clone(),
        }
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
}

impl PoolHandles {
    /// Counts an answer.
    pub fn answered(&self, status: http::StatusCode) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].inc();
    }
}
