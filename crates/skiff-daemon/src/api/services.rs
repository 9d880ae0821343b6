//! Handlers for Services and Revisions.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use skiff_api::ErrorCode;
use skiff_api::manifest::{self, Document};
use skiff_api::object::{DeleteResponse, List, Revision, Service};
use skiff_api::wire::{APPLY_RESULT_HEADER, CREATED_REVISION_HEADER, VersionInfo};
use utoipa::IntoParams;

use super::{ApiError, ApiState};
use skiff_control::controller::{ApplyMode, ApplyOutcome};

/// Query parameters of writes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// `All` (or `true`): validate and compute the result without storing anything.
    #[serde(default)]
    pub dry_run: Option<String>,
}

/// Query parameters of deletes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// `All` (or `true`): say what would be deleted without deleting.
    #[serde(default)]
    pub dry_run: Option<String>,
    /// Delete only if the Service is still at this version.
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// Query parameters of revision lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevisionListParams {
    /// Only the revisions of this Service.
    #[serde(default)]
    pub service: Option<String>,
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad query parameters: {}", e.body_text()),
        )
    })
}

pub(super) fn dry_run(value: &Option<String>) -> Result<bool, ApiError> {
    match value.as_deref() {
        None | Some("false") => Ok(false),
        Some("All") | Some("true") => Ok(true),
        Some(other) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("dryRun=`{other}` is not understood: use `All`"),
        )),
    }
}

pub(super) fn check_segment(what: &str, value: &str) -> Result<(), ApiError> {
    skiff_api::names::check_dns1123_label(value).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid {what} in the request path: {e}"),
        )
    })
}

/// Reads a manifest body (JSON or YAML, one document) within the size limit, and parses it
/// once a manifest permit is free (held until the apply is done).
pub(super) async fn read_manifest(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(tokio::sync::OwnedSemaphorePermit, Document), ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than {} bytes",
                state.max_body_bytes
            ),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > state.max_body_bytes
    {
        return Err(too_large());
    }
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => {}
        Some(ct) => {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if !matches!(
                essence.as_str(),
                "application/json"
                    | "application/yaml"
                    | "application/x-yaml"
                    | "text/yaml"
                    | "text/x-yaml"
            ) {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!(
                        "content type `{ct}` is not accepted: send application/json or application/yaml"
                    ),
                ));
            }
        }
    }
    let bytes = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("could not read the request body: {e}"),
            ));
        }
    };
    let text = String::from_utf8(Vec::from(bytes))
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the request body is not UTF-8 text"))?;
    let permit = state
        .manifest_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the daemon is shutting down"))?;
    // Parsing a large manifest takes a while: off the async workers.
    let parsed = tokio::task::spawn_blocking(move || manifest::parse_documents(&text))
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "parsing the manifest failed"))?;
    let mut docs = parsed.map_err(|p| ApiError {
        code: ErrorCode::Invalid,
        message: format!("the request body is not a manifest: {p}"),
        details: vec![p],
    })?;
    match docs.len() {
        1 => Ok((permit, docs.remove(0))),
        0 => Err(ApiError::new(
            ErrorCode::BadRequest,
            "the request body is empty",
        )),
        n => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("the request body holds {n} documents; send one Service per request"),
        )),
    }
}

/// Refuses `imagePullSecrets` (at `at`, the pod spec's path: `spec.template.spec` in a
/// Service) naming a stored Secret that is not of type `kubernetes.io/dockerconfigjson` (a
/// Secret not stored yet is allowed: it may come later, and a pull without it may not need
/// it).
pub(super) async fn check_pull_secrets(
    state: &ApiState,
    namespace: &str,
    doc: &Document,
    at: &str,
) -> Result<(), ApiError> {
    let pointer = format!("/{}/imagePullSecrets", at.replace('.', "/"));
    let Some(list) = doc
        .value
        .pointer(&pointer)
        .and_then(serde_json::Value::as_array)
    else {
        return Ok(());
    };
    let mut problems = skiff_api::problems::Problems::new();
    for (i, r) in list.iter().enumerate() {
        let Some(name) = r.get("name").and_then(serde_json::Value::as_str) else {
            continue;
        };
        if skiff_api::names::check_dns1123_subdomain(name).is_err() {
            continue;
        }
        let Some(secret) = state
            .secrets
            .get(skiff_api::config::ConfigKind::Secret, namespace, name)
            .await?
        else {
            continue;
        };
        if secret.type_ != skiff_api::config::SECRET_TYPE_DOCKER_CONFIG_JSON {
            problems.invalid(
                &skiff_api::FieldPath::parse(&format!("{at}.imagePullSecrets"))
                    .index(i)
                    .key("name"),
                format!(
                    "Secret `{name}` is of type `{}`; an image pull secret must be `{}`",
                    secret.type_,
                    skiff_api::config::SECRET_TYPE_DOCKER_CONFIG_JSON
                ),
            );
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(skiff_control::controller::ControllerError::Invalid {
        problems: doc.place(problems, false),
    }
    .into())
}

fn apply_response(outcome: ApplyOutcome) -> Response {
    let status = match outcome.result {
        skiff_control::controller::ApplyResult::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut response = (status, Json(outcome.service)).into_response();
    response.headers_mut().insert(
        APPLY_RESULT_HEADER,
        HeaderValue::from_static(outcome.result.as_str()),
    );
    if let Some(rev) = outcome.created_revision
        && let Ok(v) = HeaderValue::from_str(&rev)
    {
        response.headers_mut().insert(CREATED_REVISION_HEADER, v);
    }
    // As the Kubernetes API server does: `Warning: 299 - "text"` (RFC 7234), one per warning.
    for w in &outcome.warnings {
        let text = w.replace(['"', '\\'], "'");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// The daemon's version.
#[utoipa::path(get, path = "/api/v1/version", tag = "meta",
    responses((status = 200, body = VersionInfo), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store_schema_version: skiff_store::SCHEMA_VERSION,
    })
}

/// Lists the Services of every namespace.
#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    responses((status = 200, body = List<Service>), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_all_services(
    State(state): State<ApiState>,
) -> Result<Json<List<Service>>, ApiError> {
    Ok(Json(List::new(
        "ServiceList",
        state.controller.list_services(None).await?,
    )))
}

/// Lists the Services of a namespace.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services", tag = "services",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = List<Service>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_services(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<List<Service>>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(List::new(
        "ServiceList",
        state.controller.list_services(Some(&namespace)).await?,
    )))
}

/// Creates a Service; `metadata.generateName` may stand in for `metadata.name`.
#[utoipa::path(post, path = "/api/v1/namespaces/{namespace}/services", tag = "services",
    params(("namespace" = String, Path, description = "The namespace"), WriteParams),
    request_body(content = skiff_api::ServiceManifest, description = "A Knative Service, as JSON or YAML", content_type = "application/json"),
    responses(
        (status = 201, body = Service, description = "Created", headers(("skiff-apply-result" = String), ("skiff-created-revision" = String), ("warning" = String, description = "One per setting skiff accepts that changes nothing here, as `299 - \"path: why\"`"))),
        (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 409, body = skiff_api::ErrorBody), (status = 413, body = skiff_api::ErrorBody)))]
pub async fn create_service(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_segment("namespace", &namespace)?;
    let params = query(params)?;
    let dry = dry_run(&params.dry_run)?;
    let (_permit, doc) = read_manifest(&state, &headers, body).await?;
    check_pull_secrets(&state, &namespace, &doc, "spec.template.spec").await?;
    let outcome = state
        .controller
        .apply(&namespace, None, &doc, ApplyMode::CreateOnly, dry)
        .await?;
    if !dry {
        routed(&state, &outcome.service.metadata.resource_version).await;
    }
    Ok(apply_response(outcome))
}

/// Applies a Service: creates it, or makes the stored one match the manifest. A change to
/// `spec.template` stamps a new Revision. With `metadata.resourceVersion`, applies only if
/// the Service is still at that version (409 otherwise).
#[utoipa::path(put, path = "/api/v1/namespaces/{namespace}/services/{name}", tag = "services",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"), WriteParams),
    request_body(content = skiff_api::ServiceManifest, description = "A Knative Service, as JSON or YAML", content_type = "application/json"),
    responses(
        (status = 200, body = Service, description = "Configured or unchanged", headers(("skiff-apply-result" = String), ("skiff-created-revision" = String), ("warning" = String, description = "One per setting skiff accepts that changes nothing here, as `299 - \"path: why\"`"))),
        (status = 201, body = Service, description = "Created", headers(("skiff-apply-result" = String), ("skiff-created-revision" = String), ("warning" = String, description = "One per setting skiff accepts that changes nothing here, as `299 - \"path: why\"`"))),
        (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 409, body = skiff_api::ErrorBody), (status = 413, body = skiff_api::ErrorBody),
        (status = 415, body = skiff_api::ErrorBody)))]
pub async fn apply_service(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_segment("namespace", &namespace)?;
    let params = query(params)?;
    let dry = dry_run(&params.dry_run)?;
    let (_permit, doc) = read_manifest(&state, &headers, body).await?;
    check_pull_secrets(&state, &namespace, &doc, "spec.template.spec").await?;
    let outcome = state
        .controller
        .apply(
            &namespace,
            Some(&name),
            &doc,
            ApplyMode::CreateOrReplace,
            dry,
        )
        .await?;
    if !dry {
        routed(&state, &outcome.service.metadata.resource_version).await;
    }
    Ok(apply_response(outcome))
}

/// Reads a Service.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}", tag = "services",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service")),
    responses((status = 200, body = Service), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_service(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Service>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(state.controller.get_service(&namespace, &name).await?))
}

/// Deletes a Service and all its revisions.
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/services/{name}", tag = "services",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"), DeleteParams),
    responses((status = 200, body = DeleteResponse), (status = 401, body = skiff_api::ErrorBody),
        (status = 404, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn delete_service(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<Json<DeleteResponse>, ApiError> {
    check_segment("namespace", &namespace)?;
    let params = query(params)?;
    let dry = dry_run(&params.dry_run)?;
    let rv = match params.resource_version.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("resourceVersion=`{v}` is not a resource version"),
            )
        })?),
    };
    let (deleted, revision) = state
        .controller
        .delete_service(&namespace, &name, rv, dry)
        .await?;
    if !dry {
        routed(&state, &revision.to_string()).await;
    }
    Ok(Json(deleted))
}

/// How long a write waits for the router to follow it.
const ROUTED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the route reconciler has routed by the store revision a write committed, so
/// the ingress agrees with the answer the client gets. The write stands if this times out
/// (the reconciler routes by it when it can).
pub(crate) async fn routed(state: &ApiState, resource_version: &str) {
    let Ok(revision) = resource_version.parse::<i64>() else {
        return;
    };
    if !state.routes.wait_observed(revision, ROUTED_DEADLINE).await {
        tracing::warn!(
            store_revision = revision,
            deadline_seconds = ROUTED_DEADLINE.as_secs(),
            "the router had not followed a write by the deadline; answering anyway"
        );
    }
}

/// Lists the revisions of every namespace.
#[utoipa::path(get, path = "/api/v1/revisions", tag = "revisions",
    params(RevisionListParams),
    responses((status = 200, body = List<Revision>), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_all_revisions(
    State(state): State<ApiState>,
    params: Result<Query<RevisionListParams>, QueryRejection>,
) -> Result<Json<List<Revision>>, ApiError> {
    let params = query(params)?;
    let items = state
        .controller
        .list_revisions(None, params.service.as_deref())
        .await?;
    Ok(Json(List::new("RevisionList", items)))
}

/// Lists the revisions of a namespace, optionally of one Service.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/revisions", tag = "revisions",
    params(("namespace" = String, Path, description = "The namespace"), RevisionListParams),
    responses((status = 200, body = List<Revision>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_revisions(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
    params: Result<Query<RevisionListParams>, QueryRejection>,
) -> Result<Json<List<Revision>>, ApiError> {
    check_segment("namespace", &namespace)?;
    let params = query(params)?;
    let items = state
        .controller
        .list_revisions(Some(&namespace), params.service.as_deref())
        .await?;
    Ok(Json(List::new("RevisionList", items)))
}

/// Reads a revision.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/revisions/{name}", tag = "revisions",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The revision")),
    responses((status = 200, body = Revision), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_revision(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Revision>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(
        state.controller.get_revision(&namespace, &name).await?,
    ))
}
