"""Type-hint introspection shared by `schema` (hints -> JSON Schema) and `codec` (JSON ->
typed values): what kind of hint something is, across Python 3.11 to 3.14 spellings.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

NONE_TYPE = type(None)
#: `Union[A, B]` and `A | B` (one and the same since Python 3.14).
UNION_ORIGINS: tuple[Any, ...] = (Union, types.UnionType)
#: Hints whose values are JSON arrays (besides `tuple`, which has its own forms).
ARRAY_ORIGINS: tuple[Any, ...] = (list, Sequence, set, frozenset, typing.Sequence)
#: Hints whose values are JSON objects with string keys.
OBJECT_ORIGINS: tuple[Any, ...] = (dict, Mapping, typing.Mapping)


class HintError(TypeError):
    """A type hint the SDK cannot use (raised when the plugin is built)."""


def is_dataclass_type(tp: Any) -> bool:
    """Whether `tp` is a dataclass (the class, not an instance)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def strip_annotated(hint: Any) -> Any:
    """`T` for `Annotated[T, ...]`, else `hint`."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def allows_none(hint: Any) -> bool:
    """Whether `None` is a value of `hint` (`Optional[T]`, `T | None`, `Any`)."""
    hint = strip_annotated(hint)
    if hint in (Any, object, None, NONE_TYPE):
        return True
    if typing.get_origin(hint) in UNION_ORIGINS:
        return any(allows_none(arg) for arg in typing.get_args(hint))
    return False


def has_default(f: dataclasses.Field[Any]) -> bool:
    """Whether a dataclass field has a default or a default factory."""
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields, `Annotated` extras kept. Cached: the
    manifest resolves every request type at build time, so the component starts with them."""
    try:
        # The class itself is in scope, so a local class may refer to itself.
        return typing.get_type_hints(cls, localns={cls.__name__: cls}, include_extras=True)
    except Exception as err:  # NameError for an unresolvable forward reference, mostly
        raise HintError(f"cannot resolve the type hints of {cls.__qualname__}: {err}") from err


def class_doc(cls: type) -> str | None:
    """The class's own docstring, on one line; `None` for the signature that `@dataclass`
    writes when there is none."""
    doc = cls.__doc__
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return " ".join(doc.split())
