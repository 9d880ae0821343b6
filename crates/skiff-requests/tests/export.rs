//! Request telemetry end to end without a daemon: records in, request log lines and OTLP
//! spans out, at a real HTTP receiver decoding them with `opentelemetry-proto`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff_requests::{
    Lookup, Metrics, RequestTelemetry, Sampler, Settings, Startup, TraceSettings, log,
};
use skiff_router::record::{RequestObserver, RequestRecord, SpanIds};
use skiff_test_utils::otlp::OtlpReceiver;

struct Fixed;

impl Lookup for Fixed {
    fn startup(&self, _instance: &str) -> Option<Startup> {
        Some(Startup {
            scheduled: SystemTime::now() - Duration::from_millis(60),
            image: Duration::from_millis(1),
            container: Duration::from_millis(30),
            ready: Some(Duration::from_millis(20)),
        })
    }
    fn slow_after(&self, _namespace: &str, _service: &str) -> Option<Duration> {
        Some(Duration::from_millis(300))
    }
}

fn record(n: u8, status: u16, sampled: bool) -> RequestRecord {
    RequestRecord {
        at: SystemTime::now() - Duration::from_millis(70),
        duration: Duration::from_millis(60),
        request_id: format!("req-{n}"),
        trace_id: format!("{n:02x}f92f3577b34da6a3ce929d0e0e4736"),
        parent_span_id: None,
        spans: Some(SpanIds {
            server: 0x1000 + u64::from(n),
            upstream: 0x2000 + u64::from(n),
            sampled,
        }),
        method: "GET".into(),
        host: "hello.default.example.com".into(),
        path: "/".into(),
        status,
        bytes: 3,
        complete: true,
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        instance: Some("hello-00001-x".into()),
        cold_start: None,
        waited: Duration::ZERO,
        throttled: None,
    }
}

/// At a ratio of 0, a cold request's and a failed request's traces reach the collector with
/// their parent/child links; a warm good one does not; every request has its log line.
#[test]
fn kept_traces_reach_the_collector_and_every_request_is_logged() {
    let receiver = OtlpReceiver::start().expect("receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = prometheus_client::registry::Registry::with_prefix("skiff");
    let metrics = Metrics::new(&mut registry);
    let t = RequestTelemetry::start(
        Settings {
            log_dir: dir.path().to_path_buf(),
            request_logs: true,
            max_bytes: 1 << 20,
            keep: 2,
            traces: Some(TraceSettings {
                endpoint: format!("{}/v1/traces", receiver.url),
                sampler: Sampler::parse("parentbased_traceidratio", Some("0")).expect("sampler"),
            }),
            sink: None,
        },
        Arc::new(Fixed),
        metrics.clone(),
    )
    .expect("start");
    assert_eq!(t.head_sample(7, None), Some(false));
    assert_eq!(t.head_sample(7, Some(true)), Some(true));
    let mut cold = record(1, 200, false);
    cold.cold_start = Some(Duration::from_millis(50));
    cold.waited = Duration::from_millis(51);
    t.finished(cold);
    t.finished(record(2, 200, false));
    t.finished(record(3, 500, false));
    t.shutdown();

    // Shut down: every kept span was exported (or its export failed) before it returned.
    let spans = receiver.spans();
    let of = |n: u8| -> Vec<_> {
        let trace = format!("{n:02x}f92f3577b34da6a3ce929d0e0e4736");
        spans
            .iter()
            .filter(|s| s.trace_id() == trace)
            .cloned()
            .collect()
    };
    let cold = of(1);
    let names: Vec<&str> = cold.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "GET",
            "activator wait",
            "cold start",
            "image",
            "container start",
            "readiness",
            "proxy"
        ],
        "{spans:#?}"
    );
    let id = |name: &str| {
        cold.iter()
            .find(|s| s.span.name == name)
            .map(|s| s.span_id())
    };
    let parent = |name: &str| {
        cold.iter()
            .find(|s| s.span.name == name)
            .map(|s| s.parent_id())
    };
    assert_eq!(parent("GET").as_deref(), Some(""));
    assert_eq!(parent("activator wait"), id("GET"));
    assert_eq!(parent("cold start"), id("activator wait"));
    assert_eq!(parent("readiness"), id("cold start"));
    assert_eq!(parent("proxy"), id("GET"));
    assert_eq!(id("proxy").as_deref(), Some("0000000000002001"));
    assert!(cold.iter().all(|s| s.service_name == "skiff"));
    assert_eq!(cold[0].attr("faas.coldstart").as_deref(), Some("true"));
    assert!(
        of(2).is_empty(),
        "a warm good request at ratio 0 is not kept"
    );
    let failed = of(3);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert_eq!(failed[0].attr("error.type").as_deref(), Some("500"));
    assert_eq!(failed[0].attr("skiff.kept").as_deref(), Some("error"));

    assert_eq!(metrics.spans_exported.get(), 9);
    assert_eq!(metrics.spans_failed.get(), 0);
    assert_eq!(metrics.dropped.get(), 0);
    let lines = log::read(dir.path(), "default", "hello-00001", |_| true);
    let ids: Vec<&str> = lines.iter().map(|l| l.request_id.as_str()).collect();
    assert_eq!(ids, ["req-1", "req-2", "req-3"]);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains(r#"skiff_trace_requests_sampled_total{namespace="default",service="hello",revision="hello-00001",reason="cold_start"} 1"#), "{text}");
    assert!(
        text.contains("skiff_trace_spans_exported_total 9"),
        "{text}"
    );
}

/// A collector that is not there costs failed-export counts, not requests.
#[test]
fn a_missing_collector_is_counted() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1/traces", dead.local_addr().expect("addr"));
    drop(dead);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let t = RequestTelemetry::start(
        Settings {
            log_dir: dir.path().to_path_buf(),
            request_logs: false,
            max_bytes: 1 << 20,
            keep: 2,
            traces: Some(TraceSettings {
                endpoint: url,
                sampler: Sampler::AlwaysOn,
            }),
            sink: None,
        },
        Arc::new(Fixed),
        metrics.clone(),
    )
    .expect("start");
    t.finished(record(4, 200, true));
    t.shutdown();
    assert_eq!(metrics.spans_exported.get(), 0);
    assert_eq!(metrics.spans_failed.get(), 2);
    assert!(log::files(dir.path(), "default", "hello-00001").is_empty());
}
