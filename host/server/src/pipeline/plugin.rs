//! Plugin routes: every path the host's own router does not serve ends here, in [`serve`],
//! which reads top to bottom: the current snapshot (503 `not_ready` before the first) and the
//! route match ([`resolve`], which also labels the answer for the metrics layer); the caller
//! ([`Auth::authenticate`], 401); the route it may see ([`authorize`]: 404/405, 403 for
//! scopes); admission ([`Quotas::admit`]: rate limits, quotas and concurrency caps, 429, with
//! `RateLimit-*` headers on every answer); and [`call`]: the body within the route's limit,
//! its schema, the plugin, and its answer (error bodies in the one shape; a server-sent-event
//! stream that fails mid-way ends with an `event: error`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use infergate_runtime::{PluginBody, PluginRequest, RequestContext};
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::RouteLabel;
use crate::auth::{Auth, Principal};
use crate::error::{ApiError, current_request_id};
use crate::quota::{Admission, Quotas, Refusal, Subject};
use crate::registry::{Mounted, Registry};
use crate::router::Match;
use crate::telemetry::trace::TARGET as TRACE;

/// What [`resolve`] found for a request.
enum Resolved {
    Found(Target),
    MethodNotAllowed(Vec<http::Method>),
    NotFound,
}

/// A matched plugin route.
struct Target {
    mounted: Arc<Mounted>,
    /// Index into the manifest's routes.
    route: usize,
    params: Vec<(String, String)>,
    /// The path below the plugin's mount.
    relative_path: String,
}

/// What a plugin route reaches (one `Arc` in the app state).
pub struct PluginRoutes {
    pub registry: Arc<Registry>,
    pub auth: Arc<Auth>,
    pub quotas: Arc<Quotas>,
}

/// Serves a plugin route.
pub async fn serve(State(routes): State<Arc<PluginRoutes>>, request: Request) -> Response {
    let Some((resolved, label)) = resolve(&routes.registry, &request) else {
        return ApiError::not_ready().into_response();
    };
    let (mut response, headers) = match answer(&routes, resolved, request).await {
        Ok(answer) => answer,
        Err(refused) => (refused.error.into_response(), refused.headers),
    };
    response.headers_mut().extend(headers);
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

/// The route of a request in the current snapshot (`None` before the first), and its label.
fn resolve(registry: &Registry, request: &Request) -> Option<(Resolved, Option<RouteLabel>)> {
    let snapshot = registry.snapshot()?;
    Some(
        match snapshot.router.find(request.method(), request.uri().path()) {
            Match::Found {
                target,
                params,
                relative_path,
            } => {
                let mounted = snapshot.plugins[target.plugin].clone();
                let label = RouteLabel {
                    plugin: mounted.label.clone(),
                    route: mounted.route_labels[target.route].clone(),
                };
                let target = Target {
                    mounted,
                    route: target.route,
                    params,
                    relative_path,
                };
                (Resolved::Found(target), Some(label))
            }
            Match::MethodNotAllowed(allowed) => (Resolved::MethodNotAllowed(allowed), None),
            Match::NotFound => (Resolved::NotFound, None),
        },
    )
}

/// Caller, authorisation, admission, the call: the answer and its `RateLimit-*` headers.
async fn answer(
    routes: &PluginRoutes,
    resolved: Resolved,
    request: Request,
) -> Result<(Response, HeaderMap), Refusal> {
    let principal = routes
        .auth
        .authenticate(request.headers())
        .instrument(tracing::info_span!(target: TRACE, "auth"))
        .await?;
    let target = authorize(&routes.auth, &principal, resolved, &request)?;
    let request_id = current_request_id();
    let mut admission = admit(
        &routes.quotas,
        &principal,
        &target,
        &request_id,
        request.extensions(),
        request.headers(),
    )
    .instrument(tracing::info_span!(target: TRACE, "admission"))
    .await?;
    let headers = std::mem::take(&mut admission.headers);
    let priority = routes
        .quotas
        .priority(&principal.tenant, principal.priority);
    let response = call(target, principal, priority, admission, request_id, request).await;
    Ok((
        response.unwrap_or_else(IntoResponse::into_response),
        headers,
    ))
}

/// The route `principal` asked for, if it may call it: a path no plugin serves and a plugin it
/// may not see are both 404; a method the path does not take is 405; missing scopes are 403.
fn authorize(
    auth: &Auth,
    principal: &Principal,
    resolved: Resolved,
    request: &Request,
) -> Result<Target, ApiError> {
    let (method, path) = (request.method(), request.uri().path());
    match resolved {
        Resolved::Found(target) => {
            auth.authorize(principal, &target.mounted, target.route)?;
            Ok(target)
        }
        Resolved::MethodNotAllowed(allowed) => {
            let allowed: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; use {}", allowed.join(", ")),
            ))
        }
        Resolved::NotFound => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    }
}

/// Lets the call in under every limit that applies to it, or says which one refuses it.
async fn admit(
    quotas: &Quotas,
    principal: &Principal,
    target: &Target,
    request_id: &str,
    // Not the request itself: its body is not `Sync`, and this future must be `Send`.
    extensions: &http::Extensions,
    headers: &HeaderMap,
) -> Result<Admission, Refusal> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let mounted = &target.mounted;
    quotas
        .admit(&Subject {
            tenant: &principal.tenant,
            key_id: &principal.key_id,
            ip: quotas.client_ip(peer, headers),
            plugin: &mounted.name,
            route: &mounted.plugin.manifest.routes[target.route].path.raw,
            key_limits: &principal.limits,
            tenant_limits: &principal.tenant_limits,
            request_id,
            lease: mounted.plugin.limits.wall_time(),
        })
        .await
}

/// Runs one admitted route: body limit, schema validation, the plugin call, the response.
async fn call(
    target: Target,
    principal: Principal,
    priority: u32,
    admission: Admission,
    request_id: String,
    request: Request,
) -> Result<Response, ApiError> {
    let Target {
        mounted,
        route: route_index,
        params,
        relative_path,
    } = target;
    let (parts, body) = request.into_parts();
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
        validate(validator, &body)?;
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
    headers.remove(crate::auth::X_API_KEY);
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{relative_path}?{q}"),
        None => relative_path,
    };
    let context = RequestContext {
        request_id,
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
    let plugin_span = tracing::info_span!(
        target: TRACE,
        "plugin",
        infergate.plugin = %mounted.name,
        http.route = %route.path.raw,
    );
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
        .instrument(plugin_span)
        .await?;
    if budgets && matches!(response.body, PluginBody::Full(_)) {
        // Charge tokens and compute time before answering, so the caller's next request
        // already sees them (a shared store answers within its timeout).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), settled).await;
    }

    // Informational (1xx) answers would change what the connection is (101 switches
    // protocols); a plugin answers a request with a final status, 200-599.
    if !(200..=599).contains(&response.status.as_u16()) {
        return Err(not_final(response.status));
    }
    // The plugin's headers, less the framing ones, which are the host's to set.
    let mut headers = response.headers;
    for framing in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ] {
        headers.remove(framing);
    }
    let event_stream = headers
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
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Body::from(normalise_plugin_error(response.status, &bytes))
        }
        PluginBody::Full(bytes) => Body::from(bytes),
    };
    let mut out = Response::new(body);
    *out.status_mut() = response.status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Checks a request body against its route's schema. `is_valid` stops at the first failure
/// and allocates nothing: the common case; only an invalid body pays for collecting what is
/// wrong with it ([`schema_problems`], kept out of the request path's code).
fn validate(validator: &jsonschema::Validator, body: &[u8]) -> Result<(), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(not_json)?;
    if validator.is_valid(&value) {
        Ok(())
    } else {
        Err(schema_problems(validator, &value))
    }
}

#[cold]
#[inline(never)]
fn not_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
}

#[cold]
#[inline(never)]
fn schema_problems(validator: &jsonschema::Validator, value: &Value) -> ApiError {
    let problems: Vec<String> = validator
        .iter_errors(value)
        .take(5)
        .map(|e| {
            let at = e.instance_path.to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    ApiError::unprocessable(format!(
        "the request body does not match the schema: {}",
        problems.join("; ")
    ))
}

#[cold]
#[inline(never)]
fn not_final(status: StatusCode) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "plugin_error",
        format!(
            "the plugin answered with status {}; plugins answer with 200-599",
            status.as_u16()
        ),
    )
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
    let collected =
        infergate_runtime::timeout::timeout(deadline, Limited::new(body, limit).collect())
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
