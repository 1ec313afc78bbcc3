"""The `wasi:http` side: turning an incoming request into a `Request` and `Ctx`, handing them
to the plugin, and writing the `Response` back over the output stream; plus the two classes
the component exports.

Stream rules followed here (as in the Rust SDK): the whole body is read with `blocking-read`
until the stream is closed (or until `content-length` bytes are in); the response is handed to
`response-outparam.set` *before* its body is written (the host reads the body as it streams);
body bytes go out through `blocking-write-and-flush` in chunks of at most 4096 bytes, then
`outgoing-body.finish`. A streamed body is flushed after every chunk its iterator yields.
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
#: How much one `blocking-read` asks for.
READ_CHUNK = 64 * 1024


class ClientGone(Exception):
    """The response stream was closed: the client went away."""


def handle(plugin: Plugin, incoming: Any, response_out: Any) -> None:
    """Serves one request: the body of `wasi:http/incoming-handler.handle`."""
    w = bindings()
    context = w.host.context()
    method = _method_name(incoming.method())
    path, _, query = (incoming.path_with_query() or "/").partition("?")
    with incoming.headers() as fields:
        headers = fields.entries()
    ctx = Ctx(
        request_id=context.request_id,
        tenant=context.tenant,
        key_id=context.key_id,
        scopes=tuple(context.scopes),
        claims=dict(context.claims),
        route=context.route,
        params=dict(context.params),
        method=method,
        path=path,
        query_string=query or None,
        headers=headers,
    )
    try:
        body = _read_body(incoming, _content_length(headers))
    except HttpError as err:
        response = Response.error(err, ctx.request_id)
    else:
        incoming.__exit__(None, None, None)
        response = plugin.serve(ctx, Request(method, path, query or None, headers, body))
    _send(response, response_out, ctx)


def _content_length(headers: list[tuple[str, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value.decode().strip())
            except ValueError:
                return None
    return None


def _read_body(incoming: Any, length: int | None) -> bytes:
    """Reads the whole body; with its `content-length` known, stops once that many bytes
    are in instead of asking once more for the end of the stream."""
    w = bindings()

    def failed(what: str) -> HttpError:
        return HttpError.bad_request(f"cannot read the request body: {what}")

    try:
        body = incoming.consume()
    except w.types.Err:
        raise failed("body already consumed") from None
    chunks: list[bytes] = []
    received = 0
    with body:
        try:
            stream = body.stream()
        except w.types.Err:
            raise failed("no body stream") from None
        with stream:
            while received != length:
                try:
                    chunk = stream.blocking_read(READ_CHUNK)
                except w.types.Err as err:
                    if isinstance(err.value, w.streams.StreamError_Closed):
                        break
                    raise failed(err.value.value.to_debug_string()) from None
                chunks.append(chunk)
                received += len(chunk)
    return b"".join(chunks)


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


def _method_name(method: Any) -> str:
    """`GET` for `Method_Get`, the text of `Method_Other`."""
    name = type(method).__name__
    if name == "Method_Other":
        return str(method.value).upper()
    return name.removeprefix("Method_").upper()


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
