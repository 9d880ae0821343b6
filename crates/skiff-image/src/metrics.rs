//! Image metrics, registered under the `skiff_image_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of per-registry metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    /// The registry host.
    pub registry: String,
}

/// Labels of pull outcomes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The registry host.
    pub registry: String,
    /// `success` or `failure`.
    pub outcome: String,
}

/// Labels of pull failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The registry host.
    pub registry: String,
    /// A short reason: `unreachable`, `not_found`, `unauthorized`, `throttled`, `corrupt`, ….
    pub reason: String,
}

/// The image component's metrics.
#[derive(Debug, Clone)]
pub struct ImageMetrics {
    /// Pulls by registry and outcome.
    pub pulls: Family<OutcomeLabels, Counter>,
    /// Failed pulls by registry and reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Pull durations by registry.
    pub pull_seconds: Family<RegistryLabel, Histogram>,
    /// Bytes downloaded by registry.
    pub bytes: Family<RegistryLabel, Counter>,
    /// Layers found already unpacked (no download).
    pub layers_cached: Counter,
}

impl ImageMetrics {
    /// Creates the metrics and registers them in `registry` (give it a `skiff_image`
    /// sub-registry).
    pub fn new(registry: &mut Registry) -> Self {
        let m = ImageMetrics {
            pulls: Family::default(),
            failures: Family::default(),
            pull_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 14))
            }),
            bytes: Family::default(),
            layers_cached: Counter::default(),
        };
        registry.register(
            "pulls",
            "Image pulls by registry and outcome",
            m.pulls.clone(),
        );
        registry.register(
            "pull_failures",
            "Failed image pulls by registry and reason",
            m.failures.clone(),
        );
        registry.register_with_unit(
            "pull_duration",
            "Image pull duration",
            Unit::Seconds,
            m.pull_seconds.clone(),
        );
        registry.register_with_unit(
            "pull",
            "Bytes downloaded from registries",
            Unit::Bytes,
            m.bytes.clone(),
        );
        registry.register(
            "layers_cached",
            "Layers already present when a pull needed them",
            m.layers_cached.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }
}
