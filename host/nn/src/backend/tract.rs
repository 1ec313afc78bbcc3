//! The tract backend: ONNX models run by tract-onnx, pure Rust, on the CPU.
//!
//! A model is optimised once at load with its symbolic dimensions (batch, sequence) kept
//! symbolic; the resulting plan is immutable and shared, and each compute spawns its own state
//! from it, so computes on one model run in parallel. Should tract fail to optimise a graph
//! symbolically, the model falls back to plans optimised per concrete input shape, kept in a
//! small bounded cache.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use wasmtime_wasi_nn::backend::{BackendError, BackendGraph, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::{
    Dim, Loaded, RunContext, RunModel, TensorSig, backend_failure, guest_fault, output_dims,
    validate,
};
use crate::Target;

pub(crate) const ENGINE: &str = "tract-onnx 0.23";

/// Plans kept per concrete input shapes when symbolic optimisation is not possible.
const SHAPE_PLANS: usize = 8;

type Plan = Arc<TypedSimplePlan>;

/// Loads a model file (external data next to it is found).
pub(crate) fn load_file(path: &Path, target: Target) -> anyhow::Result<Loaded> {
    anyhow::ensure!(
        target == Target::Cpu,
        "tract runs on the cpu only (target {target})"
    );
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("tract could not read the ONNX model")?;
    let graph = TractGraph::new(model)?;
    let description = format!("tract ({}, {})", target, graph.0.mode());
    Ok(Loaded {
        graph: Graph::from(Box::new(graph) as Box<dyn BackendGraph>),
        description,
    })
}

struct TractGraph(Arc<TractModel>);

struct TractModel {
    inputs: Vec<TensorSig>,
    /// Output names in the model's order.
    outputs: Vec<String>,
    /// Datum types of the inputs, in the model's order.
    input_types: Vec<DatumType>,
    plans: Plans,
}

enum Plans {
    /// One plan for every input shape.
    Symbolic(Plan),
    /// The model before optimisation, and the plans made from it per input shapes (newest last).
    PerShape {
        model: Box<InferenceModel>,
        cache: Mutex<VecDeque<(Vec<Vec<usize>>, Plan)>>,
    },
}

impl TractModel {
    fn mode(&self) -> &'static str {
        match self.plans {
            Plans::Symbolic(_) => "symbolic shapes",
            Plans::PerShape { .. } => "plans per input shape",
        }
    }
}

impl TractGraph {
    fn new(model: InferenceModel) -> anyhow::Result<TractGraph> {
        Self::with_planning(model, true)
    }

    /// `symbolic: false` skips straight to plans per input shape (for tests and comparisons).
    fn with_planning(model: InferenceModel, symbolic: bool) -> anyhow::Result<TractGraph> {
        let mut inputs = Vec::new();
        let mut input_types = Vec::new();
        for (ix, outlet) in model.input_outlets()?.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(ix)?;
            let dt = fact
                .datum_type
                .concretize()
                .with_context(|| format!("input `{name}` has no declared type"))?;
            let dims = fact.shape.concretize().map(|dims| {
                dims.iter()
                    .map(|d| match d {
                        TDim::Val(v) if *v >= 0 => Dim::Fixed(*v as u64),
                        TDim::Sym(s) => Dim::Named(s.to_string()),
                        _ => Dim::Any,
                    })
                    .collect()
            });
            inputs.push(TensorSig {
                name,
                ty: wasi_type(dt),
                dims,
            });
            input_types.push(dt);
        }
        let outputs = model
            .output_outlets()?
            .iter()
            .map(|&outlet| {
                model
                    .outlet_label(outlet)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(outlet.node).name.clone())
            })
            .collect();
        let symbolic_plan = if symbolic {
            optimise(model.clone())
        } else {
            Err(anyhow::anyhow!("symbolic planning disabled"))
        };
        let plans = match symbolic_plan {
            Ok(plan) => Plans::Symbolic(plan),
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "tract cannot optimise the model with symbolic shapes; planning per input shape"
                );
                Plans::PerShape {
                    model: Box::new(model),
                    cache: Mutex::new(VecDeque::new()),
                }
            }
        };
        Ok(TractGraph(Arc::new(TractModel {
            inputs,
            outputs,
            input_types,
            plans,
        })))
    }
}

fn optimise(model: InferenceModel) -> TractResult<Plan> {
    model.into_optimized()?.into_runnable()
}

impl TractModel {
    fn plan_for(&self, shapes: &[Vec<usize>]) -> Result<Plan, BackendError> {
        let (model, cache) = match &self.plans {
            Plans::Symbolic(plan) => return Ok(plan.clone()),
            Plans::PerShape { model, cache } => (model, cache),
        };
        {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = cache.iter().position(|(key, _)| key == shapes) {
                let entry = cache.remove(pos).expect("position is in range");
                let plan = entry.1.clone();
                cache.push_back(entry);
                return Ok(plan);
            }
        }
        // Plan outside the lock: other shapes keep running meanwhile.
        // Substitute the symbols everywhere (ONNX files often annotate inner tensors with
        // them too), then pin the inputs' facts.
        let mut concrete = (**model).clone();
        let mut subs = HashMap::new();
        for (sig, shape) in self.inputs.iter().zip(shapes) {
            for (dim, &size) in sig.dims.iter().flatten().zip(shape) {
                if let Dim::Named(sym) = dim {
                    subs.insert(concrete.sym(sym), TDim::Val(size as i64));
                }
            }
        }
        concrete
            .set_symbols(&subs)
            .map_err(|e| backend_failure(format!("{e:#}")))?;
        for (ix, (shape, dt)) in shapes.iter().zip(&self.input_types).enumerate() {
            concrete
                .set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.as_slice()))
                .map_err(|e| backend_failure(format!("{e:#}")))?;
        }
        let plan = optimise(concrete).map_err(|e| {
            guest_fault(format!(
                "the model cannot run on input shapes {shapes:?}: {e:#}"
            ))
        })?;
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= SHAPE_PLANS {
            cache.pop_front();
        }
        cache.push_back((shapes.to_vec(), plan.clone()));
        Ok(plan)
    }
}

/// The wasi-nn type of a tract datum type the guest can feed.
fn wasi_type(dt: DatumType) -> Option<TensorType> {
    Some(match dt {
        DatumType::F16 => TensorType::Fp16,
        DatumType::F32 => TensorType::Fp32,
        DatumType::F64 => TensorType::Fp64,
        DatumType::U8 => TensorType::U8,
        DatumType::I32 => TensorType::I32,
        DatumType::I64 => TensorType::I64,
        _ => return None,
    })
}

/// Converts an output, widening types wasi-nn lacks to the nearest one it has.
fn to_wasi(name: &str, tensor: tract_onnx::prelude::Tensor) -> Result<NamedTensor, BackendError> {
    let dt = tensor.datum_type();
    let (ty, target) = match dt {
        DatumType::Bool => (TensorType::U8, DatumType::U8),
        DatumType::I8 | DatumType::I16 | DatumType::U16 => (TensorType::I32, DatumType::I32),
        DatumType::U32 | DatumType::U64 | DatumType::TDim => (TensorType::I64, DatumType::I64),
        other => match wasi_type(other) {
            Some(ty) => (ty, other),
            None => {
                return Err(backend_failure(format!(
                    "output `{name}` has type {other:?}, which wasi-nn cannot express"
                )));
            }
        },
    };
    let tensor = if target == dt {
        tensor
    } else {
        tensor
            .cast_to_dt(target)
            .map_err(|e| backend_failure(format!("output `{name}`: {e:#}")))?
            .into_owned()
    };
    let dimensions = output_dims(name, tensor.shape())?;
    Ok(NamedTensor {
        name: name.to_string(),
        tensor: crate::Tensor::new(dimensions, ty, tensor.as_bytes().to_vec()),
    })
}

impl RunModel for TractModel {
    const NAME: &'static str = "tract";

    fn inputs(&self) -> &[TensorSig] {
        &self.inputs
    }

    fn run(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, BackendError> {
        let (feeds, shapes) = validate(&self.inputs, &inputs)?;
        let mut values: TVec<TValue> = TVec::with_capacity(feeds.len());
        for ((&i, shape), &dt) in feeds.iter().zip(&shapes).zip(&self.input_types) {
            // SAFETY: only plain numeric datum types reach here (`wasi_type` maps no others),
            // and `validate` checked that the byte length matches the shape.
            let tensor = unsafe {
                tract_onnx::prelude::Tensor::from_raw_dt(dt, shape, &inputs[i].tensor.data)
            }
            .map_err(|e| guest_fault(format!("input `{}`: {e:#}", inputs[i].name)))?;
            values.push(tensor.into_tvalue());
        }
        let plan = self.plan_for(&shapes)?;
        let results = plan
            .run(values)
            .map_err(|e| backend_failure(format!("tract: {e:#}")))?;
        results
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, name)| to_wasi(name, value.into_tensor()))
            .collect()
    }
}

impl BackendGraph for TractGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        Ok(RunContext::boxed(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn models_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
    }

    fn ids(batch: u32, len: u32) -> Vec<NamedTensor> {
        let n = (batch * len) as usize;
        let ids: Vec<i64> = (0..n as i64).map(|i| 1000 + i * 7).collect();
        let le = |v: Vec<i64>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        ["input_ids", "attention_mask", "token_type_ids"]
            .into_iter()
            .zip([le(ids), le(vec![1; n]), le(vec![0; n])])
            .map(|(name, data)| NamedTensor {
                name: name.into(),
                tensor: crate::Tensor::new(vec![batch, len], TensorType::I64, data),
            })
            .collect()
    }

    /// The fallback (plans per input shape) gives the symbolic plan's results, caches plans
    /// by shape, and stays bounded.
    #[test]
    fn plans_per_shape_match_the_symbolic_plan() {
        let path = models_dir().join("minilm/model.onnx");
        let load = || tract_onnx::onnx().model_for_path(&path).unwrap();
        let symbolic = TractGraph::with_planning(load(), true).unwrap().0;
        let per_shape = TractGraph::with_planning(load(), false).unwrap().0;
        assert_eq!(symbolic.mode(), "symbolic shapes");
        assert_eq!(per_shape.mode(), "plans per input shape");
        for (batch, len) in [(1, 10), (2, 5), (1, 10)] {
            let t = Instant::now();
            let a = symbolic.run(ids(batch, len)).unwrap();
            let ta = t.elapsed();
            let t = Instant::now();
            let b = per_shape.run(ids(batch, len)).unwrap();
            let tb = t.elapsed();
            println!(
                "[{batch},{len}] symbolic {ta:?}, per shape {tb:?} (first use includes planning)"
            );
            assert_eq!(a[0].tensor.dimensions, b[0].tensor.dimensions);
            let diff = a[0]
                .tensor
                .data
                .chunks(4)
                .zip(b[0].tensor.data.chunks(4))
                .map(|(x, y)| {
                    (f32::from_le_bytes(x.try_into().unwrap())
                        - f32::from_le_bytes(y.try_into().unwrap()))
                    .abs()
                })
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{diff}");
        }
        let Plans::PerShape { cache, .. } = &per_shape.plans else {
            unreachable!()
        };
        assert_eq!(cache.lock().unwrap().len(), 2);
        for len in 2..(SHAPE_PLANS as u32 + 4) {
            per_shape.run(ids(1, len)).unwrap();
        }
        assert_eq!(cache.lock().unwrap().len(), SHAPE_PLANS);
    }
}
