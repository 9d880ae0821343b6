//! Knative Eventing through the real daemon: Brokers, Triggers and PingSources applied with
//! the CLI, CloudEvents posted to the broker ingress (built and encoded with the CloudEvents
//! SDK in binary and structured mode, batched by hand), delivered to real runc instances of
//! the workspace's test server (its CloudEvents sink prints one line per delivery, read back
//! with `skiff logs`). Filters, refusals at the ingress, retries with their backoff, dead
//! letters, replies, a subscriber that appears late, a `kill -9` in the middle of a delivery
//! run, events posted throughout a restart, the backlog scaling its subscriber, PingSource
//! ticks and the runs missed while the daemon was down, and manifests refused with their
//! field paths.
//!
//! The sink's log line has no data, so a PingSource's `data` is not checked here (its
//! `type`, `source` and id are).
//!
//! Cloud Run Jobs as subscribers are not tested here: this build has no jobs API (no
//! `/jobs` or `/executions` routes, and `skiff apply` refuses Jobs), so nothing can create
//! the Job a Trigger would start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use cloudevents::binding::http::{Builder, Serializer};
use cloudevents::message::StructuredDeserializer;
use cloudevents::{EventBuilder, EventBuilderV10};
use skiff_api::eventing::stored::{Broker, PingSource, Trigger};
use skiff_api::object::ConditionStatus;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::serving::metrics_text;
use crate::{
    apply, assert_code, indent, registry_with_info_image, skip_without_runc, stderr, stdout,
};

/// The daemon's domain (TestDaemon starts it with the default).
const DOMAIN: &str = "localhost";

// --- Manifests ----------------------------------------------------------------------------

/// A Service of the test server image whose event sink answers as `env` says (`EVENT_*`),
/// with template `annotations` (YAML map lines) and revision `spec_extra` fields.
fn sink(
    name: &str,
    image: &str,
    env: &[(&str, &str)],
    annotations: &str,
    spec_extra: &str,
) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!(
            "    metadata:\n      annotations:\n{}",
            indent(annotations, 8)
        )
    };
    let mut env_yaml =
        String::from("        env:\n        - name: TARGET\n          value: sink\n");
    for (k, v) in env {
        env_yaml.push_str(&format!("        - name: {k}\n          value: \"{v}\"\n"));
    }
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n{annotations}    spec:\n{}      containers:\n      - image: {image}\n{env_yaml}",
        indent(spec_extra, 6),
    )
}

fn broker(name: &str) -> String {
    format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n")
}

/// A Trigger of `broker` to the Service `subscriber`, with `filter` (YAML lines under
/// `spec:`, e.g. a `filter:` or `filters:` block) and `delivery` (lines under `delivery:`).
fn trigger(name: &str, broker: &str, filter: &str, subscriber: &str, delivery: &str) -> String {
    let delivery = if delivery.is_empty() {
        String::new()
    } else {
        format!("  delivery:\n{}", indent(delivery, 4))
    };
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: {broker}\n{}  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: {subscriber}\n{delivery}",
        indent(filter, 2)
    )
}

/// A filter on the event type, as `filter.attributes`.
fn type_filter(t: &str) -> String {
    format!("filter:\n  attributes:\n    type: {t}\n")
}

// --- Reading what happened ----------------------------------------------------------------

/// One delivery as the sink logged it.
#[derive(Debug, Clone)]
struct Seen {
    /// When skiff read the line.
    at: jiff::Timestamp,
    id: String,
    ty: String,
    source: String,
    attempt: u32,
}

/// The deliveries `svc`'s instances logged, oldest first (`skiff logs SVC --timestamps`).
fn deliveries(d: &TestDaemon, svc: &str) -> Vec<Seen> {
    let o = d.cli(&["logs", svc, "--timestamps"]);
    assert_code(&o, 0);
    let mut out: Vec<Seen> = stdout(&o)
        .lines()
        .filter_map(|l| {
            // `TS STREAM [INSTANCE/CONTAINER] event id=… type=… source=… attempt=n`
            let (ts, _) = l.split_once(' ')?;
            let (_, rest) = l.split_once("] event ")?;
            let fields: HashMap<&str, &str> =
                rest.split(' ').filter_map(|f| f.split_once('=')).collect();
            Some(Seen {
                at: ts.parse().ok()?,
                id: fields.get("id")?.to_string(),
                ty: fields.get("type")?.to_string(),
                source: fields.get("source")?.to_string(),
                attempt: fields.get("attempt")?.parse().ok()?,
            })
        })
        .collect();
    out.sort_by_key(|s| s.at);
    out
}

/// The distinct ids `svc` logged.
fn ids(d: &TestDaemon, svc: &str) -> BTreeSet<String> {
    deliveries(d, svc).into_iter().map(|s| s.id).collect()
}

/// Waits until `svc` has logged every id of `want`; its deliveries then.
async fn wait_ids(d: &TestDaemon, svc: &str, want: &[&str]) -> Vec<Seen> {
    let r = wait_for(
        &format!("{svc} to log {want:?}"),
        Duration::from_millis(200),
        MAX_WAIT,
        || {
            let seen = deliveries(d, svc);
            let have: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
            let done = want.iter().all(|w| have.contains(w));
            async move { done.then_some(seen) }
        },
    )
    .await;
    match r {
        Ok(s) => s,
        Err(e) => panic!(
            "{e}\n--- {svc} logs\n{}\n--- daemon log tail\n{}",
            stdout(&d.cli(&["logs", svc, "--timestamps"])),
            tail(&d.log_text(), 60)
        ),
    }
}

/// Waits until `svc` has logged at least `n` deliveries; its deliveries then.
async fn wait_lines(d: &TestDaemon, svc: &str, n: usize) -> Vec<Seen> {
    wait_for(
        &format!("{n} deliveries logged by {svc}"),
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let seen = deliveries(d, svc);
            async move { (seen.len() >= n).then_some(seen) }
        },
    )
    .await
    .expect("deliveries logged")
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The sum of the samples of metric `name` whose labels include every pair of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Waits until the sample of `name` with `labels` is `want`.
async fn wait_metric(d: &TestDaemon, name: &str, labels: &[(&str, &str)], want: f64) {
    let r = wait_for(
        &format!("{name}{labels:?} to be {want}"),
        Duration::from_millis(100),
        MAX_WAIT,
        || async move {
            let text = metrics_text(d).await?;
            (metric(&text, name, labels) == want).then_some(())
        },
    )
    .await;
    if let Err(e) = r {
        let text = metrics_text(d).await.unwrap_or_default();
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("skiff_event"))
            .collect();
        panic!("{e}\n{}", samples.join("\n"));
    }
}

/// Waits until Trigger `name`'s `Ready` condition has `status`; the Trigger then.
async fn wait_trigger(d: &TestDaemon, name: &str, status: ConditionStatus) -> Trigger {
    let client = d.client();
    let r = wait_for(
        &format!("Trigger {name} Ready={status:?}"),
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let t: Trigger = client
                    .get_eventing("triggers", "default", name)
                    .await
                    .ok()?;
                let ok = t.condition("Ready").is_some_and(|c| c.status == status)
                    && t.status.observed_generation == t.metadata.generation;
                ok.then_some(t)
            }
        },
    )
    .await;
    match r {
        Ok(t) => t,
        Err(e) => {
            let t: Result<serde_json::Value, _> =
                client.get_eventing("triggers", "default", name).await;
            panic!("{e}\n{t:#?}")
        }
    }
}

/// Waits until Broker `name` has an address; the Broker then.
async fn wait_broker(d: &TestDaemon, name: &str) -> Broker {
    let client = d.client();
    wait_for(
        &format!("Broker {name} to have an address"),
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let b: Broker = client.get_eventing("brokers", "default", name).await.ok()?;
                b.status.address.is_some().then_some(b)
            }
        },
    )
    .await
    .expect("broker address")
}

// --- Sending ------------------------------------------------------------------------------

/// An HTTP client that reaches the broker ingress by its name: `broker-ingress.<domain>`
/// resolves to the daemon's ingress, so a Broker's `status.address.url` is used as it is.
fn ingress_client(d: &TestDaemon) -> reqwest::Client {
    let _ = crate::http(); // installs the TLS provider reqwest needs to build
    let addr: SocketAddr = d.ingress().parse().expect("ingress address");
    reqwest::Client::builder()
        .no_proxy()
        .resolve(&format!("broker-ingress.{DOMAIN}"), addr)
        .build()
        .expect("client")
}

/// The address a Broker of the TestDaemon must have.
fn broker_url(d: &TestDaemon, name: &str) -> String {
    let port = d.ingress().rsplit_once(':').expect("port").1;
    format!("http://broker-ingress.{DOMAIN}:{port}/default/{name}")
}

/// A CloudEvent made with the SDK, JSON data.
fn event(id: &str, ty: &str, source: &str) -> cloudevents::Event {
    EventBuilderV10::new()
        .id(id)
        .ty(ty)
        .source(source)
        .data("application/json", serde_json::json!({"id": id}))
        .build()
        .expect("a valid event")
}

/// The SDK's binary-mode encoding of `e`: headers and body.
fn binary(e: cloudevents::Event) -> (http::HeaderMap, Vec<u8>) {
    let req: http::Request<Option<Vec<u8>>> = http::Request::try_from(e).expect("binary");
    let (parts, body) = req.into_parts();
    (parts.headers, body.unwrap_or_default())
}

/// Collects what the SDK's serializer writes.
#[derive(Default)]
struct Collect(http::HeaderMap);

impl Builder<(http::HeaderMap, Vec<u8>)> for Collect {
    fn header(&mut self, key: &str, value: http::HeaderValue) {
        self.0.insert(
            http::HeaderName::from_bytes(key.as_bytes()).expect("header name"),
            value,
        );
    }
    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<(http::HeaderMap, Vec<u8>)> {
        Ok((std::mem::take(&mut self.0), bytes))
    }
    fn finish(&mut self) -> cloudevents::message::Result<(http::HeaderMap, Vec<u8>)> {
        self.body(Vec::new())
    }
}

/// The SDK's structured-mode encoding of `e`: headers and body.
fn structured(e: cloudevents::Event) -> (http::HeaderMap, Vec<u8>) {
    StructuredDeserializer::deserialize_structured(e, Serializer::new(Collect::default()))
        .expect("structured")
}

/// A batched-mode request of `events` (the SDK has no batched mode; its events serialize
/// as structured JSON).
fn batched(events: &[cloudevents::Event]) -> (http::HeaderMap, Vec<u8>) {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    (h, serde_json::to_vec(events).expect("batch"))
}

/// POSTs a request to `url`; its status and body.
async fn post(
    http: &reqwest::Client,
    url: &str,
    (headers, body): (http::HeaderMap, Vec<u8>),
) -> (u16, String) {
    let r = http
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("request to the broker ingress");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

// --- Tests ------------------------------------------------------------------------------

/// One Broker, two Triggers with different filters (an attribute filter, a `prefix`
/// Subscriptions API filter): binary, structured and batched requests are accepted, each
/// subscriber gets exactly the events its filter matches, an event matching neither goes
/// nowhere, and the counters count them.
#[tokio::test]
async fn modes_and_filters() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &sink("sink-a", &image, &[], "", ""));
    apply(&d, &sink("sink-b", &image, &[], "", ""));
    apply(&d, &broker("modes"));
    apply(
        &d,
        &trigger("t-a", "modes", &type_filter("com.example.a"), "sink-a", ""),
    );
    apply(
        &d,
        &trigger(
            "t-b",
            "modes",
            "filters:\n- prefix:\n    type: com.example.b\n",
            "sink-b",
            "",
        ),
    );
    let b = wait_broker(&d, "modes").await;
    let url = b.status.address.expect("address").url;
    assert_eq!(url, broker_url(&d, "modes"), "the Broker's address");
    for t in ["t-a", "t-b"] {
        let t = wait_trigger(&d, t, ConditionStatus::True).await;
        assert!(
            t.status
                .subscriber_uri
                .as_deref()
                .is_some_and(|u| u.contains(&format!(".default.{DOMAIN}"))),
            "{t:?}"
        );
    }

    let http = ingress_client(&d);
    let src = "/e2e/modes";
    let (status, body) = post(&http, &url, binary(event("bin-a", "com.example.a", src))).await;
    assert_eq!(status, 202, "binary: {body}");
    let (status, body) = post(
        &http,
        &url,
        structured(event("str-b", "com.example.b.created", src)),
    )
    .await;
    assert_eq!(status, 202, "structured: {body}");
    let (status, body) = post(
        &http,
        &url,
        batched(&[
            event("batch-a", "com.example.a", src),
            event("batch-b", "com.example.b", src),
            event("batch-none", "com.example.c", src),
        ]),
    )
    .await;
    assert_eq!(status, 202, "batched: {body}");
    assert!(body.contains("accepted 3 event(s)"), "{body}");

    wait_ids(&d, "sink-a", &["bin-a", "batch-a"]).await;
    wait_ids(&d, "sink-b", &["str-b", "batch-b"]).await;
    // Every delivery is counted once it is recorded; after that nothing more may arrive.
    for t in ["t-a", "t-b"] {
        let sub = format!("trigger/default/{t}");
        wait_metric(
            &d,
            "skiff_events_delivered_total",
            &[("subscription", &sub), ("outcome", "delivered")],
            2.0,
        )
        .await;
    }
    let a = deliveries(&d, "sink-a");
    let b = deliveries(&d, "sink-b");
    let ids_of = |s: &[Seen]| s.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let mut got_a = ids_of(&a);
    got_a.sort();
    let mut got_b = ids_of(&b);
    got_b.sort();
    assert_eq!(got_a, ["batch-a", "bin-a"], "sink-a: {a:?}");
    assert_eq!(got_b, ["batch-b", "str-b"], "sink-b: {b:?}");
    for s in a.iter().chain(&b) {
        assert_eq!(s.source, src, "{s:?}");
        assert_eq!(s.attempt, 1, "{s:?}");
    }
    assert_eq!(
        a.iter().find(|s| s.id == "bin-a").map(|s| s.ty.as_str()),
        Some("com.example.a")
    );
    assert_eq!(
        b.iter().find(|s| s.id == "str-b").map(|s| s.ty.as_str()),
        Some("com.example.b.created")
    );

    let text = metrics_text(&d).await.expect("metrics");
    assert_eq!(
        metric(
            &text,
            "skiff_events_received_total",
            &[("namespace", "default"), ("source", "broker/modes")]
        ),
        5.0,
        "received"
    );
    // Nothing failed.
    for outcome in ["retried", "dead_lettered", "dropped"] {
        assert_eq!(
            metric(
                &text,
                "skiff_events_delivered_total",
                &[("outcome", outcome)]
            ),
            0.0,
            "{outcome}"
        );
    }
    d.cleanup().await.expect("cleanup");
}

/// The broker ingress refuses what is not a CloudEvent it can store, and says why: a
/// missing `id` (400 naming it), a body over 1 MiB (413, with or without a Content-Length),
/// plain JSON (400), GET (405), an unknown Broker (404). Nothing is counted as received.
#[tokio::test]
async fn bad_input_at_the_ingress() {
    let d = TestDaemon::start(crate::SKIFF).await.expect("daemon");
    apply(&d, &broker("strict"));
    let b = wait_broker(&d, "strict").await;
    let url = b.status.address.expect("address").url;
    let http = ingress_client(&d);

    // Binary mode without `ce-id`.
    let mut h = http::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.a"),
        ("ce-source", "/e2e"),
    ] {
        h.insert(k, http::HeaderValue::from_static(v));
    }
    let (status, body) = post(&http, &url, (h, b"{}".to_vec())).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`id`"), "the answer names `id`: {body}");

    // Structured, a required attribute missing: the same.
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/cloudevents+json"),
    );
    let (status, body) = post(
        &http,
        &url,
        (
            h,
            br#"{"specversion":"1.0","type":"t","source":"/s"}"#.to_vec(),
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`id`"), "{body}");

    // 2 MiB: refused on its Content-Length...
    let big = event("big", "com.example.big", "/e2e");
    let (mut h, _) = binary(big);
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    // (over a raw connection that reads while it writes: the server answers before it has
    // read the body and closes, which an HTTP client writing the body sees as a broken pipe)
    let status = raw_post(&d, "strict", &h, 2 << 20, false).await;
    assert_eq!(status, 413);
    // ...and without one (chunked), once it has read 1 MiB.
    let status = raw_post(&d, "strict", &h, 2 << 20, true).await;
    assert_eq!(status, 413);

    // Plain JSON is not a CloudEvent.
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("not a CloudEvent"), "{body}");

    // GET.
    let r = http.get(&url).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );

    // An unknown Broker.
    let nope = url.replace("/strict", "/nope");
    let (status, body) = post(&http, &nope, binary(event("x", "t", "/s"))).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nope"), "{body}");

    // The Broker still takes a good event, and only that one counted.
    let (status, body) = post(&http, &url, binary(event("ok", "t", "/s"))).await;
    assert_eq!(status, 202, "{body}");
    let text = metrics_text(&d).await.expect("metrics");
    assert_eq!(
        metric(
            &text,
            "skiff_events_received_total",
            &[("source", "broker/strict")]
        ),
        1.0
    );
    d.cleanup().await.expect("cleanup");
}

/// POSTs `len` bytes to Broker `broker` over a raw connection, chunked (no Content-Length)
/// or with a Content-Length; the status of the answer.
async fn raw_post(
    d: &TestDaemon,
    broker: &str,
    headers: &http::HeaderMap,
    len: usize,
    chunked: bool,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(d.ingress())
        .await
        .expect("connect");
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {len}")
    };
    let mut head = format!(
        "POST /default/{broker} HTTP/1.1\r\nhost: broker-ingress.{DOMAIN}\r\n{framing}\r\nconnection: close\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().expect("ascii")));
    }
    head.push_str("\r\n");
    // Read while writing: the server answers and closes before it has read everything, and
    // an answer left unread when the connection is reset would be lost.
    let (mut r, mut w) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut raw)).await;
        raw
    });
    let write = async move {
        w.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            if chunked {
                let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                c.extend_from_slice(&chunk);
                c.extend_from_slice(b"\r\n");
                w.write_all(&c).await?;
            } else {
                w.write_all(&chunk).await?;
            }
            sent += chunk.len();
        }
        if chunked {
            w.write_all(b"0\r\n\r\n").await?;
        }
        Ok::<_, std::io::Error>(w)
    };
    // An error is the server closing on the rest: expected once it has answered.
    let _w = tokio::time::timeout(Duration::from_secs(30), write).await;
    let raw = reader.await.expect("reader");
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text}"))
}

/// A subscriber failing once is retried after its linear backoff and the event delivered on
/// attempt 2; one failing always gets exactly `retry + 1` attempts, spaced at least as the
/// backoff asks (0.3 s, then 0.6 s), and then the event goes to the dead-letter sink.
#[tokio::test]
async fn retries_and_dead_letters() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &sink("flaky", &image, &[("EVENT_FAIL_FIRST", "1")], "", ""),
    );
    apply(
        &d,
        &sink("broken", &image, &[("EVENT_STATUS", "500")], "", ""),
    );
    apply(&d, &sink("dls", &image, &[], "", ""));
    apply(&d, &broker("retries"));
    apply(
        &d,
        &trigger(
            "t-flaky",
            "retries",
            &type_filter("com.example.flaky"),
            "flaky",
            "retry: 3\nbackoffPolicy: linear\nbackoffDelay: PT0.2S\n",
        ),
    );
    apply(
        &d,
        &trigger(
            "t-broken",
            "retries",
            &type_filter("com.example.broken"),
            "broken",
            "retry: 2\nbackoffPolicy: linear\nbackoffDelay: PT0.3S\ndeadLetterSink:\n  ref:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    name: dls\n",
        ),
    );
    let url = wait_broker(&d, "retries")
        .await
        .status
        .address
        .expect("address")
        .url;
    wait_trigger(&d, "t-flaky", ConditionStatus::True).await;
    let t = wait_trigger(&d, "t-broken", ConditionStatus::True).await;
    assert_eq!(
        t.condition("DeadLetterSinkResolved").map(|c| c.status),
        Some(ConditionStatus::True),
        "{t:?}"
    );
    assert!(
        t.status
            .dead_letter_sink_uri
            .as_deref()
            .is_some_and(|u| u.starts_with(&format!("http://dls.default.{DOMAIN}"))),
        "{t:?}"
    );
    let http = ingress_client(&d);
    let (status, body) = post(
        &http,
        &url,
        binary(event("flaky-1", "com.example.flaky", "/e2e")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(
        &http,
        &url,
        binary(event("broken-1", "com.example.broken", "/e2e")),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // 503, then 202 on attempt 2.
    wait_metric(
        &d,
        "skiff_events_delivered_total",
        &[
            ("subscription", "trigger/default/t-flaky"),
            ("outcome", "delivered"),
        ],
        1.0,
    )
    .await;
    let flaky = wait_lines(&d, "flaky", 2).await;
    let attempts: Vec<u32> = flaky.iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [1, 2], "{flaky:?}");
    let gap = flaky[1].at.duration_since(flaky[0].at);
    eprintln!("flaky: attempts 1 and 2, {gap:#} apart (backoff asked: 0.2 s)");
    assert!(gap >= jiff::SignedDuration::from_millis(200), "{gap:#}");
    let text = metrics_text(&d).await.expect("metrics");
    let flaky_sub = [("subscription", "trigger/default/t-flaky")];
    assert_eq!(
        metric(
            &text,
            "skiff_events_delivered_total",
            &[flaky_sub[0], ("outcome", "retried")]
        ),
        1.0
    );

    // Three attempts, then the dead-letter sink.
    let dls = wait_ids(&d, "dls", &["broken-1"]).await;
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0].ty, "com.example.broken");
    wait_metric(
        &d,
        "skiff_events_dead_lettered_total",
        &[("subscription", "trigger/default/t-broken")],
        1.0,
    )
    .await;
    let broken = wait_lines(&d, "broken", 3).await;
    let attempts: Vec<u32> = broken.iter().map(|s| s.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "{broken:?}");
    assert!(broken.iter().all(|s| s.id == "broken-1"));
    let gaps: Vec<jiff::SignedDuration> = broken
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    eprintln!(
        "broken: 3 attempts, gaps {:#} and {:#} (backoff asked: 0.3 s, 0.6 s); dead letter {:#} after the last",
        gaps[0],
        gaps[1],
        dls[0].at.duration_since(broken[2].at)
    );
    assert!(
        gaps[0] >= jiff::SignedDuration::from_millis(300),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= jiff::SignedDuration::from_millis(600),
        "{gaps:?}"
    );
    let text = metrics_text(&d).await.expect("metrics");
    let sub = ("subscription", "trigger/default/t-broken");
    assert_eq!(
        metric(
            &text,
            "skiff_events_delivered_total",
            &[sub, ("outcome", "retried")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "skiff_events_delivered_total",
            &[sub, ("outcome", "dead_lettered")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "skiff_events_delivered_total",
            &[
                ("subscription", "deadletter/trigger/default/t-broken"),
                ("outcome", "delivered")
            ]
        ),
        1.0
    );
    // Nothing was retried after the dead letter.
    assert_eq!(deliveries(&d, "broken").len(), 3);
    d.cleanup().await.expect("cleanup");
}

/// A subscriber's 200 with an event in it is a reply: published to the Trigger's Broker,
/// where another Trigger takes it to its own subscriber.
#[tokio::test]
async fn replies_are_published_to_the_broker() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &sink(
            "replier",
            &image,
            &[("EVENT_REPLY_TYPE", "com.example.answer")],
            "",
            "",
        ),
    );
    apply(&d, &sink("answers", &image, &[], "", ""));
    apply(&d, &broker("talk"));
    apply(
        &d,
        &trigger(
            "t-ask",
            "talk",
            &type_filter("com.example.question"),
            "replier",
            "",
        ),
    );
    apply(
        &d,
        &trigger(
            "t-answer",
            "talk",
            &type_filter("com.example.answer"),
            "answers",
            "",
        ),
    );
    let url = wait_broker(&d, "talk")
        .await
        .status
        .address
        .expect("address")
        .url;
    wait_trigger(&d, "t-ask", ConditionStatus::True).await;
    wait_trigger(&d, "t-answer", ConditionStatus::True).await;
    let http = ingress_client(&d);
    let (status, body) = post(
        &http,
        &url,
        binary(event("q-1", "com.example.question", "/e2e/talk")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let answers = wait_ids(&d, "answers", &["reply-q-1"]).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].ty, "com.example.answer");
    assert_eq!(answers[0].source, "/skiff-test-server");
    let asked = deliveries(&d, "replier");
    assert_eq!(asked.len(), 1, "the question is delivered once: {asked:?}");
    let text = metrics_text(&d).await.expect("metrics");
    assert_eq!(
        metric(
            &text,
            "skiff_events_received_total",
            &[("source", "broker/talk")]
        ),
        2.0,
        "the question and its reply"
    );
    d.cleanup().await.expect("cleanup");
}

/// A Trigger whose subscriber does not exist says why; events sent meanwhile are retried,
/// and arrive once the Service is applied (the Trigger turns Ready).
#[tokio::test]
async fn trigger_to_a_missing_service() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &broker("late"));
    apply(
        &d,
        &trigger(
            "t-late",
            "late",
            "",
            "late-svc",
            "retry: 30\nbackoffPolicy: linear\nbackoffDelay: PT0.2S\n",
        ),
    );
    let t = wait_trigger(&d, "t-late", ConditionStatus::False).await;
    let ready = t.condition("Ready").expect("Ready");
    assert_eq!(ready.reason.as_deref(), Some("SubscriberNotFound"), "{t:?}");
    assert!(
        ready
            .message
            .as_deref()
            .is_some_and(|m| m.contains("late-svc")),
        "{t:?}"
    );
    eprintln!("t-late: {}", ready.message.as_deref().unwrap_or_default());

    let url = wait_broker(&d, "late")
        .await
        .status
        .address
        .expect("address")
        .url;
    let http = ingress_client(&d);
    let (status, body) = post(
        &http,
        &url,
        binary(event("late-1", "com.example.late", "/e2e")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // It fails (no such Service) and is retried...
    let r = wait_for(
        "a failed attempt to the missing Service",
        Duration::from_millis(100),
        MAX_WAIT,
        || async {
            let text = metrics_text(&d).await?;
            let n = metric(
                &text,
                "skiff_events_delivered_total",
                &[
                    ("subscription", "trigger/default/t-late"),
                    ("outcome", "retried"),
                ],
            );
            (n >= 2.0).then_some(n)
        },
    )
    .await
    .expect("retried");
    eprintln!("retried {r} times before the Service existed");
    // ...until the Service exists.
    apply(&d, &sink("late-svc", &image, &[], "", ""));
    let seen = wait_ids(&d, "late-svc", &["late-1"]).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    wait_trigger(&d, "t-late", ConditionStatus::True).await;
    wait_metric(
        &d,
        "skiff_events_delivered_total",
        &[
            ("subscription", "trigger/default/t-late"),
            ("outcome", "delivered"),
        ],
        1.0,
    )
    .await;
    let text = metrics_text(&d).await.expect("metrics");
    assert_eq!(
        metric(
            &text,
            "skiff_events_dead_lettered_total",
            &[("subscription", "trigger/default/t-late")]
        ),
        0.0
    );
    d.cleanup().await.expect("cleanup");
}

/// 500 events (5 batches of 100) to a subscriber that holds each for 20 ms; the daemon is
/// killed with SIGKILL while some but not all have been delivered, restarted, and every
/// event still arrives (at least once).
#[tokio::test]
async fn kill_9_during_delivery() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    // Two at a time (one instance of concurrency 2): the run lasts seconds, long enough to
    // be caught in the middle.
    apply(
        &d,
        &sink(
            "slow",
            &image,
            &[("EVENT_DELAY_MS", "20")],
            "autoscaling.knative.dev/max-scale: \"1\"",
            "containerConcurrency: 2",
        ),
    );
    apply(&d, &broker("crash"));
    apply(&d, &trigger("t-slow", "crash", "", "slow", ""));
    let url = wait_broker(&d, "crash")
        .await
        .status
        .address
        .expect("address")
        .url;
    wait_trigger(&d, "t-slow", ConditionStatus::True).await;
    crate::serving::wait_service_ready(&d, "slow").await;

    let http = ingress_client(&d);
    let all: BTreeSet<String> = (0..500).map(|i| format!("k9-{i:03}")).collect();
    for batch in 0..5 {
        let events: Vec<cloudevents::Event> = (0..100)
            .map(|i| {
                event(
                    &format!("k9-{:03}", batch * 100 + i),
                    "com.example.k9",
                    "/e2e/k9",
                )
            })
            .collect();
        let (status, body) = post(&http, &url, batched(&events)).await;
        assert_eq!(status, 202, "{body}");
    }
    let before = wait_for(
        "some but not all events delivered",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let n = ids(&d, "slow").len();
            async move { (20..480).contains(&n).then_some(n) }
        },
    )
    .await
    .expect("a delivery run in progress");
    d.kill9();
    eprintln!("killed with {before} of 500 ids delivered");
    d.restart().await.expect("restart");
    let r = wait_for(
        "all 500 events delivered after the restart",
        Duration::from_millis(250),
        MAX_WAIT,
        || {
            let seen = deliveries(&d, "slow");
            let distinct: BTreeSet<String> = seen.iter().map(|s| s.id.clone()).collect();
            let total = seen.len();
            let complete = distinct == all;
            async move { complete.then_some((total, distinct.len())) }
        },
    )
    .await;
    match r {
        Ok((total, distinct)) => {
            eprintln!("all 500 ids logged after the restart ({total} deliveries, {distinct} ids)")
        }
        Err(e) => {
            let have = ids(&d, "slow");
            panic!(
                "{e}: {} of 500 delivered\n--- daemon log tail\n{}",
                have.len(),
                tail(&d.log_text(), 60)
            )
        }
    };
    // Settled: nothing is left in the queue (a delivery in flight at the kill may have
    // reached the sink without being recorded: it is delivered again, a duplicate).
    wait_metric(
        &d,
        "skiff_events_queue_depth",
        &[("subscription", "trigger/default/t-slow")],
        0.0,
    )
    .await;
    let seen = deliveries(&d, "slow");
    let total = seen.len();
    let distinct = seen.iter().map(|s| &s.id).collect::<BTreeSet<_>>().len();
    assert_eq!(distinct, 500);
    let duplicates = total - distinct;
    eprintln!(
        "after kill -9: all {distinct} ids delivered, {total} deliveries ({duplicates} duplicates)"
    );
    // A duplicate can only be an event in flight at the kill.
    assert!(
        duplicates <= 2,
        "at most the deliveries in flight at the kill: {duplicates}"
    );
    d.cleanup().await.expect("cleanup");
}

/// Events posted without pause while the daemon restarts: every one the ingress accepted
/// (202) arrives. The restarted daemon loads its Brokers and Triggers one by one (here 101
/// Triggers, the one that takes these events last); an event it accepted before the
/// Trigger was loaded would be matched to nothing and lost.
#[tokio::test]
async fn events_accepted_during_a_restart_are_not_lost() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    apply(&d, &sink("keeper", &image, &[], "", ""));
    apply(&d, &broker("steady"));
    let mut many = String::new();
    for i in 0..100 {
        many.push_str(&trigger(
            &format!("t-{i:02}"),
            "steady",
            &type_filter(&format!("com.example.other{i}")),
            "keeper",
            "",
        ));
        many.push_str("---\n");
    }
    // Listed (and so loaded) last.
    many.push_str(&trigger("zz-all", "steady", "", "keeper", ""));
    apply(&d, &many);
    let url = wait_broker(&d, "steady")
        .await
        .status
        .address
        .expect("address")
        .url;
    wait_trigger(&d, "zz-all", ConditionStatus::True).await;

    let http = ingress_client(&d);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (http, url, stop, count) = (http.clone(), url.clone(), stop.clone(), count.clone());
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused: BTreeMap<u16, u32> = BTreeMap::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("rs-{i:05}");
                i += 1;
                let (h, body) = binary(event(&id, "com.example.restart", "/e2e/restart"));
                match http.post(&url).headers(h).body(body).send().await {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted.push(id);
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => *refused.entry(r.status().as_u16()).or_default() += 1,
                    Err(_) => *refused.entry(0).or_default() += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (accepted, refused)
        })
    };
    // Some accepted before, then the restart, then some accepted after it.
    let before = wait_for(
        "events accepted",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let n = ids(&d, "keeper").len();
            async move { (n >= 10).then_some(n) }
        },
    )
    .await
    .expect("events delivered before the restart");
    d.stop().await.expect("stop");
    d.restart().await.expect("restart");
    // Posting goes on until the restarted daemon has accepted 20 more.
    let at_restart = count.load(std::sync::atomic::Ordering::Relaxed);
    wait_for(
        "the restarted daemon to accept events",
        Duration::from_millis(20),
        MAX_WAIT,
        || {
            let n = count.load(std::sync::atomic::Ordering::Relaxed);
            async move { (n >= at_restart + 20).then_some(()) }
        },
    )
    .await
    .expect("events accepted after the restart");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (accepted, refused) = sender.await.expect("sender");
    eprintln!(
        "{} accepted ({before} delivered before the stop), refused by status: {refused:?}",
        accepted.len()
    );
    let want: Vec<&str> = accepted.iter().map(String::as_str).collect();
    let r = wait_for(
        "every accepted event to arrive",
        Duration::from_millis(250),
        MAX_WAIT,
        || {
            let have = ids(&d, "keeper");
            let missing: Vec<&str> = want
                .iter()
                .copied()
                .filter(|w| !have.contains(*w))
                .collect();
            async move { missing.is_empty().then_some(()) }
        },
    )
    .await;
    if let Err(e) = r {
        let have = ids(&d, "keeper");
        let missing: Vec<&str> = want
            .iter()
            .copied()
            .filter(|w| !have.contains(*w))
            .collect();
        panic!(
            "{e}: {} of {} accepted events never arrived: {missing:?}",
            missing.len(),
            want.len()
        );
    }
    d.cleanup().await.expect("cleanup");
}

/// A backlog of 200 events to a subscriber with `containerConcurrency: 1` that holds each
/// for 200 ms scales it past one instance while it lasts, and to zero once it is gone.
#[tokio::test]
async fn backlog_scales_the_subscriber() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) =
        registry_with_info_image(&["--scale-to-zero-grace-period-seconds", "1"]).await;
    apply(
        &d,
        &sink(
            "busy",
            &image,
            &[("EVENT_DELAY_MS", "200")],
            "autoscaling.knative.dev/window: \"6s\"\nautoscaling.knative.dev/max-scale: \"4\"",
            "containerConcurrency: 1",
        ),
    );
    apply(&d, &broker("load"));
    apply(&d, &trigger("t-busy", "load", "", "busy", ""));
    let url = wait_broker(&d, "load")
        .await
        .status
        .address
        .expect("address")
        .url;
    wait_trigger(&d, "t-busy", ConditionStatus::True).await;
    crate::serving::wait_service_ready(&d, "busy").await;

    let http = ingress_client(&d);
    let events: Vec<cloudevents::Event> = (0..200)
        .map(|i| event(&format!("bl-{i:03}"), "com.example.load", "/e2e/load"))
        .collect();
    let (status, body) = post(&http, &url, batched(&events)).await;
    assert_eq!(status, 202, "{body}");

    // While the backlog lasts: more than one instance, and the autoscaler says why.
    let client = d.client();
    let mut max_instances = 0;
    let mut max_depth = 0.0f64;
    let mut reason = None;
    let deadline = std::time::Instant::now() + MAX_WAIT;
    loop {
        let n = ids(&d, "busy").len();
        if let Ok(list) = client.running_instances("default", "busy").await {
            max_instances = max_instances.max(list.len());
        }
        if let Some(text) = metrics_text(&d).await {
            let depth = metric(
                &text,
                "skiff_events_queue_depth",
                &[("subscription", "trigger/default/t-busy")],
            );
            max_depth = max_depth.max(depth);
        }
        if reason.is_none()
            && let Ok(s) = client.scale("default", "busy").await
        {
            let v = serde_json::to_string(&s).unwrap_or_default();
            if v.contains("queued for delivery") {
                reason = Some(v);
            }
        }
        if n == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the backlog to be delivered: {n} of 200\n{}",
            tail(&d.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("backlog: at most {max_instances} instances, queue depth at most {max_depth}");
    assert!(
        max_instances > 1,
        "the backlog scaled the subscriber: {max_instances}"
    );
    assert!(max_instances <= 4, "within max-scale: {max_instances}");
    assert!(max_depth > 1.0, "{max_depth}");
    assert!(reason.is_some(), "a scale decision names the backlog");
    // Afterwards, nothing queued and no instance.
    wait_metric(
        &d,
        "skiff_events_queue_depth",
        &[("subscription", "trigger/default/t-busy")],
        0.0,
    )
    .await;
    crate::serving::wait_instances(&d, "busy", "scale to zero after the backlog", |l| {
        l.is_empty()
    })
    .await;
    d.cleanup().await.expect("cleanup");
}

/// The start of the minute of `t` (UTC).
fn minute_of(t: jiff::Timestamp) -> i64 {
    t.as_second().div_euclid(60)
}

/// A PingSource every minute: its event (type, source, id `<uid>-<seconds>`) arrives at the
/// minute, and its status has the last and next schedule times. Stopped across two minute
/// boundaries, the restarted daemon fires once for the runs it missed, not once per run.
#[tokio::test]
async fn ping_source_and_the_runs_missed_while_down() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    apply(&d, &sink("pinged", &image, &[], "", ""));
    apply(
        &d,
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: every-minute\nspec:\n  schedule: \"* * * * *\"\n  contentType: application/json\n  data: '{\"hello\": \"ping\"}'\n  sink:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: pinged\n",
    );
    let client = d.client();
    let p: PingSource = client
        .get_eventing("pingsources", "default", "every-minute")
        .await
        .expect("pingsource");
    let uid = p.metadata.uid.clone();
    let source = "/apis/v1/namespaces/default/pingsources/every-minute";
    // The scheduled time of a ping event, from its id.
    let scheduled = |id: &str| -> i64 {
        id.strip_prefix(&format!("{uid}-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a ping id is `<uid>-<seconds>`: {id}"))
    };
    let pings = |d: &TestDaemon| -> Vec<Seen> {
        deliveries(d, "pinged")
            .into_iter()
            .filter(|s| s.ty == "dev.knative.sources.ping")
            .collect()
    };
    let first = wait_for(
        "the first ping",
        Duration::from_millis(250),
        Duration::from_secs(75),
        || {
            let p = pings(&d);
            async move { p.into_iter().next() }
        },
    )
    .await
    .expect("a ping within a minute");
    assert_eq!(first.source, source, "{first:?}");
    let first_at = scheduled(&first.id);
    assert_eq!(first_at % 60, 0, "a minute boundary: {first:?}");
    eprintln!(
        "first ping {} scheduled {first_at}, logged {:#} later",
        first.id,
        first
            .at
            .duration_since(jiff::Timestamp::from_second(first_at).expect("time"))
    );
    let p: PingSource = wait_for(
        "the PingSource status to record the run",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let p: PingSource = client
                    .get_eventing("pingsources", "default", "every-minute")
                    .await
                    .ok()?;
                let last: jiff::Timestamp = p.status.last_schedule_time.as_deref()?.parse().ok()?;
                (last.as_second() == first_at).then_some(p)
            }
        },
    )
    .await
    .expect("status");
    let next: jiff::Timestamp = p
        .status
        .next_schedule_time
        .as_deref()
        .expect("nextScheduleTime")
        .parse()
        .expect("RFC 3339");
    assert_eq!(next.as_second(), first_at + 60, "{:?}", p.status);
    assert_eq!(
        p.condition("Ready").map(|c| c.status),
        Some(ConditionStatus::True),
        "{:?}",
        p.status
    );

    // Down across two minute boundaries.
    d.stop().await.expect("stop");
    let stopped = jiff::Timestamp::now();
    wait_for(
        "two minute boundaries to pass while the daemon is down",
        Duration::from_millis(200),
        Duration::from_secs(130),
        || {
            let passed = minute_of(jiff::Timestamp::now()) >= minute_of(stopped) + 2;
            async move { passed.then_some(()) }
        },
    )
    .await
    .expect("time passes");
    let restarted = jiff::Timestamp::now();
    d.restart().await.expect("restart");
    let client = d.client();
    // The catch-up run is the latest missed boundary; the one before it is counted as missed.
    let latest_missed = minute_of(restarted) * 60;
    let p: PingSource = wait_for(
        "the restarted daemon to fire the missed run",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let p: PingSource = client
                    .get_eventing("pingsources", "default", "every-minute")
                    .await
                    .ok()?;
                let last: jiff::Timestamp = p.status.last_schedule_time.as_deref()?.parse().ok()?;
                (last.as_second() >= latest_missed).then_some(p)
            }
        },
    )
    .await
    .expect("a catch-up run");
    eprintln!("after the restart: {:?}", p.status);
    // Everything fired so far has been delivered.
    wait_metric(
        &d,
        "skiff_events_queue_depth",
        &[("subscription", "ping/default/every-minute")],
        0.0,
    )
    .await;
    let after: BTreeSet<i64> = pings(&d)
        .iter()
        .map(|s| scheduled(&s.id))
        .filter(|t| *t > first_at && *t <= restarted.as_second())
        .collect();
    assert_eq!(
        after,
        BTreeSet::from([latest_missed]),
        "one ping for the missed runs, at the latest of them"
    );
    assert!(p.status.missed_runs.unwrap_or(0) >= 1, "{:?}", p.status);
    d.cleanup().await.expect("cleanup");
}

/// Manifests the CLI refuses, each with the path of what is wrong: two attributes in one
/// `exact` filter, a 6-field schedule, a misspelt time zone, an unknown field, a `uri`
/// dead-letter sink. Nothing is stored.
#[tokio::test]
async fn bad_manifests_name_their_fields() {
    let d = TestDaemon::start(crate::SKIFF).await.expect("daemon");
    let subscriber = "  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n";
    let ping = |extra: &str| {
        format!(
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: p\nspec:\n{extra}  sink:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: s\n"
        )
    };
    let trig = |extra: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n{extra}"
        )
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "two attributes in one exact filter",
            trig(&format!(
                "  filters:\n  - exact:\n      type: a\n      source: b\n{subscriber}"
            )),
            &["spec.filters[0].exact", "exactly one"],
        ),
        (
            "a 6-field schedule",
            ping("  schedule: \"0 * * * * *\"\n"),
            &["spec.schedule", "has 6 fields", "skiff takes 5"],
        ),
        (
            "a misspelt time zone",
            ping("  schedule: \"* * * * *\"\n  timezone: Europe/Berln\n"),
            &["spec.timezone", "did you mean Europe/Berlin"],
        ),
        (
            "an unknown field",
            trig(&format!(
                "  subscribr:\n    ref:\n      kind: Service\n      name: s\n{subscriber}"
            )),
            &["spec.subscribr", "did you mean `subscriber`"],
        ),
        (
            "a uri dead-letter sink",
            trig(&format!(
                "{subscriber}  delivery:\n    deadLetterSink:\n      uri: http://example.com/\n"
            )),
            &["spec.delivery.deadLetterSink.uri", "uri"],
        ),
    ];
    for (what, yaml, want) in cases {
        let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&yaml));
        assert_ne!(o.status.code(), Some(0), "{what}: {}", stdout(&o));
        let err = stderr(&o);
        eprintln!("{what}:\n{err}");
        for w in want {
            assert!(err.contains(w), "{what}: stderr names {w:?}:\n{err}");
        }
    }
    let client = d.client();
    let triggers: Vec<Trigger> = client
        .list_eventing("triggers", Some("default"))
        .await
        .expect("list");
    let pings: Vec<PingSource> = client
        .list_eventing("pingsources", Some("default"))
        .await
        .expect("list");
    assert!(triggers.is_empty() && pings.is_empty(), "nothing stored");
    d.cleanup().await.expect("cleanup");
}

/// A Trigger whose subscriber is a Cloud Run Job: each matching event starts one execution,
/// whose task sees the event's attributes and data as `CE_*` variables.
#[tokio::test]
async fn a_job_as_subscriber_runs_once_per_event() {
    if crate::jobs::skip() {
        return;
    }
    let d = crate::jobs::daemon(&[]).await;
    let job = crate::jobs::job_yaml(&crate::jobs::JobSpec {
        name: "on-order",
        script: "echo \"got $CE_ID $CE_TYPE $CE_DATA\"",
        ..Default::default()
    });
    apply(
        &d,
        &format!(
            "{job}---\n{}---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-job\nspec:\n  broker: jobs\n  filter:\n    attributes:\n      type: com.example.order\n  subscriber:\n    ref:\n      apiVersion: run.googleapis.com/v1\n      kind: Job\n      name: on-order\n",
            broker("jobs")
        ),
    );
    wait_trigger(&d, "to-job", ConditionStatus::True).await;
    let http = ingress_client(&d);
    for id in ["order-1", "order-2"] {
        let (status, body) = post(
            &http,
            &broker_url(&d, "jobs"),
            binary(event(id, "com.example.order", "/shop")),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let client = d.client();
    let executions = wait_for(
        "two executions, ended",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let all = client
                    .list_executions("default", Some("on-order"))
                    .await
                    .ok()?;
                (all.len() == 2 && all.iter().all(|e| e.is_done())).then_some(all)
            }
        },
    )
    .await
    .expect("an execution per event");
    let mut seen = BTreeSet::new();
    for e in &executions {
        let e = crate::jobs::ended(&d, &e.metadata.name).await;
        assert_eq!(
            e.completion_status(),
            skiff_api::job::CompletionStatus::ExecutionSucceeded,
            "{e:?}"
        );
        let mut lines = Vec::new();
        client
            .execution_logs("default", &e.metadata.name, &[], |l| lines.push(l.line))
            .await
            .expect("the execution's logs");
        let got = lines
            .iter()
            .find(|l| l.starts_with("got "))
            .unwrap_or_else(|| panic!("no event in the task's output: {lines:?}"));
        let words: Vec<&str> = got.split(' ').collect();
        assert_eq!(words[2], "com.example.order", "{got}");
        assert!(
            got.contains(&format!("{{\"id\":\"{}\"}}", words[1])),
            "{got}"
        );
        seen.insert(words[1].to_owned());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["order-1".to_owned(), "order-2".to_owned()])
    );
    d.cleanup().await.expect("cleanup");
}
