//! The plugin's error type, rendered as the product's one error shape:
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}` with a fitting status.

use std::fmt;

use crate::bindings::wasi::nn::errors::{Error as NnError, ErrorCode};

/// The result of a handler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a handler returns; the SDK turns it into a JSON error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: u16,
    code: String,
    message: String,
}

impl Error {
    /// An error with any status and code (codes are `snake_case`, e.g. `"unsupported_language"`).
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 422 `invalid_request`: the body is well-formed JSON but its content is not acceptable.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(422, "invalid_request", message)
    }

    /// 400 `invalid_request`: the request itself is malformed (bad query, bad JSON).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 404 `model_not_found`: the model does not exist or this plugin was not granted it.
    pub fn model_not_found(name: &str) -> Self {
        Self::new(
            404,
            "model_not_found",
            format!("model '{name}' is not available to this plugin"),
        )
    }

    /// 500 `backend_error`: the inference backend failed.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(500, "backend_error", message)
    }

    /// 500 `internal_error`: a bug in the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The machine-readable code, such as `invalid_request`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body of the error response.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message, "request_id": request_id }
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for Error {}

/// `not-found` becomes `model_not_found` (404); every other wasi-nn error is a `backend_error`.
impl From<NnError> for Error {
    fn from(err: NnError) -> Self {
        let code = err.code();
        let data = err.data();
        match code {
            ErrorCode::NotFound => Self::new(404, "model_not_found", data),
            other => Self::backend(format!("wasi-nn {}: {data}", nn_code_name(other))),
        }
    }
}

fn nn_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}
