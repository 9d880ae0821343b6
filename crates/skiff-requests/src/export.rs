//! The OTLP/HTTP (protobuf) export: `opentelemetry-otlp`'s span exporter with its blocking
//! client, behind the SDK's batch processor (`OTEL_BSP_*` set its queue and delays), counted
//! for `skiff_trace_spans_exported_total`.

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor};
use skiff_router::record::RequestRecord;

use crate::Metrics;
use crate::sampler::Keep;
use crate::spans::{Startup, spans};

/// The export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The exporter refused its settings (a bad endpoint).
    #[error("the OTLP exporter for `{endpoint}`: {source}")]
    Build {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The worker thread did not start.
    #[error("starting the request telemetry thread")]
    Thread(#[source] std::io::Error),
}

/// Counts what the wrapped exporter sent and what failed.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    metrics: Metrics,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let out = self.inner.export(batch).await;
        match &out {
            Ok(()) => {
                self.metrics.spans_exported.inc_by(n);
            }
            Err(e) => {
                self.metrics.spans_failed.inc_by(n);
                tracing::debug!(error = %e, spans = n, "OTLP export failed");
            }
        }
        out
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Kept requests' spans, on their way to the collector.
#[derive(Debug)]
pub struct TraceExport {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

impl TraceExport {
    /// An export to the OTLP/HTTP traces URL `endpoint`. The resource is OpenTelemetry's
    /// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), `service.name` `skiff` by default.
    pub fn new(endpoint: &str, metrics: &Metrics) -> Result<TraceExport, ExportError> {
        // reqwest is built without a TLS provider of its own; skiff's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let inner = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| ExportError::Build {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let mut processor = BatchSpanProcessor::builder(Counted {
            inner,
            metrics: metrics.clone(),
        })
        .build();
        let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
            Resource::builder().build()
        } else {
            Resource::builder().with_service_name("skiff").build()
        };
        processor.set_resource(&resource);
        Ok(TraceExport {
            processor,
            scope: InstrumentationScope::builder("skiff-router")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Queues `r`'s spans, kept for `why`; false when it was not traced.
    pub fn send(&self, r: &RequestRecord, why: Keep, startup: Option<&Startup>) -> bool {
        let mut new_id = || rand::random::<u64>() | 1;
        let Some(spans) = spans(r, why, startup, &self.scope, &mut new_id) else {
            return false;
        };
        for s in spans {
            self.processor.on_end(s);
        }
        true
    }

    /// Exports what is queued now. Blocking.
    pub fn flush(&self) {
        let _ = self.processor.force_flush();
    }

    /// Exports what is queued and stops. Blocking (bounded by the processor's timeout).
    pub fn shutdown(self) {
        let _ = self.processor.shutdown();
    }
}
