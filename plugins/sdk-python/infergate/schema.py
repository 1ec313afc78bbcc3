"""JSON Schemas (draft 2020-12) derived from Python type hints, for the manifest.

The host validates every request body against its route's request schema before the plugin
runs, and documents both schemas in its OpenAPI document, so the schema *is* the input
contract. Supported hints: `str`, `int`, `float`, `bool`, `None`, `Any`/`object`, `list[T]`,
`tuple[T, ...]`/`tuple[A, B]`, `set[T]`, `dict[str, T]`, `Optional[T]`/`T | None`, unions,
`Literal[...]`, `Enum` subclasses, nested dataclasses (in `$defs`, with
`additionalProperties: false`) and `Annotated[T, Schema(...)]` (or a plain string, taken as the
description) for constraints. Dataclass fields may also carry schema keywords in
`field(metadata={...})`, e.g. `{"description": "...", "minimum": 0, "max_length": 64}`.

Request and response schemas differ in one way: in a request, a field with a default (or of an
`Optional` type) may be left out; in a response every field is always present.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._hints import (
    ARRAY_ORIGINS,
    NONE_TYPE,
    OBJECT_ORIGINS,
    UNION_ORIGINS,
    HintError,
    allows_none,
    class_doc,
    field_hints,
    has_default,
    is_dataclass_type,
    strip_annotated,
)
from .codec import encode

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Mode = Literal["request", "response"]

_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    NONE_TYPE: {"type": "null"},
    None: {"type": "null"},
}

# snake_case spellings accepted in `Schema(extra=...)` and `field(metadata=...)`.
_KEYWORDS = {
    "exclusive_minimum": "exclusiveMinimum",
    "exclusive_maximum": "exclusiveMaximum",
    "multiple_of": "multipleOf",
    "min_length": "minLength",
    "max_length": "maxLength",
    "min_items": "minItems",
    "max_items": "maxItems",
    "unique_items": "uniqueItems",
    "min_properties": "minProperties",
    "max_properties": "maxProperties",
    "content_media_type": "contentMediaType",
    "content_encoding": "contentEncoding",
    "read_only": "readOnly",
    "write_only": "writeOnly",
}


class SchemaError(HintError):
    """A type hint the SDK cannot describe as JSON Schema (raised when the plugin is built)."""


@dataclass(frozen=True)
class Schema:
    """Constraints and documentation for one type, used as `Annotated[T, Schema(...)]`.

    `length` is an exact length: `minItems`/`maxItems` on arrays, `minLength`/`maxLength` on
    strings. `items` applies to the elements of an array. `extra` holds any other JSON Schema
    keywords (snake_case or camelCase).

    >>> Pixels = Annotated[list[float], Schema(length=64, items=Schema(minimum=0, maximum=16))]
    """

    description: str | None = None
    title: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    format: str | None = None
    min_items: int | None = None
    max_items: int | None = None
    unique_items: bool | None = None
    length: int | None = None
    items: Schema | None = None
    examples: Sequence[Any] | None = None
    extra: Mapping[str, Any] | None = None

    def apply(self, schema: dict[str, Any]) -> dict[str, Any]:
        """`schema` with these constraints added (a new dict)."""
        out = dict(schema)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in ("length", "items", "extra"):
                continue
            out[_KEYWORDS.get(f.name, f.name)] = list(value) if f.name == "examples" else value
        if self.length is not None:
            if _has_type(out, "string"):
                out["minLength"] = out["maxLength"] = self.length
            else:
                out["minItems"] = out["maxItems"] = self.length
        if self.items is not None:
            if "items" not in out:
                raise SchemaError("Schema(items=...) applies only to arrays")
            out["items"] = self.items.apply(out["items"])
        if self.extra:
            out.update(keywords(self.extra))
        return out


def annotate(schema: dict[str, Any], metadata: Sequence[Any]) -> dict[str, Any]:
    """`schema` with the `Annotated` extras that describe it: `Schema`s, a description string,
    or a mapping of keywords. Other extras (for other tools) are ignored."""
    for extra in metadata:
        if isinstance(extra, Schema):
            schema = extra.apply(schema)
        elif isinstance(extra, str):
            schema = {**schema, "description": extra}
        elif isinstance(extra, Mapping):
            schema = {**schema, **keywords(extra)}
    return schema


def keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema keywords from a mapping that may spell them in snake_case."""
    return {_KEYWORDS.get(key, key): value for key, value in values.items()}


def _has_type(schema: Mapping[str, Any], name: str) -> bool:
    ty = schema.get("type")
    return ty == name or (isinstance(ty, list) and name in ty)


class _Builder:
    """Walks type hints, collecting nested dataclasses into `$defs`."""

    def __init__(self, mode: Mode, root: Any) -> None:
        self.mode = mode
        self.root = root
        self.defs: dict[str, dict[str, Any]] = {}
        self.names: dict[type, str] = {}

    def schema(self, hint: Any) -> dict[str, Any]:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)

        if origin is typing.Annotated:
            return annotate(self.schema(args[0]), hint.__metadata__)
        if hint in (Any, object):
            return {}
        if isinstance(hint, typing.TypeVar):
            return {}
        if hasattr(hint, "__supertype__"):  # typing.NewType
            return self.schema(hint.__supertype__)
        if hint in _SCALARS:
            return dict(_SCALARS[hint])
        if hint is bytes:
            raise SchemaError("bytes has no JSON form; use str (e.g. base64) instead")
        if origin in UNION_ORIGINS:
            return self.union(args)
        if origin is Literal:
            return literal_schema(args)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return literal_schema(tuple(member.value for member in hint))
        if is_dataclass_type(hint):
            return self.dataclass_ref(hint)
        if hint in (list, set, frozenset, tuple) or origin in ARRAY_ORIGINS:
            return self.array(hint, origin, args)
        if origin is tuple:
            return self.tuple_schema(args)
        if hint is dict or origin in OBJECT_ORIGINS:
            return self.mapping(args)
        if typing.is_typeddict(hint):
            raise SchemaError(f"TypedDict {hint.__name__} is not supported; use a dataclass")
        raise SchemaError(f"cannot derive a JSON Schema for {hint!r}")

    def union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        members = [self.schema(arg) for arg in args]
        simple = [m.get("type") for m in members]
        # {"type": ["string", "null"]} when every member is a plain type, like schemars.
        if all(isinstance(t, str) and len(m) == 1 for t, m in zip(simple, members, strict=True)):
            return {"type": list(dict.fromkeys(simple))}
        return {"anyOf": members}

    def array(self, hint: Any, origin: Any, args: tuple[Any, ...]) -> dict[str, Any]:
        items = self.schema(args[0]) if args else {}
        out: dict[str, Any] = {"type": "array", "items": items}
        if origin in (set, frozenset) or hint in (set, frozenset):
            out["uniqueItems"] = True
        return out

    def tuple_schema(self, args: tuple[Any, ...]) -> dict[str, Any]:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": self.schema(args[0])}
        if args == ((),):  # tuple[()]
            return {"type": "array", "maxItems": 0}
        return {
            "type": "array",
            "prefixItems": [self.schema(arg) for arg in args],
            "items": False,
            "minItems": len(args),
            "maxItems": len(args),
        }

    def mapping(self, args: tuple[Any, ...]) -> dict[str, Any]:
        if not args:
            return {"type": "object"}
        key, value = args
        if strip_annotated(key) is not str:
            raise SchemaError(f"JSON object keys are strings, not {key!r}")
        return {"type": "object", "additionalProperties": self.schema(value)}

    def dataclass_ref(self, cls: type) -> dict[str, Any]:
        if cls is self.root:
            return {"$ref": "#"}
        name = self.names.get(cls)
        if name is None:
            name = cls.__name__
            if name in self.defs:  # two classes of the same name: qualify the second
                name = f"{cls.__module__}.{cls.__qualname__}"
            self.names[cls] = name
            self.defs[name] = {}  # reserved first, so a recursive reference ends here
            self.defs[name] = self.dataclass(cls)
        return {"$ref": f"#/$defs/{name}"}

    def dataclass(self, cls: type) -> dict[str, Any]:
        hints = field_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            hint = hints[f.name]
            prop = self.schema(hint)
            meta = dict(f.metadata)
            extra = meta.pop("schema", None)
            if isinstance(extra, Schema):
                prop = extra.apply(prop)
            prop = {**prop, **keywords(meta)}
            if f.default is not dataclasses.MISSING and self.mode == "request":
                default = _json_default(f.default)
                if default is not None or f.default is None:
                    prop.setdefault("default", default)
            properties[f.name] = _with_description_first(prop)
            if self.mode == "response" or not (has_default(f) or allows_none(hint)):
                required.append(f.name)
        out: dict[str, Any] = {}
        doc = class_doc(cls)
        if doc:
            out["description"] = doc
        out["type"] = "object"
        out["properties"] = properties
        if required:
            out["required"] = required
        out["additionalProperties"] = False
        return out


def _with_description_first(schema: dict[str, Any]) -> dict[str, Any]:
    """Puts `description` first, so the manifest reads well."""
    if "description" not in schema:
        return schema
    return {"description": schema["description"], **schema}


def _json_default(value: Any) -> Any:
    """A field default as JSON, or None when it has no JSON form."""
    try:
        encoded = encode(value)
        json.dumps(encoded)
    except (TypeError, ValueError):
        return None
    return encoded


def literal_schema(values: tuple[Any, ...]) -> dict[str, Any]:
    """`enum` of `values`, with their `type` when they share one."""
    values = tuple(v.value if isinstance(v, enum.Enum) else v for v in values)
    kinds = {_json_type(v) for v in values}
    out: dict[str, Any] = {}
    if len(kinds) == 1 and None not in kinds:
        out["type"] = kinds.pop()
    if len(values) == 1:
        out["const"] = values[0]
    else:
        out["enum"] = list(values)
    return out


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return None


def json_schema(hint: Any, mode: Mode = "request") -> dict[str, Any]:
    """The JSON Schema document for values of `hint`, as the host expects it in a manifest."""
    root = strip_annotated(hint)
    builder = _Builder(mode, root if is_dataclass_type(root) else None)
    if is_dataclass_type(root):
        body = builder.dataclass(root)
        if root is not hint:  # Annotated[Dataclass, ...]
            body = annotate(body, hint.__metadata__)
        out: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, "title": root.__name__, **body}
    else:
        out = {"$schema": JSON_SCHEMA_DIALECT, **builder.schema(hint)}
    if builder.defs:
        out["$defs"] = builder.defs
    return out


def json_schema_text(hint: Any, mode: Mode = "request") -> str:
    """`json_schema` as compact JSON text."""
    return json.dumps(json_schema(hint, mode), separators=(",", ":"))
