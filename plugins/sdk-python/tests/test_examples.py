"""The example and fixture apps import outside a component, declare the manifest their Rust
counterparts declare, and serve what needs no host service."""

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from infergate.testing import call

ROOT = Path(__file__).resolve().parents[3]


def load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_hello() -> None:
    hello = load("examples/hello-python/app.py", "hello_app")
    spec = hello.plugin.manifest()
    assert (spec.name, [(r.method, r.path) for r in spec.routes]) == ("hello", [("POST", "/greet")])
    result = call(hello.plugin, "POST", "/greet", {"name": "Ada"}, tenant="default")
    assert result.json() == {"message": "Hello, Ada! (tenant default)"}
    code = [
        line
        for line in (ROOT / "examples/hello-python/app.py").read_text().splitlines()
        if line.strip() and not line.startswith(('"""', "#"))
    ]
    assert len(code) < 30


def test_digits() -> None:
    digits = load("examples/digits-python/app.py", "digits_app")
    spec = digits.plugin.manifest()
    assert spec.models == ["digits"]
    (route,) = spec.routes
    assert (route.method, route.path) == ("POST", "/classify")
    pixels = json.loads(route.request_schema)["properties"]["pixels"]
    assert (pixels["minItems"], pixels["maxItems"]) == (64, 64)
    assert (pixels["items"]["minimum"], pixels["items"]["maximum"]) == (0, 16)
    short = call(digits.plugin, "POST", "/classify", {"pixels": [0.0] * 3})
    assert short.status == 422
    assert short.json()["error"]["message"] == "pixels must have exactly 64 values, got 3"
    out = call(digits.plugin, "POST", "/classify", {"pixels": [0.0] * 63 + [17.0]})
    assert out.json()["error"]["message"] == "pixels[63] = 17.0 is outside 0..=16"


def test_fixture() -> None:
    fixture = load("plugins/fixtures/python/app.py", "pyfixture_app")
    spec = fixture.plugin.manifest()
    assert spec.name == "pyfixture"
    routes = {(r.method, r.path): r for r in spec.routes}
    assert routes["GET", "/stream"].streaming and routes["POST", "/chat"].streaming
    echo = {"name": "a", "where": {"x": 1, "y": 2}, "kind": "large", "tags": ["t"]}
    assert call(fixture.plugin, "POST", "/echo", echo).json() == {
        **echo,
        "where": {"x": 1.0, "y": 2.0},
        "note": None,
    }
    assert call(fixture.plugin, "POST", "/fail").status == 418
    assert call(fixture.plugin, "POST", "/crash").status == 500
    events = call(fixture.plugin, "GET", "/stream").events()
    assert [json.loads(data) for _, data in events] == [{"n": n} for n in range(5)]
    first = call(fixture.plugin, "GET", "/state", tenant="a").json()
    second = call(fixture.plugin, "GET", "/state", tenant="b").json()
    assert second["count"] == first["count"] + 1 and second["last_tenant"] == "a"


def test_fixture_stream_failures() -> None:
    fixture = load("plugins/fixtures/python/app.py", "pyfixture_app2")
    early = call(fixture.plugin, "GET", "/stream?fail_at=0")
    assert early.status == 503 and early.json()["error"]["code"] == "flaky"
    late = call(fixture.plugin, "GET", "/stream?fail_at=2")
    assert late.status == 200
    assert [name for name, _ in late.events()] == [None, None, "error"]
    assert json.loads(late.events()[-1][1])["error"]["message"] == "failed after 2 events"
