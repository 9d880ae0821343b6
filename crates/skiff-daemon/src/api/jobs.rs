//! Handlers for Cloud Run Jobs and their executions: apply, read and delete Jobs, run one
//! (with overrides), read, cancel and delete executions, and read an execution's logs.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use skiff_api::ErrorCode;
use skiff_api::job::{Execution, JOBS_API_VERSION, Job, Overrides, ValidatedJob};
use skiff_api::manifest;
use skiff_api::object::List;
use skiff_api::wire::{APPLY_RESULT_HEADER, LogLine};
use skiff_control::controller::{ApplyResult, ControllerError};
use skiff_runtime::logs;
use utoipa::IntoParams;

use super::runtime::{Following, Keep, Shown, lines_response, since_cutoff};
use super::services::{
    WriteParams, check_pull_secrets, check_segment, dry_run, query, read_manifest,
};
use super::{ApiError, ApiState};

/// Where a Job's task template (its pod spec) is.
const TASK_SPEC: &str = "spec.template.spec.template.spec";

fn list<T>(kind: &str, items: Vec<T>) -> List<T> {
    List {
        api_version: JOBS_API_VERSION.to_owned(),
        kind: kind.to_owned(),
        items,
    }
}

/// Query parameters of execution lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionListParams {
    /// Only the executions of this Job.
    #[serde(default)]
    pub job: Option<String>,
}

/// Query of an execution's logs.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionLogParams {
    /// Only this task's lines (its index, `CLOUD_RUN_TASK_INDEX`), of every attempt.
    #[serde(default)]
    pub task: Option<u32>,
    /// Only lines newer than this: a duration (`10m`, `1h`) or an RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<usize>,
    /// Keep the response open and send new lines as they come, until the execution ends.
    #[serde(default)]
    pub follow: Option<bool>,
}

/// Lists the Jobs of every namespace.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    responses((status = 200, body = List<Job>), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_all_jobs(State(state): State<ApiState>) -> Result<Json<List<Job>>, ApiError> {
    Ok(Json(list("JobList", state.jobs.list(None).await?)))
}

/// Lists the Jobs of a namespace.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/jobs", tag = "jobs",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = List<Job>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_jobs(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<List<Job>>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(list(
        "JobList",
        state.jobs.list(Some(&namespace)).await?,
    )))
}

/// Creates or updates a Job (a Cloud Run `run.googleapis.com/v1` Job). Its executions keep
/// the template they started with. With `metadata.resourceVersion`, applies only if the Job
/// is still at that version (409 otherwise).
#[utoipa::path(put, path = "/api/v1/namespaces/{namespace}/jobs/{name}", tag = "jobs",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Job"), WriteParams),
    request_body(content = skiff_api::job::JobManifest, description = "A Cloud Run Job, as JSON or YAML", content_type = "application/json"),
    responses(
        (status = 200, body = Job, description = "Configured or unchanged", headers(("skiff-apply-result" = String))),
        (status = 201, body = Job, description = "Created", headers(("skiff-apply-result" = String))),
        (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 409, body = skiff_api::ErrorBody), (status = 413, body = skiff_api::ErrorBody),
        (status = 415, body = skiff_api::ErrorBody)))]
pub async fn apply_job(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_segment("namespace", &namespace)?;
    let dry = dry_run(&query(params)?.dry_run)?;
    let (_permit, doc) = read_manifest(&state, &headers, body).await?;
    let invalid = |problems| ControllerError::Invalid {
        problems: doc.place(problems, false),
    };
    if !manifest::is_job(&doc) {
        let mut p = skiff_api::problems::Problems::new();
        p.invalid(
            &skiff_api::FieldPath::root().key("kind"),
            format!("this endpoint takes a `{JOBS_API_VERSION}` Job"),
        );
        return Err(invalid(p).into());
    }
    let v = manifest::job_from_document(&doc).map_err(invalid)?;
    if v.name != name {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "metadata.name `{}` does not match the name in the path, `{name}`",
                v.name
            ),
        ));
    }
    if let Some(m) = &v.manifest.metadata.namespace
        && *m != namespace
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "metadata.namespace `{m}` does not match the namespace in the path, `{namespace}`"
            ),
        ));
    }
    check_pull_secrets(&state, &namespace, &doc, TASK_SPEC).await?;
    let v = ValidatedJob {
        namespace: namespace.clone(),
        ..v
    };
    let (result, job) = state.jobs.apply(v, dry).await?;
    let status = match result {
        ApplyResult::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut response = (status, Json(job)).into_response();
    response.headers_mut().insert(
        APPLY_RESULT_HEADER,
        HeaderValue::from_static(result.as_str()),
    );
    Ok(response)
}

/// Reads a Job, with its execution count and latest execution.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/jobs/{name}", tag = "jobs",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Job")),
    responses((status = 200, body = Job), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_job(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Job>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(state.jobs.get(&namespace, &name).await?))
}

/// Deletes a Job with all its executions; their running tasks are stopped.
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/jobs/{name}", tag = "jobs",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Job"), WriteParams),
    responses((status = 204, description = "Deleted (or, for a dry run, would be)"), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn delete_job(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<WriteParams>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    check_segment("namespace", &namespace)?;
    if dry_run(&query(params)?.dry_run)? {
        state.jobs.get(&namespace, &name).await?;
    } else {
        state.jobs.delete(&namespace, &name).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a Job: creates an execution of its template with `overrides` (Cloud Run's
/// `RunJobRequest.overrides`: per container `args` replacing the template's and `env`
/// merged into it, `taskCount`, `timeoutSeconds`). The body may be empty or `{}`.
#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/jobs/{name}/executions", tag = "jobs",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Job")),
    request_body(content = Overrides, description = "What this execution changes of the Job's template", content_type = "application/json"),
    responses(
        (status = 201, body = Execution, description = "The execution, created; its tasks start as the reconciler gets to them"),
        (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn run_job(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Execution>), ApiError> {
    check_segment("namespace", &namespace)?;
    let overrides: Overrides = if body.iter().all(u8::is_ascii_whitespace) {
        Overrides::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("the body must be the execution's overrides (JSON, may be {{}}): {e}"),
            )
        })?
    };
    let execution = state
        .jobs
        .run(&namespace, &name, &overrides, "api", None)
        .await?;
    Ok((StatusCode::CREATED, Json(execution)))
}

/// Lists the executions of a namespace (of one Job with `job`), newest first.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/executions", tag = "executions",
    params(("namespace" = String, Path, description = "The namespace"), ExecutionListParams),
    responses((status = 200, body = List<Execution>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_executions(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
    params: Result<Query<ExecutionListParams>, QueryRejection>,
) -> Result<Json<List<Execution>>, ApiError> {
    check_segment("namespace", &namespace)?;
    let params = query(params)?;
    let items = state
        .jobs
        .executions(&namespace, params.job.as_deref())
        .await?;
    Ok(Json(list("ExecutionList", items)))
}

/// Reads an execution: its conditions, counts, and each task with its attempts.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/executions/{name}", tag = "executions",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The execution")),
    responses((status = 200, body = Execution), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_execution(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Execution>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(state.jobs.execution(&namespace, &name).await?))
}

/// Cancels an execution: its running tasks are stopped, pending ones never start. An
/// execution that has ended is answered as it is.
#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/executions/{name}/cancel", tag = "executions",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The execution")),
    responses((status = 200, body = Execution), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn cancel_execution(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Execution>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(state.jobs.cancel(&namespace, &name).await?))
}

/// Deletes an execution that has ended (409 while it runs: cancel it first).
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/executions/{name}", tag = "executions",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The execution")),
    responses((status = 204, description = "Deleted"), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn delete_execution(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_segment("namespace", &namespace)?;
    state.jobs.delete_execution(&namespace, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How often a followed execution log checks whether the execution has ended.
const END_POLL: Duration = Duration::from_millis(250);

/// The output of an execution's tasks (every attempt; with `task`, one task's) as NDJSON
/// lines `{ts, stream, instance, container, line}`, oldest first. An attempt's instance is
/// `<execution>-<task>-<attempt>`. With `follow`, new lines keep coming until the execution
/// has ended and none of its attempts is left running.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/executions/{name}/logs", tag = "executions",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The execution"), ExecutionLogParams),
    responses((status = 200, description = "NDJSON log lines", content_type = "application/x-ndjson"), (status = 400, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn execution_logs(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<ExecutionLogParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    check_segment("namespace", &namespace)?;
    let p = query(params)?;
    let exec = state.jobs.execution(&namespace, &name).await?;
    if let Some(t) = p.task
        && t >= exec.spec.task_count
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "execution `{name}` has {} task(s), indexed from 0: there is no task {t}",
                exec.spec.task_count
            ),
        ));
    }
    let cutoff = p.since.as_deref().map(since_cutoff).transpose()?;
    // Task instances log where a Service's do, by "revision": the execution's name.
    let dir = state.instances.runtime().log_dir();
    let files = vec![logs::revision_log(&dir, &namespace, &name)];
    let prefix = p.task.map(|t| format!("{name}-{t}-"));
    let read = {
        let (namespace, name, prefix) = (namespace.clone(), name.clone(), prefix.clone());
        move || -> Vec<LogLine> {
            let mut lines = logs::read_all(&dir, &namespace, &name);
            if let Some(prefix) = &prefix {
                lines.retain(|l| l.instance.starts_with(prefix.as_str()));
            }
            lines
        }
    };
    let keep = prefix.map(|prefix| -> Keep {
        Box::new(move |raw: &[u8]| {
            serde_json::from_slice::<LogLine>(raw)
                .is_ok_and(|l| l.instance.starts_with(prefix.as_str()))
        })
    });
    // Its attempts still in the runtime: a stopped one may write until it is gone.
    let runtime = state.instances.runtime().clone();
    let running = {
        let (namespace, name) = (namespace.clone(), name.clone());
        move || {
            runtime.tasks().iter().any(|i| {
                i.plan.namespace == namespace
                    && i.plan.task.as_ref().is_some_and(|t| t.execution == name)
            })
        }
    };
    let live = !exec.is_done() || running();
    let until = live.then(|| {
        let jobs = state.jobs.clone();
        let future: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
            loop {
                match jobs.execution(&namespace, &name).await {
                    // Ended (or deleted) with nothing of it left running: nothing more
                    // will be written.
                    Ok(e) if e.is_done() && !running() => return,
                    Err(ControllerError::NotFound { .. }) if !running() => return,
                    _ => tokio::time::sleep(END_POLL).await,
                }
            }
        });
        future
    });
    let shown = Shown {
        cutoff,
        tail: p.tail,
        // An execution that has ended and stopped writes no more: following it is reading
        // it.
        follow: p.follow == Some(true) && live,
    };
    let ts: fn(&LogLine) -> &str = |l| &l.ts;
    lines_response(files, read, ts, shown, Following { keep, until }, "logs").await
}
