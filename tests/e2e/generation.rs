//! Text generation end to end, on the real SmolLM2-135M-Instruct through llama.cpp: the
//! OpenAI-compatible plugin driven by the official Python client (`tests/openai`), a client
//! that goes away mid-stream, the wall-clock limit cutting a stream, and the hostile plugin
//! (`plugins/fixtures/hostile`, routes `/llm/*`): opening more generations than a call may,
//! leaving them open or leaking them, hoarding sequences, reading through the pollable.
//!
//! The tests here run one at a time (each on a host of its own): they measure latencies and
//! count generations, which other generations on the same two cores would blur. Their latency
//! bounds are multiples of a [`Pace`] measured on the test's own host, never fixed seconds: the
//! same suite runs on a quiet machine and on one several times slower, and a bound that holds
//! on both still tells a cancel seen at the next decode step from one that waits for the
//! generation to run out.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    API_KEY, Fetch as _, Host, client, client_with, expect_error, model, root, wasm,
};

const LLM: &str = "smollm2-135m-instruct";
/// A tenant with a token budget smaller than the generations it asks for.
const SMALL_KEY: &str = "small-key-0123456789abcdef";
/// The tenant whose plugin misbehaves.
const MALLORY_KEY: &str = "mallory-key-0123456789abcdef";

/// One generation test at a time (see the module's doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The chat and embedding models, the `openai` plugin at `/v1` and again at `/slow` with a
/// short wall-clock limit, the hostile plugin granted the chat model (`hostile_wall_ms`), a
/// small token budget for tenant `small`, and a key for tenant `mallory`.
fn config(hostile_wall_ms: u64) -> String {
    format!(
        r#"
[[models]]
name = "digits"
path = "{digits}"
concurrency = 1

[[models]]
name = "all-minilm-l6-v2"
path = "{minilm}"
concurrency = 2
queue_depth = 64
timeout_ms = 30000
max_batch = 64
batching = {{ max_rows = 16, pad = true }}

[[models]]
name = "{LLM}"
path = "{gguf}"
backend = "llamacpp"
concurrency = 4
context = 2048
# One thread: these tests share two cores with the other tests, and llama.cpp's threads wait
# for each other at every step (with two threads on two busy cores, 64 tokens took 3-26 s
# instead of 1.2 s).
threads = 1
queue_depth = 64
timeout_ms = 60000

[[plugins]]
name = "openai"
builtin = "openai"
mount = "/v1"
models = ["{LLM}", "all-minilm-l6-v2"]
[plugins.limits]
wall_ms = 60000

[[plugins]]
name = "slow"
builtin = "openai"
mount = "/slow"
models = ["{LLM}", "all-minilm-l6-v2"]
[plugins.limits]
wall_ms = 1500

[[plugins]]
name = "hostile"
path = "{hostile}"
models = ["digits", "{LLM}"]
[plugins.limits]
memory_bytes = 33554432
cpu_ms = 500
wall_ms = {hostile_wall_ms}

[[auth.api_keys]]
id = "small"
key = "{SMALL_KEY}"
tenant = "small"

[[auth.api_keys]]
id = "mallory"
key = "{MALLORY_KEY}"
tenant = "mallory"

[limits]
store = "memory"

[limits.tenants.small]
limits = ["300 tokens/day"]
"#,
        digits = model("digits/digits.onnx"),
        minilm = model("minilm/model.onnx"),
        gguf = model("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        hostile = wasm("hostile"),
    )
}

// ---- /metrics ----

/// One scrape of `/metrics`.
struct Metrics(String);

impl Metrics {
    async fn scrape(host: &Host) -> Metrics {
        Metrics(
            crate::harness::admin()
                .get(host.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 when there are none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                    None => (series, Vec::new()),
                };
                (series_name == name
                    && labels
                        .iter()
                        .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v)))
                .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    fn llm(&self, name: &str) -> f64 {
        self.sum(name, &[("gen_ai_request_model", LLM)])
    }

    fn outcome(&self, outcome: &str) -> f64 {
        self.sum(
            "infergate_llm_generations_total",
            &[("gen_ai_request_model", LLM), ("outcome", outcome)],
        )
    }

    /// Generations that ended, however they ended.
    fn ended(&self) -> f64 {
        ["stop", "length", "error", "cancelled"]
            .iter()
            .map(|o| self.outcome(o))
            .sum()
    }

    fn tokens(&self, tenant: &str, kind: &str) -> f64 {
        self.sum(
            "infergate_llm_tokens_total",
            &[
                ("gen_ai_request_model", LLM),
                ("tenant", tenant),
                ("gen_ai_token_type", kind),
            ],
        )
    }
}

/// `a="x",b="y"` as pairs (values here never hold an escaped quote).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, after)) = after.split_once('"') else {
            break;
        };
        out.push((key.trim_start_matches(',').to_string(), value.to_string()));
        rest = after;
    }
    out
}

/// Scrapes until `done` holds, for at most `within`; the last scrape and the time it took.
async fn wait_for(
    host: &Host,
    within: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> (Metrics, Duration) {
    let started = Instant::now();
    loop {
        let m = Metrics::scrape(host).await;
        if done(&m) || started.elapsed() > within {
            return (m, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- how fast this machine generates ----

/// How fast the host generates right now: the time of one short completion (a chat prompt and
/// 8 tokens, one sequence, nothing else running), measured on the test's own host before it
/// starts. The machine's speed varies several-fold between runs (shared cores); the bounds
/// below scale with it.
struct Pace {
    unit: Duration,
}

impl Pace {
    async fn measure(host: &Host) -> Pace {
        // The first completion sets up llama.cpp's buffers: a warm-up, not measured.
        complete(host, 1).await;
        let started = Instant::now();
        complete(host, 8).await;
        let pace = Pace {
            unit: started.elapsed(),
        };
        println!("pace: a prompt and 8 tokens in {:?}", pace.unit);
        pace
    }

    /// The longest a cancel may take to take effect: the decode step in flight, which at worst
    /// prefills four prompts at once (four prompts take at most four times one prompt and 8
    /// tokens), plus a second for scraping and scheduling.
    fn step(&self) -> Duration {
        self.completions(4)
    }

    /// `n` short completions one after another, plus a second.
    fn completions(&self, n: u32) -> Duration {
        Duration::from_secs(1) + self.unit * n
    }
}

/// A completion of `max_tokens` tokens (the prompt asks for more) by the default tenant.
async fn complete(host: &Host, max_tokens: u32) {
    let answer: Value = client()
        .post(host.url("/v1/chat/completions"))
        .json(&chat_body(
            "Write a very long story about the sea.",
            max_tokens,
            false,
        ))
        .fetch_json()
        .await;
    assert_eq!(answer["usage"]["completion_tokens"], max_tokens, "{answer}");
}

// ---- server-sent events ----

/// The events of an SSE body: (event name, data).
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = Vec::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.trim_start());
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

fn chat_body(prompt: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": LLM,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// Starts a streamed completion and waits for its first text: the time that took, and the
/// response to read on.
async fn first_token(
    c: &reqwest::Client,
    url: String,
    body: Value,
) -> (Duration, reqwest::Response) {
    let started = Instant::now();
    let mut r = c.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    loop {
        let chunk = r
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended before any text");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        let has_text = sse_events(&seen).iter().any(|(_, data)| {
            serde_json::from_str::<Value>(data).is_ok_and(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
        });
        if has_text {
            return (started.elapsed(), r);
        }
    }
}

// ---- (a) the official OpenAI client ----

/// Runs `tests/openai` (pytest, the `openai` package) against a host. Without those Python
/// packages it skips, unless `CI` is set (`make setup` installs them from tests/requirements.txt).
#[test]
fn the_official_openai_client_works_against_v1() {
    let _serial = SERIAL.blocking_lock();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import openai, pytest"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => format!("{python}: {e}"),
        };
        if std::env::var_os("CI").is_some() {
            panic!("CI requires the OpenAI client tests, and Python cannot run them: {why}");
        }
        eprintln!(
            "skipping the_official_openai_client_works_against_v1: {why} \
             (pip install -r tests/requirements.txt, or make setup)"
        );
        return;
    }

    let host = Host::start(&config(3000));
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("pytest.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut child = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rfEs",
            "-p",
            "no:cacheprovider",
            "tests/openai",
        ])
        .current_dir(root())
        .env("INFERGATE_URL", &host.base)
        .env("INFERGATE_API_KEY", API_KEY)
        .env("INFERGATE_SMALL_KEY", SMALL_KEY)
        .env("INFERGATE_SMALL_TENANT", "small")
        .env("INFERGATE_METRICS_KEY", crate::harness::ADMIN_KEY)
        .env("INFERGATE_SLOW_MOUNT", "/slow")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting pytest");
    let limit = Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{output}");
    println!("pytest took {:?}", started.elapsed());
    let status = status.unwrap_or_else(|| panic!("pytest did not finish within {limit:?}"));
    // The whole output is above; the panic names what failed (pytest's short summary).
    let summary: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("FAILED ") || l.starts_with("ERROR ") || l.starts_with("E   "))
        .take(40)
        .collect();
    assert!(
        status.success(),
        "pytest failed ({status}):\n{}",
        summary.join("\n")
    );
    assert!(host.alive());
}

// ---- (b) a client that goes away ----

/// A client that drops its connection mid-stream cancels the generation: it ends as
/// `cancelled` at the next decode step, no more tokens are generated for it, and at most the
/// token in flight was decoded after the cancel.
#[tokio::test]
async fn a_dropped_stream_cancels_its_generation() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(&config(3000));
    let pace = Pace::measure(&host).await;
    let before = Metrics::scrape(&host).await;

    // Raw HTTP, so the disconnect is exactly a closed socket.
    let addr = host.base.strip_prefix("http://").unwrap().to_string();
    let body = chat_body("Write a very long story about the sea.", 1000, true).to_string();
    let mut socket = TcpStream::connect(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Four pieces of text (the first chunk's `"content":""` is the role, not text).
    let pieces = |seen: &[u8]| {
        let seen = String::from_utf8_lossy(seen);
        seen.matches("\"content\":\"").count() - seen.matches("\"content\":\"\"").count()
    };
    while pieces(&seen) < 4 {
        let n = socket.read(&mut buf).expect("reading the stream");
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let running = Metrics::scrape(&host).await;
    assert_eq!(running.llm("infergate_llm_sequences_active"), 1.0);

    let dropped = Instant::now();
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    drop(socket);
    let (after, took) = wait_for(&host, pace.step() * 5, |m| {
        m.outcome("cancelled") > before.outcome("cancelled")
    })
    .await;
    println!("from the disconnect to `cancelled` in the metrics: {took:?}");
    assert_eq!(
        after.outcome("cancelled") - before.outcome("cancelled"),
        1.0,
        "the generation ends as cancelled"
    );
    assert!(
        took < pace.step(),
        "cancelled only after {took:?} (a step: {:?})",
        pace.step()
    );
    assert_eq!(after.llm("infergate_llm_sequences_active"), 0.0);
    // Nothing else ended, and no more tokens come for it.
    assert_eq!(after.ended() - before.ended(), 1.0);
    let output = after.tokens("default", "output");
    assert!(output >= 4.0, "{output} output tokens counted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = Metrics::scrape(&host).await;
    assert_eq!(
        later.tokens("default", "output"),
        output,
        "tokens after the cancel"
    );
    let after_cancel = later.llm("infergate_llm_decoded_after_cancel_total");
    assert!(
        after_cancel <= later.outcome("cancelled"),
        "{after_cancel} tokens decoded after {} cancels",
        later.outcome("cancelled")
    );
    println!("{dropped:?} ago: {output} output tokens, {after_cancel} decoded after the cancel");
    assert!(host.alive());
}

// ---- (c) the wall-clock limit cuts a stream ----

/// A stream that outlives its plugin's wall-clock limit ends with an `event: error` carrying
/// `plugin_timeout` (not `[DONE]`), and its generation is cancelled.
#[tokio::test]
async fn the_wall_clock_limit_ends_a_stream_with_an_error_event() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(&config(3000));
    let pace = Pace::measure(&host).await;
    let before = Metrics::scrape(&host).await;
    let started = Instant::now();
    let r = client()
        .post(host.url("/slow/chat/completions"))
        .json(&chat_body(
            "Write a very long story about the sea.",
            1000,
            true,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    let took = started.elapsed();
    println!("the stream ended after {took:?}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(1500) + pace.step(),
        "wall_ms = 1500, the stream took {took:?} (a step: {:?})",
        pace.step()
    );
    let events = sse_events(&body);
    let text_events = events
        .iter()
        .filter(|(name, data)| name.is_none() && data.contains("\"content\""))
        .count();
    assert!(text_events >= 2, "text before the limit:\n{body}");
    assert!(
        !body.contains("[DONE]"),
        "a cut stream must not look complete:\n{body}"
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "the last event:\n{body}");
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["error"]["code"], "plugin_timeout", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(error["error"]["request_id"], request_id.as_str());
    // The generation did not outlive its request.
    let (after, took) = wait_for(&host, pace.step() * 5, |m| {
        m.llm("infergate_llm_sequences_active") == 0.0
    })
    .await;
    assert!(
        took < pace.step(),
        "a sequence still active {took:?} after the cut (a step: {:?})",
        pace.step()
    );
    assert_eq!(
        after.outcome("cancelled") - before.outcome("cancelled"),
        1.0
    );
    assert!(host.alive());
}

// ---- (d) a hostile plugin ----

/// Ten starts in one plugin call: four open (the per-call cap), six refused with
/// `too_many_generations`. Generations still open when the call ends (read a little, never
/// read, or leaked with `mem::forget` so the guest never drops them) are cancelled then:
/// nothing outlives the call, no more tokens are generated for them, and each is counted once
/// in `infergate_llm_generations_total`.
#[tokio::test]
async fn generations_a_plugin_call_leaves_open_end_with_it() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(&config(6000));
    let pace = Pace::measure(&host).await;
    let mallory = client_with(MALLORY_KEY);

    // Four started (three decoding: one tenant holds all sequences but one; the fourth
    // queued), and the call returned with all of them open and unread.
    let before = Metrics::scrape(&host).await;
    let opened: Value = mallory
        .get(host.url("/hostile/llm/many?n=10&read=0"))
        .fetch_json()
        .await;
    assert_eq!(opened["started"], 4, "{opened}");
    assert_eq!(
        opened["refused"],
        json!(vec!["too_many_generations"; 6]),
        "{opened}"
    );
    assert_eq!(opened["read_text"], 0, "{opened}");
    let (after, took) = wait_for(&host, pace.step() * 5, |m| {
        m.outcome("cancelled") - before.outcome("cancelled") >= 4.0
    })
    .await;
    println!("four open generations cancelled {took:?} after their call returned");
    assert_eq!(
        after.outcome("cancelled") - before.outcome("cancelled"),
        4.0
    );
    assert!(
        took < pace.step(),
        "cancelled {took:?} after the call (a step: {:?})",
        pace.step()
    );
    assert_eq!(after.llm("infergate_llm_sequences_active"), 0.0);
    assert_eq!(after.ended() - before.ended(), 4.0);

    // Started and returned at once, never read (some not even admitted yet), or leaked.
    for route in ["/hostile/llm/many?n=4", "/hostile/llm/leak?n=4"] {
        let before = Metrics::scrape(&host).await;
        let opened: Value = mallory.get(host.url(route)).fetch_json().await;
        assert_eq!(opened["started"], 4, "{route}: {opened}");
        let (after, took) = wait_for(&host, pace.step() * 5, |m| {
            m.llm("infergate_llm_sequences_active") == 0.0 && m.llm("infergate_llm_waiting") == 0.0
        })
        .await;
        // A cancel is seen between decode steps, the longest of which prefills four prompts.
        assert!(
            took < pace.step(),
            "{route}: generations alive {took:?} after the call (a step: {:?})",
            pace.step()
        );
        let output = after.tokens("mallory", "output");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            Metrics::scrape(&host).await.tokens("mallory", "output"),
            output,
            "{route}: tokens generated after the call ended"
        );
        assert_eq!(
            after.ended() - before.ended(),
            4.0,
            "{route}: four generations started, each counted once as it ended \
             (cancelled {} -> {})",
            before.outcome("cancelled"),
            after.outcome("cancelled"),
        );
    }
    assert!(host.alive());
}

/// A tenant whose plugin calls hold every sequence, with a backlog of their generations
/// queued behind them (sixteen calls of four, never read, each call sleeping until its
/// wall-clock limit), cannot keep another tenant waiting for its first token longer than about
/// one of those generations (the fair queue), not the whole backlog. When the calls end at
/// their limit, every generation they held or queued ends with them (each counted once), and
/// the host serves the next request promptly.
///
/// The calls' limit is 80 of the machine's [`Pace`] units (a round of the hoard takes about 20,
/// the whole backlog about 180): time for a round and another tenant's first token while the
/// backlog is there, and a backlog left for the calls' end to cancel, on a fast machine or a
/// slow one.
#[tokio::test]
async fn a_tenant_hoarding_sequences_delays_another_by_one_generation_at_most() {
    let _serial = SERIAL.lock().await;
    let pace = Pace::measure(&Host::start(&config(6000))).await;
    let wall = (pace.unit * 80).max(Duration::from_secs(6));
    println!("the hoarding calls' limit: {wall:?}");
    let host = Host::start(&config(wall.as_millis() as u64));
    let mallory = client_with(MALLORY_KEY);

    let before = Metrics::scrape(&host).await;
    let holds: Vec<_> = (0..16)
        .map(|_| {
            let (c, url) = (
                mallory.clone(),
                host.url("/hostile/llm/hold?n=4&max_tokens=24"),
            );
            tokio::spawn(async move { c.get(url).send().await.unwrap() })
        })
        .collect();
    let hoard_started = Instant::now();
    // One round: the first four generations run to their end (24 tokens each). The backlog
    // behind them is 15 rounds: more than the calls' limit.
    let (m, round) = wait_for(&host, wall, |m| m.ended() - before.ended() >= 4.0).await;
    assert!(m.ended() - before.ended() >= 4.0, "no round in {round:?}");
    let waiting = m.llm("infergate_llm_waiting");
    println!("one round of hoarded generations: {round:?}; {waiting} waiting");
    assert!(
        waiting >= 8.0,
        "a backlog behind the hoarded sequences: {waiting} waiting after {round:?}"
    );
    // Behind that backlog, another tenant's request gets the next free sequence (in first
    // come, first served order it would wait until the hoarding calls end).
    let (ttft, r) = first_token(
        &client(),
        host.url("/v1/chat/completions"),
        chat_body("What is the capital of France?", 16, true),
    )
    .await;
    println!("first token for another tenant behind the hoard: {ttft:?} (a round: {round:?})");
    assert!(
        ttft < round * 2 + Duration::from_secs(1),
        "first token after {ttft:?}, a round takes {round:?}"
    );
    // Otherwise the hoard had ended, and its backlog with it: the check above proved nothing.
    assert!(
        hoard_started.elapsed() < wall,
        "the first token came after the hoarding calls' limit ({wall:?})"
    );
    let rest = r.text().await.unwrap();
    assert!(rest.contains("[DONE]"), "{rest}");

    for hold in holds {
        expect_error(hold.await.unwrap(), 504, "plugin_timeout").await;
    }
    let ended_at = hoard_started.elapsed();
    let (after, took) = wait_for(&host, pace.step() * 5, |m| {
        m.llm("infergate_llm_sequences_active") == 0.0 && m.llm("infergate_llm_waiting") == 0.0
    })
    .await;
    println!(
        "hoarding calls ended after {ended_at:?}; their generations gone {took:?} later; \
         stop {}, length {}, cancelled {}",
        after.outcome("stop") - before.outcome("stop"),
        after.outcome("length") - before.outcome("length"),
        after.outcome("cancelled") - before.outcome("cancelled"),
    );
    // The decode thread sees a cancel between two steps.
    assert!(
        took < pace.step(),
        "generations alive {took:?} after their calls ended (a step: {:?})",
        pace.step()
    );
    let output = after.tokens("mallory", "output");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        Metrics::scrape(&host).await.tokens("mallory", "output"),
        output
    );
    assert_eq!(
        after.ended() - before.ended(),
        65.0,
        "64 hoarded generations and one other, each counted once as it ended"
    );

    let started = Instant::now();
    let answer: Value = client()
        .post(host.url("/v1/chat/completions"))
        .json(&chat_body("What is the capital of France?", 16, false))
        .fetch_json()
        .await;
    let took = started.elapsed();
    println!("a request after the hoard: {took:?}");
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    // 16 tokens: about two of the pace's completions, on a host with nothing else to do.
    assert!(
        took < pace.completions(4),
        "{took:?} (the pace: {:?})",
        pace.unit
    );
    assert!(host.alive());
    let health = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// One plugin call may open as many generations as the model has sequences (four each here),
/// but one tenant holds at most all sequences but one. A call that opens four long generations
/// it never reads must not lock other tenants out until its wall-clock limit (15 s): it gets
/// three sequences, and another tenant's request gets its first token as soon as a prompt is
/// read beside three decoding sequences.
#[tokio::test]
async fn a_call_holding_every_sequence_does_not_lock_out_other_tenants() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(&config(15000));
    let pace = Pace::measure(&host).await;
    let hold = {
        let (c, url) = (
            client_with(MALLORY_KEY),
            host.url("/hostile/llm/hold?n=4&max_tokens=1000"),
        );
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    let (m, took) = wait_for(&host, Duration::from_secs(15), |m| {
        m.llm("infergate_llm_sequences_active") == 3.0 && m.tokens("mallory", "output") >= 8.0
    })
    .await;
    assert_eq!(
        m.llm("infergate_llm_sequences_active"),
        3.0,
        "the hoard did not start in {took:?}"
    );
    let (ttft, r) = first_token(
        &client(),
        host.url("/v1/chat/completions"),
        chat_body("What is the capital of France?", 8, true),
    )
    .await;
    println!("first token beside a call holding every sequence: {ttft:?}");
    // Otherwise the call had ended at its limit, and the check below would prove nothing.
    assert!(!hold.is_finished(), "the hoarding call ended first");
    hold.abort();
    drop(r);
    assert!(
        ttft < pace.step(),
        "another tenant waited {ttft:?} for a sequence (the hoarding call's limit is 15 s, \
         a step {:?})",
        pace.step()
    );
    assert!(host.alive());
}

/// A plugin that reads a generation the way an async guest does, waiting on its pollable
/// between events, computes next to nothing itself: the waits are the host's time, so a
/// 200-token answer fits a 500 ms CPU budget.
#[tokio::test]
async fn waiting_for_a_generation_is_not_the_plugins_cpu_time() {
    let _serial = SERIAL.lock().await;
    let host = Host::start(&config(30000));
    for route in ["/hostile/llm/poll", "/hostile/llm/read"] {
        waiting_is_not_cpu_time(&host, route).await;
    }
}

/// 200 tokens read through `route` stay within `cpu_ms = 500` (each takes about 10 ms).
async fn waiting_is_not_cpu_time(host: &Host, route: &str) {
    let started = Instant::now();
    let r = client_with(MALLORY_KEY)
        .get(host.url(&format!("{route}?max_tokens=200")))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = r.status();
    let body = r.text().await.unwrap();
    println!("200 tokens read through {route} in {took:?}: {status} {body}");
    assert_eq!(status, 200, "{route}, cpu_ms = 500: {body}");
    let polled: Value = serde_json::from_str(&body).unwrap();
    assert!(polled["waits"].as_u64().unwrap() >= 10, "{polled}");
    assert!(polled["text_bytes"].as_u64().unwrap() > 0, "{polled}");
    if polled["finish_reason"] == "length" {
        assert_eq!(polled["completion_tokens"], 200, "{polled}");
    }
}
