"""Typed helpers over `wasi:nn`: open a model the operator granted by name, run it on named
tensors, read typed outputs. Tensor data is little-endian bytes, as wasi-nn specifies.

    model = nn.Model.load("digits")
    outputs = model.run({"pixels": nn.Tensor.f32([1, 64], pixels)})
    scores = outputs["scores"].to_f32()

A model that does not exist or was not granted is a 404 `model_not_found`; any other
wasi-nn failure is a 500 `backend_error` (both `HttpError`s, so a handler can let them go).
"""

from __future__ import annotations

import enum
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._wit import bindings
from .errors import HttpError


class TensorType(enum.Enum):
    """Element types of `wasi:nn/tensor.tensor-type`."""

    FP16 = "fp16"
    FP32 = "fp32"
    FP64 = "fp64"
    BF16 = "bf16"
    U8 = "u8"
    I32 = "i32"
    I64 = "i64"


#: `array` typecodes of the element types the helpers convert (fp16/bf16: use `data`).
_TYPECODES = {
    TensorType.FP32: "f",
    TensorType.FP64: "d",
    TensorType.U8: "B",
    TensorType.I32: "i",
    TensorType.I64: "q",
}


@dataclass(frozen=True)
class Tensor:
    """A tensor in the SDK's own hands: dimensions, element type, little-endian data."""

    dims: tuple[int, ...]
    type: TensorType
    data: bytes

    @classmethod
    def f32(cls, dims: Sequence[int], values: Iterable[float]) -> Tensor:
        """An `f32` tensor of shape `dims`."""
        return cls._pack(dims, TensorType.FP32, values)

    @classmethod
    def f64(cls, dims: Sequence[int], values: Iterable[float]) -> Tensor:
        """An `f64` tensor of shape `dims`."""
        return cls._pack(dims, TensorType.FP64, values)

    @classmethod
    def i32(cls, dims: Sequence[int], values: Iterable[int]) -> Tensor:
        """An `i32` tensor of shape `dims`."""
        return cls._pack(dims, TensorType.I32, values)

    @classmethod
    def i64(cls, dims: Sequence[int], values: Iterable[int]) -> Tensor:
        """An `i64` tensor of shape `dims` (e.g. token ids)."""
        return cls._pack(dims, TensorType.I64, values)

    @classmethod
    def u8(cls, dims: Sequence[int], values: bytes | Iterable[int]) -> Tensor:
        """A `u8` tensor of shape `dims`."""
        return cls(tuple(dims), TensorType.U8, bytes(values))

    @classmethod
    def _pack(cls, dims: Sequence[int], ty: TensorType, values: Iterable[Any]) -> Tensor:
        data = array(_TYPECODES[ty], values)
        expected = _product(dims)
        if len(data) != expected:
            raise HttpError.invalid_request(
                f"a tensor of shape {list(dims)} holds {expected} values, not {len(data)}"
            )
        if sys.byteorder == "big":
            data.byteswap()
        return cls(tuple(dims), ty, data.tobytes())

    def to_f32(self) -> list[float]:
        """The data as floats; any other element type is a backend error."""
        return self._unpack(TensorType.FP32)

    def to_f64(self) -> list[float]:
        """The data as `f64` floats."""
        return self._unpack(TensorType.FP64)

    def to_i32(self) -> list[int]:
        """The data as `i32` integers."""
        return self._unpack(TensorType.I32)

    def to_i64(self) -> list[int]:
        """The data as `i64` integers."""
        return self._unpack(TensorType.I64)

    def to_u8(self) -> list[int]:
        """The data as bytes values."""
        return self._unpack(TensorType.U8)

    def _unpack(self, ty: TensorType) -> list[Any]:
        if self.type is not ty:
            raise HttpError.backend(f"expected a {ty.value} output tensor, got {self.type.value}")
        data = array(_TYPECODES[ty])
        if len(self.data) % data.itemsize:
            raise HttpError.backend(
                f"output tensor has {len(self.data)} bytes, not a multiple of {data.itemsize}"
            )
        data.frombytes(self.data)
        if sys.byteorder == "big":
            data.byteswap()
        return data.tolist()


class Outputs(Mapping[str, Tensor]):
    """The named output tensors of one `Model.run`; a missing name is a backend error."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self._tensors = dict(tensors)

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise HttpError.backend(f"the model has no output '{name}'") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


class Model:
    """A model opened with `load-by-name`. Use it as a context manager (or call `close`) to
    release the host's graph as soon as the request is done with it."""

    def __init__(self, name: str, graph: Any) -> None:
        self.name = name
        self._graph = graph

    @classmethod
    def load(cls, name: str) -> Model:
        """Opens the model the operator declared as `name`."""
        w = bindings()
        try:
            return cls(name, w.graph.load_by_name(name))
        except w.types.Err as err:
            raise nn_error(err.value, model=name) from None

    def run(self, inputs: Mapping[str, Tensor]) -> Outputs:
        """Runs the model once on named inputs (a fresh execution context each call)."""
        w = bindings()
        wit_inputs = [
            (name, w.tensor.Tensor(list(t.dims), w.tensor.TensorType[t.type.name], t.data))
            for name, t in inputs.items()
        ]
        try:
            with self._graph.init_execution_context() as context:
                wit_outputs = context.compute(wit_inputs)
        except w.types.Err as err:
            raise nn_error(err.value) from None
        outputs: dict[str, Tensor] = {}
        for name, tensor in wit_outputs:
            with tensor:
                outputs[name] = Tensor(
                    tuple(tensor.dimensions()), TensorType[tensor.ty().name], tensor.data()
                )
        return Outputs(outputs)

    def close(self) -> None:
        """Releases the graph (it is also released when the object is collected)."""
        self._graph.__exit__(None, None, None)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nn_error(err: Any, model: str | None = None) -> HttpError:
    """A `wasi:nn/errors.error` as an `HttpError`: `not-found` is `model_not_found` (404),
    anything else `backend_error` (500)."""
    try:
        code = err.code().name.lower().replace("_", "-")
        data = err.data()
    finally:
        err.__exit__(None, None, None)
    if code == "not-found":
        if model is not None:
            return HttpError.model_not_found(model)
        return HttpError(404, "model_not_found", data)
    return HttpError.backend(f"wasi-nn {code}: {data}")


def _product(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out
