"""`Ctx`: what the host established about the current request (identity, matched route, path
parameters) plus what the plugin saw on the wire (method, path, query, headers), and the host
services scoped to it (usage reporting, structured logging).

A `Ctx` is built for each request and handed to the handler; nothing about a request is kept
in module globals, since the host may serve several requests (of one tenant) with one
instance. Plugins see identity, never credentials.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from ._wit import bindings


class LogLevel(enum.Enum):
    """Levels of `Ctx.log`, as the host's `log-level`."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class HostServices(Protocol):
    """The host calls a `Ctx` makes; `WitHost` inside a component, a fake in unit tests."""

    def report_usage(self, tokens_in: int, tokens_out: int) -> None: ...

    def log(self, level: LogLevel, message: str, fields: list[tuple[str, str]]) -> None: ...


class WitHost:
    """`HostServices` through the `infergate:plugin/host` import."""

    def report_usage(self, tokens_in: int, tokens_out: int) -> None:
        bindings().host.report_usage(tokens_in, tokens_out)

    def log(self, level: LogLevel, message: str, fields: list[tuple[str, str]]) -> None:
        host = bindings().host
        host.log(host.LogLevel[level.name], message, fields)


@dataclass(frozen=True)
class Ctx:
    """The context of the request being handled."""

    #: The id the host gave this request (also in `x-request-id` and error bodies).
    request_id: str
    #: The caller's tenant.
    tenant: str
    #: The id of the caller's API key, if it used one.
    key_id: str | None = None
    #: Scopes granted to the caller.
    scopes: tuple[str, ...] = ()
    #: Selected claims of the caller's token: name -> value as JSON text (`'"alice"'`, `'42'`).
    claims: Mapping[str, str] = field(default_factory=dict)
    #: The route template that matched, exactly as declared (`/items/{id}`).
    route: str = ""
    #: Path parameters: `{"id": "42"}` for `/items/{id}`.
    params: Mapping[str, str] = field(default_factory=dict)
    #: The HTTP method, upper case.
    method: str = "GET"
    #: The request path relative to the plugin's mount, without the query.
    path: str = "/"
    #: The raw query string, without the `?`.
    query_string: str | None = None
    #: Request headers as (name, value bytes) pairs, names lower case.
    headers: Sequence[tuple[str, bytes]] = ()
    #: Where usage and logs go.
    host: HostServices = field(default_factory=WitHost, repr=False, compare=False)

    @classmethod
    def for_tests(cls, tenant: str = "test", **fields: Any) -> Ctx:
        """A `Ctx` for unit tests, outside any host: what it reports and logs is recorded on
        `ctx.host` (a `testing.RecordingHost`). `fields` as for `testing.make_ctx`."""
        from .testing import make_ctx

        return make_ctx(tenant=tenant, **fields)

    def has_scope(self, scope: str) -> bool:
        """Whether the caller holds `scope`."""
        return scope in self.scopes

    def claim(self, name: str) -> str | None:
        """One claim, as JSON text (`'"alice"'`, `'42'`), like the Rust SDK."""
        return self.claims.get(name)

    def claim_value(self, name: str) -> Any:
        """One claim, parsed (`"alice"`, `42`); `None` when absent."""
        text = self.claims.get(name)
        return None if text is None else json.loads(text)

    def param(self, name: str) -> str | None:
        """One path parameter: `ctx.param("id")` for `/items/{id}`."""
        return self.params.get(name)

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`, percent-decoded (`+` is a space)."""
        values = self.query_all(name)
        return values[0] if values else None

    def query_all(self, name: str) -> list[str]:
        """Every value of query parameter `name`, in order."""
        if not self.query_string:
            return []
        pairs = parse_qsl(self.query_string, keep_blank_values=True)
        return [value for key, value in pairs if key == name]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), if it is valid UTF-8."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                try:
                    return value.decode()
                except UnicodeDecodeError:
                    return None
        return None

    def report_usage(self, tokens_in: int, tokens_out: int) -> None:
        """Adds to this request's usage (tokens read, tokens generated); calls add up."""
        self.host.report_usage(tokens_in, tokens_out)

    def log(self, level: LogLevel | str, message: str, **fields: object) -> None:
        """Writes a structured log line; the host tags it with the plugin and request id.
        `ctx.log("info", "classified", digit=3)`."""
        level = LogLevel(level) if isinstance(level, str) else level
        self.host.log(level, message, [(key, str(value)) for key, value in fields.items()])

    def log_trace(self, message: str, **fields: object) -> None:
        """Logs at trace level."""
        self.log(LogLevel.TRACE, message, **fields)

    def log_debug(self, message: str, **fields: object) -> None:
        """Logs at debug level."""
        self.log(LogLevel.DEBUG, message, **fields)

    def log_info(self, message: str, **fields: object) -> None:
        """Logs at info level."""
        self.log(LogLevel.INFO, message, **fields)

    def log_warn(self, message: str, **fields: object) -> None:
        """Logs at warn level."""
        self.log(LogLevel.WARN, message, **fields)

    def log_error(self, message: str, **fields: object) -> None:
        """Logs at error level."""
        self.log(LogLevel.ERROR, message, **fields)
