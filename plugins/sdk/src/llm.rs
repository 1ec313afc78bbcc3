//! Typed helpers over `infergate:plugin/llm`: generate text on a language model the host owns,
//! token by token.
//!
//! The host renders the chat template, tokenizes, checks the context and the tenant's token
//! budget before decoding, samples, and counts the tokens; the plugin decides what the client
//! sees. A [`Generation`] is an iterator of [`Event`]s that waits for each one; dropping it
//! cancels the generation.
//!
//! ```ignore
//! use infergate_sdk::llm::{self, Message, Params, Event};
//!
//! let generation = llm::start(
//!     "smollm2-135m-instruct",
//!     llm::Prompt::chat([Message::user("What is the capital of France?")]),
//!     Params { max_tokens: Some(32), temperature: Some(0.0), ..Params::default() },
//! )?;
//! let mut answer = String::new();
//! for event in generation {
//!     match event? {
//!         Event::Text(text) => answer.push_str(&text),
//!         Event::Done { finish_reason, usage } => { /* ... */ }
//!     }
//! }
//! ```

use crate::bindings::infergate::plugin::llm as wit;
use crate::bindings::wasi::io::poll::Pollable;
use crate::Error;

pub use wit::{FinishReason, ModelInfo, Usage};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// What to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Messages, rendered by the host with the model's chat template.
    Chat(Vec<Message>),
    /// Text given to the model as it is.
    Raw(String),
}

impl Prompt {
    pub fn chat(messages: impl IntoIterator<Item = Message>) -> Self {
        Self::Chat(messages.into_iter().collect())
    }
}

/// Sampling parameters; `None` takes the host's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// The most tokens to generate (default: the rest of the context).
    pub max_tokens: Option<u32>,
    /// 0 is greedy (default 0.8).
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// Stop before any of these (at most 4, each at most 64 bytes).
    pub stop: Vec<String>,
    /// Makes sampling reproducible.
    pub seed: Option<u64>,
    /// 1.0 turns it off (the default).
    pub repetition_penalty: Option<f32>,
}

/// What a generation produced.
#[derive(Clone, Debug)]
pub enum Event {
    /// New text: whole tokens, valid UTF-8.
    Text(String),
    /// The end, with the tokens the host counted.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
}

/// A running generation; iterate it for its events, drop it to cancel.
pub struct Generation {
    inner: wit::Generation,
}

/// Starts a generation. Errors: `model_not_found` (404), `invalid_request` (400),
/// `context_length_exceeded` (400). A token budget that cannot cover the prompt plus
/// `max_tokens`, or a full model queue, ends the call in the host (429 `quota_exceeded`,
/// 503 `queue_full`) before this returns.
pub fn start(model: &str, prompt: Prompt, params: Params) -> Result<Generation, Error> {
    let prompt = match prompt {
        Prompt::Chat(messages) => wit::Prompt::Chat(
            messages
                .into_iter()
                .map(|m| wit::Message {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        ),
        Prompt::Raw(text) => wit::Prompt::Raw(text),
    };
    let params = wit::Params {
        max_tokens: params.max_tokens,
        temperature: params.temperature,
        top_p: params.top_p,
        top_k: params.top_k,
        stop: params.stop,
        seed: params.seed,
        repetition_penalty: params.repetition_penalty,
    };
    wit::start(model, &prompt, &params)
        .map(|inner| Generation { inner })
        .map_err(Error::from)
}

/// The language models granted to this plugin.
pub fn models() -> Vec<ModelInfo> {
    wit::models()
}

impl Generation {
    /// Tokens in the prompt, as the host counted them.
    pub fn prompt_tokens(&self) -> u32 {
        self.inner.prompt_tokens()
    }

    /// Ready when [`Generation::try_next`] has something (for async guests and `wasi:io/poll`).
    pub fn subscribe(&self) -> Pollable {
        self.inner.subscribe()
    }

    /// The next event if one is ready, without waiting; `None` when there is nothing new yet
    /// and after the end.
    pub fn try_next(&mut self) -> Option<Result<Event, Error>> {
        convert(self.inner.try_read())
    }
}

impl Iterator for Generation {
    type Item = Result<Event, Error>;

    /// The next event, waiting for it; `None` after the end.
    fn next(&mut self) -> Option<Self::Item> {
        convert(self.inner.read())
    }
}

fn convert(read: Result<Option<wit::Event>, wit::Error>) -> Option<Result<Event, Error>> {
    match read {
        Ok(None) => None,
        Ok(Some(wit::Event::Text(text))) => Some(Ok(Event::Text(text))),
        Ok(Some(wit::Event::Done((finish_reason, usage)))) => Some(Ok(Event::Done {
            finish_reason,
            usage,
        })),
        Err(e) => Some(Err(e.into())),
    }
}

impl From<wit::Error> for Error {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::ModelNotFound(m) => Error::new(404, "model_not_found", m),
            wit::Error::InvalidRequest(m) => Error::bad_request(m),
            wit::Error::ContextLengthExceeded(m) => Error::new(400, "context_length_exceeded", m),
            wit::Error::TooManyGenerations(m) => Error::new(429, "too_many_generations", m),
            wit::Error::Timeout(m) => Error::new(504, "inference_timeout", m),
            wit::Error::Backend(m) => Error::backend(m),
        }
    }
}
