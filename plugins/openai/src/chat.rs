//! `POST /chat/completions`: OpenAI's chat request, its translation into a host generation
//! (prompt and sampling parameters, [`Plan`]), and the answer: one `chat.completion`, or the
//! generation's events streamed as they come (their shapes are [`crate::completion`]'s).
//!
//! The generation starts before anything is written, so a refusal (unknown model, prompt too
//! long for the context, bad parameter) is still an ordinary JSON error response.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use infergate_sdk::llm::{self, Event, Generation, Message, Params, Prompt};
use infergate_sdk::prelude::*;

use crate::completion::{ChatCompletion, Chunks, Head};

/// The most stop strings a request may give, as in OpenAI's API.
const MAX_STOP: usize = 4;

/// A chat completion request. Fields of OpenAI's API not listed here are accepted and ignored.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChatRequest {
    /// The language model to use (see `GET /models`), e.g. `smollm2-135m-instruct`.
    model: String,
    /// The conversation so far, oldest first.
    messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events: `chat.completion.chunk`s, then `[DONE]`.
    stream: Option<bool>,
    /// With `stream`: `{"include_usage": true}` adds a last chunk with the token counts.
    stream_options: Option<StreamOptions>,
    /// The most tokens to generate (default: the rest of the model's context).
    max_tokens: Option<u32>,
    /// The same as `max_tokens`, which it overrides.
    max_completion_tokens: Option<u32>,
    /// From 0 to 2; 0 always picks the most likely token (default 0.8).
    temperature: Option<f32>,
    /// Nucleus sampling: above 0, at most 1 (default 1).
    top_p: Option<f32>,
    /// Keep only the k most likely tokens, 0 keeps all (default 40). Not in OpenAI's API.
    top_k: Option<u32>,
    /// Up to 4 strings, each at most 64 bytes, that end the answer; they are not part of it.
    stop: Option<Stop>,
    /// The same seed, messages and parameters give the same answer.
    seed: Option<i64>,
    /// Accepted and ignored; see `repetition_penalty`.
    #[allow(dead_code)]
    frequency_penalty: Option<f32>,
    /// Accepted and ignored; see `repetition_penalty`.
    #[allow(dead_code)]
    presence_penalty: Option<f32>,
    /// Penalise tokens repeated within the last 64: above 0, at most 10; 1 turns it off (the
    /// default). Not in OpenAI's API.
    repetition_penalty: Option<f32>,
    /// How many answers to generate: only 1 is supported.
    n: Option<u32>,
    /// Accepted and ignored.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct StreamOptions {
    /// Add a chunk with the token counts (and `"choices": []`) before `[DONE]`.
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ChatMessage {
    /// `system`, `developer` (read as `system`), `user`, `assistant` or `tool`.
    role: String,
    /// The text, or a list of content parts of which only `{"type": "text", "text": "..."}` is
    /// supported (the texts are joined by newlines); `null` reads as empty.
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ContentPart {
    /// Only `text` is supported.
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// What a request asks of the host, and how to answer it.
#[derive(Debug, PartialEq)]
struct Plan {
    model: String,
    prompt: Prompt,
    params: Params,
    /// Answer with server-sent events.
    stream: bool,
    /// With `stream`, end with a chunk of token counts.
    include_usage: bool,
}

impl Plan {
    /// Checks what the host does not (the host checks the parameters' ranges and the context)
    /// and translates the rest; every refusal is a 400 `invalid_request`.
    fn new(req: ChatRequest) -> Result<Self> {
        if let Some(n) = req.n.filter(|&n| n != 1) {
            return Err(Error::bad_request(format!(
                "n: only 1 choice is supported, got {n}"
            )));
        }
        if req.messages.is_empty() {
            return Err(Error::bad_request("messages must not be empty"));
        }
        let messages = req
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, message)| to_message(i, message))
            .collect::<Result<Vec<_>>>()?;
        let stop = match req.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        };
        if stop.len() > MAX_STOP {
            return Err(Error::bad_request(format!(
                "stop: at most {MAX_STOP} strings, got {}",
                stop.len()
            )));
        }
        let stream = req.stream.unwrap_or(false);
        Ok(Self {
            model: req.model,
            prompt: Prompt::Chat(messages),
            params: Params {
                max_tokens: req.max_completion_tokens.or(req.max_tokens),
                temperature: req.temperature,
                top_p: req.top_p,
                top_k: req.top_k,
                stop,
                // OpenAI's seed is a signed 64-bit integer; any one names a distinct stream.
                seed: req.seed.map(|seed| seed as u64),
                repetition_penalty: req.repetition_penalty,
            },
            stream,
            include_usage: stream && req.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

/// One message as the host's chat template takes it: a role it knows and plain text.
fn to_message(index: usize, message: ChatMessage) -> Result<Message> {
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(Error::bad_request(format!(
                "messages[{index}].role: `{other}` is not one of \
                 system, developer, user, assistant, tool"
            )))
        }
    };
    let content = match message.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => join_text_parts(index, parts)?,
    };
    Ok(Message::new(role, content))
}

/// The texts of content parts, joined by newlines; any other kind of part is refused.
fn join_text_parts(index: usize, parts: Vec<ContentPart>) -> Result<String> {
    let texts = parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| match (part.kind.as_str(), part.text) {
            ("text", Some(text)) => Ok(text),
            ("text", None) => Err(Error::bad_request(format!(
                "messages[{index}].content[{i}]: a text part needs `text`"
            ))),
            (kind, _) => Err(Error::bad_request(format!(
                "messages[{index}].content[{i}]: `{kind}` parts are not supported, only text"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(texts.join("\n"))
}

/// Serves `POST /chat/completions`.
pub fn completions(ctx: &Ctx, request: &Request) -> Result<Response> {
    // The host validated the body against `ChatRequest`'s schema; parse defensively anyway.
    let req: ChatRequest = serde_json::from_slice(&request.body)
        .map_err(|err| Error::bad_request(format!("the body is not a chat request: {err}")))?;
    let plan = Plan::new(req)?;
    let generation = llm::start(&plan.model, plan.prompt, plan.params)?;
    let head = Head {
        id: format!("chatcmpl-{}", ctx.request_id()),
        created: unix_time(),
        model: plan.model,
    };
    if plan.stream {
        let chunks = Chunks::new(head, plan.include_usage, ctx.request_id());
        Ok(stream(chunks, generation))
    } else {
        Response::json(200, &complete(head, generation)?)
    }
}

/// Reads the whole generation into one completion.
fn complete(head: Head, generation: Generation) -> Result<ChatCompletion> {
    let mut content = String::new();
    for event in generation {
        match event? {
            Event::Text(text) => content.push_str(&text),
            Event::Done {
                finish_reason,
                usage,
            } => return Ok(head.completion(content, finish_reason, usage)),
        }
    }
    Err(Error::backend("the generation ended without finishing"))
}

/// Streams the generation as server-sent events, one per event, each flushed as it is made.
/// A write that fails means the client went away: returning drops the generation, which
/// cancels it in the host.
fn stream(chunks: Chunks, generation: Generation) -> Response {
    Response::stream(200, "text/event-stream", move |out| {
        out.write_all(&chunks.start())?;
        out.flush()?;
        for event in generation {
            let (bytes, last) = chunks.event(event);
            out.write_all(&bytes)?;
            out.flush()?;
            if last {
                return Ok(());
            }
        }
        out.write_all(&chunks.unfinished())
    })
    .with_header("cache-control", "no-cache")
}

/// Seconds since the Unix epoch (`wasi:clocks/wall-clock`).
fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(body: serde_json::Value) -> Result<Plan> {
        Plan::new(serde_json::from_value(body).expect("the body deserialises"))
    }

    fn refusal(body: serde_json::Value) -> String {
        let err = plan(body).expect_err("refused");
        assert_eq!((err.status(), err.code()), (400, "invalid_request"));
        err.message().to_string()
    }

    #[test]
    fn a_full_request_becomes_prompt_and_params() {
        let plan = plan(json!({
            "model": "smollm2-135m-instruct",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Hi"},
                    {"type": "text", "text": "there"},
                ]},
                {"role": "assistant", "content": null, "tool_calls": []},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 7,
            "stop": ["\n\n", "END"],
            "seed": -1,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "repetition_penalty": 1.1,
            "n": 1,
            "user": "u-1",
            "logprobs": false,
        }))
        .unwrap();
        assert_eq!(plan.model, "smollm2-135m-instruct");
        assert_eq!(
            plan.prompt,
            Prompt::Chat(vec![
                Message::system("Be brief."),
                Message::user("Hi\nthere"),
                Message::assistant(""),
            ])
        );
        assert_eq!(
            plan.params,
            Params {
                max_tokens: Some(20),
                temperature: Some(0.5),
                top_p: Some(0.9),
                top_k: Some(7),
                stop: vec!["\n\n".into(), "END".into()],
                seed: Some(u64::MAX),
                repetition_penalty: Some(1.1),
            }
        );
        assert!(plan.stream && plan.include_usage);
    }

    #[test]
    fn a_minimal_request_leaves_the_defaults_to_the_host() {
        let plan = plan(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5,
            "stop": "x",
            "stream_options": {"include_usage": true},
        }))
        .unwrap();
        assert_eq!(
            plan.params,
            Params {
                max_tokens: Some(5),
                stop: vec!["x".into()],
                ..Params::default()
            }
        );
        // Usage chunks are a streaming option only.
        assert!(!plan.stream && !plan.include_usage);
    }

    #[test]
    fn unsupported_requests_are_refused() {
        let user = json!([{"role": "user", "content": "Hi"}]);
        assert!(refusal(json!({"model": "m", "messages": user, "n": 2})).contains("n:"));
        assert!(refusal(json!({"model": "m", "messages": []})).contains("messages"));
        let stops = json!(["a", "b", "c", "d", "e"]);
        assert!(refusal(json!({"model": "m", "messages": user, "stop": stops})).contains("stop"));
        let wizard = json!([{"role": "wizard", "content": "Hi"}]);
        assert!(refusal(json!({"model": "m", "messages": wizard})).contains("messages[0].role"));
        let image = json!([{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ]}]);
        let message = refusal(json!({"model": "m", "messages": image}));
        assert!(message.contains("messages[0].content[1]") && message.contains("image_url"));
        let textless = json!([{"role": "user", "content": [{"type": "text"}]}]);
        assert!(refusal(json!({"model": "m", "messages": textless})).contains("needs `text`"));
    }

    #[test]
    fn the_request_schema_does_not_refuse_unknown_fields() {
        let schema: serde_json::Value =
            serde_json::from_str(&infergate_sdk::route::request_schema::<ChatRequest>()).unwrap();
        assert_eq!(schema["required"], json!(["model", "messages"]));
        assert!(schema.get("additionalProperties").is_none(), "{schema}");
    }
}
