//! Cloud Run Jobs through the real daemon, runc and the CLI: an execution's tasks run to
//! completion under their parallelism with Cloud Run's variables, a failed attempt is retried
//! (and without retries the execution fails after every task was tried), an attempt over its
//! timeout is killed, a cancelled execution leaves nothing running, overrides reach the task,
//! bad input is refused with paths, and the job metrics count what happened.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skiff_api::job::{CompletionStatus, Execution, TaskState};
use skiff_test_utils::oci::{Compression, ImageBuilder, busybox_layer};
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::{SKIFF, apply, assert_code, stderr, stdout};

/// The image every job here runs: busybox, imported (no registry).
const IMAGE: &str = "skiff.local/busybox:v1";

/// Whether these tests must be skipped here (they run containers: root, runc and the host's
/// static busybox); says why when they must.
pub(crate) fn skip() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running containers needs root");
        return true;
    }
    if Command::new("runc").arg("--version").output().is_err() {
        eprintln!("skipped: runc is not installed");
        return true;
    }
    if !Path::new(skiff_test_utils::oci::HOST_BUSYBOX).exists() {
        eprintln!("skipped: no static busybox (Debian's busybox-static)");
        return true;
    }
    false
}

/// A daemon started with `args`, with the busybox image imported as [`IMAGE`].
pub(crate) async fn daemon(args: &[&str]) -> TestDaemon {
    let d = TestDaemon::start_with(SKIFF, args).await.expect("daemon");
    let layout = d.data_dir().with_file_name("busybox-layout");
    ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).expect("the busybox layer"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .write_oci_layout(&layout, "v1")
        .expect("its layout");
    let layout = layout.display().to_string();
    assert_code(&d.cli(&["images", "import", &layout, "--tag", IMAGE]), 0);
    d
}

/// How a test job is made.
pub(crate) struct JobSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) tasks: u32,
    pub(crate) parallelism: u32,
    pub(crate) retries: u32,
    pub(crate) timeout_seconds: u32,
    /// The `sh -c` script; the container's `args` follow it as `$1…`.
    pub(crate) script: &'a str,
    pub(crate) args: &'a [&'a str],
    pub(crate) env: &'a [(&'a str, &'a str)],
}

impl Default for JobSpec<'_> {
    fn default() -> Self {
        JobSpec {
            name: "",
            tasks: 1,
            parallelism: 0,
            retries: 0,
            timeout_seconds: 600,
            script: "true",
            args: &[],
            env: &[],
        }
    }
}

/// A Cloud Run Job manifest (YAML; strings as JSON, which YAML reads).
pub(crate) fn job_yaml(j: &JobSpec) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    let mut env = String::new();
    for (k, v) in j.env {
        env.push_str(&format!(
            "            - name: {k}\n              value: {}\n",
            q(v)
        ));
    }
    let args: Vec<String> = j.args.iter().map(|a| q(a)).collect();
    format!(
        "apiVersion: run.googleapis.com/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      taskCount: {tasks}\n      parallelism: {par}\n      template:\n        spec:\n          maxRetries: {retries}\n          timeoutSeconds: {timeout}\n          containers:\n          - image: {IMAGE}\n            command: [\"/bin/sh\", \"-c\", {script}, \"sh\"]\n            args: [{args}]\n{env_block}",
        name = j.name,
        tasks = j.tasks,
        par = j.parallelism,
        retries = j.retries,
        timeout = j.timeout_seconds,
        script = q(j.script),
        args = args.join(", "),
        env_block = if env.is_empty() {
            String::new()
        } else {
            format!("            env:\n{env}")
        },
    )
}

/// An execution, read through the API.
async fn execution(d: &TestDaemon, name: &str) -> Execution {
    d.client()
        .get_execution("default", name)
        .await
        .expect("the execution")
}

/// Waits until an execution has ended.
pub(crate) async fn ended(d: &TestDaemon, name: &str) -> Execution {
    let client = d.client();
    wait_for(
        "the execution to end",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let e = client.get_execution("default", name).await.ok()?;
                e.is_done().then_some(e)
            }
        },
    )
    .await
    .expect("the execution ended")
}

/// One line of `skiff logs --timestamps`: `TS STREAM [INSTANCE/CONTAINER] LINE`.
#[derive(Debug)]
struct Line {
    ts: jiff::Timestamp,
    instance: String,
    text: String,
}

fn log_lines(out: &str) -> Vec<Line> {
    out.lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            let (_stream, rest) = rest.split_once(' ')?;
            let (source, text) = rest.strip_prefix('[')?.split_once("] ")?;
            let (instance, _container) = source.rsplit_once('/')?;
            Some(Line {
                ts: ts.parse().ok()?,
                instance: instance.to_owned(),
                text: text.to_owned(),
            })
        })
        .collect()
}

/// `KEY=VALUE` words of a line.
fn words(text: &str) -> HashMap<&str, &str> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// The most attempts that ran at once, from each attempt's first and last line: a line is
/// stamped when the daemon reads it, after the container wrote it and before the attempt
/// is seen to end, so each interval lies within its attempt's life and an overlap here is
/// a real one.
fn most_at_once(lines: &[Line]) -> usize {
    let mut spans: HashMap<&str, (jiff::Timestamp, jiff::Timestamp)> = HashMap::new();
    for l in lines {
        let s = spans.entry(&l.instance).or_insert((l.ts, l.ts));
        s.0 = s.0.min(l.ts);
        s.1 = s.1.max(l.ts);
    }
    let mut edges: Vec<(jiff::Timestamp, i32)> = spans
        .values()
        .flat_map(|(a, b)| [(*a, 1), (*b, -1)])
        .collect();
    // At one instant an end comes before a start: touching is not overlapping.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// The value of a sample of `metric` for `job` and `outcome` in `/metrics` (0 if absent).
async fn job_metric(d: &TestDaemon, metric: &str, job: &str, outcome: &str) -> f64 {
    let text = crate::serving::metrics_text(d).await.expect("/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            l.contains(&format!("job=\"{job}\"")) && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The runc containers of the daemon whose id holds `part`.
fn containers_of(d: &TestDaemon, part: &str) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(d.data_dir().join("run/runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|c| c.contains(part))
        .map(str::to_owned)
        .collect()
}

/// Waits until no container and no instance directory of `execution` is left.
async fn nothing_left(d: &TestDaemon, execution: &str) {
    let instances = d.data_dir().join("run/instances");
    wait_for(
        "the execution's containers to go",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let dirs = std::fs::read_dir(&instances)
                .map(|r| {
                    r.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(execution))
                })
                .unwrap_or(false);
            let left = dirs || !containers_of(d, execution).is_empty();
            async move { (!left).then_some(()) }
        },
    )
    .await
    .expect("nothing of the execution left in the runtime");
}

/// A CLI command against the daemon (which it finds in the data directory).
fn cli_command(d: &TestDaemon, args: &[&str]) -> Command {
    let mut cmd = Command::new(SKIFF);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SKIFF_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env("SKIFF_DATA_DIR", d.data_dir())
        .args(args);
    cmd
}

/// Runs the CLI off the async workers (so polls can run beside it).
async fn cli(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    let mut cmd = cli_command(d, args);
    tokio::task::spawn_blocking(move || cmd.output().expect("the CLI runs"))
        .await
        .expect("joined")
}

/// The script of the retry tests: says who it is, fails task 3's first attempt, else runs
/// `$SLEEP` seconds and says it ends.
const FLAKY: &str = "echo start index=$CLOUD_RUN_TASK_INDEX attempt=$CLOUD_RUN_TASK_ATTEMPT job=$CLOUD_RUN_JOB execution=$CLOUD_RUN_EXECUTION count=$CLOUD_RUN_TASK_COUNT\nif [ \"$CLOUD_RUN_TASK_INDEX\" = 3 ] && [ \"$CLOUD_RUN_TASK_ATTEMPT\" = 0 ]; then echo failing; exit 1; fi\nsleep $SLEEP\necho end index=$CLOUD_RUN_TASK_INDEX";

/// Five tasks two at a time, task 3 failing its first attempt: with retries the execution
/// succeeds (5 succeeded, 1 retried), every task saw Cloud Run's variables, never more than
/// two ran at once (from the polls and from the tasks' own lines), and the metrics count it.
/// With `maxRetries: 0` the execution fails after every task was tried (4 succeeded, 1
/// failed) and `jobs execute --wait` exits non-zero naming task 3 and its exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_parallelism_and_failure() {
    if skip() {
        return;
    }
    let d = daemon(&[]).await;
    let retry = JobSpec {
        name: "jobs-retry",
        tasks: 5,
        parallelism: 2,
        retries: 3,
        script: FLAKY,
        env: &[("SLEEP", "2")],
        ..JobSpec::default()
    };
    let o = d.cli_with_stdin(&["apply", "-f", "-"], Some(&job_yaml(&retry)));
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("job/jobs-retry created"),
        "{}",
        stdout(&o)
    );
    let o = d.cli_with_stdin(&["validate", "-f", "-"], Some(&job_yaml(&retry)));
    assert_code(&o, 0);
    assert!(stdout(&o).contains("1 valid Job"), "{}", stdout(&o));

    // Poll the running counts while `--wait` follows the execution.
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn({
        let (client, stop) = (d.client(), stop.clone());
        async move {
            let mut most = 0;
            let mut polls = 0;
            while !stop.is_cancelled() {
                if let Ok(list) = client.list_executions("default", Some("jobs-retry")).await {
                    for e in &list {
                        let running = e
                            .status
                            .tasks
                            .iter()
                            .filter(|t| t.state == TaskState::Running)
                            .count() as u32;
                        most = most.max(running).max(e.status.running_count);
                    }
                    polls += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (most, polls)
        }
    });
    let o = cli(&d, &["jobs", "execute", "jobs-retry", "--wait"]).await;
    stop.cancel();
    let (most_polled, polls) = poller.await.expect("the poller");
    assert_code(&o, 0);
    let name = stdout(&o)
        .lines()
        .next()
        .expect("the execution's name")
        .to_owned();
    assert!(name.starts_with("jobs-retry-"), "{name}");
    let progress = stderr(&o);
    assert!(
        progress.contains("task 3 attempt 0 ended: Error, exit code 1; retrying"),
        "{progress}"
    );
    assert!(
        progress.contains(&format!("{name}: 5/5 succeeded")),
        "{progress}"
    );
    assert!(
        progress.contains("succeeded: 5 tasks succeeded"),
        "{progress}"
    );
    eprintln!("--wait said:\n{progress}");
    assert!(
        polls > 10,
        "the status was polled while it ran ({polls} polls)"
    );
    assert!(
        most_polled <= 2,
        "at most 2 tasks ran at once, polls saw {most_polled}"
    );

    let e = execution(&d, &name).await;
    assert_eq!(e.completion_status(), CompletionStatus::ExecutionSucceeded);
    assert_eq!(e.status.succeeded_count, 5);
    assert_eq!(e.status.retried_count, 1);
    assert_eq!(e.status.failed_count, 0);
    let t3 = &e.status.tasks[3];
    assert_eq!(t3.attempts.len(), 2, "{t3:?}");
    assert_eq!(t3.attempts[0].exit_code, Some(1));
    assert_eq!(t3.attempts[0].reason, "Error");
    assert_eq!(t3.attempts[1].reason, "Completed");
    for t in e.status.tasks.iter().filter(|t| t.index != 3) {
        assert_eq!(t.attempts.len(), 1, "{t:?}");
    }

    // Every task saw Cloud Run's variables; task 3 twice, once failing.
    let o = d.cli(&["logs", "--execution", &name, "--timestamps"]);
    assert_code(&o, 0);
    let lines = log_lines(&stdout(&o));
    let starts: Vec<HashMap<&str, &str>> = lines
        .iter()
        .filter(|l| l.text.starts_with("start "))
        .map(|l| words(&l.text))
        .collect();
    assert_eq!(starts.len(), 6, "5 tasks and one retry:\n{}", stdout(&o));
    for w in &starts {
        assert_eq!(w["job"], "jobs-retry");
        assert_eq!(w["execution"], name);
        assert_eq!(w["count"], "5");
    }
    let mut indexes: Vec<(&str, &str)> =
        starts.iter().map(|w| (w["index"], w["attempt"])).collect();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            ("0", "0"),
            ("1", "0"),
            ("2", "0"),
            ("3", "0"),
            ("3", "1"),
            ("4", "0")
        ]
    );
    for l in &lines {
        let w = words(&l.text);
        if let (Some(i), Some(a)) = (w.get("index"), w.get("attempt")) {
            assert_eq!(l.instance, format!("{name}-{i}-{a}"), "{l:?}");
        }
    }
    let most_logged = most_at_once(&lines);
    eprintln!("at once: {most_polled} seen by polls, {most_logged} from the tasks' lines");
    assert!(
        most_logged <= 2,
        "at most 2 tasks ran at once, their lines say {most_logged}"
    );
    // Task 3 alone: both its attempts, nothing else.
    let o = d.cli(&["logs", "--execution", &name, "--task", "3"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains(&format!("[{name}-3-0] failing")), "{out}");
    assert!(out.contains(&format!("[{name}-3-1] end index=3")), "{out}");
    assert!(
        out.lines().all(|l| l.starts_with(&format!("[{name}-3-"))),
        "{out}"
    );

    // get and describe.
    let o = d.cli(&["get", "jobs"]);
    assert_code(&o, 0);
    let table = stdout(&o);
    assert!(table.contains("LAST EXECUTION"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("jobs-retry "))
        .expect("a row");
    assert!(row.contains(&name) && row.contains("Succeeded"), "{table}");
    let o = d.cli(&["get", "executions", "--job", "jobs-retry"]);
    assert_code(&o, 0);
    let table = stdout(&o);
    let row = table.lines().find(|l| l.starts_with(&name)).expect("a row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..8],
        ["jobs-retry", "5", "0", "5", "0", "1", "Succeeded"],
        "{table}"
    );
    let o = d.cli(&["get", "executions", &name, "-o", "json"]);
    assert_code(&o, 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["status"]["retriedCount"], 1);
    let o = d.cli(&["describe", "execution", &name]);
    assert_code(&o, 0);
    let described = stdout(&o);
    for want in [
        "Status:         Succeeded",
        "5 succeeded, 0 failed, 0 cancelled, 1 retried",
        "task 3 attempt 0: Error (exit code 1)",
        "task 3 attempt 1: Completed (exit code 0)",
    ] {
        assert!(described.contains(want), "{want} in\n{described}");
    }
    let o = d.cli(&["describe", "job", "jobs-retry"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains(&name), "{}", stdout(&o));

    // Without retries: every task is tried, the execution fails, `--wait` says why.
    let no_retry = JobSpec {
        name: "jobs-noretry",
        retries: 0,
        env: &[("SLEEP", "0")],
        ..retry
    };
    apply(&d, &job_yaml(&no_retry));
    let o = cli(&d, &["jobs", "execute", "jobs-noretry", "--wait"]).await;
    assert_code(&o, 1);
    let failed = stdout(&o).lines().next().expect("a name").to_owned();
    let err = stderr(&o);
    eprintln!("--wait said:\n{err}");
    assert!(
        err.contains("task 3 attempt 0 ended: Error, exit code 1; no retries left"),
        "{err}"
    );
    assert!(
        err.contains("task 3 failed after 1 attempt(s): Error, exit code 1"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "error: execution {failed} failed: 1 of 5 tasks failed: task 3 (Error after 1 attempts, exit code 1)"
        )),
        "{err}"
    );
    let e = execution(&d, &failed).await;
    assert_eq!(e.completion_status(), CompletionStatus::ExecutionFailed);
    assert_eq!(e.status.failed_count, 1);
    assert_eq!(e.status.succeeded_count, 4);
    assert_eq!(e.status.retried_count, 0);
    assert!(
        e.status.tasks.iter().all(|t| t.attempts.len() == 1),
        "every task was tried once"
    );
    let o = d.cli(&["get", "jobs", "jobs-noretry"]);
    assert!(stdout(&o).contains("Failed"), "{}", stdout(&o));

    // The metrics count what happened.
    let m = |metric: &'static str, job: &'static str, outcome: &'static str| {
        job_metric(&d, metric, job, outcome)
    };
    assert_eq!(
        m("skiff_job_executions_total", "jobs-retry", "succeeded").await,
        1.0
    );
    assert_eq!(
        m("skiff_job_executions_total", "jobs-retry", "failed").await,
        0.0
    );
    assert_eq!(
        m("skiff_job_tasks_total", "jobs-retry", "retried").await,
        1.0
    );
    assert_eq!(
        m("skiff_job_tasks_total", "jobs-retry", "succeeded").await,
        5.0
    );
    assert_eq!(
        m("skiff_job_executions_total", "jobs-noretry", "failed").await,
        1.0
    );
    assert_eq!(
        m("skiff_job_tasks_total", "jobs-noretry", "failed").await,
        1.0
    );
    assert_eq!(
        m("skiff_job_tasks_total", "jobs-noretry", "retried").await,
        0.0
    );

    // Deleting the job takes its executions.
    let o = d.cli(&["delete", "job", "jobs-noretry"]);
    assert_code(&o, 0);
    assert_code(&d.cli(&["executions", "describe", &failed]), 4);
    d.cleanup().await.expect("cleanup");
}

/// An attempt past its timeout (`--task-timeout 2s`) is killed with `DeadlineExceeded` and
/// the execution fails; a cancelled execution stops its running task, cancels the pending
/// ones and leaves nothing in the runtime; overrides (`--args`, `--update-env-vars`,
/// `--tasks`) reach the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancel_and_overrides() {
    if skip() {
        return;
    }
    // A short grace: `sleep` as the container's PID 1 ignores SIGTERM.
    let d = daemon(&["--termination-grace-period-seconds", "2"]).await;
    let sleeper = JobSpec {
        name: "jobs-sleep",
        tasks: 3,
        parallelism: 1,
        script: "echo started $CLOUD_RUN_TASK_INDEX; exec sleep 60",
        ..JobSpec::default()
    };
    apply(&d, &job_yaml(&sleeper));

    // Over its timeout: killed, DeadlineExceeded, failed.
    let o = cli(
        &d,
        &[
            "jobs",
            "execute",
            "jobs-sleep",
            "--tasks",
            "1",
            "--task-timeout",
            "2s",
            "--wait",
        ],
    )
    .await;
    assert_code(&o, 1);
    let timed_out = stdout(&o).lines().next().expect("a name").to_owned();
    let err = stderr(&o);
    assert!(
        err.contains("task 0 failed after 1 attempt(s): DeadlineExceeded"),
        "{err}"
    );
    let e = execution(&d, &timed_out).await;
    assert_eq!(e.completion_status(), CompletionStatus::ExecutionFailed);
    assert_eq!(
        e.spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.timeout_seconds),
        Some(2)
    );
    let last = e.status.tasks[0]
        .last_attempt_result
        .clone()
        .expect("a result");
    assert_eq!(last.reason, "DeadlineExceeded");
    assert_eq!(last.exit_code, None);
    nothing_left(&d, &timed_out).await;
    let o = d.cli(&["describe", "execution", &timed_out]);
    assert!(stdout(&o).contains("DeadlineExceeded"), "{}", stdout(&o));

    // Cancel: the running task is stopped, the pending ones never start.
    let o = d.cli(&["jobs", "execute", "jobs-sleep"]);
    assert_code(&o, 0);
    let cancelled = stdout(&o).trim().to_owned();
    let client = d.client();
    wait_for(
        "task 0 to print",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let out = stdout(&d.cli(&["logs", "--execution", &cancelled]));
            async move { out.contains("started 0").then_some(()) }
        },
    )
    .await
    .expect("task 0 runs");
    assert_eq!(containers_of(&d, &cancelled).len(), 1, "one task at a time");
    // Its log, followed while it runs, ends once it is cancelled and its task is gone.
    let following = {
        let mut cmd = cli_command(&d, &["logs", "--execution", &cancelled, "-f"]);
        tokio::task::spawn_blocking(move || cmd.output().expect("the CLI runs"))
    };
    // A running execution is not deleted.
    let o = d.cli(&["executions", "delete", &cancelled]);
    assert_code(&o, 5);
    assert!(stderr(&o).contains("cancel it first"), "{}", stderr(&o));
    let o = d.cli(&["executions", "cancel", &cancelled]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("cancelled"), "{}", stdout(&o));
    let e = ended(&d, &cancelled).await;
    assert_eq!(e.completion_status(), CompletionStatus::ExecutionCancelled);
    assert_eq!(e.status.cancelled_count, 3);
    assert_eq!(e.status.running_count, 0);
    assert_eq!(e.status.tasks[0].attempts[0].reason, "Cancelled");
    assert!(
        e.status.tasks[1..].iter().all(|t| t.attempts.is_empty()),
        "never started"
    );
    assert!(e.status.tasks.iter().all(|t| t.instance.is_none()));
    nothing_left(&d, &cancelled).await;
    let o = tokio::time::timeout(MAX_WAIT, following)
        .await
        .expect("the followed log ends with the execution")
        .expect("joined");
    assert_code(&o, 0);
    assert_eq!(stdout(&o).trim(), format!("[{cancelled}-0-0] started 0"));
    let o = d.cli(&["get", "executions"]);
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&cancelled))
        .map(str::to_owned)
        .expect("a row");
    assert!(row.contains("Cancelled"), "{row}");
    // Cancelling again says it had ended; an ended execution can be deleted.
    let o = d.cli(&["executions", "cancel", &cancelled]);
    assert_code(&o, 0);
    let o = d.cli(&["executions", "delete", &cancelled]);
    assert_code(&o, 0);
    assert!(client.get_execution("default", &cancelled).await.is_err());
    // `--wait` on an execution cancelled meanwhile exits non-zero.
    let waiting = {
        let mut cmd = cli_command(&d, &["jobs", "execute", "jobs-sleep", "--wait"]);
        tokio::task::spawn_blocking(move || cmd.output().expect("the CLI runs"))
    };
    let running = wait_for(
        "an execution to run",
        Duration::from_millis(100),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let list = client
                    .list_executions("default", Some("jobs-sleep"))
                    .await
                    .ok()?;
                list.into_iter()
                    .find(|e| !e.is_done() && e.status.running_count == 1)
                    .map(|e| e.metadata.name)
            }
        },
    )
    .await
    .expect("running");
    assert_code(&d.cli(&["executions", "cancel", &running]), 0);
    let o = waiting.await.expect("joined");
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains(&format!("error: execution {running} was cancelled")),
        "{}",
        stderr(&o)
    );
    nothing_left(&d, &running).await;

    // Overrides reach the task.
    let echo = JobSpec {
        name: "jobs-echo",
        tasks: 3,
        script: "echo args=\"$*\" mode=$MODE extra=$EXTRA count=$CLOUD_RUN_TASK_COUNT",
        args: &["template-arg"],
        env: &[("MODE", "template")],
        ..JobSpec::default()
    };
    apply(&d, &job_yaml(&echo));
    let o = d.cli(&["jobs", "execute", "jobs-echo"]);
    assert_code(&o, 0);
    let plain = stdout(&o).trim().to_owned();
    // Followed from its start, the log ends with the execution, every task's line in it.
    let o = tokio::time::timeout(MAX_WAIT, cli(&d, &["logs", "--execution", &plain, "-f"]))
        .await
        .expect("a followed execution log ends with the execution");
    assert_code(&o, 0);
    let followed = stdout(&o);
    assert_eq!(followed.lines().count(), 3, "{followed}");
    assert!(execution(&d, &plain).await.is_done());
    let out = stdout(&d.cli(&["logs", "--execution", &plain, "--task", "2"]));
    assert_eq!(
        out.trim(),
        format!("[{plain}-2-0] args=template-arg mode=template extra= count=3")
    );
    let o = cli(
        &d,
        &[
            "jobs",
            "execute",
            "jobs-echo",
            "--args",
            "a,b c",
            "--update-env-vars",
            "MODE=override,EXTRA=1",
            "--tasks",
            "1",
            "--wait",
        ],
    )
    .await;
    assert_code(&o, 0);
    let overridden = stdout(&o).trim().to_owned();
    let e = execution(&d, &overridden).await;
    assert_eq!(e.spec.task_count, 1);
    assert_eq!(e.status.tasks.len(), 1);
    let out = stdout(&d.cli(&["logs", "--execution", &overridden]));
    assert_eq!(
        out.trim(),
        format!("[{overridden}-0-0] args=a b c mode=override extra=1 count=1")
    );
    // The job itself is unchanged.
    let job = client
        .get_job("default", "jobs-echo")
        .await
        .expect("the job");
    assert_eq!(job.execution().task_count, Some(3));
    d.cleanup().await.expect("cleanup");
}

/// A malformed Job is refused by `apply` and `validate` with a path per problem; running a
/// job that does not exist is a 404 with a clear message; bad overrides are refused.
#[tokio::test]
async fn bad_jobs_and_executions_are_refused() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let good = job_yaml(&JobSpec {
        name: "jobs-bad",
        retries: 3,
        ..JobSpec::default()
    });
    let bad = good
        .replace("maxRetries: 3", "maxRetries: 11\n          taskCount: 2")
        .replace("parallelism: 0", "parallelism: 5");
    for verb in ["apply", "validate"] {
        let o = d.cli_with_stdin(&[verb, "-f", "-"], Some(&bad));
        assert_code(&o, 3);
        let err = stderr(&o);
        for (path, message) in [
            (
                "spec.template.spec.template.spec.taskCount (line ",
                "unknown field",
            ),
            (
                "spec.template.spec.template.spec.maxRetries (line ",
                "11 is out of range (0 to 10)",
            ),
            ("spec.template.spec.parallelism (line ", "5 is out of range"),
        ] {
            assert!(
                err.lines().any(|l| l.contains(path) && l.contains(message)),
                "{verb}: {path}…{message} in\n{err}"
            );
        }
    }
    assert_code(&d.cli(&["get", "job", "jobs-bad"]), 4);
    // The server refuses it too, with the same paths.
    let (status, body) = {
        let r = crate::http()
            .put(format!(
                "{}/api/v1/namespaces/default/jobs/jobs-bad",
                d.api()
            ))
            .bearer_auth(d.token())
            .header("content-type", "application/yaml")
            .body(bad.clone())
            .send()
            .await
            .expect("PUT");
        (r.status().as_u16(), r.text().await.expect("body"))
    };
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("spec.template.spec.template.spec.taskCount"),
        "{body}"
    );

    let o = d.cli(&["jobs", "execute", "nope"]);
    assert_code(&o, 4);
    assert!(
        stderr(&o).contains("job `nope` not found in namespace `default`"),
        "{}",
        stderr(&o)
    );
    let r = crate::http()
        .post(format!(
            "{}/api/v1/namespaces/default/jobs/nope/executions",
            d.api()
        ))
        .bearer_auth(d.token())
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 404);
    assert_code(&d.cli(&["logs", "--execution", "nope-zzzzz"]), 4);
    assert_code(&d.cli(&["executions", "cancel", "nope-zzzzz"]), 4);

    apply(&d, &good);
    let o = d.cli(&["jobs", "execute", "jobs-bad", "--tasks", "0"]);
    assert_code(&o, 3);
    assert!(
        stderr(&o).contains("overrides.taskCount: 0 is out of range"),
        "{}",
        stderr(&o)
    );
    let o = d.cli(&["jobs", "execute", "jobs-bad", "--update-env-vars", "=x"]);
    assert_code(&o, 3);
    assert!(
        stderr(&o).contains("overrides.containerOverrides[0].env[0].name"),
        "{}",
        stderr(&o)
    );
    let o = d.cli(&[
        "jobs",
        "execute",
        "jobs-bad",
        "--update-env-vars",
        "NOVALUE",
    ]);
    assert_code(&o, 2);
    let r = crate::http()
        .post(format!(
            "{}/api/v1/namespaces/default/jobs/jobs-bad/executions",
            d.api()
        ))
        .bearer_auth(d.token())
        .body(r#"{"tasks": 2}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        r.text()
            .await
            .expect("body")
            .contains("unknown field `tasks`")
    );
    d.cleanup().await.expect("cleanup");
}
