//! Handlers for rollouts: read a Service's rollout, pause, resume, promote or abort it, and
//! roll its traffic back by hand.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use skiff_api::ErrorCode;
use skiff_api::rollout::RolloutReport;
use skiff_control::rollout::Command;
use utoipa::ToSchema;

use super::services::{check_segment, routed};
use super::{ApiError, ApiState};

/// A Service's rollout: the step it is on with the figures so far, the steps done with
/// their analysis, past rollouts, and the latest revision's policy.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/rollout", tag = "rollouts",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    responses((status = 200, body = RolloutReport), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_rollout(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<RolloutReport>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(state.rollouts.report(&namespace, &name).await?))
}

/// Pauses (`pause`: the rollout stays at its step, its analysis still runs), resumes
/// (`resume`: the step starts again; with no rollout, a rolled-back revision is let go to
/// roll out again), promotes (`promote`: all the latest-revision traffic to the new
/// revision now) or aborts (`abort`: all of it back to the stable revision now) a Service's
/// rollout. Answers once the router follows.
#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/services/{name}/rollout/{action}", tag = "rollouts",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"),
        ("action" = String, Path, description = "pause, resume, promote or abort")),
    responses((status = 200, body = RolloutReport), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody, description = "Nothing to do (no rollout in progress, not paused)")))]
pub async fn rollout_command(
    State(state): State<ApiState>,
    Path((namespace, name, action)): Path<(String, String, String)>,
) -> Result<Json<RolloutReport>, ApiError> {
    check_segment("namespace", &namespace)?;
    let Some(command) = Command::parse(&action) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no rollout action `{action}`: use pause, resume, promote or abort"),
        ));
    };
    let service = state.rollouts.command(&namespace, &name, command).await?;
    routed(&state, &service.metadata.resource_version).await;
    Ok(Json(state.rollouts.report(&namespace, &name).await?))
}

/// What `POST …/rollback` takes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to send the latest-revision traffic to (default: the stable revision of
    /// the rollout in progress, else the newest ready revision older than the one serving).
    #[serde(default)]
    pub to: Option<String>,
}

/// Sends a Service's latest-revision traffic back to a revision now; the latest revision is
/// held (not rolled out again by itself) until a newer one, or `resume`. Answers once the
/// router follows.
#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/services/{name}/rollback", tag = "rollouts",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    request_body(content = RollbackRequest, description = "Where to (may be empty or {})", content_type = "application/json"),
    responses((status = 200, body = RolloutReport), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn rollback(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutReport>, ApiError> {
    check_segment("namespace", &namespace)?;
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("the body must be {{\"to\": \"REVISION\"}} or empty: {e}"),
            )
        })?
    };
    let service = state
        .rollouts
        .rollback(&namespace, &name, request.to.as_deref())
        .await?;
    routed(&state, &service.metadata.resource_version).await;
    Ok(Json(state.rollouts.report(&namespace, &name).await?))
}
