//! Traces: with an OTLP endpoint set, every request is one trace of spans (request, auth,
//! admission, plugin, queue wait, inference, outbound), parented to the caller's
//! `traceparent`, exported to a receiver this test runs; the trace goes on to upstreams.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::harness::{Host, client, model, wasm};

type Received = Arc<Mutex<Vec<Value>>>;

/// An OTLP/HTTP receiver (JSON) on loopback: every span it is sent. Returns its port.
async fn receiver() -> (u16, Received) {
    let spans: Received = Default::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::Json<Value>| async move {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        sink.lock().unwrap().push(span.clone());
                    }
                }
            }
            axum::Json(json!({}))
        }),
    );
    let port = crate::harness::serve(app).await;
    (port, spans)
}

/// An upstream that keeps the `traceparent` of each request it gets.
async fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |headers: HeaderMap| async move {
            if let Some(v) = headers.get("traceparent") {
                sink.lock().unwrap().push(v.to_str().unwrap().to_string());
            }
            "ok"
        }),
    );
    let port = crate::harness::serve(app).await;
    (port, seen)
}

/// A host with `config` that exports its spans to the receiver on port `otlp`, soon after each
/// request ends.
fn traced(config: &str, otlp: u16) -> Host {
    Host::start_with_env(
        config,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://127.0.0.1:{otlp}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
}

/// The spans of trace `id`, once `names` are all among them.
async fn trace(spans: &Received, id: &str, names: &[&str]) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let found: Vec<Value> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == id)
            .cloned()
            .collect();
        if names
            .iter()
            .all(|n| found.iter().any(|s| span_name(s) == *n))
        {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "trace {id}: wanted {names:?}, have {:?}",
            found.iter().map(span_name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn span_name(span: &Value) -> &str {
    span["name"].as_str().unwrap_or_default()
}

/// The one span of `spans` called `name` (by the start of its name).
fn one<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let matching: Vec<&Value> = spans
        .iter()
        .filter(|s| span_name(s).starts_with(name))
        .collect();
    assert_eq!(matching.len(), 1, "{name}: {spans:#?}");
    matching[0]
}

fn parent(span: &Value) -> &str {
    span["parentSpanId"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_under_the_callers_traceparent() {
    let (otlp, spans) = receiver().await;
    let (up, upstream_seen) = upstream().await;
    let host = traced(
        &format!(
            r#"
[[models]]
name = "digits"
path = "{digits}"

[[plugins]]
name = "digits"
path = "{digits_wasm}"
models = ["digits"]

[[plugins]]
name = "hostile"
path = "{hostile}"
models = ["digits"]
allowed_outbound_hosts = ["http://127.0.0.1:{up}"]
"#,
            digits = model("digits/digits.onnx"),
            digits_wasm = wasm("digits"),
            hostile = wasm("hostile"),
        ),
        otlp,
    );

    // A model call: request > auth, admission, plugin > queue_wait, inference.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = client()
        .post(host.url("/digits/classify"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"pixels": vec![3; 64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let found = trace(
        &spans,
        trace_id,
        &["auth", "admission", "plugin", "queue_wait", "inference"],
    )
    .await;
    let root = one(&found, "POST /classify");
    assert_eq!(parent(root), caller_span, "{root:#}");
    assert_eq!(root["kind"], 2, "a server span: {root:#}");
    let attributes = root["attributes"].to_string();
    assert!(
        attributes.contains("http.response.status_code") && attributes.contains("/classify"),
        "{attributes}"
    );
    let root_id = root["spanId"].as_str().unwrap();
    for name in ["auth", "admission", "plugin"] {
        assert_eq!(parent(one(&found, name)), root_id, "{name}");
    }
    let plugin = one(&found, "plugin")["spanId"].as_str().unwrap();
    for name in ["queue_wait", "inference"] {
        assert_eq!(parent(one(&found, name)), plugin, "{name}");
    }

    // An outbound call is a span of the plugin, and the upstream gets the trace.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let r = client()
        .get(host.url(&format!("/hostile/http?port={up}")))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let found = trace(&spans, trace_id, &["outbound", "plugin"]).await;
    let outbound = one(&found, "outbound");
    assert_eq!(
        parent(outbound),
        one(&found, "plugin")["spanId"].as_str().unwrap()
    );
    assert_eq!(outbound["kind"], 3, "a client span: {outbound:#}");
    let sent = upstream_seen.lock().unwrap().clone();
    assert_eq!(
        sent,
        [format!(
            "00-{trace_id}-{}-01",
            outbound["spanId"].as_str().unwrap()
        )]
    );

    // Without a traceparent, a request starts a trace of its own.
    let before: Vec<String> = spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s["traceId"].as_str().unwrap().to_string())
        .collect();
    let r = client()
        .post(host.url("/digits/classify"))
        .json(&json!({"pixels": vec![3; 64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let root = loop {
        let new_root = spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| {
                span_name(s).starts_with("POST /classify")
                    && !before.iter().any(|t| s["traceId"] == t.as_str())
            })
            .cloned();
        if let Some(root) = new_root {
            break root;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no new trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(parent(&root), "", "{root:#}");
    // The log lines do not carry the exported spans.
    assert!(!host.log_text().contains("queue_wait"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_a_span_of_its_plugin() {
    let (otlp, spans) = receiver().await;
    let host = traced(&crate::harness::embedded_default(""), otlp);
    let trace_id = "11112222333344445555666677778888";
    let r = client()
        .post(host.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{trace_id}-1111222233334444-01"))
        .json(&json!({"model": "smollm2-135m-instruct", "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let found = trace(&spans, trace_id, &["plugin", "generation"]).await;
    let root = one(&found, "POST /chat/completions");
    assert_eq!(parent(root), "1111222233334444");
    assert_eq!(
        parent(one(&found, "generation")),
        one(&found, "plugin")["spanId"].as_str().unwrap()
    );
}
