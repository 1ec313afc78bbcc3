//! Outbound HTTP from plugins: only to the destinations the operator granted, within the
//! plugin's limits; redirects are not followed.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Host, client, expect_error, model, shared, wasm};

/// A loopback upstream: `/` answers 200, `/big` 64 KiB, `/slow` after 10 s, `/redirect` 302 to
/// `elsewhere`. Returns its port.
async fn upstream(elsewhere: u16) -> u16 {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/big", get(|| async { "x".repeat(64 * 1024) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route(
            "/redirect",
            get(move || async move {
                (
                    http::StatusCode::FOUND,
                    [(
                        http::header::LOCATION,
                        format!("http://127.0.0.1:{elsewhere}/"),
                    )],
                )
            }),
        );
    crate::harness::serve(app).await
}

async fn outbound(host: &Host, query: &str) -> Value {
    let r = client()
        .get(host.url(&format!("/hostile/http?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    r.json().await.unwrap()
}

fn denied(v: &Value) -> bool {
    v["sent"] == false
        && v["error"]
            .as_str()
            .is_some_and(|e| e.contains("HttpRequestDenied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reaches_only_what_it_was_granted() {
    let other = upstream(0).await;
    let granted = upstream(other).await;
    let host = Host::start(&format!(
        r#"
[[models]]
name = "digits"
path = "{digits}"

[[plugins]]
name = "hostile"
path = "{hostile}"
models = ["digits"]
allowed_outbound_hosts = ["http://127.0.0.1:{granted}"]
[plugins.limits]
wall_ms = 2000
max_outbound_response_bytes = 1024
"#,
        digits = model("digits/digits.onnx"),
        hostile = wasm("hostile"),
    ));

    let v = outbound(&host, &format!("port={granted}")).await;
    assert_eq!(v["status"], 200, "{v}");
    // Another port of the same address, and the same port by another name: not granted.
    assert!(denied(&outbound(&host, &format!("port={other}")).await));
    let v = outbound(&host, &format!("host=localhost&port={granted}")).await;
    assert!(denied(&v), "{v}");
    // A redirect reaches the plugin as it is; following it would be a request like any other.
    let v = outbound(&host, &format!("port={granted}&path=/redirect")).await;
    assert_eq!(v["status"], 302, "{v}");
    // A response body over the plugin's limit ends in an error, not in the plugin's memory.
    // (wasmtime 48 hands a body's error to the guest as text, not as an `error-code`.)
    let v = outbound(&host, &format!("port={granted}&path=/big&read=1")).await;
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("body size exceeds limit: 1024 bytes")),
        "{v}"
    );
    let v = outbound(&host, &format!("port={granted}&read=1")).await;
    assert_eq!(v["bytes"], 2, "{v}");
    // A slow upstream is cut by the plugin's wall-clock limit.
    let r = client()
        .get(host.url(&format!("/hostile/http?port={granted}&path=/slow")))
        .send()
        .await
        .unwrap();
    expect_error(r, 504, "plugin_timeout").await;
    assert!(host.alive());

    // A plugin with no grant reaches nothing.
    assert!(denied(
        &outbound(shared(), &format!("port={granted}")).await
    ));
}
