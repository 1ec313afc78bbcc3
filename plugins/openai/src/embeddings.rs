//! `POST /embeddings`: OpenAI's embeddings API over the [`embedding`] crate, with the fields
//! OpenAI adds: `encoding_format` (`float`, or `base64` of the vector's little-endian f32
//! bytes, which OpenAI's Python client asks for by default and decodes), `dimensions` (only the
//! model's own width) and `user` (ignored).

use embedding::{EmbeddingsResponse, DEFAULT_DIMENSIONS};
use infergate_sdk::llm;
use infergate_sdk::prelude::*;

#[derive(Deserialize, JsonSchema)]
pub struct EmbeddingsRequest {
    #[serde(flatten)]
    base: embedding::EmbeddingsRequest,
    /// `float` (the default) or `base64`: the little-endian f32 bytes of each vector, in base64.
    encoding_format: Option<EncodingFormat>,
    /// The width of the embeddings: only the model's own, 384, is supported.
    dimensions: Option<u32>,
    /// Accepted and ignored.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// One embedding, as `encoding_format` asked.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

/// Serves `POST /embeddings`.
pub fn embeddings(ctx: &Ctx, req: EmbeddingsRequest) -> Result<EmbeddingsResponse<Vector>> {
    if let Some(dimensions) = req.dimensions.filter(|&d| d as usize != DEFAULT_DIMENSIONS) {
        return Err(Error::bad_request(format!(
            "dimensions: only {DEFAULT_DIMENSIONS} is supported, got {dimensions}"
        )));
    }
    if let Some(model) = req.base.model.as_deref() {
        // A language model would open as a graph and fail inside the backend.
        if llm::models().iter().any(|m| m.name == model) {
            return Err(Error::bad_request(format!(
                "model: `{model}` is a language model; /embeddings needs an embedding model"
            )));
        }
    }
    let format = req.encoding_format.unwrap_or_default();
    let response = embedding::embeddings(ctx, req.base)?;
    Ok(response.map_embeddings(|vector| encode(format, vector)))
}

fn encode(format: EncodingFormat, vector: Vec<f32>) -> Vector {
    match format {
        EncodingFormat::Float => Vector::Float(vector),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            Vector::Base64(base64(&bytes))
        }
    }
}

/// Standard base64 (RFC 4648 alphabet, `=` padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let byte = |i: usize| u32::from(group.get(i).copied().unwrap_or(0));
        let bits = byte(0) << 16 | byte(1) << 8 | byte(2);
        // A group of n bytes fills n + 1 characters; `=` pads the rest.
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn vectors_encode_as_asked() {
        // 1.0f32 is 0x3f800000: little-endian 00 00 80 3f.
        let Vector::Base64(text) = encode(EncodingFormat::Base64, vec![1.0, -2.0]) else {
            panic!("base64 was asked for");
        };
        assert_eq!(text, base64(&[0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]));
        assert_eq!(text, "AACAPwAAAMA=");
        let float = encode(EncodingFormat::Float, vec![0.5]);
        assert_eq!(serde_json::to_value(float).unwrap(), json!([0.5]));
    }

    #[test]
    fn requests_take_openais_fields() {
        let req: EmbeddingsRequest = serde_json::from_value(json!({
            "input": ["a", "b"],
            "model": "all-minilm-l6-v2",
            "encoding_format": "base64",
            "dimensions": 384,
            "user": "u-1",
        }))
        .unwrap();
        assert!(matches!(req.encoding_format, Some(EncodingFormat::Base64)));
        assert_eq!(req.dimensions, Some(384));
        assert_eq!(req.base.model.as_deref(), Some("all-minilm-l6-v2"));
        let schema = infergate_sdk::route::request_schema::<EmbeddingsRequest>();
        assert!(schema.contains("encoding_format") && schema.contains("\"input\""));
    }
}
