//! The root span of every request when traces are exported (`crate::telemetry::trace`): a
//! server span named by method and route, a child of the caller's `traceparent` when it sends
//! one, holding every span the request makes (auth, admission, plugin, model calls, outbound
//! requests). Not installed when tracing is off.

use std::future::Future;

use axum::extract::Request;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::RouteLabel;
use crate::error::current_request_id;
use crate::telemetry::trace::{TARGET, continue_trace};

pub async fn request<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.kind = "server",
        otel.name = %request.method(),
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        infergate.request_id = %current_request_id(),
        http.route = tracing::field::Empty,
        infergate.plugin = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    continue_trace(&span, request.headers());
    let response = next(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(label) = response.extensions().get::<RouteLabel>() {
        // `METHOD /template`: the route, not the path, names the span (OpenTelemetry's HTTP
        // conventions: few distinct names). The span has started (its children needed its
        // context), so the name is changed on the OpenTelemetry span itself.
        span.context().span().update_name(label.route.to_string());
        if let Some((_, template)) = label.route.split_once(' ') {
            span.record("http.route", template);
        }
        if !label.plugin.is_empty() {
            span.record("infergate.plugin", label.plugin.as_ref());
        }
    }
    response
}
