//! `embed`: OpenAI-compatible sentence embeddings (`POST /embeddings`) with a BERT-style
//! sentence encoder, by default `all-minilm-l6-v2` (384 dimensions). The work (tokenizing,
//! running the model, pooling) is the [`embedding`] crate's, shared with the `openai` plugin;
//! this crate only declares the plugin.

use infergate_sdk::prelude::*;

plugin! {
    name: "embed",
    version: env!("CARGO_PKG_VERSION"),
    description: "OpenAI-compatible sentence embeddings (all-MiniLM-L6-v2, 384 dimensions)",
    models: [embedding::DEFAULT_MODEL],
    routes: [
        post("/embeddings", embedding::embeddings).summary("Embed one or more texts"),
    ],
}
