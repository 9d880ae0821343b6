//! Handlers for running instances: the manual scale override, instances with their usage,
//! and logs (optionally followed).

use std::io::{BufRead, Seek};
use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use skiff_api::ErrorCode;
use skiff_api::wire::{InstanceView, LogLine, Scale, ScaleStatus};
use skiff_runtime::logs;
use utoipa::IntoParams;

use super::{ApiError, ApiState};

/// Query of a log request.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only this revision (default: every revision of the Service).
    #[serde(default)]
    pub revision: Option<String>,
    /// Only lines newer than this: a duration (`10m`, `1h`) or an RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<usize>,
    /// Keep the response open and send new lines as they come.
    #[serde(default)]
    pub follow: Option<bool>,
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad query parameters: {}", e.body_text()),
        )
    })
}

/// Sets how many instances of the Service's latest revision run, overriding the autoscaler
/// (which still scales the other revisions). `DELETE` hands the decision back.
#[utoipa::path(put, path = "/api/v1/namespaces/{namespace}/services/{name}/scale", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    request_body = Scale,
    responses((status = 200, body = Scale), (status = 400, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn set_scale(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Scale>, ApiError> {
    let scale: Scale = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the body must be {{\"replicas\": N}}: {e}"),
        )
    })?;
    if scale.replicas > 1000 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "replicas must be at most 1000",
        ));
    }
    state
        .instances
        .set_scale(&namespace, &name, scale.replicas)
        .await?;
    Ok(Json(scale))
}

/// Removes the manual override: the autoscaler decides the latest revision's scale again.
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/services/{name}/scale", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    responses((status = 204, description = "The override is gone"), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn clear_scale(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.instances.clear_scale(&namespace, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The Service's scale: the manual override if any, and per revision the desired and ready
/// instances, load, cold starts and the last scaling decisions with their reasons.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/scale", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    responses((status = 200, body = ScaleStatus), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_scale(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<ScaleStatus>, ApiError> {
    Ok(Json(state.instances.scale_status(&namespace, &name).await?))
}

/// The instances of a Service, with their containers' states and resource usage.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/instances", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    responses((status = 200, body = Vec<InstanceView>), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn list_instances(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    state.controller.get_service(&namespace, &name).await?;
    Ok(Json(state.instances.instances_of(&namespace, &name)))
}

pub(super) fn since_cutoff(since: &str) -> Result<jiff::Timestamp, ApiError> {
    if let Ok(t) = since.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let d = skiff_api::names::parse_go_duration(since)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("since: {e}")))?;
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    Ok(jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(jiff::Timestamp::MIN))
}

/// The revisions of Service `name` whose logs are asked for: `revision` alone (checked to be
/// one of the Service's), else all of them.
pub(super) async fn revisions_of(
    state: &ApiState,
    namespace: &str,
    name: &str,
    revision: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    state.controller.get_service(namespace, name).await?;
    Ok(match revision {
        Some(r) => {
            let rev = state.controller.get_revision(namespace, r).await?;
            if rev.service_name() != Some(name) {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("revision `{r}` is not a revision of `{name}`"),
                ));
            }
            vec![r.to_owned()]
        }
        None => state
            .controller
            .list_revisions(Some(namespace), Some(name))
            .await?
            .into_iter()
            .map(|r| r.metadata.name)
            .collect(),
    })
}

/// The logs of a Service's instances as NDJSON lines `{ts, stream, instance, container, line}`,
/// oldest first; with `follow`, new lines keep coming.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/logs", tag = "runtime",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"), LogParams),
    responses((status = 200, description = "NDJSON log lines", content_type = "application/x-ndjson"), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn logs(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(params)?;
    let ts: fn(&LogLine) -> &str = |l| &l.ts;
    serve_log(
        &state,
        &namespace,
        &name,
        p,
        LogFiles {
            path: logs::revision_log,
            read: logs::read_all,
        },
        ts,
        "logs",
    )
    .await
}

/// Where a kind of log keeps each revision's lines, as `(logs dir, namespace, revision)`:
/// its current file, and every line of every file kept (blocking).
pub(super) struct LogFiles<T> {
    /// The current file.
    pub(super) path: fn(&std::path::Path, &str, &str) -> PathBuf,
    /// Every line kept, oldest first.
    pub(super) read: fn(&std::path::Path, &str, &str) -> Vec<T>,
}

/// The log `files` of Service `name`'s revisions (those `p` asks for), their lines timed
/// by `ts`, served by [`lines_response`]; `what` names the log in an error.
pub(super) async fn serve_log<T: serde::Serialize + Send + 'static>(
    state: &ApiState,
    namespace: &str,
    name: &str,
    p: LogParams,
    files: LogFiles<T>,
    ts: fn(&T) -> &str,
    what: &'static str,
) -> Result<Response, ApiError> {
    let revisions = revisions_of(state, namespace, name, p.revision.as_deref()).await?;
    let cutoff = p.since.as_deref().map(since_cutoff).transpose()?;
    let dir = state.instances.runtime().log_dir();
    let current: Vec<PathBuf> = revisions
        .iter()
        .map(|r| (files.path)(&dir, namespace, r))
        .collect();
    let namespace = namespace.to_owned();
    let read = move || -> Vec<T> {
        revisions
            .iter()
            .flat_map(|r| (files.read)(&dir, &namespace, r))
            .collect()
    };
    let shown = Shown {
        cutoff,
        tail: p.tail,
        follow: p.follow == Some(true),
    };
    lines_response(current, read, ts, shown, Following::default(), what).await
}

/// Which lines of a log a request asks for.
pub(super) struct Shown {
    /// Only those since.
    pub(super) cutoff: Option<jiff::Timestamp>,
    /// Only the last N.
    pub(super) tail: Option<usize>,
    /// Then keep sending new ones.
    pub(super) follow: bool,
}

/// Whether a followed log sends a new line (its raw NDJSON).
pub(super) type Keep = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// How a followed log goes on: which of the new lines it sends (all by default) and when
/// it ends (when the client goes, by default).
#[derive(Default)]
pub(super) struct Following {
    /// Sends only the new lines this keeps.
    pub(super) keep: Option<Keep>,
    /// Once this completes, the lines written until then are sent and the response ends.
    pub(super) until: Option<futures::future::BoxFuture<'static, ()>>,
}

/// The NDJSON response of a log kept in `files`: the lines `read` gives (blocking, so off
/// the async workers), ordered by their time `ts` and selected as `shown` asks, then with
/// `follow` the lines appended to the files since they were read, as `following` says.
/// `what` names the log in an error.
pub(super) async fn lines_response<T: serde::Serialize + Send + 'static>(
    files: Vec<PathBuf>,
    read: impl FnOnce() -> Vec<T> + Send + 'static,
    ts: fn(&T) -> &str,
    shown: Shown,
    following: Following,
    what: &'static str,
) -> Result<Response, ApiError> {
    let (head, offsets) = tokio::task::spawn_blocking({
        let files = files.clone();
        move || {
            let offsets = file_ends(&files);
            (select_lines(read(), ts, shown.cutoff, shown.tail), offsets)
        }
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading {what} failed: {e}")))?;
    if shown.follow {
        Ok(follow(head, files, offsets, following))
    } else {
        Ok(ndjson(head))
    }
}

/// An NDJSON response of `lines`.
pub(super) fn ndjson(lines: Vec<bytes::Bytes>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        lines.concat(),
    )
        .into_response()
}

/// An NDJSON response of `head`, then of the lines appended to `files` after `offsets`
/// (those `following` keeps), polled until the client goes away or `following.until`
/// completes.
fn follow(
    head: Vec<bytes::Bytes>,
    files: Vec<PathBuf>,
    mut offsets: Vec<u64>,
    following: Following,
) -> Response {
    // From the end of each file when it was read, poll for new lines.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    let Following { keep, mut until } = following;
    tokio::spawn(async move {
        for b in head {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let poll = std::time::Duration::from_millis(200);
        let mut ended = false;
        loop {
            match until.as_mut() {
                Some(end) => tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = end => ended = true,
                },
                None => tokio::time::sleep(poll).await,
            }
            let files = files.clone();
            let Ok((chunks, now)) =
                tokio::task::spawn_blocking(move || read_new_lines(&files, offsets)).await
            else {
                return;
            };
            offsets = now;
            for b in chunks {
                if keep.as_ref().is_some_and(|k| !k(&b)) {
                    continue;
                }
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            // The lines written until the end are sent: done.
            if ended || tx.is_closed() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The current length of each file (0 if absent).
pub(super) fn file_ends(files: &[PathBuf]) -> Vec<u64> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect()
}

/// Orders lines by time, keeps those since `cutoff` and the last `tail`, as NDJSON chunks.
fn select_lines<T: serde::Serialize>(
    mut lines: Vec<T>,
    ts: fn(&T) -> &str,
    cutoff: Option<jiff::Timestamp>,
    tail: Option<usize>,
) -> Vec<bytes::Bytes> {
    lines.sort_by(|a, b| ts(a).cmp(ts(b)));
    if let Some(c) = cutoff {
        lines.retain(|l| ts(l).parse::<jiff::Timestamp>().is_ok_and(|t| t >= c));
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    lines
        .iter()
        .map(|l| {
            let mut v = serde_json::to_vec(l).unwrap_or_default();
            v.push(b'\n');
            bytes::Bytes::from(v)
        })
        .collect()
}

/// The complete lines appended to each file since its offset (from 0 after a rotation), and
/// the new offsets. Blocking.
fn read_new_lines(files: &[PathBuf], mut offsets: Vec<u64>) -> (Vec<bytes::Bytes>, Vec<u64>) {
    let mut out = Vec::new();
    for (f, off) in files.iter().zip(offsets.iter_mut()) {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        if len < *off {
            *off = 0; // rotated
        }
        if len == *off {
            continue;
        }
        let Ok(mut file) = std::fs::File::open(f) else {
            continue;
        };
        if file.seek(std::io::SeekFrom::Start(*off)).is_err() {
            continue;
        }
        let mut reader = std::io::BufReader::new(file);
        let mut buf = String::new();
        while let Ok(n) = reader.read_line(&mut buf) {
            if n == 0 || !buf.ends_with('\n') {
                break;
            }
            *off += n as u64;
            out.push(bytes::Bytes::from(std::mem::take(&mut buf)));
        }
    }
    (out, offsets)
}
