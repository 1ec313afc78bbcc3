//! The inference backends, each behind wasmtime-wasi-nn's public backend traits, one file per
//! backend; this module holds what they share: the description of a model's tensors, the check
//! of every guest tensor against it, the plumbing for wasi-nn's set-input/get-output style, and
//! [`list`] of what this build has.

pub(crate) mod tract;

#[cfg(feature = "onnxruntime")]
pub(crate) mod ort;

use std::collections::HashMap;
use std::fmt;

use wasmtime_wasi_nn::Graph;
use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, Id, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;

use crate::{BackendKind, BackendOptions, ModelSpec, Tensor};

/// One backend compiled into this build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub kind: BackendKind,
    /// The engine and its version, e.g. "tract-onnx 0.23", "ort 2.0.0-rc.10 (ONNX Runtime >= 1.22, loaded at run time)".
    pub engine: &'static str,
}

/// The backends this build has, tract first.
pub fn list() -> Vec<BackendInfo> {
    #[allow(unused_mut, reason = "pushed to when more backends are compiled in")]
    let mut backends = vec![BackendInfo {
        kind: BackendKind::Tract,
        engine: tract::ENGINE,
    }];
    #[cfg(feature = "onnxruntime")]
    backends.push(BackendInfo {
        kind: BackendKind::OnnxRuntime,
        engine: ort::ENGINE,
    });
    #[cfg(feature = "llamacpp")]
    backends.push(BackendInfo {
        kind: BackendKind::LlamaCpp,
        engine: "llama.cpp (llama-cpp-2 0.1.160, built from its bundled source)",
    });
    backends
}

/// A model as a backend made it ready.
pub(crate) struct Loaded {
    pub graph: Graph,
    pub description: String,
}

pub(crate) fn load(spec: &ModelSpec, opts: &BackendOptions) -> anyhow::Result<Loaded> {
    match spec.backend {
        BackendKind::Tract => tract::load_file(&spec.path, spec.target),
        #[cfg(feature = "onnxruntime")]
        BackendKind::OnnxRuntime => ort::load_file(spec, opts),
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::OnnxRuntime => {
            let _ = opts;
            anyhow::bail!("this build has no ONNX Runtime backend (cargo feature `onnxruntime`)")
        }
        BackendKind::LlamaCpp => anyhow::bail!("llama.cpp loads language models, not graphs"),
    }
}

/// An error that is the guest's fault; travels inside `BackendError::BackendAccess` so that the
/// caller can tell it from a backend failure.
#[derive(Debug)]
pub(crate) struct GuestFault(pub String);

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for GuestFault {}

pub(crate) fn guest_fault(msg: impl Into<String>) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::new(GuestFault(msg.into())))
}

pub(crate) fn backend_failure(msg: impl Into<String>) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::msg(msg.into()))
}

/// One dimension of a model's declared tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dim {
    Fixed(u64),
    /// Symbolic: every use of the same name in one call must have the same size.
    Named(String),
    Any,
}

/// A model's declared input or output.
#[derive(Clone, Debug)]
pub(crate) struct TensorSig {
    pub name: String,
    /// `None`: a type wasi-nn cannot express (the input cannot be fed).
    pub ty: Option<TensorType>,
    /// `None`: rank unknown.
    pub dims: Option<Vec<Dim>>,
}

pub(crate) fn element_size(ty: TensorType) -> usize {
    match ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    }
}

pub(crate) fn type_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Fp16 => "fp16",
        TensorType::Fp32 => "fp32",
        TensorType::Fp64 => "fp64",
        TensorType::Bf16 => "bf16",
        TensorType::U8 => "u8",
        TensorType::I32 => "i32",
        TensorType::I64 => "i64",
    }
}

/// Checks the guest's tensors against the model's inputs: every input given exactly once by
/// name, none unknown, the declared type, a compatible shape, and a byte length equal to the
/// element count times the element size. Returns, for each model input in order, the index of
/// the guest tensor that feeds it, and the tensors' shapes.
pub(crate) fn validate(
    sig: &[TensorSig],
    inputs: &[NamedTensor],
) -> Result<(Vec<usize>, Vec<Vec<usize>>), BackendError> {
    let mut order: Vec<Option<usize>> = vec![None; sig.len()];
    for (i, input) in inputs.iter().enumerate() {
        let Some(slot) = sig.iter().position(|s| s.name == input.name) else {
            let known: Vec<&str> = sig.iter().map(|s| s.name.as_str()).collect();
            return Err(guest_fault(format!(
                "unknown input `{}` (the model's inputs: {})",
                input.name,
                known.join(", ")
            )));
        };
        if order[slot].replace(i).is_some() {
            return Err(guest_fault(format!("input `{}` given twice", input.name)));
        }
    }
    let mut symbols: HashMap<&str, (u64, &str)> = HashMap::new();
    let mut feeds = Vec::with_capacity(sig.len());
    let mut shapes = Vec::with_capacity(sig.len());
    for (slot, s) in sig.iter().enumerate() {
        let Some(i) = order[slot] else {
            return Err(guest_fault(format!("missing input `{}`", s.name)));
        };
        let tensor = &inputs[i].tensor;
        shapes.push(check_tensor(s, tensor, &mut symbols)?);
        feeds.push(i);
    }
    Ok((feeds, shapes))
}

fn check_tensor<'a>(
    s: &'a TensorSig,
    tensor: &Tensor,
    symbols: &mut HashMap<&'a str, (u64, &'a str)>,
) -> Result<Vec<usize>, BackendError> {
    let name = &s.name;
    if tensor.ty == TensorType::Bf16 {
        return Err(guest_fault(format!(
            "input `{name}`: tensor type bf16 is not supported"
        )));
    }
    match s.ty {
        Some(ty) if ty == tensor.ty => {}
        Some(ty) => {
            return Err(guest_fault(format!(
                "input `{name}`: expected {} but got {}",
                type_name(ty),
                type_name(tensor.ty)
            )));
        }
        None => {
            return Err(guest_fault(format!(
                "input `{name}` has a type wasi-nn cannot express"
            )));
        }
    }
    let dims = &tensor.dimensions;
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .and_then(|n| n.checked_mul(element_size(tensor.ty) as u64))
        .filter(|&bytes| bytes <= isize::MAX as u64);
    let Some(expected_bytes) = count else {
        return Err(guest_fault(format!(
            "input `{name}`: dimensions {dims:?} are too large"
        )));
    };
    if expected_bytes != tensor.data.len() as u64 {
        return Err(guest_fault(format!(
            "input `{name}`: dimensions {dims:?} of {} need {expected_bytes} bytes but {} were given",
            type_name(tensor.ty),
            tensor.data.len()
        )));
    }
    if let Some(declared) = &s.dims {
        if declared.len() != dims.len() {
            return Err(guest_fault(format!(
                "input `{name}`: expected rank {} but got dimensions {dims:?}",
                declared.len()
            )));
        }
        for (axis, (want, &got)) in declared.iter().zip(dims).enumerate() {
            let got = u64::from(got);
            match want {
                Dim::Fixed(n) if *n != got => {
                    return Err(guest_fault(format!(
                        "input `{name}`: axis {axis} must be {n} but is {got}"
                    )));
                }
                Dim::Named(sym) => match symbols.get(sym.as_str()) {
                    Some(&(seen, by)) if seen != got => {
                        return Err(guest_fault(format!(
                            "input `{name}`: axis {axis} (`{sym}`) is {got} but `{by}` set it to {seen}"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        symbols.insert(sym, (got, name));
                    }
                },
                _ => {}
            }
        }
    }
    Ok(dims.iter().map(|&d| d as usize).collect())
}

/// A loaded model as the shared execution context sees it: each backend implements this once.
pub(crate) trait RunModel: Send + Sync + 'static {
    /// The engine's name in error messages.
    const NAME: &'static str;
    /// The model's declared inputs, for wasi-nn's set-input by index.
    fn inputs(&self) -> &[TensorSig];
    /// Validates the guest's tensors and runs the model once.
    fn run(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, BackendError>;
}

/// The execution context of every backend: a shared model plus the slots of wasi-nn's older
/// call style (set-input, compute, get-output). Every run is guarded against panics.
pub(crate) struct RunContext<M> {
    model: std::sync::Arc<M>,
    io: IoSlots,
}

impl<M: RunModel> RunContext<M> {
    pub fn boxed(model: std::sync::Arc<M>) -> wasmtime_wasi_nn::ExecutionContext {
        let ctx: Box<dyn BackendExecutionContext> = Box::new(Self {
            model,
            io: IoSlots::default(),
        });
        ctx.into()
    }
}

impl<M: RunModel> BackendExecutionContext for RunContext<M> {
    fn set_input(&mut self, id: Id, tensor: &Tensor) -> Result<(), BackendError> {
        self.io.set_input(self.model.inputs(), id, tensor)
    }

    fn get_output(&mut self, id: Id) -> Result<Tensor, BackendError> {
        self.io.get_output(id)
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        let model = &self.model;
        match inputs {
            Some(inputs) => guarded(M::NAME, || model.run(inputs)).map(Some),
            None => {
                let inputs = self.io.take_inputs();
                let outputs = guarded(M::NAME, || model.run(inputs))?;
                self.io.set_outputs(outputs);
                Ok(None)
            }
        }
    }
}

/// The state behind wasi-nn's older call style (set-input, compute, get-output).
#[derive(Default)]
struct IoSlots {
    inputs: Vec<NamedTensor>,
    outputs: Vec<NamedTensor>,
}

impl IoSlots {
    pub fn set_input(
        &mut self,
        sig: &[TensorSig],
        id: Id,
        tensor: &Tensor,
    ) -> Result<(), BackendError> {
        let name = match id {
            Id::Name(name) => name,
            Id::Index(i) => sig
                .get(i as usize)
                .map(|s| s.name.clone())
                .ok_or_else(|| guest_fault(format!("no input at index {i}")))?,
        };
        self.inputs.retain(|t| t.name != name);
        self.inputs.push(NamedTensor {
            name,
            tensor: tensor.clone(),
        });
        Ok(())
    }

    pub fn take_inputs(&mut self) -> Vec<NamedTensor> {
        std::mem::take(&mut self.inputs)
    }

    pub fn set_outputs(&mut self, outputs: Vec<NamedTensor>) {
        self.outputs = outputs;
    }

    pub fn get_output(&self, id: Id) -> Result<Tensor, BackendError> {
        let found = match &id {
            Id::Name(name) => self.outputs.iter().find(|t| &t.name == name),
            Id::Index(i) => self.outputs.get(*i as usize),
        };
        found
            .map(|t| t.tensor.clone())
            .ok_or_else(|| guest_fault(format!("no output {id:?} (has compute run?)")))
    }
}

/// Runs a backend call, turning a panic into a backend error.
fn guarded<T>(
    engine: &str,
    f: impl FnOnce() -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    crate::catch_panic(f)
        .unwrap_or_else(|panic| Err(backend_failure(format!("{engine} panicked: {panic}"))))
}

/// Turns output dimensions into wasi-nn's u32 dimensions.
pub(crate) fn output_dims(name: &str, shape: &[usize]) -> Result<Vec<u32>, BackendError> {
    shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| backend_failure(format!("output `{name}`: dimensions {shape:?} exceed u32")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Vec<TensorSig> {
        vec![
            TensorSig {
                name: "ids".into(),
                ty: Some(TensorType::I64),
                dims: Some(vec![Dim::Named("batch".into()), Dim::Named("seq".into())]),
            },
            TensorSig {
                name: "mask".into(),
                ty: Some(TensorType::I64),
                dims: Some(vec![Dim::Named("batch".into()), Dim::Named("seq".into())]),
            },
        ]
    }

    fn t(name: &str, ty: TensorType, dims: &[u32], bytes: usize) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(dims.to_vec(), ty, vec![0; bytes]),
        }
    }

    fn fault(r: Result<(Vec<usize>, Vec<Vec<usize>>), BackendError>) -> String {
        match r {
            Err(BackendError::BackendAccess(e)) => e
                .downcast_ref::<GuestFault>()
                .expect("guest fault")
                .0
                .clone(),
            Err(e) => panic!("not a guest fault: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn accepts_matching_inputs_in_any_order() {
        let (order, shapes) = validate(
            &sig(),
            &[
                t("mask", TensorType::I64, &[2, 3], 48),
                t("ids", TensorType::I64, &[2, 3], 48),
            ],
        )
        .unwrap();
        assert_eq!(order, vec![1, 0]);
        assert_eq!(shapes, vec![vec![2, 3], vec![2, 3]]);
    }

    #[test]
    fn refuses_inconsistent_symbols_missing_and_overflowing_inputs() {
        let s = sig();
        assert!(
            fault(validate(
                &s,
                &[
                    t("ids", TensorType::I64, &[2, 3], 48),
                    t("mask", TensorType::I64, &[2, 4], 64)
                ]
            ))
            .contains("seq")
        );
        assert!(fault(validate(&s, &[t("ids", TensorType::I64, &[2, 3], 48)])).contains("missing"));
        assert!(
            fault(validate(
                &s,
                &[t(
                    "ids",
                    TensorType::I64,
                    &[u32::MAX, u32::MAX, u32::MAX],
                    8
                )]
            ))
            .contains("too large")
        );
        assert!(fault(validate(&s, &[t("ids", TensorType::I64, &[2, 3, 1], 48)])).contains("rank"));
    }
}
