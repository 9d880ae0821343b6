//! The HTTP ingress: routes `<service>.<namespace>.<domain>` to a Service.
//!
//! # Limitations
//! This version cannot run instances, so the ingress answers every known Service with 503
//! and the reason from its status, and unknown hosts with 404. The router, activator and
//! autoscaler replace this module when serving arrives.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_api::object::ConditionStatus;

use crate::controller::{Controller, ControllerError};

/// What the ingress shares between requests.
#[derive(Clone)]
pub struct IngressState {
    /// The Service controller.
    pub controller: Controller,
    /// The domain of service hosts.
    pub domain: String,
}

/// The ingress router.
pub fn router(state: IngressState) -> Router {
    Router::new().fallback(route).with_state(state)
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// Splits `name.namespace.domain[:port]` into name and namespace.
pub fn parse_host<'a>(host: &'a str, domain: &str) -> Option<(&'a str, &'a str)> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let rest = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (name, namespace) = rest.split_once('.')?;
    if namespace.contains('.') || name.is_empty() || namespace.is_empty() {
        return None;
    }
    Some((name, namespace))
}

async fn route(State(state): State<IngressState>, request: Request) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
        .or_else(|| request.uri().host().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let Some((name, namespace)) = parse_host(&host, &state.domain) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "skiff: no service for host `{host}`; services answer at <service>.<namespace>.{}",
                state.domain
            ),
        );
    };
    match state.controller.get_service(namespace, name).await {
        Ok(service) => {
            let reason = service
                .condition("Ready")
                .filter(|c| c.status != ConditionStatus::True)
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "its instances run, but this release does not route requests to them yet (the router arrives next)".to_owned());
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "skiff: service `{name}` in namespace `{namespace}` cannot serve requests: {reason}"
                ),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("10"),
            );
            response
        }
        Err(ControllerError::NotFound { .. }) => plain(
            StatusCode::NOT_FOUND,
            format!("skiff: no service `{name}` in namespace `{namespace}`"),
        ),
        Err(e) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "skiff: cannot look up the service: {}",
                skiff_telemetry::ErrorChain(&e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts map to service and namespace, with or without a port.
    #[test]
    fn parses_hosts() {
        assert_eq!(
            parse_host("hello.default.localhost:8080", "localhost"),
            Some(("hello", "default"))
        );
        assert_eq!(
            parse_host("hello.default.localhost", "localhost"),
            Some(("hello", "default"))
        );
        assert_eq!(
            parse_host("hello.default.localhost.", "localhost"),
            Some(("hello", "default"))
        );
        assert_eq!(
            parse_host("a.b.example.com", "example.com"),
            Some(("a", "b"))
        );
        assert_eq!(parse_host("localhost:8080", "localhost"), None);
        assert_eq!(parse_host("x.y.z.localhost", "localhost"), None);
        assert_eq!(parse_host("hello.default.evil.com", "localhost"), None);
    }
}
