//! MCP, the Model Context Protocol, at `/mcp` (Streamable HTTP, JSON-RPC 2.0, the handshake
//! revisions up to 2025-11-25): agents call the host's plugins as tools.
//!
//! Every plugin route that takes a JSON body with an object schema, has no path parameters, and
//! that the caller may call (visibility and scopes, as for HTTP) is one tool: named
//! `<plugin>_<path>` (`digits_classify`; methods other than POST prefix it), described by the
//! route's summary, with the route's request schema as `inputSchema` and its response schema
//! (when it is an object) as `outputSchema`. `tools/call` is an HTTP call of that route made
//! inside the host, through the same pipeline as any other ([`crate::pipeline::plugin::serve`]):
//! the caller's credential, quotas, sandbox limits, usage, metrics (labelled with the route).
//! A refusal or a plugin error comes back as a tool error (`isError`) whose text is the
//! product's JSON error, code included.
//!
//! A credential is required for everything (401 otherwise, before any JSON-RPC). The server
//! keeps no session: each POST carries one JSON-RPC message and gets its answer as JSON. `GET
//! /mcp` opens a server-sent event stream that says `notifications/tools/list_changed` whenever
//! a plugin is deployed, replaced or removed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRef, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use infergate_runtime::manifest::Segment;
use serde_json::{Value, json};

use crate::auth::{Principal, check_scopes};
use crate::error::ApiError;
use crate::pipeline::RouteLabel;
use crate::pipeline::plugin::{PluginRoutes, serve};
use crate::registry::Snapshot;

/// Protocol revisions this server speaks, newest first.
const VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// Largest JSON-RPC message accepted.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<PluginRoutes>: FromRef<S>,
{
    Router::new().route("/mcp", post(message).get(events))
}

/// One tool: a plugin route.
struct Tool {
    name: String,
    description: String,
    input: Value,
    output: Option<Value>,
    method: http::Method,
    path: String,
}

/// The tools `caller` may call in `snapshot`.
fn tools(routes: &PluginRoutes, snapshot: &Snapshot, caller: &Principal) -> Vec<Tool> {
    let mut out = Vec::new();
    for mounted in &snapshot.plugins {
        if !routes.auth.visible(&caller.tenant, mounted) {
            continue;
        }
        for route in &mounted.plugin.manifest.routes {
            let Some(input) = &route.request_schema else {
                continue;
            };
            let has_params = route
                .path
                .segments
                .iter()
                .any(|s| matches!(s, Segment::Param(_)));
            if has_params
                || input.get("type") != Some(&json!("object"))
                || check_scopes(
                    &caller.scopes,
                    &mounted.name,
                    &route.path.raw,
                    &route.scopes,
                )
                .is_err()
            {
                continue;
            }
            let mut name = mounted.name.clone();
            if route.method != http::Method::POST {
                name.push('_');
                name.push_str(&route.method.as_str().to_ascii_lowercase());
            }
            for segment in &route.path.segments {
                if let Segment::Literal(l) = segment {
                    name.push('_');
                    name.extend(l.chars().map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                            c
                        } else {
                            '_'
                        }
                    }));
                }
            }
            let output = route
                .response_schema
                .clone()
                .filter(|s| s.get("type") == Some(&json!("object")) && !route.streaming);
            out.push(Tool {
                name,
                description: route.summary.clone(),
                input: input.clone(),
                output,
                method: route.method.clone(),
                path: format!("{}{}", mounted.mount, route.path.raw),
            });
        }
    }
    out
}

fn rpc_result(id: &Value, result: Value) -> Response {
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Response {
    axum::Json(
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}}),
    )
    .into_response()
}

/// `POST /mcp`: one JSON-RPC message.
async fn message(State(routes): State<Arc<PluginRoutes>>, request: Request) -> Response {
    let caller = match routes.auth.authenticate(request.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("an MCP message is at most {MAX_MESSAGE_BYTES} bytes"),
            )
            .into_response();
        }
    };
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return rpc_error(&Value::Null, -32700, "parse error: the body is not JSON");
    };
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A response to us (we send no requests) or garbage without a method.
        return if msg.get("id").is_some() && msg.get("jsonrpc") == Some(&json!("2.0")) {
            StatusCode::ACCEPTED.into_response()
        } else {
            rpc_error(&Value::Null, -32600, "invalid request: no method")
        };
    };
    let Some(id) = msg.get("id").cloned() else {
        // A notification (`notifications/initialized`, cancellations): nothing to answer.
        return StatusCode::ACCEPTED.into_response();
    };
    if msg.get("jsonrpc") != Some(&json!("2.0")) {
        return rpc_error(&id, -32600, "invalid request: jsonrpc must be \"2.0\"");
    }
    let params = msg.get("params").cloned().unwrap_or(json!({}));
    match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or("");
            let version = VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&VERSIONS[0]);
            rpc_result(
                &id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": true}},
                    "serverInfo": {"name": "infergate", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Each tool is an endpoint of a plugin on this host; its input is the endpoint's JSON body.",
                }),
            )
        }
        "ping" => rpc_result(&id, json!({})),
        "tools/list" => {
            let Some(snapshot) = routes.registry.snapshot() else {
                return ApiError::not_ready().into_response();
            };
            let list: Vec<Value> = tools(&routes, &snapshot, &caller)
                .into_iter()
                .map(|t| {
                    let mut v = json!({
                        "name": t.name,
                        "description": t.description,
                        "inputSchema": t.input,
                    });
                    if let Some(o) = t.output {
                        v["outputSchema"] = o;
                    }
                    v
                })
                .collect();
            rpc_result(&id, json!({"tools": list}))
        }
        "tools/call" => call(&routes, &caller, parts, &id, &params).await,
        _ => rpc_error(&id, -32601, format!("method not found: {method}")),
    }
}

/// `tools/call`: the tool's route, called with the caller's credential and `arguments` as
/// its body.
async fn call(
    routes: &Arc<PluginRoutes>,
    caller: &Principal,
    parts: http::request::Parts,
    id: &Value,
    params: &Value,
) -> Response {
    let Some(snapshot) = routes.registry.snapshot() else {
        return ApiError::not_ready().into_response();
    };
    let name = params["name"].as_str().unwrap_or("");
    let Some(tool) = tools(routes, &snapshot, caller)
        .into_iter()
        .find(|t| t.name == name)
    else {
        return rpc_error(id, -32602, format!("unknown tool: {name}"));
    };
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(a) => a.clone(),
    };
    let mut inner = Request::new(Body::from(arguments.to_string()));
    *inner.method_mut() = tool.method.clone();
    *inner.uri_mut() = match tool.path.parse() {
        Ok(uri) => uri,
        Err(_) => return rpc_error(id, -32603, "the tool's route has no valid path"),
    };
    let headers = inner.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    copy_credential(&parts.headers, headers);
    if let Some(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        inner.extensions_mut().insert(*peer);
    }
    let answer = serve(State(routes.clone()), inner).await;
    let status = answer.status();
    let label = answer.extensions().get::<RouteLabel>().cloned();
    let text = match answer.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => {
            let e = ApiError::new(StatusCode::BAD_GATEWAY, "plugin_error", e.to_string());
            e.body().to_string()
        }
    };
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": !status.is_success(),
    });
    if status.is_success()
        && tool.output.is_some()
        && let Ok(structured @ Value::Object(_)) = serde_json::from_str::<Value>(&text)
    {
        result["structuredContent"] = structured;
    }
    let mut response = rpc_result(id, result);
    // Metrics count the call under the tool's route.
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

fn copy_credential(from: &HeaderMap, to: &mut HeaderMap) {
    for name in [header::AUTHORIZATION, crate::auth::X_API_KEY] {
        if let Some(v) = from.get(&name) {
            to.insert(name, v.clone());
        }
    }
}

/// `GET /mcp`: `notifications/tools/list_changed` each time the plugins change.
async fn events(State(routes): State<Arc<PluginRoutes>>, headers: HeaderMap) -> Response {
    if let Err(e) = routes.auth.authenticate(&headers).await {
        return e.into_response();
    }
    let changes = routes.registry.changes();
    let stream = futures::stream::unfold(changes, |mut changes| async move {
        changes.changed().await.ok()?;
        let event = Event::default().event("message").data(
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}).to_string(),
        );
        Some((Ok::<_, Infallible>(event), changes))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
