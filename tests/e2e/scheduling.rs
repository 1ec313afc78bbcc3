//! Inference is owned by the host: a bounded queue per model, back-pressure and timeouts.

use serde_json::{Value, json};

use crate::harness::{Host, client, expect_error, model, wasm};

fn embed_host(concurrency: usize, queue_depth: usize, timeout_ms: u64) -> Host {
    Host::start(&format!(
        r#"
[[models]]
name = "all-minilm-l6-v2"
path = "{minilm}"
concurrency = {concurrency}
queue_depth = {queue_depth}
timeout_ms = {timeout_ms}

[[plugins]]
name = "embed"
path = "{embed}"
models = ["all-minilm-l6-v2"]
[plugins.limits]
wall_ms = 60000
"#,
        minilm = model("minilm/model.onnx"),
        embed = wasm("embed"),
    ))
}

/// A batch that keeps the model busy for a while.
fn heavy_batch() -> Value {
    let text =
        "The quick brown fox jumps over the lazy dog near the riverbank at dawn. ".repeat(12);
    json!({"input": vec![text; 32]})
}

#[tokio::test]
async fn a_full_queue_answers_queue_full_with_retry_after() {
    let host = embed_host(1, 1, 60_000);
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), host.url("/embed/embeddings"));
        tasks.push(tokio::spawn(async move {
            c.post(url).json(&heavy_batch()).send().await.unwrap()
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        if r.status() == 200 {
            ok += 1;
        } else {
            assert!(
                r.headers().contains_key("retry-after"),
                "queue_full carries Retry-After"
            );
            expect_error(r, 503, "queue_full").await;
            full += 1;
        }
    }
    println!("queue: {ok} served, {full} refused");
    assert!(
        ok >= 2 && full >= 1,
        "one running + one queued are served, the rest refused ({ok}/{full})"
    );
}

#[tokio::test]
async fn a_slow_inference_times_out() {
    let host = embed_host(1, 4, 30);
    let r = client()
        .post(host.url("/embed/embeddings"))
        .json(&heavy_batch())
        .send()
        .await
        .unwrap();
    expect_error(r, 504, "inference_timeout").await;
}
