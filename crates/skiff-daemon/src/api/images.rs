//! Handlers for images: list, inspect, remove, prune, pull (streamed progress) and import.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use skiff_api::ErrorCode;
use skiff_api::image::ImageRef;
use skiff_api::wire::{GcReport, ImageRecord, ImageView, LayerStatus, PullEvent};
use skiff_image::gc;
use tokio::io::AsyncWriteExt;
use utoipa::IntoParams;

use super::{ApiError, ApiState};
use skiff_control::images::digests_in_use;

/// Query naming an image.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImageParams {
    /// An image reference (`registry/repo:tag`, `repo@sha256:…`) or a digest.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Query of an import.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// The name to give the imported image (required when the archive names none).
    #[serde(default)]
    pub tag: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad query parameters: {}", e.body_text()),
        )
    })
}

fn parse_ref(s: &str) -> Result<ImageRef, ApiError> {
    s.parse::<ImageRef>()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

async fn in_use(state: &ApiState) -> Result<HashSet<String>, ApiError> {
    Ok(digests_in_use(
        &state.controller.list_revisions(None, None).await?,
    ))
}

async fn find(state: &ApiState, reference: &str) -> Result<ImageRecord, ApiError> {
    let content = state.images.content();
    let found = if reference.starts_with("sha256:") {
        content.by_digest(reference).await
    } else {
        let r = parse_ref(reference)?;
        match r.digest() {
            Some(d) => content.by_digest(d).await,
            None => content.by_tag(&r.to_string()).await,
        }
    };
    found
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                skiff_telemetry::ErrorChain(&e).to_string(),
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no image `{reference}` in the content store"),
            )
        })
}

/// Streams pull events as NDJSON while `run` works; the last line is `done` or `error`.
fn ndjson<F>(run: impl FnOnce(skiff_image::puller::Progress) -> F) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    let last = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        std::time::Instant,
    >::new()));
    let progress: skiff_image::puller::Progress = Arc::new(move |ev: PullEvent| {
        // At most ten progress lines a second per layer.
        if let PullEvent::Layer {
            digest,
            status: LayerStatus::Downloading,
            done,
            total,
        } = &ev
        {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if done < total
                && last
                    .get(digest)
                    .is_some_and(|t| now.duration_since(*t).as_millis() < 100)
            {
                return;
            }
            last.insert(digest.clone(), now);
        }
        let _ = tx.send(ev);
    });
    tokio::spawn(run(progress));
    let stream = tokio_stream_from(rx).map(|ev| {
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::io::Error>(bytes::Bytes::from(line))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Lists the images in the content store.
#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    responses((status = 200, body = Vec<ImageView>), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_images(State(state): State<ApiState>) -> Result<Json<Vec<ImageView>>, ApiError> {
    let used = in_use(&state).await?;
    let mut images = state.images.content().images().await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            skiff_telemetry::ErrorChain(&e).to_string(),
        )
    })?;
    images.sort_by(|a, b| a.references.first().cmp(&b.references.first()));
    Ok(Json(
        images
            .into_iter()
            .map(|i| ImageView {
                in_use: gc::used(&i, &used),
                image: i,
            })
            .collect(),
    ))
}

/// Shows one image.
#[utoipa::path(get, path = "/api/v1/images/inspect", tag = "images", params(ImageParams),
    responses((status = 200, body = ImageView), (status = 400, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn inspect_image(
    State(state): State<ApiState>,
    params: Result<Query<ImageParams>, QueryRejection>,
) -> Result<Json<ImageView>, ApiError> {
    let p = query(params)?;
    let image = find(&state, &p.reference).await?;
    let used = in_use(&state).await?;
    Ok(Json(ImageView {
        in_use: gc::used(&image, &used),
        image,
    }))
}

/// Removes an image no revision uses (its content goes at the next prune).
#[utoipa::path(delete, path = "/api/v1/images", tag = "images", params(ImageParams),
    responses((status = 200, body = ImageView), (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn remove_image(
    State(state): State<ApiState>,
    params: Result<Query<ImageParams>, QueryRejection>,
) -> Result<Json<ImageView>, ApiError> {
    let p = query(params)?;
    let image = find(&state, &p.reference).await?;
    if gc::used(&image, &in_use(&state).await?) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "image `{}` is used by a revision; delete the revision's Service first",
                p.reference
            ),
        ));
    }
    state
        .images
        .content()
        .remove_image(&image)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                skiff_telemetry::ErrorChain(&e).to_string(),
            )
        })?;
    Ok(Json(ImageView {
        image,
        in_use: false,
    }))
}

/// Removes every image no revision uses, and every blob and layer no image needs.
#[utoipa::path(post, path = "/api/v1/images/prune", tag = "images",
    responses((status = 200, body = GcReport), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn prune_images(State(state): State<ApiState>) -> Result<Json<GcReport>, ApiError> {
    let _guard = state.gc_lock.lock().await;
    let used = in_use(&state).await?;
    let report = gc::collect(state.images.content(), &used, true)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                skiff_telemetry::ErrorChain(&e).to_string(),
            )
        })?;
    Ok(Json(report))
}

/// Pulls an image; the answer streams progress as NDJSON `PullEvent`s, the last being
/// `done` or `error`.
#[utoipa::path(post, path = "/api/v1/images/pull", tag = "images", params(ImageParams),
    responses((status = 200, description = "NDJSON progress events", content_type = "application/x-ndjson"), (status = 400, body = skiff_api::ErrorBody)))]
pub async fn pull_image(
    State(state): State<ApiState>,
    params: Result<Query<ImageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(params)?;
    let reference = parse_ref(&p.reference)?;
    let puller = state.images.puller.clone();
    Ok(ndjson(move |progress| async move {
        let _ = puller.pull(&reference, progress).await;
    }))
}

/// Imports an OCI image layout (tar) or a `docker save` archive sent as the body; the
/// answer streams progress as NDJSON.
#[utoipa::path(post, path = "/api/v1/images/import", tag = "images", params(ImportParams),
    request_body(content = Vec<u8>, description = "A tar: OCI image layout or docker save archive (optionally gzip)", content_type = "application/x-tar"),
    responses((status = 200, description = "NDJSON progress events", content_type = "application/x-ndjson"), (status = 400, body = skiff_api::ErrorBody)))]
pub async fn import_image(
    State(state): State<ApiState>,
    params: Result<Query<ImportParams>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let p = query(params)?;
    let tag = p.tag.as_deref().map(parse_ref).transpose()?;
    let staged = state.images.content().staging("upload");
    let mut file = tokio::fs::File::create(&staged)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("staging the upload: {e}")))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorCode::BadRequest, format!("reading the upload: {e}"))
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("staging the upload: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("staging the upload: {e}")))?;
    drop(file);
    let puller = state.images.puller.clone();
    Ok(ndjson(move |progress| async move {
        let result =
            skiff_image::import::import(&puller, &staged, tag.as_ref(), progress.clone()).await;
        let _ = tokio::fs::remove_file(&staged).await;
        if let Err(e) = result {
            progress(PullEvent::Error {
                message: skiff_telemetry::ErrorChain(&e).to_string(),
                reason: "import".into(),
            });
        }
    }))
}
