"""`Request` and `Response` as the SDK moves them between the wire and the handlers.

Most handlers never see these: a typed handler gets its body as a dataclass and returns one.
A handler whose second parameter is annotated `Request` gets the raw request (any body, no
schema); a handler may return a `Response` to choose its status, headers and body. A body
that is an iterable of `bytes` is streamed: each chunk is written and flushed as it comes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codec import encode
from .errors import HttpError


@dataclass(frozen=True)
class Request:
    """A request as raw handlers see it."""

    #: Upper-case HTTP method.
    method: str
    #: Path relative to the plugin's mount, without the query.
    path: str
    #: Raw query string without `?`.
    query: str | None = None
    #: Headers as (name, value bytes) pairs.
    headers: Sequence[tuple[str, bytes]] = ()
    #: The whole body.
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON; malformed JSON is a 400 `invalid_request`."""
        try:
            return json.loads(self.body)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            raise HttpError.bad_request(f"the body is not valid JSON: {err}") from None

    def text(self) -> str:
        """The body as UTF-8 text; invalid UTF-8 is a 400 `invalid_request`."""
        try:
            return self.body.decode()
        except UnicodeDecodeError as err:
            raise HttpError.bad_request(f"the body is not valid UTF-8: {err}") from None


@dataclass
class Response:
    """A response: status, headers, and a body in memory (`bytes`) or streamed (an iterable
    of `bytes` chunks, each flushed to the client as it is produced)."""

    status: int = 200
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        """`value` (dataclasses, lists, dicts, scalars...) as `application/json`."""
        return cls.binary(json_bytes(value), "application/json", status)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain") -> Response:
        """UTF-8 text."""
        return cls.binary(text.encode(), f"{content_type}; charset=utf-8", status)

    @classmethod
    def binary(cls, body: bytes, content_type: str, status: int = 200) -> Response:
        """Bytes already in memory with one `content-type`."""
        return cls(status, [("content-type", content_type.encode())], body)

    @classmethod
    def stream(cls, chunks: Iterable[bytes], content_type: str, status: int = 200) -> Response:
        """A body written chunk by chunk as `chunks` produces them."""
        return cls(status, [("content-type", content_type.encode())], chunks)

    @classmethod
    def error(cls, err: HttpError, request_id: str) -> Response:
        """`err` in the product's error shape."""
        return cls.binary(err.to_json(request_id), "application/json", err.status)

    def with_header(self, name: str, value: str | bytes) -> Response:
        """Adds a header (names are sent lower case)."""
        raw = value.encode() if isinstance(value, str) else value
        self.headers.append((name.lower(), raw))
        return self

    def header(self, name: str) -> str | None:
        """The first value of header `name`, decoded."""
        name = name.lower()
        return next((v.decode() for k, v in self.headers if k.lower() == name), None)

    @property
    def streaming(self) -> bool:
        """Whether the body is written as it is produced."""
        return not isinstance(self.body, (bytes, bytearray))


def json_bytes(value: Any) -> bytes:
    """`value` as compact JSON; values with no JSON form (NaN, objects) are a 500."""
    try:
        return json.dumps(encode(value), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise HttpError.internal(f"cannot serialise the response: {err}") from err
