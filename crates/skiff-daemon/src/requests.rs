//! Request logs and traces wired to the daemon: the router's observer
//! ([`skiff_requests::RequestTelemetry`]), with instance start phases from the runtime and
//! latency SLO thresholds from the SLO engine.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skiff_requests::{Lookup, RequestTelemetry, Settings, Startup, TraceSettings};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;

/// How often the latency thresholds are read again from the SLO engine (it evaluates
/// every 10 s).
const THRESHOLDS_EVERY: Duration = Duration::from_secs(10);

/// Latency thresholds by namespace, then Service (looked up without allocating).
type Thresholds = Arc<RwLock<HashMap<String, HashMap<String, Duration>>>>;

struct DaemonLookup {
    runtime: Arc<skiff_runtime::Runtime>,
    thresholds: Thresholds,
}

impl Lookup for DaemonLookup {
    fn startup(&self, instance: &str) -> Option<Startup> {
        startup_of(&self.runtime.instance(instance)?.status())
    }

    fn slow_after(&self, namespace: &str, service: &str) -> Option<Duration> {
        let t = self.thresholds.read().unwrap_or_else(|p| p.into_inner());
        t.get(namespace)?.get(service).copied()
    }
}

/// An instance's start phases from its status (none for one re-adopted after a restart).
fn startup_of(s: &skiff_api::wire::InstanceStatus) -> Option<Startup> {
    let p = s.startup.as_ref()?;
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1e3);
    Some(Startup {
        scheduled: std::time::UNIX_EPOCH + Duration::from_nanos(p.scheduled_unix_nanos),
        image: ms(p.image_ms),
        container: ms(p.container_ms),
        ready: p.ready_ms.map(ms),
    })
}

/// Every Service's latency SLO threshold, as the engine last evaluated them.
fn thresholds(slo: &skiff_control::slo::SloEngine) -> HashMap<String, HashMap<String, Duration>> {
    let mut out: HashMap<String, HashMap<String, Duration>> = HashMap::new();
    for s in slo.services(None) {
        let Some(t) = s
            .report
            .as_ref()
            .and_then(|r| r.objectives.iter().find_map(|o| o.threshold_seconds))
        else {
            continue;
        };
        out.entry(s.namespace)
            .or_default()
            .insert(s.service, Duration::from_secs_f64(t));
    }
    out
}

/// Request records into the rollouts' windows.
#[derive(Debug)]
struct RolloutSink(Arc<skiff_control::rollout::RolloutWindows>);

impl skiff_requests::RecordSink for RolloutSink {
    fn took(&self, records: &[skiff_router::record::RequestRecord]) {
        self.0.took(records);
    }
}

/// Starts request logs and traces as configured, with the rollouts' request windows, and
/// sets them as the router's observer. A trace export that cannot be set up is logged and
/// left off.
pub fn start(
    config: &Config,
    runtime: Arc<skiff_runtime::Runtime>,
    router: &skiff_router::Router,
    slo: Arc<skiff_control::slo::SloEngine>,
    windows: Arc<skiff_control::rollout::RolloutWindows>,
    metrics: &skiff_telemetry::Metrics,
    stop: CancellationToken,
) -> Option<Arc<RequestTelemetry>> {
    let c = &config.requests;
    let traces = c.traces_url().map(|endpoint| TraceSettings {
        endpoint,
        sampler: c.sampler(),
    });
    let sink: Arc<dyn skiff_requests::RecordSink> = Arc::new(RolloutSink(windows));
    let thresholds: Thresholds = Arc::default();
    // Rotated like the container logs beside them.
    let rotation = skiff_runtime::logs::Rotation::default();
    let settings = Settings {
        log_dir: runtime.logs().dir().to_path_buf(),
        request_logs: c.request_logs,
        max_bytes: rotation.max_bytes,
        keep: rotation.keep,
        traces: traces.clone(),
        sink: Some(sink.clone()),
    };
    let m = metrics.register_root(skiff_requests::Metrics::new);
    let lookup = Arc::new(DaemonLookup {
        runtime,
        thresholds: thresholds.clone(),
    });
    let telemetry = match RequestTelemetry::start(settings, lookup.clone(), m.clone()) {
        Ok(t) => {
            if let Some(t) = &traces {
                info!(endpoint = %t.endpoint, sampler = ?t.sampler, "exporting traces over OTLP/HTTP");
            }
            t
        }
        Err(e) => {
            warn!(error = %skiff_telemetry::ErrorChain(&e), "traces are off: their export could not be set up");
            let settings = Settings {
                log_dir: lookup.runtime.logs().dir().to_path_buf(),
                request_logs: c.request_logs,
                max_bytes: rotation.max_bytes,
                keep: rotation.keep,
                traces: None,
                sink: Some(sink),
            };
            RequestTelemetry::start(settings, lookup, m)
                .inspect_err(
                    |e| warn!(error = %skiff_telemetry::ErrorChain(e), "request logs are off"),
                )
                .ok()?
        }
    };
    tokio::spawn(async move {
        loop {
            *thresholds.write().unwrap_or_else(|p| p.into_inner()) = self::thresholds(&slo);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(THRESHOLDS_EVERY) => {}
            }
        }
    });
    router.set_observer(telemetry.clone());
    Some(telemetry)
}
