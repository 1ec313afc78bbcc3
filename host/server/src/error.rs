//! The one error type of the HTTP surface, and the one JSON shape every error has:
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
//!
//! The request id comes from a task-local set by the request-id layer (`pipeline::request_id`), so any handler can
//! return an [`ApiError`] without threading the id through. Responses that leave the app as
//! errors without this shape (from axum itself, or a plugin) are rewritten by the same middleware.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use infergate_nn::NnError;
use infergate_runtime::InvokeError;

tokio::task_local! {
    /// The id of the request being served.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than this route's limit of {limit} bytes"),
        )
    }
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the host is still loading its plugins and models",
        )
        .retry_after(Duration::from_secs(1))
    }

    /// The JSON body, with the current request's id.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "request_id": current_request_id(),
            }
        })
    }
}

/// On a response whose request the host refused for its credential: the failed-authentication
/// throttle (`pipeline::failures`) counts these, and not a plugin's own 401s.
#[derive(Clone, Copy, Debug)]
pub struct CredentialRefused;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.extensions_mut().insert(CredentialRefused);
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let message = e.to_string();
        match e {
            InvokeError::WallTimeout(_) | InvokeError::CpuTimeout => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "plugin_timeout", message)
            }
            InvokeError::OutOfMemory(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "plugin_out_of_memory",
                message,
            ),
            InvokeError::Trap(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_trap", message)
            }
            InvokeError::Model(e) => Self::from(e),
            InvokeError::QuotaExceeded { retry_after, .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
                    .retry_after(retry_after)
            }
            InvokeError::ResponseTooLarge(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "plugin_response_too_large",
                message,
            ),
            InvokeError::NoResponse | InvokeError::PluginError(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "plugin_error", message)
            }
        }
    }
}

/// Every way a model call fails, mapped once: busy models answer 503 with `Retry-After`, a
/// model that gave up 504.
impl From<NnError> for ApiError {
    fn from(e: NnError) -> Self {
        let message = e.to_string();
        match e {
            NnError::QueueFull { retry_after, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", message)
                    .retry_after(retry_after)
            }
            NnError::QueueTimeout { retry_after, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "queue_timeout", message)
                    .retry_after(retry_after)
            }
            NnError::Timeout { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "inference_timeout", message)
            }
            NnError::InvalidInput(_) => Self::bad_request(message),
            NnError::Backend(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", message)
            }
        }
    }
}
