"""Text generation on language models the host owns (`infergate:plugin/llm`), token by token.

The host renders the chat template, tokenizes, checks the context and the tenant's token
budget before decoding, samples, and counts (and charges) the tokens; the plugin decides what
the client sees. A `Generation` is an iterator of text chunks that waits for each one; once it
is exhausted, `finish_reason` and `usage` are set. Closing it (or leaving a `with` block, or
dropping it) cancels the generation.

    gen = llm.chat("smollm2-135m-instruct", [llm.user("Hi!")], max_tokens=32, temperature=0)
    for text in gen:
        yield text                    # a streaming route
    yield {"finish_reason": gen.finish_reason, "usage": gen.usage}

Errors are `HttpError`s, mapped like the Rust SDK's: `model_not_found` 404,
`invalid_request` 400, `context_length_exceeded` 400, `too_many_generations` 429,
`inference_timeout` 504, `backend_error` 500. A token budget that cannot cover the prompt plus
`max_tokens`, or a full model queue, ends the call in the host (429 `quota_exceeded`, 503
`queue_full`) before `chat` returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

from ._wit import bindings
from .errors import HttpError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Message:
    """One chat message; `role` is `system`, `user` or `assistant`."""

    role: str
    content: str


def system(content: str) -> Message:
    """A system message."""
    return Message("system", content)


def user(content: str) -> Message:
    """A user message."""
    return Message("user", content)


def assistant(content: str) -> Message:
    """An assistant message."""
    return Message("assistant", content)


@dataclass(frozen=True)
class Usage:
    """Tokens counted by the host: what the tenant is charged."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ModelInfo:
    """A language model this plugin may use."""

    name: str
    #: Tokens one generation may hold: prompt plus completion.
    context_length: int


#: What `chat` accepts as a message: a `Message`, `{"role": ..., "content": ...}`, or a pair.
MessageLike = Message | Mapping[str, str] | tuple[str, str]


class Generation:
    """A running generation: iterate it for text chunks (valid UTF-8, whole tokens)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._done = False
        #: Why it ended (`"stop"` or `"length"`), once it has.
        self.finish_reason: FinishReason | None = None
        #: The tokens the host counted, once it has ended.
        self.usage: Usage | None = None

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompt, as the host counted them (known before decoding)."""
        return int(self._inner.prompt_tokens())

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while not self._done:
            event = self._read()
            if event is not None:
                return event
        raise StopIteration

    def _read(self) -> str | None:
        """The next text, `None` after recording the end."""
        w = bindings()
        try:
            event = self._inner.read()
        except w.types.Err as err:
            self._done = True
            raise llm_error(err.value) from None
        if event is None:
            self._done = True
            return None
        if isinstance(event, w.llm.Event_Text):
            return str(event.value)
        reason, usage = event.value
        self.finish_reason = "stop" if reason == w.llm.FinishReason.STOP else "length"
        self.usage = Usage(usage.prompt_tokens, usage.completion_tokens)
        self._done = True
        return None

    def text(self) -> str:
        """Reads the rest of the generation and returns it as one string."""
        return "".join(self)

    def subscribe(self) -> Any:
        """A `wasi:io/poll` pollable, ready when the next event is (for async guests)."""
        return self._inner.subscribe()

    def close(self) -> None:
        """Cancels the generation (the host stops decoding at the next token)."""
        self._done = True
        self._inner.__exit__(None, None, None)

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sampling(TypedDict, total=False):
    """Sampling parameters of `chat` and `complete`; a missing one takes the host's default
    (shown in brackets)."""

    #: The most tokens to generate [the rest of the model's context].
    max_tokens: int
    #: 0 picks the most likely token every time (greedy) [0.8].
    temperature: float
    #: Nucleus sampling [1.0].
    top_p: float
    #: Keep only the k most likely tokens; 0 keeps all [40].
    top_k: int
    #: Stop before any of these strings (at most 4, each at most 64 bytes).
    stop: Sequence[str]
    #: The same seed, prompt and parameters give the same text [random].
    seed: int
    #: Penalise tokens repeated within the last 64; 1.0 turns it off [1.0].
    repetition_penalty: float


def chat(model: str, messages: Iterable[MessageLike], **params: Unpack[Sampling]) -> Generation:
    """Starts a chat generation on `model`: `chat(model, [llm.user("Hi")], max_tokens=32)`."""
    w = bindings()
    prompt = w.llm.Prompt_Chat([w.llm.Message(m.role, m.content) for m in map(message, messages)])
    return _start(model, prompt, params)


def complete(model: str, prompt: str, **params: Unpack[Sampling]) -> Generation:
    """Continues `prompt` as raw text (no chat template)."""
    w = bindings()
    return _start(model, w.llm.Prompt_Raw(prompt), params)


def models() -> list[ModelInfo]:
    """The language models granted to this plugin."""
    return [ModelInfo(m.name, m.context_length) for m in bindings().llm.models()]


def message(value: MessageLike) -> Message:
    """A `Message` from any `MessageLike`."""
    if isinstance(value, Message):
        return value
    if isinstance(value, tuple):
        role, content = value
        return Message(role, content)
    return Message(value["role"], value["content"])


def _start(model: str, prompt: Any, params: Sampling) -> Generation:
    w = bindings()
    unknown = set(params) - Sampling.__optional_keys__
    if unknown:
        raise TypeError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
    wit_params = w.llm.Params(
        max_tokens=params.get("max_tokens"),
        temperature=params.get("temperature"),
        top_p=params.get("top_p"),
        top_k=params.get("top_k"),
        stop=list(params.get("stop") or ()),
        seed=params.get("seed"),
        repetition_penalty=params.get("repetition_penalty"),
    )
    try:
        return Generation(w.llm.start(model, prompt, wit_params))
    except w.types.Err as err:
        raise llm_error(err.value) from None


#: `infergate:plugin/llm.error` cases as (status, code).
_ERRORS = {
    "Error_ModelNotFound": (404, "model_not_found"),
    "Error_InvalidRequest": (400, "invalid_request"),
    "Error_ContextLengthExceeded": (400, "context_length_exceeded"),
    "Error_TooManyGenerations": (429, "too_many_generations"),
    "Error_Timeout": (504, "inference_timeout"),
    "Error_Backend": (500, "backend_error"),
}


def llm_error(err: Any) -> HttpError:
    """An `infergate:plugin/llm.error` as an `HttpError`."""
    status, code = _ERRORS.get(type(err).__name__, (500, "backend_error"))
    return HttpError(status, code, str(getattr(err, "value", err)))
