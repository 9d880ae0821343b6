//! API errors: every failure becomes `{code, message, requestId, details}` with its status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_api::{ErrorBody, ErrorCode, Problem};
use tracing::{error, warn};

use skiff_control::controller::ControllerError;

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// The current request's id ("-" outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    /// The code (and through it the HTTP status).
    pub code: ErrorCode,
    /// The message for users.
    pub message: String,
    /// Every problem of an invalid manifest.
    pub details: Vec<Problem>,
}

impl ApiError {
    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            request_id: current_request_id(),
            details: self.details,
        };
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"skiff\""),
            );
        }
        response
    }
}

impl From<ControllerError> for ApiError {
    fn from(err: ControllerError) -> Self {
        match err {
            ControllerError::Invalid { problems } => {
                let message = match problems.len() {
                    1 => format!("the manifest is invalid: {}", problems[0]),
                    n => format!("the manifest is invalid: {n} problems"),
                };
                ApiError {
                    code: ErrorCode::Invalid,
                    message,
                    details: problems,
                }
            }
            ControllerError::BadRequest { message } => {
                ApiError::new(ErrorCode::BadRequest, message)
            }
            e @ ControllerError::NotFound { .. } => {
                ApiError::new(ErrorCode::NotFound, e.to_string())
            }
            ControllerError::Conflict { message } => ApiError::new(ErrorCode::Conflict, message),
            e @ ControllerError::Store(_) => {
                error!(request_id = %current_request_id(), error = %skiff_telemetry::ErrorChain(&e), "state store failed");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the state store is unavailable; the daemon log has details under this request id",
                )
            }
            e @ ControllerError::Secret(_) => {
                error!(request_id = %current_request_id(), error = %skiff_telemetry::ErrorChain(&e), "secret store failed");
                ApiError::new(
                    ErrorCode::Internal,
                    "the secret store failed; the daemon log has details under this request id",
                )
            }
            e @ ControllerError::Corrupt { .. } => {
                warn!(request_id = %current_request_id(), error = %skiff_telemetry::ErrorChain(&e), "unreadable stored value");
                ApiError::new(
                    ErrorCode::Internal,
                    "a stored object is unreadable; the daemon log has details under this request id",
                )
            }
        }
    }
}
