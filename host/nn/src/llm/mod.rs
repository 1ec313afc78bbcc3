//! Language models: text generation on a model the host owns, streamed token by token.
//!
//! A language model ([`Llm`]) is loaded once and decoded by one thread of its own (never an
//! async thread) that runs every live generation of the model together: each step decodes one
//! token of every sequence that is generating, plus as much of the newly admitted prompts as
//! fits the batch (continuous batching over llama.cpp's sequence ids). Callers get a
//! [`Generation`] to read [`Event`]s from; dropping it cancels the generation, which the decode
//! thread sees before its next step, so at most the token in flight is decoded after a cancel.
//!
//! The order the host follows, so a refusal costs no compute: [`Llm::tokenize`] the prompt
//! (the model's own chat template and tokenizer), [`Llm::fit`] it to the context (the prompt
//! and `max_tokens` must fit one sequence: `context_length_exceeded` otherwise), charge the
//! tenant's budget, then [`Llm::start`].
//!
//! - `text`: token bytes to UTF-8 text, with stop strings cut out (pure).
//! - `queue`: generations waiting for a sequence, served fairly across tenants.
//! - `engine` (feature `llamacpp`): the llama.cpp model and the decode thread.
//! - `stats`: typed counters and histograms, read by `/metrics` and the admin API.

mod queue;
mod stats;
mod text;

#[cfg(feature = "llamacpp")]
mod engine;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use stats::{Histogram, LlmStats, TokenCounts, TokenShare};

use crate::{Caller, ModelSpec, NnError};

/// Settings of a language model beyond the common ones of [`ModelSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmOptions {
    /// Tokens one sequence may hold, prompt and completion together.
    pub context: u32,
    /// Threads llama.cpp computes with; `None`: every CPU the process may use.
    pub threads: Option<u32>,
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self {
            context: 2048,
            threads: None,
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What to continue: chat messages (rendered with the model's template) or raw text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    Chat(Vec<Message>),
    Raw(String),
}

/// Sampling parameters; `None` takes the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
}

/// The most stop strings, and the longest, a generation may have.
pub const MAX_STOP: usize = 4;
pub const MAX_STOP_BYTES: usize = 64;

impl Sampling {
    /// Checks every parameter's range; the error names the parameter.
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |what: String| Err(LlmError::InvalidRequest(what));
        if self.max_tokens == Some(0) {
            return bad("max_tokens must be at least 1".into());
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad(format!("temperature must be between 0 and 2, got {t}"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p must be above 0 and at most 1, got {p}"));
        }
        if let Some(r) = self.repetition_penalty
            && !(r > 0.0 && r <= 10.0)
        {
            return bad(format!(
                "repetition_penalty must be above 0 and at most 10, got {r}"
            ));
        }
        if self.stop.len() > MAX_STOP {
            return bad(format!("stop: at most {MAX_STOP} strings"));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return bad(format!(
                "stop: `{}` is longer than {MAX_STOP_BYTES} bytes",
                s.chars().take(16).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn, or a stop string was reached.
    Stop,
    /// `max_tokens` were generated (or the sequence's context is full).
    Length,
}

/// Tokens a generation used, as the host counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u32,
    pub completion: u32,
}

/// What a generation produced since the last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Done(FinishReason, TokenUsage),
}

/// Why a generation could not start or go on.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum LlmError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "this model's context is {context} tokens; the prompt has {prompt} and max_tokens asks for {max_tokens}"
    )]
    ContextLengthExceeded {
        prompt: u32,
        max_tokens: u32,
        context: u32,
    },
    #[error("model `{model}` had no free sequence within {after:?}")]
    QueueTimeout { model: String, after: Duration },
    #[error("the generation ran past model `{model}`'s timeout of {after:?}")]
    Timeout { model: String, after: Duration },
    #[error("backend error: {0}")]
    Backend(String),
}

/// A language model, loaded once; cheap to share behind an `Arc`.
pub struct Llm {
    name: String,
    context: u32,
    queue_depth: usize,
    shared: Arc<Shared>,
    #[cfg(feature = "llamacpp")]
    engine: engine::Engine,
}

impl fmt::Debug for Llm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Llm")
            .field("name", &self.name)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// What the decode thread and the callers share.
struct Shared {
    /// Generations waiting for a sequence, and whether the model is being dropped.
    waiting: Mutex<queue::Waiting>,
    /// Wakes the decode thread when it sleeps for lack of work.
    wake: Condvar,
    stats: stats::Counters,
}

/// One generation, as the decode thread sees it.
struct Job {
    tokens: Vec<i32>,
    sampling: Sampling,
    /// Tokens to generate at most.
    max_tokens: u32,
    out: Arc<Stream>,
    tenant: Arc<str>,
    plugin: Arc<str>,
    enqueued: Instant,
}

/// Between the decode thread (writer) and one [`Generation`] (reader).
struct Stream {
    state: Mutex<StreamState>,
    /// Wakes the reader when there is something to read.
    ready: tokio::sync::Notify,
    /// Set when the reader is gone: stop decoding.
    cancelled: AtomicBool,
    /// Tokens generated so far (for usage, even when the reader never reads them).
    completion: AtomicU32,
    prompt: u32,
}

#[derive(Default)]
struct StreamState {
    /// Text produced and not read yet.
    text: String,
    /// How it ended, once it has; taken by the reader once.
    end: Option<Result<FinishReason, LlmError>>,
    /// The end was read.
    read_end: bool,
}

impl Stream {
    fn push(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .text
            .push_str(text);
        self.ready.notify_one();
    }

    fn end(&self, end: Result<FinishReason, LlmError>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).end = Some(end);
        self.ready.notify_one();
    }

    fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt: self.prompt,
            completion: self.completion.load(Ordering::Relaxed),
        }
    }
}

impl Llm {
    /// Loads the model (blocking) and starts its decode thread.
    pub fn load(spec: &ModelSpec) -> anyhow::Result<(Llm, String)> {
        #[cfg(feature = "llamacpp")]
        {
            let shared = Arc::new(Shared {
                waiting: Mutex::new(queue::Waiting::default()),
                wake: Condvar::new(),
                stats: stats::Counters::default(),
            });
            let (engine, description) = engine::Engine::start(spec, shared.clone())?;
            Ok((
                Llm {
                    name: spec.name.clone(),
                    context: spec.llm.context,
                    queue_depth: spec.queue_depth,
                    shared,
                    engine,
                },
                description,
            ))
        }
        #[cfg(not(feature = "llamacpp"))]
        {
            let _ = spec;
            anyhow::bail!(
                "this build has no llama.cpp backend (build infergate with the `llamacpp` feature)"
            )
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tokens one generation may hold, prompt included.
    pub fn context_length(&self) -> u32 {
        self.context
    }

    /// Renders and tokenizes a prompt. Blocking (microseconds per kilobyte): keep long prompts
    /// off the async threads.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>, LlmError> {
        #[cfg(feature = "llamacpp")]
        return self.engine.tokenize(prompt);
        #[cfg(not(feature = "llamacpp"))]
        {
            let _ = prompt;
            Err(LlmError::Backend(
                "no llama.cpp backend in this build".into(),
            ))
        }
    }

    /// The `max_tokens` a generation of `prompt` tokens gets (the rest of the context when
    /// unset), or `context_length_exceeded`.
    pub fn fit(&self, prompt: u32, max_tokens: Option<u32>) -> Result<u32, LlmError> {
        let room = self.context.saturating_sub(prompt);
        match max_tokens {
            _ if room == 0 => Err(LlmError::ContextLengthExceeded {
                prompt,
                max_tokens: max_tokens.unwrap_or(1),
                context: self.context,
            }),
            Some(n) if n > room => Err(LlmError::ContextLengthExceeded {
                prompt,
                max_tokens: n,
                context: self.context,
            }),
            Some(n) => Ok(n),
            None => Ok(room),
        }
    }

    /// Queues a generation of `tokens` (from [`Llm::tokenize`], fitted by [`Llm::fit`]) for
    /// `caller`; `plugin` labels its token counts. A full queue is `QueueFull`.
    pub fn start(
        &self,
        tokens: Vec<i32>,
        sampling: Sampling,
        max_tokens: u32,
        caller: &Caller,
        plugin: &str,
    ) -> Result<Generation, NnError> {
        sampling
            .validate()
            .map_err(|e| NnError::InvalidInput(e.to_string()))?;
        let stream = Arc::new(Stream {
            state: Mutex::new(StreamState::default()),
            ready: tokio::sync::Notify::new(),
            cancelled: AtomicBool::new(false),
            completion: AtomicU32::new(0),
            prompt: tokens.len() as u32,
        });
        let job = Job {
            tokens,
            sampling,
            max_tokens,
            out: stream.clone(),
            tenant: caller.tenant.clone(),
            plugin: Arc::from(plugin),
            enqueued: Instant::now(),
        };
        {
            let mut waiting = self
                .shared
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if waiting.len() >= self.queue_depth {
                self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(NnError::QueueFull {
                    model: self.name.clone(),
                    retry_after: Duration::from_secs(1),
                });
            }
            waiting.push(job, caller.weight.max(1));
        }
        self.shared.wake.notify_one();
        Ok(Generation {
            stream,
            shared: self.shared.clone(),
        })
    }

    pub fn stats(&self) -> LlmStats {
        let waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.shared.stats.snapshot(waiting as u64)
    }
}

/// A running generation: read its events; drop it to cancel.
pub struct Generation {
    stream: Arc<Stream>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("prompt_tokens", &self.stream.prompt)
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// Tokens in the prompt.
    pub fn prompt_tokens(&self) -> u32 {
        self.stream.prompt
    }

    /// Tokens counted so far: the prompt, and what was generated whether or not it was read.
    pub fn usage(&self) -> TokenUsage {
        self.stream.usage()
    }

    /// A handle that tells the usage after the generation itself is gone.
    pub fn usage_handle(&self) -> UsageHandle {
        UsageHandle(self.stream.clone())
    }

    /// The next event if one is ready; `Ok(None)` when nothing new is ready, and after the end.
    pub fn try_read(&self) -> Result<Option<Event>, LlmError> {
        let mut state = self.stream.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.text.is_empty() {
            return Ok(Some(Event::Text(std::mem::take(&mut state.text))));
        }
        if state.read_end {
            return Ok(None);
        }
        match state.end.take() {
            Some(end) => {
                state.read_end = true;
                end.map(|reason| Some(Event::Done(reason, self.stream.usage())))
            }
            None => Ok(None),
        }
    }

    /// Whether [`Generation::try_read`] has something to return (an event, or the end).
    pub fn is_ready(&self) -> bool {
        let state = self.stream.state.lock().unwrap_or_else(|p| p.into_inner());
        !state.text.is_empty() || state.end.is_some() || state.read_end
    }

    /// Waits until [`Generation::try_read`] has something to return.
    pub async fn ready(&self) {
        while !self.is_ready() {
            self.stream.ready.notified().await;
        }
    }

    /// The next event, waiting for it; `Ok(None)` after the end.
    pub async fn read(&self) -> Result<Option<Event>, LlmError> {
        self.ready().await;
        self.try_read()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.stream.cancelled.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Reads a generation's usage, also after it was dropped.
#[derive(Clone)]
pub struct UsageHandle(Arc<Stream>);

impl UsageHandle {
    pub fn usage(&self) -> TokenUsage {
        self.0.usage()
    }
}

impl fmt::Debug for UsageHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.usage().fmt(f)
    }
}
