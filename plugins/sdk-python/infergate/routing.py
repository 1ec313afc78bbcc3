"""Routes and the `Plugin` that holds them: declaring a route once (method, path template,
handler), deriving its manifest entry (JSON Schemas from the handler's type hints), and
dispatching a request to it.

A handler takes the `Ctx` first. After it come, by name, the route's path parameters
(`def get_item(ctx, id: int)` for `/items/{id}`), and for POST, PUT and PATCH the body: the one
other parameter, whose type hint (a dataclass, `dict`, `list[...]`, `Any`...) gives the request
schema, or `Request` for the raw request. The return hint gives the response schema. A
generator handler (or `streaming=True`) streams its yielded items as server-sent events.

Dispatch follows the Rust SDK: the route the host matched (`ctx.route`) is looked up first,
then the path is matched against the templates (local tests, or a host that did not say);
no match is a 404 `not_found`, a path served only under other methods a 405.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ._hints import HintError, strip_annotated
from .codec import DecodeError, decode
from .ctx import Ctx
from .errors import HttpError, internal_error
from .message import Request, Response
from .schema import json_schema_text
from .sse import event_stream

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Methods whose handlers take no body parameter (their routes have no request schema).
BODYLESS = ("GET", "DELETE")

_PARAM = re.compile(r"^\{([A-Za-z0-9_-]+)\}$")
_NO_HINT = inspect.Parameter.empty
#: The types a path parameter may be declared with.
_PATH_TYPES: tuple[Any, ...] = (str, int, float, Any)

Handler = Callable[..., Any]


class RouteError(ValueError):
    """A route declared wrongly (raised while the plugin module is imported, i.e. at build)."""


@dataclass(frozen=True)
class RouteSpec:
    """One route as the manifest declares it (`infergate:plugin/manifest.route`)."""

    method: str
    path: str
    summary: str
    request_schema: str | None
    response_schema: str | None
    streaming: bool
    scopes: list[str]


@dataclass(frozen=True)
class PluginSpec:
    """The whole manifest (`infergate:plugin/manifest.plugin-manifest`)."""

    name: str
    version: str
    description: str
    routes: list[RouteSpec]
    models: list[str]


@dataclass
class _Signature:
    """What a handler's parameters and hints say, resolved once."""

    path_args: dict[str, Any]
    body_name: str | None
    body_hint: Any
    raw_body: bool
    return_hint: Any


@dataclass
class Route:
    """One HTTP route of the plugin: what the manifest declares and the function serving it."""

    method: str
    path: str
    handler: Handler
    summary: str = ""
    scopes: tuple[str, ...] = ()
    streaming: bool = False
    #: Overrides the request type (e.g. the schema of a raw route's body).
    request_type: Any = None
    #: Overrides the response type (e.g. for the docs of a streaming route).
    response_type: Any = None
    _segments: tuple[str, ...] = field(init=False, repr=False)
    _signature: _Signature | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        if self.method not in METHODS:
            raise RouteError(f"{self.method} {self.path}: the method must be one of {METHODS}")
        self._segments = parse_template(self.path)
        self.streaming = self.streaming or inspect.isgeneratorfunction(self.handler)

    @property
    def params(self) -> list[str]:
        """The names of the template's parameters, in order."""
        return [m.group(1) for s in self._segments if (m := _PARAM.match(s))]

    def signature(self) -> _Signature:
        """The handler's parameters and hints (resolved on first use, when every class the
        module defines exists)."""
        if self._signature is None:
            self._signature = self._inspect()
        return self._signature

    def _inspect(self) -> _Signature:
        where = f"{self.method} {self.path} ({self.handler.__qualname__})"
        try:
            hints = typing.get_type_hints(self.handler, include_extras=True)
        except Exception as err:
            raise RouteError(f"{where}: cannot resolve the type hints: {err}") from err
        parameters = list(inspect.signature(self.handler).parameters.values())
        if not parameters:
            raise RouteError(f"{where}: a handler takes the Ctx as its first parameter")
        path_args: dict[str, Any] = {}
        body: inspect.Parameter | None = None
        for p in parameters[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise RouteError(f"{where}: *args and **kwargs are not supported")
            if p.name in self.params:
                hint = hints.get(p.name, str)
                if strip_annotated(hint) not in _PATH_TYPES:
                    raise RouteError(
                        f"{where}: path parameter '{p.name}' must be str, int or float"
                    )
                path_args[p.name] = hint
            elif body is None:
                body = p
            else:
                raise RouteError(
                    f"{where}: parameter '{p.name}' is neither a path parameter of the "
                    f"template nor the body (which is '{body.name}')"
                )
        body_hint = hints.get(body.name, Any) if body else None
        raw = body is not None and strip_annotated(body_hint) is Request
        if body is not None and not raw and self.method in BODYLESS:
            raise RouteError(
                f"{where}: {self.method} handlers take no body; read the query with "
                f"ctx.query(...) (or take `req: Request` for the raw request)"
            )
        return _Signature(
            path_args=path_args,
            body_name=body.name if body else None,
            body_hint=body_hint,
            raw_body=raw,
            return_hint=hints.get("return", _NO_HINT),
        )

    def spec(self) -> RouteSpec:
        """This route's manifest entry (its JSON Schemas derived from the hints)."""
        sig = self.signature()
        request = self.request_type
        if request is None and sig.body_name is not None and not sig.raw_body:
            request = sig.body_hint
        response = self.response_type
        if response is None and not self.streaming:
            hint = strip_annotated(sig.return_hint)
            if hint not in (_NO_HINT, Response, None, type(None)):
                response = sig.return_hint
        try:
            request_schema = None if request is None else json_schema_text(request, "request")
            response_schema = None if response is None else json_schema_text(response, "response")
        except HintError as err:
            raise RouteError(f"{self.method} {self.path}: {err}") from err
        return RouteSpec(
            method=self.method,
            path=self.path,
            summary=self.summary,
            request_schema=request_schema,
            response_schema=response_schema,
            streaming=self.streaming,
            scopes=list(self.scopes),
        )

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters if `path` fits the template, else `None`."""
        parts = [p for p in path.split("/") if p] if path != "/" else []
        if len(parts) != len(self._segments):
            return None
        params: dict[str, str] = {}
        for template, part in zip(self._segments, parts, strict=True):
            m = _PARAM.match(template)
            if m:
                params[m.group(1)] = unquote(part)
            elif template != part:
                return None
        return params

    @property
    def shape(self) -> tuple[str | None, ...]:
        """The template with parameters blanked: `/a/{x}` and `/a/{y}` are one shape."""
        return tuple(None if _PARAM.match(s) else s for s in self._segments)

    @property
    def literal_segments(self) -> int:
        """How specific the template is: literal segments beat parameters (`/items/new`
        wins over `/items/{id}`), as in the host's router."""
        return sum(1 for s in self._segments if not _PARAM.match(s))

    def call(self, ctx: Ctx, request: Request) -> Response:
        """Runs the handler: decodes the body and path parameters, encodes the result."""
        sig = self.signature()
        kwargs = {
            name: _path_arg(name, ctx.params.get(name, ""), hint)
            for name, hint in sig.path_args.items()
        }
        if sig.body_name is not None:
            if sig.raw_body:
                kwargs[sig.body_name] = request
            else:
                kwargs[sig.body_name] = _decode_body(request, sig.body_hint)
        result = self.handler(ctx, **kwargs)
        if isinstance(result, Response):
            return result
        if self.streaming:
            return _stream(result, ctx)
        return Response.json(result)


def _decode_body(request: Request, hint: Any) -> Any:
    value = request.json()
    try:
        return decode(value, hint)
    except DecodeError as err:
        at = f" at {err.pointer}" if err.pointer else ""
        raise HttpError.invalid_request(f"the request body is invalid{at}: {err.message}") from None


def _path_arg(name: str, value: str, hint: Any) -> Any:
    target = strip_annotated(hint)
    if target not in (int, float):
        return value
    try:
        return target(value)
    except ValueError:
        kind = "an integer" if target is int else "a number"
        raise HttpError.bad_request(f"path parameter '{name}' must be {kind}") from None


def _stream(result: Iterable[Any], ctx: Ctx) -> Response:
    """Pulls the first event before the head is sent, so that an error raised before it (a
    model that is not granted, a bad parameter) still gets its own status and error body."""
    items = iter(result)
    try:
        first = next(items)
    except StopIteration:
        return _sse(iter(()))
    return _sse(event_stream(first, items, ctx))


def _sse(body: Iterable[bytes]) -> Response:
    return Response.stream(body, "text/event-stream").with_header("cache-control", "no-cache")


def parse_template(path: str) -> tuple[str, ...]:
    """Checks a path template as the host does and splits it into segments."""
    if not path.startswith("/"):
        raise RouteError(f"path '{path}' must start with '/'")
    if path == "/":
        return ()
    segments = tuple(path[1:].split("/"))
    seen: set[str] = set()
    for segment in segments:
        m = _PARAM.match(segment)
        if m:
            if m.group(1) in seen:
                raise RouteError(f"path '{path}': parameter '{m.group(1)}' appears twice")
            seen.add(m.group(1))
        elif not segment or any(c in segment for c in "{}?#%"):
            raise RouteError(f"path '{path}': bad segment '{segment}'")
    return segments


RouteDecorator = Callable[[Handler], Handler]


class Plugin:
    """A plugin: its name, version, description, the models it opens, and its routes.

    Declare routes with the decorators, then export the component's two interfaces:

        plugin = Plugin("hello", version="0.1.0", description="Greets people")

        @plugin.post("/greet", summary="Greet someone")
        def greet(ctx: Ctx, req: Hello) -> Greeting: ...

        IncomingHandler, Manifest = plugin.exports()
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "0.1.0",
        description: str = "",
        models: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.models = list(models)
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str = "",
        scopes: Sequence[str] = (),
        streaming: bool = False,
        request: Any = None,
        response: Any = None,
    ) -> RouteDecorator:
        """Declares `handler` as `method path`. `scopes`: what a caller needs (the host checks
        them); `streaming`: the response is server-sent events (implied by a generator
        handler); `request`/`response`: types that override the ones the hints give."""

        def decorate(handler: Handler) -> Handler:
            route = Route(
                method=method,
                path=path,
                handler=handler,
                summary=summary,
                scopes=tuple(scopes),
                streaming=streaming,
                request_type=request,
                response_type=response,
            )
            for other in self.routes:
                if other.method == route.method and other.shape == route.shape:
                    raise RouteError(f"{route.method} {path} is declared twice")
            self.routes.append(route)
            return handler

        return decorate

    def get(self, path: str, **options: Any) -> RouteDecorator:
        """`GET path`: the handler takes the Ctx (and path parameters), no body."""
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> RouteDecorator:
        """`POST path`: the body is JSON decoded into the handler's body parameter."""
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> RouteDecorator:
        """`PUT path`, like `post`."""
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> RouteDecorator:
        """`PATCH path`, like `post`."""
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> RouteDecorator:
        """`DELETE path`, like `get`."""
        return self.route("DELETE", path, **options)

    def manifest(self) -> PluginSpec:
        """The manifest the host reads when it loads the plugin."""
        return PluginSpec(
            name=self.name,
            version=self.version,
            description=self.description,
            routes=[route.spec() for route in self.routes],
            models=list(self.models),
        )

    def find(self, method: str, route: str, path: str) -> tuple[Route, dict[str, str] | None]:
        """The route for a request: the template the host matched, else the path matched
        here (with its parameters). 404 or 405 when there is none."""
        for candidate in self.routes:
            if candidate.method == method and candidate.path == route:
                return candidate, None
        matches = [(r, p) for r in self.routes if (p := r.match(path)) is not None]
        matches.sort(key=lambda m: -m[0].literal_segments)
        for candidate, params in matches:
            if candidate.method == method:
                return candidate, params
        if matches:
            allowed = ", ".join(dict.fromkeys(r.method for r, _ in matches))
            raise HttpError.method_not_allowed(f"{method} is not allowed here; use {allowed}")
        raise HttpError.not_found(f"no route for {method} {path} in plugin '{self.name}'")

    def serve(self, ctx: Ctx, request: Request) -> Response:
        """Serves one request: finds the route and runs it; every failure becomes an error
        response in the product's shape (a `MemoryError` is re-raised, so the instance traps
        and the host reports `plugin_out_of_memory`)."""
        try:
            route, params = self.find(request.method, ctx.route, request.path)
            if params or (params is not None and route.path != ctx.route):
                ctx = dataclasses.replace(ctx, route=route.path, params={**params, **ctx.params})
            return route.call(ctx, request)
        except HttpError as err:
            return Response.error(err, ctx.request_id)
        except MemoryError:
            raise
        except Exception as exc:
            return Response.error(internal_error(exc, ctx), ctx.request_id)

    def exports(self) -> tuple[type, type]:
        """The classes componentize-py exports: `IncomingHandler, Manifest = plugin.exports()`
        at the end of the app module. Also checks every route now (at build time)."""
        from .http import export_classes

        self.manifest()
        return export_classes(self)
