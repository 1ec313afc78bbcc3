//! `openai`: the OpenAI-compatible API over the host's models. Mounted at `/v1`, it lets
//! OpenAI's own clients work unchanged (`OpenAI(base_url="http://127.0.0.1:8080/v1",
//! api_key=KEY)` with the official Python client).
//!
//! - [`chat`]: `POST /chat/completions`, text generation on a language model the host runs
//!   (`infergate:plugin/llm`), answered whole or streamed as server-sent events;
//!   [`completion`] holds the answer's shapes and the stream's events.
//! - [`embeddings`]: `POST /embeddings`, sentence embeddings (the [`embedding`] crate, shared
//!   with the `embed` plugin).
//! - [`models`]: `GET /models` and `GET /models/{model}`.
//!
//! Errors keep infergate's one shape, `{"error": {"code", "message", "request_id"}}`, which
//! OpenAI's clients read as theirs (`error.code`, `error.message`).

mod chat;
mod completion;
mod embeddings;
mod models;

use infergate_sdk::prelude::*;

/// The language model the default configuration grants (the manifest asks for it).
const CHAT_MODEL: &str = "smollm2-135m-instruct";

plugin! {
    name: "openai",
    version: env!("CARGO_PKG_VERSION"),
    description: "OpenAI-compatible API: chat completions (whole or streamed), embeddings and \
                  the model list, for OpenAI's clients with base_url set to this mount",
    models: [CHAT_MODEL, embedding::DEFAULT_MODEL],
    routes: [
        raw("POST", "/chat/completions", chat::completions)
            .streaming()
            .request_type::<chat::ChatRequest>()
            .response_type::<completion::ChatCompletion>()
            .summary("Generate the assistant's next message (streamed as server-sent events \
                      with \"stream\": true)"),
        post("/embeddings", embeddings::embeddings)
            .summary("Embed one or more texts (floats, or base64 of little-endian f32)"),
        get("/models", models::list).summary("List the models this API can use"),
        get("/models/{model}", models::one).summary("Describe one model"),
    ],
}
