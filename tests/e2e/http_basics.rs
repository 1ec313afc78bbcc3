//! The HTTP basics: health, readiness, request ids, API keys and the one JSON error shape.

use serde_json::json;

use crate::harness::{
    API_KEY, Host, admin, client, client_with, expect_error, shared, standard_config,
};

#[tokio::test]
async fn health_and_readiness() {
    let host = shared();
    let r = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = admin().get(host.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let names: Vec<&str> = body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["digits", "embed", "hello", "hostile"]);
}

#[tokio::test]
async fn request_ids_are_unique_or_echoed() {
    let host = shared();
    let a = reqwest::get(host.url("/healthz")).await.unwrap();
    let b = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    let c = reqwest::Client::new()
        .get(host.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(c.headers()["x-request-id"], "trace-abc-123");
}

#[tokio::test]
async fn api_keys_are_required_and_checked() {
    let host = shared();
    let url = host.url("/hello/greet");
    let anon = reqwest::Client::new();
    let r = anon
        .post(&url)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = anon
        .post(&url)
        .bearer_auth("wrong-key")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = anon
        .post(&url)
        .header("authorization", format!("Basic {API_KEY}"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = anon
        .post(&url)
        .header("x-api-key", API_KEY)
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = anon
        .post(&url)
        .bearer_auth(API_KEY)
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("Ada"), "{body}");
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let host = shared();
    let c = client();
    expect_error(
        c.get(host.url("/nope")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.get(host.url("/digits/classify/extra"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let r = c.get(host.url("/digits/classify")).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;
    let r = c.post(host.url("/healthz")).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn bad_bodies_get_clear_json_errors() {
    let host = shared();
    let c = client();
    let url = host.url("/digits/classify");
    let send = |body: &'static str| {
        c.post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let e = expect_error(
        send("{\"pixels\": [1, 2,").await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("JSON"),
        "{e}"
    );
    expect_error(send("").await.unwrap(), 400, "invalid_request").await;
    expect_error(send("{}").await.unwrap(), 422, "invalid_request").await;
    expect_error(
        send("{\"pixels\": \"nope\"}").await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    let short = json!({"pixels": vec![1; 63]}).to_string();
    expect_error(
        c.post(&url).body(short).send().await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    let out_of_range = json!({"pixels": vec![17; 64]}).to_string();
    expect_error(
        c.post(&url).body(out_of_range).send().await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    let strings = json!({"pixels": vec!["1"; 64]}).to_string();
    expect_error(
        c.post(&url).body(strings).send().await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    // Still serving after all that.
    let ok = c
        .post(&url)
        .json(&json!({"pixels": vec![0; 64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// A client that is still sending when the answer comes (a body over the limit, a refused
/// credential) can send the rest and read the answer: the host reads the unread body away
/// instead of resetting the connection.
#[tokio::test]
async fn an_early_answer_does_not_reset_a_client_still_sending() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = shared();
    let addr = host.base.trim_start_matches("http://").to_string();
    for (auth, status) in [
        (format!("Bearer {API_KEY}"), "413"),
        ("Bearer wrong-key-0123456789".to_string(), "401"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let size = 2 << 20;
        let head = format!(
            "POST /hostile/echo HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The answer is ready before the body is sent.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..size / chunk.len() {
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.write_all(&chunk))
                .await
                .expect("the host goes on reading")
                .expect("the host took the whole body");
        }
        // The head of the answer (a 401 keeps the connection open, so read only that far).
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    assert!(host.alive());
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let host = shared();
    let c = client();
    // The hostile plugin accepts at most 4096 bytes.
    let big = format!("{{\"n\": 1, \"text\": \"{}\"}}", "x".repeat(10_000));
    let r = c
        .post(host.url("/hostile/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["connection"],
        "close",
        "an unread body ends the connection"
    );
    expect_error(r, 413, "payload_too_large").await;
    // Without a Content-Length (chunked), the limit holds as the body streams in.
    let stream = futures_stream(big.into_bytes());
    let r = c
        .post(host.url("/hostile/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "payload_too_large").await;
    let r = c
        .post(host.url("/hostile/echo"))
        .json(&json!({"n": 1, "text": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"n": 1, "text": "ok"})
    );
    // A chunked body within the limit reaches the plugin whole (the guest has no Content-Length
    // to go by and reads to the end of the stream).
    let text = "y".repeat(2500);
    let chunked = serde_json::to_vec(&json!({"n": 2, "text": text})).unwrap();
    let r = c
        .post(host.url("/hostile/echo"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_stream(chunked)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"n": 2, "text": text})
    );
}

fn futures_stream(bytes: Vec<u8>) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(chunks)
}

#[tokio::test]
async fn a_restart_reuses_compiled_plugins() {
    let cache = tempfile::tempdir().unwrap();
    let config = crate::harness::standard_config("");
    let caches = |host: &crate::harness::Host| {
        let url = host.url("/readyz");
        async move {
            let r = admin().get(url).send().await.unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            body["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["compiled"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let first = crate::harness::Host::start_with_cache(&config, cache.path());
    assert!(
        caches(&first).await.iter().all(|c| c == "compiled"),
        "cold cache compiles"
    );
    drop(first);
    let second = crate::harness::Host::start_with_cache(&config, cache.path());
    assert!(
        caches(&second).await.iter().all(|c| c == "cache"),
        "warm cache skips compiling"
    );
    let r = client()
        .post(second.url("/hello/greet"))
        .json(&json!({"name": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn openapi_is_derived_from_manifests() {
    let host = shared();
    let doc: serde_json::Value = reqwest::get(host.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let classify = &doc["paths"]["/digits/classify"]["post"];
    assert!(
        classify["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{classify}"
    );
    let schema = &classify["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        schema.to_string().contains("pixels"),
        "request schema from the plugin's types: {schema}"
    );
    assert!(doc["paths"]["/embed/embeddings"]["post"].is_object());
    // Every `$ref` resolves within the document (the plugins' own `$defs` are hoisted into
    // components), and a real OpenAPI validator accepts it.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 1, "{refs:?}");
    for r in &refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("not local: {r}"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    validate_openapi(&doc);
    let page = reqwest::get(host.url("/docs")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_models_by_name() {
    let host = shared();
    let c = client();
    for _ in 0..3 {
        let r = c
            .post(host.url("/digits/classify"))
            .json(&json!({"pixels": vec![1; 64]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(host.url("/digits/classify"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = admin().get(host.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let ok = r#"infergate_request_duration_seconds_count{plugin="digits",route="POST /classify",status="200"}"#;
    let bad = r#"infergate_request_duration_seconds_count{plugin="digits",route="POST /classify",status="422"}"#;
    assert!(value(ok) >= 3.0);
    assert!(value(bad) >= 1.0);
    assert!(value(r#"infergate_model_completed_total{model="digits"}"#) >= 3.0);
    assert!(text.contains("# TYPE infergate_request_duration_seconds histogram"));
    // The compute time summary: recent percentiles, and the totals as _sum and _count.
    assert!(text.contains("# TYPE infergate_model_compute_seconds summary"));
    let p50 = value(r#"infergate_model_compute_seconds{model="digits",quantile="0.5"}"#);
    let p99 = value(r#"infergate_model_compute_seconds{model="digits",quantile="0.99"}"#);
    assert!(0.0 < p50 && p50 <= p99 && p99 < 1.0, "p50 {p50}, p99 {p99}");
    assert_eq!(
        value(r#"infergate_model_compute_seconds_count{model="digits"}"#),
        value(r#"infergate_model_completed_total{model="digits"}"#)
            + value(r#"infergate_model_failed_total{model="digits"}"#)
    );
}

/// Plugin names (tenants' private plugins among them) are the operator's to see: `/readyz` tells
/// anyone only whether the host is ready, and `/metrics` needs the admin key or the metrics key
/// unless the operator made it public. Short secrets are refused at start-up.
#[tokio::test]
async fn plugin_names_are_shown_only_to_the_operator() {
    const METRICS_KEY: &str = "metrics-key-0123456789";
    let host = Host::start(&standard_config(&format!(
        "[admin]\nmetrics_key = \"{METRICS_KEY}\"\n"
    )));
    for c in [reqwest::Client::new(), client(), client_with(METRICS_KEY)] {
        let r = c.get(host.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, json!({"status": "ready"}));
    }
    let r = admin().get(host.url("/readyz")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["plugins"].as_array().map(Vec::len), Some(4), "{body}");

    let r = reqwest::get(host.url("/metrics")).await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = client().get(host.url("/metrics")).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    for c in [admin(), client_with(METRICS_KEY)] {
        let r = c.get(host.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("infergate_model_completed_total")
        );
    }
    // The metrics key opens nothing else.
    let r = client_with(METRICS_KEY)
        .get(host.url("/admin/plugins"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    drop(host);

    let open = Host::start(&standard_config("[admin]\npublic_metrics = true\n"));
    let r = reqwest::get(open.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(open);

    for (name, value) in [
        ("INFERGATE_ADMIN_KEY", "admin-short"),
        ("INFERGATE_API_KEY", "short-key"),
        ("INFERGATE_METRICS_KEY", "0123456789abcde"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("INFERGATE_ADMIN_KEY", "admin-key-0123456789abcdef")
            .env("INFERGATE_API_KEY", "test-key-0123456789abcdef")
            .env(name, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 16 characters"), "{stderr}");
    }
}

fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Checks `doc` with `openapi-spec-validator` (tests/requirements.txt; required in CI).
fn validate_openapi(doc: &serde_json::Value) {
    use std::io::Write as _;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import openapi_spec_validator"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI requires openapi-spec-validator (pip install -r tests/requirements.txt)"
        );
        eprintln!("skipping the OpenAPI validator: pip install -r tests/requirements.txt");
        return;
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(doc.to_string().as_bytes()).unwrap();
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))",
        ])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
