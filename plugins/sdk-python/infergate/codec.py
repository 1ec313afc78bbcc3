"""Between JSON values and typed Python values: `decode` builds a request body's dataclass
(recursively) from parsed JSON following the handler's type hints; `encode` turns a
handler's result (dataclasses, enums, lists, dicts, scalars) back into JSON-ready values.

The host has validated the body against the schema derived from the same hints, so `decode`
failing is rare; when it does, it raises `DecodeError` naming the JSON pointer of the value.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from collections.abc import Mapping
from typing import Any, Literal

from ._hints import (
    ARRAY_ORIGINS,
    NONE_TYPE,
    OBJECT_ORIGINS,
    UNION_ORIGINS,
    allows_none,
    field_hints,
    has_default,
    is_dataclass_type,
    strip_annotated,
)


class DecodeError(ValueError):
    """A JSON value that does not fit the type hint; `pointer` says where (`/items/2/name`)."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(f"{pointer}: {message}" if pointer else message)
        self.pointer = pointer
        self.message = message


def decode(value: Any, hint: Any, pointer: str = "") -> Any:
    """`value` (parsed JSON) as an instance of `hint`."""
    hint = strip_annotated(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if hint in (Any, object) or isinstance(hint, typing.TypeVar):
        return value
    if hasattr(hint, "__supertype__"):  # typing.NewType
        return decode(value, hint.__supertype__, pointer)
    if hint is None or hint is NONE_TYPE:
        if value is not None:
            raise DecodeError(pointer, f"expected null, got {_kind(value)}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise DecodeError(pointer, f"expected a boolean, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)  # JSON Schema's "integer" accepts 1.0
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(pointer, f"expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DecodeError(pointer, f"expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise DecodeError(pointer, f"expected a string, got {_kind(value)}")
        return value
    if origin in UNION_ORIGINS:
        return _union(value, args, pointer)
    if origin is Literal:
        if not any(value == v and type(value) is type(v) for v in args):
            allowed = ", ".join(repr(v) for v in args)
            raise DecodeError(pointer, f"expected one of {allowed}, got {value!r}")
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise DecodeError(pointer, f"expected one of {allowed}, got {value!r}") from None
    if is_dataclass_type(hint):
        return _dataclass(value, hint, pointer)
    if hint in (list, set, frozenset, tuple) or origin in ARRAY_ORIGINS or origin is tuple:
        return _array(value, hint, origin, args, pointer)
    if hint is dict or origin in OBJECT_ORIGINS:
        if not isinstance(value, dict):
            raise DecodeError(pointer, f"expected an object, got {_kind(value)}")
        if not args:
            return value
        item = args[1]
        return {key: decode(v, item, f"{pointer}/{_escape(key)}") for key, v in value.items()}
    raise DecodeError(pointer, f"cannot decode into {hint!r}")


def _union(value: Any, args: tuple[Any, ...], pointer: str) -> Any:
    if value is None and any(allows_none(arg) for arg in args):
        return None
    errors: list[DecodeError] = []
    for arg in args:
        if strip_annotated(arg) in (None, NONE_TYPE):
            continue
        try:
            return decode(value, arg, pointer)
        except DecodeError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise DecodeError(pointer, f"{_kind(value)} matches none of the allowed types")


def _array(value: Any, hint: Any, origin: Any, args: tuple[Any, ...], pointer: str) -> Any:
    if not isinstance(value, list):
        raise DecodeError(pointer, f"expected an array, got {_kind(value)}")
    container = origin or hint
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise DecodeError(pointer, f"expected {len(args)} items, got {len(value)}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(decode(v, a, f"{pointer}/{i}") for i, (v, a) in pairs)
    item = args[0] if args else Any
    items = [decode(v, item, f"{pointer}/{i}") for i, v in enumerate(value)]
    if container is tuple:
        return tuple(items)
    if container in (set, frozenset):
        return container(items)
    return items


def _dataclass(value: Any, cls: type, pointer: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(pointer, f"expected an object, got {_kind(value)}")
    hints, fields, known = _shape(cls)
    for key in value:
        if key not in known:
            raise DecodeError(f"{pointer}/{_escape(key)}", "unknown field")
    kwargs: dict[str, Any] = {}
    for f in fields:
        at = f"{pointer}/{_escape(f.name)}"
        if f.name in value:
            kwargs[f.name] = decode(value[f.name], hints[f.name], at)
        elif not has_default(f):
            if not allows_none(hints[f.name]):
                raise DecodeError(at, "missing required field")
            kwargs[f.name] = None
    return cls(**kwargs)


@functools.cache
def _shape(cls: type) -> tuple[dict[str, Any], list[dataclasses.Field[Any]], frozenset[str]]:
    """A dataclass's field hints, its fields set by `__init__` and their names: looked up once
    per class, not per request (a warm instance serves many)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    return field_hints(cls), fields, frozenset(f.name for f in fields)


def encode(value: Any) -> Any:
    """`value` as plain JSON values (dict, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [encode(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        raise TypeError("bytes have no JSON form; encode them (e.g. base64) into a str")
    raise TypeError(f"cannot encode a {type(value).__name__} as JSON")


def _key(key: Any) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)):
        return str(key)
    raise TypeError(f"a JSON object key must be a string, not {type(key).__name__}")


def _escape(key: str) -> str:
    """A key as a JSON pointer segment."""
    return str(key).replace("~", "~0").replace("/", "~1")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
