//! Prints how long one inference takes per backend: a digits classification (batch 1) and a
//! MiniLM embedding (batch 1, 10 tokens), after a warm-up, as the median of a few runs.
//!
//! `ORT_DYLIB_PATH=... cargo run --release -p infergate-nn --example timings`

use std::path::PathBuf;
use std::time::Duration;

use infergate_nn::{
    BackendKind, BackendOptions, ModelSpec, Models, NamedTensor, Target, Tensor, TensorType,
};

fn tensor(name: &str, ty: TensorType, dims: &[u32], data: Vec<u8>) -> NamedTensor {
    NamedTensor {
        name: name.into(),
        tensor: Tensor::new(dims.to_vec(), ty, data),
    }
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
        println!("(onnxruntime skipped: set ORT_DYLIB_PATH)");
    }
    let ids: Vec<i64> = vec![101, 7592, 2088, 2003, 1037, 3231, 1997, 1996, 6254, 102];
    let le = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cases: Vec<(&str, PathBuf, Vec<NamedTensor>)> = vec![
        (
            "digits [1,64]",
            models.join("digits/digits.onnx"),
            vec![tensor(
                "pixels",
                TensorType::Fp32,
                &[1, 64],
                (0..64)
                    .flat_map(|i| ((i % 17) as f32).to_le_bytes())
                    .collect(),
            )],
        ),
        (
            "minilm [1,10]",
            models.join("minilm/model.onnx"),
            vec![
                tensor("input_ids", TensorType::I64, &[1, 10], le(&ids)),
                tensor("attention_mask", TensorType::I64, &[1, 10], le(&[1; 10])),
                tensor("token_type_ids", TensorType::I64, &[1, 10], le(&[0; 10])),
            ],
        ),
    ];
    for backend in backends {
        for (label, path, inputs) in &cases {
            let spec = ModelSpec {
                name: label.to_string(),
                path: path.clone(),
                backend,
                target: Target::Cpu,
                concurrency: 1,
                queue_depth: 0,
                timeout: Duration::from_secs(60),
                queue_timeout: Duration::from_secs(60),
                max_batch: None,
                batching: None,
            };
            let models = Models::load(&[spec], &BackendOptions::default())?;
            let model = models.get(label).expect("loaded");
            let ctx = model.new_context()?;
            let mut compute = Vec::new();
            let mut total = Vec::new();
            for run in 0..25 {
                let started = std::time::Instant::now();
                let out = model
                    .compute(
                        &ctx,
                        inputs
                            .iter()
                            .map(|t| NamedTensor {
                                name: t.name.clone(),
                                tensor: t.tensor.clone(),
                            })
                            .collect(),
                        &Default::default(),
                    )
                    .await?;
                if run >= 5 {
                    compute.push(out.compute);
                    total.push(started.elapsed());
                }
            }
            compute.sort();
            total.sort();
            println!(
                "{:<28} {label}: compute {:>9.3?} (median of 20), with scheduling {:>9.3?}",
                model.backend_description(),
                compute[compute.len() / 2],
                total[total.len() / 2]
            );
        }
    }
    Ok(())
}
