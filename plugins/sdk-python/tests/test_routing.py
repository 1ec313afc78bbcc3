"""Route declaration, the manifest, dispatch, errors and streaming, without a host."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from infergate import Ctx, HttpError, Plugin, Request, Response, RouteError, ServerEvent
from infergate.testing import RecordingHost, call, make_ctx


@dataclass
class Hello:
    name: str


@dataclass
class Greeting:
    message: str


def make_plugin() -> Plugin:
    plugin = Plugin("demo", version="1.2.3", description="Demo", models=["digits"])

    @plugin.post("/greet", summary="Greet", scopes=["greet:write"])
    def greet(ctx: Ctx, req: Hello) -> Greeting:
        return Greeting(message=f"Hello, {req.name}! (tenant {ctx.tenant})")

    @plugin.get("/items/{id}")
    def get_item(ctx: Ctx, id: int) -> dict[str, Any]:
        return {"id": id, "route": ctx.route, "q": ctx.query("q")}

    @plugin.get("/items/new")
    def new_item(ctx: Ctx) -> str:
        return "new"

    @plugin.delete("/items/{id}")
    def delete_item(ctx: Ctx, id: str) -> None:
        return None

    @plugin.put("/raw")
    def raw(ctx: Ctx, req: Request) -> Response:
        return Response.text(req.text().upper(), status=201).with_header("x-kind", "raw")

    @plugin.post("/free")
    def free(ctx: Ctx, body: dict) -> dict:
        return {"keys": sorted(body)}

    @plugin.post("/fail")
    def fail(ctx: Ctx) -> None:
        raise HttpError(418, "teapot", "short and stout")

    @plugin.post("/crash")
    def crash(ctx: Ctx) -> None:
        raise KeyError("secret detail")

    @plugin.get("/events")
    def events(ctx: Ctx) -> Iterator[Any]:
        yield {"n": 0}
        yield "plain\ntwo lines"
        yield ServerEvent({"n": 2}, event="tick", id="2")

    @plugin.get("/broken", streaming=True)
    def broken(ctx: Ctx) -> Iterator[dict[str, int]]:
        yield {"n": 0}
        raise HttpError.backend("the model went away")

    @plugin.get("/refused", streaming=True)
    def refused(ctx: Ctx) -> Iterator[dict[str, int]]:
        raise HttpError.model_not_found("llm")
        yield {"n": 0}

    return plugin


def test_manifest() -> None:
    spec = make_plugin().manifest()
    assert (spec.name, spec.version, spec.description, spec.models) == (
        "demo",
        "1.2.3",
        "Demo",
        ["digits"],
    )
    routes = {(r.method, r.path): r for r in spec.routes}
    greet = routes["POST", "/greet"]
    assert greet.summary == "Greet" and greet.scopes == ["greet:write"] and not greet.streaming
    assert json.loads(greet.request_schema)["required"] == ["name"]
    assert json.loads(greet.response_schema)["title"] == "Greeting"
    item = routes["GET", "/items/{id}"]
    assert item.request_schema is None and json.loads(item.response_schema)["type"] == "object"
    assert routes["PUT", "/raw"].request_schema is None
    assert routes["PUT", "/raw"].response_schema is None
    assert routes["DELETE", "/items/{id}"].response_schema is None
    assert json.loads(routes["POST", "/free"].request_schema) == {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
    }
    assert routes["GET", "/events"].streaming and routes["GET", "/events"].response_schema is None
    assert routes["GET", "/broken"].streaming


def test_typed_route() -> None:
    result = call(make_plugin(), "POST", "/greet", {"name": "Ada"}, tenant="acme")
    assert result.status == 200
    assert result.header("content-type") == "application/json"
    assert result.json() == {"message": "Hello, Ada! (tenant acme)"}


def test_path_parameters_and_specificity() -> None:
    plugin = make_plugin()
    result = call(plugin, "GET", "/items/42?q=a%20b")
    assert result.json() == {"id": 42, "route": "/items/{id}", "q": "a b"}
    assert call(plugin, "GET", "/items/new").json() == "new"
    bad = call(plugin, "GET", "/items/x")
    assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert call(plugin, "DELETE", "/items/x").json() is None


def test_the_host_route_wins() -> None:
    plugin = make_plugin()
    ctx = make_ctx(method="GET", path="/items/7")
    ctx = Ctx(**{**ctx.__dict__, "route": "/items/{id}", "params": {"id": "7"}})
    response = plugin.serve(ctx, Request("GET", "/items/7"))
    assert json.loads(response.body)["id"] == 7


def test_not_found_and_method_not_allowed() -> None:
    plugin = make_plugin()
    missing = call(plugin, "GET", "/nowhere", request_id="r-1")
    assert missing.status == 404
    assert missing.json() == {
        "error": {
            "code": "not_found",
            "message": "no route for GET /nowhere in plugin 'demo'",
            "request_id": "r-1",
        }
    }
    wrong = call(plugin, "PATCH", "/items/1")
    assert wrong.status == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "GET, DELETE" in wrong.json()["error"]["message"]


def test_body_errors() -> None:
    plugin = make_plugin()
    malformed = call(plugin, "POST", "/greet", raw_body=b"{nope")
    assert malformed.status == 400 and malformed.json()["error"]["code"] == "invalid_request"
    assert "not valid JSON" in malformed.json()["error"]["message"]
    empty = call(plugin, "POST", "/greet")
    assert empty.status == 400
    shaped = call(plugin, "POST", "/greet", {"name": 3})
    assert shaped.status == 422 and shaped.json()["error"]["code"] == "invalid_request"
    assert "/name" in shaped.json()["error"]["message"]
    assert call(plugin, "POST", "/free", {"b": 1, "a": 2}).json() == {"keys": ["a", "b"]}


def test_raw_routes() -> None:
    result = call(make_plugin(), "PUT", "/raw", raw_body=b"shout")
    assert result.status == 201 and result.body == b"SHOUT"
    assert result.header("x-kind") == "raw"
    assert result.header("content-type") == "text/plain; charset=utf-8"


def test_errors_have_the_product_shape() -> None:
    plugin = make_plugin()
    teapot = call(plugin, "POST", "/fail", request_id="r-2")
    assert teapot.status == 418
    assert teapot.json() == {
        "error": {"code": "teapot", "message": "short and stout", "request_id": "r-2"}
    }
    host = RecordingHost()
    crash = call(plugin, "POST", "/crash", host=host, request_id="r-3")
    assert crash.status == 500
    error = crash.json()["error"]
    assert error["code"] == "internal_error" and error["request_id"] == "r-3"
    assert "secret detail" not in error["message"] and "Traceback" not in error["message"]
    ((level, message, fields),) = host.logs
    assert level.value == "error" and "KeyError" in message
    assert "Traceback" in dict(fields)["traceback"]


def test_error_constructors() -> None:
    assert (HttpError.invalid_request("m").status, HttpError.bad_request("m").status) == (422, 400)
    assert HttpError.not_found("m").code == "not_found"
    notfound = HttpError.model_not_found("digits")
    assert (notfound.status, notfound.code) == (404, "model_not_found")
    assert "digits" in notfound.message
    assert (HttpError.backend("m").status, HttpError.backend("m").code) == (500, "backend_error")
    assert HttpError.internal("m").code == "internal_error"
    assert json.loads(HttpError(418, "teapot", "x").to_json("r")) == {
        "error": {"code": "teapot", "message": "x", "request_id": "r"}
    }


def test_streaming() -> None:
    result = call(make_plugin(), "GET", "/events")
    assert result.status == 200
    assert result.header("content-type") == "text/event-stream"
    assert result.body == (
        b'data: {"n":0}\n\ndata: plain\ndata: two lines\n\nevent: tick\nid: 2\ndata: {"n":2}\n\n'
    )
    assert result.events()[1] == (None, "plain\ntwo lines")


def test_stream_errors() -> None:
    plugin = make_plugin()
    broken = call(plugin, "GET", "/broken", request_id="r-4")
    assert broken.status == 200
    assert broken.events() == [
        (None, '{"n":0}'),
        (
            "error",
            '{"error":{"code":"backend_error","message":"the model went away","request_id":"r-4"}}',
        ),
    ]
    # An error before the first event still gets its own status.
    refused = call(plugin, "GET", "/refused")
    assert refused.status == 404 and refused.json()["error"]["code"] == "model_not_found"


def test_closing_a_stream_closes_the_handler() -> None:
    plugin = Plugin("s")
    closed = []

    @plugin.get("/s")
    def s(ctx: Ctx) -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    response = plugin.serve(make_ctx(path="/s"), Request("GET", "/s"))
    assert response.streaming
    body = iter(response.body)
    assert next(body) == b"data: 1\n\n"
    body.close()  # what the SDK does when the client goes away
    assert closed == [True]


def test_declaration_errors() -> None:
    plugin = Plugin("bad")
    with pytest.raises(RouteError):
        plugin.route("OPTIONS", "/x")(lambda ctx: None)
    with pytest.raises(RouteError):
        plugin.get("no-slash")(lambda ctx: None)
    with pytest.raises(RouteError):
        plugin.get("/a/{id}/{id}")(lambda ctx: None)

    @plugin.get("/body")
    def with_body(ctx: Ctx, req: Hello) -> None:
        return None

    with pytest.raises(RouteError, match="GET handlers take no body"):
        plugin.manifest()

    plugin = Plugin("typed")

    @plugin.get("/flag/{on}")
    def flag(ctx: Ctx, on: bool) -> None:
        return None

    with pytest.raises(RouteError, match="must be str, int or float"):
        plugin.manifest()

    plugin = Plugin("twice")
    plugin.get("/a/{x}")(lambda ctx: None)
    with pytest.raises(RouteError, match="declared twice"):
        plugin.get("/a/{y}")(lambda ctx: None)


def test_exports_outside_a_component() -> None:
    handler, manifest = make_plugin().exports()
    assert handler.__name__ == "IncomingHandler" and manifest.__name__ == "Manifest"
