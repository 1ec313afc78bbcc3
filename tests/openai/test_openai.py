"""The OpenAI-compatible surface at `/v1`, driven by the official `openai` Python client.

What an OpenAI user notices when they point their client at infergate with only a `base_url`
change: chat completions (whole and streamed, usage, sampling parameters, stop strings,
errors with OpenAI's codes), embeddings and the model list.

Environment:
  INFERGATE_URL        the host, e.g. http://127.0.0.1:8080 (the module is skipped without it)
  INFERGATE_API_KEY    a key whose tenant may generate freely
  INFERGATE_SMALL_KEY  optional: a key whose tenant has a small token budget (fewer tokens a
                       day than the requests below ask for); INFERGATE_SMALL_TENANT names that
                       tenant (default `small`)
  INFERGATE_METRICS_KEY optional: the admin or metrics key, which reads `/metrics` (for the
                       budget test, with INFERGATE_SMALL_KEY)
  INFERGATE_SLOW_MOUNT optional: where the same plugin is mounted with a short wall-clock limit
                       (e.g. `/slow`), to see a stream cut by the host reach the client as an error

`tests/e2e/generation.rs` starts a host and runs this file; by hand:

  INFERGATE_URL=http://127.0.0.1:8080 INFERGATE_API_KEY=... python3 -m pytest -q tests/openai
"""

import base64
import math
import os
import re
import struct
import time
import urllib.request

import openai
import pytest

URL = os.environ.get("INFERGATE_URL", "").rstrip("/")
if not URL:
    pytest.skip("INFERGATE_URL is not set", allow_module_level=True)

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
# The model's context per sequence, as the host is configured (tokens, prompt plus completion).
CONTEXT = 2048


def make_client(key, base="/v1"):
    # No retries: a 429 or 503 must reach the test as it was sent.
    return openai.OpenAI(base_url=URL + base, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def client():
    return make_client(os.environ["INFERGATE_API_KEY"])


def ask(text):
    return [{"role": "user", "content": text}]


def chat(client, messages, **params):
    return client.chat.completions.create(model=CHAT_MODEL, messages=messages, **params)


def stream_chat(client, messages, **params):
    """The chunks of a streamed completion, each with the time it arrived (after the request)."""
    started = time.monotonic()
    stream = chat(client, messages, stream=True, **params)
    return [(chunk, time.monotonic() - started) for chunk in stream]


def warm(client, messages):
    """Puts `messages` in the host's prompt cache. Requests compared for equal text must be
    computed alike: a prompt prefilled whole and one served from the cache go through the
    model in batches of other shapes, and at temperature 0 a near tie between two tokens may
    then fall either way (llama.cpp's own server behaves the same). Once cached, a prompt is
    computed the same way every time."""
    chat(client, messages, max_tokens=1, temperature=0)


def streamed_text(chunks):
    return "".join(
        c.choices[0].delta.content or "" for c, _ in chunks if c.choices
    )


# ---- metrics ----

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metrics():
    """`/metrics` as {(name, frozenset of (label, value)): float}."""
    request = urllib.request.Request(
        URL + "/metrics",
        headers={"Authorization": "Bearer " + os.environ["INFERGATE_METRICS_KEY"]},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples, name, **labels):
    """The sum of the series `name` whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


# ---- chat completions ----


def test_a_completion_answers_with_consistent_usage(client):
    r = chat(
        client,
        ask("What is the capital of France? Answer in one sentence."),
        max_tokens=32,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.id
    assert r.model == CHAT_MODEL
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content.strip(), r
    assert "paris" in choice.message.content.lower(), choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5
    assert 1 <= u.completion_tokens <= 32
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if choice.finish_reason == "length":
        assert u.completion_tokens == 32


def test_a_stream_arrives_while_it_is_generated(client):
    chunks = stream_chat(
        client,
        ask("Write a short story about a robot who learns to paint."),
        max_tokens=64,
        temperature=0,
    )
    assert all(c.object == "chat.completion.chunk" for c, _ in chunks)
    assert len({c.id for c, _ in chunks}) == 1, "one id for the whole stream"
    assert all(c.model == CHAT_MODEL for c, _ in chunks)
    assert all(c.usage is None for c, _ in chunks), "no usage unless asked for"
    content = [(c, t) for c, t in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 8, f"{len(content)} content chunks"
    first, last = content[0][1], content[-1][1]
    print(f"first content after {first:.3f}s, last after {last:.3f}s, {len(content)} chunks")
    # Streamed, not generated whole and then sent in pieces: the pieces come over the time the
    # 64 tokens take to generate (a whole answer cut up would arrive within milliseconds), and
    # not as one late straggler either: half of them come well before the last. (The time to
    # the first piece is not compared: on a busy machine it can be any share of the total.)
    middle = content[len(content) // 2][1]
    assert last - first >= 0.1, f"first {first:.3f}s, last {last:.3f}s"
    assert last - middle >= 0.05, f"middle {middle:.3f}s, last {last:.3f}s"
    finishes = [c.choices[0].finish_reason for c, _ in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1]), finishes
    assert streamed_text(chunks).strip()


def test_a_stream_ends_with_usage_when_asked(client):
    warm(client, ask("Name three colours."))
    chunks = stream_chat(
        client,
        ask("Name three colours."),
        max_tokens=24,
        temperature=0,
        stream_options={"include_usage": True},
    )
    *body, (final, _) = chunks
    assert final.choices == [], "the usage chunk has no choices"
    assert final.usage is not None
    assert final.usage.prompt_tokens > 0
    assert 1 <= final.usage.completion_tokens <= 24
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    assert all(c.usage is None for c, _ in body), "usage only in the last chunk"
    assert body and body[-1][0].choices[0].finish_reason in ("stop", "length")
    if body[-1][0].choices[0].finish_reason == "length":
        assert final.usage.completion_tokens == 24
    # The same request whole counts the same tokens.
    whole = chat(client, ask("Name three colours."), max_tokens=24, temperature=0)
    assert whole.usage.prompt_tokens == final.usage.prompt_tokens
    assert whole.usage.completion_tokens == final.usage.completion_tokens
    assert whole.choices[0].message.content == streamed_text(chunks)


def test_temperature_zero_gives_the_same_text_streamed_and_whole(client):
    messages = ask("Explain in two sentences why the sky is blue.")
    warm(client, messages)
    whole = chat(client, messages, max_tokens=40, temperature=0)
    streamed = streamed_text(stream_chat(client, messages, max_tokens=40, temperature=0))
    assert whole.choices[0].message.content == streamed
    again = chat(client, messages, max_tokens=40, temperature=0)
    assert again.choices[0].message.content == whole.choices[0].message.content


def test_a_seed_makes_sampling_reproducible(client):
    messages = ask("Tell me a very short story about a dragon.")
    warm(client, messages)

    def sample(seed):
        r = chat(client, messages, max_tokens=24, temperature=0.8, seed=seed)
        return r.choices[0].message.content

    first = sample(42)
    assert sample(42) == first
    # Another seed gives another text (up to three tries: two seeds may agree by chance).
    others = []
    for seed in (7, 1234, 99991):
        others.append(sample(seed))
        if others[-1] != first:
            break
    assert others[-1] != first, f"every seed gave {first!r}"


def test_max_tokens_cuts_the_answer_at_exactly_that_many(client):
    r = chat(client, ask("Write a long essay about the history of Rome."), max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.choices[0].message.content


COUNT = [
    {"role": "system", "content": "You answer with numbers only."},
    {"role": "user", "content": "Count from 1 to 10, separated by commas."},
]
STOP = " 4"


def test_a_stop_string_ends_the_answer_before_it(client):
    # Without the stop string the answer contains it (else the test would prove nothing)...
    warm(client, COUNT)
    full = chat(client, COUNT, max_tokens=40, temperature=0).choices[0].message.content
    assert STOP in full, f"the control answer lacks {STOP!r}: {full!r}"
    expected = full[: full.index(STOP)]
    # ... with it, the answer stops right before it, whole and streamed.
    r = chat(client, COUNT, max_tokens=40, temperature=0, stop=[STOP])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected
    assert STOP not in r.choices[0].message.content
    chunks = stream_chat(client, COUNT, max_tokens=40, temperature=0, stop=STOP)
    assert streamed_text(chunks) == expected
    assert chunks[-1][0].choices[0].finish_reason == "stop"


def test_a_prompt_longer_than_the_context_is_refused(client):
    # About 3000 tokens: more than the 2048 the model holds per sequence.
    long = "The quick brown fox jumps over the lazy dog. " * 300
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, ask(long), max_tokens=16)
    assert e.value.status_code == 400
    assert e.value.code == "context_length_exceeded", e.value.body
    # A prompt that fits, with max_tokens that do not fit beside it.
    half = "The quick brown fox jumps over the lazy dog. " * 120
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, ask(half), max_tokens=CONTEXT)
    assert e.value.code == "context_length_exceeded", e.value.body


@pytest.mark.parametrize(
    "params",
    [{"temperature": 5}, {"n": 2}, {"max_tokens": 0}],
    ids=["temperature=5", "n=2", "max_tokens=0"],
)
def test_invalid_parameters_are_a_bad_request(client, params):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, ask("Hi"), **{"max_tokens": 8, **params})
    assert e.value.status_code == 400
    assert e.value.code == "invalid_request", e.value.body
    # The product's error shape, with the request's id.
    assert e.value.body["message"]
    assert e.value.body["request_id"] == e.value.response.headers["x-request-id"]


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(
            model="gpt-nonexistent", messages=ask("Hi"), max_tokens=8
        )
    assert e.value.code == "model_not_found", e.value.body


# ---- embeddings and models ----


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The stock market fell sharply today.",
]


def test_embeddings_place_paraphrases_together(client):
    # The client asks for base64 unless told otherwise, and decodes it.
    r = client.embeddings.create(model=EMBED_MODEL, input=SENTENCES)
    assert r.object == "list"
    assert [d.index for d in r.data] == [0, 1, 2]
    vectors = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    paraphrase, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    print(f"cos(paraphrase) {paraphrase:.3f}, cos(unrelated) {unrelated:.3f}")
    assert paraphrase > unrelated + 0.3
    assert r.usage.prompt_tokens > 0
    # Asked for floats, the same vectors.
    floats = client.embeddings.create(
        model=EMBED_MODEL, input=SENTENCES, encoding_format="float"
    )
    for a, b in zip(vectors, (d.embedding for d in floats.data)):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_embeddings_in_base64_are_little_endian_float32(client):
    r = client.embeddings.create(
        model=EMBED_MODEL, input=SENTENCES[0], encoding_format="base64"
    )
    raw = base64.b64decode(r.data[0].embedding)
    assert len(raw) == 384 * 4
    values = struct.unpack("<384f", raw)
    assert abs(math.sqrt(sum(x * x for x in values)) - 1) < 1e-3


def test_the_model_list_names_both_models(client):
    ids = {m.id for m in client.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids, ids


# ---- limits ----


def test_a_generation_over_the_token_budget_is_refused_before_decoding():
    key = os.environ.get("INFERGATE_SMALL_KEY")
    if not key or not os.environ.get("INFERGATE_METRICS_KEY"):
        pytest.skip("INFERGATE_SMALL_KEY or INFERGATE_METRICS_KEY is not set")
    tenant = os.environ.get("INFERGATE_SMALL_TENANT", "small")
    small = make_client(key)
    before = metrics()
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as e:
            chat(small, ask("Write a long poem."), max_tokens=1000, stream=stream)
        assert e.value.status_code == 429
        assert e.value.code == "quota_exceeded", e.value.body
        assert e.value.response.headers.get("retry-after"), "quota_exceeded has Retry-After"
    after = metrics()
    for kind in ("input", "output"):
        for samples in (before, after):
            used = metric(
                samples,
                "infergate_llm_tokens_total",
                tenant=tenant,
                gen_ai_token_type=kind,
            )
            assert used == 0, f"{kind} tokens for tenant {tenant}: {used}"


def test_a_stream_cut_by_the_wall_clock_limit_ends_with_an_error_event():
    mount = os.environ.get("INFERGATE_SLOW_MOUNT")
    if not mount:
        pytest.skip("INFERGATE_SLOW_MOUNT is not set")
    slow = make_client(os.environ["INFERGATE_API_KEY"], base=mount)
    text = []
    with pytest.raises(openai.APIError) as e:
        for chunk in chat(slow, ask("Write a very long story."), max_tokens=1000, stream=True):
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
    assert e.value.code == "plugin_timeout", e.value.body
    assert "".join(text), "text was streamed before the limit"
