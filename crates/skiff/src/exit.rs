//! Exit codes, mapped in one place (documented in the README).

use skiff_api::ErrorCode;
use skiff_client::ClientError;

/// Success.
pub const OK: i32 = 0;
/// Any other failure (a server-side error, an I/O error).
pub const FAILURE: i32 = 1;
/// Wrong command-line usage (clap's own code).
pub const USAGE: i32 = 2;
/// The manifest or request is invalid.
pub const INVALID: i32 = 3;
/// The object does not exist.
pub const NOT_FOUND: i32 = 4;
/// A conflict: the object changed since it was read, or already exists.
pub const CONFLICT: i32 = 5;
/// The API token is missing or wrong.
pub const UNAUTHORIZED: i32 = 6;
/// The daemon cannot be reached.
pub const UNREACHABLE: i32 = 7;

/// A failure with the exit code it maps to. The message is already printed when `printed`.
#[derive(Debug)]
pub struct Exit {
    /// The process exit code.
    pub code: i32,
    /// What to print on stderr (empty when already printed).
    pub message: String,
}

impl Exit {
    /// A failure with a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }
}

/// The exit code for an API error code.
pub fn for_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::Invalid
        | ErrorCode::BadRequest
        | ErrorCode::PayloadTooLarge
        | ErrorCode::UnsupportedMediaType => INVALID,
        ErrorCode::NotFound => NOT_FOUND,
        ErrorCode::Conflict => CONFLICT,
        ErrorCode::Unauthorized => UNAUTHORIZED,
        ErrorCode::MethodNotAllowed | ErrorCode::Unavailable | ErrorCode::Internal => FAILURE,
    }
}

impl From<ClientError> for Exit {
    fn from(err: ClientError) -> Self {
        let code = match &err {
            ClientError::Api { body, .. } => for_code(body.code),
            ClientError::Connect { .. } => UNREACHABLE,
            ClientError::BadServer(_) => USAGE,
            _ => FAILURE,
        };
        let mut message = skiff_telemetry::ErrorChain(&err).to_string();
        match &err {
            ClientError::Api { body, .. } => {
                if body.code == ErrorCode::Unauthorized {
                    message.push_str("\nhint: on the daemon's machine the CLI reads the token from the data directory; elsewhere pass --token or set SKIFF_TOKEN");
                }
                if body.code == ErrorCode::Internal || body.code == ErrorCode::Unavailable {
                    message.push_str(&format!(" (request id {})", body.request_id));
                }
            }
            ClientError::Connect { .. } => {
                message.push_str("\nhint: is `skiff server` running? point the CLI at it with --server or SKIFF_SERVER");
            }
            _ => {}
        }
        Exit { code, message }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(err: anyhow::Error) -> Self {
        Exit::new(FAILURE, format!("{err:#}"))
    }
}
