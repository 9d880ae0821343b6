//! The SLIs as a user's own Prometheus sees them: Debian's `prometheus`, started here on a
//! loopback port, scrapes the daemon; PromQL over its HTTP API must give the requests this
//! test sent (M1), their p95 in the right bucket (M2), the cold start (M3) and the cost of
//! the requests (M10), with trace ids as exemplars.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::serving::{get, host, service};
use crate::{apply, assert_code, registry_with_info_image, skip_without_runc, stdout};

/// Whether `prometheus` is missing: a failure under CI (it installs it), else a skip.
fn skip_without_prometheus() -> bool {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test: apt-get install prometheus"
    );
    eprintln!("skipped: prometheus is not installed (apt-get install prometheus)");
    true
}

/// A server the test starts on a free loopback port with a config file in a temporary
/// directory; killed when dropped.
struct Spawned {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// Runs `binary` with `config` in `<dir>/config.yml` and the arguments `args` makes from
    /// the directory and the port.
    fn start(
        binary: &str,
        config: &str,
        args: impl Fn(&std::path::Path, u16) -> Vec<String>,
    ) -> Spawned {
        let dir = tempfile::Builder::new()
            .prefix(&format!("skiff-test-{binary}"))
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("config.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(binary)
            .args(args(dir.path(), port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}"));
        Spawned {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// A Prometheus scraping `target` every second.
struct Prometheus(Spawned);

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: skiff\n  static_configs:\n  - targets: ['{target}']\n"
        );
        Prometheus(Spawned::start("prometheus", &config, |dir, port| {
            vec![
                format!("--config.file={}", dir.join("config.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--enable-feature=exemplar-storage".into(),
            ]
        }))
    }

    /// The single value of an instant query, once there is one.
    async fn value(&self, query: &str) -> Option<f64> {
        let r: Value = crate::http()
            .get(format!("{}/api/v1/query", self.0.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        r["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` gives `pred`'s value; returns it.
    async fn wait_value(&self, query: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let pred = &pred;
        let r = wait_for(query, Duration::from_millis(250), MAX_WAIT, || async move {
            self.value(query).await.filter(|v| pred(*v))
        })
        .await;
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}: last value {:?}", self.value(query).await),
        }
    }
}

async fn requests(d: &TestDaemon, path: &str, n: usize, status: u16) {
    let http = crate::http();
    for _ in 0..n {
        let a = get(&http, d, &host("obs"), path).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
    }
}

/// A cold request, 20 that take 350 ms and 10 that get the instance's 404, scraped by a
/// real Prometheus: counts are exact, the p95 is in the 350 ms bucket, one request waited
/// for a cold start, the requests' cost is 31 × $0.40 per million, instance time is billed,
/// and latency buckets carry trace ids as exemplars.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_slis() {
    if skip_without_runc() || skip_without_prometheus() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service(
            "obs",
            &image,
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "",
            "obs",
            "",
        ),
    );
    // The image is pinned before the first request, so that request waits for the instance
    // to start, not for the pull.
    crate::serving::wait_pinned(&d, "obs-00001").await;
    requests(&d, "/info", 1, 200).await;
    requests(&d, "/delay?ms=350", 20, 200).await;
    requests(&d, "/no-such-page", 10, 404).await;

    let target = d.api().trim_start_matches("http://").to_owned();
    let prom = Prometheus::start(&target);
    let svc = r#"service="obs""#;
    let ok = prom
        .wait_value(
            &format!("sum(skiff_router_requests_total{{{svc},code=\"200\"}})"),
            |v| v == 21.0,
        )
        .await;
    assert_eq!(ok, 21.0);
    let not_found = prom
        .wait_value(
            &format!("sum(skiff_router_requests_total{{{svc},code_class=\"4xx\"}})"),
            |v| v >= 0.0,
        )
        .await;
    assert_eq!(not_found, 10.0);
    let p95 = prom
        .wait_value(
            &format!("histogram_quantile(0.95, sum by (le) (skiff_router_request_duration_seconds_bucket{{{svc}}}))"),
            |v| v > 0.0,
        )
        .await;
    assert!(
        p95 > 0.3 && p95 <= 0.5,
        "p95 {p95}s: not in the (0.3, 0.5] bucket of the 350 ms requests"
    );
    let cold = prom
        .wait_value(
            &format!("sum(skiff_router_cold_start_requests_total{{{svc}}})"),
            |v| v >= 0.0,
        )
        .await;
    assert_eq!(cold, 1.0);
    let cost = prom
        .wait_value(
            &format!("sum(skiff_cost_dollars_total{{{svc},resource=\"requests\"}})"),
            |v| v > 0.0,
        )
        .await;
    assert!(
        (cost - 31.0 * 0.40 / 1e6).abs() < 1e-12,
        "requests cost {cost}"
    );
    let billed = prom
        .wait_value(
            &format!("sum(skiff_billable_instance_seconds_total{{{svc}}})"),
            |v| v > 0.0,
        )
        .await;
    assert!(billed > 0.0);
    eprintln!(
        "prometheus: 200s {ok}, 4xx {not_found}, p95 {p95:.3}s, cold-start requests {cold}, requests cost ${cost:.8}, billed {billed:.1} instance-s"
    );
    let exemplars = wait_for("exemplars", Duration::from_millis(250), MAX_WAIT, || {
        let url = format!("{}/api/v1/query_exemplars", prom.0.url);
        async move {
            let r: Value = crate::http()
                .get(url)
                .query(&[(
                    "query",
                    format!("skiff_router_request_duration_seconds_bucket{{{svc}}}"),
                )])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ids: Vec<String> = r["data"][0]["exemplars"]
                .as_array()?
                .iter()
                .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
                .collect();
            (!ids.is_empty()).then_some(ids)
        }
    })
    .await
    .expect("exemplars with trace ids");
    assert!(
        exemplars
            .iter()
            .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())),
        "{exemplars:?}"
    );
    d.cleanup().await.expect("cleanup");
}

/// The value of the sample `series` (name and labels, exactly) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// M5, M9, M13 and M15 on the daemon's `/metrics` after a cold start: the start-up phases
/// of the one instance (observed once, every phase), one succeeded deployment (and 0
/// failed), the lines the test server printed counted by stream, the job counters listed
/// without series; `promtool check metrics` accepts the exposition, and `skiff describe`
/// shows the phases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_logs_deployments_and_jobs_are_on_metrics() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service(
            "obs-m",
            &image,
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "",
            "obs-m",
            "",
        ),
    );
    crate::serving::wait_pinned(&d, "obs-m-00001").await;
    let http = crate::http();
    // The cold start, and a line on each stream.
    for path in [
        "/info",
        "/log?line=to-stdout",
        "/log?line=to-stderr&stream=stderr",
    ] {
        let a = get(&http, &d, &host("obs-m"), path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    let labels = r#"namespace="default",service="obs-m",revision="obs-m-00001""#;
    let deployed =
        r#"skiff_deployments_total{namespace="default",service="obs-m",outcome="succeeded"}"#;
    let stderr_lines = format!("skiff_log_lines_total{{{labels},stream=\"stderr\"}}");
    let text = wait_for(
        "the metrics of the cold start",
        Duration::from_millis(250),
        MAX_WAIT,
        || {
            let (d, stderr_lines) = (&d, &stderr_lines);
            async move {
                let text = crate::serving::metrics_text(d).await?;
                let settled = sample(&text, deployed) == Some(1.0)
                    && sample(&text, stderr_lines).is_some_and(|v| v >= 1.0);
                settled.then_some(text)
            }
        },
    )
    .await
    .expect("metrics");

    // M5: the instance is observed once, every phase, the total not less than the others;
    // labelled with how it was started (from a parked sandbox if one was parked in time).
    let phase = |p: &str, what: &str| {
        ["fresh", "parked"].iter().find_map(|kind| {
            sample(
                &text,
                &format!(
                    "skiff_instance_startup_duration_seconds_{what}{{{labels},phase=\"{p}\",kind=\"{kind}\"}}"
                ),
            )
        })
    };
    for p in ["image", "container", "ready", "total"] {
        assert_eq!(phase(p, "count"), Some(1.0), "phase {p}: {text}");
    }
    let sums: Vec<f64> = ["image", "container", "ready", "total"]
        .iter()
        .map(|p| phase(p, "sum").expect("a sum"))
        .collect();
    assert!(
        sums.iter().all(|s| *s >= 0.0) && sums[3] >= sums[1] && sums[3] >= sums[2],
        "{sums:?}"
    );
    // M15: succeeded once, failed at 0.
    let failed = r#"skiff_deployments_total{namespace="default",service="obs-m",outcome="failed"}"#;
    assert_eq!(sample(&text, failed), Some(0.0), "{text}");
    // M13: the server's start line and the one asked for on stdout; nothing lost.
    let stdout_lines = format!("skiff_log_lines_total{{{labels},stream=\"stdout\"}}");
    assert!(
        sample(&text, &stdout_lines).is_some_and(|v| v >= 2.0),
        "{text}"
    );
    for reason in ["rotation", "write_error"] {
        let dropped = format!("skiff_log_lines_dropped_total{{{labels},reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &dropped), Some(0.0), "{reason}: {text}");
    }
    // M9: listed, no series yet (`text` is Prometheus' format: a counter's HELP names its
    // `_total` samples).
    for name in ["skiff_job_executions_total", "skiff_job_tasks_total"] {
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
        assert!(!text.contains(&format!("{name}{{")), "{text}");
    }
    // A scraper that asks for OpenMetrics, as Prometheus does, gets it.
    let om = crate::http()
        .get(format!("{}/metrics", d.api()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("GET /metrics");
    assert!(
        om.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/openmetrics-text")),
        "{:?}",
        om.headers()
    );
    let om = om.text().await.expect("OpenMetrics text");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE skiff_job_executions counter"), "{om}");
    // What a client that does not ask for OpenMetrics gets passes `promtool check metrics`
    // (Prometheus' own linter, which reads that format) with no finding at all.
    if Command::new("promtool").arg("--version").output().is_ok() {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool starts");
        std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), text.as_bytes())
            .expect("feeding promtool");
        let out = check.wait_with_output().expect("promtool ends");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool check metrics: {report}");
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must have promtool");
        eprintln!("promtool check skipped: promtool is not installed");
    }
    // The phases are in the instance's status, as `skiff describe` shows them.
    let o = d.cli(&["describe", "service", "obs-m"]);
    assert!(
        (stdout(&o).contains(": started fresh in ") || stdout(&o).contains(": started parked in "))
            && stdout(&o).contains("ready "),
        "{}",
        stdout(&o)
    );
    d.cleanup().await.expect("cleanup");
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) with one receiver that sends
/// nothing.
struct Alertmanager(Spawned);

impl Alertmanager {
    fn start() -> Alertmanager {
        let config = "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n- name: none\n";
        Alertmanager(Spawned::start(
            "prometheus-alertmanager",
            config,
            |dir, port| {
                vec![
                    format!("--config.file={}", dir.join("config.yml").display()),
                    format!("--storage.path={}", dir.join("data").display()),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    "--cluster.listen-address=".into(),
                ]
            },
        ))
    }

    /// The active alerts named `name`.
    async fn active(&self, name: &str) -> Option<Vec<Value>> {
        let r: Value = crate::http()
            .get(format!("{}/api/v2/alerts", self.0.url))
            .query(&[("filter", format!("alertname=\"{name}\""))])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(r.as_array()?.clone())
    }
}

/// Whether `prometheus-alertmanager` is missing: a failure under CI, else a skip.
fn skip_without_alertmanager() -> bool {
    if Command::new("prometheus-alertmanager")
        .arg("--version")
        .output()
        .is_ok()
    {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test: apt-get install prometheus-alertmanager"
    );
    eprintln!("skipped: prometheus-alertmanager is not installed");
    true
}

/// Waits up to `max` for the page alert `name` of Service `svc` (in `default`) to fire.
pub(crate) async fn wait_for_page(
    d: &TestDaemon,
    svc: &str,
    name: &str,
    max: Duration,
) -> skiff_api::wire::Alert {
    let client = d.client();
    wait_for(
        &format!("the page alert {name} of {svc}"),
        Duration::from_millis(500),
        max,
        || {
            let client = client.clone();
            async move {
                let alerts = client.alerts().await.ok()?.alerts;
                alerts
                    .into_iter()
                    .find(|a| a.service == svc && a.name == name && a.severity == "page")
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends requests to `svc` that time out (504 when its revision's timeoutSeconds is 1) from
/// four clients until `stop`; each client's task returns the 504s it got.
pub(crate) fn burn(
    d: &TestDaemon,
    svc: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..4)
        .map(|_| {
            let (stop, ingress, host) = (stop.clone(), d.ingress().to_owned(), host(svc));
            tokio::spawn(async move {
                let http = crate::http();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http
                        .get(format!("http://{ingress}/delay?ms=1500"))
                        .header("host", &host)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 504) {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect()
}

/// An SLO of 99.9% over a 1-hour period: all requests failing fires the page alert, in
/// `skiff alerts` and at a real Alertmanager; it resolves in both once the errors stop. The
/// history survives a restart: `skiff metrics` still has the requests, and `skiff top` and
/// `skiff slo` show the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_pages_at_alertmanager_and_resolves() {
    if skip_without_runc() || skip_without_alertmanager() {
        return;
    }
    let am = Alertmanager::start();
    let (_reg, mut d, image) = registry_with_info_image(&["--alertmanager-url", &am.0.url]).await;
    let manifest = service("burn", &image, "", "timeoutSeconds: 1", "burn", "").replacen(
        "metadata:\n  name: burn\n",
        "metadata:\n  name: burn\n  annotations:\n    skiff.dev/slo-availability: \"99.9\"\n    skiff.dev/slo-period: 1h\n",
        1,
    );
    apply(&d, &manifest);
    crate::serving::wait_service_ready(&d, "burn").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burning = burn(&d, "burn", &stop);
    let client = d.client();
    let fired = wait_for_page(&d, "burn", "AvailabilityBurn", MAX_WAIT * 2).await;
    let o = d.cli(&["alerts"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("AvailabilityBurn") && stdout(&o).contains("page"),
        "{}",
        stdout(&o)
    );
    let at_am = wait_for(
        "the alert at Alertmanager",
        Duration::from_millis(500),
        MAX_WAIT,
        || async {
            am.active("AvailabilityBurn")
                .await?
                .into_iter()
                .find(|a| a["labels"]["service"] == "burn" && a["labels"]["severity"] == "page")
        },
    )
    .await
    .expect("Alertmanager has the page alert");
    assert_eq!(at_am["status"]["state"], "active", "{at_am:#}");
    let o = d.cli(&["slo", "burn"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("availability") && stdout(&o).contains("FIRING"),
        "{}",
        stdout(&o)
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed = 0;
    for b in burning {
        failed += b.await.expect("joins");
    }
    wait_for(
        "the page alert to resolve",
        Duration::from_millis(500),
        MAX_WAIT * 2,
        || {
            let client = client.clone();
            async move {
                let alerts = client.alerts().await.ok()?.alerts;
                (!alerts
                    .iter()
                    .any(|a| a.service == "burn" && a.severity == "page"))
                .then_some(())
            }
        },
    )
    .await
    .expect("the page alert resolves");
    wait_for(
        "Alertmanager to see it resolved",
        Duration::from_millis(500),
        MAX_WAIT,
        || async {
            let active = am.active("AvailabilityBurn").await?;
            (!active.iter().any(|a| a["labels"]["severity"] == "page")).then_some(())
        },
    )
    .await
    .expect("resolved at Alertmanager");
    eprintln!(
        "page alert fired since {} after {failed} 504s, and resolved",
        fired.since
    );

    // The history is in the data directory: a restart keeps it.
    d.restart().await.expect("restart");
    let o = d.cli(&["metrics", "burn", "--since", "15m", "-o", "json"]);
    assert_code(&o, 0);
    let m: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let served: u64 = m["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        served >= failed,
        "{served} requests in the history after the restart, {failed} sent"
    );
    let o = d.cli(&["top"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("RPS"), "{}", stdout(&o));
    d.cleanup().await.expect("cleanup");
}

/// What one load client saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    budget: u64,
    other: Vec<u16>,
    /// The first `budget` refusal: its `Retry-After`, `X-Skiff-Throttled` and body.
    first_refusal: Option<(String, String, String)>,
}

/// `n` clients each sending 1.5 s requests to Service `svc` one after another until `stop`
/// (100 ms after a refusal).
fn load(
    d: &TestDaemon,
    svc: &'static str,
    n: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let (stop, ingress) = (stop.clone(), d.ingress().to_owned());
            tokio::spawn(async move {
                let http = crate::http();
                let mut seen = Seen::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(r) = http
                        .get(format!("http://{ingress}/delay?ms=1500"))
                        .header("host", host(svc))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let header = |name: &str| {
                        r.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let status = r.status().as_u16();
                    match status {
                        200 => seen.ok += 1,
                        429 if header("x-skiff-throttled") == "budget" => {
                            seen.budget += 1;
                            if seen.first_refusal.is_none() {
                                let retry = header("retry-after");
                                let reason = header("x-skiff-throttled");
                                let body = r.text().await.unwrap_or_default();
                                seen.first_refusal = Some((retry, reason, body));
                            }
                        }
                        s => seen.other.push(s),
                    }
                    // A refused client comes back a little later rather than spinning (the
                    // refusals are immediate while the queue is full).
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                seen
            })
        })
        .collect()
}

/// A Service with a tiny cost budget ($0.000001/day: its one instance spends it in its
/// first 10 s) stops scaling up: under load that needs more instances (containerConcurrency
/// 1, six clients) it stays at its one instance, the autoscaler's decisions say they are
/// held by the budget, requests beyond it get 429 with `X-Skiff-Throttled: budget` and a
/// line saying why (counted under `reason="budget"`), the budget's page alert fires, and
/// `skiff slo` and `skiff describe` say scale-up is stopped. Raising the budget lets it
/// scale up again under the same load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_stops_scale_up_and_429s_say_budget() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[
        "--activator-queue-depth",
        "2",
        "--activator-queue-timeout-seconds",
        "1",
    ])
    .await;
    let manifest = |budget: &str| {
        service(
            "budget",
            &image,
            "autoscaling.knative.dev/min-scale: \"1\"\nautoscaling.knative.dev/max-scale: \"3\"\nautoscaling.knative.dev/window: \"6s\"",
            "containerConcurrency: 1",
            "budget",
            "",
        )
        .replacen(
            "metadata:\n  name: budget\n",
            &format!("metadata:\n  name: budget\n  annotations:\n    skiff.dev/budget: \"{budget}\"\n"),
            1,
        )
    };
    apply(&d, &manifest("0.000001/day"));
    crate::serving::wait_service_ready(&d, "budget").await;
    let client = d.client();
    let slo_budget = |client: skiff_client::Client| async move {
        let slos = client.slos().await.ok()?.services;
        let s = slos.into_iter().find(|s| s["service"] == "budget")?;
        Some(s["budget"].clone())
    };
    let spent = wait_for(
        "the budget to be spent",
        Duration::from_millis(500),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let b = slo_budget(client).await?;
                (b["scaleUpStopped"] == true).then_some(b)
            }
        },
    )
    .await
    .expect("the budget is spent and scale-up stopped");
    let instances_when_spent = client
        .running_instances("default", "budget")
        .await
        .expect("instances")
        .len();
    assert_eq!(instances_when_spent, 1, "min-scale 1, no load yet");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(&d, "budget", 6, &stop);
    // The autoscaler wants more than one instance and is held at one.
    let held = wait_for(
        "a decision held by the budget",
        Duration::from_millis(250),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.scale("default", "budget").await.ok()?;
                s.revisions
                    .iter()
                    .flat_map(|r| r.decisions.iter())
                    .find(|d| d.reason.contains("held at 1: the cost budget"))
                    .map(|d| d.reason.clone())
            }
        },
    )
    .await;
    let held = match held {
        Ok(r) => r,
        Err(e) => {
            let o = d.cli(&["describe", "service", "budget"]);
            panic!("{e}\n{}", stdout(&o));
        }
    };
    // 429s with the reason, counted under it.
    let throttled = wait_for(
        "refusals counted as budget",
        Duration::from_millis(250),
        MAX_WAIT,
        || async {
            let text = crate::serving::metrics_text(&d).await?;
            let n: f64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("skiff_router_throttled_total{")
                        && l.contains(r#"service="budget""#)
                        && l.contains(r#"reason="budget""#)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (n > 0.0).then_some(n)
        },
    )
    .await
    .expect("skiff_router_throttled_total{reason=\"budget\"} counts");
    let list = client
        .running_instances("default", "budget")
        .await
        .expect("instances");
    assert_eq!(list.len(), 1, "scale-up stopped at one instance: {list:?}");
    let scale = client.scale("default", "budget").await.expect("scale");
    assert!(
        scale
            .scale_up_stopped
            .as_deref()
            .is_some_and(|w| w.contains("the cost budget ($0.000001/day) is spent")),
        "{scale:?}"
    );
    assert!(scale.revisions.iter().all(|r| r.desired <= 1), "{scale:?}");

    // The page alert fires, and the CLI says what is going on.
    let alert = wait_for_page(&d, "budget", "BudgetSpent", MAX_WAIT).await;
    let o = d.cli(&["alerts"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("BudgetSpent"), "{}", stdout(&o));
    let o = d.cli(&["slo", "budget"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("SPENT: scale-up stopped until"),
        "{}",
        stdout(&o)
    );
    let o = d.cli(&["describe", "service", "budget"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("scale-up stopped: the cost budget"),
        "{}",
        stdout(&o)
    );

    // A raised budget lifts the hold at the next evaluation: the same load scales it up.
    apply(&d, &manifest("1000/day"));
    crate::serving::wait_instances(&d, "budget", "more than one instance", |l| l.len() > 1).await;
    let lifted = slo_budget(client.clone()).await.expect("the budget");
    assert_eq!(lifted["scaleUpStopped"], false, "{lifted}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Seen::default();
    for c in clients {
        let s = c.await.expect("joins");
        seen.ok += s.ok;
        seen.budget += s.budget;
        seen.other.extend(s.other);
        seen.first_refusal = seen.first_refusal.or(s.first_refusal);
    }
    let (retry, reason, body) = seen.first_refusal.expect("a budget refusal");
    assert_eq!(reason, "budget");
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry:?}"
    );
    assert!(
        body.contains(
            "the cost budget of service `budget` in namespace `default` ($0.000001/day) is spent"
        ) && body.contains("skiff.dev/budget annotation is raised")
            && body.contains("(request id "),
        "{body}"
    );
    // Other answers are the 503s of the queue while the lifted revision scales up.
    assert!(
        seen.other.iter().all(|s| *s == 503),
        "unexpected statuses {:?}",
        seen.other
    );
    eprintln!(
        "budget: spent ${:.6} of $0.000001/day; held: {held}; {throttled} refusals counted as budget; \
         clients saw {} ok, {} 429 budget, {} other; alert since {}; after raising it: more than one instance",
        spent["spent"].as_f64().unwrap_or(0.0),
        seen.ok,
        seen.budget,
        seen.other.len(),
        alert.since
    );
    d.cleanup().await.expect("cleanup");
}
