//! Sentence embeddings with a BERT-style encoder, by default `all-minilm-l6-v2` (384
//! dimensions), shared by the plugins that serve them (`embed`, and `openai`'s `/embeddings`):
//! the request and response types and [`embeddings`], which serves one request.
//!
//! Tokenization runs in the plugin ([`wordpiece`]; `build.rs` compiles `vocab.txt` into a
//! sorted table); the host runs the transformer: inputs `input_ids`, `attention_mask`,
//! `token_type_ids` (i64 [B, L]), output `last_hidden_state` (f32 [B, L, H]). The plugin
//! mean-pools over the attention mask and L2-normalises, as sentence-transformers does for this
//! model.

use std::sync::OnceLock;

use infergate_sdk::prelude::*;
use wordpiece::Tokenizer;

/// The model used when the request names none.
pub const DEFAULT_MODEL: &str = "all-minilm-l6-v2";
/// The width of [`DEFAULT_MODEL`]'s embeddings.
pub const DEFAULT_DIMENSIONS: usize = 384;
/// The most inputs in one request.
const MAX_INPUTS: usize = 64;
/// The longest input, in characters.
const MAX_INPUT_CHARS: usize = 8192;
/// The most tokens per input, `[CLS]` and `[SEP]` included; longer inputs are truncated.
const MAX_TOKENS: usize = 256;

// `static VOCAB: &[(&str, u32)]`: the vocabulary of `bert-base-uncased` (which all-MiniLM-L6-v2
// uses), generated from `vocab.txt` by `build.rs`, sorted by token; `static VOCAB_INDEX: &[u32]`,
// its hash index.
include!(concat!(env!("OUT_DIR"), "/vocab.rs"));

/// Built once per instance, on first use; it borrows the static table and index, so this is
/// cheap.
fn tokenizer() -> Result<&'static Tokenizer<'static>> {
    static TOKENIZER: OnceLock<Result<Tokenizer<'static>, String>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            Tokenizer::from_sorted(VOCAB)
                .and_then(|tokenizer| tokenizer.with_index(VOCAB_INDEX))
                .map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| Error::internal(err.clone()))
}

#[derive(Deserialize, JsonSchema)]
pub struct EmbeddingsRequest {
    /// One text or a list of 1 to 64 texts, each at most 8192 characters.
    pub input: Input,
    /// The model to use (default `all-minilm-l6-v2`); it must be granted to this plugin.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Input {
    One(#[schemars(length(max = 8192))] String),
    Many(#[schemars(length(min = 1, max = 64), inner(length(max = 8192)))] Vec<String>),
}

// `V` is how each embedding is sent: by default the vector itself.
/// The embeddings of a request's inputs, in order.
#[derive(Serialize, JsonSchema)]
pub struct EmbeddingsResponse<V = Vec<f32>> {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<Embedding<V>>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Serialize, JsonSchema)]
pub struct Embedding<V = Vec<f32>> {
    /// Always `"embedding"`.
    pub object: &'static str,
    /// The position of the input this embedding is for.
    pub index: usize,
    /// The unit-length embedding.
    pub embedding: V,
}

#[derive(Serialize, JsonSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

impl<V> EmbeddingsResponse<V> {
    /// The same response with every embedding turned into a `W` (another encoding of it).
    pub fn map_embeddings<W>(self, mut f: impl FnMut(V) -> W) -> EmbeddingsResponse<W> {
        EmbeddingsResponse {
            object: self.object,
            data: self
                .data
                .into_iter()
                .map(|e| Embedding {
                    object: e.object,
                    index: e.index,
                    embedding: f(e.embedding),
                })
                .collect(),
            model: self.model,
            usage: self.usage,
        }
    }
}

/// Serves one embeddings request: checks the inputs, tokenizes them, runs the model on them as
/// one batch, pools each row, and reports the tokens read as the request's usage.
pub fn embeddings(ctx: &Ctx, req: EmbeddingsRequest) -> Result<EmbeddingsResponse> {
    let inputs = match req.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(Error::invalid_request(format!(
            "input must hold 1 to {MAX_INPUTS} texts, got {}",
            inputs.len()
        )));
    }
    if let Some(i) = inputs
        .iter()
        .position(|t| t.chars().count() > MAX_INPUT_CHARS)
    {
        return Err(Error::invalid_request(format!(
            "input[{i}] is longer than {MAX_INPUT_CHARS} characters"
        )));
    }
    let model_name = req.model.unwrap_or_else(|| DEFAULT_MODEL.to_string());

    let tokenizer = tokenizer()?;
    let encoded: Vec<Vec<u32>> = inputs
        .iter()
        .map(|t| tokenizer.encode(t, MAX_TOKENS))
        .collect();
    let total_tokens: usize = encoded.iter().map(Vec::len).sum();
    let batch = Batch::new(&encoded, tokenizer.pad_id());

    let model = nn::Model::load(&model_name)?;
    let dims = [batch.rows as u32, batch.len as u32];
    let outputs = model.run(&[
        ("input_ids", nn::Tensor::i64(&dims, &batch.input_ids)),
        (
            "attention_mask",
            nn::Tensor::i64(&dims, &batch.attention_mask),
        ),
        (
            "token_type_ids",
            nn::Tensor::i64(&dims, &batch.token_type_ids),
        ),
    ])?;
    let hidden = outputs.get("last_hidden_state")?;
    let (rows, len, width) = match hidden.dims() {
        [b, l, h] => (*b as usize, *l as usize, *h as usize),
        other => {
            return Err(Error::backend(format!(
                "last_hidden_state has shape {other:?}, expected [batch, tokens, hidden]"
            )))
        }
    };
    let values = hidden.to_f32()?;
    if rows != batch.rows || len != batch.len || width == 0 || values.len() != rows * len * width {
        return Err(Error::backend(format!(
            "last_hidden_state has shape {:?} ({} values), expected [{}, {}, hidden]",
            hidden.dims(),
            values.len(),
            batch.rows,
            batch.len
        )));
    }

    let data = (0..rows)
        .map(|row| Embedding {
            object: "embedding",
            index: row,
            embedding: mean_pool_normalised(
                &values[row * len * width..(row + 1) * len * width],
                &batch.attention_mask[row * len..(row + 1) * len],
                width,
            ),
        })
        .collect();

    ctx.report_usage(total_tokens as u64, 0);
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: model_name,
        usage: Usage {
            prompt_tokens: total_tokens,
            total_tokens,
        },
    })
}

/// Token ids padded into `rows x len` row-major matrices.
struct Batch {
    rows: usize,
    len: usize,
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    token_type_ids: Vec<i64>,
}

impl Batch {
    fn new(encoded: &[Vec<u32>], pad: u32) -> Self {
        let rows = encoded.len();
        let len = encoded.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = vec![i64::from(pad); rows * len];
        let mut attention_mask = vec![0; rows * len];
        for (row, ids) in encoded.iter().enumerate() {
            for (col, id) in ids.iter().enumerate() {
                input_ids[row * len + col] = i64::from(*id);
                attention_mask[row * len + col] = 1;
            }
        }
        Self {
            rows,
            len,
            input_ids,
            attention_mask,
            token_type_ids: vec![0; rows * len],
        }
    }
}

/// The mean of the token vectors the mask keeps, scaled to unit length.
fn mean_pool_normalised(hidden: &[f32], mask: &[i64], width: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; width];
    let mut count = 0.0f32;
    for (token, &keep) in hidden.chunks_exact(width).zip(mask) {
        if keep != 0 {
            sum.iter_mut().zip(token).for_each(|(s, v)| *s += v);
            count += 1.0;
        }
    }
    let count = count.max(1e-9);
    sum.iter_mut().for_each(|s| *s /= count);
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|s| *s /= norm);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_pads_to_the_longest_input() {
        let batch = Batch::new(&[vec![101, 7, 102], vec![101, 102]], 0);
        assert_eq!((batch.rows, batch.len), (2, 3));
        assert_eq!(batch.input_ids, [101, 7, 102, 101, 102, 0]);
        assert_eq!(batch.attention_mask, [1, 1, 1, 1, 1, 0]);
        assert_eq!(batch.token_type_ids, [0; 6]);
    }

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        // Two real tokens ([3, 0] and [0, 4] average to [1.5, 2]) and one padded token.
        let pooled = mean_pool_normalised(&[3.0, 0.0, 0.0, 4.0, 100.0, 100.0], &[1, 1, 0], 2);
        assert!(
            (pooled[0] - 0.6).abs() < 1e-6 && (pooled[1] - 0.8).abs() < 1e-6,
            "{pooled:?}"
        );
    }

    /// `build.rs`'s table and index give the ids `vocab.txt` itself gives.
    #[test]
    fn the_generated_table_is_the_vocabulary() {
        let generated = tokenizer().expect("the generated table is valid");
        let parsed = Tokenizer::from_vocab(include_str!("../vocab.txt")).expect("vocab.txt");
        assert_eq!((generated.pad_id(), generated.vocab_size()), (0, 30522));
        for text in ["Hello, world!", "Héllo tokenization-test, 你好 don't", ""] {
            assert_eq!(
                generated.encode(text, 256),
                parsed.encode(text, 256),
                "{text:?}"
            );
        }
    }

    #[test]
    fn responses_map_their_embeddings() {
        let response = EmbeddingsResponse {
            object: "list",
            data: vec![Embedding {
                object: "embedding",
                index: 0,
                embedding: vec![0.5f32, 1.0],
            }],
            model: DEFAULT_MODEL.into(),
            usage: Usage {
                prompt_tokens: 3,
                total_tokens: 3,
            },
        };
        let mapped = response.map_embeddings(|v| v.len());
        assert_eq!(mapped.data[0].embedding, 2);
        assert_eq!((mapped.data[0].index, mapped.usage.total_tokens), (0, 3));
    }
}
