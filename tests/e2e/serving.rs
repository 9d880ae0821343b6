//! Serving through the real daemon: the router, the activator and the autoscaler with real
//! runc instances of the workspace's test server, reached through the ingress on loopback.
//! Scale from zero, scale to zero and back, `containerConcurrency` as a hard limit, traffic
//! splits and tags, deploys under load, timeouts, request headers, and the metric series of
//! deleted Services.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use skiff_api::wire::InstanceView;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::{
    apply, indent, registry_with_image, registry_with_info_image, skip_without_runc, stdout,
};

/// A Service of the test server image: `annotations` on the template (YAML map lines),
/// `spec_extra` revision fields, `env_target` as `TARGET`, and `traffic` (YAML list lines).
pub(crate) fn service(
    name: &str,
    image: &str,
    annotations: &str,
    spec_extra: &str,
    target: &str,
    traffic: &str,
) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!(
            "    metadata:\n      annotations:\n{}",
            indent(annotations, 8)
        )
    };
    let traffic = if traffic.is_empty() {
        String::new()
    } else {
        format!("  traffic:\n{}", indent(traffic, 2))
    };
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n{annotations}    spec:\n{}      containers:\n      - image: {image}\n        env:\n        - name: TARGET\n          value: \"{target}\"\n{traffic}",
        indent(spec_extra, 6),
    )
}

/// A response from the ingress.
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

pub(crate) async fn get(http: &reqwest::Client, d: &TestDaemon, host: &str, path: &str) -> Answer {
    let r = http
        .get(format!("http://{}{path}", d.ingress()))
        .header("host", host)
        .send()
        .await
        .expect("request to the ingress");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// Waits until `revision` (in `default`) is pinned to its image's digest.
pub(crate) async fn wait_pinned(d: &TestDaemon, revision: &str) {
    let client = d.client();
    wait_for(
        "the revision to be pinned",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let r = client.get_revision("default", revision).await.ok()?;
                r.status
                    .container_statuses
                    .first()?
                    .image_digest
                    .as_ref()
                    .map(|_| ())
            }
        },
    )
    .await
    .expect("pinned");
}

pub(crate) fn host(svc: &str) -> String {
    format!("{svc}.default.localhost")
}

/// The revision that answered a `/info` request (the runtime sets `K_REVISION`).
fn revision_of(a: &Answer) -> String {
    serde_json::from_str::<Value>(&a.body)
        .ok()
        .and_then(|v| v["env"]["K_REVISION"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no K_REVISION in {} {}", a.status, a.body))
}

/// The Service's scale (override, per-revision desired/ready, cold starts, decisions).
async fn scale(d: &TestDaemon, svc: &str) -> Value {
    let s = d.client().scale("default", svc).await.expect("scale");
    serde_json::to_value(s).expect("a scale status is JSON")
}

fn revision_scale<'a>(s: &'a Value, rev: &str) -> &'a Value {
    s["revisions"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["revision"] == rev))
        .unwrap_or_else(|| panic!("no scale for {rev} in {s:#}"))
}

fn ready_instances(s: &Value, rev: &str) -> u64 {
    revision_scale(s, rev)["ready"].as_u64().unwrap_or(0)
}

/// Waits until the Service's running instance count (any phase) satisfies `pred`.
pub(crate) async fn wait_instances(
    d: &TestDaemon,
    svc: &str,
    what: &str,
    pred: impl Fn(&[InstanceView]) -> bool,
) {
    let client = d.client();
    let pred = &pred;
    let r = wait_for(what, Duration::from_millis(100), MAX_WAIT, || {
        let client = client.clone();
        let svc = svc.to_owned();
        async move {
            let list = client.running_instances("default", &svc).await.ok()?;
            pred(&list).then_some(())
        }
    })
    .await;
    if let Err(e) = r {
        let o = d.cli(&["describe", "service", svc]);
        panic!(
            "{e}\n{}\n--- daemon log tail\n{}",
            stdout(&o),
            tail(&d.log_text(), 40)
        );
    }
}

/// Waits for the Service to be Ready; its JSON.
pub(crate) async fn wait_service_ready(d: &TestDaemon, svc: &str) -> Value {
    let client = d.client();
    let r = wait_for(
        "the Service to be Ready",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            let svc = svc.to_owned();
            async move {
                let s = client.get_service("default", &svc).await.ok()?;
                let ready = s
                    .condition("Ready")
                    .is_some_and(|c| c.status == skiff_api::object::ConditionStatus::True);
                ready.then(|| serde_json::to_value(&s).ok()).flatten()
            }
        },
    )
    .await;
    match r {
        Ok(v) => v,
        Err(e) => {
            let o = d.cli(&["describe", "service", svc]);
            panic!(
                "{e}\n{}\n--- daemon log tail\n{}",
                stdout(&o),
                tail(&d.log_text(), 40)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// 20 concurrent first requests to a Service at zero (initial-scale 0: nothing ever ran)
/// are all held while one instance starts, and all get 200. The cold start is recorded,
/// and the request headers are Knative's.
#[tokio::test]
async fn scale_from_zero_holds_concurrent_requests() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service(
            "sv-cold",
            &image,
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "",
            "cold",
            "",
        ),
    );
    // Pinned, and no instance runs.
    wait_pinned(&d, "sv-cold-00001").await;
    let client = d.client();
    assert!(
        client
            .running_instances("default", "sv-cold")
            .await
            .expect("instances")
            .is_empty()
    );

    let http = crate::http();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, h, url) = (
            http.clone(),
            host("sv-cold"),
            format!("http://{}/info", d.ingress()),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .get(url)
                .header("host", h)
                .send()
                .await
                .expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("join");
        assert_eq!(status, 200, "{body}");
    }
    let s = scale(&d, "sv-cold").await;
    let r = revision_scale(&s, "sv-cold-00001");
    assert_eq!(r["coldStarts"], 1, "{s:#}");
    assert_eq!(r["coldStartRequests"], 20, "{s:#}");
    assert!(
        r["lastColdStartSeconds"].as_f64().is_some_and(|v| v > 0.0),
        "{s:#}"
    );
    let o = d.cli(&["describe", "service", "sv-cold"]);
    assert!(
        stdout(&o).contains("request(s) waiting for a revision at zero"),
        "{}",
        stdout(&o)
    );
    let metrics = crate::http()
        .get(format!("{}/metrics", d.api()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("skiff_router_cold_starts_total{namespace=\"default\",service=\"sv-cold\",revision=\"sv-cold-00001\"} 1"), "{metrics}");

    // Knative's request headers: X-Forwarded-For/-Proto, Forwarded, a request id (generated
    // and returned, or passed on), traceparent (started, or passed on).
    let a = get(&http, &d, &host("sv-cold"), "/headers").await;
    assert_eq!(a.status, 200);
    let v: Value = serde_json::from_str(&a.body).expect("json");
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{v:#}");
    assert_eq!(h["x-forwarded-proto"], "http", "{v:#}");
    assert!(
        h["forwarded"].as_str().is_some_and(
            |f| f.contains("for=127.0.0.1") && f.contains("host=\"sv-cold.default.localhost\"")
        ),
        "{v:#}"
    );
    let rid = a
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id returned");
    assert_eq!(h["x-request-id"], rid, "{v:#}");
    assert!(
        h["traceparent"]
            .as_str()
            .is_some_and(|t| t.len() == 55 && t.starts_with("00-")),
        "{v:#}"
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http
        .get(format!("http://{}/headers", d.ingress()))
        .header("host", host("sv-cold"))
        .header("x-request-id", "my-id-1")
        .header("traceparent", tp)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("my-id-1")
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["headers"]["x-request-id"], "my-id-1");
    assert_eq!(v["headers"]["traceparent"], tp);
    assert_eq!(v["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");

    // Garbage is a 400, and the ingress keeps serving.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(d.ingress())
            .await
            .expect("connect");
        s.write_all(b"NOT HTTP AT ALL\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert_eq!(
            get(&http, &d, &host("sv-cold"), "/healthz").await.status,
            200
        );
    }
    // An unknown host is a clear 404.
    let a = get(&http, &d, "nope.default.localhost", "/").await;
    assert_eq!(a.status, 404);
    assert!(
        a.body
            .contains("no service for host `nope.default.localhost`"),
        "{}",
        a.body
    );
    d.cleanup().await.expect("cleanup");
}

/// An idle revision goes to zero after its stable window and the grace period, and the next
/// request brings it back; the decisions say why.
#[tokio::test]
async fn scale_to_zero_and_back() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) =
        registry_with_info_image(&["--scale-to-zero-grace-period-seconds", "1"]).await;
    apply(
        &d,
        &service(
            "sv-zero",
            &image,
            "autoscaling.knative.dev/window: \"6s\"",
            "",
            "zero",
            "",
        ),
    );
    // initial-scale 1: the revision becomes ready on its own, then goes idle to zero.
    wait_service_ready(&d, "sv-zero").await;
    wait_instances(&d, "sv-zero", "one instance (initial scale)", |l| {
        l.len() == 1
    })
    .await;
    wait_instances(&d, "sv-zero", "scale to zero", |l| l.is_empty()).await;
    let s = scale(&d, "sv-zero").await;
    let decisions = revision_scale(&s, "sv-zero-00001")["decisions"].to_string();
    assert!(decisions.contains("scaled to zero"), "{s:#}");

    // A daemon restart does not give the idle revision its initial scale again: it is older
    // than its stable window, so it stays at zero until a request comes.
    d.restart().await.expect("restart");
    let client = d.client();
    let s = wait_for(
        "the restarted daemon's first decision for sv-zero-00001",
        Duration::from_millis(50),
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let s = client.scale("default", "sv-zero").await.ok()?;
                // A restarted daemon's first decision for a revision is always recorded.
                let decided = s
                    .revisions
                    .iter()
                    .any(|r| r.revision == "sv-zero-00001" && !r.decisions.is_empty());
                decided.then(|| serde_json::to_value(s).expect("a scale status is JSON"))
            }
        },
    )
    .await
    .expect("scale after restart");
    let r = revision_scale(&s, "sv-zero-00001");
    assert_eq!(r["desired"], 0, "{s:#}");
    assert!(!r.to_string().contains("initial-scale"), "{s:#}");
    assert!(
        d.client()
            .running_instances("default", "sv-zero")
            .await
            .expect("instances")
            .is_empty(),
        "no instance after the restart"
    );

    let http = crate::http();
    let a = get(&http, &d, &host("sv-zero"), "/info").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(revision_of(&a), "sv-zero-00001");
    let s = scale(&d, "sv-zero").await;
    assert_eq!(ready_instances(&s, "sv-zero-00001"), 1, "{s:#}");
    assert_eq!(
        revision_scale(&s, "sv-zero-00001")["coldStarts"],
        1,
        "{s:#}"
    );
    // `skiff get services` shows ready/desired instances.
    let o = d.cli(&["get", "services"]);
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with("sv-zero"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(row.contains(" 1/1 "), "{}", stdout(&o));
    d.cleanup().await.expect("cleanup");
}

/// With scale to zero turned off for the whole daemon (Knative's `enable-scale-to-zero:
/// false`), one instance is every revision's floor: even one asking for `initial-scale: 0`
/// runs an instance without a request, and the decision says why.
#[tokio::test]
async fn scale_to_zero_can_be_disabled() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&["--enable-scale-to-zero", "false"]).await;
    apply(
        &d,
        &service(
            "sv-floor",
            &image,
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "",
            "floor",
            "",
        ),
    );
    wait_service_ready(&d, "sv-floor").await;
    wait_instances(&d, "sv-floor", "one instance (the floor)", |l| l.len() == 1).await;
    let s = scale(&d, "sv-floor").await;
    let r = revision_scale(&s, "sv-floor-00001");
    assert_eq!(r["desired"], 1, "{s:#}");
    assert_eq!(r["coldStarts"], 0, "no request started it: {s:#}");
    assert!(
        r["decisions"].to_string().contains("raised to min-scale 1"),
        "{s:#}"
    );
    d.cleanup().await.expect("cleanup");
}

/// `containerConcurrency: 1` is a hard limit: 5 clients for 20 s against an endpoint that
/// answers 500 whenever it sees two requests at once never get a 500; the autoscaler adds
/// instances for the load.
#[tokio::test]
async fn container_concurrency_is_a_hard_limit() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service("sv-cc", &image, "", "containerConcurrency: 1", "cc", ""),
    );
    wait_service_ready(&d, "sv-cc").await;
    let http = crate::http();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (http, url, h, stop, ok) = (
            http.clone(),
            format!("http://{}/concurrency?hold_ms=20", d.ingress()),
            host("sv-cc"),
            stop.clone(),
            ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .get(&url)
                    .header("host", &h)
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.push((status, r.text().await.unwrap_or_default()));
                }
            }
            bad
        }));
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.expect("join"));
    }
    let served = ok.load(Ordering::Relaxed);
    if !bad.is_empty() {
        let o = d.cli(&["describe", "service", "sv-cc"]);
        panic!(
            "{} non-200 answers (of {}): {:?}\n{}\n--- daemon log tail\n{}",
            bad.len(),
            served + bad.len() as u64,
            &bad[..bad.len().min(5)],
            stdout(&o),
            tail(&d.log_text(), 60)
        );
    }
    assert!(served > 100, "only {served} requests served in 20 s");
    let s = scale(&d, "sv-cc").await;
    assert!(
        ready_instances(&s, "sv-cc-00001") >= 2,
        "the autoscaler added instances: {s:#}"
    );
    d.cleanup().await.expect("cleanup");
}

/// 50/50 over two revisions: each side gets at least 25% of 200 requests; a tag URL reaches
/// only its revision; status.traffic says what is served.
#[tokio::test]
async fn traffic_split_and_tags() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service("sv-split", &image, "", "", "one", ""));
    wait_service_ready(&d, "sv-split").await;
    let traffic = "- revisionName: sv-split-00001\n  percent: 50\n  tag: old\n- latestRevision: true\n  percent: 50\n  tag: new\n";
    apply(&d, &service("sv-split", &image, "", "", "two", traffic));
    let client = d.client();
    wait_for(
        "both revisions served",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.get_service("default", "sv-split").await.ok()?;
                let revs: Vec<&str> = s
                    .status
                    .traffic
                    .iter()
                    .map(|t| t.revision_name.as_str())
                    .collect();
                (revs == ["sv-split-00001", "sv-split-00002"]).then_some(())
            }
        },
    )
    .await
    .expect("traffic resolved");
    let http = crate::http();
    let (mut one, mut two) = (0, 0);
    for _ in 0..200 {
        let a = get(&http, &d, &host("sv-split"), "/info").await;
        assert_eq!(a.status, 200, "{}", a.body);
        match revision_of(&a).as_str() {
            "sv-split-00001" => one += 1,
            "sv-split-00002" => two += 1,
            other => panic!("unexpected revision {other}"),
        }
    }
    assert!(one >= 50 && two >= 50, "split {one}/{two}");
    for (tag, rev) in [("old", "sv-split-00001"), ("new", "sv-split-00002")] {
        for _ in 0..20 {
            let a = get(
                &http,
                &d,
                &format!("{tag}-sv-split.default.localhost"),
                "/info",
            )
            .await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(revision_of(&a), rev);
        }
    }
    let s = client
        .get_service("default", "sv-split")
        .await
        .expect("service");
    let urls: Vec<String> = s
        .status
        .traffic
        .iter()
        .filter_map(|t| t.url.clone())
        .collect();
    let port = d
        .ingress()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        urls,
        [
            format!("http://old-sv-split.default.localhost:{port}"),
            format!("http://new-sv-split.default.localhost:{port}")
        ]
    );
    d.cleanup().await.expect("cleanup");
}

/// A new revision deployed under steady load: not one non-2xx answer, and the load moves
/// to the new revision once it is ready; the old one drains and stops.
#[tokio::test]
async fn deploy_under_load_loses_nothing() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service("sv-deploy", &image, "", "", "one", ""));
    wait_service_ready(&d, "sv-deploy").await;
    let http = crate::http();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, h, stop) = (
            http.clone(),
            format!("http://{}/info", d.ingress()),
            host("sv-deploy"),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad, mut last_rev) = (0u64, Vec::new(), String::new());
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).header("host", &h).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        if (200..300).contains(&status) {
                            ok += 1;
                            if let Some(rev) = serde_json::from_str::<Value>(&body)
                                .ok()
                                .and_then(|v| v["env"]["K_REVISION"].as_str().map(str::to_owned))
                            {
                                last_rev = rev;
                            }
                        } else {
                            bad.push(format!("{status} {body}"));
                        }
                    }
                    Err(e) => bad.push(format!("transport: {e}")),
                }
            }
            (ok, bad, last_rev)
        }));
    }
    // Load on the first revision for a moment, then deploy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    apply(&d, &service("sv-deploy", &image, "", "", "two", ""));
    // The old revision's instances drain and stop once the new one serves.
    wait_instances(&d, "sv-deploy", "only the new revision's instances", |l| {
        !l.is_empty() && l.iter().all(|i| i.revision == "sv-deploy-00002")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, Vec::new());
    for t in tasks {
        let (o, b, last) = t.await.expect("join");
        ok += o;
        bad.extend(b);
        assert_eq!(
            last, "sv-deploy-00002",
            "each client ends on the new revision"
        );
    }
    assert!(
        bad.is_empty(),
        "{} failed of {}: {:?}",
        bad.len(),
        ok + bad.len() as u64,
        &bad[..bad.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests in the run");
    d.cleanup().await.expect("cleanup");
}

/// Timeouts kept apart: a delay before the first byte under `timeoutSeconds` is 200, over
/// it 504; a response that starts at once may stream past it (200, complete); silence
/// longer than `idleTimeoutSeconds` in the middle of a response cuts it short.
#[tokio::test]
async fn timeouts() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service("sv-timeout", &image, "", "timeoutSeconds: 2", "t", ""),
    );
    apply(
        &d,
        &service(
            "sv-idle",
            &image,
            "",
            "timeoutSeconds: 30\nidleTimeoutSeconds: 1",
            "t",
            "",
        ),
    );
    wait_service_ready(&d, "sv-timeout").await;
    wait_service_ready(&d, "sv-idle").await;
    let http = crate::http();
    let a = get(&http, &d, &host("sv-timeout"), "/delay?ms=300").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = get(&http, &d, &host("sv-timeout"), "/delay?ms=5000").await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(
        a.body.contains("did not start answering within 2s"),
        "{}",
        a.body
    );
    let a = get(
        &http,
        &d,
        &host("sv-timeout"),
        "/stream?chunks=5&interval_ms=800",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    // Idle timeout: chunks 1.5 s apart with a 1 s idle limit end the response after the
    // first chunk, as an error (not a complete body).
    let r = http
        .get(format!(
            "http://{}/stream?chunks=3&interval_ms=1500",
            d.ingress()
        ))
        .header("host", host("sv-idle"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await;
    assert!(body.is_err(), "the response is cut short: {body:?}");
    let a = get(
        &http,
        &d,
        &host("sv-idle"),
        "/stream?chunks=3&interval_ms=500",
    )
    .await;
    assert_eq!(a.body, "chunk 0\nchunk 1\nchunk 2\n");
    d.cleanup().await.expect("cleanup");
}

/// A WebSocket echo through the router (HTTP/1.1 upgrade to the instance), and an h2c round
/// trip: HTTP/2 with prior knowledge from the client to skiff, and from skiff to an
/// instance whose port is named `h2c` (the instance reports the protocol it saw).
#[tokio::test]
async fn websocket_and_h2c() {
    if skip_without_runc() {
        return;
    }
    let h2_image = skiff_test_utils::images::h2_server_image().expect("h2 image");
    let (_reg, d, image) = registry_with_image(&h2_image, "skiff/h2:v1", &[]).await;
    let h2c = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: sv-h2c\nspec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n        ports:\n        - name: h2c\n          containerPort: 8080\n"
    );
    let ws = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: sv-ws\nspec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n"
    );
    apply(&d, &h2c);
    apply(&d, &ws);
    wait_service_ready(&d, "sv-h2c").await;
    wait_service_ready(&d, "sv-ws").await;
    let ingress: std::net::SocketAddr = d.ingress().parse().expect("ingress address");

    let echoed = skiff_test_utils::net::websocket_echo(
        ingress,
        &host("sv-ws"),
        "/ws",
        &["one", "two", "three"],
    )
    .await
    .expect("websocket through skiff");
    assert_eq!(echoed, ["one", "two", "three"]);

    // h2c end to end.
    let (status, version, body) =
        skiff_test_utils::net::h2c_get(ingress, &host("sv-h2c"), "/proto")
            .await
            .expect("h2c through skiff");
    assert_eq!((status, version), (200, http::Version::HTTP_2), "{body}");
    assert_eq!(
        body,
        format!("HTTP/2.0\n{}\n", host("sv-h2c")),
        "the instance saw HTTP/2 and the client's authority"
    );
    // An HTTP/1.1 client of an h2c Service: skiff still speaks HTTP/2 to the instance.
    let (status, version, body) =
        skiff_test_utils::net::http1_get(ingress, &host("sv-h2c"), "/proto")
            .await
            .expect("http/1.1 through skiff");
    assert_eq!((status, version), (200, http::Version::HTTP_11), "{body}");
    assert_eq!(body, format!("HTTP/2.0\n{}\n", host("sv-h2c")));
    // And the http1 Service's instance sees HTTP/1.1 even from an h2c client.
    let (status, _, body) = skiff_test_utils::net::h2c_get(ingress, &host("sv-ws"), "/proto")
        .await
        .expect("h2c client, http1 instance");
    assert_eq!(status, 200);
    assert_eq!(body, format!("HTTP/1.1\n{}\n", host("sv-ws")));
    d.cleanup().await.expect("cleanup");
}

/// A new revision that crashes never takes traffic: the previous one keeps serving, and the
/// Service says why.
#[tokio::test]
async fn failing_revision_never_takes_traffic() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service("sv-fail", &image, "", "", "one", ""));
    wait_service_ready(&d, "sv-fail").await;
    let crashing = service("sv-fail", &image, "", "", "two", "").replace(
        "        env:\n",
        "        args: [\"--crash-after-ms\", \"1\"]\n        env:\n",
    );
    apply(&d, &crashing);
    let client = d.client();
    let why = wait_for(
        "the Service to report the failing revision",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.get_service("default", "sv-fail").await.ok()?;
                let c = s.condition("Ready")?;
                (c.status == skiff_api::object::ConditionStatus::False)
                    .then(|| c.message.clone().unwrap_or_default())
            }
        },
    )
    .await
    .expect("the Service says why");
    assert!(why.contains("sv-fail-00002"), "{why}");
    assert!(
        why.contains("crashing now") || why.contains("exited with code"),
        "{why}"
    );
    let http = crate::http();
    for _ in 0..20 {
        let a = get(&http, &d, &host("sv-fail"), "/info").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(revision_of(&a), "sv-fail-00001");
    }
    let s = client
        .get_service("default", "sv-fail")
        .await
        .expect("service");
    assert_eq!(
        s.status.latest_ready_revision_name.as_deref(),
        Some("sv-fail-00001")
    );
    assert_eq!(
        s.status.latest_created_revision_name.as_deref(),
        Some("sv-fail-00002")
    );
    d.cleanup().await.expect("cleanup");
}

/// The daemon's `/metrics` text.
pub(crate) async fn metrics_text(d: &TestDaemon) -> Option<String> {
    crate::http()
        .get(format!("{}/metrics", d.api()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The samples of `text` with a `service` or `revision` label naming one of `services` or
/// their revisions (`<service>-NNNNN`).
fn samples_of<'a>(text: &'a str, services: &std::collections::HashSet<String>) -> Vec<&'a str> {
    let names = |line: &'a str, label: &str| -> Option<&'a str> {
        let start = line.find(&format!("{label}=\""))? + label.len() + 2;
        line[start..].split('"').next()
    };
    let service_of_revision =
        |rev: &'a str| rev.rsplit_once('-').map_or(rev, |(service, _)| service);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            names(l, "service").is_some_and(|s| services.contains(s))
                || names(l, "revision").is_some_and(|r| services.contains(service_of_revision(r)))
        })
        .collect()
}

/// Creating and deleting 100 Services leaves no series of theirs in `/metrics`: each had
/// its autoscaler and router series (three also answered a request, so request counts,
/// latency and a cold start), and once they are deleted none is left, while a Service that
/// stays keeps its series.
#[tokio::test]
async fn deleted_services_leave_no_metric_series() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    // Nothing runs until a request asks: 100 Services start three instances, not 100.
    let at_zero = "autoscaling.knative.dev/initial-scale: \"0\"";
    let gone: Vec<String> = (0..100).map(|i| format!("mgone-{i:03}")).collect();
    let manifests: Vec<String> = gone
        .iter()
        .chain(std::iter::once(&"mkept".to_owned()))
        .map(|name| service(name, &image, at_zero, "", name, ""))
        .collect();
    apply(&d, &manifests.join("---\n"));

    let http = crate::http();
    let asked = ["mgone-000", "mgone-050", "mgone-099", "mkept"];
    for svc in asked {
        let a = get(&http, &d, &host(svc), "/info").await;
        assert_eq!(a.status, 200, "{svc}: {}", a.body);
    }
    let gone_set: std::collections::HashSet<String> = gone.iter().cloned().collect();
    // Every deleted-to-be revision has autoscaler and router series; those asked have counted
    // their request.
    let before = wait_for(
        "every revision's series",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let d = &d;
            let gone = &gone;
            async move {
                let text = metrics_text(d).await?;
                let all = gone.iter().all(|svc| {
                    let rl = format!(
                        r#"{{namespace="default",service="{svc}",revision="{svc}-00001"}}"#
                    );
                    text.contains(&format!("skiff_autoscaler_desired_instances{rl}"))
                        && text.contains(&format!("skiff_router_cold_starts_total{rl}"))
                });
                let counted = asked.iter().all(|svc| {
                    text.contains(&format!(
                        r#"skiff_router_requests_total{{namespace="default",service="{svc}",revision="{svc}-00001",code="200",code_class="2xx"}} 1"#
                    ))
                });
                (all && counted).then_some(text)
            }
        },
    )
    .await
    .expect("series of every revision");
    // The kept Service's series, by name and labels (its parked sandbox's gauges come and
    // go as it is parked and started, so they are left out).
    let kept_series = |text: &str| -> std::collections::BTreeSet<String> {
        samples_of(text, &std::collections::HashSet::from(["mkept".to_owned()]))
            .into_iter()
            .filter(|l| !l.starts_with("skiff_instance_parked_"))
            .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
            .collect()
    };
    let kept = |text: &str| kept_series(text).len();
    let samples_before = samples_of(&before, &gone_set).len();
    let kept_before = kept(&before);

    let mut delete = vec!["delete", "service"];
    delete.extend(gone.iter().map(String::as_str));
    crate::assert_code(&d.cli(&delete), 0);
    let after = wait_for(
        "no series of the deleted Services",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let d = &d;
            let gone_set = &gone_set;
            async move {
                let text = metrics_text(d).await?;
                samples_of(&text, gone_set).is_empty().then_some(text)
            }
        },
    )
    .await;
    let after = match after {
        Ok(text) => text,
        Err(e) => {
            let text = metrics_text(&d).await.unwrap_or_default();
            let left = samples_of(&text, &gone_set);
            panic!(
                "{e}: {} left, such as\n{}",
                left.len(),
                left.iter().take(20).copied().collect::<Vec<_>>().join("\n")
            );
        }
    };
    eprintln!(
        "samples of the 100 Services: {samples_before} before deletion, 0 after; of the kept \
         one: {kept_before} before, {} after",
        kept(&after)
    );
    assert!(samples_before > 0);
    // The Service that stays keeps every series it had.
    let lost: Vec<String> = kept_series(&before)
        .difference(&kept_series(&after))
        .cloned()
        .collect();
    assert!(lost.is_empty(), "the kept Service lost {lost:?}\n{after}");
    d.cleanup().await.expect("cleanup");
}
