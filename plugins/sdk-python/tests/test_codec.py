"""Decoding JSON into typed values and encoding results back."""

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import pytest

from infergate.codec import DecodeError, decode, encode
from infergate.errors import HttpError
from infergate.message import json_bytes


@dataclass
class Point:
    x: float
    y: float


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass
class Body:
    name: str
    where: Point
    kind: Literal["small", "large"] = "small"
    note: Optional[str] = None
    hint: Optional[int] = field(default=None)
    maybe: Optional[str] = None
    mode: Mode = Mode.FAST
    points: list[Point] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)
    pair: tuple[int, str] = (0, "")


@dataclass
class Required:
    label: Optional[str]
    count: int


def test_decodes_nested_dataclasses_with_defaults() -> None:
    body = decode(
        {
            "name": "Ada",
            "where": {"x": 1, "y": 2.5},
            "kind": "large",
            "points": [{"x": 0, "y": 0}],
            "mode": "slow",
            "extra": {"a": 1},
            "pair": [3, "c"],
        },
        Body,
    )
    assert body == Body(
        name="Ada",
        where=Point(1.0, 2.5),
        kind="large",
        points=[Point(0.0, 0.0)],
        mode=Mode.SLOW,
        extra={"a": 1},
        pair=(3, "c"),
    )
    assert isinstance(body.where.x, float)


def test_optional_fields_without_defaults_may_be_left_out() -> None:
    assert decode({"count": 1}, Required) == Required(label=None, count=1)
    assert decode({"count": 1.0, "label": "x"}, Required) == Required(label="x", count=1)


@pytest.mark.parametrize(
    ("value", "pointer", "message"),
    [
        ({"where": {"x": 1, "y": 2}}, "/name", "missing required field"),
        ({"name": 1, "where": {"x": 1, "y": 2}}, "/name", "expected a string, got an integer"),
        ({"name": "a", "where": {"x": "1", "y": 2}}, "/where/x", "expected a number"),
        ({"name": "a", "where": {"x": 1, "y": 2}, "kind": "huge"}, "/kind", "expected one of"),
        ({"name": "a", "where": {"x": 1, "y": 2}, "zzz": 1}, "/zzz", "unknown field"),
        ({"name": "a", "where": {"x": 1, "y": 2}, "points": [1]}, "/points/0", "an object"),
        ({"name": "a", "where": {"x": 1, "y": 2}, "mode": "x"}, "/mode", "expected one of"),
        ({"name": "a", "where": {"x": 1, "y": 2}, "pair": [1]}, "/pair", "expected 2 items"),
        ([], "", "expected an object, got an array"),
    ],
)
def test_decode_errors_name_the_place(value: Any, pointer: str, message: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(value, Body)
    assert err.value.pointer == pointer
    assert message in err.value.message


def test_scalars_are_strict() -> None:
    with pytest.raises(DecodeError):
        decode(True, int)
    with pytest.raises(DecodeError):
        decode(1.5, int)
    with pytest.raises(DecodeError):
        decode(1, bool)
    with pytest.raises(DecodeError):
        decode(None, str)
    assert decode(2, float) == 2.0 and isinstance(decode(2, float), float)
    assert decode({"a": [1]}, Any) == {"a": [1]}
    assert decode([1, "a"], list[Union[int, str]]) == [1, "a"]
    assert decode({"x": 1, "y": 2}, Union[int, Point]) == Point(1.0, 2.0)


def test_encodes_dataclasses_enums_and_containers() -> None:
    body = Body(name="Ada", where=Point(1, 2), mode=Mode.SLOW, pair=(1, "a"))
    assert encode(body) == {
        "name": "Ada",
        "where": {"x": 1, "y": 2},
        "kind": "small",
        "note": None,
        "hint": None,
        "maybe": None,
        "mode": "slow",
        "points": [],
        "extra": {},
        "pair": [1, "a"],
    }
    assert encode({Mode.FAST: frozenset([1])}) == {"fast": [1]}
    with pytest.raises(TypeError):
        encode(object())
    with pytest.raises(TypeError):
        encode(b"bytes")


def test_values_without_json_form_are_internal_errors() -> None:
    with pytest.raises(HttpError) as err:
        json_bytes({"x": math.nan})
    assert err.value.status == 500 and err.value.code == "internal_error"
    assert json_bytes(Point(1, 2)) == b'{"x":1,"y":2}'
