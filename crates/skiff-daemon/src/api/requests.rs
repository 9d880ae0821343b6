//! Request logs: a Service's request lines (NDJSON, optionally followed), and one request's
//! line with its instance's output around it.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use skiff_api::ErrorCode;
use skiff_api::wire::{LogLine, RequestLogLine, RequestTrail};
use skiff_requests::log;

use super::runtime::{LogFiles, LogParams, query, revisions_of, serve_log};
use super::{ApiError, ApiState};

/// How far around a request its instance's lines are shown.
const AROUND: Duration = Duration::from_secs(1);

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("reading request logs failed: {e}"),
    )
}

/// A Service's requests as NDJSON lines (time, request id, trace id, method, host, path,
/// status, duration, bytes, revision, instance, cold start), oldest first; with `follow`,
/// new ones keep coming.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/requests", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"), LogParams),
    responses((status = 200, description = "NDJSON request lines", content_type = "application/x-ndjson"), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn request_log(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(params)?;
    let files = LogFiles {
        path: log::path,
        read: |dir, namespace, revision| log::read(dir, namespace, revision, |_| true),
    };
    let ts: fn(&RequestLogLine) -> &str = |l| &l.ts;
    serve_log(&state, &namespace, &name, p, files, ts, "request logs").await
}

/// One request of a Service by its `X-Request-Id`: its request log line, and the lines its
/// instance wrote from a second before it arrived to a second after it ended.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/requests/{id}", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"), ("id" = String, Path, description = "The request id")),
    responses((status = 200, body = RequestTrail), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn request_trail(
    State(state): State<ApiState>,
    Path((namespace, name, id)): Path<(String, String, String)>,
) -> Result<Json<RequestTrail>, ApiError> {
    find_trail(&state, &namespace, &name, &id).await.map(Json)
}

/// Request `id` of Service `name` with its instance's lines around it.
pub(crate) async fn find_trail(
    state: &ApiState,
    namespace: &str,
    name: &str,
    id: &str,
) -> Result<RequestTrail, ApiError> {
    let revisions = revisions_of(state, namespace, name, None).await?;
    let dir = state.instances.runtime().log_dir();
    let found = tokio::task::spawn_blocking({
        let (id, namespace) = (id.to_owned(), namespace.to_owned());
        move || trail(&dir, &namespace, &revisions, &id)
    })
    .await
    .map_err(internal)?;
    found.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no request `{id}` in the request logs of `{name}` (they keep the last few files of each revision; request logs may be off: `request_logs`)"
            ),
        )
    })
}

/// The last request `id` in the request logs of `revisions`, with its instance's lines.
/// Blocking.
fn trail(
    dir: &std::path::Path,
    namespace: &str,
    revisions: &[String],
    id: &str,
) -> Option<RequestTrail> {
    let request = revisions
        .iter()
        .filter_map(|r| log::read(dir, namespace, r, |l| l.request_id == id).pop())
        .max_by(|a, b| a.ts.cmp(&b.ts))?;
    let logs = match (&request.instance, log::span_of(&request)) {
        (Some(instance), Some((at, end))) => {
            let (from, to) = (at - AROUND, end + AROUND);
            let within = |l: &LogLine| {
                l.ts.parse::<jiff::Timestamp>()
                    .ok()
                    .map(SystemTime::from)
                    .is_some_and(|t| t >= from && t <= to)
            };
            let mut lines: Vec<LogLine> =
                skiff_runtime::logs::read_all(dir, namespace, &request.revision)
                    .into_iter()
                    .filter(|l| &l.instance == instance && within(l))
                    .collect();
            lines.sort_by(|a, b| a.ts.cmp(&b.ts));
            lines
        }
        _ => Vec::new(),
    };
    Some(RequestTrail { request, logs })
}
