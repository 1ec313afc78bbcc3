//! The request path, as layers around small handlers. Outermost first, every request passes:
//!
//! 1. [`request_id`]: an id per request (the client's `X-Request-Id` when sane), echoed on the
//!    response; any error answer that is not JSON gets the one error shape.
//! 2. [`trace`]: when traces are exported, the request's root span (a child of the caller's
//!    `traceparent`); absent otherwise.
//! 3. [`metrics`]: every answer counted by plugin, route and status, early refusals included.
//! 4. [`cors`]: when `[cors]` allows other origins, preflights are answered here (before
//!    authentication and every limit) and answers carry the CORS headers.
//! 5. [`overload`]: a global in-flight limit (beyond it, 503 `overloaded` with `Retry-After`,
//!    at once: load is shed, not queued) and a request timeout. Health, readiness and metrics
//!    are exempt, so probes answer under overload.
//! 6. [`failures`]: a client address or key id with too many refused credentials in the last
//!    minute gets 429 at once, before its credential is looked at.
//! 7. The routes: the host's own endpoints (each concern owns its routes; [`admission`] applies
//!    the quota rules that name them; their handlers take the caller as a
//!    [`crate::auth::Principal`] extractor), and every other path to [`plugin::serve`], which
//!    reads top to bottom: the route (and its metrics label), the caller (401), authorisation
//!    (404/405, and 404 for a plugin it may not see, 403 for scopes), admission (quotas, 429),
//!    then the body, its schema and the plugin call.
//!
//! `http::app` stacks them: 1-3 as one middleware ([`front`]), then CORS, then 5-6 as one
//! ([`gate`]), then the router; without CORS nothing stands between the two, and 1-6 are one
//! middleware ([`whole`]). Each step is a function of its module that takes the rest of the
//! path as `next`; composing them in one middleware makes one boxed future per request where a
//! middleware per step made one each, and the steps still read in order.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::Metrics;

pub mod admission;
pub mod cors;
pub mod failures;
pub mod metrics;
pub mod overload;
pub mod plugin;
pub mod request_id;
pub mod trace;

/// What the metrics layer labels an answer with; set on the response by whoever resolved the
/// route. Absent: the request was refused before any route was known.
#[derive(Clone, Debug)]
pub struct RouteLabel {
    /// The plugin's registry name; empty for the host's own endpoints.
    pub plugin: std::sync::Arc<str>,
    /// `METHOD /template`, as the manifest (or the host's router) declares it.
    pub route: std::sync::Arc<str>,
}

/// Steps 1-3: the request id and error shape, the request's trace (when exported), metrics.
pub struct Front {
    pub metrics: Arc<Metrics>,
    /// Whether traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub tracing: bool,
}

pub async fn front(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    front.run(request, |request| next.run(request)).await
}

impl Front {
    async fn run<F, Fut>(&self, request: Request, next: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: Future<Output = Response>,
    {
        let (metrics, tracing) = (&*self.metrics, self.tracing);
        request_id::scope(request, |request| async move {
            if tracing {
                trace::request(request, |request| metrics::record(metrics, request, next)).await
            } else {
                metrics::record(metrics, request, next).await
            }
        })
        .await
    }
}

/// Steps 5-6: overload protection, then the throttle on refused credentials.
pub struct Gate {
    pub overload: overload::Overload,
    pub failures: failures::Failures,
}

pub async fn gate(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    gate.run(request, |request| next.run(request)).await
}

impl Gate {
    async fn run<F, Fut>(&self, request: Request, next: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: Future<Output = Response>,
    {
        overload::guard(&self.overload, request, |request| {
            failures::throttle(&self.failures, request, next)
        })
        .await
    }
}

/// Steps 1-3 and 5-6 as one middleware, for a host without CORS (nothing stands between them).
pub struct Whole {
    pub front: Front,
    pub gate: Gate,
}

pub async fn whole(State(whole): State<Arc<Whole>>, request: Request, next: Next) -> Response {
    let gate = &whole.gate;
    whole
        .front
        .run(request, |request| {
            gate.run(request, |request| next.run(request))
        })
        .await
}
