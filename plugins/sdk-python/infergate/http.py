"""The `wasi:http` side: turning an incoming request into a `Request` and `Ctx`, handing them
to the plugin, and writing the `Response` back over the output stream; plus the two classes
the component exports.

The request is read whole with `host.read-request`, and a whole response is sent with
`host.respond`: one host call each. A streamed response goes through `wasi:http` (as in the
Rust SDK): it is handed to `response-outparam.set` *before* its body is written (the host reads
the body as it streams), its chunks go out through `blocking-write-and-flush` in pieces of at
most 4096 bytes, each flushed as its iterator yields it, then `outgoing-body.finish`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._wit import bindings
from .ctx import Ctx
from .errors import HttpError, internal_error
from .message import Request, Response

if TYPE_CHECKING:
    from .routing import Plugin

#: The most `blocking-write-and-flush` accepts in one call.
WRITE_CHUNK = 4096


class ClientGone(Exception):
    """The response stream was closed: the client went away."""


def handle(plugin: Plugin, incoming: Any, response_out: Any) -> None:
    """Serves one request: the body of `wasi:http/incoming-handler.handle`.

    The request comes whole from `host.read-request` and a whole response goes back through
    `host.respond`: two host calls, where reading and writing through `wasi:http`'s resources
    takes about twenty (each one dear from Python). Only a streamed body uses the outparam."""
    w = bindings()
    incoming.__exit__(None, None, None)
    wire = w.host.read_request()
    context = wire.context
    path, _, query = wire.path_with_query.partition("?")
    headers = wire.headers
    ctx = Ctx(
        request_id=context.request_id,
        tenant=context.tenant,
        key_id=context.key_id,
        scopes=tuple(context.scopes),
        claims=dict(context.claims),
        route=context.route,
        params=dict(context.params),
        method=wire.method,
        path=path,
        query_string=query or None,
        headers=headers,
    )
    request = Request(wire.method, path, query or None, headers, wire.body)
    response = plugin.serve(ctx, request)
    if isinstance(response.body, (bytes, bytearray)):
        _respond(response, ctx)
        response_out.__exit__(None, None, None)
    else:
        _send(response, response_out, ctx)


def _respond(response: Response, ctx: Ctx) -> None:
    """Answers with a whole body in one host call; an invalid status or header becomes the
    product's internal error."""
    w = bindings()
    try:
        w.host.respond(response.status, response.headers, _whole_body(response))
    except w.types.Err as err:
        error = HttpError.internal(f"invalid response: {err.value}")
        failure = Response.error(error, ctx.request_id)
        w.host.respond(failure.status, failure.headers, _whole_body(failure))


def _whole_body(response: Response) -> bytes:
    return bytes(response.body)  # type: ignore[arg-type]


def _send(response: Response, response_out: Any, ctx: Ctx) -> None:
    """Sets the response head, then writes the body (flushing streamed chunks one by one)."""
    w = bindings()
    http = w.http
    try:
        fields = http.Fields.from_list(response.headers)
    except w.types.Err as err:
        failure = HttpError.internal(f"invalid response header: {err.value}")
        return _send(Response.error(failure, ctx.request_id), response_out, ctx)
    outgoing = http.OutgoingResponse(fields)
    try:
        if response.status != 200:  # a new response is 200: one host call less, per request
            outgoing.set_status_code(response.status)
    except w.types.Err:
        failure = HttpError.internal(f"invalid response status {response.status}")
        return _send(Response.error(failure, ctx.request_id), response_out, ctx)
    body = outgoing.body()
    http.ResponseOutparam.set(response_out, w.types.Ok(outgoing))
    stream = body.write()
    finished = False
    try:
        if isinstance(response.body, (bytes, bytearray)):
            _write(stream, bytes(response.body))
        else:
            _write_stream(stream, iter(response.body), ctx)
        finished = True
    except ClientGone:
        pass
    finally:
        stream.__exit__(None, None, None)  # the stream is a child of the body: drop it first
    # Finishing tells the host the body is complete; an unfinished body reads as an error.
    if finished:
        http.OutgoingBody.finish(body, None)
    else:
        body.__exit__(None, None, None)


def _write_stream(stream: Any, chunks: Iterator[bytes], ctx: Ctx) -> None:
    """Writes each chunk as it is produced. A failure of the producer after the head was
    sent can only end the body: the SSE producer (`sse.event_stream`) turns it into an
    `event: error` itself, so one arriving here is a raw stream's and is logged."""
    try:
        for chunk in chunks:
            _write(stream, chunk)
    except ClientGone:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # runs the handler's `finally` blocks, dropping e.g. a generation
        raise
    except MemoryError:
        raise
    except Exception as exc:
        internal_error(exc, ctx)
        raise ClientGone() from exc  # not finished: the host reports a broken body


def _write(stream: Any, data: bytes) -> None:
    w = bindings()
    for start in range(0, len(data), WRITE_CHUNK):
        try:
            stream.blocking_write_and_flush(data[start : start + WRITE_CHUNK])
        except w.types.Err:
            raise ClientGone() from None


def export_classes(plugin: Plugin) -> tuple[type, type]:
    """The `IncomingHandler` and `Manifest` classes componentize-py instantiates."""
    try:
        w = bindings()
        handler_base: type = w.exports.IncomingHandler
        manifest_base: type = w.exports.Manifest
    except Exception:  # outside a component: plain classes, for tests and tooling
        handler_base = manifest_base = object

    class IncomingHandler(handler_base):  # type: ignore[misc]
        """`wasi:http/incoming-handler`: serves the plugin's routes."""

        def handle(self, request: Any, response_out: Any) -> None:
            handle(plugin, request, response_out)

    class Manifest(manifest_base):  # type: ignore[misc]
        """`infergate:plugin/manifest`: what the plugin declares."""

        def manifest(self) -> Any:
            return to_wit_manifest(plugin)

    return IncomingHandler, Manifest


def to_wit_manifest(plugin: Plugin) -> Any:
    """The plugin's manifest as the generated `PluginManifest` record."""
    m = bindings().manifest
    spec = plugin.manifest()
    return m.PluginManifest(
        name=spec.name,
        version=spec.version,
        description=spec.description,
        routes=[
            m.Route(
                method=r.method,
                path=r.path,
                summary=r.summary,
                request_schema=r.request_schema,
                response_schema=r.response_schema,
                streaming=r.streaming,
                scopes=r.scopes,
            )
            for r in spec.routes
        ],
        models=spec.models,
    )
