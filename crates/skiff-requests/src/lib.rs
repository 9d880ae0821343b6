//! What skiff keeps of each request that reached a revision: a line in the revision's
//! request log ([`log`]), and, when traces are on, its spans exported over OTLP/HTTP
//! ([`spans`]) if the head sampler chose it or it failed, was slow or cold started
//! ([`sampler`]).
//!
//! # Design
//! The router calls [`RequestTelemetry`] (its [`RequestObserver`]) at the end of every request,
//! on its own threads: the record goes into a bounded channel and nothing else happens
//! there. One worker thread writes the request log and hands kept spans to
//! OpenTelemetry's batch processor, whose own thread exports them. A full channel drops the
//! record and counts it (`skiff_request_records_dropped_total`): the router never waits for
//! telemetry. Span ids are the router's, made at the request's start, because the instance
//! got one of them as its parent in `traceparent`; so spans are built as `SpanData` here
//! rather than through a tracer, which would pick its own ids.

pub mod export;
pub mod log;
pub mod sampler;
pub mod spans;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use skiff_router::record::{RequestObserver, RequestRecord};

pub use export::{ExportError, TraceExport};
pub use sampler::{Keep, Sampler, SamplerError};
pub use spans::Startup;

/// Records waiting for the worker at most; more are dropped and counted.
const QUEUE: usize = 16_384;

/// What the worker asks the rest of the daemon.
pub trait Lookup: Send + Sync + 'static {
    /// How `instance`'s start was spent, if known.
    fn startup(&self, instance: &str) -> Option<Startup>;
    /// The latency SLO threshold of a Service, if it has one: slower requests are kept.
    fn slow_after(&self, namespace: &str, service: &str) -> Option<Duration>;
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where request logs go (the container logs' directory).
    pub log_dir: PathBuf,
    /// Whether request logs are written.
    pub request_logs: bool,
    /// Rotate a request log at this size.
    pub max_bytes: u64,
    /// Rotated request logs kept.
    pub keep: usize,
    /// Traces, when on.
    pub traces: Option<TraceSettings>,
}

/// Where and which traces go.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// The head sampler.
    pub sampler: Sampler,
}

/// The M14 metrics and the drop counter.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Spans the collector accepted (`skiff_trace_spans_exported_total`).
    pub spans_exported: Counter<u64, AtomicU64>,
    /// Spans whose export failed (`skiff_trace_spans_export_failed_total`).
    pub spans_failed: Counter<u64, AtomicU64>,
    /// Requests whose traces were kept, by why (`skiff_trace_requests_sampled_total`).
    pub sampled: Family<SampledLabels, Counter<u64, AtomicU64>>,
    /// Records the worker could not take (`skiff_request_records_dropped_total`).
    pub dropped: Counter<u64, AtomicU64>,
}

/// Labels of `skiff_trace_requests_sampled_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SampledLabels {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision.
    pub revision: String,
    /// `head`, `error`, `slow` or `cold_start`.
    pub reason: String,
}

impl Metrics {
    /// The metrics, registered under `skiff_` in `r`.
    pub fn new(r: &mut Registry) -> Self {
        let m = Metrics::default();
        r.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            m.spans_exported.clone(),
        );
        r.register(
            "trace_spans_export_failed",
            "Spans whose OTLP export failed (collector down or refusing)",
            m.spans_failed.clone(),
        );
        r.register(
            "trace_requests_sampled",
            "Requests whose traces were kept, by why: head (the sampler), error, slow (over the latency SLO) or cold_start; over skiff_router_requests_total it is the sampling ratio",
            m.sampled.clone(),
        );
        r.register(
            "request_records_dropped",
            "Requests left out of request logs and traces because their writer fell behind",
            m.dropped.clone(),
        );
        m
    }
}

enum Msg {
    Record(Box<RequestRecord>),
    Stop,
}

/// The router's observer: request logs and traces.
pub struct RequestTelemetry {
    tx: SyncSender<Msg>,
    sampler: Option<Sampler>,
    metrics: Metrics,
    worker: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for RequestTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTelemetry")
            .field("sampler", &self.sampler)
            .finish()
    }
}

impl RequestTelemetry {
    /// Starts the worker (and the exporter, when traces are on).
    pub fn start(
        settings: Settings,
        lookup: Arc<dyn Lookup>,
        metrics: Metrics,
    ) -> Result<Arc<RequestTelemetry>, ExportError> {
        let export = settings
            .traces
            .as_ref()
            .map(|t| TraceExport::new(&t.endpoint, &metrics))
            .transpose()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let worker = Worker {
            log: settings.request_logs.then(|| {
                log::RequestLog::new(&settings.log_dir, settings.max_bytes, settings.keep)
            }),
            export,
            lookup,
            metrics: metrics.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("skiff-requests".into())
            .spawn(move || worker.run(rx))
            .map_err(ExportError::Thread)?;
        Ok(Arc::new(RequestTelemetry {
            tx,
            sampler: settings.traces.map(|t| t.sampler),
            metrics,
            worker: std::sync::Mutex::new(Some(handle)),
        }))
    }

    /// Writes what is pending, exports the spans kept and stops the worker. Blocking.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Stop);
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl RequestObserver for RequestTelemetry {
    fn finished(&self, record: RequestRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.dropped.inc();
            }
        }
    }

    fn head_sample(&self, trace_id: u128, parent_sampled: Option<bool>) -> Option<bool> {
        self.sampler.map(|s| s.head(trace_id, parent_sampled))
    }
}

struct Worker {
    log: Option<log::RequestLog>,
    export: Option<TraceExport>,
    lookup: Arc<dyn Lookup>,
    metrics: Metrics,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut log_failed = false;
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(l) = &mut self.log {
                        l.flush();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Take what is queued, then write it out in one go.
            let mut stop = false;
            for m in std::iter::once(first).chain(rx.try_iter().take(QUEUE)) {
                match m {
                    Msg::Record(r) => self.one(&r, &mut log_failed),
                    Msg::Stop => stop = true,
                }
            }
            if let Some(l) = &mut self.log {
                l.flush();
            }
            if stop {
                break;
            }
        }
        if let Some(e) = self.export.take() {
            e.shutdown();
        }
    }

    fn one(&mut self, r: &RequestRecord, log_failed: &mut bool) {
        if let Some(l) = &mut self.log {
            match l.append(r) {
                Ok(()) => *log_failed = false,
                Err(e) if !*log_failed => {
                    *log_failed = true;
                    tracing::warn!(revision = %r.revision, error = %e, "writing the request log failed; request lines are lost until it works again");
                }
                Err(_) => {}
            }
        }
        let Some(export) = &self.export else { return };
        let Some(why) = sampler::keep(r, || self.lookup.slow_after(&r.namespace, &r.service))
        else {
            return;
        };
        let startup = match (&r.instance, r.cold_start) {
            (Some(i), Some(_)) => self.lookup.startup(i),
            _ => None,
        };
        if export.send(r, why, startup.as_ref()) {
            self.metrics
                .sampled
                .get_or_create(&SampledLabels {
                    namespace: r.namespace.clone(),
                    service: r.service.clone(),
                    revision: r.revision.clone(),
                    reason: why.as_str().to_owned(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use skiff_router::record::{RequestRecord, SpanIds};

    /// A warm `GET /hello` answered by `hello-00001`, traced (`sampled`: the head's say).
    pub(crate) fn record(status: u16, sampled: bool) -> RequestRecord {
        RequestRecord {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            duration: Duration::from_millis(3),
            request_id: "req-1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: None,
            spans: Some(SpanIds {
                server: 0x1111,
                upstream: 0x2222,
                sampled,
            }),
            method: "GET".into(),
            host: "hello.default.example.com".into(),
            path: "/hello".into(),
            status,
            bytes: 5,
            complete: true,
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            instance: Some("hello-00001-abc".into()),
            cold_start: None,
            waited: Duration::ZERO,
            throttled: None,
        }
    }
}
