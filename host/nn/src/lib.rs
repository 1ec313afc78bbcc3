//! infergate-nn: the models the host serves and the inference behind them.
//!
//! This crate owns model loading, the inference backends and the scheduling of inference. It
//! knows nothing about HTTP or plugins: the wasi-nn host glue (in `infergate-runtime`) calls
//! [`Model::compute`] for a guest and maps [`NnError`] onto wasi-nn errors and HTTP statuses.
//!
//! # Layout
//! - [`Models`] / [`Model`] (this file): every configured model, loaded once at start-up and
//!   shared; a model is a backend [`Graph`] plus its scheduler.
//! - `schedule`: the per-model bounded queue, concurrency limit and timeout (`schedule/mod.rs`),
//!   the queue's fairness across tenants (`schedule/fair.rs`) and statistics (`schedule/stats.rs`).
//! - `batch`: batching of the inferences that wait (or, for quick models, arrive) together.
//! - [`llm`]: language models (llama.cpp, feature `llamacpp`): generation streamed token by
//!   token, many sequences decoded together on a thread of the model's own.
//! - `backend`: the graph backends, each behind wasmtime-wasi-nn's public traits
//!   (`BackendGraph`/`BackendExecutionContext`), one file each:
//!   `backend/tract.rs` (pure Rust, always built) and `backend/ort.rs` (ONNX Runtime, loaded
//!   at run time, cargo feature `onnxruntime`). `backend/mod.rs` holds what they share:
//!   the check of every guest tensor before it reaches a backend.
//!
//! Guest input never panics the host: every input is validated (names, types, shapes, byte
//! lengths) and every backend call runs under `catch_unwind`.

mod backend;
mod batch;
mod cores;
pub mod llm;
mod schedule;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
pub use wasmtime_wasi_nn::Tensor;
use wasmtime_wasi_nn::backend::BackendError;
pub use wasmtime_wasi_nn::backend::NamedTensor;
pub use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

pub use backend::{BackendInfo, list as backends};
pub use batch::Batching;
pub use llm::{Llm, LlmOptions};
pub use schedule::{Caller, ModelStats, RECENT_COMPUTES};

/// Which inference engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract-onnx: pure Rust, CPU only, always compiled in.
    Tract,
    /// ONNX Runtime, loaded from a shared library at start-up (feature `onnxruntime`).
    OnnxRuntime,
    /// llama.cpp, for GGUF language models (feature `llamacpp`): text generation.
    #[serde(rename = "llamacpp")]
    LlamaCpp,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Tract => "tract",
            BackendKind::OnnxRuntime => "onnxruntime",
            BackendKind::LlamaCpp => "llamacpp",
        })
    }
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Cpu,
    Gpu,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            Target::Gpu => "gpu",
        })
    }
}

/// One configured model.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name guests load it by.
    pub name: String,
    /// The ONNX file (a GGUF file for `llamacpp`).
    pub path: PathBuf,
    pub backend: BackendKind,
    pub target: Target,
    /// At most this many computes run at once (>= 1); for a language model, the sequences
    /// decoded together.
    pub concurrency: usize,
    /// At most this many callers wait for a compute slot; one more is refused with `QueueFull`.
    pub queue_depth: usize,
    /// The longest a caller waits for a result, queueing included.
    pub timeout: Duration,
    /// The longest a caller waits for a compute slot; then `QueueTimeout`.
    pub queue_timeout: Duration,
    /// The largest leading (batch) dimension any input may have; bounds the memory one compute
    /// can make the host allocate. `None`: no limit beyond the model's own shapes.
    pub max_batch: Option<u32>,
    /// Run inferences that wait at the same time as one backend call (see `batch`).
    pub batching: Option<Batching>,
    /// A language model's own settings (`llamacpp` only).
    pub llm: LlmOptions,
}

/// Settings shared by all backends.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// The ONNX Runtime shared library; when `None`, the `ORT_DYLIB_PATH` environment variable.
    pub ort_dylib: Option<PathBuf>,
    /// Threads one ONNX Runtime session may use inside an operator; when `None`, all cores for a
    /// model with concurrency 1, otherwise cores / concurrency (at least 1).
    pub ort_intra_threads: Option<usize>,
    /// ONNX Runtime graph optimizers that CPU sessions skip; when `None`,
    /// [`ORT_CPU_DISABLED_OPTIMIZERS`].
    pub ort_disabled_optimizers: Option<Vec<String>>,
}

/// The graph optimizers a CPU session of ONNX Runtime skips unless configured otherwise. ONNX
/// Runtime 1.32's CPU kernel for the fused `SkipLayerNormalization` (a residual `Add` and a
/// `LayerNormalization`) computes each row's mean and variance one float at a time, with a
/// division per element: 12.7% of the host's CPU under the benchmark's embed load. Unfused, the
/// `Add` and the `LayerNormalization` kernel are vectorised. Measured on all-MiniLM-L6-v2 at 22
/// tokens, one thread, on an Intel Xeon (AVX-512): 4.56 against 3.87 ms a row in batches of 8
/// (0.82-0.92 in 8 alternating rounds), outputs within 3e-6 (bench/RESULTS.md). GPU sessions
/// keep every fusion.
pub const ORT_CPU_DISABLED_OPTIMIZERS: &[&str] = &["SkipLayerNormFusion"];

/// Why an inference did not produce outputs.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum NnError {
    /// The model's queue is at its depth: answer 503 with `Retry-After`.
    #[error("model `{model}` is busy: its queue is full (retry after {}s)", retry_after.as_secs())]
    QueueFull {
        model: String,
        retry_after: Duration,
    },
    /// No compute slot within the model's queue timeout: answer 503 with `Retry-After`.
    #[error("model `{model}` stayed busy: no compute slot within {after:?}")]
    QueueTimeout {
        model: String,
        after: Duration,
        retry_after: Duration,
    },
    /// No result within the model's timeout, queueing included: answer 504.
    #[error("model `{model}` gave no result within {after:?}")]
    Timeout { model: String, after: Duration },
    /// The guest's tensors do not fit the model (name, type, shape, byte length).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The backend failed.
    #[error("backend error: {0}")]
    Backend(String),
}

/// The outputs of one inference and where its time went.
pub struct Computed {
    pub outputs: Vec<NamedTensor>,
    /// Time spent waiting for a compute slot.
    pub queued: Duration,
    /// Time the backend took.
    pub compute: Duration,
}

impl fmt::Debug for Computed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outputs: Vec<(&str, &Tensor)> = self
            .outputs
            .iter()
            .map(|t| (t.name.as_str(), &t.tensor))
            .collect();
        f.debug_struct("Computed")
            .field("outputs", &outputs)
            .field("queued", &self.queued)
            .field("compute", &self.compute)
            .finish()
    }
}

/// Inputs up to this size may be computed on the async thread when the model is quick (see
/// `schedule`); bigger ones always go to the blocking pool, so a guest cannot stall a runtime
/// thread with a large input to a normally tiny model.
const INLINE_MAX_BYTES: usize = 16 * 1024;

/// All models, loaded once; cheap to clone.
#[derive(Clone, Default)]
pub struct Models {
    models: Arc<BTreeMap<String, Arc<Model>>>,
}

impl fmt::Debug for Models {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.models.values()).finish()
    }
}

impl Models {
    /// Loads every model (blocking: reads files, optimises graphs, starts ONNX Runtime).
    /// Errors name the model and its file.
    pub fn load(specs: &[ModelSpec], opts: &BackendOptions) -> anyhow::Result<Models> {
        let mut models = BTreeMap::new();
        for spec in specs {
            let model = Model::load(spec.clone(), opts).with_context(|| {
                format!(
                    "loading model `{}` from {} with {} ({})",
                    spec.name,
                    spec.path.display(),
                    spec.backend,
                    spec.target
                )
            })?;
            if models.insert(spec.name.clone(), Arc::new(model)).is_some() {
                anyhow::bail!("model `{}` is configured twice", spec.name);
            }
        }
        Ok(Models {
            models: Arc::new(models),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The backends this build has.
    pub fn compiled_backends() -> Vec<BackendKind> {
        backend::list().into_iter().map(|b| b.kind).collect()
    }
}

/// One loaded model: a backend's graph plus its scheduler, or a language model.
pub struct Model {
    spec: ModelSpec,
    /// e.g. "tract 0.23 (cpu)", "onnxruntime 1.32.0 (cuda)".
    description: String,
    kind: Kind,
}

enum Kind {
    /// A graph run through wasi-nn: the backend's graph, shared by every context made from it.
    Graph {
        graph: Graph,
        scheduler: schedule::Scheduler,
        batcher: Option<Arc<batch::Batcher>>,
    },
    /// A language model, used through the host's generation interface.
    Llm(Llm),
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec)
            .field("backend", &self.description)
            .finish()
    }
}

impl Model {
    fn load(spec: ModelSpec, opts: &BackendOptions) -> anyhow::Result<Model> {
        anyhow::ensure!(!spec.name.is_empty(), "the model name is empty");
        anyhow::ensure!(spec.concurrency >= 1, "concurrency must be at least 1");
        anyhow::ensure!(!spec.timeout.is_zero(), "timeout must be above zero");
        if let Some(b) = spec.batching {
            anyhow::ensure!(b.max_rows >= 1, "batching.max_rows must be at least 1");
        }
        anyhow::ensure!(
            spec.path.is_file(),
            "model file {} does not exist",
            spec.path.display()
        );
        let started = Instant::now();
        let (kind, description) = if spec.backend == BackendKind::LlamaCpp {
            let (llm, description) = catch_panic(|| Llm::load(&spec))
                .map_err(|panic| anyhow::anyhow!("llama.cpp panicked: {panic}"))??;
            (Kind::Llm(llm), description)
        } else {
            let loaded = catch_panic(|| backend::load(&spec, opts))
                .map_err(|panic| anyhow::anyhow!("the backend panicked: {panic}"))??;
            let kind = Kind::Graph {
                graph: loaded.graph,
                scheduler: schedule::Scheduler::new(
                    spec.concurrency,
                    spec.queue_depth,
                    spec.queue_timeout,
                ),
                batcher: spec.batching.map(|b| Arc::new(batch::Batcher::new(b))),
            };
            (kind, loaded.description)
        };
        tracing::info!(
            model = %spec.name,
            backend = %description,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "nn.load"
        );
        Ok(Model {
            spec,
            description,
            kind,
        })
    }

    /// The language model, if this is one.
    pub fn llm(&self) -> Option<&Llm> {
        match &self.kind {
            Kind::Llm(llm) => Some(llm),
            Kind::Graph { .. } => None,
        }
    }

    /// The graph side of the model, or why it has none.
    fn graph_parts(
        &self,
    ) -> Result<(&Graph, &schedule::Scheduler, Option<&Arc<batch::Batcher>>), NnError> {
        match &self.kind {
            Kind::Graph {
                graph,
                scheduler,
                batcher,
            } => Ok((graph, scheduler, batcher.as_ref())),
            Kind::Llm(_) => Err(NnError::InvalidInput(format!(
                "model `{}` is a language model: use the infergate:plugin/llm interface, not wasi:nn",
                self.spec.name
            ))),
        }
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Which backend runs the model and where, e.g. "tract 0.23 (cpu)".
    pub fn backend_description(&self) -> String {
        self.description.clone()
    }

    /// A new execution context: one per guest graph-execution-context.
    pub fn new_context(&self) -> Result<Context, NnError> {
        let (graph, _, _) = self.graph_parts()?;
        let ctx = catch_panic(|| graph.init_execution_context())
            .map_err(NnError::Backend)?
            .map_err(from_backend_error)?;
        Ok(Context {
            inner: Arc::new(Mutex::new(ctx)),
        })
    }

    /// Runs one inference for `caller`: waits for a slot in the model's bounded, tenant-fair
    /// queue, runs the backend on a blocking thread (or, for a model whose computes take
    /// microseconds and small inputs, right on the async thread), and gives up after the
    /// model's timeout (queueing included).
    pub async fn compute(
        &self,
        ctx: &Context,
        inputs: Vec<NamedTensor>,
        caller: &Caller,
    ) -> Result<Computed, NnError> {
        let (_, scheduler, batcher) = self.graph_parts()?;
        if let Some(max) = self.spec.max_batch
            && let Some(t) = inputs
                .iter()
                .find(|t| t.tensor.dimensions.first().is_some_and(|&b| b > max))
        {
            return Err(NnError::InvalidInput(format!(
                "input `{}`: batch of {} exceeds model `{}`'s max_batch of {max}",
                t.name, t.tensor.dimensions[0], self.spec.name
            )));
        }
        let small = is_small(&inputs);
        let inputs = match batcher {
            Some(batcher) => match batcher.push(inputs) {
                Ok((ticket, reply)) => {
                    return self
                        .compute_batched(ctx, caller, scheduler, batcher, ticket, reply, small)
                        .await;
                }
                Err(inputs) => inputs,
            },
            None => inputs,
        };
        let inner = ctx.inner.clone();
        scheduler
            .run(
                &self.spec.name,
                caller,
                self.spec.timeout,
                small,
                move || {
                    let mut ctx = inner
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    catch_panic(|| ctx.compute_with_io(inputs))
                        .map_err(|panic| {
                            NnError::Backend(format!("the backend panicked: {panic}"))
                        })?
                        .map_err(from_backend_error)
                },
            )
            .await
            .map(|(outputs, queued, compute)| Computed {
                outputs,
                queued,
                compute,
            })
    }

    /// One inference of a batching model, already in the batcher's pending list: wait for a
    /// slot and run a batch led by this inference, unless another slot's batch answers first.
    ///
    /// A quick model's small computes run on the async thread and never wait for a slot, so a
    /// backlog never forms for them: the caller first yields once, which lets every task its
    /// worker thread has ready (and the sockets that became readable) run before it leads a
    /// batch, and the inferences they reach join it. One backend call then serves several
    /// requests; for a model of microseconds that call's machinery, run cold, is most of its
    /// cost. At one request at a time the yield finds nothing else to run: one more turn of the
    /// scheduler, no measurable latency at one connection in the benchmark.
    #[allow(clippy::too_many_arguments)]
    async fn compute_batched(
        &self,
        ctx: &Context,
        caller: &Caller,
        scheduler: &schedule::Scheduler,
        batcher: &Arc<batch::Batcher>,
        ticket: batch::Ticket<'_>,
        mut reply: tokio::sync::oneshot::Receiver<batch::Reply>,
        small: bool,
    ) -> Result<Computed, NnError> {
        let arrived = Instant::now();
        let quick = small && scheduler.runs_inline();
        if quick {
            tokio::task::yield_now().await;
        }
        let (batcher, inner, id) = (batcher.clone(), ctx.inner.clone(), ticket.id);
        let lead = scheduler.run_if(
            &self.spec.name,
            caller,
            self.spec.timeout,
            quick,
            move || {
                let jobs = batcher.take(id);
                if jobs.is_empty() {
                    return None;
                }
                let mut ctx = inner.lock().unwrap_or_else(|p| p.into_inner());
                let rows = jobs.len();
                let result = if batcher.run(&mut ctx, jobs) {
                    Ok(())
                } else {
                    Err(NnError::Backend("an inference of the batch failed".into()))
                };
                Some((rows, result))
            },
        );
        let answered = async {
            tokio::select! {
                biased;
                answer = &mut reply => answer,
                led = lead => match led {
                    // This caller's slot ran a batch (its own inference included, or taken by
                    // another batch): the answer is on its way or already there.
                    Ok(_) | Err(NnError::Backend(_)) => reply.await,
                    Err(refused) => Ok(Err(refused)),
                },
            }
        };
        let answer = tokio::time::timeout(self.spec.timeout, answered)
            .await
            .map_err(|_| NnError::Timeout {
                model: self.spec.name.clone(),
                after: self.spec.timeout,
            })?;
        drop(ticket);
        let (outputs, compute) =
            answer.map_err(|_| NnError::Backend("the batch ended without an answer".into()))??;
        Ok(Computed {
            outputs,
            queued: arrived.elapsed().saturating_sub(compute),
            compute,
        })
    }

    /// Whether small inputs compute right on the caller's async thread now: the model's recent
    /// computes took microseconds (see `schedule`). Always false for a language model.
    pub fn computes_inline(&self) -> bool {
        match &self.kind {
            Kind::Graph { scheduler, .. } => scheduler.runs_inline(),
            Kind::Llm(_) => false,
        }
    }

    /// The graph scheduler's counters (all zero for a language model: see [`Llm::stats`]).
    pub fn stats(&self) -> ModelStats {
        match &self.kind {
            Kind::Graph {
                scheduler, batcher, ..
            } => {
                let mut stats = scheduler.stats();
                stats.batched = batcher.as_ref().map_or(0, |b| b.batched());
                stats
            }
            Kind::Llm(_) => ModelStats::default(),
        }
    }
}

/// One guest graph-execution-context; it can be moved into a blocking task.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Mutex<ExecutionContext>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Whether `inputs` are small enough to compute on the async thread (see [`INLINE_MAX_BYTES`]).
fn is_small(inputs: &[NamedTensor]) -> bool {
    inputs.iter().map(|t| t.tensor.data.len()).sum::<usize>() <= INLINE_MAX_BYTES
}

/// Runs `f`, turning a panic into its message.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// Sorts a backend's error into the guest's fault or the backend's.
pub(crate) fn from_backend_error(err: BackendError) -> NnError {
    match err {
        BackendError::BackendAccess(e) => match e.downcast_ref::<backend::GuestFault>() {
            Some(fault) => NnError::InvalidInput(fault.0.clone()),
            None => NnError::Backend(format!("{e:#}")),
        },
        BackendError::UnsupportedTensorType(ty) => {
            NnError::InvalidInput(format!("unsupported tensor type {ty}"))
        }
        BackendError::NotEnoughMemory(n) => {
            NnError::InvalidInput(format!("not enough memory for a tensor of {n} bytes"))
        }
        other => NnError::Backend(other.to_string()),
    }
}
