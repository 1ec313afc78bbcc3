//! The ONNX Runtime backend, through the `ort` crate with the library loaded at run time.
//!
//! The library comes from `BackendOptions::ort_dylib` or `ORT_DYLIB_PATH`. It is opened and
//! its version checked here before `ort` sees it, so a missing or too old library is a clear
//! load error rather than a panic inside `ort`. `Session::run` needs `&mut Session`, so each
//! model keeps one session per concurrency slot and computes really run in parallel. A GPU
//! target registers the CUDA provider with error-on-failure: no silent fallback to the CPU.
//! CPU sessions skip the graph optimizers of `BackendOptions::ort_disabled_optimizers`, by
//! default `ORT_CPU_DISABLED_OPTIMIZERS` (a fusion whose CPU kernel is slower than the operators
//! it replaces).

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ort::execution_providers::CUDAExecutionProvider;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::tensor::{PrimitiveTensorElementType, TensorElementType};
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};
use tract_onnx::prelude::f16;
use wasmtime_wasi_nn::backend::{BackendError, BackendGraph, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::{Dim, Loaded, RunContext, RunModel, TensorSig, backend_failure, output_dims, validate};
use crate::{BackendOptions, ModelSpec, Target, Tensor};

pub(crate) const ENGINE: &str = "ort 2.0.0-rc.10 (ONNX Runtime >= 1.22, loaded at run time)";

/// The oldest ONNX Runtime minor version `ort` rc.10 works with (C API 22).
const MIN_MINOR: u32 = 22;

/// The ONNX Runtime library this process uses; set once.
struct Runtime {
    path: PathBuf,
    version: String,
    /// Our own handle, kept open for the life of the process.
    _library: libloading::Library,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// The library `opts` names (or `ORT_DYLIB_PATH`), checked, and `ort` initialised with it.
fn runtime(opts: &BackendOptions) -> anyhow::Result<Arc<Runtime>> {
    let configured = opts
        .ort_dylib
        .clone()
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .context(
            "no ONNX Runtime library configured: set `ort_dylib` or the ORT_DYLIB_PATH environment \
             variable to libonnxruntime.so (>= 1.22)",
        )?;
    let path = configured.canonicalize().with_context(|| {
        format!(
            "the ONNX Runtime library {} does not exist",
            configured.display()
        )
    })?;
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        anyhow::ensure!(
            rt.path == path,
            "ONNX Runtime is already loaded from {}; a process can use only one library, not also {}",
            rt.path.display(),
            path.display()
        );
        return Ok(rt.clone());
    }
    let rt = Arc::new(open(&path)?);
    let path_string = path
        .to_str()
        .context("the library path is not UTF-8")?
        .to_string();
    crate::catch_panic(|| -> ort::Result<()> {
        ort::init_from(path_string)
            .with_name("infergate")
            .commit()?;
        let _ = ort::api();
        Ok(())
    })
    .map_err(|panic| anyhow::anyhow!("ONNX Runtime failed to start: {panic}"))?
    .map_err(|e| anyhow::anyhow!("ONNX Runtime failed to start: {e}"))?;
    tracing::info!(path = %path.display(), version = %rt.version, "nn.ort_loaded");
    *slot = Some(rt.clone());
    Ok(rt)
}

/// `OrtApiBase` from onnxruntime_c_api.h.
#[repr(C)]
struct OrtApiBase {
    get_api: unsafe extern "C" fn(version: u32) -> *const c_void,
    get_version_string: unsafe extern "C" fn() -> *const c_char,
}

/// Opens the library and checks that it is ONNX Runtime with C API >= 22.
fn open(path: &Path) -> anyhow::Result<Runtime> {
    let shown = path.display();
    // SAFETY: loading ONNX Runtime runs its initialisers, which is what using it means.
    let library = unsafe { libloading::Library::new(path) }
        .with_context(|| format!("could not load the ONNX Runtime library {shown}"))?;
    // SAFETY: the symbol's signature is fixed by ONNX Runtime's C API.
    let base = unsafe {
        let get_base = library
            .get::<unsafe extern "C" fn() -> *const OrtApiBase>(b"OrtGetApiBase")
            .with_context(|| format!("{shown} is not ONNX Runtime (no OrtGetApiBase)"))?;
        get_base()
    };
    anyhow::ensure!(!base.is_null(), "{shown}: OrtGetApiBase returned null");
    // SAFETY: `base` points to the library's static OrtApiBase.
    let (version, api) = unsafe {
        let version = CStr::from_ptr(((*base).get_version_string)())
            .to_string_lossy()
            .into_owned();
        (version, ((*base).get_api)(MIN_MINOR))
    };
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    anyhow::ensure!(
        minor >= MIN_MINOR && !api.is_null(),
        "ONNX Runtime {version} at {shown} is too old: this build needs 1.{MIN_MINOR} or newer"
    );
    Ok(Runtime {
        path: path.to_path_buf(),
        version,
        _library: library,
    })
}

pub(crate) fn load_file(spec: &ModelSpec, opts: &BackendOptions) -> anyhow::Result<Loaded> {
    let rt = runtime(opts)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let intra_threads = opts.ort_intra_threads.unwrap_or(if spec.concurrency == 1 {
        0 // ONNX Runtime's default: one per physical core
    } else {
        (cores / spec.concurrency).max(1)
    });
    let disabled = disabled_optimizers(spec.target, opts);
    let mut sessions = Vec::with_capacity(spec.concurrency);
    for _ in 0..spec.concurrency {
        let session = builder(spec.target, intra_threads, &disabled)
            .and_then(|b| b.commit_from_file(&spec.path))
            .map_err(|e| match spec.target {
                Target::Gpu => anyhow::anyhow!(
                    "ONNX Runtime could not create a CUDA session (is there a GPU, and \
                     libonnxruntime built with CUDA and its libraries?): {e}"
                ),
                Target::Cpu => anyhow::anyhow!("ONNX Runtime could not load the model: {e}"),
            })?;
        sessions.push(Mutex::new(session));
    }
    let graph = OrtGraph::new(sessions)?;
    let provider = match spec.target {
        Target::Cpu => "cpu",
        Target::Gpu => "cuda",
    };
    Ok(Loaded {
        graph: Graph::from(Box::new(graph) as Box<dyn BackendGraph>),
        description: format!("onnxruntime {} ({provider})", rt.version),
    })
}

/// The graph optimizers `target`'s sessions skip, as ONNX Runtime's config entry wants them
/// (`;`-separated; empty: none): on the CPU the configured ones or the crate's default
/// ([`crate::ORT_CPU_DISABLED_OPTIMIZERS`]), on a GPU none.
fn disabled_optimizers(target: Target, opts: &BackendOptions) -> String {
    match (target, &opts.ort_disabled_optimizers) {
        (Target::Gpu, _) => String::new(),
        (Target::Cpu, Some(names)) => names.join(";"),
        (Target::Cpu, None) => crate::ORT_CPU_DISABLED_OPTIMIZERS.join(";"),
    }
}

fn builder(target: Target, intra_threads: usize, disabled: &str) -> ort::Result<SessionBuilder> {
    let mut builder = Session::builder()?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(intra_threads)?
        .with_inter_threads(1)?
        // Failures come back as errors (and are logged by the host); keep ONNX Runtime's own
        // logger from writing a guest's bad input to stderr.
        .with_log_level(ort::logging::LogLevel::Fatal)?;
    if !disabled.is_empty() {
        builder = builder.with_disabled_optimizers(disabled)?;
    }
    match target {
        Target::Cpu => Ok(builder),
        Target::Gpu => builder.with_execution_providers([CUDAExecutionProvider::default()
            .build()
            .error_on_failure()]),
    }
}

struct OrtGraph(Arc<OrtModel>);

struct OrtModel {
    inputs: Vec<TensorSig>,
    outputs: Vec<String>,
    /// One session per compute slot; a compute takes a free one.
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl OrtGraph {
    fn new(sessions: Vec<Mutex<Session>>) -> anyhow::Result<OrtGraph> {
        let (inputs, outputs) = {
            let first = sessions[0].lock().unwrap_or_else(|p| p.into_inner());
            let inputs = first
                .inputs
                .iter()
                .map(|i| signature(&i.name, &i.input_type))
                .collect();
            let outputs = first.outputs.iter().map(|o| o.name.clone()).collect();
            (inputs, outputs)
        };
        Ok(OrtGraph(Arc::new(OrtModel {
            inputs,
            outputs,
            sessions,
            next: AtomicUsize::new(0),
        })))
    }
}

fn signature(name: &str, ty: &ValueType) -> TensorSig {
    match ty {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => TensorSig {
            name: name.to_string(),
            ty: wasi_type(*ty),
            dims: Some(
                shape
                    .iter()
                    .enumerate()
                    .map(|(axis, &d)| match dimension_symbols.get(axis) {
                        _ if d >= 0 => Dim::Fixed(d as u64),
                        Some(sym) if !sym.is_empty() => Dim::Named(sym.clone()),
                        _ => Dim::Any,
                    })
                    .collect(),
            ),
        },
        _ => TensorSig {
            name: name.to_string(),
            ty: None,
            dims: None,
        },
    }
}

fn wasi_type(ty: TensorElementType) -> Option<TensorType> {
    Some(match ty {
        TensorElementType::Float16 => TensorType::Fp16,
        TensorElementType::Float32 => TensorType::Fp32,
        TensorElementType::Float64 => TensorType::Fp64,
        TensorElementType::Uint8 => TensorType::U8,
        TensorElementType::Int32 => TensorType::I32,
        TensorElementType::Int64 => TensorType::I64,
        _ => return None,
    })
}

fn ort_failure(what: &str, e: ort::Error) -> BackendError {
    backend_failure(format!("onnxruntime: {what}: {e}"))
}

/// Builds an ONNX Runtime tensor from a validated guest tensor.
fn to_value(t: &NamedTensor, shape: &[usize]) -> Result<DynValue, BackendError> {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let data = &t.tensor.data;
    let value = match t.tensor.ty {
        TensorType::Fp16 => OrtTensor::from_array((shape, le_elements(data, f16::from_le_bytes)))
            .map(|v| v.into_dyn()),
        TensorType::Fp32 => OrtTensor::from_array((shape, le_elements(data, f32::from_le_bytes)))
            .map(|v| v.into_dyn()),
        TensorType::Fp64 => OrtTensor::from_array((shape, le_elements(data, f64::from_le_bytes)))
            .map(|v| v.into_dyn()),
        TensorType::U8 => OrtTensor::from_array((shape, data.clone())).map(|v| v.into_dyn()),
        TensorType::I32 => OrtTensor::from_array((shape, le_elements(data, i32::from_le_bytes)))
            .map(|v| v.into_dyn()),
        TensorType::I64 => OrtTensor::from_array((shape, le_elements(data, i64::from_le_bytes)))
            .map(|v| v.into_dyn()),
        TensorType::Bf16 => return Err(BackendError::UnsupportedTensorType("bf16".into())),
    };
    value.map_err(|e| ort_failure(&format!("input `{}`", t.name), e))
}

/// Copies an output out of ONNX Runtime, widening types wasi-nn lacks.
fn from_value(name: &str, value: &DynValue) -> Result<NamedTensor, BackendError> {
    fn take<T: PrimitiveTensorElementType, const N: usize>(
        name: &str,
        value: &DynValue,
        ty: TensorType,
        bytes: impl Fn(&T) -> [u8; N],
    ) -> Result<NamedTensor, BackendError> {
        let (shape, data) = value
            .try_extract_tensor::<T>()
            .map_err(|e| ort_failure(&format!("output `{name}`"), e))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok(NamedTensor {
            name: name.to_string(),
            tensor: Tensor::new(
                output_dims(name, &shape)?,
                ty,
                data.iter().flat_map(bytes).collect(),
            ),
        })
    }
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(backend_failure(format!("output `{name}` is not a tensor")));
    };
    match ty {
        TensorElementType::Float16 => {
            take::<f16, 2>(name, value, TensorType::Fp16, |x| x.to_le_bytes())
        }
        TensorElementType::Float32 => {
            take::<f32, 4>(name, value, TensorType::Fp32, |x| x.to_le_bytes())
        }
        TensorElementType::Float64 => {
            take::<f64, 8>(name, value, TensorType::Fp64, |x| x.to_le_bytes())
        }
        TensorElementType::Uint8 => take::<u8, 1>(name, value, TensorType::U8, |x| [*x]),
        TensorElementType::Bool => take::<bool, 1>(name, value, TensorType::U8, |x| [u8::from(*x)]),
        TensorElementType::Int8 => take::<i8, 4>(name, value, TensorType::I32, |x| {
            i32::from(*x).to_le_bytes()
        }),
        TensorElementType::Int16 => take::<i16, 4>(name, value, TensorType::I32, |x| {
            i32::from(*x).to_le_bytes()
        }),
        TensorElementType::Uint16 => take::<u16, 4>(name, value, TensorType::I32, |x| {
            i32::from(*x).to_le_bytes()
        }),
        TensorElementType::Int32 => {
            take::<i32, 4>(name, value, TensorType::I32, |x| x.to_le_bytes())
        }
        TensorElementType::Uint32 => take::<u32, 8>(name, value, TensorType::I64, |x| {
            i64::from(*x).to_le_bytes()
        }),
        TensorElementType::Int64 => {
            take::<i64, 8>(name, value, TensorType::I64, |x| x.to_le_bytes())
        }
        TensorElementType::Uint64 => {
            take::<u64, 8>(name, value, TensorType::I64, |x| (*x as i64).to_le_bytes())
        }
        other => Err(backend_failure(format!(
            "output `{name}` has type {other:?}, which wasi-nn cannot express"
        ))),
    }
}

impl RunModel for OrtModel {
    const NAME: &'static str = "onnxruntime";

    fn inputs(&self) -> &[TensorSig] {
        &self.inputs
    }

    fn run(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, BackendError> {
        let (feeds, shapes) = validate(&self.inputs, &inputs)?;
        let mut values = Vec::with_capacity(feeds.len());
        for ((&i, shape), sig) in feeds.iter().zip(&shapes).zip(&self.inputs) {
            values.push((sig.name.as_str(), to_value(&inputs[i], shape)?));
        }
        let mut session = self.session();
        let outputs = session.run(values).map_err(|e| ort_failure("run", e))?;
        self.outputs
            .iter()
            .map(|name| {
                let value = outputs.get(name).ok_or_else(|| {
                    backend_failure(format!("onnxruntime gave no output `{name}`"))
                })?;
                from_value(name, value)
            })
            .collect()
    }
}

impl OrtModel {
    /// The first free session, or (all busy, which the scheduler prevents) the next one in
    /// turn. Always trying the first one first keeps one session's copy of the weights and
    /// its arena in the CPU caches while load is light: alternating between sessions would
    /// have every inference fetch the whole model from memory again (MiniLM: 6.2 ms alone,
    /// 7.7 ms alternating, one request at a time).
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        if let Some(session) = self.sessions.iter().find_map(|s| s.try_lock().ok()) {
            return session;
        }
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl BackendGraph for OrtGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        Ok(RunContext::boxed(self.0.clone()))
    }
}

/// Reads little-endian elements out of guest bytes (no alignment needed).
fn le_elements<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| from(c.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What CPU sessions skip reaches ONNX Runtime: MiniLM's optimized graph holds no fused
    /// `SkipLayerNormalization` by default, and holds them when nothing is skipped.
    #[test]
    fn cpu_sessions_skip_the_skip_layer_norm_fusion_unless_configured() {
        let Some(dylib) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "ORT_DYLIB_PATH is not set, and CI requires the ONNX Runtime tests"
            );
            eprintln!("skipping: ORT_DYLIB_PATH is not set");
            return;
        };
        let opts = BackendOptions {
            ort_dylib: Some(dylib.into()),
            ..Default::default()
        };
        runtime(&opts).unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm/model.onnx");
        let fused = |opts: &BackendOptions, name: &str| {
            let out = std::env::temp_dir().join(format!("{}-{name}.onnx", std::process::id()));
            builder(Target::Cpu, 1, &disabled_optimizers(Target::Cpu, opts))
                .and_then(|b| b.with_optimized_model_path(&out))
                .and_then(|b| b.commit_from_file(&model))
                .unwrap();
            let graph = std::fs::read(&out).unwrap();
            let _ = std::fs::remove_file(&out);
            let op = b"SkipLayerNormalization";
            graph.windows(op.len()).filter(|w| w == op).count()
        };
        assert_eq!(fused(&opts, "default"), 0);
        let everything = BackendOptions {
            ort_disabled_optimizers: Some(Vec::new()),
            ..opts.clone()
        };
        assert!(fused(&everything, "everything") >= 12);
        assert_eq!(disabled_optimizers(Target::Gpu, &opts), "");
        assert_eq!(
            disabled_optimizers(Target::Cpu, &opts),
            "SkipLayerNormFusion"
        );
    }
}
