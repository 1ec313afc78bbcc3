//! The crate against real models: the digits classifier (`models/digits/digits.onnx`) and
//! all-MiniLM-L6-v2 int8 (`models/minilm/model.onnx`, from `models/fetch.sh`).
//!
//! ONNX Runtime tests need `ORT_DYLIB_PATH` (the Makefile sets it from the PyPI wheel); without
//! it they print a skip message and pass, unless `CI` is set, where they fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use infergate_nn::{
    BackendKind, BackendOptions, Caller, Computed, Model, ModelSpec, Models, NamedTensor, NnError,
    Target, Tensor, TensorType,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn digits_path() -> PathBuf {
    repo().join("models/digits/digits.onnx")
}

fn minilm_path() -> PathBuf {
    let path = repo().join("models/minilm/model.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run models/fetch.sh",
        path.display()
    );
    path
}

fn spec(name: &str, path: PathBuf, backend: BackendKind, concurrency: usize) -> ModelSpec {
    ModelSpec {
        name: name.to_string(),
        path,
        backend,
        target: Target::Cpu,
        concurrency,
        queue_depth: 8,
        timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(60),
        max_batch: None,
        batching: None,
        llm: Default::default(),
    }
}

fn load_one(spec: ModelSpec, opts: &BackendOptions) -> std::sync::Arc<Model> {
    let name = spec.name.clone();
    Models::load(&[spec], opts)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .get(&name)
        .expect("loaded model")
}

fn tensor<T: Copy>(
    name: &str,
    ty: TensorType,
    dims: &[u32],
    data: &[T],
    bytes: impl Fn(T) -> Vec<u8>,
) -> NamedTensor {
    NamedTensor {
        name: name.to_string(),
        tensor: Tensor::new(
            dims.to_vec(),
            ty,
            data.iter().flat_map(|&x| bytes(x)).collect(),
        ),
    }
}

fn f32s(name: &str, dims: &[u32], data: &[f32]) -> NamedTensor {
    tensor(name, TensorType::Fp32, dims, data, |x| {
        x.to_le_bytes().to_vec()
    })
}

fn i64s(name: &str, dims: &[u32], data: &[i64]) -> NamedTensor {
    tensor(name, TensorType::I64, dims, data, |x| {
        x.to_le_bytes().to_vec()
    })
}

fn read_f32(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.ty, TensorType::Fp32);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Holdout {
    pixels: Vec<f32>,
    labels: Vec<usize>,
    accuracy: f64,
}

fn holdout() -> Holdout {
    let path = repo().join("tests/data/digits_holdout.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for sample in json["samples"].as_array().unwrap() {
        let px = sample["pixels"].as_array().unwrap();
        assert_eq!(px.len(), 64);
        pixels.extend(px.iter().map(|p| p.as_f64().unwrap() as f32));
        labels.push(sample["label"].as_u64().unwrap() as usize);
    }
    Holdout {
        pixels,
        labels,
        accuracy: json["accuracy"].as_f64().unwrap(),
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

async fn predict_digits(model: &Model, pixels: &[f32]) -> Vec<usize> {
    let n = (pixels.len() / 64) as u32;
    let ctx = model.new_context().unwrap();
    let out = model
        .compute(
            &ctx,
            vec![f32s("pixels", &[n, 64], pixels)],
            &Caller::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].name, "scores");
    assert_eq!(out.outputs[0].tensor.dimensions, vec![n, 10]);
    read_f32(&out.outputs[0].tensor)
        .chunks(10)
        .map(argmax)
        .collect()
}

/// MiniLM inputs for `batch` rows of `len` tokens: [CLS] ... [SEP] with varied ids.
fn minilm_inputs(batch: u32, len: u32) -> Vec<NamedTensor> {
    let mut ids = Vec::new();
    for b in 0..batch as i64 {
        for t in 0..len as i64 {
            ids.push(if t == 0 {
                101
            } else if t == len as i64 - 1 {
                102
            } else {
                1000 + (b * 37 + t * 101) % 20000
            });
        }
    }
    let n = ids.len();
    vec![
        i64s("input_ids", &[batch, len], &ids),
        i64s("attention_mask", &[batch, len], &vec![1; n]),
        i64s("token_type_ids", &[batch, len], &vec![0; n]),
    ]
}

async fn compute(model: &Model, inputs: Vec<NamedTensor>) -> Result<Computed, NnError> {
    let ctx = model.new_context()?;
    model.compute(&ctx, inputs, &Caller::default()).await
}

fn invalid(result: Result<Computed, NnError>) -> String {
    match result {
        Err(NnError::InvalidInput(msg)) => msg,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tract_classifies_the_digits_holdout() {
    let model = load_one(
        spec("digits", digits_path(), BackendKind::Tract, 2),
        &BackendOptions::default(),
    );
    assert!(
        model.backend_description().starts_with("tract"),
        "{}",
        model.backend_description()
    );
    let data = holdout();
    let predictions = predict_digits(&model, &data.pixels).await;
    let right = predictions
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = right as f64 / data.labels.len() as f64;
    println!(
        "tract digits accuracy {accuracy:.4} (training script reported {:.4})",
        data.accuracy
    );
    assert!(accuracy >= 0.95, "accuracy {accuracy}");

    // One sample at a time gives the same answers as the batch.
    for (i, row) in data.pixels.chunks(64).take(20).enumerate() {
        assert_eq!(predict_digits(&model, row).await, vec![predictions[i]]);
    }
    let stats = model.stats();
    assert_eq!(stats.completed, 21);
    assert_eq!((stats.running, stats.queued, stats.failed), (0, 0, 0));
    assert!(stats.busy_seconds_total > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tract_runs_minilm_on_int64_inputs_of_any_length() {
    let model = load_one(
        spec("minilm", minilm_path(), BackendKind::Tract, 1),
        &BackendOptions::default(),
    );
    println!("minilm: {}", model.backend_description());
    for len in [5u32, 12] {
        let out = compute(&model, minilm_inputs(2, len))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let hidden = &out.outputs[0];
        assert_eq!(hidden.name, "last_hidden_state");
        assert_eq!(hidden.tensor.dimensions, vec![2, len, 384]);
        let values = read_f32(&hidden.tensor);
        assert!(values.iter().all(|v| v.is_finite()));
        // The two rows differ (different tokens), so the batch is not collapsed.
        let row = (len * 384) as usize;
        assert_ne!(values[..row], values[row..]);
    }

    // Inputs that disagree on a symbolic dimension are refused before the backend runs.
    let mut mismatched = minilm_inputs(2, 5);
    mismatched[1] = i64s("attention_mask", &[2, 6], &[1; 12]);
    let msg = invalid(compute(&model, mismatched).await);
    assert!(msg.contains("sequence"), "{msg}");

    // Mean-pooled and normalised, the output matches the reference embeddings.
    let path = repo().join("tests/data/embed_reference.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for sentence in json["sentences"].as_array().unwrap().iter().take(3) {
            let ids: Vec<i64> = sentence["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let want: Vec<f32> = sentence["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let len = ids.len() as u32;
            let out = compute(
                &model,
                vec![
                    i64s("input_ids", &[1, len], &ids),
                    i64s("attention_mask", &[1, len], &vec![1; ids.len()]),
                    i64s("token_type_ids", &[1, len], &vec![0; ids.len()]),
                ],
            )
            .await
            .unwrap();
            let hidden = read_f32(&out.outputs[0].tensor);
            let mut pooled = vec![0f32; 384];
            for token in hidden.chunks(384) {
                pooled
                    .iter_mut()
                    .zip(token)
                    .for_each(|(p, t)| *p += t / len as f32);
            }
            let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cos: f32 = pooled.iter().zip(&want).map(|(a, b)| a / norm * b).sum();
            assert!(cos > 0.999, "{}: cos {cos}", sentence["text"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_max_batch_are_refused_before_any_compute() {
    let mut s = spec("digits", digits_path(), BackendKind::Tract, 1);
    s.max_batch = Some(4);
    let model = load_one(s, &BackendOptions::default());
    assert!(
        compute(&model, vec![f32s("pixels", &[4, 64], &[0.0; 256])])
            .await
            .is_ok()
    );
    let msg = invalid(compute(&model, vec![f32s("pixels", &[5, 64], &[0.0; 320])]).await);
    assert!(msg.contains("max_batch of 4"), "{msg}");
    assert_eq!(
        model.stats().completed,
        1,
        "the refused batch never reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_the_guests_fault_and_never_panic() {
    let model = load_one(
        spec("digits", digits_path(), BackendKind::Tract, 1),
        &BackendOptions::default(),
    );
    let ok = vec![0f32; 64];
    let msg = invalid(compute(&model, vec![f32s("image", &[1, 64], &ok)]).await);
    assert!(msg.contains("unknown input `image`"), "{msg}");
    let msg = invalid(compute(&model, vec![f32s("pixels", &[1, 64], &ok[..63])]).await);
    assert!(msg.contains("bytes"), "{msg}");
    let msg = invalid(compute(&model, vec![i64s("pixels", &[1, 64], &[0; 64])]).await);
    assert!(msg.contains("expected fp32"), "{msg}");
    let bf16 = NamedTensor {
        name: "pixels".into(),
        tensor: Tensor::new(vec![1, 64], TensorType::Bf16, vec![0; 128]),
    };
    let msg = invalid(compute(&model, vec![bf16]).await);
    assert!(msg.contains("bf16"), "{msg}");
    let msg = invalid(
        compute(
            &model,
            vec![f32s("pixels", &[u32::MAX, u32::MAX, u32::MAX], &ok)],
        )
        .await,
    );
    assert!(msg.contains("too large"), "{msg}");
    let msg = invalid(compute(&model, vec![f32s("pixels", &[1, 32], &ok[..32])]).await);
    assert!(msg.contains("axis 1 must be 64"), "{msg}");
    let msg = invalid(compute(&model, vec![f32s("pixels", &[64], &ok)]).await);
    assert!(msg.contains("rank"), "{msg}");
    let msg = invalid(compute(&model, vec![]).await);
    assert!(msg.contains("missing input `pixels`"), "{msg}");
    let msg = invalid(
        compute(
            &model,
            vec![f32s("pixels", &[1, 64], &ok), f32s("pixels", &[1, 64], &ok)],
        )
        .await,
    );
    assert!(msg.contains("twice"), "{msg}");
    // The model still works afterwards.
    assert_eq!(predict_digits(&model, &ok).await.len(), 1);
    assert_eq!(model.stats().failed, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_a_timeout_gives_up() {
    let mut s = spec("minilm", minilm_path(), BackendKind::Tract, 1);
    s.queue_depth = 1;
    let model = load_one(s, &BackendOptions::default());
    let slow = || minilm_inputs(4, 128);

    let first = tokio::spawn({
        let model = model.clone();
        async move { compute(&model, slow()).await }
    });
    wait_for(|| model.stats().running == 1).await;
    let second = tokio::spawn({
        let model = model.clone();
        async move { compute(&model, slow()).await }
    });
    wait_for(|| model.stats().queued == 1).await;
    let started = Instant::now();
    match compute(&model, slow()).await {
        Err(NnError::QueueFull { model, retry_after }) => {
            assert_eq!(model, "minilm");
            assert!(retry_after >= Duration::from_secs(1));
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused at once"
    );
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();
    assert!(
        second.queued >= first.compute / 2,
        "the second waited for the first"
    );
    assert_eq!(model.stats().rejected, 1);

    // Timeout: the caller gives up, the compute finishes in the background holding its slot.
    let mut s = spec("minilm-hasty", minilm_path(), BackendKind::Tract, 1);
    s.timeout = Duration::from_millis(20);
    let model = load_one(s, &BackendOptions::default());
    match compute(&model, slow()).await {
        Err(NnError::Timeout { model: name, after }) => {
            assert_eq!(name, "minilm-hasty");
            assert_eq!(after, Duration::from_millis(20));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // A timed-out compute keeps its slot until it really ends (it may start a bit late on a
    // busy machine, but it holds the slot from before the timeout).
    wait_for(|| model.stats().running == 1 || model.stats().completed == 1).await;
    // The wait in the queue counts against the timeout too.
    assert!(matches!(
        compute(&model, slow()).await,
        Err(NnError::Timeout { .. })
    ));
    wait_for(|| model.stats().running == 0 && model.stats().queued == 0).await;
    let stats = model.stats();
    assert_eq!(stats.timed_out, 2);
    assert_eq!(
        stats.completed, 1,
        "the first compute finished; the second never started"
    );
}

async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs two computes at once; returns the most computes the model's own `running` gauge showed
/// at one time while they ran.
///
/// The gauge is read, not intervals rebuilt from the callers' clocks: on a busy machine a
/// caller can be descheduled between its clock read and its arrival at the scheduler, and an
/// interval rebuilt from `queued` then starts too early and seems to overlap. The gauge counts
/// a compute from its start to its end (a few hundred microseconds at the least here), and a
/// separate thread reads it every 50 µs.
async fn most_running_of_two_at_once(model: &std::sync::Arc<Model>) -> u64 {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (model, done) = (model.clone(), done.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                most = most.max(model.stats().running);
                std::thread::sleep(Duration::from_micros(50));
            }
            most
        })
    };
    let run = |model: std::sync::Arc<Model>| async move {
        compute(&model, minilm_inputs(2, 64)).await.unwrap();
    };
    let (a, b) = tokio::join!(
        tokio::spawn(run(model.clone())),
        tokio::spawn(run(model.clone()))
    );
    a.unwrap();
    b.unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    let most = watcher.join().unwrap();
    assert_eq!(model.stats().running, 0, "both computes ended");
    most
}

/// Whether two computes that start together are seen running at once (each takes milliseconds;
/// in the worst case the second started only after the first ended, and this tries again).
async fn computes_overlap(model: &std::sync::Arc<Model>) -> bool {
    for _ in 0..5 {
        if most_running_of_two_at_once(model).await == 2 {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_two_really_overlaps_and_one_does_not() {
    let parallel = load_one(
        spec("minilm-2", minilm_path(), BackendKind::Tract, 2),
        &BackendOptions::default(),
    );
    assert!(
        computes_overlap(&parallel).await,
        "concurrency 2: computes overlap"
    );
    let serial = load_one(
        spec("minilm-1", minilm_path(), BackendKind::Tract, 1),
        &BackendOptions::default(),
    );
    for _ in 0..3 {
        assert_eq!(
            most_running_of_two_at_once(&serial).await,
            1,
            "concurrency 1: computes do not overlap"
        );
    }
    assert_eq!(serial.stats().completed, 6);
}

#[test]
fn load_errors_name_the_model_and_file() {
    let mut s = spec(
        "ghost",
        repo().join("models/nope.onnx"),
        BackendKind::Tract,
        1,
    );
    let err = format!(
        "{:#}",
        Models::load(&[s.clone()], &BackendOptions::default()).unwrap_err()
    );
    assert!(err.contains("ghost") && err.contains("nope.onnx"), "{err}");
    s.path = digits_path();
    s.target = Target::Gpu;
    let err = format!(
        "{:#}",
        Models::load(&[s], &BackendOptions::default()).unwrap_err()
    );
    assert!(err.contains("cpu only"), "{err}");
    assert!(Models::compiled_backends().contains(&BackendKind::Tract));
}

/// Mean of a `[1, len, width]` hidden state over its tokens, unit length.
fn pooled(hidden: &Tensor) -> Vec<f32> {
    let width = *hidden.dimensions.last().unwrap() as usize;
    let values = read_f32(hidden);
    let mut sum = vec![0f32; width];
    for token in values.chunks_exact(width) {
        sum.iter_mut().zip(token).for_each(|(s, v)| *s += v);
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    sum.iter().map(|v| v / norm).collect()
}

/// Inferences that wait together run as one padded batch, and each caller gets back what it
/// would have got alone (its own length; int8 dynamic quantization scales per batch, so equal
/// up to a tiny difference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_inferences_run_as_one_batch_with_the_same_results() {
    let opts = BackendOptions::default();
    let solo = load_one(spec("minilm", minilm_path(), BackendKind::Tract, 1), &opts);
    let mut batching = spec("minilm", minilm_path(), BackendKind::Tract, 1);
    batching.queue_depth = 16;
    batching.batching = Some(infergate_nn::Batching {
        max_rows: 16,
        pad: true,
    });
    let batched = load_one(batching, &opts);

    let lens: Vec<u32> = (6..14).collect();
    let tasks: Vec<_> = lens
        .iter()
        .map(|&len| {
            let model = batched.clone();
            tokio::spawn(async move { compute(&model, minilm_inputs(1, len)).await })
        })
        .collect();
    for (task, &len) in tasks.into_iter().zip(&lens) {
        let together = task.await.unwrap().unwrap();
        let hidden = &together.outputs[0].tensor;
        assert_eq!(
            hidden.dimensions,
            vec![1, len, 384],
            "cut back to its length"
        );
        let alone = compute(&solo, minilm_inputs(1, len)).await.unwrap();
        let cos: f32 = pooled(hidden)
            .iter()
            .zip(pooled(&alone.outputs[0].tensor))
            .map(|(a, b)| a * b)
            .sum();
        assert!(
            cos > 0.999,
            "length {len}: cosine {cos} with the solo result"
        );
    }
    let stats = batched.stats();
    println!(
        "8 inferences: {} backend calls, {} batched",
        stats.completed, stats.batched
    );
    assert!(stats.batched >= 2, "some ran together: {stats:?}");
    assert!(
        stats.completed < 8,
        "fewer backend calls than inferences: {stats:?}"
    );
    assert_eq!(stats.queued, 0);
}

/// A quick model's inferences never wait for a slot, so no backlog forms for them to batch
/// from: the ones a worker thread has ready at the same time are gathered (each yields once
/// before leading) and run as one backend call, each caller getting its own scores.
#[tokio::test(flavor = "current_thread")]
async fn quick_inferences_ready_together_run_as_one_batch() {
    let mut s = spec("digits", digits_path(), BackendKind::Tract, 2);
    s.queue_depth = 64;
    s.batching = Some(infergate_nn::Batching {
        max_rows: 16,
        pad: false,
    });
    let model = load_one(s, &BackendOptions::default());
    let data = holdout();
    // Computes that measured a few microseconds run on the async thread (the first, cold ones
    // take longer, and a busy machine now and then too; the recent average decides).
    let mut warm_up = 0;
    while warm_up < 10 || !model.computes_inline() {
        predict_digits(&model, &data.pixels[..64]).await;
        warm_up += 1;
        assert!(
            warm_up < 10_000,
            "digits never ran inline: {:?}",
            model.stats()
        );
    }

    // 20 requests ready at once on the only thread: 16 in the first batch, 4 in the next.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let model = model.clone();
            let pixels = data.pixels[i * 64..(i + 1) * 64].to_vec();
            tokio::spawn(async move {
                let out = compute(&model, vec![f32s("pixels", &[1, 64], &pixels)]).await;
                read_f32(&out.unwrap().outputs[0].tensor)
            })
        })
        .collect();
    let mut scores = Vec::new();
    for task in tasks {
        scores.extend(task.await.unwrap());
    }
    let solo = load_one(
        spec("digits", digits_path(), BackendKind::Tract, 1),
        &BackendOptions::default(),
    );
    for i in 0..20 {
        let own = &scores[i * 10..(i + 1) * 10];
        let expected = compute(
            &solo,
            vec![f32s("pixels", &[1, 64], &data.pixels[i * 64..(i + 1) * 64])],
        )
        .await
        .unwrap();
        for (a, b) in own.iter().zip(read_f32(&expected.outputs[0].tensor)) {
            assert!(
                (a - b).abs() < 1e-5,
                "request {i}: {own:?} alone gave another answer"
            );
        }
    }
    let stats = model.stats();
    assert_eq!(stats.batched, 20, "every request ran in a batch: {stats:?}");
    assert_eq!(
        stats.completed,
        warm_up + 2,
        "two backend calls for 20 requests: {stats:?}"
    );
}

/// An input the backend refuses fails only its own caller, not the batch it was taken into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_input_in_a_batch_fails_only_its_caller() {
    let mut s = spec("minilm", minilm_path(), BackendKind::Tract, 1);
    s.queue_depth = 16;
    s.batching = Some(infergate_nn::Batching {
        max_rows: 16,
        pad: true,
    });
    let model = load_one(s, &BackendOptions::default());
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let model = model.clone();
            let mut inputs = minilm_inputs(1, 8);
            if i == 3 {
                // A token id far outside the vocabulary: the embedding lookup fails.
                inputs[0] = i64s("input_ids", &[1, 8], &[101, 5, 9_999_999, 7, 8, 9, 10, 102]);
            }
            tokio::spawn(async move { compute(&model, inputs).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if i == 3 {
            assert!(result.is_err(), "the bad input fails");
        } else {
            let out = result.unwrap_or_else(|e| panic!("caller {i} failed: {e}"));
            assert_eq!(out.outputs[0].tensor.dimensions, vec![1, 8, 384]);
        }
    }
}

// ---- ONNX Runtime ----

/// The ONNX Runtime library, or `None` (skip) when absent outside CI.
#[cfg(feature = "onnxruntime")]
fn ort_options(test: &str) -> Option<BackendOptions> {
    match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(path) => Some(BackendOptions {
            ort_dylib: Some(PathBuf::from(path)),
            ort_intra_threads: None,
            ort_disabled_optimizers: None,
        }),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: ORT_DYLIB_PATH is not set, and CI requires the ONNX Runtime tests")
        }
        None => {
            eprintln!(
                "skipping {test}: ORT_DYLIB_PATH is not set (pip install onnxruntime; see the Makefile)"
            );
            None
        }
    }
}

#[cfg(feature = "onnxruntime")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_predicts_the_digits_like_tract() {
    let Some(opts) = ort_options("onnxruntime_predicts_the_digits_like_tract") else {
        return;
    };
    let ort = load_one(
        spec("digits", digits_path(), BackendKind::OnnxRuntime, 2),
        &opts,
    );
    assert!(
        ort.backend_description().starts_with("onnxruntime 1."),
        "{}",
        ort.backend_description()
    );
    assert!(ort.backend_description().ends_with("(cpu)"));
    let tract = load_one(spec("digits", digits_path(), BackendKind::Tract, 1), &opts);
    let data = holdout();
    assert_eq!(
        predict_digits(&ort, &data.pixels).await,
        predict_digits(&tract, &data.pixels).await
    );
    let msg = invalid(compute(&ort, vec![i64s("pixels", &[1, 64], &[0; 64])]).await);
    assert!(msg.contains("expected fp32"), "{msg}");
}

#[cfg(feature = "onnxruntime")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_minilm_matches_tract() {
    let Some(opts) = ort_options("onnxruntime_minilm_matches_tract") else {
        return;
    };
    let ort = load_one(
        spec("minilm", minilm_path(), BackendKind::OnnxRuntime, 2),
        &opts,
    );
    let tract = load_one(spec("minilm", minilm_path(), BackendKind::Tract, 1), &opts);
    for (batch, len) in [(1u32, 10u32), (2, 7)] {
        let a = compute(&ort, minilm_inputs(batch, len)).await.unwrap();
        let b = compute(&tract, minilm_inputs(batch, len)).await.unwrap();
        assert_eq!(a.outputs[0].tensor.dimensions, vec![batch, len, 384]);
        assert_eq!(
            a.outputs[0].tensor.dimensions,
            b.outputs[0].tensor.dimensions
        );
        let diff = read_f32(&a.outputs[0].tensor)
            .iter()
            .zip(read_f32(&b.outputs[0].tensor))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!("minilm [{batch},{len}]: max |onnxruntime - tract| = {diff:e}");
        assert!(diff <= 1e-3, "max difference {diff}");
    }
    // Two computes on one model run at once (one session per slot).
    assert!(computes_overlap(&ort).await, "onnxruntime computes overlap");
}

#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_load_errors_are_clear() {
    let missing = BackendOptions {
        ort_dylib: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ort_intra_threads: None,
        ort_disabled_optimizers: None,
    };
    let err = format!(
        "{:#}",
        Models::load(
            &[spec("digits", digits_path(), BackendKind::OnnxRuntime, 1)],
            &missing
        )
        .unwrap_err()
    );
    assert!(
        err.contains("does not exist") && err.contains("digits"),
        "{err}"
    );
    let not_a_library = BackendOptions {
        ort_dylib: Some(digits_path()),
        ort_intra_threads: None,
        ort_disabled_optimizers: None,
    };
    let err = format!(
        "{:#}",
        Models::load(
            &[spec("digits", digits_path(), BackendKind::OnnxRuntime, 1)],
            &not_a_library
        )
        .unwrap_err()
    );
    assert!(
        err.contains("could not load the ONNX Runtime library"),
        "{err}"
    );

    let Some(opts) = ort_options("onnxruntime_load_errors_are_clear") else {
        return;
    };
    // A GPU target without a usable CUDA provider is a load error, never a CPU fallback.
    let mut gpu = spec("digits-gpu", digits_path(), BackendKind::OnnxRuntime, 1);
    gpu.target = Target::Gpu;
    match Models::load(&[gpu], &opts) {
        Err(e) => assert!(format!("{e:#}").contains("CUDA"), "{e:#}"),
        Ok(models) => {
            let desc = models.get("digits-gpu").unwrap().backend_description();
            assert!(desc.ends_with("(cuda)"), "{desc}");
        }
    }
}
