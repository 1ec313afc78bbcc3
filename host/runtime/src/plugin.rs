//! A loaded plugin, and one call of it.
//!
//! Loading compiles the component (or takes it from the cache) off the async runtime, links it
//! into an `InstancePre`, reads and validates its manifest in a throw-away store, and checks the
//! operator granted every model it wants. A call gets a fresh store with the plugin's limits (or,
//! for a plugin with `reuse`, a warm one of the same tenant: [`crate::pool`]),
//! hands the request to `wasi:http/incoming-handler`, and collects the response within the
//! plugin's wall-clock and size limits. The guest runs in the caller's task, beside the
//! collection of its response; only a streaming route's guest gets a task of its own. Every way a plugin can fail maps to one [`InvokeError`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use crate::bindings::PluginPre;
use crate::bindings::exports::wasi::http::incoming_handler::{
    Guest as Handler, GuestIndices as HandlerIndices,
};
use crate::engine::{CacheOutcome, Runtime};
use crate::limits::{Limits, configure_store};
use crate::manifest::Manifest;
use crate::nn_host::{ModelTable, NnState};
use crate::pool::{Pool, Warm};
use crate::state::{HostAbort, PluginState, RequestContext, TokenBudget, Usage, UsageSink};

/// What the operator declared about one plugin.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// Bytes of the component.
    pub wasm: Arc<[u8]>,
    pub limits: Limits,
    /// Models the plugin may open; must include every model its manifest lists.
    pub models: Vec<String>,
    /// Where it may send HTTP requests (`scheme://host[:port]`); empty: nowhere.
    pub allowed_outbound_hosts: Vec<String>,
    /// Values it reads through `wasi:config/store` (settings and secrets).
    pub variables: crate::variables::Variables,
    /// Requests one instance may serve (of one tenant, one after another); 1: a fresh instance
    /// for every request.
    pub reuse: u32,
}

/// A plugin ready to serve: immutable, shared by all its requests.
pub struct Plugin {
    pub manifest: Manifest,
    pub limits: Limits,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
    pre: PluginPre<PluginState>,
    /// Where `wasi:http/incoming-handler.handle` is among the component's exports: a request
    /// looks up (and type-checks) that one export, not every export of the world.
    handler: HandlerIndices,
    nn: NnState,
    name: Arc<str>,
    permits: Arc<Semaphore>,
    outbound: Option<Arc<crate::outbound::OutboundPolicy>>,
    variables: crate::variables::Variables,
    /// Warm instances, when the plugin opted in.
    pool: Option<Pool>,
    /// Whether the component imports `host.read-request` (every SDK reads the request whole
    /// through it): only then does a call keep a copy of the request's headers for it (a plain
    /// `wasi:http` guest reads them through the request's resources).
    reads_request: bool,
}

/// One request, as the plugin will see it.
pub struct PluginRequest {
    pub method: Method,
    /// Path relative to the plugin's mount point, with the query string.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub context: RequestContext,
    /// The route streams its response: pass the body through as the plugin writes it.
    pub streaming: bool,
    /// Receives the request's usage once the plugin instance is gone.
    pub usage_sink: Option<UsageSink>,
    /// Charges token budgets before a generation starts; `None` when none applies.
    pub budget: Option<Arc<dyn TokenBudget>>,
}

/// A plugin response: read in full, or (a successful response of a streaming route) a body
/// that streams as the plugin writes it.
pub struct PluginResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: PluginBody,
    /// What the plugin reported; for a streamed body, what it reported before the body began.
    pub usage: Usage,
}

pub enum PluginBody {
    Full(Bytes),
    Stream(StreamedBody),
}

/// A response body passed through while the plugin writes it, still bounded by the plugin's
/// wall-clock deadline and response size limit; dropping it stops the plugin. A body that ends
/// because its plugin failed (a trap, the CPU or memory limit) ends in that error, not as if
/// the plugin had finished it.
pub struct StreamedBody {
    inner: HyperOutgoingBody,
    task: AbortOnDrop,
    /// The guest's outcome was read (after the body's end): nothing follows.
    ended: bool,
    plugin: Arc<str>,
    memory_bytes: usize,
    sent: usize,
    limit: usize,
    wall: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(InvokeError::WallTimeout(this.wall))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len());
                if this.sent > this.limit {
                    return Poll::Ready(Some(Err(InvokeError::ResponseTooLarge(this.limit))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(InvokeError::PluginError(format!("{e:?}")))))
            }
            // The body also ends when a failing guest's store drops it: its outcome says which.
            Poll::Ready(None) => {
                let Poll::Ready(joined) = Pin::new(&mut this.task.0).poll(cx) else {
                    return Poll::Pending;
                };
                this.ended = true;
                let outcome = joined.unwrap_or_else(|e| Outcome::failed(&format!("{e}")));
                match outcome.result {
                    Ok(()) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(classify(
                        &this.plugin,
                        this.memory_bytes,
                        e,
                        outcome.memory_exceeded,
                    )))),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Every way a plugin call can fail; the server maps each to one error code.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the plugin did not finish within {0:?}")]
    WallTimeout(Duration),
    #[error("the plugin used more CPU time than its limit")]
    CpuTimeout,
    #[error("the plugin ran out of memory (limit {0} bytes)")]
    OutOfMemory(usize),
    #[error("the plugin crashed: {0}")]
    Trap(String),
    /// A model refused or gave up on the call, as the model said it.
    #[error(transparent)]
    Model(infergate_nn::NnError),
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after: Duration,
    },
    #[error("the plugin's response is larger than its limit of {0} bytes")]
    ResponseTooLarge(usize),
    #[error("the plugin did not produce a response")]
    NoResponse,
    #[error("the plugin reported an HTTP error: {0}")]
    PluginError(String),
}

impl Runtime {
    /// Loads and validates a plugin; the error says what is wrong with it.
    pub async fn load_plugin(
        self: &Arc<Self>,
        spec: PluginSpec,
        models: &ModelTable,
    ) -> anyhow::Result<Plugin> {
        spec.limits.validate().map_err(anyhow::Error::msg)?;
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spec.wasm));
        let runtime = self.clone();
        let wasm = spec.wasm.clone();
        let (component, cache) =
            tokio::task::spawn_blocking(move || runtime.compile(&wasm)).await??;
        let pre = self.link(&component)?;
        let handler = HandlerIndices::new(pre.instance_pre()).map_err(|e| {
            anyhow::anyhow!("the component does not fit the infergate world: {e:#}")
        })?;
        let reads_request = imports_read_request(&component, self.engine());

        for name in &spec.models {
            if models.get(name).is_none() {
                anyhow::bail!("granted model `{name}` is not loaded on this host");
            }
        }
        let nn = NnState::new(spec.models.iter().cloned(), models.clone());

        let manifest = read_manifest(&pre, &spec.limits, nn.clone()).await?;
        for wanted in &manifest.models {
            if !spec.models.contains(wanted) {
                anyhow::bail!(
                    "the plugin wants model `{wanted}`, which its configuration does not grant"
                );
            }
        }
        let outbound =
            crate::outbound::OutboundPolicy::new(&spec.allowed_outbound_hosts, &spec.limits)
                .map_err(anyhow::Error::msg)?;
        Ok(Plugin {
            pool: Pool::new(spec.reuse, spec.limits.max_concurrency),
            name: manifest.name.as_str().into(),
            permits: Arc::new(Semaphore::new(spec.limits.max_concurrency)),
            outbound,
            variables: spec.variables,
            manifest,
            limits: spec.limits,
            digest,
            cache,
            pre,
            handler,
            nn,
            reads_request,
        })
    }

    /// Links a compiled component against the host's interfaces, ready to instantiate.
    fn link(
        &self,
        component: &wasmtime::component::Component,
    ) -> anyhow::Result<PluginPre<PluginState>> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            anyhow::anyhow!("the component does not fit the infergate world: {e:#}")
        })?;
        PluginPre::new(pre)
            .map_err(|e| anyhow::anyhow!("the component does not export the plugin world: {e:#}"))
    }

    /// What `infergate check` reports: the component compiled (never from the cache), linked,
    /// its manifest read and validated, and instantiated `runs` times in the real sandbox with
    /// `limits`. Models it names are not opened (nothing is granted here).
    pub async fn inspect(
        self: &Arc<Self>,
        wasm: Arc<[u8]>,
        limits: &Limits,
        runs: usize,
    ) -> anyhow::Result<Inspection> {
        limits.validate().map_err(anyhow::Error::msg)?;
        let runtime = self.clone();
        let bytes = wasm.clone();
        let started = Instant::now();
        let component =
            tokio::task::spawn_blocking(move || runtime.compile_fresh(&bytes)).await??;
        let compile = started.elapsed();
        let pre = self.link(&component)?;
        let nn = NnState::new(std::iter::empty(), ModelTable::default());
        let manifest = read_manifest(&pre, limits, nn.clone()).await?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let state = PluginState::new("(check)".into(), limits, nn.clone(), Arc::default());
            let mut store = Store::new(pre.engine(), state);
            configure_store(&mut store, limits);
            let clock = store.data().cpu.clone();
            let started = Instant::now();
            crate::limits::timed(&clock, pin!(pre.instantiate_async(&mut store)))
                .await
                .map_err(|e| anyhow::anyhow!("instantiating failed: {e:#}"))?;
            times.push(started.elapsed());
        }
        times.sort();
        Ok(Inspection {
            manifest,
            size: wasm.len(),
            compile,
            instantiate: times[times.len() / 2],
            reads_request: imports_read_request(&component, self.engine()),
        })
    }
}

/// A component as `infergate check` sees it.
#[derive(Debug)]
pub struct Inspection {
    pub manifest: Manifest,
    /// Bytes of the component.
    pub size: usize,
    /// Compiling it with Cranelift, on this machine.
    pub compile: Duration,
    /// One fresh instance (median): what a request pays before the plugin runs, without `reuse`.
    pub instantiate: Duration,
    /// Whether it reads each request whole in one host call (`host.read-request`, as the SDKs
    /// do) rather than piece by piece through the `wasi:http` resources.
    pub reads_request: bool,
}

async fn read_manifest(
    pre: &PluginPre<PluginState>,
    limits: &Limits,
    nn: NnState,
) -> anyhow::Result<Manifest> {
    let state = PluginState::new("(loading)".into(), limits, nn, Arc::default());
    let mut store = Store::new(pre.engine(), state);
    configure_store(&mut store, limits);
    let clock = store.data().cpu.clone();
    let call = pin!(async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .infergate_plugin_manifest()
            .call_manifest(&mut store)
            .await
    });
    let call = crate::limits::timed(&clock, call);
    let wit = tokio::time::timeout(limits.wall_time(), call)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "reading the manifest took longer than {:?}",
                limits.wall_time()
            )
        })?
        .map_err(|e| anyhow::anyhow!("reading the manifest failed: {e:#}"))?;
    Manifest::from_wit(wit).map_err(|e| anyhow::anyhow!("invalid manifest: {e}"))
}

/// What the guest task hands back when it ends.
struct Outcome {
    result: wasmtime::Result<()>,
    usage: Usage,
    memory_exceeded: bool,
    /// The instance, when it may serve again (kept by [`Plugin::call_inline`] after a clean
    /// answer).
    kept: Option<Warm>,
}

impl Outcome {
    /// The guest's run ended by a failure of the host's own.
    fn failed(why: &str) -> Self {
        Outcome {
            result: Err(wasmtime::Error::msg(why.to_string())),
            usage: Usage::default(),
            memory_exceeded: false,
            kept: None,
        }
    }
}

impl Plugin {
    /// Serves one request in a fresh instance, within the plugin's limits.
    pub async fn handle(&self, request: PluginRequest) -> Result<PluginResponse, InvokeError> {
        let wall = self.limits.wall_time();
        let deadline = tokio::time::Instant::now() + wall;
        // Boxed, as the guest's run inside it: each async fn that awaits a future holds it in
        // its own state (and copies it when moved), so large futures are boxed where they
        // start instead of growing every caller's (the request path's box was 15 KB).
        crate::timeout::timeout_at(deadline, Box::pin(self.handle_inner(request, deadline)))
            .await
            .unwrap_or(Err(InvokeError::WallTimeout(wall)))
    }

    async fn handle_inner(
        &self,
        request: PluginRequest,
        deadline: tokio::time::Instant,
    ) -> Result<PluginResponse, InvokeError> {
        let streaming = request.streaming;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| InvokeError::NoResponse)?;
        let started = Instant::now();
        let context = Arc::new(request.context);
        // The pool's key, for a plugin that opted in to warm instances.
        let tenant: Option<Arc<str>> = self.pool.as_ref().map(|_| context.tenant.as_str().into());
        let warm = match (&self.pool, &tenant) {
            (Some(pool), Some(tenant)) => pool.take(tenant),
            _ => None,
        };
        let (mut store, instance) = match warm {
            Some(Warm {
                mut store,
                instance,
                served,
            }) => {
                store.set_epoch_deadline(1);
                store.data_mut().begin(context);
                (store, Some((instance, served)))
            }
            None => (self.new_store(context), None),
        };
        let state = store.data_mut();
        state.usage_sink = request.usage_sink;
        state.budget = request.budget;

        // The headers go to the guest's `wasi:http` request; `host.read-request` gets a copy,
        // for a plugin that imports it.
        let (headers, exchange_headers) = if self.reads_request {
            (request.headers.clone(), request.headers)
        } else {
            (request.headers, HeaderMap::new())
        };
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(format!("http://localhost{}", request.path_and_query));
        if let Some(slot) = builder.headers_mut() {
            *slot = headers;
        }
        let body = Full::new(request.body.clone()).map_err(|never| -> ErrorCode { match never {} });
        let hyper_request = builder
            .body(body)
            .map_err(|e| InvokeError::Trap(format!("building the request: {e}")))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let setup = |e: wasmtime::Error| InvokeError::Trap(format!("preparing the request: {e}"));
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, hyper_request)
            .map_err(setup)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(setup)?;
        // The same request and response slot, for `host.read-request` and `host.respond`.
        store.data_mut().exchange = crate::host_api::Exchange {
            method: request.method,
            path_and_query: request.path_and_query,
            headers: exchange_headers,
            body: request.body,
            outparam: Some(out.rep()),
        };

        let limit = self.limits.max_response_bytes;
        // The instance may serve again if the plugin opted in (a streamed one never does).
        let keep = !streaming && tenant.is_some();
        let guest = run_guest(
            self.pre.clone(),
            self.handler.clone(),
            store,
            instance,
            keep,
            req,
            out,
        );
        if !streaming {
            // Boxed: wasmtime's instantiate and call futures are large, and every async fn
            // that awaits this one would otherwise carry them (and copy them when boxed).
            return self
                .call_inline(Box::pin(guest), receiver, limit, started, tenant)
                .await;
        }
        // Boxed: the streaming path's states stay out of every other call's future.
        Box::pin(self.call_streaming(guest, receiver, limit, started, deadline)).await
    }

    /// A streaming route: the guest runs in a task of its own, since it goes on writing the
    /// body after this call has returned the response head. Its spans (model calls, outbound
    /// requests) stay in the caller's trace.
    async fn call_streaming(
        &self,
        guest: impl Future<Output = Outcome> + Send + 'static,
        receiver: tokio::sync::oneshot::Receiver<
            Result<http::Response<HyperOutgoingBody>, ErrorCode>,
        >,
        limit: usize,
        started: Instant,
        deadline: tokio::time::Instant,
    ) -> Result<PluginResponse, InvokeError> {
        let mut task = AbortOnDrop(tokio::spawn(tracing::Instrument::in_current_span(guest)));
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            // The guest answered with an error code instead of a response.
            Ok(Err(code)) => {
                return Err(self.failure(task.join().await, Some(format!("{code:?}"))));
            }
            // The guest ended without answering: its outcome says why.
            Err(_) => return Err(self.failure(task.join().await, None)),
        };
        let (parts, body) = response.into_parts();
        if parts.status.is_success() {
            return Ok(PluginResponse {
                status: parts.status,
                headers: parts.headers,
                body: PluginBody::Stream(StreamedBody {
                    inner: body,
                    task,
                    ended: false,
                    plugin: self.name.clone(),
                    memory_bytes: self.limits.memory_bytes,
                    sent: 0,
                    limit,
                    wall: self.limits.wall_time(),
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                }),
                usage: Usage::default(),
            });
        }
        let answer = collect(parts, body, limit).await;
        let outcome = match answer {
            Answer::TooLarge => return Err(InvokeError::ResponseTooLarge(limit)),
            _ => task.join().await,
        };
        self.finish(outcome, answer, started)
    }

    /// Runs the guest in this task, beside the collection of its answer: no task of its own and
    /// no wake-up across tasks, for the common case of a response read in full.
    async fn call_inline(
        &self,
        guest: impl Future<Output = Outcome>,
        receiver: tokio::sync::oneshot::Receiver<
            Result<http::Response<HyperOutgoingBody>, ErrorCode>,
        >,
        limit: usize,
        started: Instant,
        tenant: Option<Arc<str>>,
    ) -> Result<PluginResponse, InvokeError> {
        let mut guest = pin!(guest);
        let mut answer = pin!(async {
            match receiver.await {
                Ok(Ok(response)) => {
                    let (parts, body) = response.into_parts();
                    collect(parts, body, limit).await
                }
                Ok(Err(code)) => Answer::Failed(Some(format!("{code:?}"))),
                Err(_) => Answer::Failed(None),
            }
        });
        let (mut outcome, mut answered) = (None, None);
        // Both run until the guest has ended and its answer is in; a response over the size
        // limit ends the call at once (dropping the guest's future drops its store).
        std::future::poll_fn(|cx| {
            if outcome.is_none() {
                // A panic in a host function ends this call only, as it would end a task.
                match std::panic::catch_unwind(AssertUnwindSafe(|| guest.as_mut().poll(cx))) {
                    Ok(Poll::Ready(o)) => outcome = Some(o),
                    Ok(Poll::Pending) => {}
                    Err(_) => outcome = Some(Outcome::failed("the plugin call panicked")),
                }
            }
            if answered.is_none() {
                if let Poll::Ready(a) = answer.as_mut().poll(cx) {
                    answered = Some(a);
                }
            }
            match (&outcome, &answered) {
                (_, Some(Answer::TooLarge)) | (Some(_), Some(_)) => Poll::Ready(()),
                _ => Poll::Pending,
            }
        })
        .await;
        match (outcome, answered) {
            (Some(mut outcome), Some(answer)) => {
                let kept = outcome.kept.take();
                let response = self.finish(outcome, answer, started);
                if let (Some(pool), Some(tenant), Some(mut warm), Ok(response)) =
                    (&self.pool, tenant, kept, &response)
                {
                    // Only a clean answer keeps the instance: an error status may mean the
                    // guest's state is not what it expects.
                    if response.status.as_u16() < 400 && warm.store.data_mut().settled() {
                        warm.store.data_mut().settle();
                        pool.put(tenant, warm);
                    }
                }
                response
            }
            _ => Err(InvokeError::ResponseTooLarge(limit)),
        }
    }

    /// A store for a fresh instance, with the plugin's limits.
    fn new_store(&self, context: Arc<RequestContext>) -> Store<PluginState> {
        let mut state = PluginState::new(self.name.clone(), &self.limits, self.nn.clone(), context);
        state.http_hooks = crate::outbound::Outbound(self.outbound.clone());
        state.variables = self.variables.clone();
        let mut store = Store::new(self.pre.engine(), state);
        configure_store(&mut store, &self.limits);
        store
    }

    /// The result of a call whose guest has ended.
    fn finish(
        &self,
        outcome: Outcome,
        answer: Answer,
        started: Instant,
    ) -> Result<PluginResponse, InvokeError> {
        let (parts, bytes) = match answer {
            Answer::Ready(parts, bytes) => (parts, bytes),
            Answer::Failed(problem) => return Err(self.failure(outcome, problem)),
            Answer::TooLarge => unreachable!("a response over the limit ends the call early"),
        };
        if let Err(e) = outcome.result {
            return Err(self.classify(e, outcome.memory_exceeded));
        }
        tracing::debug!(plugin = %self.name, elapsed_us = started.elapsed().as_micros() as u64, "plugin call finished");
        Ok(PluginResponse {
            status: parts.status,
            headers: parts.headers,
            body: PluginBody::Full(bytes),
            usage: outcome.usage,
        })
    }

    /// The guest ended without a usable response: its outcome says why.
    fn failure(&self, outcome: Outcome, problem: Option<String>) -> InvokeError {
        match (outcome.result, problem) {
            (Err(e), _) => self.classify(e, outcome.memory_exceeded),
            (Ok(()), Some(problem)) => InvokeError::PluginError(problem),
            (Ok(()), None) => InvokeError::NoResponse,
        }
    }

    fn classify(&self, error: wasmtime::Error, memory_exceeded: bool) -> InvokeError {
        classify(&self.name, self.limits.memory_bytes, error, memory_exceeded)
    }
}

/// Whether `component` imports the host interface's `read-request` (the Rust, Python and
/// JavaScript SDKs read the request whole through it; a plain `wasi:http` guest does not).
fn imports_read_request(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> bool {
    use wasmtime::component::types::ComponentItem;
    component
        .component_type()
        .imports(engine)
        .any(|(name, import)| {
            name.starts_with("infergate:plugin/host")
                && matches!(&import.ty, ComponentItem::ComponentInstance(host)
                    if host.get_export(engine, "read-request").is_some())
        })
}

/// What a guest's failure means: a limit hit, a model's refusal, or a trap.
fn classify(
    plugin: &str,
    memory_bytes: usize,
    error: wasmtime::Error,
    memory_exceeded: bool,
) -> InvokeError {
    if let Some(abort) = error.downcast_ref::<HostAbort>() {
        return match abort {
            HostAbort::CpuTimeExceeded => InvokeError::CpuTimeout,
            HostAbort::Model(e) => InvokeError::Model(e.clone()),
            HostAbort::QuotaExceeded {
                message,
                retry_after,
            } => InvokeError::QuotaExceeded {
                message: message.clone(),
                retry_after: *retry_after,
            },
        };
    }
    if memory_exceeded {
        return InvokeError::OutOfMemory(memory_bytes);
    }
    let message = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    tracing::warn!(plugin = %plugin, "plugin trapped: {error:?}");
    InvokeError::Trap(message)
}

/// The guest's task; aborted (and its store dropped) if the call is abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<Outcome>);

impl AbortOnDrop {
    async fn join(&mut self) -> Outcome {
        match (&mut self.0).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::failed(&format!("plugin task failed: {e}")),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `handle` to the end, in a warm `instance` or a fresh one instantiated in `store`. With
/// `keep`, an instance whose call succeeded comes back in the outcome (still to be settled);
/// otherwise the store is dropped here, which settles the request's usage.
async fn run_guest(
    pre: PluginPre<PluginState>,
    handler: HandlerIndices,
    mut store: Store<PluginState>,
    instance: Option<(Handler, u32)>,
    keep: bool,
    request: Resource<HostIncomingRequest>,
    out: Resource<HostResponseOutparam>,
) -> Outcome {
    let mut used = None;
    let clock = store.data().cpu.clone();
    let result = {
        let call = pin!(async {
            let (instance, served) = match instance {
                Some(warm) => warm,
                None => {
                    let instance = pre.instance_pre().instantiate_async(&mut store).await?;
                    (handler.load(&mut store, &instance)?, 0)
                }
            };
            let result = instance.call_handle(&mut store, request, out).await;
            used = Some((instance, served + 1));
            result
        });
        crate::limits::timed(&clock, call).await
    };
    let usage = store.data().total_usage();
    let memory_exceeded = store.data().limiter.memory_exceeded;
    let kept = match used {
        Some((instance, served)) if keep && result.is_ok() && !memory_exceeded => Some(Warm {
            store,
            instance,
            served,
        }),
        _ => None,
    };
    Outcome {
        result,
        usage,
        memory_exceeded,
        kept,
    }
}

/// What became of the response the guest handed over.
enum Answer {
    /// Its head and whole body.
    Ready(http::response::Parts, Bytes),
    /// The body grew past the plugin's response size limit.
    TooLarge,
    /// No response, or a body that ended in an error (what the guest or its body said, if
    /// anything).
    Failed(Option<String>),
}

/// Reads a response body in full, up to `limit` bytes.
async fn collect(
    parts: http::response::Parts,
    mut body: HyperOutgoingBody,
    limit: usize,
) -> Answer {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Answer::TooLarge;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Err(e) => return Answer::Failed(Some(format!("{e:?}"))),
        }
    }
    Answer::Ready(parts, buf.freeze())
}
