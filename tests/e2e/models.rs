//! The first-party plugins on their real models.

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Fetch as _, client, expect_error, root, shared};

#[tokio::test]
async fn digits_classifies_the_held_out_split() {
    let accuracy = classify_holdout(shared(), 8).await;
    println!("digits held-out accuracy over HTTP: {accuracy:.4}");
}

/// Digits requests that arrive together are gathered into one backend call (a quick model's
/// inferences never wait for a slot, so they are gathered on purpose: see `infergate-nn`'s
/// `compute_batched`), and every caller still gets its own image's answer.
#[tokio::test]
async fn digits_requests_that_arrive_together_are_batched() {
    use crate::harness::{Host, model, wasm};
    let host = Host::start(&format!(
        r#"
[[models]]
name = "digits"
path = "{digits}"
concurrency = 2
max_batch = 1024
batching = {{ max_rows = 16 }}

[[plugins]]
name = "digits"
path = "{digits_wasm}"
models = ["digits"]
"#,
        digits = model("digits/digits.onnx"),
        digits_wasm = wasm("digits"),
    ));
    classify_holdout(&host, 32).await;
    let (batched, calls) = batch_counters(&host, "digits").await;
    println!("held-out split at 32 connections: {calls} backend calls, {batched} batched");
    assert!(batched >= 2.0, "some requests ran together");
}

/// A model's (inferences that ran batched, backend calls) from the host's `/metrics`.
async fn batch_counters(host: &crate::harness::Host, model: &str) -> (f64, f64) {
    let metrics = crate::harness::admin()
        .get(host.url("/metrics"))
        .fetch_text()
        .await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{model=\"{model}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    (
        value("infergate_model_batched_total"),
        value("infergate_model_completed_total"),
    )
}

/// Classifies the held-out split over HTTP, `concurrency` requests at a time; asserts that
/// every answer is well formed and that the accuracy is the training script's, exactly (the
/// same model gives the same predictions); returns the accuracy.
async fn classify_holdout(host: &crate::harness::Host, concurrency: usize) -> f64 {
    let holdout: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/digits_holdout.json")).unwrap(),
    )
    .unwrap();
    let samples = holdout["samples"].as_array().unwrap().clone();
    assert!(samples.len() > 400);
    let c = client();
    let url = host.url("/digits/classify");
    let results: Vec<bool> = futures::stream::iter(samples.iter())
        .map(|s| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let r = c
                    .post(&url)
                    .json(&json!({"pixels": s["pixels"]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                let scores = body["scores"].as_array().unwrap();
                assert_eq!(scores.len(), 10);
                let sum: f64 = scores.iter().map(|v| v.as_f64().unwrap()).sum();
                assert!((sum - 1.0).abs() < 1e-3, "scores are probabilities: {sum}");
                body["digit"] == s["label"]
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let accuracy = results.iter().filter(|ok| **ok).count() as f64 / results.len() as f64;
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
    let expected = holdout["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - expected).abs() < 1e-9,
        "host {accuracy} vs training script {expected} ({} samples)",
        results.len()
    );
    accuracy
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn embed_ranks_related_sentences_higher() {
    let host = shared();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/embed_reference.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let r = client()
        .post(host.url("/embed/embeddings"))
        .json(&json!({"input": texts}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    assert_eq!(body["model"], "all-minilm-l6-v2");
    let embeddings: Vec<Vec<f64>> = data.iter().map(|d| floats(&d["embedding"])).collect();
    for (i, e) in embeddings.iter().enumerate() {
        assert_eq!(data[i]["index"], i);
        assert_eq!(e.len(), 384);
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "normalised: {norm}");
    }
    let related = cosine(&embeddings[0], &embeddings[1]);
    let unrelated = cosine(&embeddings[0], &embeddings[2]);
    println!(
        "embed: cos(guitar, guitar paraphrase) = {related:.4}, cos(guitar, stock market) = {unrelated:.4}"
    );
    assert!(
        related > unrelated + 0.3,
        "related {related} vs unrelated {unrelated}"
    );

    // Same tokens and (nearly) the same vectors as the Python reference (tokenizers + onnxruntime).
    let mut expected_tokens = 0;
    for (i, s) in reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        expected_tokens += s["ids"].as_array().unwrap().len();
        let agreement = cosine(&embeddings[i], &floats(&s["embedding"]));
        assert!(
            agreement > 0.999,
            "sentence {i}: cos with reference {agreement}"
        );
    }
    assert_eq!(body["usage"]["prompt_tokens"], expected_tokens);
}

#[tokio::test]
async fn embed_accepts_a_single_string_and_rejects_bad_input() {
    let host = shared();
    let c = client();
    let url = host.url("/embed/embeddings");
    let r = c
        .post(&url)
        .json(&json!({"input": "hello world"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    expect_error(
        c.post(&url)
            .json(&json!({"input": 42}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_request",
    )
    .await;
    expect_error(
        c.post(&url)
            .json(&json!({"input": []}))
            .send()
            .await
            .unwrap(),
        422,
        "invalid_request",
    )
    .await;
    expect_error(
        c.post(&url).json(&json!({})).send().await.unwrap(),
        422,
        "invalid_request",
    )
    .await;
    let r = c
        .post(&url)
        .json(&json!({"input": ["x"], "model": "no-such-model"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "model_not_found").await;
    // A model that exists on the host but is granted to another plugin is just as invisible.
    let r = c
        .post(&url)
        .json(&json!({"input": ["x"], "model": "digits"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "model_not_found").await;
}

/// Embedding requests that wait for the model together run as one padded batch (tract, one
/// compute slot, so most requests wait): every caller still gets its own sentence's embedding
/// and token count, and `/metrics` shows batches happened.
#[tokio::test]
async fn embed_requests_that_wait_together_are_batched() {
    use crate::harness::{Host, model, wasm};
    let host = Host::start(&format!(
        r#"
[[models]]
name = "all-minilm-l6-v2"
path = "{minilm}"
concurrency = 1
max_batch = 64
batching = {{ max_rows = 16, pad = true }}

[[plugins]]
name = "embed"
path = "{embed}"
models = ["all-minilm-l6-v2"]
"#,
        minilm = model("minilm/model.onnx"),
        embed = wasm("embed"),
    ));
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/embed_reference.json")).unwrap(),
    )
    .unwrap();
    // The non-empty reference sentences (5 to 17 tokens), three times over, all at once.
    let sentences: Vec<Value> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["text"].as_str().unwrap().is_empty())
        .cloned()
        .collect();
    let c = client();
    let url = host.url("/embed/embeddings");
    let requests = sentences.iter().cycle().take(3 * sentences.len()).map(|s| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c
                .post(&url)
                .json(&json!({"input": s["text"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.unwrap();
            let agreement = cosine(
                &floats(&body["data"][0]["embedding"]),
                &floats(&s["embedding"]),
            );
            assert!(
                agreement > 0.999,
                "{:?}: cos with reference {agreement}",
                s["text"]
            );
            assert_eq!(
                body["usage"]["prompt_tokens"],
                s["ids"].as_array().unwrap().len()
            );
        }
    });
    futures::future::join_all(requests).await;

    let (batched, calls) = batch_counters(&host, "all-minilm-l6-v2").await;
    println!(
        "{} requests: {calls} backend calls, {batched} batched",
        3 * sentences.len()
    );
    assert!(batched >= 2.0, "some requests ran together");
    assert!(
        calls < (3 * sentences.len()) as f64,
        "fewer backend calls than requests"
    );
}
