//! Progressive rollouts through the real daemon, runc and the CLI, under steady load from
//! the test: a good revision reaches 100% with no error; a revision failing a third of its
//! requests is rolled back at its first step (few failed requests overall), the Service
//! says `RolloutFailed` with the figures and an alert fires, and a later good revision rolls
//! out; a slow revision is rolled back by the latency check; pause, resume, promote, abort,
//! rollback and a daemon restart mid-rollout; bad policies are refused by name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skiff_api::object::ConditionStatus;
use skiff_api::rollout::RolloutReport;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};
use tokio::task::JoinHandle;

use crate::serving::{host, wait_service_ready};
use crate::{apply, assert_code, registry_with_info_image, skip_without_runc, stderr, stdout};

/// A Service of the test server: `target` as `TARGET` (in every answer to `GET /`), `env`
/// beside it, `annotations` on the template.
fn service(
    name: &str,
    image: &str,
    target: &str,
    env: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    let mut env_lines = format!("        - name: TARGET\n          value: {}\n", q(target));
    for (k, v) in env {
        env_lines.push_str(&format!("        - name: {k}\n          value: {}\n", q(v)));
    }
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        let lines: String = annotations
            .iter()
            .map(|(k, v)| format!("        {k}: {}\n", q(v)))
            .collect();
        format!("    metadata:\n      annotations:\n{lines}")
    };
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n{annotations}    spec:\n      containers:\n      - image: {image}\n        env:\n{env_lines}"
    )
}

/// What the load saw.
#[derive(Debug, Default)]
struct Tally {
    /// 2xx answers by the target (revision) that gave them.
    ok: BTreeMap<String, u64>,
    /// Non-2xx answers and transport errors.
    bad: u64,
    /// A few of them.
    samples: Vec<String>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok.values().sum::<u64>() + self.bad
    }

    fn add(&mut self, other: Tally) {
        for (k, v) in other.ok {
            *self.ok.entry(k).or_default() += v;
        }
        self.bad += other.bad;
        self.samples.extend(other.samples);
        self.samples.truncate(5);
    }
}

/// Steady load on a Service: `conns` clients sending `GET /` back to back.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(d: &TestDaemon, svc: &str, conns: usize) -> Load {
        let http = crate::http();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..conns)
            .map(|_| {
                let (http, url, h, stop) = (
                    http.clone(),
                    format!("http://{}/", d.ingress()),
                    host(svc),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut t = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).header("host", &h).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.text().await.unwrap_or_default();
                                if (200..300).contains(&status) {
                                    let target = body
                                        .lines()
                                        .filter_map(|l| l.strip_prefix("hello "))
                                        .find(|t| !t.starts_with("from "))
                                        .unwrap_or("?")
                                        .to_owned();
                                    *t.ok.entry(target).or_default() += 1;
                                } else {
                                    t.bad += 1;
                                    if t.samples.len() < 5 {
                                        t.samples.push(format!("{status} {}", body.trim()));
                                    }
                                }
                            }
                            Err(e) => {
                                t.bad += 1;
                                if t.samples.len() < 5 {
                                    t.samples.push(format!("transport: {e}"));
                                }
                            }
                        }
                    }
                    t
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            all.add(t.await.expect("a load task"));
        }
        all
    }
}

/// Waits until the Service's rollout report satisfies `pred`; shows `skiff rollout status`
/// and the daemon's log when it does not in time.
async fn wait_rollout(
    d: &TestDaemon,
    svc: &str,
    what: &str,
    pred: impl Fn(&RolloutReport) -> bool,
) -> RolloutReport {
    let client = d.client();
    let pred = &pred;
    let r = wait_for(what, Duration::from_millis(100), MAX_WAIT, || {
        let client = client.clone();
        async move {
            let r = client.rollout("default", svc).await.ok()?;
            pred(&r).then_some(r)
        }
    })
    .await;
    match r {
        Ok(r) => r,
        Err(e) => {
            let o = d.cli(&["rollout", "status", svc]);
            let log = d.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{e}\n{}{}\n--- daemon log tail\n{}",
                stdout(&o),
                stderr(&o),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The rollout in progress is of `revision`, at step `step` (0-based).
fn at_step(r: &RolloutReport, revision: &str, step: usize) -> bool {
    r.rollout
        .as_ref()
        .and_then(|s| s.current.as_ref())
        .is_some_and(|p| p.revision == revision && p.step == step)
}

/// The last rollout ended with `outcome` for `revision`, and none is in progress.
fn ended(r: &RolloutReport, revision: &str, outcome: &str) -> bool {
    r.rollout.as_ref().is_some_and(|s| {
        s.current.is_none()
            && s.history
                .first()
                .is_some_and(|h| h.revision == revision && h.outcome == outcome)
    })
}

/// The revision taking the latest-revision traffic outside a rollout.
fn stable(r: &RolloutReport) -> Option<&str> {
    r.rollout.as_ref()?.stable_revision.as_deref()
}

/// The Service's traffic: (revision, percent) of each target.
fn split(s: &skiff_api::object::Service) -> Vec<(String, i64)> {
    s.status
        .traffic
        .iter()
        .map(|t| (t.revision_name.clone(), t.percent))
        .collect()
}

/// Waits until the Service's rollout of `revision` is at `step`; the Service.
async fn service_at_step(
    d: &TestDaemon,
    svc: &str,
    revision: &str,
    step: usize,
) -> skiff_api::object::Service {
    let client = d.client();
    wait_for(
        "the rollout's step",
        Duration::from_millis(20),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.get_service("default", svc).await.ok()?;
                let p = s.status.rollout.as_ref()?.current.as_ref()?;
                (p.revision == revision && p.step == step).then_some(s)
            }
        },
    )
    .await
    .expect("the rollout's step")
}

/// Waits until `GET /` is answered by `target` (its traffic moved there).
async fn wait_answered_by(d: &TestDaemon, svc: &str, target: &str) {
    let http = crate::http();
    let url = format!("http://{}/", d.ingress());
    let h = host(svc);
    let want = format!("hello {target}");
    wait_for(
        "the answers to come from the expected revision",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let (http, url, h, want) = (http.clone(), url.clone(), h.clone(), want.clone());
            async move {
                // Several in a row, so that a split is not mistaken for a move.
                for _ in 0..20 {
                    let r = http.get(&url).header("host", &h).send().await.ok()?;
                    let body = r.text().await.ok()?;
                    if !body.lines().any(|l| l == want) {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await
    .expect("answered by the expected revision");
}

/// A good revision under `5,50,100` with 2 s steps reaches 100% with zero non-2xx answers
/// while clients keep sending, its traffic split following the steps.
#[tokio::test]
async fn a_good_revision_rolls_out_without_errors() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let policy = [
        ("skiff.dev/rollout", "5,50,100"),
        ("skiff.dev/rollout-step", "2s"),
        ("skiff.dev/rollout-min-requests", "10"),
    ];
    apply(&d, &service("ro-good", &image, "one", &[], &policy));
    wait_service_ready(&d, "ro-good").await;
    let load = Load::start(&d, "ro-good", 4);
    apply(&d, &service("ro-good", &image, "two", &[], &policy));
    // The Service's traffic says the split, in the same write as the step.
    let s = service_at_step(&d, "ro-good", "ro-good-00002", 0).await;
    assert_eq!(
        split(&s),
        vec![
            ("ro-good-00001".to_owned(), 95),
            ("ro-good-00002".to_owned(), 5)
        ]
    );
    let rolled = s.condition("RolledOut").expect("RolledOut");
    assert_eq!(rolled.status, ConditionStatus::Unknown);
    assert_eq!(rolled.reason.as_deref(), Some("RollingOut"));
    assert_eq!(
        s.condition("Ready").map(|c| c.status),
        Some(ConditionStatus::True),
        "serving during the rollout"
    );
    let r = wait_rollout(&d, "ro-good", "the rollout to succeed", |r| {
        ended(r, "ro-good-00002", "succeeded")
    })
    .await;
    wait_answered_by(&d, "ro-good", "two").await;
    let t = load.finish().await;
    assert_eq!(t.bad, 0, "non-2xx during a good rollout: {:?}", t.samples);
    assert!(
        t.ok.get("two").copied().unwrap_or(0) > 0 && t.ok.get("one").copied().unwrap_or(0) > 0,
        "{:?}",
        t.ok
    );
    assert_eq!(stable(&r), Some("ro-good-00002"));
    let h = &r.rollout.as_ref().expect("status").history[0];
    let steps: Vec<(u32, &str)> = h
        .steps
        .iter()
        .map(|s| (s.percent, s.verdict.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![(5, "passed"), (50, "passed"), (100, "passed")],
        "{h:#?}"
    );
    assert!(h.steps[0].canary.requests >= 10, "{h:#?}");
    // `describe` and `rollout status` show the steps with their analysis.
    let o = d.cli(&["rollout", "status", "ro-good"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("5% → 50% → 100% every 2s"), "{out}");
    assert!(
        out.contains("succeeded") && out.contains("errors passed"),
        "{out}"
    );
    let o = d.cli(&["describe", "service", "ro-good"]);
    assert!(stdout(&o).contains("Rollout:"), "{}", stdout(&o));
    d.cleanup().await.expect("cleanup");
}

/// The count of a `skiff_deployments_total` series.
async fn deployments(d: &TestDaemon, svc: &str, outcome: &str) -> Option<u64> {
    let text = crate::serving::metrics_text(d).await?;
    let prefix = format!(
        "skiff_deployments_total{{namespace=\"default\",service=\"{svc}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// A revision answering 500 to a third of its requests is rolled back at its first step,
/// before the step's time is up: under 2% of all requests fail over the whole rollout, the
/// Service says `RolloutFailed` with the error rates, an alert fires and the deployment is
/// counted `rolled_back`; a later good revision rolls out.
#[tokio::test]
async fn a_bad_revision_is_rolled_back_at_its_first_step() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let policy = [
        ("skiff.dev/rollout", "5,50,100"),
        ("skiff.dev/rollout-step", "20s"),
        ("skiff.dev/rollout-min-requests", "10"),
    ];
    apply(&d, &service("ro-bad", &image, "one", &[], &policy));
    wait_service_ready(&d, "ro-bad").await;
    let load = Load::start(&d, "ro-bad", 4);
    apply(
        &d,
        &service(
            "ro-bad",
            &image,
            "two",
            &[("ROOT_FAIL_EVERY", "3")],
            &policy,
        ),
    );
    // `rollout status -w` follows it from the apply to the rollback, and fails.
    let watch = {
        let data_dir = d.data_dir().to_path_buf();
        std::thread::spawn(move || {
            std::process::Command::new(crate::SKIFF)
                .args(["rollout", "status", "ro-bad", "-w"])
                .env("SKIFF_DATA_DIR", data_dir)
                .output()
                .expect("skiff rollout status -w")
        })
    };
    let r = wait_rollout(&d, "ro-bad", "the rollback", |r| {
        ended(r, "ro-bad-00002", "rolled_back")
    })
    .await;
    wait_answered_by(&d, "ro-bad", "one").await;
    let t = load.finish().await;
    let o = tokio::task::spawn_blocking(move || watch.join().expect("the watch"))
        .await
        .expect("join");
    assert_code(&o, 1);
    assert!(
        stdout(&o).contains("RolloutFailed: revision ro-bad-00002 rolled back at 5%"),
        "{}",
        stdout(&o)
    );
    eprintln!("$ skiff rollout status ro-bad -w\n{}", stdout(&o));
    let share = t.bad as f64 / t.total() as f64;
    assert!(
        share < 0.02,
        "{} of {} requests failed ({:.2}%): {:?}",
        t.bad,
        t.total(),
        share * 100.0,
        t.samples
    );
    assert!(t.bad > 0, "the bad revision got some traffic: {:?}", t.ok);
    eprintln!(
        "bad revision: {} of {} requests failed ({:.2}%) over the rollout",
        t.bad,
        t.total(),
        share * 100.0
    );
    // Rolled back at its first step, before the step's 20 s were up.
    let h = &r.rollout.as_ref().expect("status").history[0];
    assert_eq!(h.steps.len(), 1, "{h:#?}");
    assert_eq!(
        (h.steps[0].percent, h.steps[0].verdict.as_str()),
        (5, "failed")
    );
    let started: jiff::Timestamp = h.steps[0].started_at.parse().expect("a time");
    let ended_at: jiff::Timestamp = h.steps[0].ended_at.parse().expect("a time");
    assert!(
        ended_at.duration_since(started) < jiff::SignedDuration::from_secs(20),
        "{h:#?}"
    );
    assert!(
        h.message.contains("errors: 5xx") && h.message.contains("vs stable"),
        "{}",
        h.message
    );
    assert_eq!(stable(&r), Some("ro-bad-00001"));
    // The Service says why, with the figures.
    let s = d
        .client()
        .get_service("default", "ro-bad")
        .await
        .expect("service");
    let ready = s.condition("Ready").expect("Ready");
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason.as_deref(), Some("RolloutFailed"));
    let message = ready.message.clone().unwrap_or_default();
    assert!(
        message.contains("5xx") && message.contains('%'),
        "{message}"
    );
    // An alert fires, and the deployment is counted.
    let client = d.client();
    wait_for(
        "the RolloutFailed alert",
        Duration::from_millis(200),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let alerts = client.alerts().await.ok()?;
                alerts
                    .alerts
                    .iter()
                    .any(|a| a.name == "RolloutFailed" && a.service == "ro-bad")
                    .then_some(())
            }
        },
    )
    .await
    .expect("the alert fires");
    assert_eq!(deployments(&d, "ro-bad", "rolled_back").await, Some(1));
    // It stays rolled back: the bad revision is not rolled out again by itself.
    let o = d.cli(&["get", "services"]);
    assert!(stdout(&o).contains("RolloutFailed"), "{}", stdout(&o));
    // A later good revision rolls out (from the stable one) and the alert resolves.
    let load = Load::start(&d, "ro-bad", 4);
    apply(&d, &service("ro-bad", &image, "three", &[], &policy));
    let r = wait_rollout(&d, "ro-bad", "the good revision at its first step", |r| {
        at_step(r, "ro-bad-00003", 0)
    })
    .await;
    assert_eq!(
        r.rollout
            .as_ref()
            .and_then(|s| s.current.as_ref())
            .map(|p| p.from.as_str()),
        Some("ro-bad-00001")
    );
    // Promoted by hand, not to wait out three 20 s steps.
    assert_code(&d.cli(&["rollout", "promote", "ro-bad"]), 0);
    wait_answered_by(&d, "ro-bad", "three").await;
    let t = load.finish().await;
    assert_eq!(t.bad, 0, "{:?}", t.samples);
    let s = wait_service_ready(&d, "ro-bad").await;
    assert_eq!(s["status"]["rollout"]["stableRevision"], "ro-bad-00003");
    wait_for(
        "the alert to resolve",
        Duration::from_millis(200),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let alerts = client.alerts().await.ok()?;
                (!alerts.alerts.iter().any(|a| a.service == "ro-bad")).then_some(())
            }
        },
    )
    .await
    .expect("the alert resolves");
    d.cleanup().await.expect("cleanup");
}

/// A revision whose p95 is three times the stable one's is rolled back by the latency
/// check at its step's end.
#[tokio::test]
async fn a_slow_revision_is_rolled_back_by_the_latency_check() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let policy = [
        ("skiff.dev/rollout", "20,100"),
        ("skiff.dev/rollout-step", "3s"),
        ("skiff.dev/rollout-min-requests", "10"),
    ];
    apply(
        &d,
        &service(
            "ro-slow",
            &image,
            "one",
            &[("ROOT_DELAY_MS", "20")],
            &policy,
        ),
    );
    wait_service_ready(&d, "ro-slow").await;
    let load = Load::start(&d, "ro-slow", 4);
    apply(
        &d,
        &service(
            "ro-slow",
            &image,
            "two",
            &[("ROOT_DELAY_MS", "60")],
            &policy,
        ),
    );
    let r = wait_rollout(&d, "ro-slow", "the rollback", |r| {
        ended(r, "ro-slow-00002", "rolled_back")
    })
    .await;
    let t = load.finish().await;
    assert_eq!(t.bad, 0, "a slow revision answers: {:?}", t.samples);
    let h = &r.rollout.as_ref().expect("status").history[0];
    assert!(h.message.contains("latency: p95"), "{}", h.message);
    let step = &h.steps[0];
    let (new, old) = (
        step.canary.p95_ms.expect("a p95"),
        step.stable.p95_ms.expect("a p95"),
    );
    assert!(new > 2.0 * old && old >= 20.0, "p95 {new} ms vs {old} ms");
    eprintln!("slow revision: {}", h.message);
    let s = d
        .client()
        .get_service("default", "ro-slow")
        .await
        .expect("service");
    assert_eq!(
        s.condition("Ready")
            .and_then(|c| c.reason.clone())
            .as_deref(),
        Some("RolloutFailed")
    );
    d.cleanup().await.expect("cleanup");
}

/// The daemon's default policy (a timed ramp), steered by hand: pause holds the step,
/// resume goes on, a restart mid-rollout resumes at the step it was on, promote ends it at
/// once, abort sends the traffic back and holds the revision, rollback goes back one
/// revision; commands with nothing to act on say so.
#[tokio::test]
async fn pause_resume_promote_abort_rollback_and_a_restart() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[
        "--rollout",
        "10,50,100",
        "--rollout-step",
        "2s",
        "--rollout-analysis",
        "none",
    ])
    .await;
    let svc = "ro-cmd";
    apply(&d, &service(svc, &image, "one", &[], &[]));
    wait_service_ready(&d, svc).await;
    // Nothing to act on yet.
    let o = d.cli(&["rollout", "pause", svc]);
    assert_code(&o, 5);
    assert!(
        stderr(&o).contains("no rollout is in progress"),
        "{}",
        stderr(&o)
    );
    apply(&d, &service(svc, &image, "two", &[], &[]));
    wait_rollout(&d, svc, "the rollout at 10%", |r| {
        at_step(r, "ro-cmd-00002", 0)
    })
    .await;
    assert_code(&d.cli(&["rollout", "pause", svc]), 0);
    let r = d.client().rollout("default", svc).await.expect("rollout");
    let p = r
        .rollout
        .as_ref()
        .and_then(|s| s.current.clone())
        .expect("running");
    assert!(p.paused);
    assert_eq!(
        r.policy.as_ref().map(|p| p.source.as_str()),
        Some("default")
    );
    // Paused past its step's time, it stays (a bounded look that it does not move).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = d.client().rollout("default", svc).await.expect("rollout");
    assert!(at_step(&r, "ro-cmd-00002", 0), "{r:#?}");
    assert_code(&d.cli(&["rollout", "resume", svc]), 0);
    wait_rollout(&d, svc, "the rollout at 50%", |r| {
        at_step(r, "ro-cmd-00002", 1)
    })
    .await;
    assert_code(&d.cli(&["rollout", "pause", svc]), 0);
    // A restart mid-rollout resumes at the step it was on.
    d.restart().await.expect("restart");
    let r = wait_rollout(&d, svc, "the rollout after the restart", |r| {
        r.rollout
            .as_ref()
            .and_then(|s| s.current.as_ref())
            .is_some()
    })
    .await;
    assert!(at_step(&r, "ro-cmd-00002", 1), "{r:#?}");
    let s = service_at_step(&d, svc, "ro-cmd-00002", 1).await;
    assert_eq!(
        split(&s),
        vec![
            ("ro-cmd-00001".to_owned(), 50),
            ("ro-cmd-00002".to_owned(), 50)
        ]
    );
    assert_code(&d.cli(&["rollout", "resume", svc]), 0);
    let o = d.cli(&["rollout", "status", svc, "--watch"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("succeeded"), "{}", stdout(&o));
    wait_answered_by(&d, svc, "two").await;
    // Promote: all at once.
    apply(&d, &service(svc, &image, "three", &[], &[]));
    wait_rollout(&d, svc, "the third at 10%", |r| {
        at_step(r, "ro-cmd-00003", 0)
    })
    .await;
    assert_code(&d.cli(&["rollout", "promote", svc]), 0);
    let r = d.client().rollout("default", svc).await.expect("rollout");
    assert!(ended(&r, "ro-cmd-00003", "promoted"), "{r:#?}");
    wait_answered_by(&d, svc, "three").await;
    // Abort: back to the stable revision, the new one held; the Service stays Ready.
    apply(&d, &service(svc, &image, "four", &[], &[]));
    wait_rollout(&d, svc, "the fourth at 10%", |r| {
        at_step(r, "ro-cmd-00004", 0)
    })
    .await;
    assert_code(&d.cli(&["rollout", "abort", svc]), 0);
    wait_answered_by(&d, svc, "three").await;
    let r = d.client().rollout("default", svc).await.expect("rollout");
    assert!(ended(&r, "ro-cmd-00004", "aborted"), "{r:#?}");
    assert_eq!(
        r.rollout.as_ref().and_then(|s| s.held_revision.as_deref()),
        Some("ro-cmd-00004")
    );
    assert_eq!(
        r.condition.as_ref().and_then(|c| c.reason.as_deref()),
        Some("RolloutAborted")
    );
    let s = wait_service_ready(&d, svc).await;
    assert_eq!(s["status"]["latestReadyRevisionName"], "ro-cmd-00004");
    // Rollback: one revision further back; the latest stays held.
    let o = d.cli(&["rollback", svc]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("goes to ro-cmd-00002"),
        "{}",
        stdout(&o)
    );
    wait_answered_by(&d, svc, "two").await;
    let o = d.cli(&["rollback", svc, "--to", "ro-cmd-00002"]);
    assert_code(&o, 5);
    assert!(stderr(&o).contains("already takes"), "{}", stderr(&o));
    let o = d.cli(&["rollback", svc, "--to", "nope"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    // Resume lets the held revision roll out again.
    assert_code(&d.cli(&["rollout", "resume", svc]), 0);
    wait_rollout(&d, svc, "the held revision to roll out again", |r| {
        r.rollout
            .as_ref()
            .and_then(|s| s.current.as_ref())
            .is_some_and(|p| p.revision == "ro-cmd-00004" && p.from == "ro-cmd-00002")
    })
    .await;
    d.cleanup().await.expect("cleanup");
}

/// Bad policies are refused by name, each with why: steps not increasing, over 100 or not
/// ending at 100, a step of 0, unknown checks, settings without steps.
#[tokio::test]
async fn bad_rollout_policies_are_refused() {
    let d = TestDaemon::start(crate::SKIFF).await.expect("daemon");
    for (annotations, says) in [
        (
            vec![("skiff.dev/rollout", "5,50,25,100")],
            "steps must increase",
        ),
        (vec![("skiff.dev/rollout", "5,150")], "out of range"),
        (
            vec![("skiff.dev/rollout", "5,50")],
            "the last step must be 100",
        ),
        (
            vec![
                ("skiff.dev/rollout", "5,100"),
                ("skiff.dev/rollout-step", "0s"),
            ],
            "out of range",
        ),
        (
            vec![
                ("skiff.dev/rollout", "5,100"),
                ("skiff.dev/rollout-analysis", "errors,p99"),
            ],
            "unknown check `p99`",
        ),
        (
            vec![("skiff.dev/rollout-step", "10s")],
            "needs `skiff.dev/rollout`",
        ),
    ] {
        let yaml = service(
            "ro-bad-input",
            "skiff.local/absent:v1",
            "x",
            &[],
            &annotations,
        );
        let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&yaml));
        assert_code(&o, 3);
        let err = stderr(&o);
        assert!(err.contains(says), "{annotations:?}: {err}");
        assert!(
            err.contains("spec.template.metadata.annotations.skiff.dev/rollout"),
            "{annotations:?}: {err}"
        );
        // The same from `skiff validate`, offline.
        let o = d.cli_with_stdin(&["validate", "-f", "-"], Some(&yaml));
        assert_ne!(o.status.code(), Some(0), "{annotations:?}");
    }
    // On the Service's own metadata a template setting is refused with where it goes.
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: ro-meta\n  annotations:\n    skiff.dev/rollout: \"5,100\"\nspec:\n  template:\n    spec:\n      containers:\n      - image: skiff.local/absent:v1\n";
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(yaml));
    assert_code(&o, 3);
    assert!(
        stderr(&o).contains("set it on the revision template"),
        "{}",
        stderr(&o)
    );
    // Knative's rollout-duration is taken (a timed ramp).
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: ro-knative\n  annotations:\n    serving.knative.dev/rollout-duration: \"120s\"\nspec:\n  template:\n    spec:\n      containers:\n      - image: skiff.local/absent:v1\n        imagePullPolicy: Never\n";
    assert_code(&d.cli_with_stdin(&["apply", "-f", "-"], Some(yaml)), 0);
    // A rollout command on a Service that does not exist.
    let o = d.cli(&["rollout", "status", "nope"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    d.cleanup().await.expect("cleanup");
}
