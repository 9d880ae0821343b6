//! Cloud Run Jobs (`run.googleapis.com/v1` `Job`) as users write them, their validation with
//! field paths, and the stored objects: the Job, its Executions and their tasks, with Cloud
//! Run's status fields.
//!
//! A Job nests an execution template (`taskCount`, `parallelism`) around a task template
//! (`maxRetries`, `timeoutSeconds`, the containers and volumes); the container fields are
//! the Service's, checked by the same code, minus what a task has no use for (ports and
//! probes: a task does not listen, it runs to its exit).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::{DNS_LABEL_MAX, check_dns1035_label, check_dns1123_label, check_qualified_name};
use crate::object::{Condition, ObjectMeta};
use crate::problems::{FieldPath, ProblemKind, Problems};
use crate::types::{
    Container, LocalObjectReference, ManifestMeta, RevisionSpec, Volume, null_default,
};
use crate::validate::{DEFAULT_NAMESPACE, SKIFF_ANNOTATION_PREFIX};

/// `apiVersion` of Cloud Run Jobs.
pub const JOBS_API_VERSION: &str = "run.googleapis.com/v1";
/// Tasks of one execution, at most (Cloud Run's limit).
pub const MAX_TASK_COUNT: i64 = 10_000;
/// Retries of one task, at most (Cloud Run's limit).
pub const MAX_RETRIES: i64 = 10;
/// Retries of a task when `maxRetries` is not set (Cloud Run's default).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Time one attempt of a task may run, when `timeoutSeconds` is not set (Cloud Run: 10 min).
pub const DEFAULT_TASK_TIMEOUT_SECONDS: u64 = 600;
/// The longest attempt (Cloud Run: 168 h).
pub const MAX_TASK_TIMEOUT_SECONDS: i64 = 168 * 3600;
/// Characters of the suffix of execution names (`<job>-<5>`, as Cloud Run's `job-mdw84`).
pub const EXECUTION_SUFFIX_LEN: usize = 5;
/// The longest job name: its executions' names and their tasks' instance ids must stay DNS
/// labels.
pub const MAX_JOB_NAME: usize = DNS_LABEL_MAX - EXECUTION_SUFFIX_LEN - 1 - 10;

/// The cron schedule a Job runs on (5 fields), e.g. `0 3 * * *`.
pub const SCHEDULE_ANNOTATION: &str = "skiff.dev/schedule";
/// The IANA time zone of the schedule (default `Etc/UTC`).
pub const SCHEDULE_TIMEZONE_ANNOTATION: &str = "skiff.dev/schedule-timezone";
/// `Allow` (default), `Forbid` or `Replace`: what a scheduled run does while another runs.
pub const CONCURRENCY_POLICY_ANNOTATION: &str = "skiff.dev/concurrency-policy";
/// How late a scheduled run may still start (a Go duration, e.g. `10m`); later, it is
/// skipped. Unset: no limit.
pub const STARTING_DEADLINE_ANNOTATION: &str = "skiff.dev/starting-deadline";
/// skiff annotations a Job takes.
pub const JOB_ANNOTATIONS: &[&str] = &[
    SCHEDULE_ANNOTATION,
    SCHEDULE_TIMEZONE_ANNOTATION,
    CONCURRENCY_POLICY_ANNOTATION,
    STARTING_DEADLINE_ANNOTATION,
];

/// Label on an execution naming its job (Cloud Run's).
pub const LABEL_JOB: &str = "run.googleapis.com/job";
/// Annotation on an execution saying what started it: `api`, `schedule`, or an event.
pub const STARTED_BY_ANNOTATION: &str = "skiff.dev/started-by";

/// Checks a cron schedule and its time zone; the reason it is refused otherwise.
pub fn check_schedule(schedule: &str, timezone: Option<&str>) -> Result<(), String> {
    skiff_cron::Schedule::parse(schedule, timezone)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A Cloud Run Job as a user writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobManifest {
    /// Must be `run.googleapis.com/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Must be `Job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, namespace, labels and annotations.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ManifestMeta,
    /// What each execution runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
}

/// A Job's desired state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// The execution template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<ExecutionTemplate>,
}

/// Labels and annotations of an execution template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateLabels {
    /// Labels copied to executions.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations copied to executions.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// What one execution is: how many tasks, how many at once, and each task's template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionTemplate {
    /// Labels and annotations of the executions.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: TemplateLabels,
    /// The execution's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ExecutionSpec>,
}

/// An execution's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSpec {
    /// Tasks to run (1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<i64>,
    /// Tasks running at once, at most (0 or unset: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i64>,
    /// The task template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TaskTemplate>,
}

/// The template of every task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    /// The task's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TaskSpec>,
}

/// What a task runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// The container (exactly one).
    #[serde(default, deserialize_with = "null_default")]
    pub containers: Vec<Container>,
    /// Volumes it mounts.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<Volume>,
    /// Retries of a failed task (0 to 10; 3 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    /// Longest one attempt may run, in seconds (600 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Credentials for pulling the image, by secret name.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

impl TaskSpec {
    /// The task's containers and volumes as a revision spec: the instance plan, the image
    /// pins and the Secret references are computed from that, as for a Service.
    pub fn as_revision_spec(&self) -> RevisionSpec {
        RevisionSpec {
            containers: self.containers.clone(),
            volumes: self.volumes.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
            ..RevisionSpec::default()
        }
    }

    /// Retries a task gets.
    pub fn retries(&self) -> u32 {
        self.max_retries
            .map_or(DEFAULT_MAX_RETRIES, |r| r.clamp(0, MAX_RETRIES) as u32)
    }

    /// Longest one attempt may run.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(
            self.timeout_seconds
                .map_or(DEFAULT_TASK_TIMEOUT_SECONDS, |s| {
                    s.clamp(1, MAX_TASK_TIMEOUT_SECONDS) as u64
                }),
        )
    }
}

/// How a Job runs on its own schedule, read from its `skiff.dev/` annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSchedule {
    /// The cron expression (5 fields).
    pub schedule: String,
    /// The IANA time zone (`None`: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `Allow`, `Forbid` or `Replace`.
    pub concurrency_policy: String,
    /// How late a run may start, in seconds (`None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
}

impl JobSchedule {
    /// The schedule of a Job from its annotations (checked by validation), if it has one.
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<JobSchedule> {
        let schedule = annotations.get(SCHEDULE_ANNOTATION)?.trim().to_owned();
        Some(JobSchedule {
            schedule,
            timezone: annotations
                .get(SCHEDULE_TIMEZONE_ANNOTATION)
                .map(|t| t.trim().to_owned()),
            concurrency_policy: annotations
                .get(CONCURRENCY_POLICY_ANNOTATION)
                .map_or_else(|| "Allow".to_owned(), |p| p.trim().to_owned()),
            starting_deadline_seconds: annotations
                .get(STARTING_DEADLINE_ANNOTATION)
                .and_then(|d| crate::names::parse_go_duration(d.trim()).ok())
                .map(|d| d.as_secs()),
        })
    }
}

/// A Job that passed every stateless check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJob {
    /// The manifest as written.
    pub manifest: JobManifest,
    /// The namespace (defaulted).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ValidatedJob {
    /// The execution template (present after validation).
    pub fn execution(&self) -> ExecutionSpec {
        self.manifest
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.clone())
            .unwrap_or_default()
    }
}

fn check_range(v: Option<i64>, lo: i64, hi: i64, at: &FieldPath, p: &mut Problems) {
    if let Some(v) = v
        && !(lo..=hi).contains(&v)
    {
        p.invalid(at, format!("{v} is out of range ({lo} to {hi})"));
    }
}

fn check_job_annotations(annotations: &BTreeMap<String, String>, at: &FieldPath, p: &mut Problems) {
    for (k, v) in annotations {
        let path = at.key(k.clone());
        if let Err(e) = check_qualified_name(k) {
            p.invalid(&path, format!("invalid annotation key: {e}"));
        }
        if v.contains('\0') {
            p.invalid(&path, "must not contain a NUL byte");
        }
        if k.starts_with(SKIFF_ANNOTATION_PREFIX) && !JOB_ANNOTATIONS.contains(&k.as_str()) {
            p.push(
                &path,
                ProblemKind::UnknownField,
                format!(
                    "unknown skiff annotation for a Job (known ones: {})",
                    JOB_ANNOTATIONS.join(", ")
                ),
            );
        }
    }
    let schedule = annotations.get(SCHEDULE_ANNOTATION);
    let timezone = annotations.get(SCHEDULE_TIMEZONE_ANNOTATION);
    if let Some(s) = schedule
        && let Err(e) = check_schedule(s.trim(), timezone.map(|t| t.trim()))
    {
        // The time zone's own problem is named at its key.
        let key = if e.contains("time zone") && timezone.is_some() {
            SCHEDULE_TIMEZONE_ANNOTATION
        } else {
            SCHEDULE_ANNOTATION
        };
        p.invalid(&at.key(key), e);
    }
    for dependent in [
        SCHEDULE_TIMEZONE_ANNOTATION,
        CONCURRENCY_POLICY_ANNOTATION,
        STARTING_DEADLINE_ANNOTATION,
    ] {
        if annotations.contains_key(dependent) && schedule.is_none() {
            p.invalid(
                &at.key(dependent),
                format!("has no effect without `{SCHEDULE_ANNOTATION}`"),
            );
        }
    }
    if let Some(policy) = annotations.get(CONCURRENCY_POLICY_ANNOTATION)
        && !matches!(policy.trim(), "Allow" | "Forbid" | "Replace")
    {
        p.invalid(
            &at.key(CONCURRENCY_POLICY_ANNOTATION),
            format!("`{policy}` is not a policy: use Allow, Forbid or Replace"),
        );
    }
    if let Some(d) = annotations.get(STARTING_DEADLINE_ANNOTATION) {
        match crate::names::parse_go_duration(d.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => {}
            Ok(_) => p.invalid(&at.key(STARTING_DEADLINE_ANNOTATION), "must be at least 1s"),
            Err(e) => p.invalid(&at.key(STARTING_DEADLINE_ANNOTATION), e),
        }
    }
}

/// Checks a Job manifest.
pub fn validate_job(m: JobManifest, p: &mut Problems) -> Option<ValidatedJob> {
    let root = FieldPath::root();
    match m.api_version.as_deref() {
        None => p.required(&root.key("apiVersion")),
        Some(JOBS_API_VERSION) => {}
        Some(v) => p.invalid(
            &root.key("apiVersion"),
            format!("`{v}` is not accepted: skiff reads `{JOBS_API_VERSION}` Jobs"),
        ),
    }
    match m.kind.as_deref() {
        None => p.required(&root.key("kind")),
        Some("Job") => {}
        Some(k) => p.invalid(
            &root.key("kind"),
            format!("`{k}` is not accepted: must be `Job`"),
        ),
    }
    let meta = root.key("metadata");
    let name = m.metadata.name.clone();
    match &name {
        None => p.required(&meta.key("name")),
        Some(n) => {
            if let Err(e) = check_dns1035_label(n) {
                p.invalid(&meta.key("name"), e);
            } else if n.len() > MAX_JOB_NAME {
                p.invalid(
                    &meta.key("name"),
                    format!(
                        "must be at most {MAX_JOB_NAME} characters so that its executions' \
                         names (`{n}-abcde`) and their tasks' ids fit in {DNS_LABEL_MAX}"
                    ),
                );
            }
        }
    }
    if m.metadata.generate_name.is_some() {
        p.not_supported(&meta.key("generateName"), "generated names for Jobs");
    }
    let namespace = m
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if let Err(e) = check_dns1123_label(&namespace) {
        p.invalid(&meta.key("namespace"), e);
    }
    crate::validate::check_labels(&m.metadata.labels, &meta.key("labels"), p);
    check_job_annotations(&m.metadata.annotations, &meta.key("annotations"), p);

    let spec_path = root.key("spec");
    let template_path = spec_path.key("template");
    let Some(template) = m.spec.as_ref().and_then(|s| s.template.as_ref()) else {
        match &m.spec {
            None => p.required(&spec_path),
            Some(_) => p.required(&template_path),
        }
        return None;
    };
    crate::validate::check_labels(
        &template.metadata.labels,
        &template_path.key("metadata").key("labels"),
        p,
    );
    let exec_path = template_path.key("spec");
    let Some(exec) = &template.spec else {
        p.required(&exec_path);
        return None;
    };
    check_range(
        exec.task_count,
        1,
        MAX_TASK_COUNT,
        &exec_path.key("taskCount"),
        p,
    );
    let tasks = exec.task_count.unwrap_or(1).max(1);
    if let Some(par) = exec.parallelism
        && !(0..=tasks).contains(&par)
    {
        p.invalid(
            &exec_path.key("parallelism"),
            format!("{par} is out of range (0 to taskCount, {tasks}; 0 means all at once)"),
        );
    }
    let task_path = exec_path.key("template").key("spec");
    let Some(task) = exec.template.as_ref().and_then(|t| t.spec.as_ref()) else {
        p.required(&task_path);
        return None;
    };
    validate_task_spec(task, &task_path, p);
    Some(ValidatedJob {
        manifest: m.clone(),
        namespace,
        name: name.unwrap_or_default(),
    })
}

/// Checks a task template at `at`.
pub fn validate_task_spec(task: &TaskSpec, at: &FieldPath, p: &mut Problems) {
    check_range(task.max_retries, 0, MAX_RETRIES, &at.key("maxRetries"), p);
    check_range(
        task.timeout_seconds,
        1,
        MAX_TASK_TIMEOUT_SECONDS,
        &at.key("timeoutSeconds"),
        p,
    );
    let containers = at.key("containers");
    if task.containers.len() > 1 {
        p.not_supported(
            &containers.index(1),
            "several containers in a task (sidecars); a task runs one container",
        );
    }
    for (i, c) in task.containers.iter().enumerate() {
        let cp = containers.index(i);
        if !c.ports.is_empty() {
            p.not_supported(
                &cp.key("ports"),
                "ports on a job's container: a task runs to its exit and takes no requests",
            );
        }
        for (field, set) in [
            ("readinessProbe", c.readiness_probe.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
        ] {
            if set {
                p.not_supported(&cp.key(field), "probes on a job's container");
            }
        }
    }
    crate::validate::validate_revision_spec(&task.as_revision_spec(), at, p);
}

/// An execution's overrides (Cloud Run's `RunJobRequest.overrides`): what `skiff jobs
/// execute` may change for one execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overrides {
    /// Per container (by name, or the only one when unnamed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_overrides: Vec<ContainerOverride>,
    /// Tasks to run instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<i64>,
    /// Longest attempt, in seconds, instead of the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// One container's overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerOverride {
    /// The container's name (may be empty for the only container).
    #[serde(default)]
    pub name: String,
    /// Arguments replacing the container's `args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Variables set or replaced (merged with the container's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<OverrideEnv>,
    /// Clear the container's `args` (to run the image's default command).
    #[serde(default)]
    pub clear_args: bool,
}

/// A variable of an override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideEnv {
    /// Its name.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: String,
}

/// The execution spec (from the Job's template) with `overrides` applied; the problems are
/// the overrides' (a container they name that does not exist, values out of range).
pub fn apply_overrides(
    mut exec: ExecutionSpec,
    overrides: &Overrides,
) -> Result<ExecutionSpec, Problems> {
    let mut p = Problems::new();
    let root = FieldPath::root();
    check_range(
        overrides.task_count,
        1,
        MAX_TASK_COUNT,
        &root.key("taskCount"),
        &mut p,
    );
    check_range(
        overrides.timeout_seconds,
        1,
        MAX_TASK_TIMEOUT_SECONDS,
        &root.key("timeoutSeconds"),
        &mut p,
    );
    if let Some(n) = overrides.task_count {
        exec.task_count = Some(n);
        if exec.parallelism.is_some_and(|par| par > n) {
            exec.parallelism = Some(n);
        }
    }
    let task = exec
        .template
        .get_or_insert_with(TaskTemplate::default)
        .spec
        .get_or_insert_with(TaskSpec::default);
    if let Some(t) = overrides.timeout_seconds {
        task.timeout_seconds = Some(t);
    }
    for (i, o) in overrides.container_overrides.iter().enumerate() {
        let at = root.key("containerOverrides").index(i);
        let only = task.containers.len() == 1;
        let found = task.containers.iter_mut().enumerate().find(|(_, c)| {
            c.name.as_deref() == Some(o.name.as_str()) || (o.name.is_empty() && only)
        });
        let Some((_, c)) = found else {
            p.invalid(
                &at.key("name"),
                format!("the job has no container named `{}`", o.name),
            );
            continue;
        };
        if o.clear_args {
            c.args.clear();
        }
        if !o.args.is_empty() {
            c.args = o.args.clone();
        }
        for (j, e) in o.env.iter().enumerate() {
            if let Err(err) = crate::names::check_env_name(&e.name) {
                p.invalid(&at.key("env").index(j).key("name"), err);
                continue;
            }
            if e.value.contains('\0') {
                p.invalid(
                    &at.key("env").index(j).key("value"),
                    "must not contain a NUL byte",
                );
                continue;
            }
            match c
                .env
                .iter_mut()
                .find(|v| v.name.as_deref() == Some(e.name.as_str()))
            {
                Some(v) => {
                    v.value = Some(e.value.clone());
                    v.value_from = None;
                }
                None => c.env.push(crate::types::EnvVar {
                    name: Some(e.name.clone()),
                    value: Some(e.value.clone()),
                    value_from: None,
                }),
            }
        }
    }
    if p.is_empty() { Ok(exec) } else { Err(p) }
}

/// How the last execution of a job ended (Cloud Run's `completionStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompletionStatus {
    /// Every task succeeded.
    ExecutionSucceeded,
    /// A task ran out of retries.
    ExecutionFailed,
    /// Tasks are running.
    ExecutionRunning,
    /// Not started yet.
    ExecutionPending,
    /// Cancelled.
    ExecutionCancelled,
}

/// A reference to an execution, in a Job's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionReference {
    /// The execution's name.
    pub name: String,
    /// When it was created.
    pub creation_timestamp: String,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<String>,
    /// How it stands.
    pub completion_status: CompletionStatus,
}

/// What skiff observed of a Job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// The generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Executions created so far.
    #[serde(default)]
    pub execution_count: u64,
    /// The newest execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_execution: Option<ExecutionReference>,
    /// Its schedule, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<JobSchedule>,
    /// Since when the schedule applies (when it was set or last changed): due times before
    /// it are not runs missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_since: Option<String>,
    /// The scheduled time of the last run the schedule started or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// The next time the schedule fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    /// Scheduled runs not started (missed while the daemon was down, past the starting
    /// deadline, or forbidden by the concurrency policy), in all.
    #[serde(default)]
    pub missed_runs: u64,
    /// Why the last scheduled run was skipped, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skip: Option<String>,
}

/// A Job as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// `run.googleapis.com/v1`.
    pub api_version: String,
    /// `Job`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The desired state, as applied.
    pub spec: JobSpec,
    /// The observed state.
    #[serde(default)]
    pub status: JobStatus,
}

impl Job {
    /// The execution template.
    pub fn execution(&self) -> ExecutionSpec {
        self.spec
            .template
            .as_ref()
            .and_then(|t| t.spec.clone())
            .unwrap_or_default()
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum TaskState {
    /// Waiting for its turn (parallelism) or for a retry.
    #[default]
    Pending,
    /// An attempt runs.
    Running,
    /// An attempt exited 0.
    Succeeded,
    /// Every attempt failed.
    Failed,
    /// The execution was cancelled before it ended.
    Cancelled,
}

impl TaskState {
    /// Whether the task is done.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResult {
    /// The attempt (0 for the first).
    pub attempt: u32,
    /// The exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `DeadlineExceeded`, `StartError`, `Lost`,
    /// `Cancelled`.
    pub reason: String,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// One task of an execution (Cloud Run's Task status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// Its index (`CLOUD_RUN_TASK_INDEX`).
    pub index: u32,
    /// Where it stands.
    pub state: TaskState,
    /// Retries so far.
    #[serde(default)]
    pub retried: u32,
    /// The attempt running or last run (`CLOUD_RUN_TASK_ATTEMPT`).
    #[serde(default)]
    pub attempt: u32,
    /// The instance running the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the task ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// How the last attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_result: Option<AttemptResult>,
    /// Every attempt that ended, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptResult>,
}

/// What skiff observed of an execution (Cloud Run's ExecutionStatus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    /// `ResourcesAvailable`, `Started`, `Completed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// When its first task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Tasks running.
    #[serde(default)]
    pub running_count: u32,
    /// Tasks that succeeded.
    #[serde(default)]
    pub succeeded_count: u32,
    /// Tasks that failed.
    #[serde(default)]
    pub failed_count: u32,
    /// Tasks cancelled.
    #[serde(default)]
    pub cancelled_count: u32,
    /// Retries of all tasks.
    #[serde(default)]
    pub retried_count: u32,
    /// Where its logs are: the command that shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uri: Option<String>,
    /// The images its tasks run, pinned by digest (one per container), once resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Each task.
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
}

/// An execution's own spec: the job's execution template with the run's overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRunSpec {
    /// Tasks.
    pub task_count: u32,
    /// Tasks at once.
    pub parallelism: u32,
    /// The task template.
    pub template: TaskTemplate,
    /// Set by `skiff executions cancel`: every running task is stopped.
    #[serde(default)]
    pub cancelled: bool,
    /// A CloudEvent that started it (structured JSON), for jobs that are event sinks; its
    /// attributes reach the tasks as `CE_*` variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

impl ExecutionRunSpec {
    /// The task spec.
    pub fn task(&self) -> TaskSpec {
        self.template.spec.clone().unwrap_or_default()
    }
}

/// An execution as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// `run.googleapis.com/v1`.
    pub api_version: String,
    /// `Execution`.
    pub kind: String,
    /// Metadata (label `run.googleapis.com/job` names the job).
    pub metadata: ObjectMeta,
    /// What it runs.
    pub spec: ExecutionRunSpec,
    /// How it stands.
    #[serde(default)]
    pub status: ExecutionStatus,
}

impl Execution {
    /// Its job's name.
    pub fn job(&self) -> &str {
        self.metadata
            .labels
            .get(LABEL_JOB)
            .map_or("", String::as_str)
    }

    /// Whether it has ended (every task done).
    pub fn is_done(&self) -> bool {
        self.status.completion_time.is_some()
    }

    /// How it stands, as Cloud Run's `completionStatus`.
    pub fn completion_status(&self) -> CompletionStatus {
        let s = &self.status;
        if s.completion_time.is_some() {
            if s.cancelled_count > 0 {
                CompletionStatus::ExecutionCancelled
            } else if s.failed_count > 0 {
                CompletionStatus::ExecutionFailed
            } else {
                CompletionStatus::ExecutionSucceeded
            }
        } else if s.start_time.is_some() {
            CompletionStatus::ExecutionRunning
        } else {
            CompletionStatus::ExecutionPending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> Result<ValidatedJob, Vec<String>> {
        let doc = crate::manifest::parse_documents(yaml)
            .expect("yaml")
            .remove(0);
        crate::manifest::job_from_document(&doc).map_err(|p| {
            p.iter()
                .map(|(path, _, m)| format!("{path}: {m}"))
                .collect()
        })
    }

    const GOOD: &str = r#"
apiVersion: run.googleapis.com/v1
kind: Job
metadata:
  name: nightly-etl
  annotations:
    run.googleapis.com/launch-stage: BETA
spec:
  template:
    spec:
      taskCount: 5
      parallelism: 2
      template:
        spec:
          maxRetries: 3
          timeoutSeconds: 3600
          containers:
          - image: skiff.local/job:latest
            args: ["--date", "2024-01-01"]
            env:
            - name: MODE
              value: full
"#;

    #[test]
    fn cloud_run_yaml_is_read_at_its_depths() {
        let j = job(GOOD).expect("valid");
        assert_eq!(j.name, "nightly-etl");
        let e = j.execution();
        assert_eq!(e.task_count, Some(5));
        assert_eq!(e.parallelism, Some(2));
        let t = e.template.and_then(|t| t.spec).expect("task");
        assert_eq!(t.retries(), 3);
        assert_eq!(t.timeout(), Duration::from_secs(3600));
        assert_eq!(t.containers[0].args, ["--date", "2024-01-01"]);
    }

    #[test]
    fn defaults_are_cloud_runs() {
        let t = TaskSpec::default();
        assert_eq!(t.retries(), 3);
        assert_eq!(t.timeout(), Duration::from_secs(600));
    }

    #[test]
    fn fields_at_the_wrong_depth_are_named() {
        // The widely copied sample that puts taskCount beside the containers.
        let bad = GOOD.replace("          maxRetries: 3", "          taskCount: 3");
        let problems = job(&bad).expect_err("invalid");
        assert!(
            problems.iter().any(|p| p.starts_with(
                "spec.template.spec.template.spec.taskCount: unknown field"
            )),
            "{problems:?}"
        );
    }

    #[test]
    fn ranges_ports_probes_and_sidecars_are_refused_by_path() {
        let bad = GOOD
            .replace("taskCount: 5", "taskCount: 0")
            .replace("maxRetries: 3", "maxRetries: 11")
            .replace("timeoutSeconds: 3600", "timeoutSeconds: 0")
            .replace(
                "            args:",
                "            ports: [{containerPort: 8080}]\n            readinessProbe: {tcpSocket: {port: 8080}}\n            args:",
            );
        let problems = job(&bad).expect_err("invalid").join("\n");
        for expected in [
            "spec.template.spec.taskCount: 0 is out of range (1 to 10000)",
            "spec.template.spec.template.spec.maxRetries: 11 is out of range (0 to 10)",
            "spec.template.spec.template.spec.timeoutSeconds: 0 is out of range",
            "spec.template.spec.template.spec.containers[0].ports: not supported",
            "spec.template.spec.template.spec.containers[0].readinessProbe: not supported",
        ] {
            assert!(problems.contains(expected), "{expected} in\n{problems}");
        }
    }

    #[test]
    fn parallelism_over_task_count_is_refused() {
        let bad = GOOD.replace("parallelism: 2", "parallelism: 6");
        let problems = job(&bad).expect_err("invalid").join("\n");
        assert!(
            problems
                .contains("spec.template.spec.parallelism: 6 is out of range (0 to taskCount, 5"),
            "{problems}"
        );
    }

    #[test]
    fn schedule_annotations_are_checked() {
        let with = |a: &str| GOOD.replace("    run.googleapis.com/launch-stage: BETA", a);
        let problems = job(&with(
            "    skiff.dev/concurrency-policy: Sometimes\n    skiff.dev/schedul: \"* * * * *\"",
        ))
        .expect_err("invalid")
        .join("\n");
        assert!(
            problems.contains("skiff.dev/schedul: unknown skiff annotation"),
            "{problems}"
        );
        assert!(
            problems.contains("`Sometimes` is not a policy"),
            "{problems}"
        );
        assert!(
            problems.contains("has no effect without `skiff.dev/schedule`"),
            "{problems}"
        );
        let ok = job(&with(
            "    skiff.dev/schedule: \"0 3 * * *\"\n    skiff.dev/schedule-timezone: Europe/Berlin\n    skiff.dev/concurrency-policy: Forbid\n    skiff.dev/starting-deadline: 10m",
        ))
        .expect("valid");
        let s = JobSchedule::of(&ok.manifest.metadata.annotations).expect("a schedule");
        assert_eq!(s.starting_deadline_seconds, Some(600));
        assert_eq!(s.concurrency_policy, "Forbid");
    }

    #[test]
    fn a_bad_schedule_or_zone_is_placed_on_its_annotation() {
        let with = |a: &str| GOOD.replace("    run.googleapis.com/launch-stage: BETA", a);
        let problems = job(&with("    skiff.dev/schedule: \"0 0 * * * *\""))
            .expect_err("six fields")
            .join("\n");
        assert!(
            problems.contains("metadata.annotations.skiff.dev/schedule")
                && problems.contains("has 6 fields; skiff takes 5"),
            "{problems}"
        );
        let problems = job(&with(
            "    skiff.dev/schedule: \"0 3 * * *\"\n    skiff.dev/schedule-timezone: Europe/Berln",
        ))
        .expect_err("bad zone")
        .join("\n");
        assert!(
            problems.contains("skiff.dev/schedule-timezone")
                && problems.contains("did you mean Europe/Berlin"),
            "{problems}"
        );
    }

    #[test]
    fn overrides_replace_args_merge_env_and_name_missing_containers() {
        let exec = job(GOOD).expect("valid").execution();
        let o = Overrides {
            container_overrides: vec![ContainerOverride {
                name: String::new(),
                args: vec!["--date".into(), "2025-01-01".into()],
                env: vec![
                    OverrideEnv {
                        name: "MODE".into(),
                        value: "delta".into(),
                    },
                    OverrideEnv {
                        name: "EXTRA".into(),
                        value: "1".into(),
                    },
                ],
                clear_args: false,
            }],
            task_count: Some(1),
            timeout_seconds: Some(30),
        };
        let e = apply_overrides(exec.clone(), &o).expect("valid overrides");
        assert_eq!(e.task_count, Some(1));
        assert_eq!(e.parallelism, Some(1));
        let t = e.template.and_then(|t| t.spec).expect("task");
        assert_eq!(t.timeout_seconds, Some(30));
        let c = &t.containers[0];
        assert_eq!(c.args, ["--date", "2025-01-01"]);
        let env: Vec<_> = c
            .env
            .iter()
            .map(|e| {
                (
                    e.name.clone().unwrap_or_default(),
                    e.value.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            env,
            [
                ("MODE".into(), "delta".into()),
                ("EXTRA".into(), "1".into())
            ]
        );
        let bad = Overrides {
            container_overrides: vec![ContainerOverride {
                name: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = apply_overrides(exec, &bad).expect_err("no such container");
        assert!(
            p.iter()
                .any(|(_, _, m)| m.contains("no container named `nope`"))
        );
    }
}
