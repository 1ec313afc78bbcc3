//! The metrics layer: records every answer once, with the route it was resolved to (a
//! [`RouteLabel`] on the response) or empty labels when it was refused before that.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use super::RouteLabel;
use crate::telemetry::Metrics;

pub async fn record<F, Fut>(metrics: &Metrics, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let response = next(request).await;
    match response.extensions().get::<RouteLabel>() {
        Some(label) => metrics.record(
            &label.plugin,
            &label.route,
            response.status(),
            started.elapsed(),
        ),
        None => metrics.record_unrouted(response.status(), started.elapsed()),
    }
    response
}

/// For the host's own routes: labels the answer with the route template axum matched.
pub async fn label_host_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| Arc::<str>::from(format!("{} {}", request.method(), p.as_str())));
    let mut response = next.run(request).await;
    // A handler that ran a plugin route (an MCP tool call) labelled the answer with it.
    if let Some(route) = route
        && response.extensions().get::<RouteLabel>().is_none()
    {
        response.extensions_mut().insert(RouteLabel {
            plugin: Arc::from(""),
            route,
        });
    }
    response
}
