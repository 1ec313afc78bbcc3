//! `GET /models` and `GET /models/{model}`: the models this API can use, as OpenAI lists them:
//! the language models granted to the plugin, then the embedding models it can open.

use infergate_sdk::llm;
use infergate_sdk::prelude::*;

/// The embedding models `POST /embeddings` knows how to run.
const EMBEDDING_MODELS: [&str; 1] = [embedding::DEFAULT_MODEL];

#[derive(Serialize, JsonSchema)]
pub struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<Model>,
}

#[derive(Serialize, JsonSchema)]
pub struct Model {
    /// The name to use as `model` in requests.
    id: String,
    /// Always `model`.
    object: &'static str,
    /// Always 0.
    created: u64,
    /// Always `infergate`.
    owned_by: &'static str,
}

impl Model {
    fn new(id: String) -> Self {
        Self {
            id,
            object: "model",
            created: 0,
            owned_by: "infergate",
        }
    }
}

/// Serves `GET /models`.
pub fn list(_: &Ctx) -> Result<ModelList> {
    Ok(ModelList {
        object: "list",
        data: available().into_iter().map(Model::new).collect(),
    })
}

/// Serves `GET /models/{model}`.
pub fn one(ctx: &Ctx) -> Result<Model> {
    let name = ctx.param("model").unwrap_or_default();
    available()
        .into_iter()
        .find(|n| n == name)
        .map(Model::new)
        .ok_or_else(|| Error::model_not_found(name))
}

/// Granted language models, then the embedding models that open (opening one is a lookup in
/// the host, no work).
fn available() -> Vec<String> {
    let mut names: Vec<String> = llm::models().into_iter().map(|m| m.name).collect();
    for name in EMBEDDING_MODELS {
        if !names.iter().any(|n| n == name) && nn::Model::load(name).is_ok() {
            names.push(name.to_string());
        }
    }
    names
}
