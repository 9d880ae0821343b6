//! What skiff keeps of each request that reached a revision: a line in the revision's
//! request log ([`log`]), and, when traces are on, its spans exported over OTLP/HTTP
//! ([`spans`]) if the head sampler chose it or it failed, was slow or cold started
//! ([`sampler`]).
//!
//! # Design
//! The router calls [`RequestTelemetry`] (its [`RequestObserver`]) at the end of every request,
//! on its own threads: the record is pushed onto a bounded batch under a mutex and nothing
//! else happens there, in particular no thread is woken. One worker thread wakes every
//! [`BATCH_EVERY`] (or when the batch is half full), takes the batch, writes its request log
//! lines with one write per file and hands kept spans to OpenTelemetry's batch processor,
//! whose own thread exports them. A full batch drops the record and counts it
//! (`skiff_request_records_dropped_total`): the router never waits for telemetry. Waking
//! the worker for each request instead cost a context switch and a write per request, which
//! at one connection doubled the router's added latency. Span ids are the router's, made at the request's start, because the instance
//! got one of them as its parent in `traceparent`; so spans are built as `SpanData` here
//! rather than through a tracer, which would pick its own ids.

pub mod export;
pub mod log;
pub mod sampler;
pub mod spans;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// How often the worker takes the records waiting: a request's line is on disk, and its
/// spans with the exporter, this long after it ended at most (plus the write).
pub const BATCH_EVERY: Duration = Duration::from_millis(100);

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
    /// Gets every batch of records, when set (the rollouts' request windows).
    pub sink: Option<Arc<dyn RecordSink>>,
}

/// Gets every batch of records the worker takes, on the worker's thread, before they are
/// written: it must be quick (it holds up request logs and traces, never the router).
pub trait RecordSink: Send + Sync + std::fmt::Debug + 'static {
    /// Records of requests that ended.
    fn took(&self, records: &[RequestRecord]);
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

/// The records waiting for the worker, and how it is told to stop.
#[derive(Default)]
struct Batch {
    records: Mutex<Vec<RequestRecord>>,
    stop: AtomicBool,
}

/// The router's observer: request logs and traces.
pub struct RequestTelemetry {
    batch: Arc<Batch>,
    sampler: Option<Sampler>,
    metrics: Metrics,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
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
        let batch = Arc::new(Batch::default());
        let worker = Worker {
            log: settings.request_logs.then(|| {
                log::RequestLog::new(&settings.log_dir, settings.max_bytes, settings.keep)
            }),
            export,
            lookup,
            metrics: metrics.clone(),
            log_failed: false,
            sink: settings.sink.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("skiff-requests".into())
            .spawn({
                let batch = batch.clone();
                move || worker.run(&batch)
            })
            .map_err(ExportError::Thread)?;
        Ok(Arc::new(RequestTelemetry {
            batch,
            sampler: settings.traces.map(|t| t.sampler),
            metrics,
            worker: Mutex::new(Some(handle)),
        }))
    }

    /// Writes what is pending, exports the spans kept and stops the worker. Blocking.
    pub fn shutdown(&self) {
        self.batch.stop.store(true, Ordering::Release);
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl RequestObserver for RequestTelemetry {
    fn finished(&self, record: RequestRecord) {
        let mut records = self.batch.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= QUEUE {
            drop(records);
            self.metrics.dropped.inc();
            return;
        }
        records.push(record);
        let wake = records.len() == QUEUE / 2;
        drop(records);
        if wake {
            // Half full before its time: the worker takes it now.
            if let Some(h) = self
                .worker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                h.thread().unpark();
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
    log_failed: bool,
    sink: Option<Arc<dyn RecordSink>>,
}

impl Worker {
    fn run(mut self, batch: &Batch) {
        let mut taken = Vec::new();
        loop {
            std::thread::park_timeout(BATCH_EVERY);
            let stop = batch.stop.load(Ordering::Acquire);
            std::mem::swap(
                &mut taken,
                &mut batch.records.lock().unwrap_or_else(|p| p.into_inner()),
            );
            if let Some(sink) = &self.sink
                && !taken.is_empty()
            {
                sink.took(&taken);
            }
            for r in taken.drain(..) {
                self.one(r);
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

    fn one(&mut self, r: RequestRecord) {
        if let Some(export) = &self.export
            && let Some(why) =
                sampler::keep(&r, || self.lookup.slow_after(&r.namespace, &r.service))
        {
            let startup = match (&r.instance, r.cold_start) {
                (Some(i), Some(_)) => self.lookup.startup(i),
                _ => None,
            };
            if export.send(&r, why, startup.as_ref()) {
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
        let Some(l) = &mut self.log else { return };
        let revision = r.revision.clone();
        match l.append(r) {
            Ok(()) => self.log_failed = false,
            Err(e) if !self.log_failed => {
                self.log_failed = true;
                tracing::warn!(%revision, error = %e, "writing the request log failed; request lines are lost until it works again");
            }
            Err(_) => {}
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
