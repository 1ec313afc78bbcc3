"""`Ctx` accessors and the pure parts of the nn and llm helpers."""

import struct

import pytest

from infergate import Ctx, HttpError, LogLevel
from infergate.llm import Message, llm_error, message
from infergate.nn import Outputs, Tensor, TensorType
from infergate.testing import RecordingHost, make_ctx


def test_ctx_accessors() -> None:
    host = RecordingHost()
    ctx = make_ctx(
        query="a=1&b=x+y&a=2&c=%C3%A9&empty",
        headers=[("user-agent", b"curl/8"), ("x-bin", b"\xff")],
        scopes=["plugin:demo", "admin"],
        claims={"sub": "alice", "n": 42},
        host=host,
    )
    assert ctx.query("a") == "1" and ctx.query_all("a") == ["1", "2"]
    assert ctx.query("b") == "x y" and ctx.query("c") == "é" and ctx.query("empty") == ""
    assert ctx.query("missing") is None
    assert ctx.header("User-Agent") == "curl/8" and ctx.header("x-bin") is None
    assert ctx.has_scope("admin") and not ctx.has_scope("root")
    assert ctx.claim("sub") == '"alice"' and ctx.claim_value("n") == 42
    assert ctx.claim("nope") is None
    ctx.report_usage(3, 4)
    ctx.log("info", "hello", n=1)
    ctx.log_warn("careful")
    assert host.usage == [(3, 4)]
    assert host.logs == [
        (LogLevel.INFO, "hello", [("n", "1")]),
        (LogLevel.WARN, "careful", []),
    ]


def test_tensors() -> None:
    tensor = Tensor.f32([1, 3], [1.0, 2.5, -1])
    assert tensor.dims == (1, 3) and tensor.type is TensorType.FP32
    assert tensor.data == struct.pack("<3f", 1.0, 2.5, -1.0)
    assert tensor.to_f32() == [1.0, 2.5, -1.0]
    assert Tensor.i64([2], [1, 2**40]).to_i64() == [1, 2**40]
    assert Tensor.u8([2], b"\x01\x02").to_u8() == [1, 2]
    with pytest.raises(HttpError) as err:
        tensor.to_i32()
    assert err.value.code == "backend_error"
    with pytest.raises(HttpError):
        Tensor.f32([2, 2], [1.0])
    outputs = Outputs({"scores": tensor})
    assert list(outputs) == ["scores"] and outputs["scores"] is tensor
    with pytest.raises(HttpError) as err:
        outputs["logits"]
    assert err.value.code == "backend_error" and "logits" in err.value.message


def test_llm_errors_map_like_the_rust_sdk() -> None:
    def case(name: str) -> object:
        return type(name, (), {"__init__": lambda self, v: setattr(self, "value", v)})("why")

    expected = {
        "Error_ModelNotFound": (404, "model_not_found"),
        "Error_InvalidRequest": (400, "invalid_request"),
        "Error_ContextLengthExceeded": (400, "context_length_exceeded"),
        "Error_TooManyGenerations": (429, "too_many_generations"),
        "Error_Timeout": (504, "inference_timeout"),
        "Error_Backend": (500, "backend_error"),
    }
    for name, (status, code) in expected.items():
        err = llm_error(case(name))
        assert (err.status, err.code, err.message) == (status, code, "why")


def test_messages() -> None:
    assert message(("user", "hi")) == Message("user", "hi")
    assert message({"role": "system", "content": "be brief"}) == Message("system", "be brief")


def test_ctx_for_tests() -> None:
    ctx = Ctx.for_tests("acme", scopes=["a"])
    assert (ctx.tenant, ctx.scopes, ctx.request_id) == ("acme", ("a",), "test-request")
    ctx.log_info("recorded")
    assert ctx.host.logs[0][1] == "recorded"  # type: ignore[attr-defined]
