"""Server-sent events: how a streaming route's yielded items become `text/event-stream`.

Each item a streaming handler yields is one event: a `str` is sent as it is, anything else
(dict, list, dataclass, number) as JSON, and a `ServerEvent` sets the event name, id or retry.
A handler that fails after the stream has begun cannot change the status any more, so, as the
host does for a plugin that fails mid-stream, the stream ends with `event: error` whose data
is the usual error object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .ctx import Ctx
from .errors import HttpError, internal_error
from .message import json_bytes


@dataclass(frozen=True)
class ServerEvent:
    """One event with its optional SSE fields; `data` is a `str` or a JSON value."""

    data: Any
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def format_event(item: Any) -> bytes:
    """The wire form of one yielded item (a `ServerEvent`, a `str`, or a JSON value)."""
    event = item if isinstance(item, ServerEvent) else ServerEvent(item)
    lines: list[str] = []
    if event.event is not None:
        lines.append(f"event: {_one_line(event.event)}")
    if event.id is not None:
        lines.append(f"id: {_one_line(event.id)}")
    if event.retry is not None:
        lines.append(f"retry: {int(event.retry)}")
    data = event.data if isinstance(event.data, str) else json_bytes(event.data).decode()
    # A multi-line payload is one `data:` line per line; the client joins them with "\n".
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def error_event(err: HttpError, request_id: str) -> bytes:
    """The last event of a stream that failed: `event: error` with the error object."""
    return b"event: error\ndata: " + err.to_json(request_id) + b"\n\n"


def event_stream(first: Any, rest: Iterator[Any], ctx: Ctx) -> Iterator[bytes]:
    """The body of a streaming response: `first` (already produced, so that errors before
    the first event still get a real status), then the rest of the handler's items. Closing
    this generator (the client went away) closes the handler's generator too."""
    try:
        yield format_event(first)
        for item in rest:
            yield format_event(item)
    except GeneratorExit:
        raise
    except HttpError as err:
        yield error_event(err, ctx.request_id)
    except MemoryError:
        raise  # let the instance trap: the host reports `plugin_out_of_memory`
    except Exception as exc:
        yield error_event(internal_error(exc, ctx), ctx.request_id)
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")
