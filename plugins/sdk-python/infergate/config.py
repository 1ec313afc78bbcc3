"""The operator's settings and secrets for this plugin, through the standard
`wasi:config/store`.

The operator sets them per plugin (`[plugins.config]` for values, `[plugins.secrets]` for
values read from the host's environment); a request cannot change them, and the plugin never
needs a secret in its code or its requests.

    upstream = config.require("upstream")
    api_key = config.get("api_key")          # None when unset
"""

from __future__ import annotations

from typing import Any

from ._wit import bindings
from .errors import HttpError


def get(key: str) -> str | None:
    """The value of `key`, if the operator set one."""
    w = bindings()
    try:
        value = w.store.get(key)
        return None if value is None else str(value)
    except w.types.Err as err:
        raise _config_error(err.value) from None


def require(key: str) -> str:
    """The value of `key`; a 500 `plugin_misconfigured` error naming the key when unset."""
    value = get(key)
    if value is None:
        raise HttpError(
            500, "plugin_misconfigured", f"the operator has not set `{key}` for this plugin"
        )
    return value


def all() -> dict[str, str]:
    """Every key and value set for this plugin (`wasi:config/store.get-all`)."""
    w = bindings()
    try:
        return dict(w.store.get_all())
    except w.types.Err as err:
        raise _config_error(err.value) from None


def _config_error(err: Any) -> HttpError:
    return HttpError.internal(f"reading the plugin's configuration: {getattr(err, 'value', err)}")
