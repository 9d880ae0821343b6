//! The REST API: JSON under `/api/v1/`, bearer-token authentication, request ids, size
//! limits, and the OpenAPI document that describes it.
//!
//! # Design
//! Handlers are thin: they parse the request into a controller call and map its typed error
//! to [`ApiError`]. Everything that can go wrong before a handler runs (no route, wrong
//! method, missing token, a body over the limit, a panic) is answered in the same
//! `{code, message, requestId}` shape, so clients need one error path.

pub mod error;
mod eventing;
mod images;
mod jobs;
pub(crate) mod observe;
pub mod openapi;
pub(crate) mod requests;
mod rollouts;
mod runtime;
mod secrets;
mod services;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use skiff_api::ErrorCode;
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::info;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
use error::REQUEST_ID;
use skiff_control::controller::Controller;

pub use skiff_api::wire::REQUEST_ID_HEADER;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The Service controller.
    pub controller: Controller,
    /// The bearer token clients must present.
    pub token: Arc<String>,
    /// Largest request body accepted (manifests; image uploads are not limited).
    pub max_body_bytes: usize,
    /// Images and their content store.
    pub images: Arc<skiff_control::images::Images>,
    /// Serializes garbage collection.
    pub gc_lock: Arc<tokio::sync::Mutex<()>>,
    /// Metrics, served at `/metrics`.
    pub metrics: Arc<skiff_telemetry::Metrics>,
    /// Running instances.
    pub instances: Arc<skiff_control::instances::InstanceManager>,
    /// The route reconciler: a write answers once it has routed by the write.
    pub routes: skiff_control::reconciler::Handle<String>,
    /// Manifests parsed and applied at once ([`manifest_permits`]): parsing costs several
    /// times a body's size in memory, so this bounds the daemon's memory under parallel
    /// applies.
    pub manifest_permits: Arc<tokio::sync::Semaphore>,
    /// Secrets and ConfigMaps.
    pub secrets: Arc<skiff_control::secrets::SecretStore>,
    /// SLOs, budgets and alerts.
    pub slo: Arc<skiff_control::slo::SloEngine>,
    /// The metrics history.
    pub history: skiff_control::history::SharedHistory,
    /// The dashboard (`/ui/`): its logins and what it shows beside the API's figures.
    pub ui: Arc<crate::ui::Ui>,
    /// Jobs and their executions.
    pub jobs: Arc<skiff_control::jobs::Jobs>,
    /// Brokers, Triggers and PingSources (`None` without a data directory).
    pub eventing: Option<Arc<skiff_control::eventing::Eventing>>,
    /// Rollouts.
    pub rollouts: skiff_control::rollout::Rollouts,
}

/// The manifests one daemon parses at once: one per core (parsing is CPU-bound, more at
/// once would only hold more memory), at least two.
pub fn manifest_permits() -> Arc<tokio::sync::Semaphore> {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    Arc::new(tokio::sync::Semaphore::new(n))
}

/// The documented API routes: each handler's path and method come from its
/// `#[utoipa::path]` attribute, so the router and the OpenAPI document cannot disagree.
pub(crate) fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(services::version))
        .routes(routes!(openapi::serve))
        .routes(routes!(services::list_all_services))
        .routes(routes!(services::list_all_revisions))
        .routes(routes!(services::list_services, services::create_service))
        .routes(routes!(
            services::get_service,
            services::apply_service,
            services::delete_service
        ))
        .routes(routes!(services::list_revisions))
        .routes(routes!(services::get_revision))
        .routes(routes!(rollouts::get_rollout))
        .routes(routes!(rollouts::rollout_command))
        .routes(routes!(rollouts::rollback))
        .routes(routes!(images::list_images))
        .routes(routes!(images::inspect_image))
        .routes(routes!(images::remove_image))
        .routes(routes!(images::prune_images))
        .routes(routes!(images::pull_image))
        .routes(routes!(images::import_image))
        .routes(routes!(
            runtime::set_scale,
            runtime::get_scale,
            runtime::clear_scale
        ))
        .routes(routes!(runtime::list_instances))
        .routes(routes!(observe::list_alerts))
        .routes(routes!(observe::list_slos))
        .routes(routes!(observe::slo_rules))
        .routes(routes!(observe::service_metrics))
        .routes(routes!(observe::top))
        .routes(routes!(runtime::logs))
        .routes(routes!(requests::request_log))
        .routes(routes!(requests::request_trail))
        .routes(routes!(crate::ui::create_login))
        .routes(routes!(eventing::list_all_brokers))
        .routes(routes!(eventing::list_brokers))
        .routes(routes!(
            eventing::get_broker,
            eventing::apply_broker,
            eventing::delete_broker
        ))
        .routes(routes!(eventing::list_all_triggers))
        .routes(routes!(eventing::list_triggers))
        .routes(routes!(
            eventing::get_trigger,
            eventing::apply_trigger,
            eventing::delete_trigger
        ))
        .routes(routes!(eventing::list_all_ping_sources))
        .routes(routes!(eventing::list_ping_sources))
        .routes(routes!(
            eventing::get_ping_source,
            eventing::apply_ping_source,
            eventing::delete_ping_source
        ))
        .routes(routes!(secrets::list_all_secrets))
        .routes(routes!(secrets::rotate_key))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(
            secrets::get_secret,
            secrets::apply_secret,
            secrets::delete_secret
        ))
        .routes(routes!(secrets::list_all_config_maps))
        .routes(routes!(secrets::list_config_maps))
        .routes(routes!(
            secrets::get_config_map,
            secrets::apply_config_map,
            secrets::delete_config_map
        ))
        .routes(routes!(jobs::list_all_jobs))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job, jobs::apply_job, jobs::delete_job))
        .routes(routes!(jobs::run_job))
        .routes(routes!(jobs::list_executions))
        .routes(routes!(jobs::get_execution, jobs::delete_execution))
        .routes(routes!(jobs::cancel_execution))
        .routes(routes!(jobs::execution_logs))
}

/// Builds the API router.
pub fn router(state: ApiState) -> Router {
    let (api, _) = documented_routes().split_for_parts();
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(serve_metrics))
        .merge(crate::ui::routes(state.clone()))
        .merge(api)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                ErrorCode::Internal,
                "the daemon hit a bug handling this request; it keeps running, and its log has details under this request id",
            )
            .into_response()
        }))
        .layer(middleware::from_fn(request_context))
}

/// Prometheus metrics: OpenMetrics text (with exemplars) for a scraper that asks for it, as
/// Prometheus does, else the Prometheus text format 0.0.4 (`curl … | promtool check
/// metrics`). Like `/healthz` it needs no token: it is meant for a scraper on the same
/// machine, and the API listens on loopback by default.
async fn serve_metrics(State(state): State<ApiState>, headers: header::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.render_prometheus(),
        )
            .into_response()
    }
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no API route {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

fn acceptable_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Gives every request an id (the client's, when it is sane), logs it, and returns it.
async fn request_context(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    let status = response.status().as_u16();
    if path != "/healthz" {
        info!(
            request_id = %id,
            method = %method,
            path = %path,
            status,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "api request"
        );
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Requires `Authorization: Bearer <token>`, compared in constant time.
async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(t) if bool::from(t.as_bytes().ct_eq(state.token.as_bytes())) => next.run(request).await,
        Some(_) => ApiError::new(ErrorCode::Unauthorized, "the API token is not valid").into_response(),
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "this API needs `Authorization: Bearer <token>`; the token is in the daemon's data directory (file `token`)",
        )
        .into_response(),
    }
}
