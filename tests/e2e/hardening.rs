//! What an adversarial client can do to the daemon, and what it must not get: silent
//! connections, the connection cap under a low open-file limit, the public 503, restarts,
//! SIGTERM, bad client bodies and Host headers, huge manifests, abandoned requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{SKIFF, apply, indent, registry_with_info_image, skip_without_runc, stdout};

/// The value of the first metric line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(d: &TestDaemon) -> String {
    crate::http()
        .get(format!("{}/metrics", d.api()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// A client asking the ingress and the API over and over ([`keep_asking`]).
struct Asker {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Asker {
    /// Stops asking; every question got its answer.
    async fn all_answered(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (answers, failures) = self.task.await.expect("asker");
        assert!(
            failures.is_empty(),
            "{} failures: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(answers > 0);
    }
}

/// A client that keeps asking the ingress (an unknown host: 404 from the router itself) and
/// the API, each on a new connection, until [`Asker::all_answered`].
fn keep_asking(d: &TestDaemon) -> Asker {
    let stop = Arc::new(AtomicBool::new(false));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (ingress, api, token) = (
        format!("http://{}/", d.ingress()),
        format!("{}/api/v1/services", d.api()),
        d.token().to_owned(),
    );
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut answers, mut failures) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match http
                    .get(&ingress)
                    .header("host", "nope.default.localhost")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 404 => answers += 1,
                    Ok(r) => failures.push(format!("ingress: {}", r.status())),
                    Err(e) => failures.push(format!("ingress: {e}")),
                }
                match http.get(&api).bearer_auth(&token).send().await {
                    Ok(r) if r.status() == 200 => answers += 1,
                    Ok(r) => failures.push(format!("API: {}", r.status())),
                    Err(e) => failures.push(format!("API: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answers, failures)
        }
    });
    Asker { stop, task }
}

/// Opens `n` connections to `addr` that send nothing (raising this process's open-file
/// limit to its hard limit first, should a machine's soft limit be lower than `n`).
async fn silent_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.expect("connect"));
    }
    conns
}

/// Whether the peer has closed `c` (EOF or reset), without waiting.
fn closed(c: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match c.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// 2,000 connections that send nothing (and a few that send half a request head) are all
/// closed by the header-read timeout, counted from accept, while a client and the API keep
/// getting answers.
#[tokio::test]
async fn silent_connections_are_closed_from_accept() {
    let d = TestDaemon::start_with(SKIFF, &["--ingress-header-read-timeout-seconds", "2"])
        .await
        .expect("daemon");
    let asker = keep_asking(&d);
    let mut conns = silent_connections(d.ingress(), 2000).await;
    for _ in 0..10 {
        let mut c = TcpStream::connect(d.ingress()).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: nope.default.localhost\r\n")
            .await
            .expect("half a head");
        conns.push(c);
    }
    let conns = Arc::new(conns);
    let open = wait_for(
        "every silent connection to be closed by the daemon",
        Duration::from_millis(200),
        MAX_WAIT,
        || {
            let conns = conns.clone();
            async move {
                let open = conns.iter().filter(|c| !closed(c)).count();
                (open == 0).then_some(open)
            }
        },
    )
    .await;
    let m = metrics(&d).await;
    open.unwrap_or_else(|e| {
        let still = conns.iter().filter(|c| !closed(c)).count();
        panic!("{e}: {still} still open\n{m}")
    });
    asker.all_answered().await;
    assert!(
        metric(
            &m,
            "skiff_router_connections_closed_total{reason=\"header_timeout\"}"
        ) >= 2000.0,
        "{m}"
    );
    d.cleanup().await.expect("cleanup");
}

/// With the ingress capped at 500 connections and the daemon's open-file limit at 1,024,
/// 2,000 silent connections never exhaust its descriptors: past the cap the longest-idle
/// connection is closed for each new one, clients and the API keep getting answers, and the
/// daemon never logs `Too many open files`.
#[tokio::test]
async fn connection_cap_holds_below_the_fd_limit() {
    let d = TestDaemon::start_with(SKIFF, &["--ingress-max-connections", "500"])
        .await
        .expect("daemon");
    d.set_nofile_limit(1024).expect("prlimit");
    let asker = keep_asking(&d);
    let conns = silent_connections(d.ingress(), 2000).await;
    let settled = wait_for(
        "the ingress to settle at its cap",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let d = &d;
            async move {
                let m = metrics(d).await;
                let evicted = metric(
                    &m,
                    "skiff_router_connections_closed_total{reason=\"evicted\"}",
                );
                let open = metric(&m, "skiff_router_connections");
                (evicted >= 1500.0 && open <= 500.0).then_some((evicted, open))
            }
        },
    )
    .await;
    asker.all_answered().await;
    let (evicted, open_now) = settled.unwrap_or_else(|e| panic!("{e}\n{}", d.log_text()));
    // The test's view: the oldest were closed, at most 500 are left.
    let still_open = wait_for(
        "the evicted connections to see their end",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let n = conns.iter().filter(|c| !closed(c)).count();
            async move { (n <= 500).then_some(n) }
        },
    )
    .await
    .expect("at most 500 left open");
    assert!(still_open > 0, "the newest connections stay open");
    assert!(
        !closed(&conns[1999]),
        "the newest connection is not the one closed"
    );
    assert!(closed(&conns[0]), "the oldest idle connection was closed");
    let log = d.log_text();
    assert!(
        !log.contains("Too many open files"),
        "the daemon ran out of descriptors:\n{log}"
    );
    eprintln!("evicted {evicted}, open {open_now}, left open by the test's count {still_open}");
    drop(conns);
    d.cleanup().await.expect("cleanup");
}

/// Raw HTTP/1.1 over one connection: the status code of the answer to `request`.
async fn raw(addr: &str, request: &[u8], half_close: bool) -> (u16, String) {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(request).await.expect("write");
    if half_close {
        c.shutdown().await.expect("shutdown");
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(MAX_WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        // Enough for the status line and a short body.
                        let _ = tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf))
                            .await
                            .map(|r| r.map(|n| out.extend_from_slice(&buf[..n])));
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// RFC 9112 §3.2: two Host headers, an invalid one, or none in HTTP/1.1 is a 400.
#[tokio::test]
async fn bad_host_headers_are_400() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    for (what, req) in [
        (
            "two Host headers",
            &b"GET / HTTP/1.1\r\nHost: a.default.localhost\r\nHost: b.default.localhost\r\n\r\n"[..],
        ),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("an invalid Host", b"GET / HTTP/1.1\r\nHost: ::::\r\n\r\n"),
    ] {
        let (status, text) = raw(d.ingress(), req, false).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(text.contains("request id"), "{what}: {text}");
    }
    // One valid Host is routed (404: no such Service).
    let (status, _) = raw(
        d.ingress(),
        b"GET / HTTP/1.1\r\nHost: a.default.localhost\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(status, 404);
    d.cleanup().await.expect("cleanup");
}

/// A manifest of 100,000 env entries is refused (400, naming the list) without the
/// daemon's memory growing past a bound, even eight at once; over the body limit it is
/// a 413.
#[tokio::test]
async fn huge_manifests_cost_bounded_memory() {
    let d = TestDaemon::start_with(SKIFF, &["--max-body-bytes", "8388608"])
        .await
        .expect("daemon");
    // Parsing a first manifest initializes what every later one shares.
    apply(&d, &crate::service_yaml("warm", "v1"));
    let mut env = String::new();
    for i in 0..100_000 {
        env.push_str(&format!("        - {{name: E{i}, value: v}}\n"));
    }
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: big\nspec:\n  template:\n    spec:\n      containers:\n      - image: skiff.local/absent:v1\n        env:\n{env}"
    );
    assert!(yaml.len() > 2_000_000 && yaml.len() < 8_388_608);
    let (_, peak_before) = d.memory().expect("memory");
    let http = crate::http();
    let url = format!("{}/api/v1/namespaces/default/services/big", d.api());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, yaml, token) = (
            http.clone(),
            url.clone(),
            yaml.clone(),
            d.token().to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .put(&url)
                .bearer_auth(token)
                .header("content-type", "application/yaml")
                .body(yaml)
                .send()
                .await
                .expect("PUT");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("join"));
    }
    let (_, peak_after) = d.memory().expect("memory");
    let grown = peak_after.saturating_sub(peak_before);
    eprintln!(
        "peak RSS {} MiB before, {} MiB after eight 100,000-entry manifests",
        peak_before >> 20,
        peak_after >> 20
    );
    // Eight 2.3 MB bodies are held while they are read; parsing stops at the list cap.
    assert!(grown < 96 << 20, "peak RSS grew by {} MiB", grown >> 20);
    for (status, body) in answers {
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("spec.template.spec.containers[0].env")
                && body.contains("more than 1000 items"),
            "{body}"
        );
    }
    // Over the body limit: 413 from the Content-Length alone, before any of it is read.
    let api = d.api().trim_start_matches("http://").to_owned();
    let (status, text) = raw(
        &api,
        format!(
            "PUT /api/v1/namespaces/default/services/big HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {}\r\nContent-Type: application/yaml\r\nContent-Length: 9000000\r\n\r\n",
            d.token()
        )
        .as_bytes(),
        false,
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(
        stdout(&d.cli(&["get", "services"])).lines().count(),
        2,
        "only the warm-up Service is stored"
    );
    d.cleanup().await.expect("cleanup");
}

/// A Service of the test server image with `args`.
fn service_with_args(name: &str, image: &str, args: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n{}",
        indent(&format!("args: {args}"), 8)
    )
}

/// The public 503 of a crash-looping Service says what happened in one line, with the
/// request id; the container's output and the data directory's path stay behind the token
/// (`skiff describe` has them).
#[tokio::test]
async fn the_public_503_discloses_nothing() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    const MARKER: &str = "DB_PASSWORD=hunter2-e2e-marker";
    apply(
        &d,
        &service_with_args(
            "leaky",
            &image,
            &format!("[\"--say\", \"{MARKER}\", \"--crash-after-ms\", \"1\"]"),
        ),
    );
    let client = d.client();
    wait_for(
        "the revision to be crash-looping",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let r = client.get_revision("default", "leaky-00001").await.ok()?;
                let c = r.condition("Ready")?;
                (c.reason.as_deref() == Some("CrashLoopBackOff")).then_some(())
            }
        },
    )
    .await
    .expect("CrashLoopBackOff");
    let http = crate::http();
    let r = http
        .get(format!("http://{}/", d.ingress()))
        .header("host", "leaky.default.localhost")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 503);
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.text().await.expect("body");
    let data_dir = d.data_dir().display().to_string();
    assert!(!body.contains("hunter2"), "the 503 leaks output: {body}");
    assert!(
        !body.contains("crashing now"),
        "the 503 leaks output: {body}"
    );
    assert!(!body.contains(&data_dir), "the 503 leaks a path: {body}");
    assert!(!body.contains("/tmp/"), "the 503 leaks a path: {body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    assert!(
        body.contains(
            "revision `leaky-00001` is not ready: its container keeps exiting (CrashLoopBackOff)"
        ) && body.contains("skiff describe service leaky")
            && body.contains(&format!("(request id {id})")),
        "{body}"
    );
    // Behind the token, the detail is all there.
    let described = stdout(&d.cli(&["describe", "service", "leaky"]));
    assert!(described.contains("hunter2"), "{described}");
    d.cleanup().await.expect("cleanup");
}

/// Clients hammering three existing Services across three `kill -9` restarts never get a
/// 404: the ingress accepts only once its first route table is in.
#[tokio::test]
async fn restarts_never_answer_404() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    let names = ["rs-a", "rs-b", "rs-c"];
    for n in names {
        apply(&d, &service_with_args(n, &image, "[]"));
    }
    for n in names {
        crate::serving::wait_service_ready(&d, n).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in names {
        let (stop, ok, url) = (stop.clone(), ok.clone(), format!("http://{}/", d.ingress()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        tasks.push(tokio::spawn(async move {
            let mut not_found = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Refused connections while the daemon is down are expected.
                if let Ok(r) = http
                    .get(&url)
                    .header("host", format!("{n}.default.localhost"))
                    .send()
                    .await
                {
                    match r.status().as_u16() {
                        404 => not_found.push(r.text().await.unwrap_or_default()),
                        200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            not_found
        }));
    }
    for _ in 0..3 {
        let before = ok.load(Ordering::Relaxed);
        d.kill9();
        d.restart().await.expect("restart");
        wait_for(
            "answers after the restart",
            Duration::from_millis(50),
            MAX_WAIT,
            || {
                let n = ok.load(Ordering::Relaxed);
                async move { (n >= before + 60).then_some(()) }
            },
        )
        .await
        .expect("the Services answer again");
    }
    stop.store(true, Ordering::Relaxed);
    let mut not_found = Vec::new();
    for t in tasks {
        not_found.extend(t.await.expect("join"));
    }
    assert!(
        not_found.is_empty(),
        "{} answers were 404: {:?}",
        not_found.len(),
        &not_found[..not_found.len().min(3)]
    );
    d.cleanup().await.expect("cleanup");
}

/// After SIGTERM the ingress refuses new connections at once, while a response already
/// streaming finishes whole.
#[tokio::test]
async fn sigterm_closes_the_listener_at_once() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service_with_args("term", &image, "[]"));
    let http = crate::http();
    let ingress = d.ingress().to_owned();
    // 50 chunks, 100 ms apart: the response streams for about 5 s.
    let r = http
        .get(format!("http://{ingress}/stream?chunks=50&interval_ms=100"))
        .header("host", "term.default.localhost")
        .send()
        .await
        .expect("the stream starts");
    assert_eq!(r.status().as_u16(), 200);
    let finished = Arc::new(AtomicBool::new(false));
    let reader = {
        let finished = finished.clone();
        tokio::spawn(async move {
            let body = r.bytes().await;
            finished.store(true, Ordering::SeqCst);
            body
        })
    };
    d.terminate().expect("SIGTERM");
    wait_for(
        "new connections to be refused",
        Duration::from_millis(10),
        MAX_WAIT,
        || {
            let ingress = ingress.clone();
            async move {
                match TcpStream::connect(&ingress).await {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await
    .expect("refused after SIGTERM");
    assert!(
        !finished.load(Ordering::SeqCst),
        "new connections were refused only once the streaming response had ended"
    );
    let body = reader
        .await
        .expect("join")
        .expect("the in-flight response finishes");
    let chunks = String::from_utf8_lossy(&body).lines().count();
    assert_eq!(chunks, 50, "{}", String::from_utf8_lossy(&body));
    assert_eq!(d.wait_exit().await.expect("exit"), Some(0));
    d.cleanup().await.expect("cleanup");
}

/// A client's bad body (an invalid chunk, a body cut short) is the client's 400, not the
/// instance's 502, and the log blames nobody else.
#[tokio::test]
async fn bad_client_bodies_are_400() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service_with_args("bodies", &image, "[]"));
    let (status, text) = raw(
        d.ingress(),
        b"POST /echo HTTP/1.1\r\nHost: bodies.default.localhost\r\nContent-Length: 5\r\n\r\nhello",
        false,
    )
    .await;
    assert_eq!(status, 200, "a good body first: {text}");
    for (what, req, half_close) in [
        (
            "an invalid chunk size",
            &b"POST /echo HTTP/1.1\r\nHost: bodies.default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"[..],
            false,
        ),
        (
            "a chunk extension with a bare newline",
            b"POST /echo HTTP/1.1\r\nHost: bodies.default.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\nx\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        (
            "a body cut short",
            b"POST /echo HTTP/1.1\r\nHost: bodies.default.localhost\r\nContent-Length: 100\r\n\r\nonly some",
            true,
        ),
    ] {
        let (status, text) = raw(d.ingress(), req, half_close).await;
        assert_eq!(status, 400, "{what}: {text}");
    }
    let log = d.log_text();
    assert!(
        !log.contains("forwarding to an instance failed"),
        "a client's body was blamed on the instance:\n{log}"
    );
    assert_eq!(
        log.matches("the client sent a bad request body").count(),
        3,
        "each bad body is logged as the client's:\n{log}"
    );
    d.cleanup().await.expect("cleanup");
}

/// Clients that give up while their requests wait for an instance leave the activator's
/// queue: ten abandoned requests, with room for five waiting, never turn the next client's
/// request into a 503.
#[tokio::test]
async fn abandoned_requests_leave_the_queue() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&["--activator-queue-depth", "5"]).await;
    apply(
        &d,
        &format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: queue\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/max-scale: \"1\"\n    spec:\n      containerConcurrency: 1\n      containers:\n      - image: {image}\n"
        ),
    );
    crate::serving::wait_service_ready(&d, "queue").await;
    let client = d.client();
    // The revision's (live) count of `field`, once it is `want`.
    let count_is = |field: &'static str, want: u64| {
        let client = client.clone();
        async move {
            wait_for(
                "the revision's counts",
                Duration::from_millis(20),
                MAX_WAIT,
                || {
                    let client = client.clone();
                    async move {
                        let s = client.scale("default", "queue").await.ok()?;
                        let r = s.revisions.iter().find(|r| r.revision == "queue-00001")?;
                        let r = serde_json::to_value(r).expect("a revision scale is JSON");
                        (r[field].as_u64() == Some(want)).then_some(())
                    }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{field} never became {want}: {e}"));
        }
    };
    // The only instance's only slot is taken for ten minutes.
    let request = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: queue.default.localhost\r\n\r\n").into_bytes()
    };
    let mut holder = TcpStream::connect(d.ingress()).await.expect("connect");
    holder
        .write_all(&request("/delay?ms=600000"))
        .await
        .expect("write");
    count_is("inFlight", 1).await;
    for _ in 0..10 {
        let mut c = TcpStream::connect(d.ingress()).await.expect("connect");
        c.write_all(&request("/")).await.expect("write");
        count_is("waiting", 1).await;
        drop(c);
        count_is("waiting", 0).await;
    }
    drop(holder);
    count_is("inFlight", 0).await;
    let r = crate::http()
        .get(format!("http://{}/", d.ingress()))
        .header("host", "queue.default.localhost")
        .send()
        .await
        .expect("GET");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    d.cleanup().await.expect("cleanup");
}
