//! Traces and request logs with the real daemon: an OTLP receiver in the test (decoding with
//! `opentelemetry-proto`) gets a cold request's spans with their links and a failed
//! request's trace at a sampling ratio of 0; the instance's `traceparent` names skiff's span;
//! `skiff logs --requests` and `--request-id` show the requests with their instance's lines.

use std::time::Duration;

use serde_json::Value;
use skiff_test_utils::MAX_WAIT;
use skiff_test_utils::otlp::{OtlpReceiver, Received};

use crate::serving::{host, service, wait_pinned};
use crate::{apply, assert_code, registry_with_info_image, skip_without_runc, stdout};

struct Sent {
    status: u16,
    request_id: String,
    body: String,
}

async fn send(d: &skiff_test_utils::TestDaemon, path: &str, traceparent: Option<&str>) -> Sent {
    let mut r = crate::http()
        .get(format!("http://{}{path}", d.ingress()))
        .header("host", host("traced"));
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let r = r.send().await.expect("request to the ingress");
    let status = r.status().as_u16();
    let request_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.text().await.unwrap_or_default();
    Sent {
        status,
        request_id,
        body,
    }
}

fn trace_of<'a>(spans: &'a [Received], request_id: &str) -> Vec<&'a Received> {
    let Some(trace) = spans
        .iter()
        .find(|s| s.attr("skiff.request_id").as_deref() == Some(request_id))
        .map(Received::trace_id)
    else {
        return Vec::new();
    };
    spans.iter().filter(|s| s.trace_id() == trace).collect()
}

fn named<'a>(trace: &[&'a Received], name: &str) -> &'a Received {
    trace
        .iter()
        .find(|s| s.span.name == name)
        .copied()
        .unwrap_or_else(|| {
            panic!(
                "no span `{name}` in {:?}",
                trace.iter().map(|s| &s.span.name).collect::<Vec<_>>()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_request_logs() {
    if skip_without_runc() {
        return;
    }
    let otlp = OtlpReceiver::start().expect("OTLP receiver");
    let (_reg, d, image) = registry_with_info_image(&[
        "--otlp-endpoint",
        &otlp.url,
        "--traces-sampler",
        "parentbased_traceidratio",
        "--traces-sampler-arg",
        "0",
    ])
    .await;
    apply(
        &d,
        &service(
            "traced",
            &image,
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "timeoutSeconds: 1",
            "traced",
            "",
        ),
    );
    wait_pinned(&d, "traced-00001").await;

    // Cold: kept at ratio 0 because it waited for the instance.
    let cold = send(&d, "/log?line=hello-from-the-cold-request", None).await;
    assert_eq!(cold.status, 200, "{}", cold.body);
    // Warm, fine, and its client said "not sampled": not kept. The instance sees skiff's
    // span as its parent, in the client's trace, with the client's flag.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = send(
        &d,
        "/headers",
        Some(&format!("00-{client_trace}-00f067aa0ba902b7-00")),
    )
    .await;
    assert_eq!(unsampled.status, 200, "{}", unsampled.body);
    let seen: Value = serde_json::from_str(&unsampled.body).expect("headers JSON");
    let tp = seen["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], client_trace, "{tp}");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the instance's parent is skiff's span: {tp}"
    );
    assert_eq!(parts[3], "00", "{tp}");
    // Warm and sampled by its client: kept, under the client's span.
    let sampled_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let sampled = send(
        &d,
        "/headers",
        Some(&format!("00-{sampled_trace}-00f067aa0ba902b8-01")),
    )
    .await;
    assert_eq!(sampled.status, 200);
    let seen: Value = serde_json::from_str(&sampled.body).expect("headers JSON");
    let sampled_parent = seen["headers"]["traceparent"]
        .as_str()
        .and_then(|tp| tp.split('-').nth(2))
        .expect("traceparent")
        .to_owned();
    // Failed (504: over timeoutSeconds): kept at ratio 0.
    let failed = send(&d, "/delay?ms=3000", None).await;
    assert_eq!(failed.status, 504, "{}", failed.body);

    let spans = otlp
        .wait_for(MAX_WAIT, |s| {
            [&cold.request_id, &sampled.request_id, &failed.request_id]
                .iter()
                .all(|id| !trace_of(s, id).is_empty())
        })
        .await;
    let c = trace_of(&spans, &cold.request_id);
    let server = named(&c, "GET");
    assert_eq!(server.parent_id(), "", "no client traceparent: a root span");
    assert_eq!(server.attr("faas.coldstart").as_deref(), Some("true"));
    assert_eq!(server.attr("skiff.kept").as_deref(), Some("cold_start"));
    assert_eq!(
        server.attr("url.path").as_deref(),
        Some("/log"),
        "no query in spans"
    );
    assert!(c.iter().all(|s| s.service_name == "skiff"));
    let wait = named(&c, "activator wait");
    assert_eq!(wait.parent_id(), server.span_id());
    let start = named(&c, "cold start");
    assert_eq!(start.parent_id(), wait.span_id());
    for phase in ["image", "container start", "readiness"] {
        assert_eq!(named(&c, phase).parent_id(), start.span_id(), "{phase}");
    }
    let proxy = named(&c, "proxy");
    assert_eq!(proxy.parent_id(), server.span_id());
    assert!(proxy.span.start_time_unix_nano >= wait.span.end_time_unix_nano);

    let s = trace_of(&spans, &sampled.request_id);
    assert_eq!(
        named(&s, "GET").parent_id(),
        "00f067aa0ba902b8",
        "the client's span"
    );
    assert_eq!(
        named(&s, "proxy").span_id(),
        sampled_parent,
        "the instance's parent"
    );
    assert_eq!(named(&s, "GET").attr("skiff.kept").as_deref(), Some("head"));

    let f = trace_of(&spans, &failed.request_id);
    let fs = named(&f, "GET");
    assert_eq!(fs.attr("http.response.status_code").as_deref(), Some("504"));
    assert_eq!(fs.attr("skiff.kept").as_deref(), Some("error"));
    assert_eq!(
        fs.span.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );

    assert!(
        trace_of(&spans, &unsampled.request_id).is_empty(),
        "an unsampled warm good request is not exported"
    );
    assert!(spans.iter().all(|s| s.trace_id() != client_trace));

    // M14 on /metrics.
    let metrics = crate::http()
        .get(format!("{}/metrics", d.api()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for reason in ["cold_start", "head", "error"] {
        assert!(
            metrics.contains(&format!(r#"skiff_trace_requests_sampled_total{{namespace="default",service="traced",revision="traced-00001",reason="{reason}"}} 1"#)),
            "{reason}: {metrics}"
        );
    }
    let exported: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_trace_spans_exported_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("skiff_trace_spans_exported_total");
    assert!(exported >= c.len() as f64 + 4.0, "{exported}");

    // Request logs: every request, in order, with what it got.
    let ids = [
        &cold.request_id,
        &unsampled.request_id,
        &sampled.request_id,
        &failed.request_id,
    ];
    let lines = skiff_test_utils::wait_for(
        "request lines",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let o = d.cli(&["logs", "traced", "--requests"]);
            async move {
                let out = stdout(&o);
                ids.iter()
                    .all(|id| out.contains(id.as_str()))
                    .then_some(out)
            }
        },
    )
    .await
    .expect("every request in the request log");
    let mine: Vec<&str> = lines
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
        .collect();
    assert_eq!(mine.len(), 4, "{lines}");
    assert!(
        mine[0].contains(" 200 ") && mine[0].contains("cold-start="),
        "{}",
        mine[0]
    );
    assert!(
        mine[0].contains("/log ") || mine[0].ends_with("/log"),
        "{}",
        mine[0]
    );
    assert!(!mine[1].contains("cold-start="), "{}", mine[1]);
    assert!(mine[3].contains(" 504 "), "{}", mine[3]);

    let o = d.cli(&["logs", "traced", "--request-id", &cold.request_id]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains(&cold.request_id)),
        "{out}"
    );
    assert!(
        out.contains("hello-from-the-cold-request"),
        "the instance's line around it: {out}"
    );
    let o = d.cli(&["logs", "traced", "--request-id", "no-such-request"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        crate::stderr(&o).contains("no request `no-such-request`"),
        "{}",
        crate::stderr(&o)
    );
    eprintln!(
        "traces: {} spans received ({} for the cold request), exported {exported}; request log lines: {}",
        spans.len(),
        c.len(),
        mine.len()
    );
    d.cleanup().await.expect("cleanup");
}
