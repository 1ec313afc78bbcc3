//! What each store holds: one [`PluginState`] per instance. An instance serves one request, or
//! (a plugin with `reuse`, see [`crate::pool`]) several of one tenant in turn: the per-request
//! fields are set by [`PluginState::begin`] and settled by [`PluginState::settle`].

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::limits::{Limiter, Limits};
use crate::nn_host::NnState;

/// Who is calling, as established by the server before the plugin runs.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub tenant: String,
    pub key_id: Option<String>,
    pub scopes: Vec<String>,
    /// Selected token claims as (name, JSON value).
    pub claims: Vec<(String, String)>,
    /// The route template that matched, as declared in the manifest.
    pub route: String,
    /// Path parameters of the matched route.
    pub params: Vec<(String, String)>,
    /// The tenant's weight in the models' fair queues (0 counts as 1).
    pub priority: u32,
}

/// Called once with a request's usage when its plugin instance is gone (normal end, error,
/// timeout or a client that went away), so quotas are charged for whatever really ran.
pub type UsageSink = Box<dyn FnOnce(Usage) + Send>;

/// Charges a request's token budgets before a generation starts, so a refusal costs no compute.
/// The server implements it over its quotas; the runtime knows nothing of them. What was
/// reserved is in [`Usage::tokens_reserved`] when the usage is settled.
pub trait TokenBudget: Send + Sync {
    fn reserve(
        &self,
        tokens: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), BudgetRefused>> + Send + '_>>;
}

/// A reservation the budget cannot cover.
#[derive(Clone, Debug)]
pub struct BudgetRefused {
    pub message: String,
    pub retry_after: std::time::Duration,
}

/// Usage a plugin reported during one request, plus what the host measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Inference time the host measured around `compute`, in seconds.
    pub compute_seconds: f64,
    /// Tokens already charged to the budgets before generating ([`TokenBudget`]): settling
    /// charges `tokens_in + tokens_out - tokens_reserved` (a negative amount gives back).
    pub tokens_reserved: u64,
}

/// Why the host stopped a plugin call on purpose. Raised as a trap from host code or from the
/// epoch callback, and recognised again by [`crate::plugin`] to pick the error answered.
#[derive(Debug, thiserror::Error)]
pub enum HostAbort {
    #[error("the plugin used more CPU time than its limit")]
    CpuTimeExceeded,
    /// A model refused or gave up on the call (queue full, no compute slot in time, timeout):
    /// carried through as itself, so the HTTP side maps it in one place.
    #[error(transparent)]
    Model(#[from] infergate_nn::NnError),
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after: std::time::Duration,
    },
}

/// Per-store state. Every field exists for one interface or limit.
pub struct PluginState {
    /// WASI p2 context: no preopens, no environment, no sockets, stdio discarded.
    pub wasi: WasiCtx,
    /// wasi:http context (field size limits).
    pub http: WasiHttpCtx,
    /// Resources of every interface (wasi, http, nn) live here.
    pub table: ResourceTable,
    /// Memory/table/instance caps, applied by [`crate::limits::configure_store`].
    pub limiter: Limiter,
    /// Time spent in guest code in this request, checked against the CPU budget.
    pub cpu: Arc<crate::limits::CpuClock>,
    /// Models granted to this plugin, and its open graphs.
    pub nn: NnState,
    /// The request being served, for `infergate:plugin/host.context`.
    pub request: Arc<RequestContext>,
    /// Plugin name, for log lines.
    pub plugin: Arc<str>,
    /// Usage reported by the plugin and measured by the host.
    pub usage: Usage,
    /// Receives `usage` when this state is dropped.
    pub usage_sink: Option<UsageSink>,
    /// Who the plugin computes for, in the models' fair queues.
    pub caller: infergate_nn::Caller,
    /// Outgoing HTTP: the plugin's grants (none: denied).
    pub http_hooks: crate::outbound::Outbound,
    /// The operator's values for this plugin (`wasi:config/store`).
    pub variables: crate::variables::Variables,
    /// Generations this call started (`infergate:plugin/llm`).
    pub llm: crate::llm_host::LlmState,
    /// Charges token budgets before a generation; `None` when no token budget applies.
    pub budget: Option<std::sync::Arc<dyn TokenBudget>>,
    /// The request being served, whole, and its unanswered response slot, for
    /// `infergate:plugin/host.read-request` and `respond`.
    pub exchange: crate::host_api::Exchange,
}

impl PluginState {
    pub fn new(
        plugin: Arc<str>,
        limits: &Limits,
        nn: NnState,
        request: Arc<RequestContext>,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
            cpu: Default::default(),
            nn,
            caller: infergate_nn::Caller {
                tenant: Arc::from(request.tenant.as_str()),
                weight: request.priority.max(1),
            },
            request,
            plugin,
            usage: Usage::default(),
            usage_sink: None,
            http_hooks: crate::outbound::Outbound(None),
            variables: Default::default(),
            llm: Default::default(),
            budget: None,
            exchange: Default::default(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl PluginState {
    /// Resets the fields of the request a warm instance serves next: it served another
    /// request of the same tenant before. (The caller then sets the usage sink and budget.)
    pub fn begin(&mut self, request: Arc<RequestContext>) {
        self.caller.weight = request.priority.max(1);
        self.request = request;
        self.usage = Usage::default();
        self.llm = Default::default();
        self.cpu.reset();
    }

    /// Whether nothing of the request just served outlives it: no generation is still open
    /// (a guest that kept one in a global would carry it into the next request).
    pub fn settled(&mut self) -> bool {
        self.llm.open_count() == 0
    }

    /// Ends the request in an instance that stays warm: its usage goes to the sink now, as a
    /// dropped store's would.
    pub fn settle(&mut self) {
        if let Some(sink) = self.usage_sink.take() {
            sink(self.total_usage());
        }
        self.budget = None;
    }

    /// What the plugin reported plus the tokens of its generations, counted by the host.
    pub fn total_usage(&self) -> Usage {
        let mut usage = self.usage;
        for generation in &self.llm.started {
            let tokens = generation.usage();
            usage.tokens_in += u64::from(tokens.prompt);
            usage.tokens_out += u64::from(tokens.completion);
        }
        usage
    }
}

impl Drop for PluginState {
    fn drop(&mut self) {
        // Resources first: open generations are cancelled before their tokens are counted.
        drop(std::mem::replace(&mut self.table, ResourceTable::new()));
        if let Some(sink) = self.usage_sink.take() {
            sink(self.total_usage());
        }
    }
}
