//! The HTTP surface: [`app`] builds the router of built-in endpoints, sends everything else to
//! [`dispatch`] (auth → route → body limit → validation → plugin), and wraps all of it in the
//! request-id middleware that also guarantees the one JSON error shape.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use infergate_runtime::engine::CacheOutcome;
use infergate_runtime::{PluginBody, PluginRequest, RequestContext};
use serde_json::{Value, json};

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;

use crate::error::{ApiError, REQUEST_ID, current_request_id};
use crate::quota::Subject;
use crate::registry::{Mounted, Registry};
use crate::router::Match;

/// State shared by every request.
pub struct AppState {
    pub registry: Registry,
    /// Credentials and who may call what.
    pub auth: Arc<crate::auth::Auth>,
    /// The admin credential; `None` turns the admin API off.
    pub admin: Option<crate::admin::AdminKey>,
    /// Largest plugin upload through the admin API.
    pub max_upload_bytes: usize,
    /// What tenants may deploy themselves.
    pub tenant_plugins: crate::config::TenantPluginsConfig,
    /// Request counts and latencies, for `/metrics`.
    pub metrics: crate::telemetry::Metrics,
    /// Rate limits and quotas.
    pub quotas: Arc<crate::quota::Quotas>,
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(crate::admin::routes(state.max_upload_bytes))
        .merge(crate::auth::routes())
        .merge(crate::admin::tenant_routes(
            state.tenant_plugins.max_upload_bytes,
        ))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route(
            "/docs",
            get(|| async { axum::response::Html(crate::openapi::DOCS_PAGE) }),
        )
        .fallback(dispatch)
        .with_state(state)
        .layer(middleware::from_fn(request_id))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.registry.snapshot() {
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let models = state.registry.models().await;
    let text = state.metrics.render(&models, state.quotas.store_errors());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = state.registry.snapshot().ok_or_else(ApiError::not_ready)?;
    // Each caller sees the plugins visible to its tenant; anonymous callers the public ones.
    let tenant = match state.auth.authenticate(&headers).await {
        Ok(p) => p.tenant,
        Err(_) => String::new(),
    };
    let visible = |m: &Mounted| state.auth.visible(&tenant, m);
    Ok(axum::Json(crate::openapi::document(&snapshot, visible)).into_response())
}

/// Gives every request an id (the client's `X-Request-Id` if it is sane), echoes it on the
/// response, and turns any error response that is not JSON into the standard error shape.
async fn request_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let mut response = REQUEST_ID
        .scope(id.clone(), async move {
            let response = next.run(request).await;
            ensure_json_error(response)
        })
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read: this connection cannot carry another request,
        // and a client must not put it back in its pool.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// 96 random-looking bits in hex. Ids only need to be unique (they name concurrency leases),
/// not secret, so each thread runs SplitMix64 from a seed drawn once from the OS instead of a
/// system call per request.
fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the OS random source failed");
            u64::from_le_bytes(seed)
        });
    }
    let next = || {
        STATE.with(|state| {
            let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(s);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes()[..4]);
    hex::encode(bytes)
}

fn ensure_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        s if s.is_client_error() => "invalid_request",
        _ => "internal_error",
    };
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    ApiError::new(status, code, reason).into_response()
}

/// Serves a plugin route: auth → route → limits → [`serve`]; adds the `RateLimit-*` headers.
async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match dispatch_inner(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn dispatch_inner(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let snapshot = state.registry.snapshot().ok_or_else(ApiError::not_ready)?;
    let principal = state.auth.authenticate(request.headers()).await?;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let (parts, body) = request.into_parts();
    let (target, params, relative_path) =
        match snapshot.router.find(&parts.method, parts.uri.path()) {
            Match::Found {
                target,
                params,
                relative_path,
            } => (target, params, relative_path),
            Match::MethodNotAllowed(allowed) => {
                let allowed: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!(
                        "{} is not allowed here; use {}",
                        parts.method,
                        allowed.join(", ")
                    ),
                ));
            }
            Match::NotFound => {
                return Err(ApiError::not_found(format!(
                    "no route for {} {}",
                    parts.method,
                    parts.uri.path()
                )));
            }
        };
    let mounted = snapshot.plugins[target.plugin].clone();
    state.auth.authorize(&principal, &mounted, target.route)?;
    let started = std::time::Instant::now();
    let request_id = current_request_id();
    let admitted = state
        .quotas
        .admit(&Subject {
            tenant: &principal.tenant,
            key_id: &principal.key_id,
            ip: state.quotas.client_ip(peer, &parts.headers),
            plugin: &mounted.name,
            route: &mounted.plugin.manifest.routes[target.route].path.raw,
            key_limits: &principal.limits,
            tenant_limits: &principal.tenant_limits,
            request_id: &request_id,
            lease: mounted.plugin.limits.wall_time(),
        })
        .await;
    let (result, limit_headers) = match admitted {
        Ok(admission) => {
            let headers = admission.headers.clone();
            // A priority stored with the tenant (other than the default 1) wins over the config.
            let stored = (principal.priority != 1).then_some(principal.priority);
            let priority = state.quotas.priority(&principal.tenant, stored);
            let call = Call {
                principal,
                priority,
                params,
                relative_path,
                admission,
            };
            (
                serve(&mounted, target.route, parts, body, call).await,
                headers,
            )
        }
        Err(refusal) => (Err(refusal.error), refusal.headers),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.headers_mut().extend(limit_headers);
    state
        .metrics
        .record(&mounted, target.route, response.status(), started.elapsed());
    Ok(response)
}

/// Who calls a matched route, and with what.
struct Call {
    principal: crate::auth::Principal,
    /// The tenant's weight in the models' fair queues.
    priority: u32,
    params: Vec<(String, String)>,
    relative_path: String,
    admission: crate::quota::Admission,
}

/// Runs one matched route: body limit, schema validation, the plugin call, the response.
async fn serve(
    mounted: &Mounted,
    route_index: usize,
    parts: http::request::Parts,
    body: Body,
    call: Call,
) -> Result<Response, ApiError> {
    let Call {
        principal,
        priority,
        params,
        relative_path,
        admission,
    } = call;
    let route = &mounted.plugin.manifest.routes[route_index];
    let limits = &mounted.plugin.limits;

    let body = read_body(
        &parts.headers,
        body,
        limits.max_request_bytes,
        limits.wall_time(),
    )
    .await?;
    if let Some(validator) = &mounted.validators[route_index] {
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        // `is_valid` stops at the first failure and allocates nothing: the common case. Only
        // an invalid body pays for collecting what is wrong with it.
        let problems: Vec<String> = if validator.is_valid(&value) {
            Vec::new()
        } else {
            validator
                .iter_errors(&value)
                .take(5)
                .map(|e| {
                    let at = e.instance_path.to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect()
        };
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "the request body does not match the schema: {}",
                problems.join("; ")
            )));
        }
    }

    let mut headers = parts.headers;
    for name in [
        header::AUTHORIZATION,
        header::HOST,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.remove("x-api-key");
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{relative_path}?{q}"),
        None => relative_path,
    };
    let context = RequestContext {
        request_id: current_request_id(),
        tenant: principal.tenant,
        key_id: Some(principal.key_id),
        scopes: principal.scopes,
        claims: principal.claims,
        route: route.path.raw.clone(),
        params,
        priority,
    };
    let budgets = admission.has_budgets();
    let budget = admission.token_budget();
    let (usage_sink, settled) = admission.into_sink();
    let response = mounted
        .plugin
        .handle(PluginRequest {
            method: parts.method,
            path_and_query,
            headers,
            body,
            context,
            streaming: route.streaming,
            usage_sink: Some(usage_sink),
            budget,
        })
        .await?;
    if budgets && matches!(response.body, PluginBody::Full(_)) {
        // Charge tokens and compute time before answering, so the caller's next request
        // already sees them (a shared store answers within its timeout).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), settled).await;
    }

    let mut out = Response::builder().status(response.status);
    if let Some(h) = out.headers_mut() {
        for (name, value) in &response.headers {
            if name != header::CONTENT_LENGTH
                && name != header::TRANSFER_ENCODING
                && name != header::CONNECTION
            {
                h.append(name, value.clone());
            }
        }
    }
    let event_stream = response
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = match response.body {
        PluginBody::Stream(stream) if event_stream => Body::new(SseEnd {
            inner: stream,
            request_id: current_request_id(),
            ended: false,
        }),
        PluginBody::Stream(stream) => Body::new(stream),
        PluginBody::Full(bytes)
            if response.status.is_client_error() || response.status.is_server_error() =>
        {
            if let Some(h) = out.headers_mut() {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Body::from(normalise_plugin_error(response.status, &bytes))
        }
        PluginBody::Full(bytes) => Body::from(bytes),
    };
    out.body(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "plugin_error",
            format!("invalid plugin response: {e}"),
        )
    })
}

/// A server-sent-event stream whose plugin failed mid-way (wall-clock limit, response size,
/// trap): the client gets a last `event: error` with the usual error object, then a clean
/// end, rather than a connection cut that looks like a network fault, or a clean-looking end.
struct SseEnd<B> {
    inner: B,
    request_id: String,
    ended: bool,
}

impl<B> http_body::Body for SseEnd<B>
where
    B: http_body::Body<Data = Bytes, Error = infergate_runtime::InvokeError> + Unpin,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                let e = ApiError::from(e);
                tracing::warn!(code = e.code, "stream ended by an error: {}", e.message);
                let event = json!({"error": {"code": e.code, "message": e.message, "request_id": self.request_id}});
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(format!(
                    "event: error\ndata: {event}\n\n"
                ))))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads a request body of at most `limit` bytes within `deadline`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let collected = tokio::time::timeout(deadline, Limited::new(body, limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

/// Gives a plugin's error response the standard shape and this request's id.
fn normalise_plugin_error(status: StatusCode, body: &[u8]) -> Bytes {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let shaped = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        Some((
            e.get("code")?.as_str()?.to_string(),
            e.get("message")?.as_str()?.to_string(),
        ))
    });
    let (code, message) = shaped.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(512).collect();
        let message = if text.trim().is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        };
        ("plugin_error".to_string(), message)
    });
    let value =
        json!({"error": {"code": code, "message": message, "request_id": current_request_id()}});
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_unique_hex_across_threads() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..5000).map(|_| new_request_id()).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert!(ids.iter().all(|id| {
            id.len() == 24
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }));
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn plugin_errors_get_the_standard_shape() {
        let v: Value = serde_json::from_slice(&normalise_plugin_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"model_not_found","message":"no model","request_id":"x"}}"#,
        ))
        .unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        let v: Value =
            serde_json::from_slice(&normalise_plugin_error(StatusCode::BAD_REQUEST, b"oops"))
                .unwrap();
        assert_eq!(v["error"]["code"], "plugin_error");
        assert_eq!(v["error"]["message"], "oops");
        let v: Value = serde_json::from_slice(&normalise_plugin_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"",
        ))
        .unwrap();
        assert_eq!(v["error"]["message"], "Internal Server Error");
    }
}
