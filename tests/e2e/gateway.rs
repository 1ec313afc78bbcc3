//! The first-party `gateway` plugin against two OpenAI-compatible upstreams this test starts on
//! loopback: it answers from the first, falls back to the second when the first fails, is slow
//! or is down, relays streams as they come, and sends the upstream's API key from the
//! operator's secrets (never from the request, never into the logs).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::harness::{Host, client, expect_error};

const SECRET: &str = "sk-upstream-secret-0123456789";

/// How an upstream behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Fail,
    Slow,
    BadRequest,
}

/// What an upstream saw: the `authorization` header and the `model` of each request.
type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// An OpenAI-compatible upstream named `name` on loopback: `POST /v1/chat/completions`, whole
/// or streamed. Returns its port and what it saw.
async fn upstream(name: &'static str, mode: Mode) -> (u16, Seen) {
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(
                move |State(seen): State<Seen>, headers: HeaderMap, body: axum::Json<Value>| async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    let model = body["model"].as_str().unwrap_or_default().to_string();
                    seen.lock().unwrap().push((auth, model.clone()));
                    match mode {
                        Mode::Fail => {
                            return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
                        }
                        Mode::BadRequest => {
                            let error = json!({"error": {"code": "bad", "message": "no"}});
                            return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
                        }
                        Mode::Slow => tokio::time::sleep(Duration::from_secs(10)).await,
                        Mode::Ok => {}
                    }
                    let usage = json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7});
                    if body["stream"] == true {
                        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
                        tokio::spawn(async move {
                            for word in ["Hello", " from ", name] {
                                let chunk = json!({"object": "chat.completion.chunk", "model": model,
                                    "choices": [{"index": 0, "delta": {"content": word}}]});
                                let _ = tx.send(Ok(format!("data: {chunk}\n\n"))).await;
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            let last = json!({"object": "chat.completion.chunk", "choices": [], "usage": usage});
                            let _ = tx.send(Ok(format!("data: {last}\n\ndata: [DONE]\n\n"))).await;
                        });
                        let body = axum::body::Body::from_stream(futures::stream::unfold(
                            rx,
                            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
                        ));
                        return ([("content-type", "text/event-stream")], body).into_response();
                    }
                    axum::Json(json!({
                        "object": "chat.completion",
                        "model": model,
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": format!("Hello from {name}")}}],
                        "usage": usage,
                    }))
                    .into_response()
                },
            ),
        )
        .with_state(seen.clone());
    let port = crate::harness::serve(app).await;
    (port, seen)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The gateway with `primary` then `backup`, each granted unless left out of `grants`.
fn gateway_config(primary: u16, backup: u16, grants: &[u16], extra: &str) -> String {
    let grants: Vec<String> = grants
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    format!(
        r#"
[[plugins]]
name = "gateway"
builtin = "gateway"
allowed_outbound_hosts = [{grants}]
[plugins.limits]
wall_ms = 5000
[plugins.config]
upstreams = "primary, backup"
"primary.url" = "http://127.0.0.1:{primary}/v1"
"primary.timeout_ms" = "500"
"backup.url" = "http://127.0.0.1:{backup}/v1"
"backup.model" = "backup-model"
[plugins.secrets]
"backup.api_key" = "GATEWAY_TEST_BACKUP_KEY"
{extra}
"#,
        grants = grants.join(", ")
    )
}

fn gateway(primary: u16, backup: u16) -> Host {
    Host::start_with_env(
        &gateway_config(primary, backup, &[primary, backup], ""),
        &[("GATEWAY_TEST_BACKUP_KEY", SECRET)],
    )
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": stream})
}

async fn ask(host: &Host, stream: bool) -> reqwest::Response {
    client()
        .post(host.url("/gateway/chat/completions"))
        .json(&chat(stream))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_falls_back_to_the_next_upstream() {
    let (backup, backup_seen) = upstream("backup", Mode::Ok).await;

    // The primary answers 503: the backup serves, with the operator's key and model.
    let (failing, failing_seen) = upstream("primary", Mode::Fail).await;
    let host = gateway(failing, backup);
    let r = ask(&host, false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-infergate-upstream"], "backup");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from backup");
    assert_eq!(v["model"], "backup-model");
    assert_eq!(
        failing_seen.lock().unwrap()[0],
        (None, "gpt-4o-mini".into())
    );
    assert_eq!(
        backup_seen.lock().unwrap()[0],
        (Some(format!("Bearer {SECRET}")), "backup-model".into())
    );
    // A key the client sends goes nowhere near the upstream.
    client()
        .post(host.url("/gateway/chat/completions"))
        .header("x-api-key", "client-key")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert!(
        backup_seen
            .lock()
            .unwrap()
            .iter()
            .all(|(auth, _)| auth.as_deref() == Some(&format!("Bearer {SECRET}")))
    );

    // Streamed: the events are relayed as they come, not gathered.
    let started = Instant::now();
    let mut r = ask(&host, true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        arrivals.push(started.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        text.contains("\"Hello\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(
        arrivals.len() >= 3
            && *arrivals.last().unwrap() - arrivals[0] >= Duration::from_millis(500),
        "{arrivals:?}"
    );
    // The secret is in no log line.
    assert!(!host.log_text().contains(SECRET), "{}", host.log_text());
    drop(host);

    // The primary is down, or too slow for its timeout: the backup serves.
    for primary in [closed_port(), upstream("primary", Mode::Slow).await.0] {
        let host = gateway(primary, backup);
        let started = Instant::now();
        let r = ask(&host, false).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-infergate-upstream"], "backup");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    // A client error is the client's: relayed, not retried.
    let (bad, _) = upstream("primary", Mode::BadRequest).await;
    let before = backup_seen.lock().unwrap().len();
    let host = gateway(bad, backup);
    let r = ask(&host, false).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-infergate-upstream"], "primary");
    assert_eq!(backup_seen.lock().unwrap().len(), before);
    drop(host);

    // A backup the operator did not grant is refused by the host: no upstream answers.
    let host = Host::start_with_env(
        &gateway_config(failing, backup, &[failing], ""),
        &[("GATEWAY_TEST_BACKUP_KEY", SECRET)],
    );
    let before = backup_seen.lock().unwrap().len();
    let e = expect_error(ask(&host, false).await, 502, "upstream_unavailable").await;
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("primary: answered 503")
            && message.contains("backup: the destination is not granted"),
        "{message}"
    );
    assert_eq!(backup_seen.lock().unwrap().len(), before);
    // The request's body is still validated by the host before the plugin runs.
    let r = client()
        .post(host.url("/gateway/chat/completions"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_request").await;
}

#[test]
fn a_secret_whose_variable_is_unset_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infergate.toml");
    std::fs::write(&path, gateway_config(1, 2, &[1, 2], "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("GATEWAY_TEST_BACKUP_KEY")
        .env("INFERGATE_API_KEY", "k".repeat(32))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("GATEWAY_TEST_BACKUP_KEY") && stderr.contains("backup.api_key"),
        "{}",
        tail_text(&stderr)
    );
}

fn tail_text(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
