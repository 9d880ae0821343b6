//! The API's error body: `{"code", "message", "requestId", "details"}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problems::Problem;

/// A stable, machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ErrorCode {
    /// The request is malformed (not JSON/YAML, a bad query parameter).
    BadRequest,
    /// The manifest is well-formed but breaks a rule; `details` lists every problem.
    Invalid,
    /// No valid `Authorization: Bearer` token.
    Unauthorized,
    /// The object or route does not exist.
    NotFound,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The object changed since it was read (`resourceVersion`), or already exists.
    Conflict,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// The body's content type is neither JSON nor YAML.
    UnsupportedMediaType,
    /// A dependency or capacity is unavailable; retry later.
    Unavailable,
    /// A bug in skiff; the log has details under the request id.
    Internal,
}

impl ErrorCode {
    /// The HTTP status code for this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::Invalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The error code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The request id; the daemon's log has details under it.
    pub request_id: String,
    /// For `Invalid`: every problem found, with its field path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Problem>,
}
