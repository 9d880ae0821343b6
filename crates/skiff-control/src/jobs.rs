//! Jobs (Cloud Run semantics): the stored Job, its executions, and the execution
//! reconciler that runs each execution's tasks to completion.
//!
//! An execution is one stored object holding every task's state (`status.tasks`), so a
//! task's change and the counts that follow from it are written together. The reconciler
//! is level-based, in the shape of the others: read the execution and what the runtime
//! holds of its tasks, compute the next status with the pure [`step`], write it (guarded by
//! the execution's `mod_revision`), then start and stop instances as the step says.
//!
//! - **Attempts.** A task's attempt is one instance (`<execution>-<index>-<attempt>`) that
//!   runs its container once ([`TaskPlan`]: no restart). Its exit code decides: 0 succeeds,
//!   anything else (or an OOM kill, a start error, the attempt's timeout) fails the attempt.
//!   A failed attempt is retried while the task has retries left (`maxRetries`, per task);
//!   the execution fails only after every task was tried, as Cloud Run's does.
//! - **Durability.** The attempt is recorded as running (with its instance id) before its
//!   instance starts, and the instance's plan is recorded for re-adoption. After a daemon
//!   restart a still-running attempt is re-adopted; one whose instance is gone (it ended
//!   while the daemon was down, or never started) is a failed attempt with reason `Lost`
//!   and is retried like any other. A task recorded as succeeded is never run again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use skiff_api::job::{
    AttemptResult, CompletionStatus, Execution, ExecutionReference, ExecutionRunSpec,
    ExecutionStatus, Job, JobStatus, LABEL_JOB, Overrides, STARTED_BY_ANNOTATION, TaskState,
    TaskStatus, ValidatedJob,
};
use skiff_api::object::{ConditionStatus, ObjectMeta, Revision, set_condition};
use skiff_api::wire::{Phase, Termination};
use skiff_runtime::instance::{InstancePlan, TaskPlan};
use skiff_store::{Store, Txn, TxnOutcome, keys};
use tracing::{info, warn};

use crate::controller::{ApplyResult, Controller, ControllerError};
use crate::reconciler::{Handle, Next, ReconcileError, Reconciler};
use crate::runtime::{ImageStore, InstanceInfo, InstanceRuntime};
use crate::secrets::{self, SecretStore};
use crate::telemetry::{ExecutionOutcome, JobMetrics, TaskOutcome};

/// (namespace, execution name).
pub type ExecutionKey = (String, String);

/// Condition types of an execution (Cloud Run's).
pub mod conditions {
    /// The images are resolved and the tasks can start.
    pub const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";
    /// A task has started.
    pub const STARTED: &str = "Started";
    /// Every task is done.
    pub const COMPLETED: &str = "Completed";
}

const MAX_ATTEMPTS: usize = 16;
/// Attempts of one task lost to the daemon (`Lost`, `Unknown`) that are run again without
/// using the task's `maxRetries`.
pub const MAX_LOST_ATTEMPTS: usize = 3;
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..skiff_api::job::EXECUTION_SUFFIX_LEN)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// The instance id of attempt `attempt` of task `index`.
pub fn attempt_id(execution: &str, index: u32, attempt: u32) -> String {
    format!("{execution}-{index}-{attempt}")
}

/// Whether instance `id` is an attempt of `execution` (`<execution>-<index>-<attempt>`). A
/// prefix is not enough: job `etl-x7k2p`'s executions' attempts (`etl-x7k2p-b4n9q-0-0`)
/// start with the name of job `etl`'s execution `etl-x7k2p`.
fn is_attempt_of(id: &str, execution: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    id.strip_prefix(execution)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(index, attempt)| numeric(index) && numeric(attempt))
}

/// What the runtime holds of an attempt's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Its container runs (or is being created).
    Running,
    /// It ended; how, when the runtime recorded it.
    Ended(Option<Termination>),
}

/// What a step decided beside the new status.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// The execution's next status.
    pub status: ExecutionStatus,
    /// Attempts to start: (task index, attempt, instance id).
    pub start: Vec<(u32, u32, String)>,
    /// Instances to stop (timed out, cancelled, or left over).
    pub stop: Vec<String>,
    /// Instances whose records can go (their attempt's end is now recorded).
    pub forget: Vec<String>,
    /// Attempts that ended, by outcome.
    pub outcomes: Vec<TaskOutcome>,
    /// The execution ended now, this way.
    pub completed: Option<ExecutionOutcome>,
    /// Look again after this long (the nearest attempt timeout).
    pub recheck: Option<Duration>,
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.to_string()
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// The next status of `exec`, given what the runtime holds of its attempts (`observed`, by
/// instance id; an id it does not hold is absent), whether its images are resolved, and now.
pub fn step(
    exec: &Execution,
    observed: &HashMap<String, Observed>,
    images_ready: bool,
    now: jiff::Timestamp,
) -> Step {
    let spec = &exec.spec;
    let mut out = Step {
        status: exec.status.clone(),
        ..Step::default()
    };
    let name = &exec.metadata.name;
    if exec.is_done() {
        // Nothing may run for an execution that ended.
        out.stop = observed
            .iter()
            .filter(|(_, o)| **o == Observed::Running)
            .map(|(id, _)| id.clone())
            .collect();
        out.forget = observed.keys().cloned().collect();
        return out;
    }
    let task = spec.task();
    let retries = task.retries();
    let timeout = task.timeout();
    let at = rfc3339(now);
    let s = &mut out.status;
    for i in s.tasks.len() as u32..spec.task_count {
        s.tasks.push(TaskStatus {
            index: i,
            ..TaskStatus::default()
        });
    }
    for t in s.tasks.iter_mut() {
        if t.state != TaskState::Running {
            continue;
        }
        let id = t
            .instance
            .clone()
            .unwrap_or_else(|| attempt_id(name, t.index, t.attempt));
        let started = t.start_time.as_deref().and_then(parse_time);
        let end = match observed.get(&id) {
            Some(Observed::Running) => {
                if spec.cancelled {
                    out.stop.push(id.clone());
                    Some((None, "Cancelled", "the execution was cancelled".to_owned()))
                } else {
                    let elapsed = started
                        .map(|s| now.duration_since(s).unsigned_abs())
                        .unwrap_or_default();
                    if elapsed >= timeout {
                        out.stop.push(id.clone());
                        Some((
                            None,
                            "DeadlineExceeded",
                            format!(
                                "the attempt ran past its timeout ({}s, timeoutSeconds) and was stopped",
                                timeout.as_secs()
                            ),
                        ))
                    } else {
                        let left = timeout - elapsed;
                        out.recheck = Some(out.recheck.map_or(left, |r| r.min(left)));
                        None
                    }
                }
            }
            Some(Observed::Ended(Some(term))) => {
                out.forget.push(id.clone());
                let reason = if term.exit_code == Some(0) && term.reason == "Completed" {
                    "Completed"
                } else if term.reason == "Completed" {
                    "Error"
                } else {
                    term.reason.as_str()
                };
                Some((term.exit_code, reason, term.message.clone()))
            }
            Some(Observed::Ended(None)) | None => {
                out.forget.push(id.clone());
                Some((
                    None,
                    "Lost",
                    "the attempt's instance is gone without a recorded exit (the daemon \
                     stopped while it ran, or it could not start)"
                        .to_owned(),
                ))
            }
        };
        let Some((exit_code, reason, message)) = end else {
            continue;
        };
        let result = AttemptResult {
            attempt: t.attempt,
            exit_code,
            reason: reason.to_owned(),
            message,
            start_time: t.start_time.clone(),
            completion_time: Some(at.clone()),
        };
        t.attempts.push(result.clone());
        t.last_attempt_result = Some(result);
        t.instance = None;
        if reason == "Completed" {
            t.state = TaskState::Succeeded;
            t.completion_time = Some(at.clone());
            out.outcomes.push(TaskOutcome::Succeeded);
        } else if reason == "Cancelled" {
            t.state = TaskState::Cancelled;
            t.completion_time = Some(at.clone());
            out.outcomes.push(TaskOutcome::Cancelled);
        } else if !spec.cancelled
            && matches!(reason, "Lost" | "Unknown")
            && t.attempts
                .iter()
                .filter(|a| matches!(a.reason.as_str(), "Lost" | "Unknown"))
                .count()
                <= MAX_LOST_ATTEMPTS
        {
            // The daemon, not the task, lost this attempt: run it again without using
            // the task's retries (a few times at most, in case the task itself is why).
            t.attempt += 1;
            t.state = TaskState::Pending;
            t.start_time = None;
            out.outcomes.push(TaskOutcome::Retried);
        } else if t.retried < retries && !spec.cancelled {
            t.retried += 1;
            t.attempt += 1;
            t.state = TaskState::Pending;
            t.start_time = None;
            out.outcomes.push(TaskOutcome::Retried);
        } else {
            t.state = TaskState::Failed;
            t.completion_time = Some(at.clone());
            out.outcomes.push(TaskOutcome::Failed);
        }
    }
    // Instances of this execution no task points at (a killed attempt still stopping, or
    // one left by a crash between start and record): stop, and forget once ended.
    let current: Vec<String> = s.tasks.iter().filter_map(|t| t.instance.clone()).collect();
    for (id, o) in observed {
        if current.contains(id) || out.forget.contains(id) || out.stop.contains(id) {
            continue;
        }
        match o {
            Observed::Running => out.stop.push(id.clone()),
            Observed::Ended(_) => out.forget.push(id.clone()),
        }
    }
    if spec.cancelled {
        for t in s.tasks.iter_mut().filter(|t| t.state == TaskState::Pending) {
            t.state = TaskState::Cancelled;
            t.completion_time = Some(at.clone());
            out.outcomes.push(TaskOutcome::Cancelled);
        }
    } else if images_ready {
        let limit = if spec.parallelism == 0 {
            spec.task_count
        } else {
            spec.parallelism
        };
        let mut running = s
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count() as u32;
        for t in s.tasks.iter_mut() {
            if running >= limit {
                break;
            }
            if t.state != TaskState::Pending {
                continue;
            }
            let id = attempt_id(name, t.index, t.attempt);
            t.state = TaskState::Running;
            t.instance = Some(id.clone());
            t.start_time = Some(at.clone());
            out.start.push((t.index, t.attempt, id));
            running += 1;
            let left = timeout;
            out.recheck = Some(out.recheck.map_or(left, |r| r.min(left)));
        }
    }
    let count = |st: TaskState| s.tasks.iter().filter(|t| t.state == st).count() as u32;
    s.running_count = count(TaskState::Running);
    s.succeeded_count = count(TaskState::Succeeded);
    s.failed_count = count(TaskState::Failed);
    s.cancelled_count = count(TaskState::Cancelled);
    s.retried_count = s.tasks.iter().map(|t| t.retried).sum();
    if !out.start.is_empty() && s.start_time.is_none() {
        s.start_time = Some(at.clone());
        set_condition(
            &mut s.conditions,
            conditions::STARTED,
            ConditionStatus::True,
            None,
            None,
            &at,
        );
    }
    if s.tasks.iter().all(|t| t.state.is_terminal()) {
        s.completion_time = Some(at.clone());
        let (status, reason, message, outcome) = if s.cancelled_count > 0 {
            (
                ConditionStatus::False,
                Some("Cancelled"),
                format!(
                    "cancelled: {} of {} tasks succeeded before",
                    s.succeeded_count, spec.task_count
                ),
                ExecutionOutcome::Cancelled,
            )
        } else if s.failed_count > 0 {
            let failed: Vec<String> = s
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .take(5)
                .map(|t| {
                    let last = t.last_attempt_result.as_ref();
                    format!(
                        "task {} ({} after {} attempts{})",
                        t.index,
                        last.map_or("failed", |r| r.reason.as_str()),
                        t.attempts.len(),
                        last.and_then(|r| r.exit_code)
                            .map(|c| format!(", exit code {c}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            (
                ConditionStatus::False,
                Some("NonZeroExitCode"),
                format!(
                    "{} of {} tasks failed: {}",
                    s.failed_count,
                    spec.task_count,
                    failed.join("; ")
                ),
                ExecutionOutcome::Failed,
            )
        } else {
            (
                ConditionStatus::True,
                None,
                format!("{} tasks succeeded", spec.task_count),
                ExecutionOutcome::Succeeded,
            )
        };
        set_condition(
            &mut s.conditions,
            conditions::COMPLETED,
            status,
            reason,
            Some(message),
            &at,
        );
        out.completed = Some(outcome);
        out.recheck = None;
    } else if !s
        .conditions
        .iter()
        .any(|c| c.condition_type == conditions::COMPLETED)
    {
        set_condition(
            &mut s.conditions,
            conditions::COMPLETED,
            ConditionStatus::Unknown,
            None,
            None,
            &at,
        );
    }
    out
}

/// The environment a task's attempt gets (Cloud Run's), and the event's for event sinks.
fn task_env(exec: &Execution, index: u32, attempt: u32) -> Vec<(String, String)> {
    let mut env = vec![
        ("CLOUD_RUN_JOB".to_owned(), exec.job().to_owned()),
        ("CLOUD_RUN_EXECUTION".to_owned(), exec.metadata.name.clone()),
        ("CLOUD_RUN_TASK_INDEX".to_owned(), index.to_string()),
        (
            "CLOUD_RUN_TASK_COUNT".to_owned(),
            exec.spec.task_count.to_string(),
        ),
        ("CLOUD_RUN_TASK_ATTEMPT".to_owned(), attempt.to_string()),
    ];
    if let Some(serde_json::Value::Object(event)) = &exec.spec.event {
        for (k, v) in event {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if value.contains('\0') {
                continue;
            }
            let name = match k.as_str() {
                "data" | "data_base64" => "CE_DATA".to_owned(),
                k => format!("CE_{}", k.to_ascii_uppercase()),
            };
            env.push((name, value));
        }
    }
    env
}

/// Jobs and their executions: the API's reads and writes, and the execution reconciler.
pub struct Jobs {
    controller: Controller,
    store: Arc<dyn Store>,
    runtime: Arc<dyn InstanceRuntime>,
    images: Arc<dyn ImageStore>,
    secrets: Arc<SecretStore>,
    metrics: JobMetrics,
    /// How attempts whose instance has left the runtime ended (from its last event).
    exits: Mutex<HashMap<String, Option<Termination>>>,
    handle: OnceLock<Handle<ExecutionKey>>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ControllerError> {
    serde_json::from_slice(value).map_err(|source| ControllerError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("API objects serialize")
}

fn not_found(kind: &'static str, ns: &str, name: &str) -> ControllerError {
    ControllerError::NotFound {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

impl Jobs {
    /// Jobs over the controller's store, running tasks in `runtime`.
    pub fn new(
        controller: Controller,
        runtime: Arc<dyn InstanceRuntime>,
        images: Arc<dyn ImageStore>,
        secrets: Arc<SecretStore>,
        metrics: JobMetrics,
    ) -> Arc<Self> {
        Arc::new(Jobs {
            store: controller.store().clone(),
            controller,
            runtime,
            images,
            secrets,
            metrics,
            exits: Mutex::new(HashMap::new()),
            handle: OnceLock::new(),
        })
    }

    /// Now, as the controller's clock says.
    pub fn now(&self) -> jiff::Timestamp {
        self.controller
            .now()
            .parse()
            .unwrap_or_else(|_| jiff::Timestamp::now())
    }

    /// Follows the runtime's events of task instances into the queue (with how each ended),
    /// until `shutdown`.
    pub fn attach(
        self: &Arc<Self>,
        handle: Handle<ExecutionKey>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.handle.set(handle.clone());
        let mut events = self.runtime.events();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) => {
                            let Some(task) = &ev.task else { continue };
                            if matches!(ev.status.phase, Phase::Stopping | Phase::Stopped) {
                                let term = ev.status.containers.first().and_then(|c| c.last_termination.clone());
                                me.exits.lock().unwrap_or_else(|p| p.into_inner()).insert(ev.id.clone(), term);
                            }
                            handle.enqueue((ev.namespace.clone(), task.execution.clone()));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            for i in me.runtime.tasks() {
                                if let Some(t) = i.plan.task {
                                    handle.enqueue((i.plan.namespace, t.execution));
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        })
    }

    // --- Jobs -------------------------------------------------------------------------

    /// Creates or updates a Job.
    pub async fn apply(
        &self,
        v: ValidatedJob,
        dry_run: bool,
    ) -> Result<(ApplyResult, Job), ControllerError> {
        let key = keys::job(&v.namespace, &v.name);
        for _ in 0..MAX_ATTEMPTS {
            let existing = self.store.get(&key).await?;
            let expected = existing.as_ref().map_or(0, |kv| kv.mod_revision);
            if let Some(want) = &v.manifest.metadata.resource_version
                && *want != expected.to_string()
            {
                return Err(ControllerError::Conflict {
                    message: format!(
                        "job `{}` changed since resourceVersion {want} (now {expected})",
                        v.name
                    ),
                });
            }
            let old: Option<Job> = match &existing {
                Some(kv) => Some(decode(&key, &kv.value)?),
                None => None,
            };
            let spec = v.manifest.spec.clone().unwrap_or_default();
            let meta = &v.manifest.metadata;
            let (result, job) = match old {
                Some(o)
                    if o.spec == spec
                        && o.metadata.labels == meta.labels
                        && o.metadata.annotations == meta.annotations =>
                {
                    let mut o = o;
                    o.metadata.resource_version = expected.to_string();
                    return Ok((ApplyResult::Unchanged, o));
                }
                Some(mut o) => {
                    if o.spec != spec {
                        o.metadata.generation += 1;
                    }
                    o.spec = spec;
                    o.metadata.labels = meta.labels.clone();
                    o.metadata.annotations = meta.annotations.clone();
                    o.status.observed_generation = o.metadata.generation;
                    let schedule = skiff_api::job::JobSchedule::of(&o.metadata.annotations);
                    if schedule != o.status.schedule {
                        o.status.schedule_since = Some(self.controller.now());
                        o.status.next_schedule_time = None;
                    }
                    o.status.schedule = schedule;
                    (ApplyResult::Configured, o)
                }
                None => {
                    let now = self.controller.now();
                    let metadata = ObjectMeta {
                        name: v.name.clone(),
                        namespace: v.namespace.clone(),
                        generate_name: None,
                        uid: uuid::Uuid::new_v4().to_string(),
                        generation: 1,
                        resource_version: String::new(),
                        creation_timestamp: now.clone(),
                        labels: meta.labels.clone(),
                        annotations: meta.annotations.clone(),
                    };
                    let mut status = JobStatus {
                        observed_generation: 1,
                        schedule: skiff_api::job::JobSchedule::of(&metadata.annotations),
                        schedule_since: Some(now.clone()),
                        ..JobStatus::default()
                    };
                    set_condition(
                        &mut status.conditions,
                        "Ready",
                        ConditionStatus::True,
                        None,
                        None,
                        &now,
                    );
                    (
                        ApplyResult::Created,
                        Job {
                            api_version: skiff_api::job::JOBS_API_VERSION.to_owned(),
                            kind: "Job".to_owned(),
                            metadata,
                            spec,
                            status,
                        },
                    )
                }
            };
            if dry_run {
                return Ok((result, job));
            }
            let txn = Txn::new()
                .when_mod_revision(&key, expected)
                .put(&key, encode(&job));
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                if result == ApplyResult::Created {
                    self.metrics.preset(&v.namespace, &v.name);
                }
                info!(namespace = %v.namespace, job = %v.name, result = result.as_str(), "job stored");
                let mut job = job;
                job.metadata.resource_version = revision.to_string();
                return Ok((result, job));
            }
        }
        Err(ControllerError::Conflict {
            message: format!("job `{}` changed concurrently; apply again", v.name),
        })
    }

    /// Reads a Job.
    pub async fn get(&self, ns: &str, name: &str) -> Result<Job, ControllerError> {
        let key = keys::job(ns, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| not_found("job", ns, name))?;
        let mut j: Job = decode(&key, &kv.value)?;
        j.metadata.resource_version = kv.mod_revision.to_string();
        Ok(j)
    }

    /// Lists Jobs (of a namespace, or all).
    pub async fn list(&self, ns: Option<&str>) -> Result<Vec<Job>, ControllerError> {
        let mut out = Vec::new();
        for kv in self.store.list(&keys::jobs(ns)).await? {
            let mut j: Job = decode(&kv.key, &kv.value)?;
            j.metadata.resource_version = kv.mod_revision.to_string();
            out.push(j);
        }
        Ok(out)
    }

    /// Deletes a Job and its executions (their running tasks are stopped).
    pub async fn delete(&self, ns: &str, name: &str) -> Result<(), ControllerError> {
        let key = keys::job(ns, name);
        if self.store.get(&key).await?.is_none() {
            return Err(not_found("job", ns, name));
        }
        let mut txn = Txn::new().delete(&key);
        for e in self.executions(ns, Some(name)).await? {
            txn = txn.delete(keys::execution(ns, &e.metadata.name));
        }
        self.store.txn(txn).await?;
        self.metrics.forget(ns, name);
        info!(
            namespace = ns,
            job = name,
            "job deleted with its executions"
        );
        Ok(())
    }

    /// Updates a Job's status with `change` (which says whether it changed anything).
    pub async fn update_job_status(
        &self,
        ns: &str,
        name: &str,
        change: impl Fn(&mut Job) -> bool,
    ) -> Result<Option<Job>, ControllerError> {
        let key = keys::job(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(None);
            };
            let mut j: Job = decode(&key, &kv.value)?;
            if !change(&mut j) {
                return Ok(Some(j));
            }
            let txn = Txn::new()
                .when_mod_revision(&key, kv.mod_revision)
                .put(&key, encode(&j));
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                return Ok(Some(j));
            }
        }
        Err(ControllerError::Conflict {
            message: format!("job `{name}` changed concurrently {MAX_ATTEMPTS} times"),
        })
    }

    // --- Executions -------------------------------------------------------------------

    /// Starts an execution of a job with `overrides`; `started_by` says who asked (`api`,
    /// `schedule`, an event), `event` is the CloudEvent that started it, if one did.
    pub async fn run(
        &self,
        ns: &str,
        job: &str,
        overrides: &Overrides,
        started_by: &str,
        event: Option<serde_json::Value>,
    ) -> Result<Execution, ControllerError> {
        self.run_scheduled(ns, job, overrides, started_by, event, None)
            .await
    }

    /// [`Jobs::run`] for the scheduled time `scheduled` of the job's schedule, with `missed`
    /// earlier times skipped: recorded in the job's status in the same transaction that
    /// creates the execution, so a scheduled time runs once whatever moment a crash hits.
    pub async fn run_scheduled(
        &self,
        ns: &str,
        job: &str,
        overrides: &Overrides,
        started_by: &str,
        event: Option<serde_json::Value>,
        scheduled: Option<(jiff::Timestamp, u64)>,
    ) -> Result<Execution, ControllerError> {
        let j = self.get(ns, job).await?;
        let spec = skiff_api::job::apply_overrides(j.execution(), overrides).map_err(|p| {
            ControllerError::BadRequest {
                message: p
                    .iter()
                    .map(|(path, _, m)| format!("overrides.{path}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        let task_count = spec.task_count.unwrap_or(1).max(1) as u32;
        let parallelism = match spec.parallelism.unwrap_or(0).max(0) as u32 {
            0 => task_count,
            p => p.min(task_count),
        };
        let now = self.controller.now();
        let name = format!("{job}-{}", suffix());
        let mut labels = j
            .spec
            .template
            .as_ref()
            .map(|t| t.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert(LABEL_JOB.to_owned(), job.to_owned());
        let mut annotations = j
            .spec
            .template
            .as_ref()
            .map(|t| t.metadata.annotations.clone())
            .unwrap_or_default();
        annotations.insert(STARTED_BY_ANNOTATION.to_owned(), started_by.to_owned());
        let mut exec = Execution {
            api_version: skiff_api::job::JOBS_API_VERSION.to_owned(),
            kind: "Execution".to_owned(),
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: ns.to_owned(),
                generate_name: None,
                uid: uuid::Uuid::new_v4().to_string(),
                generation: 1,
                resource_version: String::new(),
                creation_timestamp: now.clone(),
                labels,
                annotations,
            },
            spec: ExecutionRunSpec {
                task_count,
                parallelism,
                template: spec.template.unwrap_or_default(),
                cancelled: false,
                event,
            },
            status: ExecutionStatus {
                log_uri: Some(format!("skiff logs --execution {name} -n {ns}")),
                tasks: (0..task_count)
                    .map(|index| TaskStatus {
                        index,
                        ..TaskStatus::default()
                    })
                    .collect(),
                ..ExecutionStatus::default()
            },
        };
        set_condition(
            &mut exec.status.conditions,
            conditions::COMPLETED,
            ConditionStatus::Unknown,
            None,
            None,
            &now,
        );
        let ekey = keys::execution(ns, &name);
        let jkey = keys::job(ns, job);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&jkey).await? else {
                return Err(not_found("job", ns, job));
            };
            let mut j: Job = decode(&jkey, &kv.value)?;
            if let Some((at, missed)) = scheduled {
                let at = rfc3339(at);
                if j.status.last_schedule_time.as_deref() == Some(&at) {
                    return Err(ControllerError::Conflict {
                        message: format!("job `{job}` already ran for {at}"),
                    });
                }
                j.status.last_schedule_time = Some(at);
                j.status.missed_runs += missed;
                j.status.last_skip = None;
            }
            j.status.execution_count += 1;
            j.status.latest_created_execution = Some(ExecutionReference {
                name: name.clone(),
                creation_timestamp: now.clone(),
                completion_timestamp: None,
                completion_status: CompletionStatus::ExecutionPending,
            });
            let txn = Txn::new()
                .when_mod_revision(&jkey, kv.mod_revision)
                .when_mod_revision(&ekey, 0)
                .put(&jkey, encode(&j))
                .put(&ekey, encode(&exec));
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                info!(namespace = ns, job, execution = %name, tasks = task_count, parallelism, started_by, "execution created");
                exec.metadata.resource_version = revision.to_string();
                return Ok(exec);
            }
        }
        Err(ControllerError::Conflict {
            message: format!("job `{job}` changed concurrently; run it again"),
        })
    }

    /// Reads an execution.
    pub async fn execution(&self, ns: &str, name: &str) -> Result<Execution, ControllerError> {
        let key = keys::execution(ns, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| not_found("execution", ns, name))?;
        let mut e: Execution = decode(&key, &kv.value)?;
        e.metadata.resource_version = kv.mod_revision.to_string();
        Ok(e)
    }

    /// Lists executions, newest first (of one job, or all in the namespace).
    pub async fn executions(
        &self,
        ns: &str,
        job: Option<&str>,
    ) -> Result<Vec<Execution>, ControllerError> {
        let prefix = match job {
            Some(j) => format!("{}{j}-", keys::executions(Some(ns))),
            None => keys::executions(Some(ns)),
        };
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
            let mut e: Execution = decode(&kv.key, &kv.value)?;
            if job.is_some_and(|j| e.job() != j) {
                continue;
            }
            e.metadata.resource_version = kv.mod_revision.to_string();
            out.push(e);
        }
        out.sort_by(|a, b| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        Ok(out)
    }

    /// Cancels an execution: its running tasks are stopped, pending ones never start.
    pub async fn cancel(&self, ns: &str, name: &str) -> Result<Execution, ControllerError> {
        let updated = self
            .update_execution(ns, name, |e| {
                if e.spec.cancelled || e.is_done() {
                    return false;
                }
                e.spec.cancelled = true;
                true
            })
            .await?;
        updated.ok_or_else(|| not_found("execution", ns, name))
    }

    /// Deletes an execution that has ended (a running one must be cancelled first).
    pub async fn delete_execution(&self, ns: &str, name: &str) -> Result<(), ControllerError> {
        let e = self.execution(ns, name).await?;
        if !e.is_done() {
            return Err(ControllerError::Conflict {
                message: format!(
                    "execution `{name}` is still running; cancel it first (`skiff executions cancel {name}`)"
                ),
            });
        }
        self.store
            .txn(Txn::new().delete(keys::execution(ns, name)))
            .await?;
        Ok(())
    }

    async fn update_execution(
        &self,
        ns: &str,
        name: &str,
        change: impl Fn(&mut Execution) -> bool,
    ) -> Result<Option<Execution>, ControllerError> {
        let key = keys::execution(ns, name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(None);
            };
            let mut e: Execution = decode(&key, &kv.value)?;
            if !change(&mut e) {
                return Ok(Some(e));
            }
            let txn = Txn::new()
                .when_mod_revision(&key, kv.mod_revision)
                .put(&key, encode(&e));
            if let TxnOutcome::Committed { revision } = self.store.txn(txn).await? {
                e.metadata.resource_version = revision.to_string();
                return Ok(Some(e));
            }
        }
        Err(ControllerError::Conflict {
            message: format!("execution `{name}` changed concurrently {MAX_ATTEMPTS} times"),
        })
    }

    // --- Running tasks ----------------------------------------------------------------

    /// The instances the runtime holds for an execution's attempts, with how each stands.
    fn observe(&self, ns: &str, name: &str) -> (HashMap<String, Observed>, Vec<InstanceInfo>) {
        let held: Vec<InstanceInfo> = self
            .runtime
            .tasks()
            .into_iter()
            .filter(|i| {
                i.plan.namespace == ns && i.plan.task.as_ref().is_some_and(|t| t.execution == name)
            })
            .collect();
        let mut observed = HashMap::new();
        for i in &held {
            let o = match i.status.phase {
                Phase::Stopping | Phase::Stopped => Observed::Ended(
                    i.status
                        .containers
                        .first()
                        .and_then(|c| c.last_termination.clone()),
                ),
                _ => Observed::Running,
            };
            observed.insert(i.plan.id.clone(), o);
        }
        let exits = self.exits.lock().unwrap_or_else(|p| p.into_inner());
        for (id, term) in exits.iter() {
            if is_attempt_of(id, name) && !observed.contains_key(id) {
                observed.insert(id.clone(), Observed::Ended(term.clone()));
            }
        }
        (observed, held)
    }

    /// Resolves the execution's images and records their digests; an image that cannot be
    /// had fails the execution (the puller has already retried what can be retried).
    async fn resolve_images(&self, exec: &Execution) -> Result<(), ReconcileError> {
        let task = exec.spec.task();
        let mut pinned = Vec::new();
        let mut failure = None;
        for c in &task.containers {
            let image = c.image.clone().unwrap_or_default();
            match self
                .images
                .resolve(&image, c.image_pull_policy.as_deref(), Arc::new(|_| {}))
                .await
            {
                Ok(record) => pinned.push(format!(
                    "{}@{}",
                    image.split('@').next().unwrap_or(&image),
                    record.digest
                )),
                Err(e) => {
                    failure = Some(format!(
                        "image `{image}`: {}",
                        skiff_telemetry::ErrorChain(&e)
                    ));
                    break;
                }
            }
        }
        let now = self.controller.now();
        let (ns, name) = (&exec.metadata.namespace, &exec.metadata.name);
        self.update_execution(ns, name, |e| {
            if e.is_done() {
                return false;
            }
            match &failure {
                None => {
                    e.status.images = pinned.clone();
                    set_condition(
                        &mut e.status.conditions,
                        conditions::RESOURCES_AVAILABLE,
                        ConditionStatus::True,
                        None,
                        None,
                        &now,
                    );
                }
                Some(why) => {
                    set_condition(
                        &mut e.status.conditions,
                        conditions::RESOURCES_AVAILABLE,
                        ConditionStatus::False,
                        Some("ImagePullFailed"),
                        Some(why.clone()),
                        &now,
                    );
                    for t in e.status.tasks.iter_mut().filter(|t| !t.state.is_terminal()) {
                        t.state = TaskState::Failed;
                        t.completion_time = Some(now.clone());
                        t.last_attempt_result = Some(AttemptResult {
                            attempt: t.attempt,
                            reason: "ImagePullFailed".into(),
                            message: why.clone(),
                            ..AttemptResult::default()
                        });
                    }
                    e.status.failed_count = e.status.tasks.len() as u32;
                    e.status.completion_time = Some(now.clone());
                    set_condition(
                        &mut e.status.conditions,
                        conditions::COMPLETED,
                        ConditionStatus::False,
                        Some("ImagePullFailed"),
                        Some(format!("no task could start: {why}")),
                        &now,
                    );
                }
            }
            true
        })
        .await?;
        if failure.is_some() {
            self.metrics
                .execution(ns, exec.job(), ExecutionOutcome::Failed);
            self.record_completion(exec).await?;
        }
        Ok(())
    }

    /// Starts one attempt's instance.
    async fn start_attempt(
        &self,
        exec: &Execution,
        index: u32,
        attempt: u32,
        id: &str,
    ) -> Result<(), ReconcileError> {
        let ns = &exec.metadata.namespace;
        let spec = exec.spec.task().as_revision_spec();
        let mut images = Vec::new();
        for pinned in &exec.status.images {
            let digest = pinned.rsplit_once('@').map_or(pinned.as_str(), |(_, d)| d);
            let image = self
                .images
                .by_digest(digest)
                .await?
                .ok_or_else(|| format!("image {pinned} is no longer in the content store"))?;
            images.push(image);
        }
        let revision = Revision {
            api_version: skiff_api::job::JOBS_API_VERSION.to_owned(),
            kind: "Execution".to_owned(),
            metadata: exec.metadata.clone(),
            spec: spec.clone(),
            autoscaling: Default::default(),
            status: Default::default(),
        };
        let values = secrets::values_for(&self.secrets, ns, &spec).await?;
        let mut plan: InstancePlan = crate::plan::plan(
            &revision,
            &images,
            |d| self.images.layer_path(d),
            id,
            &values,
        )?;
        plan.service = exec.job().to_owned();
        plan.revision = exec.metadata.name.clone();
        let extra = task_env(exec, index, attempt);
        for c in &mut plan.containers {
            c.readiness = None;
            c.liveness = None;
            c.startup = None;
            c.env.retain(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "PORT" | "K_SERVICE" | "K_CONFIGURATION" | "K_REVISION"
                ) && !extra.iter().any(|(e, _)| e == k)
            });
            c.env.extend(extra.iter().cloned());
        }
        plan.task = Some(TaskPlan {
            job: exec.job().to_owned(),
            execution: exec.metadata.name.clone(),
            index,
            attempt,
        });
        plan.scheduled = Some(skiff_runtime::instance::Scheduled::now());
        let key = keys::instance(ns, id);
        self.store.txn(Txn::new().put(&key, encode(&plan))).await?;
        info!(execution = %exec.metadata.name, task = index, attempt, instance = id, "starting task attempt");
        if let Err(e) = self.runtime.start(plan).await {
            let _ = self.store.txn(Txn::new().delete(&key)).await;
            return Err(e);
        }
        Ok(())
    }

    fn stop_instance(&self, ns: &str, id: &str) {
        let (rt, store, ns, id) = (
            self.runtime.clone(),
            self.store.clone(),
            ns.to_owned(),
            id.to_owned(),
        );
        tokio::spawn(async move {
            rt.stop(&id).await;
            let _ = store.txn(Txn::new().delete(keys::instance(&ns, &id))).await;
        });
    }

    /// Writes the execution's end into its job's status.
    async fn record_completion(&self, exec: &Execution) -> Result<(), ControllerError> {
        let latest = self
            .execution(&exec.metadata.namespace, &exec.metadata.name)
            .await;
        let Ok(latest) = latest else { return Ok(()) };
        let status = latest.completion_status();
        let completed = latest.status.completion_time.clone();
        self.update_job_status(&exec.metadata.namespace, exec.job(), |j| {
            match &mut j.status.latest_created_execution {
                Some(r) if r.name == latest.metadata.name => {
                    if r.completion_status == status && r.completion_timestamp == completed {
                        return false;
                    }
                    r.completion_status = status;
                    r.completion_timestamp = completed.clone();
                    true
                }
                _ => false,
            }
        })
        .await?;
        Ok(())
    }

    async fn reconcile_execution(&self, key: &ExecutionKey) -> Result<Next, ReconcileError> {
        let (ns, name) = (&key.0, &key.1);
        let (observed, _) = self.observe(ns, name);
        let exec = match self.execution(ns, name).await {
            Ok(e) => e,
            Err(ControllerError::NotFound { .. }) => {
                // Deleted (with its job): nothing of it may keep running.
                for (id, o) in &observed {
                    match o {
                        Observed::Running => self.stop_instance(ns, id),
                        Observed::Ended(_) => {
                            self.forget(ns, id).await;
                        }
                    }
                }
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let images_ready = !exec.status.images.is_empty();
        if !images_ready && !exec.is_done() && !exec.spec.cancelled {
            self.resolve_images(&exec).await?;
            return Ok(Next::Done);
        }
        let was = exec.completion_status();
        let step = step(&exec, &observed, images_ready, self.now());
        if step.status != exec.status {
            let expected = exec.metadata.resource_version.parse::<i64>().unwrap_or(0);
            let ekey = keys::execution(ns, name);
            let mut next = exec.clone();
            next.status = step.status.clone();
            next.metadata.resource_version = String::new();
            let txn = Txn::new()
                .when_mod_revision(&ekey, expected)
                .put(&ekey, encode(&next));
            if let TxnOutcome::Conflict { .. } = self.store.txn(txn).await? {
                return Err(format!("execution `{name}` changed meanwhile").into());
            }
            for o in &step.outcomes {
                self.metrics.task(ns, exec.job(), *o);
            }
            if let Some(outcome) = step.completed {
                self.metrics.execution(ns, exec.job(), outcome);
                info!(namespace = %ns, execution = %name, outcome = ?outcome, "execution ended");
            }
            if step.completed.is_some() || was != next.completion_status() {
                let _ = self.update_started(&next).await;
                self.record_completion(&next).await?;
            }
        }
        for id in &step.forget {
            self.forget(ns, id).await;
        }
        for id in &step.stop {
            self.stop_instance(ns, id);
        }
        let mut current = exec.clone();
        current.status = step.status.clone();
        for (index, attempt, id) in &step.start {
            if let Err(e) = self.start_attempt(&current, *index, *attempt, id).await {
                warn!(execution = %name, task = index, attempt, error = %skiff_telemetry::ErrorChain(&*e), "task attempt could not start");
                let term = Termination {
                    reason: "StartError".into(),
                    exit_code: None,
                    at: self.controller.now(),
                    message: skiff_telemetry::ErrorChain(&*e).to_string(),
                    last_lines: Vec::new(),
                };
                self.exits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), Some(term));
                if let Some(h) = self.handle.get() {
                    h.enqueue(key.clone());
                }
            }
        }
        Ok(match step.recheck {
            Some(d) => Next::RequeueAfter(d + Duration::from_millis(10)),
            None => Next::Done,
        })
    }

    /// Marks the job's latest execution running once it starts.
    async fn update_started(&self, exec: &Execution) -> Result<(), ControllerError> {
        let status = exec.completion_status();
        self.update_job_status(&exec.metadata.namespace, exec.job(), |j| {
            match &mut j.status.latest_created_execution {
                Some(r) if r.name == exec.metadata.name && r.completion_status != status => {
                    r.completion_status = status;
                    true
                }
                _ => false,
            }
        })
        .await?;
        Ok(())
    }

    async fn forget(&self, ns: &str, id: &str) {
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let _ = self
            .store
            .txn(Txn::new().delete(keys::instance(ns, id)))
            .await;
    }
}

/// The execution reconciler.
pub struct ExecutionReconciler(pub Arc<Jobs>);

#[async_trait]
impl Reconciler for ExecutionReconciler {
    type Key = ExecutionKey;

    fn name(&self) -> &'static str {
        "executions"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[keys::EXECUTIONS]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<ExecutionKey> {
        keys::parse_execution(store_key)
            .map(|(ns, name)| vec![(ns.to_owned(), name.to_owned())])
            .unwrap_or_default()
    }

    async fn all_keys(&self) -> Result<Vec<ExecutionKey>, ReconcileError> {
        let mut out: Vec<ExecutionKey> = self
            .0
            .store
            .list(keys::EXECUTIONS)
            .await?
            .kvs
            .iter()
            .filter_map(|kv| keys::parse_execution(&kv.key))
            .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
            .collect();
        // Tasks of executions deleted meanwhile.
        for i in self.0.runtime.tasks() {
            if let Some(t) = i.plan.task {
                out.push((i.plan.namespace, t.execution));
            }
        }
        Ok(out)
    }

    async fn reconcile(&self, key: &ExecutionKey) -> Result<Next, ReconcileError> {
        self.0.reconcile_execution(key).await
    }

    fn workers(&self) -> usize {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::job::{TaskSpec, TaskTemplate};

    fn exec(tasks: u32, parallelism: u32, retries: i64) -> Execution {
        Execution {
            api_version: "run.googleapis.com/v1".into(),
            kind: "Execution".into(),
            metadata: ObjectMeta {
                name: "etl-abcde".into(),
                namespace: "default".into(),
                labels: [(LABEL_JOB.to_owned(), "etl".to_owned())].into(),
                ..ObjectMeta::default()
            },
            spec: ExecutionRunSpec {
                task_count: tasks,
                parallelism,
                template: TaskTemplate {
                    spec: Some(TaskSpec {
                        max_retries: Some(retries),
                        timeout_seconds: Some(60),
                        ..TaskSpec::default()
                    }),
                },
                cancelled: false,
                event: None,
            },
            status: ExecutionStatus::default(),
        }
    }

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).expect("a time")
    }

    fn exit(code: i32) -> Observed {
        Observed::Ended(Some(Termination {
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            exit_code: Some(code),
            at: String::new(),
            message: format!("exited with {code}"),
            last_lines: vec![],
        }))
    }

    /// Runs steps, applying each to the execution, with `outcome(index, attempt)` deciding
    /// how each started attempt ends; returns the final execution and every step.
    fn run(mut e: Execution, outcome: impl Fn(u32, u32) -> Observed) -> (Execution, Vec<Step>) {
        let mut steps = Vec::new();
        let mut running: HashMap<String, Observed> = HashMap::new();
        for i in 0..100 {
            let s = step(&e, &running, true, t(i));
            e.status = s.status.clone();
            // Everything started in this step ends before the next.
            for (index, attempt, id) in &s.start {
                running.insert(id.clone(), outcome(*index, *attempt));
            }
            for id in &s.forget {
                running.remove(id);
            }
            let done = s.completed.is_some();
            steps.push(s);
            if done {
                break;
            }
        }
        (e, steps)
    }

    #[test]
    fn parallelism_bounds_the_tasks_started_at_once() {
        let s = step(&exec(5, 2, 3), &HashMap::new(), true, t(0));
        let started: Vec<u32> = s.start.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(started, [0, 1]);
        assert_eq!(s.status.running_count, 2);
        assert_eq!(s.status.tasks.len(), 5);
        assert_eq!(s.start[0].2, "etl-abcde-0-0");
    }

    #[test]
    fn a_task_failing_its_first_attempt_is_retried_and_the_execution_succeeds() {
        let (e, steps) = run(exec(5, 2, 3), |index, attempt| {
            if index == 3 && attempt == 0 {
                exit(1)
            } else {
                exit(0)
            }
        });
        assert_eq!(e.completion_status(), CompletionStatus::ExecutionSucceeded);
        assert_eq!(e.status.succeeded_count, 5);
        assert_eq!(e.status.retried_count, 1);
        let t3 = &e.status.tasks[3];
        assert_eq!(t3.retried, 1);
        assert_eq!(t3.attempts.len(), 2);
        assert_eq!(t3.attempts[0].exit_code, Some(1));
        assert_eq!(
            t3.last_attempt_result.as_ref().and_then(|r| r.exit_code),
            Some(0)
        );
        // Never more than two at once.
        assert!(steps.iter().all(|s| s.status.running_count <= 2));
        let retried = steps
            .iter()
            .flat_map(|s| &s.outcomes)
            .filter(|o| **o == TaskOutcome::Retried)
            .count();
        assert_eq!(retried, 1);
        assert_eq!(
            steps.last().and_then(|s| s.completed),
            Some(ExecutionOutcome::Succeeded)
        );
    }

    #[test]
    fn without_retries_the_execution_fails_after_every_task_was_tried() {
        let (e, _) = run(
            exec(5, 2, 0),
            |index, _| if index == 3 { exit(1) } else { exit(0) },
        );
        assert_eq!(e.completion_status(), CompletionStatus::ExecutionFailed);
        assert_eq!(e.status.failed_count, 1);
        assert_eq!(e.status.succeeded_count, 4);
        // Every task ran once.
        assert!(e.status.tasks.iter().all(|t| t.attempts.len() == 1));
        let c = e
            .status
            .conditions
            .iter()
            .find(|c| c.condition_type == conditions::COMPLETED)
            .expect("Completed");
        assert_eq!(c.reason.as_deref(), Some("NonZeroExitCode"));
        assert!(
            c.message
                .as_deref()
                .unwrap_or_default()
                .contains("task 3 (Error after 1 attempts, exit code 1)"),
            "{c:?}"
        );
    }

    #[test]
    fn an_attempt_over_its_timeout_is_stopped_and_counted() {
        let mut e = exec(1, 1, 0);
        let s = step(&e, &HashMap::new(), true, t(0));
        assert_eq!(s.recheck, Some(Duration::from_secs(60)));
        e.status = s.status;
        let running: HashMap<String, Observed> =
            [("etl-abcde-0-0".to_owned(), Observed::Running)].into();
        let s = step(&e, &running, true, t(30));
        assert!(s.stop.is_empty());
        assert_eq!(s.recheck, Some(Duration::from_secs(30)));
        let s = step(&e, &running, true, t(60));
        assert_eq!(s.stop, ["etl-abcde-0-0"]);
        assert_eq!(s.completed, Some(ExecutionOutcome::Failed));
        let r = s.status.tasks[0]
            .last_attempt_result
            .clone()
            .expect("a result");
        assert_eq!(r.reason, "DeadlineExceeded");
    }

    #[test]
    fn an_attempt_lost_across_a_restart_is_retried_and_a_succeeded_task_never_reruns() {
        let mut e = exec(2, 2, 1);
        let s = step(&e, &HashMap::new(), true, t(0));
        e.status = s.status;
        // Task 0 succeeded and was recorded; task 1's instance vanished with the daemon.
        let s = step(
            &e,
            &[("etl-abcde-0-0".to_owned(), exit(0))].into(),
            true,
            t(1),
        );
        e.status = s.status;
        assert_eq!(e.status.tasks[0].state, TaskState::Succeeded);
        assert_eq!(s.start, [(1, 1, "etl-abcde-1-1".to_owned())]);
        assert_eq!(
            e.status.tasks[1].attempts[0].reason, "Lost",
            "{:?}",
            e.status.tasks[1]
        );
        assert_eq!(e.status.tasks[1].retried, 0, "a lost attempt uses no retry");
        // Later steps never start task 0 again.
        let s = step(
            &e,
            &[("etl-abcde-1-1".to_owned(), Observed::Running)].into(),
            true,
            t(2),
        );
        assert!(s.start.is_empty());
    }

    #[test]
    fn lost_attempts_use_no_retries_but_are_bounded() {
        // maxRetries 0: only the daemon's losses are run again, a few times.
        let mut e = exec(1, 1, 0);
        let mut observed = HashMap::new();
        let mut starts = 0;
        for i in 0..10 {
            let s = step(&e, &observed, true, t(i));
            starts += s.start.len();
            e.status = s.status;
            if s.completed.is_some() {
                break;
            }
            observed.clear();
        }
        assert_eq!(starts, 1 + MAX_LOST_ATTEMPTS);
        assert_eq!(e.completion_status(), CompletionStatus::ExecutionFailed);
        assert_eq!(e.status.tasks[0].retried, 0);
        assert!(
            e.status.tasks[0]
                .attempts
                .iter()
                .all(|a| a.reason == "Lost")
        );
    }

    #[test]
    fn cancelling_stops_running_attempts_and_cancels_pending_tasks() {
        let mut e = exec(3, 1, 3);
        let s = step(&e, &HashMap::new(), true, t(0));
        e.status = s.status;
        e.spec.cancelled = true;
        let s = step(
            &e,
            &[("etl-abcde-0-0".to_owned(), Observed::Running)].into(),
            true,
            t(1),
        );
        assert_eq!(s.stop, ["etl-abcde-0-0"]);
        assert_eq!(s.status.cancelled_count, 3);
        assert_eq!(s.completed, Some(ExecutionOutcome::Cancelled));
        assert!(s.start.is_empty());
    }

    #[test]
    fn nothing_starts_before_the_images_are_resolved_and_nothing_runs_after_the_end() {
        let e = exec(2, 2, 0);
        let s = step(&e, &HashMap::new(), false, t(0));
        assert!(s.start.is_empty());
        let (done, _) = run(e, |_, _| exit(0));
        let s = step(
            &done,
            &[("etl-abcde-0-7".to_owned(), Observed::Running)].into(),
            true,
            t(99),
        );
        assert_eq!(s.stop, ["etl-abcde-0-7"]);
        assert!(s.start.is_empty());
    }

    #[test]
    fn attempts_belong_to_their_execution_only() {
        assert!(is_attempt_of(&attempt_id("etl-x7k2p", 3, 1), "etl-x7k2p"));
        assert!(is_attempt_of("etl-x7k2p-12-0", "etl-x7k2p"));
        // An execution of job `etl-x7k2p`, whose name starts like job `etl`'s execution.
        assert!(!is_attempt_of("etl-x7k2p-b4n9q-0-0", "etl-x7k2p"));
        assert!(!is_attempt_of("etl-x7k2p-0", "etl-x7k2p"));
        assert!(!is_attempt_of("etl-x7k2p-0-", "etl-x7k2p"));
        assert!(!is_attempt_of("etl-x7k2pp-0-0", "etl-x7k2p"));
    }

    #[test]
    fn tasks_get_cloud_runs_variables_and_the_event_s() {
        let mut e = exec(4, 1, 0);
        e.spec.event = Some(serde_json::json!({"id": "1", "type": "t", "data": {"a": 1}}));
        let env: HashMap<String, String> = task_env(&e, 2, 1).into_iter().collect();
        assert_eq!(env["CLOUD_RUN_JOB"], "etl");
        assert_eq!(env["CLOUD_RUN_EXECUTION"], "etl-abcde");
        assert_eq!(env["CLOUD_RUN_TASK_INDEX"], "2");
        assert_eq!(env["CLOUD_RUN_TASK_COUNT"], "4");
        assert_eq!(env["CLOUD_RUN_TASK_ATTEMPT"], "1");
        assert_eq!(env["CE_TYPE"], "t");
        assert_eq!(env["CE_DATA"], r#"{"a":1}"#);
    }
}
