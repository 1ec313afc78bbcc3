//! The physical floor of the benchmark (bench/run.sh): how long the backend itself takes per
//! inference on exactly the inputs of the benchmark's requests, called directly from Rust (no
//! HTTP, no plugin), for each backend this build has (tract; ONNX Runtime with ORT_DYLIB_PATH).
//!
//! Inputs: the digit image of `bench/requests/digits.json` ([1, 64]) and the token ids of the
//! sentence of `bench/requests/embed.json` ([1, 19], from the all-MiniLM-L6-v2 tokenizer; the
//! embed plugin and the Python peer produce the same ids). ONNX Runtime runs 1 intra-op thread,
//! as in the benchmark (2 compute slots on 2 cores). Each case: a warm-up, then N inferences one
//! after the other; prints the median and p99 of the backend's compute time, and the median
//! with the scheduler around it (queue, and the hand-off to a blocking thread for a model that
//! needs one).
//!
//! `cargo build --release --workspace --examples && ORT_DYLIB_PATH=... target/release/examples/floor`
//! Output lines, one per backend and model (bench/report.py reads them):
//! `floor BACKEND MODEL median_us p99_us with_scheduling_median_us`

use std::path::PathBuf;
use std::time::Duration;

use infergate_nn::{
    BackendKind, BackendOptions, ModelSpec, Models, NamedTensor, Target, Tensor, TensorType,
};

/// bench/requests/digits.json (a handwritten 0).
const PIXELS: [f32; 64] = [
    0., 0., 5., 13., 9., 1., 0., 0., 0., 0., 13., 15., 10., 15., 5., 0., 0., 3., 15., 2., 0., 11.,
    8., 0., 0., 4., 12., 0., 0., 8., 8., 0., 0., 5., 8., 0., 0., 9., 8., 0., 0., 4., 11., 0., 1.,
    12., 7., 0., 0., 2., 14., 5., 10., 12., 0., 0., 0., 0., 6., 13., 10., 0., 0., 0.,
];

/// "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."
/// ([CLS] ... [SEP]), the sentence of bench/requests/embed.json.
const TOKEN_IDS: [i64; 19] = [
    101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 2096, 1996, 7500, 12197, 2013,
    1996, 7424, 1012, 102,
];

fn tensor(name: &str, ty: TensorType, dims: &[u32], data: Vec<u8>) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        tensor: Tensor::new(dims.to_vec(), ty, data),
    }
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Case {
    model: &'static str,
    path: PathBuf,
    inputs: Vec<NamedTensor>,
    iterations: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut backends = vec![BackendKind::Tract];
    if std::env::var_os("ORT_DYLIB_PATH").is_some()
        && Models::compiled_backends().contains(&BackendKind::OnnxRuntime)
    {
        backends.push(BackendKind::OnnxRuntime);
    } else {
        eprintln!("(onnxruntime skipped: set ORT_DYLIB_PATH)");
    }
    let len = TOKEN_IDS.len() as u32;
    let cases = [
        Case {
            model: "digits",
            path: models.join("digits/digits.onnx"),
            inputs: vec![tensor(
                "pixels",
                TensorType::Fp32,
                &[1, 64],
                PIXELS.iter().flat_map(|p| p.to_le_bytes()).collect(),
            )],
            iterations: 5000,
        },
        Case {
            model: "embed",
            path: models.join("minilm/model.onnx"),
            inputs: vec![
                tensor("input_ids", TensorType::I64, &[1, len], i64s(&TOKEN_IDS)),
                tensor(
                    "attention_mask",
                    TensorType::I64,
                    &[1, len],
                    i64s(&[1; TOKEN_IDS.len()]),
                ),
                tensor(
                    "token_type_ids",
                    TensorType::I64,
                    &[1, len],
                    i64s(&[0; TOKEN_IDS.len()]),
                ),
            ],
            iterations: 500,
        },
    ];
    let options = BackendOptions {
        ort_intra_threads: Some(1),
        ..Default::default()
    };
    println!("# floor BACKEND MODEL median_us p99_us with_scheduling_median_us");
    for backend in backends {
        for case in &cases {
            let spec = ModelSpec {
                name: case.model.to_string(),
                path: case.path.clone(),
                backend,
                target: Target::Cpu,
                concurrency: 1,
                queue_depth: 0,
                timeout: Duration::from_secs(60),
                queue_timeout: Duration::from_secs(60),
                max_batch: None,
                batching: None,
                llm: Default::default(),
            };
            let loaded = Models::load(&[spec], &options)?;
            let model = loaded.get(case.model).expect("loaded");
            let ctx = model.new_context()?;
            let warm_up = case.iterations / 10;
            let mut compute = Vec::with_capacity(case.iterations);
            let mut total = Vec::with_capacity(case.iterations);
            for run in 0..warm_up + case.iterations {
                let started = std::time::Instant::now();
                let inputs = case
                    .inputs
                    .iter()
                    .map(|t| NamedTensor {
                        name: t.name.clone(),
                        tensor: t.tensor.clone(),
                    })
                    .collect();
                let out = model.compute(&ctx, inputs, &Default::default()).await?;
                let elapsed = started.elapsed();
                if run == 0 && case.model == "digits" {
                    let scores: Vec<f32> = out.outputs[0]
                        .tensor
                        .data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    let digit = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b]));
                    anyhow::ensure!(digit == Some(0), "digits: expected a 0, got {digit:?}");
                }
                if run >= warm_up {
                    compute.push(out.compute);
                    total.push(elapsed);
                }
            }
            compute.sort();
            total.sort();
            let at = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            println!(
                "floor {backend} {} {:.1} {:.1} {:.1}    # {}, {} inferences",
                case.model,
                micros(at(&compute, 0.5)),
                micros(at(&compute, 0.99)),
                micros(at(&total, 0.5)),
                model.backend_description(),
                case.iterations,
            );
        }
    }
    Ok(())
}
