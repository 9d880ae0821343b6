//! Handlers over the metrics history: alerts firing, SLO reports, the SLOs as Prometheus
//! rules, a Service's metrics over time, and `top`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use skiff_api::ErrorCode;
use skiff_api::wire::{AlertList, MetricsPoint, ServiceMetrics, SloList, Top, TopRow};
use skiff_control::telemetry::Prices;
use skiff_history::{Sample, ServiceKey};
use utoipa::IntoParams;

use super::runtime::{query, since_cutoff};
use super::{ApiError, ApiState};

/// Most points a metrics answer has (the step grows to fit).
const MAX_POINTS: i64 = 360;
/// The window `top` computes rates over.
const TOP_WINDOW: i64 = 60;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, e.to_string())
}

/// The alerts firing now, from the SLOs and budgets the daemon evaluates every 10 s.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "observability",
    responses((status = 200, body = AlertList)))]
pub async fn list_alerts(State(state): State<ApiState>) -> Json<AlertList> {
    Json(AlertList {
        alerts: state.slo.firing(),
    })
}

/// Every Service's SLO and budget as last evaluated.
#[utoipa::path(get, path = "/api/v1/slos", tag = "observability",
    responses((status = 200, body = SloList)))]
pub async fn list_slos(State(state): State<ApiState>) -> Json<SloList> {
    let services = state
        .slo
        .services(None)
        .into_iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    Json(SloList { services })
}

/// The SLOs of every Service as Prometheus recording and alerting rules (Sloth's names),
/// for a Prometheus that scrapes `/metrics`.
#[utoipa::path(get, path = "/api/v1/slos/rules", tag = "observability",
    responses((status = 200, description = "A Prometheus rules file", content_type = "application/yaml")))]
pub async fn slo_rules(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        state.slo.prometheus_rules().await,
    )
        .into_response()
}

/// Query of a metrics request.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsParams {
    /// From when: a duration (`1h`, `30m`) or an RFC 3339 time [default: 1h].
    #[serde(default)]
    pub since: Option<String>,
    /// Seconds per point, a multiple of 10 [default: what fits the range in 60 points].
    #[serde(default)]
    pub step: Option<i64>,
}

pub(crate) fn point(at: i64, s: &Sample, prices: Prices) -> MetricsPoint {
    MetricsPoint {
        at: jiff::Timestamp::from_second(at)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        requests: s.total(),
        errors: s.errors(),
        p50: s.quantile(0.5),
        p95: s.quantile(0.95),
        p99: s.quantile(0.99),
        cold_starts: s.cold_starts,
        throttled: s.throttled,
        instances: s.instances_max,
        cpu_seconds: s.cpu_used_seconds,
        cost: cost(s, prices),
    }
}

pub(crate) fn cost(s: &Sample, p: Prices) -> f64 {
    s.vcpu_seconds * p.vcpu_second
        + s.gib_seconds * p.gib_second
        + s.total() as f64 * p.million_requests / 1e6
}

/// A Service's requests, latency, cold starts, instances and cost over time, from the
/// daemon's history (10 s resolution for a day, 5 min for 35 days).
#[utoipa::path(get, path = "/api/v1/namespaces/{namespace}/services/{name}/metrics", tag = "observability",
    params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The Service"), MetricsParams),
    responses((status = 200, body = ServiceMetrics), (status = 400, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody), (status = 503, body = skiff_api::ErrorBody)))]
pub async fn service_metrics(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    params: Result<Query<MetricsParams>, QueryRejection>,
) -> Result<Json<ServiceMetrics>, ApiError> {
    let p = query(params)?;
    state.controller.get_service(&namespace, &name).await?;
    let now = jiff::Timestamp::now().as_second();
    let from = since_cutoff(p.since.as_deref().unwrap_or("1h"))?.as_second();
    let span = (now - from).max(10);
    let step = match p.step {
        Some(s) if s >= 10 && s % 10 == 0 => s,
        Some(s) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("step: {s} must be a multiple of 10 seconds"),
            ));
        }
        None => ((span / 60 + 9) / 10).max(1) * 10,
    };
    if span / step > MAX_POINTS {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{} points of {step}s: at most {MAX_POINTS}; use a larger step",
                span / step
            ),
        ));
    }
    let key = ServiceKey::new(&namespace, &name);
    let range = state
        .history
        .with(move |h| h.range(&key, None, from, now + 1, step))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    let prices = state.slo.prices();
    Ok(Json(ServiceMetrics {
        namespace,
        service: name,
        step_seconds: step,
        points: range.iter().map(|(t, s)| point(*t, s, prices)).collect(),
    }))
}

/// Every Service over the last minute: requests per second, success, latency, instances,
/// cold starts and cost per hour.
#[utoipa::path(get, path = "/api/v1/top", tag = "observability",
    responses((status = 200, body = Top), (status = 503, body = skiff_api::ErrorBody)))]
pub async fn top(State(state): State<ApiState>) -> Result<Json<Top>, ApiError> {
    let now = jiff::Timestamp::now().as_second();
    let rows = state
        .history
        .with(move |h| {
            let mut rows = Vec::new();
            for key in h.services()? {
                let s = h.sum(&key, None, now - TOP_WINDOW, now + 1)?;
                let latest = h.sum(&key, None, now - 20, now + 1)?;
                rows.push((key, s, latest.instances_max));
            }
            Ok(rows)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    let prices = state.slo.prices();
    let services = rows
        .into_iter()
        .map(|(k, s, instances)| {
            let total = s.total();
            let share = |n: u64| (total > 0).then(|| n as f64 / total as f64);
            TopRow {
                namespace: k.namespace,
                service: k.service,
                rps: total as f64 / TOP_WINDOW as f64,
                success: share(total - s.errors()),
                p50: s.quantile(0.5),
                p95: s.quantile(0.95),
                p99: s.quantile(0.99),
                instances,
                cold_start_rate: share(s.cold_starts),
                cost_per_hour: cost(&s, prices) * 3600.0 / TOP_WINDOW as f64,
            }
        })
        .collect();
    Ok(Json(Top {
        window_seconds: TOP_WINDOW,
        services,
    }))
}
