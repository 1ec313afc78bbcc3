"""Running a plugin's routes in plain Python, without a host or a component: for the unit
tests of plugins (and of this SDK).

    from infergate.testing import call
    result = call(app.plugin, "POST", "/greet", {"name": "Ada"}, tenant="acme")
    assert result.status == 200 and result.json() == {"message": "Hello, Ada! (tenant acme)"}

The host's own checks (authentication, scopes, schema validation) do not run here; the
plugin's do (routing, body decoding, errors). Host services a `Ctx` uses are recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ctx import Ctx, LogLevel
from .message import Request
from .routing import Plugin


@dataclass
class RecordingHost:
    """`HostServices` that remembers what was reported and logged."""

    usage: list[tuple[int, int]] = field(default_factory=list)
    logs: list[tuple[LogLevel, str, list[tuple[str, str]]]] = field(default_factory=list)

    def report_usage(self, tokens_in: int, tokens_out: int) -> None:
        self.usage.append((tokens_in, tokens_out))

    def log(self, level: LogLevel, message: str, fields: list[tuple[str, str]]) -> None:
        self.logs.append((level, message, fields))


@dataclass
class Result:
    """A response as a test sees it: status, headers, the whole body."""

    status: int
    headers: list[tuple[str, bytes]]
    body: bytes
    host: RecordingHost

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header `name`."""
        return next((v.decode() for k, v in self.headers if k == name.lower()), None)

    def events(self) -> list[tuple[str | None, str]]:
        """A `text/event-stream` body as (event name, data) pairs."""
        out: list[tuple[str | None, str]] = []
        for block in self.body.decode().split("\n\n"):
            if not block.strip():
                continue
            name, data = None, []
            for line in block.split("\n"):
                key, _, value = line.partition(": ")
                if key == "event":
                    name = value
                elif key == "data":
                    data.append(value)
            out.append((name, "\n".join(data)))
        return out


def make_ctx(
    *,
    method: str = "GET",
    path: str = "/",
    query: str | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    request_id: str = "test-request",
    tenant: str = "test",
    key_id: str | None = "test-key",
    scopes: Sequence[str] = ("*",),
    claims: Mapping[str, Any] | None = None,
    host: RecordingHost | None = None,
) -> Ctx:
    """A `Ctx` as the host would build it (claims given as values are turned into JSON)."""
    return Ctx(
        request_id=request_id,
        tenant=tenant,
        key_id=key_id,
        scopes=tuple(scopes),
        claims={k: json.dumps(v) for k, v in (claims or {}).items()},
        method=method.upper(),
        path=path,
        query_string=query,
        headers=tuple(headers),
        host=host or RecordingHost(),
    )


def call(
    plugin: Plugin,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw_body: bytes | None = None,
    **ctx: Any,
) -> Result:
    """Serves one request with `plugin` and collects the whole response (streams included).
    `body` is sent as JSON; `raw_body` as it is; `path` may carry a query."""
    path, _, query = path.partition("?")
    host = ctx.pop("host", None) or RecordingHost()
    data = raw_body if raw_body is not None else b"" if body is None else json.dumps(body).encode()
    context = make_ctx(method=method, path=path, query=query or None, host=host, **ctx)
    request = Request(context.method, path, query or None, context.headers, data)
    response = plugin.serve(context, request)
    payload = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    return Result(response.status, response.headers, payload, host)
