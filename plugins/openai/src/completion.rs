//! The shapes of a chat completion as OpenAI's API answers it: one `chat.completion` object, or
//! a stream of server-sent events ([`Chunks`]), each `data: <chat.completion.chunk>\n\n`:
//!
//! 1. the assistant's role with empty content;
//! 2. one chunk per piece of text the model produced;
//! 3. an empty delta with the `finish_reason`;
//! 4. with `stream_options.include_usage`, a chunk with `"choices": []` and the token counts
//!    (every chunk before it then carries `"usage": null`);
//! 5. `data: [DONE]`.
//!
//! A generation that fails midway ends the stream with `event: error` and the usual error body
//! instead, and no `[DONE]` (OpenAI's Python client raises it as an `APIError`).

use infergate_sdk::llm::{self, Event, FinishReason};
use infergate_sdk::prelude::*;

/// What every response object of one request shares.
#[derive(Debug, Clone)]
pub struct Head {
    /// `chatcmpl-<request id>`.
    pub id: String,
    /// When the request was answered, in seconds since the Unix epoch.
    pub created: u64,
    pub model: String,
}

/// A whole answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-` and the request's id.
    id: String,
    /// Always `chat.completion`.
    object: &'static str,
    /// Seconds since the Unix epoch.
    created: u64,
    model: String,
    /// Exactly one.
    choices: Vec<Choice>,
    usage: Usage,
}

#[derive(Debug, Serialize, JsonSchema)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    /// `stop` (the model ended its turn, or a stop string came) or `length` (`max_tokens`, or
    /// the context is full).
    finish_reason: &'static str,
    /// Always `null`.
    logprobs: (),
}

#[derive(Debug, Serialize, JsonSchema)]
struct AssistantMessage {
    /// Always `assistant`.
    role: &'static str,
    content: String,
}

/// Tokens as the host counted (and charged) them.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<llm::Usage> for Usage {
    fn from(usage: llm::Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

impl Head {
    /// The whole answer, once the generation is done.
    pub fn completion(
        self,
        content: String,
        reason: FinishReason,
        usage: llm::Usage,
    ) -> ChatCompletion {
        ChatCompletion {
            id: self.id,
            object: "chat.completion",
            created: self.created,
            model: self.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                },
                finish_reason: finish_reason(reason),
                logprobs: (),
            }],
            usage: usage.into(),
        }
    }
}

/// One `chat.completion.chunk`.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent without `include_usage`; with it, `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// Makes the server-sent events of one streamed answer.
pub struct Chunks {
    head: Head,
    include_usage: bool,
    /// For the body of an error event.
    request_id: String,
}

impl Chunks {
    pub fn new(head: Head, include_usage: bool, request_id: &str) -> Self {
        Self {
            head,
            include_usage,
            request_id: request_id.to_string(),
        }
    }

    /// The first event: the assistant's role, no text yet.
    pub fn start(&self) -> Vec<u8> {
        self.choice(Delta {
            role: Some("assistant"),
            content: Some(""),
        })
    }

    /// The events for one event of the generation, and whether they are the last.
    pub fn event(&self, event: Result<Event, Error>) -> (Vec<u8>, bool) {
        match event {
            Ok(Event::Text(text)) => (
                self.choice(Delta {
                    role: None,
                    content: Some(&text),
                }),
                false,
            ),
            Ok(Event::Done {
                finish_reason: reason,
                usage,
            }) => {
                let mut bytes = self.chunk(
                    vec![ChunkChoice {
                        index: 0,
                        delta: Delta::default(),
                        finish_reason: Some(finish_reason(reason)),
                    }],
                    None,
                );
                if self.include_usage {
                    bytes.extend(self.chunk(Vec::new(), Some(usage.into())));
                }
                bytes.extend_from_slice(b"data: [DONE]\n\n");
                (bytes, true)
            }
            Err(err) => (self.error(&err), true),
        }
    }

    /// The last event of a generation that stopped without saying it was done.
    pub fn unfinished(&self) -> Vec<u8> {
        self.error(&Error::backend("the generation ended without finishing"))
    }

    fn error(&self, err: &Error) -> Vec<u8> {
        let mut bytes = b"event: error\ndata: ".to_vec();
        bytes.extend(err.to_json(&self.request_id));
        bytes.extend_from_slice(b"\n\n");
        bytes
    }

    fn choice(&self, delta: Delta<'_>) -> Vec<u8> {
        let choice = ChunkChoice {
            index: 0,
            delta,
            finish_reason: None,
        };
        self.chunk(vec![choice], None)
    }

    /// `data: <chunk>\n\n`; `usage` is what the usage chunk carries.
    fn chunk(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<Usage>) -> Vec<u8> {
        let chunk = Chunk {
            id: &self.head.id,
            object: "chat.completion.chunk",
            created: self.head.created,
            model: &self.head.model,
            choices,
            usage: self.include_usage.then_some(usage),
        };
        let mut bytes = b"data: ".to_vec();
        // Serialising these types cannot fail (string keys, no maps).
        bytes.extend(serde_json::to_vec(&chunk).unwrap_or_default());
        bytes.extend_from_slice(b"\n\n");
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn head() -> Head {
        Head {
            id: "chatcmpl-r1".into(),
            created: 1_700_000_000,
            model: "m".into(),
        }
    }

    fn usage() -> llm::Usage {
        llm::Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
        }
    }

    /// The events of an SSE body: (event name, data).
    fn events(bytes: &[u8]) -> Vec<(Option<String>, String)> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.trim_end_matches("\n\n")
            .split("\n\n")
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    match line.split_once(": ") {
                        Some(("event", value)) => name = Some(value.to_string()),
                        Some(("data", value)) => data = value.to_string(),
                        _ => panic!("unexpected line {line:?}"),
                    }
                }
                (name, data)
            })
            .collect()
    }

    fn data(bytes: &[u8]) -> Vec<Value> {
        events(bytes)
            .into_iter()
            .map(|(_, data)| serde_json::from_str(&data).unwrap_or(Value::String(data)))
            .collect()
    }

    #[test]
    fn a_whole_completion_has_openais_shape() {
        let completion = head().completion("Paris.".into(), FinishReason::Length, usage());
        assert_eq!(
            serde_json::to_value(&completion).unwrap(),
            json!({
                "id": "chatcmpl-r1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "m",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris."},
                    "finish_reason": "length",
                    "logprobs": null,
                }],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
            })
        );
    }

    #[test]
    fn a_stream_without_usage() {
        let chunks = Chunks::new(head(), false, "r1");
        let mut body = chunks.start();
        let (text, last) = chunks.event(Ok(Event::Text("Pa".into())));
        assert!(!last);
        body.extend(text);
        let (done, last) = chunks.event(Ok(Event::Done {
            finish_reason: FinishReason::Stop,
            usage: usage(),
        }));
        assert!(last);
        body.extend(done);
        let common = json!({"id": "chatcmpl-r1", "object": "chat.completion.chunk",
                            "created": 1_700_000_000, "model": "m"});
        let with = |choices: Value| {
            let mut chunk = common.clone();
            chunk["choices"] = choices;
            chunk
        };
        assert_eq!(
            data(&body),
            [
                with(
                    json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": null}])
                ),
                with(json!([{"index": 0, "delta": {"content": "Pa"}, "finish_reason": null}])),
                with(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
                json!("[DONE]"),
            ]
        );
    }

    #[test]
    fn a_stream_with_usage_ends_with_the_counts() {
        let chunks = Chunks::new(head(), true, "r1");
        let first = &data(&chunks.start())[0];
        assert_eq!(first["usage"], Value::Null);
        assert!(first.as_object().unwrap().contains_key("usage"));
        let (done, _) = chunks.event(Ok(Event::Done {
            finish_reason: FinishReason::Length,
            usage: usage(),
        }));
        let done = data(&done);
        assert_eq!(done.len(), 3);
        assert_eq!(done[0]["choices"][0]["finish_reason"], "length");
        assert_eq!(done[0]["usage"], Value::Null);
        assert_eq!(done[1]["choices"], json!([]));
        assert_eq!(
            done[1]["usage"],
            json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})
        );
        assert_eq!(done[2], "[DONE]");
    }

    #[test]
    fn a_failure_midway_is_an_error_event_without_done() {
        let chunks = Chunks::new(head(), false, "r1");
        let (bytes, last) = chunks.event(Err(Error::new(504, "inference_timeout", "too slow")));
        assert!(last);
        let sent = events(&bytes);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.as_deref(), Some("error"));
        let body: Value = serde_json::from_str(&sent[0].1).unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "inference_timeout", "message": "too slow",
                             "request_id": "r1"}})
        );
        assert_eq!(events(&chunks.unfinished())[0].0.as_deref(), Some("error"));
    }

    #[test]
    fn text_with_newlines_stays_on_one_data_line() {
        let chunks = Chunks::new(head(), false, "r1");
        let (bytes, _) = chunks.event(Ok(Event::Text("a\n\nb".into())));
        assert_eq!(data(&bytes)[0]["choices"][0]["delta"]["content"], "a\n\nb");
    }
}
