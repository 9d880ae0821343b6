//! Handlers for Secrets and ConfigMaps. A Secret's values never leave the daemon: reads show
//! its keys and their sizes.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use skiff_api::ErrorCode;
use skiff_api::config::{
    CORE_API_VERSION, ConfigKind, ConfigMapView, RotateKeyReport, SecretView, ValidatedConfig,
};
use skiff_api::manifest;
use skiff_api::object::List;
use skiff_api::wire::APPLY_RESULT_HEADER;
use skiff_control::controller::{ApplyResult, ControllerError};

use super::services::{WriteParams, check_segment, dry_run, query, read_manifest};
use super::{ApiError, ApiState};

fn list<T>(kind: &str, items: Vec<T>) -> List<T> {
    List {
        api_version: CORE_API_VERSION.to_owned(),
        kind: kind.to_owned(),
        items,
    }
}

/// Reads, checks and stores one Secret or ConfigMap from a request body.
async fn apply(
    state: &ApiState,
    kind: ConfigKind,
    namespace: &str,
    name: &str,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_segment("namespace", namespace)?;
    let dry = dry_run(&query(params)?.dry_run)?;
    let (_permit, doc) = read_manifest(state, headers, body).await?;
    let invalid = |problems| ControllerError::Invalid {
        problems: doc.place(problems, false),
    };
    let found = manifest::config_kind(&doc);
    if found != Some(kind) {
        let mut p = skiff_api::problems::Problems::new();
        p.invalid(
            &skiff_api::FieldPath::root().key("kind"),
            format!("this endpoint takes a `v1` {kind}"),
        );
        return Err(invalid(p).into());
    }
    let v = manifest::config_from_document(&doc, kind).map_err(invalid)?;
    if v.name != name {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "metadata.name `{}` does not match the name in the path, `{name}`",
                v.name
            ),
        ));
    }
    if v.namespace != namespace && v.manifest_namespace.is_some() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "metadata.namespace `{}` does not match the namespace in the path, `{namespace}`",
                v.namespace
            ),
        ));
    }
    let v = ValidatedConfig {
        namespace: namespace.to_owned(),
        ..v
    };
    let (result, metadata) = state.secrets.apply(v.clone(), dry).await?;
    let status = match result {
        ApplyResult::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut response = match kind {
        ConfigKind::Secret => (
            status,
            Json(SecretView::new(metadata, v.type_.clone(), &v.data)),
        )
            .into_response(),
        ConfigKind::ConfigMap => {
            (status, Json(ConfigMapView::new(metadata, &v.data))).into_response()
        }
    };
    response.headers_mut().insert(
        APPLY_RESULT_HEADER,
        HeaderValue::from_static(result.as_str()),
    );
    Ok(response)
}

/// Lists the Secrets of every namespace (keys and sizes, never values).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses((status = 200, body = List<SecretView>), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_all_secrets(
    State(state): State<ApiState>,
) -> Result<Json<List<SecretView>>, ApiError> {
    let items = state.secrets.list(ConfigKind::Secret, None).await?;
    Ok(Json(list(
        "SecretList",
        items
            .into_iter()
            .map(skiff_control::secrets::secret_view)
            .collect(),
    )))
}

/// Lists the Secrets of a namespace (keys and sizes, never values).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/secrets", tag = "secrets",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = List<SecretView>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_secrets(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<List<SecretView>>, ApiError> {
    check_segment("namespace", &namespace)?;
    let items = state
        .secrets
        .list(ConfigKind::Secret, Some(&namespace))
        .await?;
    Ok(Json(list(
        "SecretList",
        items
            .into_iter()
            .map(skiff_control::secrets::secret_view)
            .collect(),
    )))
}

/// Creates or replaces a Secret (`data` base64, `stringData` text; types `Opaque` and
/// `kubernetes.io/dockerconfigjson`). The answer shows keys and sizes only.
#[utoipa::path(put, path = "/api/v1/namespaces/{namespace}/secrets/{name}", tag = "secrets",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Secret"), WriteParams),
    request_body(content = skiff_api::config::SecretManifest, description = "A v1 Secret, as JSON or YAML", content_type = "application/json"),
    responses(
        (status = 200, body = SecretView, description = "Configured or unchanged", headers(("skiff-apply-result" = String))),
        (status = 201, body = SecretView, description = "Created", headers(("skiff-apply-result" = String))),
        (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 409, body = skiff_api::ErrorBody), (status = 413, body = skiff_api::ErrorBody)))]
pub async fn apply_secret(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    apply(
        &state,
        ConfigKind::Secret,
        &namespace,
        &name,
        params,
        &headers,
        body,
    )
    .await
}

/// Reads a Secret: its type, keys and the size of each value, never a value.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/secrets/{name}", tag = "secrets",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Secret")),
    responses((status = 200, body = SecretView), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_secret(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<SecretView>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(state.secrets.secret_view(&namespace, &name).await?))
}

/// Deletes a Secret. Running instances keep the values they started with.
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/secrets/{name}", tag = "secrets",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Secret")),
    responses((status = 204, description = "Deleted"), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn delete_secret(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_segment("namespace", &namespace)?;
    state
        .secrets
        .delete(ConfigKind::Secret, &namespace, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-encrypts every Secret under a new key, crash-safely; the old key is gone afterwards.
#[utoipa::path(post, path = "/api/v1/secrets/rotate-key", tag = "secrets",
    responses((status = 200, body = RotateKeyReport), (status = 401, body = skiff_api::ErrorBody), (status = 409, body = skiff_api::ErrorBody)))]
pub async fn rotate_key(State(state): State<ApiState>) -> Result<Json<RotateKeyReport>, ApiError> {
    Ok(Json(state.secrets.rotate_key().await?))
}

/// Lists the ConfigMaps of every namespace.
#[utoipa::path(get, path = "/api/v1/configmaps", tag = "configmaps",
    responses((status = 200, body = List<ConfigMapView>), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_all_config_maps(
    State(state): State<ApiState>,
) -> Result<Json<List<ConfigMapView>>, ApiError> {
    let items = state.secrets.list(ConfigKind::ConfigMap, None).await?;
    Ok(Json(list(
        "ConfigMapList",
        items
            .into_iter()
            .map(|o| ConfigMapView::new(o.metadata, &o.data))
            .collect(),
    )))
}

/// Lists the ConfigMaps of a namespace.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/configmaps", tag = "configmaps",
    params(("namespace" = String, Path, description = "The namespace")),
    responses((status = 200, body = List<ConfigMapView>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
pub async fn list_config_maps(
    State(state): State<ApiState>,
    Path(namespace): Path<String>,
) -> Result<Json<List<ConfigMapView>>, ApiError> {
    check_segment("namespace", &namespace)?;
    let items = state
        .secrets
        .list(ConfigKind::ConfigMap, Some(&namespace))
        .await?;
    Ok(Json(list(
        "ConfigMapList",
        items
            .into_iter()
            .map(|o| ConfigMapView::new(o.metadata, &o.data))
            .collect(),
    )))
}

/// Creates or replaces a ConfigMap (`data` text, `binaryData` base64).
#[utoipa::path(put, path = "/api/v1/namespaces/{namespace}/configmaps/{name}", tag = "configmaps",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The ConfigMap"), WriteParams),
    request_body(content = skiff_api::config::ConfigMapManifest, description = "A v1 ConfigMap, as JSON or YAML", content_type = "application/json"),
    responses(
        (status = 200, body = ConfigMapView, description = "Configured or unchanged", headers(("skiff-apply-result" = String))),
        (status = 201, body = ConfigMapView, description = "Created", headers(("skiff-apply-result" = String))),
        (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
        (status = 409, body = skiff_api::ErrorBody), (status = 413, body = skiff_api::ErrorBody)))]
pub async fn apply_config_map(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    apply(
        &state,
        ConfigKind::ConfigMap,
        &namespace,
        &name,
        params,
        &headers,
        body,
    )
    .await
}

/// Reads a ConfigMap.
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/configmaps/{name}", tag = "configmaps",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The ConfigMap")),
    responses((status = 200, body = ConfigMapView), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn get_config_map(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<ConfigMapView>, ApiError> {
    check_segment("namespace", &namespace)?;
    Ok(Json(
        state.secrets.config_map_view(&namespace, &name).await?,
    ))
}

/// Deletes a ConfigMap.
#[utoipa::path(delete, path = "/api/v1/namespaces/{namespace}/configmaps/{name}", tag = "configmaps",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The ConfigMap")),
    responses((status = 204, description = "Deleted"), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
pub async fn delete_config_map(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_segment("namespace", &namespace)?;
    state
        .secrets
        .delete(ConfigKind::ConfigMap, &namespace, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
