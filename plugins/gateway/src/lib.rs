//! `gateway`: an OpenAI-compatible front for upstream servers (the LiteLLM use case). Each
//! request goes to the first upstream the operator lists ([`upstream`]); when that one cannot
//! be reached, times out, or answers 429 or 5xx, the next one is tried, and so on. The first
//! answer that is not a failure is relayed as it is: JSON whole, server-sent events chunk by
//! chunk as they arrive. A 4xx other than 429 is the client's and is relayed too, not retried.
//!
//! The plugin reaches only what the operator granted (`allowed_outbound_hosts`), reads the
//! upstreams' API keys from the operator's secrets, never from the request, and reports the
//! upstream's token usage to the host, so the caller's token quotas count it. The response says
//! which upstream served it in `x-infergate-upstream`.

mod upstream;

use std::io::Write as _;

use infergate_sdk::outbound::{self, SendError};
use infergate_sdk::prelude::*;
use serde_json::{Map, Value};

use upstream::Upstream;

plugin! {
    name: "gateway",
    version: env!("CARGO_PKG_VERSION"),
    description: "Forwards OpenAI-compatible requests to the upstream servers the operator \
                  lists, in order, falling back to the next when one fails",
    models: [],
    routes: [
        raw("POST", "/chat/completions", |ctx, req| forward(ctx, req, "/chat/completions"))
            .streaming()
            .request_type::<ChatRequest>()
            .summary("Chat completion from the first upstream that answers (streamed with \
                      \"stream\": true)"),
        raw("POST", "/embeddings", |ctx, req| forward(ctx, req, "/embeddings"))
            .request_type::<EmbeddingsRequest>()
            .summary("Embeddings from the first upstream that answers"),
    ],
}

/// What the gateway checks of a chat request; everything else goes upstream as it is.
#[derive(Deserialize, JsonSchema)]
#[allow(dead_code)]
struct ChatRequest {
    /// The model to ask for (an upstream may replace it).
    model: String,
    /// The conversation, in OpenAI's shape.
    #[schemars(length(min = 1))]
    messages: Vec<Value>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// What the gateway checks of an embeddings request.
#[derive(Deserialize, JsonSchema)]
#[allow(dead_code)]
struct EmbeddingsRequest {
    model: String,
    /// A text or a list of texts (or tokens), as OpenAI takes them.
    input: Value,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Tries each upstream in turn; relays the first answer that is not a failure.
fn forward(ctx: &Ctx, req: &Request, path: &str) -> Result<Response> {
    let upstreams = Upstream::configured()?;
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| Error::invalid_request(format!("the body is not JSON: {e}")))?;
    let mut failures = Vec::new();
    for upstream in &upstreams {
        let mut body = body.clone();
        if let (Some(model), Some(object)) = (&upstream.model, body.as_object_mut()) {
            object.insert("model".into(), Value::String(model.clone()));
        }
        let mut request = outbound::Request::post(&format!("{}{path}", upstream.url))
            .json(&body)?
            .header("accept", accept(req))
            .header("x-request-id", ctx.request_id())
            .timeout(upstream.timeout);
        if let Some(key) = &upstream.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let failure = match request.send() {
            Ok(response) if response.status() == 429 || response.status() >= 500 => {
                format!("answered {}", response.status())
            }
            Ok(response) => return Ok(relay(ctx, upstream, response)),
            Err(err) => err.to_string(),
        };
        ctx.log(
            LogLevel::Warn,
            "upstream failed; trying the next",
            &[("upstream", &upstream.name), ("error", &failure)],
        );
        failures.push(format!("{}: {failure}", upstream.name));
    }
    Err(Error::new(
        502,
        "upstream_unavailable",
        format!("no upstream answered ({})", failures.join("; ")),
    ))
}

fn accept(req: &Request) -> String {
    req.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("accept"))
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        .unwrap_or_else(|| "application/json".into())
}

/// Relays an upstream's answer: a stream of events as it comes, anything else whole.
fn relay(ctx: &Ctx, upstream: &Upstream, mut response: outbound::Response) -> Response {
    let status = response.status();
    let content_type = response
        .header("content-type")
        .unwrap_or("application/json")
        .to_string();
    if content_type.starts_with("text/event-stream") {
        let ctx = ctx.clone();
        return Response::stream(status, &content_type, move |out| {
            let mut usage = Usage::default();
            loop {
                match response.chunk() {
                    Ok(Some(chunk)) => {
                        usage.scan(&chunk);
                        out.write_all(&chunk)?;
                        out.flush()?;
                    }
                    Ok(None) => break,
                    Err(err) => {
                        // The client already has part of the answer: end it with an error event
                        // rather than a clean-looking end.
                        let error = Error::from(cut_off(err));
                        out.write_all(b"event: error\ndata: ")?;
                        out.write_all(&error.to_json(ctx.request_id()))?;
                        out.write_all(b"\n\n")?;
                        out.flush()?;
                        break;
                    }
                }
            }
            usage.report(&ctx);
            Ok(())
        })
        .with_header("cache-control", "no-cache")
        .with_header("x-infergate-upstream", &upstream.name);
    }
    let body = match response.bytes() {
        Ok(body) => body,
        Err(err) => {
            let error = Error::from(cut_off(err));
            return Response::bytes(
                error.status(),
                "application/json",
                error.to_json(ctx.request_id()),
            );
        }
    };
    let mut usage = Usage::default();
    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
        usage.read(&value);
    }
    usage.report(ctx);
    Response::bytes(status, &content_type, body).with_header("x-infergate-upstream", &upstream.name)
}

/// A body that failed after its status was in: the upstream's fault, even a timeout.
fn cut_off(err: SendError) -> SendError {
    match err {
        SendError::Timeout => SendError::Failed("the upstream stopped answering".into()),
        other => other,
    }
}

/// Token usage the upstream reported (`usage` of the answer, or of a stream's last event).
#[derive(Default)]
struct Usage {
    prompt: u64,
    completion: u64,
    /// The part of the stream after its last full line.
    partial: Vec<u8>,
}

impl Usage {
    fn read(&mut self, value: &Value) {
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            let count = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.prompt = count("prompt_tokens");
            self.completion = count("completion_tokens");
        }
    }

    /// Reads the `data:` lines of a stream's chunk that carry usage.
    fn scan(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            if mentions_usage(data) {
                if let Ok(value) = serde_json::from_slice::<Value>(data) {
                    self.read(&value);
                }
            }
        }
        // A line longer than any event (no newline in 1 MiB) is not one to read.
        if self.partial.len() > 1 << 20 {
            self.partial.clear();
        }
    }

    fn report(&self, ctx: &Ctx) {
        if self.prompt > 0 || self.completion > 0 {
            ctx.report_usage(self.prompt, self.completion);
        }
    }
}

fn mentions_usage(data: &[u8]) -> bool {
    data.windows(7).any(|w| w == b"\"usage\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_a_stream_cut_anywhere() {
        let stream = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut usage = Usage::default();
            usage.scan(&stream[..cut]);
            usage.scan(&stream[cut..]);
            assert_eq!((usage.prompt, usage.completion), (7, 3), "cut at {cut}");
        }
    }

    #[test]
    fn a_null_usage_is_no_usage() {
        let mut usage = Usage::default();
        usage.scan(b"data: {\"usage\":null}\n");
        assert_eq!((usage.prompt, usage.completion), (0, 0));
    }
}
