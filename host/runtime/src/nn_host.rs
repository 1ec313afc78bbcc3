//! The `wasi:nn` host: plugins open the host's models by name, and only the ones granted to them.
//!
//! Unlike wasmtime-wasi-nn's own WIT host, `compute` here is async: it hands the inference to the
//! model's scheduler in `infergate-nn` (bounded queue, blocking pool, timeout) and the guest waits
//! without holding an executor thread. A full queue or an inference timeout stops the plugin
//! call with a [`HostAbort`] so the client gets `queue_full` / `inference_timeout` however the
//! plugin handles errors. Loading raw model bytes is refused: the operator owns the models.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use infergate_nn::{Context, Model, Models, NnError};
use tracing::Instrument;
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi_nn::backend::NamedTensor;

use crate::bindings::wit_nn::{errors, graph, inference, tensor};
use crate::state::{HostAbort, PluginState};

/// The host's models by name. Replacing one affects new `load-by-name` calls only: graphs a
/// plugin already opened keep the model they opened until the plugin drops them.
#[derive(Clone, Default)]
pub struct ModelTable(Arc<ArcSwap<HashMap<String, Arc<Model>>>>);

impl ModelTable {
    pub fn new(models: &Models) -> Self {
        let map = models
            .names()
            .filter_map(|n| Some((n.to_string(), models.get(n)?)))
            .collect();
        Self(Arc::new(ArcSwap::from_pointee(map)))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.0.load().get(name).cloned()
    }

    /// Every model, in name order.
    pub fn all(&self) -> Vec<(String, Arc<Model>)> {
        let mut all: Vec<_> = self
            .0
            .load()
            .iter()
            .map(|(n, m)| (n.clone(), m.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Adds or replaces a model.
    pub fn insert(&self, model: Arc<Model>) {
        self.0.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(model.spec().name.clone(), model.clone());
            map
        });
    }

    /// Removes a model; true if it was there.
    pub fn remove(&self, name: &str) -> bool {
        let mut removed = false;
        self.0.rcu(|map| {
            let mut map = HashMap::clone(map);
            removed = map.remove(name).is_some();
            map
        });
        removed
    }
}

/// The models one plugin may open: its grants, looked up in the host's table at call time.
#[derive(Clone, Default)]
pub struct NnState {
    grants: Arc<BTreeSet<String>>,
    models: ModelTable,
}

impl NnState {
    pub fn new(grants: impl IntoIterator<Item = String>, models: ModelTable) -> Self {
        Self {
            grants: Arc::new(grants.into_iter().collect()),
            models,
        }
    }

    fn open(&self, name: &str) -> Option<Arc<Model>> {
        if self.grants.contains(name) {
            self.models.get(name)
        } else {
            None
        }
    }

    /// A granted language model.
    pub(crate) fn open_llm(&self, name: &str) -> Option<Arc<Model>> {
        self.open(name).filter(|m| m.llm().is_some())
    }

    /// Every granted language model, in name order.
    pub(crate) fn granted_llms(&self) -> Vec<Arc<Model>> {
        self.grants
            .iter()
            .filter_map(|n| self.open_llm(n))
            .collect()
    }
}

/// A graph opened by `load-by-name`.
pub struct GraphHandle {
    model: Arc<Model>,
}

/// A guest's execution context on a graph.
pub struct ContextHandle {
    model: Arc<Model>,
    context: Context,
}

/// A `wasi:nn` error resource.
pub struct NnErrorHandle {
    code: errors::ErrorCode,
    data: String,
}

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    errors::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    tensor::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    graph::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    inference::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)?;
    Ok(())
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnErrorHandle>>>;

impl PluginState {
    fn nn_error<T>(&mut self, code: errors::ErrorCode, data: impl Into<String>) -> NnResult<T> {
        let data = data.into();
        tracing::debug!(plugin = %self.plugin, ?code, %data, "wasi-nn error returned to plugin");
        Ok(Err(self.table.push(NnErrorHandle { code, data })?))
    }
}

impl errors::Host for PluginState {}

impl errors::HostError for PluginState {
    fn code(&mut self, err: Resource<NnErrorHandle>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.table.get(&err)?.code)
    }

    fn data(&mut self, err: Resource<NnErrorHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&err)?.data.clone())
    }

    fn drop(&mut self, err: Resource<NnErrorHandle>) -> wasmtime::Result<()> {
        self.table.delete(err)?;
        Ok(())
    }
}

impl tensor::Host for PluginState {}

impl tensor::HostTensor for PluginState {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: tensor::TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<wasmtime_wasi_nn::Tensor>> {
        let tensor = wasmtime_wasi_nn::Tensor::new(dimensions, to_backend_type(ty), data);
        Ok(self.table.push(tensor)?)
    }

    fn dimensions(&mut self, t: Resource<wasmtime_wasi_nn::Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dimensions.clone())
    }

    fn ty(
        &mut self,
        t: Resource<wasmtime_wasi_nn::Tensor>,
    ) -> wasmtime::Result<tensor::TensorType> {
        Ok(from_backend_type(self.table.get(&t)?.ty))
    }

    fn data(&mut self, t: Resource<wasmtime_wasi_nn::Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }

    fn drop(&mut self, t: Resource<wasmtime_wasi_nn::Tensor>) -> wasmtime::Result<()> {
        self.table.delete(t)?;
        Ok(())
    }
}

impl graph::Host for PluginState {
    fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<GraphHandle>> {
        self.nn_error(
            errors::ErrorCode::Security,
            "loading model bytes is not allowed; open an operator-declared model with load-by-name",
        )
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<GraphHandle>> {
        match self.nn.open(&name) {
            Some(model) => Ok(Ok(self.table.push(GraphHandle { model })?)),
            None => self.nn_error(
                errors::ErrorCode::NotFound,
                format!("model `{name}` is not available to this plugin"),
            ),
        }
    }
}

impl graph::HostGraph for PluginState {
    fn init_execution_context(
        &mut self,
        graph: Resource<GraphHandle>,
    ) -> NnResult<Resource<ContextHandle>> {
        let model = self.table.get(&graph)?.model.clone();
        match model.new_context() {
            Ok(context) => Ok(Ok(self.table.push(ContextHandle { model, context })?)),
            Err(e) => self.nn_error(errors::ErrorCode::RuntimeError, e.to_string()),
        }
    }

    fn drop(&mut self, graph: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for PluginState {}

impl inference::HostGraphExecutionContext for PluginState {
    async fn compute(
        &mut self,
        ctx: Resource<ContextHandle>,
        inputs: Vec<inference::NamedTensor>,
    ) -> NnResult<Vec<inference::NamedTensor>> {
        let handle = self.table.get(&ctx)?;
        let (model, context) = (handle.model.clone(), handle.context.clone());
        let mut named = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let tensor = self.table.get(&tensor)?.clone();
            named.push(NamedTensor { name, tensor });
        }
        let span = tracing::debug_span!("nn.compute", model = %model.spec().name);
        let _host = self.cpu.host_work();
        let computed = model
            .compute(&context, named, &self.caller)
            .instrument(span)
            .await;
        match computed {
            Ok(computed) => {
                self.usage.compute_seconds += computed.compute.as_secs_f64();
                let mut outputs = Vec::with_capacity(computed.outputs.len());
                for output in computed.outputs {
                    outputs.push((output.name, self.table.push(output.tensor)?));
                }
                Ok(Ok(outputs))
            }
            Err(
                e @ (NnError::QueueFull { .. }
                | NnError::QueueTimeout { .. }
                | NnError::Timeout { .. }),
            ) => Err(wasmtime::Error::new(HostAbort::Model(e))),
            Err(NnError::InvalidInput(msg)) => {
                self.nn_error(errors::ErrorCode::InvalidArgument, msg)
            }
            Err(NnError::Backend(msg)) => self.nn_error(errors::ErrorCode::RuntimeError, msg),
        }
    }

    fn drop(&mut self, ctx: Resource<ContextHandle>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
    }
}

fn to_backend_type(ty: tensor::TensorType) -> wasmtime_wasi_nn::wit::TensorType {
    use tensor::TensorType as G;
    use wasmtime_wasi_nn::wit::TensorType as B;
    match ty {
        G::Fp16 => B::Fp16,
        G::Fp32 => B::Fp32,
        G::Fp64 => B::Fp64,
        G::Bf16 => B::Bf16,
        G::U8 => B::U8,
        G::I32 => B::I32,
        G::I64 => B::I64,
    }
}

fn from_backend_type(ty: wasmtime_wasi_nn::wit::TensorType) -> tensor::TensorType {
    use tensor::TensorType as G;
    use wasmtime_wasi_nn::wit::TensorType as B;
    match ty {
        B::Fp16 => G::Fp16,
        B::Fp32 => G::Fp32,
        B::Fp64 => G::Fp64,
        B::Bf16 => G::Bf16,
        B::U8 => G::U8,
        B::I32 => G::I32,
        B::I64 => G::I64,
    }
}
