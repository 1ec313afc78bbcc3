//! MCP at `/mcp` of the embedded default: the official MCP Python SDK (tests/mcp, `mcp` in tests/requirements.txt;
//! required in CI) lists and calls the host's tools, and raw JSON-RPC shows the protocol's
//! edges and `list_changed` on a deploy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{API_KEY, Host, admin, client, embedded_default, expect_error, root, wasm};

const SCOPED: &str = "scoped-key-0123456789abcdef";
const SMALL: &str = "small-key-0123456789abcdef";

/// The embedded default, with a key scoped to one plugin and a tenant with a small limit.
fn config() -> String {
    embedded_default(&format!(
        r#"
[auth]
api_keys = [
  {{ id = "scoped", key = "{SCOPED}", tenant = "scoped", scopes = ["plugin:digits"] }},
  {{ id = "small", key = "{SMALL}", tenant = "small" }},
]

[limits.tenants.small]
limits = ["2/minute"]
"#
    ))
}

async fn rpc(host: &Host, body: Value) -> reqwest::Response {
    client()
        .post(host.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn json_rpc_over_streamable_http() {
    let host = Host::start(&config());
    let r = rpc(
        &host,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}
        }}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18", "{v}");
    assert_eq!(v["result"]["capabilities"]["tools"]["listChanged"], true);
    // A notification is accepted with no answer; an unknown method is a JSON-RPC error.
    let r = rpc(
        &host,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let v: Value = rpc(
        &host,
        json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["error"]["code"], -32601, "{v}");
    let v: Value = rpc(
        &host,
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "no_such_tool", "arguments": {}}}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // Without a credential: 401, before any JSON-RPC.
    let r = reqwest::Client::new()
        .post(host.url("/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;

    // A tool call is counted under its route.
    let v: Value = rpc(
        &host,
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "hello_greet", "arguments": {"name": "Ada"}}}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["result"]["isError"], false, "{v}");
    let metrics = admin()
        .get(host.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"infergate_request_duration_seconds_count{plugin="hello",route="POST /greet",status="200"} 1"#),
        "{metrics}"
    );

    // list_changed reaches a listener when a plugin is deployed.
    let mut events = client()
        .get(host.url("/mcp"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let r = admin()
        .put(host.url("/admin/plugins/greeter"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(wasm("greeter_v1")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("notifications/tools/list_changed") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no list_changed: {other:?} after {seen:?}"),
        }
    }
}

#[test]
fn the_official_mcp_client_lists_and_calls_tools() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import mcp, pytest"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI requires the MCP client tests (pip install -r tests/requirements.txt)"
        );
        eprintln!("skipping the MCP client tests: pip install -r tests/requirements.txt");
        return;
    }
    let host = Host::start(&config());
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rfEs",
            "-p",
            "no:cacheprovider",
            "tests/mcp",
        ])
        .current_dir(root())
        .env("INFERGATE_URL", &host.base)
        .env("INFERGATE_API_KEY", API_KEY)
        .env("INFERGATE_SCOPED_KEY", SCOPED)
        .env("INFERGATE_SMALL_KEY", SMALL)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{output}");
    let summary: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("FAILED ") || l.starts_with("ERROR ") || l.starts_with("E   "))
        .take(40)
        .collect();
    assert!(
        out.status.success(),
        "pytest failed:\n{}",
        summary.join("\n")
    );
    assert!(host.alive());
}
