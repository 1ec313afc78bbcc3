//! The `infergate:plugin/llm` host: plugins generate text on the language models granted to
//! them, and read it token by token.
//!
//! `start` does everything that can refuse a generation before any compute is spent: the
//! grant, the parameters, tokenizing the prompt (off the async threads), fitting it to the
//! model's context, charging the tenant's token budget with prompt plus `max-tokens` (through
//! the server's [`TokenBudget`]), and the model's queue. A refused budget or a full queue ends
//! the plugin call ([`HostAbort`]), so the client gets `quota_exceeded` / `queue_full` whatever
//! the plugin does; everything else is an error the plugin handles. The tokens are counted by
//! the host and added to the request's usage when the store is dropped (see [`PluginState`]),
//! read or not, so quotas see what really ran; what was reserved and not generated is given
//! back then.

use std::sync::{Arc, Weak};

use infergate_nn::llm::{self, Event, FinishReason, Generation, LlmError, Prompt, Sampling};
use infergate_nn::{Model, NnError};
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::bindings::wit_llm;
use crate::state::{HostAbort, PluginState};

/// Generations one plugin call may have open at once.
pub const MAX_OPEN_GENERATIONS: usize = 4;
/// The largest prompt, in bytes, before tokenizing.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit_llm::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)
}

/// The `generation` resource: a running generation; dropping it cancels it.
pub struct GenerationHandle {
    generation: Arc<Generation>,
    /// The `generation` span (exported traces only): from start to the drop.
    _span: tracing::Span,
}

#[wasmtime_wasi::async_trait]
impl Pollable for GenerationHandle {
    async fn ready(&mut self) {
        self.generation.ready().await;
    }
}

/// Per-store state of the interface: the generations this call opened.
#[derive(Default)]
pub struct LlmState {
    /// The open ones, to bound how many a call holds.
    open: Vec<Weak<Generation>>,
    /// Every one started, for the usage charged when the store is dropped.
    pub(crate) started: Vec<llm::UsageHandle>,
}

impl LlmState {
    pub(crate) fn open_count(&mut self) -> usize {
        self.open.retain(|g| g.strong_count() > 0);
        self.open.len()
    }
}

type LlmResult<T> = wasmtime::Result<Result<T, wit_llm::Error>>;

impl wit_llm::Host for PluginState {
    async fn start(
        &mut self,
        model: String,
        prompt: wit_llm::Prompt,
        params: wit_llm::Params,
    ) -> LlmResult<Resource<GenerationHandle>> {
        // Tokenising the prompt and charging its budget are the host's work.
        let _host = self.cpu.host_work();
        let Some(model) = self.nn.open_llm(&model) else {
            return Ok(Err(wit_llm::Error::ModelNotFound(format!(
                "language model `{model}` is not available to this plugin"
            ))));
        };
        if self.llm.open_count() >= MAX_OPEN_GENERATIONS {
            return Ok(Err(wit_llm::Error::TooManyGenerations(format!(
                "a plugin call may have at most {MAX_OPEN_GENERATIONS} generations open"
            ))));
        }
        let sampling = sampling(params);
        if let Err(e) = sampling.validate() {
            return Ok(Err(to_wit(e)));
        }
        let prompt = to_prompt(prompt);
        let bytes = match &prompt {
            Prompt::Raw(text) => text.len(),
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len() + 8).sum(),
        };
        if bytes > MAX_PROMPT_BYTES {
            return Ok(Err(wit_llm::Error::InvalidRequest(format!(
                "the prompt is larger than {MAX_PROMPT_BYTES} bytes"
            ))));
        }
        let tokenizing = model.clone();
        let tokens = tokio::task::spawn_blocking(move || llm_of(&tokenizing).tokenize(&prompt))
            .await
            .map_err(|e| wasmtime::Error::msg(format!("tokenizing: {e}")))?;
        let tokens = match tokens {
            Ok(tokens) => tokens,
            Err(e) => return Ok(Err(to_wit(e))),
        };
        let max_tokens = match llm_of(&model).fit(tokens.len() as u32, sampling.max_tokens) {
            Ok(n) => n,
            Err(e) => return Ok(Err(to_wit(e))),
        };
        let tokens_in = tokens.len() as u64;
        let reserve = tokens_in + u64::from(max_tokens);
        if let Some(budget) = self.budget.clone() {
            if let Err(refused) = budget.reserve(reserve).await {
                return Err(wasmtime::Error::new(HostAbort::QuotaExceeded {
                    message: refused.message,
                    retry_after: refused.retry_after,
                }));
            }
            self.usage.tokens_reserved += reserve;
        }
        let generation =
            match llm_of(&model).start(tokens, sampling, max_tokens, &self.caller, &self.plugin) {
                Ok(generation) => Arc::new(generation),
                Err(e @ NnError::QueueFull { .. }) => {
                    return Err(wasmtime::Error::new(HostAbort::Model(e)));
                }
                Err(e) => return Ok(Err(wit_llm::Error::InvalidRequest(e.to_string()))),
            };
        self.llm.open.push(Arc::downgrade(&generation));
        self.llm.started.push(generation.usage_handle());
        let span = tracing::info_span!(
            target: "otel",
            "generation",
            model = %model.spec().name,
            gen_ai.usage.input_tokens = tokens_in,
            gen_ai.request.max_tokens = max_tokens,
        );
        Ok(Ok(self.table.push(GenerationHandle {
            generation,
            _span: span,
        })?))
    }

    fn models(&mut self) -> wasmtime::Result<Vec<wit_llm::ModelInfo>> {
        Ok(self
            .nn
            .granted_llms()
            .into_iter()
            .map(|m| wit_llm::ModelInfo {
                name: m.spec().name.clone(),
                context_length: llm_of(&m).context_length(),
            })
            .collect())
    }
}

impl wit_llm::HostGeneration for PluginState {
    fn prompt_tokens(&mut self, g: Resource<GenerationHandle>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&g)?.generation.prompt_tokens())
    }

    fn subscribe(
        &mut self,
        g: Resource<GenerationHandle>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(&mut self.table, g)
    }

    fn try_read(&mut self, g: Resource<GenerationHandle>) -> LlmResult<Option<wit_llm::Event>> {
        Ok(to_event(self.table.get(&g)?.generation.try_read()))
    }

    async fn read(&mut self, g: Resource<GenerationHandle>) -> LlmResult<Option<wit_llm::Event>> {
        let _host = self.cpu.host_work();
        let generation = self.table.get(&g)?.generation.clone();
        Ok(to_event(generation.read().await))
    }

    fn drop(&mut self, g: Resource<GenerationHandle>) -> wasmtime::Result<()> {
        self.table.delete(g)?;
        Ok(())
    }
}

/// The language model of a model that [`crate::nn_host::NnState::open_llm`] returned.
fn llm_of(model: &Model) -> &llm::Llm {
    model.llm().expect("open_llm returns language models only")
}

fn sampling(p: wit_llm::Params) -> Sampling {
    Sampling {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        stop: p.stop,
        seed: p.seed,
        repetition_penalty: p.repetition_penalty,
    }
}

fn to_prompt(p: wit_llm::Prompt) -> Prompt {
    match p {
        wit_llm::Prompt::Chat(messages) => Prompt::Chat(
            messages
                .into_iter()
                .map(|m| llm::Message {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        ),
        wit_llm::Prompt::Raw(text) => Prompt::Raw(text),
    }
}

fn to_event(e: Result<Option<Event>, LlmError>) -> Result<Option<wit_llm::Event>, wit_llm::Error> {
    match e {
        Ok(None) => Ok(None),
        Ok(Some(Event::Text(text))) => Ok(Some(wit_llm::Event::Text(text))),
        Ok(Some(Event::Done(reason, usage))) => Ok(Some(wit_llm::Event::Done((
            match reason {
                FinishReason::Stop => wit_llm::FinishReason::Stop,
                FinishReason::Length => wit_llm::FinishReason::Length,
            },
            wit_llm::Usage {
                prompt_tokens: usage.prompt,
                completion_tokens: usage.completion,
            },
        )))),
        Err(e) => Err(to_wit(e)),
    }
}

fn to_wit(e: LlmError) -> wit_llm::Error {
    let message = e.to_string();
    match e {
        LlmError::InvalidRequest(_) => wit_llm::Error::InvalidRequest(message),
        LlmError::ContextLengthExceeded { .. } => wit_llm::Error::ContextLengthExceeded(message),
        LlmError::QueueTimeout { .. } | LlmError::Timeout { .. } => {
            wit_llm::Error::Timeout(message)
        }
        LlmError::Backend(_) => wit_llm::Error::Backend(message),
    }
}
