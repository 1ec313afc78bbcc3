//! The HTTP surface: [`app`] puts together the host's own endpoints (health, readiness,
//! metrics, the OpenAPI document and docs page here; the admin, tenant, OAuth and MCP APIs from
//! their concerns), the plugin routes, and the layers of [`crate::pipeline`] around them all.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use infergate_runtime::engine::CacheOutcome;
use serde_json::{Value, json};

use crate::auth::Auth;
use crate::auth::operator::{Admin, MetricsReader};
use crate::error::ApiError;
use crate::pipeline::admission::HostAdmission;
use crate::pipeline::failures::Failures;
use crate::pipeline::overload::Overload;
use crate::pipeline::{self, admission, metrics, plugin};
use crate::quota::Quotas;
use crate::registry::{Mounted, Registry};
use crate::state::AppState;
use crate::telemetry::Metrics;

/// What the app takes from the config besides the state.
pub struct AppConfig {
    /// Largest plugin upload through the admin API.
    pub max_upload_bytes: usize,
    /// Largest plugin upload through the tenant API.
    pub tenant_max_upload_bytes: usize,
    /// Refused credentials per client address or key id and minute (`[auth]`).
    pub max_auth_failures_per_minute: u32,
    /// `[cors]`, when on.
    pub cors: Option<tower_http::cors::CorsLayer>,
}

pub fn app(state: AppState, overload: Overload, limits: &AppConfig) -> Router {
    let host = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi))
        .route(
            "/docs",
            get(|| async { axum::response::Html(crate::openapi::DOCS_PAGE) }),
        )
        .merge(crate::admin::routes(limits.max_upload_bytes))
        .merge(crate::admin::tenant_routes(limits.tenant_max_upload_bytes))
        .merge(crate::auth::routes())
        .merge(crate::mcp::routes())
        .route_layer(middleware::from_fn_with_state(
            HostAdmission {
                quotas: state.quotas.clone(),
                auth: state.auth.clone(),
            },
            admission::admit,
        ))
        .route_layer(middleware::from_fn(metrics::label_host_route));
    let gate = pipeline::Gate {
        overload,
        failures: Failures::new(limits.max_auth_failures_per_minute, state.quotas.clone()),
    };
    let front = pipeline::Front {
        metrics: state.metrics.clone(),
        tracing: crate::telemetry::trace::enabled(),
    };
    let app = host.fallback(plugin::serve).with_state(state.clone());
    match limits.cors.clone() {
        Some(cors) => app
            .layer(middleware::from_fn_with_state(
                Arc::new(gate),
                pipeline::gate,
            ))
            .layer(cors)
            .layer(middleware::from_fn_with_state(
                Arc::new(front),
                pipeline::front,
            )),
        None => app.layer(middleware::from_fn_with_state(
            Arc::new(pipeline::Whole { front, gate }),
            pipeline::whole,
        )),
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready or not, for anyone; which plugins are loaded and whether each came from the compile
/// cache only for the operator (the names include tenants' private plugins).
async fn readyz(admin: Result<Admin, ApiError>, State(registry): State<Arc<Registry>>) -> Response {
    if registry.draining() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the host is shutting down: it finishes what it has, send new requests elsewhere",
        )
        .into_response();
    }
    match registry.snapshot() {
        Some(_) if admin.is_err() => axum::Json(json!({"status": "ready"})).into_response(),
        Some(snapshot) => {
            let plugins: Vec<Value> = snapshot
                .plugins
                .iter()
                .map(|m| {
                    let compiled = match m.plugin.cache {
                        CacheOutcome::Hit => "cache",
                        CacheOutcome::Miss | CacheOutcome::Disabled => "compiled",
                    };
                    json!({"name": m.name, "version": m.plugin.manifest.version, "compiled": compiled})
                })
                .collect();
            axum::Json(json!({"status": "ready", "plugins": plugins})).into_response()
        }
        None => ApiError::not_ready().into_response(),
    }
}

async fn render_metrics(
    _: MetricsReader,
    State(metrics): State<Arc<Metrics>>,
    State(registry): State<Arc<Registry>>,
    State(quotas): State<Arc<Quotas>>,
) -> Response {
    let models = registry.models().await;
    let text = metrics.render(&models, quotas.store_errors());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi(
    State(auth): State<Arc<Auth>>,
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = registry.snapshot().ok_or_else(ApiError::not_ready)?;
    // Each caller sees the plugins visible to its tenant; anonymous callers the public ones.
    let tenant = match auth.authenticate(&headers).await {
        Ok(p) => p.tenant,
        Err(_) => String::new(),
    };
    let visible = |m: &Mounted| auth.visible(&tenant, m);
    Ok(axum::Json(crate::openapi::document(&snapshot, visible)).into_response())
}
