"""JSON Schema derivation from type hints."""

import enum
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Union

import pytest

from infergate.schema import JSON_SCHEMA_DIALECT, Schema, SchemaError, json_schema


@dataclass
class Point:
    """A point."""

    x: float
    y: float


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclass
class Everything:
    name: str
    count: int
    ratio: float
    on: bool
    where: Point
    points: list[Point]
    scores: dict[str, float]
    color: Color
    size: Literal["s", "m", "l"]
    maybe: Optional[int]
    either: Union[int, str]
    pair: tuple[int, str]
    many: tuple[int, ...]
    anything: Any
    loose: dict
    labels: list[str] = field(default_factory=list)
    level: int = 3
    piped: str | None = None


def test_scalars_and_containers() -> None:
    schema = json_schema(Everything)
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert schema["title"] == "Everything"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    p = schema["properties"]
    assert p["name"] == {"type": "string"}
    assert p["count"] == {"type": "integer"}
    assert p["ratio"] == {"type": "number"}
    assert p["on"] == {"type": "boolean"}
    assert p["where"] == {"$ref": "#/$defs/Point"}
    assert p["points"] == {"type": "array", "items": {"$ref": "#/$defs/Point"}}
    assert p["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert p["color"] == {"type": "string", "enum": ["red", "green"]}
    assert p["size"] == {"type": "string", "enum": ["s", "m", "l"]}
    assert p["maybe"] == {"type": ["integer", "null"]}
    assert p["either"] == {"type": ["integer", "string"]}
    assert p["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert p["pair"]["minItems"] == p["pair"]["maxItems"] == 2
    assert p["many"] == {"type": "array", "items": {"type": "integer"}}
    assert p["anything"] == {}
    assert p["loose"] == {"type": "object"}
    assert p["level"] == {"type": "integer", "default": 3}
    assert p["piped"] == {"type": ["string", "null"], "default": None}
    point = schema["$defs"]["Point"]
    assert point["description"] == "A point."
    assert point["required"] == ["x", "y"]
    assert point["additionalProperties"] is False


def test_required_in_requests_and_responses() -> None:
    request = json_schema(Everything, "request")
    # Defaults and Optional types may be left out of a request...
    assert request["required"] == [
        "name",
        "count",
        "ratio",
        "on",
        "where",
        "points",
        "scores",
        "color",
        "size",
        "either",
        "pair",
        "many",
        "loose",
    ]
    # ...but a response always has every field.
    response = json_schema(Everything, "response")
    assert response["required"] == list(response["properties"])
    assert "default" not in response["properties"]["level"]


def test_constraints_from_annotated_and_metadata() -> None:
    @dataclass
    class Digits:
        pixels: Annotated[
            list[float],
            Schema(description="64 pixels", length=64, items=Schema(minimum=0, maximum=16)),
        ]
        label: Annotated[str, Schema(length=1)] = "x"
        name: str = field(default="", metadata={"description": "who", "max_length": 8})
        tags: Annotated[list[str], "free-form tags", {"max_items": 3}] = field(default_factory=list)

    p = json_schema(Digits)["properties"]
    assert p["pixels"] == {
        "description": "64 pixels",
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 16},
        "minItems": 64,
        "maxItems": 64,
    }
    assert p["label"]["minLength"] == p["label"]["maxLength"] == 1
    assert p["name"]["description"] == "who" and p["name"]["maxLength"] == 8
    assert p["tags"]["description"] == "free-form tags" and p["tags"]["maxItems"] == 3
    assert next(iter(p["name"])) == "description"


def test_recursive_and_non_dataclass_roots() -> None:
    @dataclass
    class Tree:
        value: int
        children: "list[Tree]"

    schema = json_schema(Tree)
    assert schema["properties"]["children"]["items"] == {"$ref": "#"}
    assert json_schema(list[int]) == {
        "$schema": JSON_SCHEMA_DIALECT,
        "type": "array",
        "items": {"type": "integer"},
    }
    assert json_schema(dict[str, Any])["type"] == "object"
    wrapped = json_schema(Annotated[Point, "A documented point"])
    assert wrapped["description"] == "A documented point" and wrapped["title"] == "Point"


def test_nested_defs_hold_every_dataclass_once() -> None:
    @dataclass
    class Segment:
        start: Point
        end: Point

    @dataclass
    class Path:
        segments: list[Segment]
        origin: Point

    schema = json_schema(Path)
    assert set(schema["$defs"]) == {"Segment", "Point"}
    assert schema["$defs"]["Segment"]["properties"]["end"] == {"$ref": "#/$defs/Point"}
    json.dumps(schema)  # plain JSON


def test_unions_of_objects_use_any_of() -> None:
    schema = json_schema(Union[Point, list[int], None])
    assert schema["anyOf"][0] == {"$ref": "#/$defs/Point"}
    assert schema["anyOf"][2] == {"type": "null"}


def test_unsupported_hints_are_refused() -> None:
    with pytest.raises(SchemaError):
        json_schema(bytes)
    with pytest.raises(SchemaError):
        json_schema(dict[int, str])
    with pytest.raises(SchemaError):
        json_schema(Annotated[int, Schema(items=Schema(minimum=1))])
