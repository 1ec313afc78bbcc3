"""Access to the bindings componentize-py generates for the `infergate:plugin/plugin` world.

The `wit_world` package exists only while componentize-py builds the component (and inside
it), so every module of the SDK reaches the bindings through `bindings()` here, never with a
top-level import: the pure-Python parts (schemas, decoding, routing) then import and test
anywhere. Inside the component the first call happens while the app module is imported,
which componentize-py does at build time, so nothing is imported lazily at request time.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class NotInComponent(RuntimeError):
    """Raised when a host service is used outside a component (e.g. in a unit test)."""


class Bindings:
    """The generated modules the SDK uses, imported once."""

    def __init__(self) -> None:
        def load(name: str) -> ModuleType:
            return importlib.import_module(name)

        try:
            self.types: Any = load("componentize_py_types")
            self.exports: Any = load("wit_world.exports")
            self.manifest: Any = load("wit_world.exports.manifest")
            self.http: Any = load("wit_world.imports.types")
            self.streams: Any = load("wit_world.imports.streams")
            self.host: Any = load("wit_world.imports.host")
            self.llm: Any = load("wit_world.imports.llm")
            self.graph: Any = load("wit_world.imports.graph")
            self.tensor: Any = load("wit_world.imports.tensor")
            self.errors: Any = load("wit_world.imports.errors")
            self.store: Any = load("wit_world.imports.store")
        except ImportError as err:
            raise NotInComponent(
                "the infergate host bindings (wit_world) are only available inside a "
                "component built with componentize-py against wit/plugin.wit"
            ) from err


_bindings: Bindings | None = None


def bindings() -> Bindings:
    """The generated bindings; raises `NotInComponent` outside a component."""
    global _bindings
    if _bindings is None:
        _bindings = Bindings()
    return _bindings


def available() -> bool:
    """Whether the generated bindings can be imported (inside a component, or while building)."""
    try:
        bindings()
    except NotInComponent:
        return False
    return True
