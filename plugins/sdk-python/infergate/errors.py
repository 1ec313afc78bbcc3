"""`HttpError`: the error a handler raises, rendered in the product's one error shape
`{"error": {"code": "...", "message": "...", "request_id": "..."}}` with a fitting status.

The constructors mirror the Rust SDK's `Error`: `invalid_request` (422), `bad_request` (400),
`not_found` (404), `model_not_found` (404), `backend` (500 `backend_error`), `internal` (500
`internal_error`). Any other exception a handler lets escape becomes a 500 `internal_error`
whose traceback goes to the host's log, never to the client.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ctx import Ctx


class HttpError(Exception):
    """An error response: HTTP `status`, machine-readable `code` (snake_case), `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"HttpError({self.status}, {self.code!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpError) and (self.status, self.code, self.message) == (
            other.status,
            other.code,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.status, self.code, self.message))

    @classmethod
    def invalid_request(cls, message: str) -> HttpError:
        """422 `invalid_request`: well-formed JSON whose content is not acceptable."""
        return cls(422, "invalid_request", message)

    @classmethod
    def bad_request(cls, message: str) -> HttpError:
        """400 `invalid_request`: the request itself is malformed (bad query, bad JSON)."""
        return cls(400, "invalid_request", message)

    @classmethod
    def not_found(cls, message: str) -> HttpError:
        """404 `not_found`."""
        return cls(404, "not_found", message)

    @classmethod
    def method_not_allowed(cls, message: str) -> HttpError:
        """405 `method_not_allowed`."""
        return cls(405, "method_not_allowed", message)

    @classmethod
    def model_not_found(cls, name: str) -> HttpError:
        """404 `model_not_found`: no such model, or this plugin was not granted it."""
        return cls(404, "model_not_found", f"model '{name}' is not available to this plugin")

    @classmethod
    def backend(cls, message: str) -> HttpError:
        """500 `backend_error`: the inference backend failed."""
        return cls(500, "backend_error", message)

    @classmethod
    def internal(cls, message: str) -> HttpError:
        """500 `internal_error`: a bug in the plugin."""
        return cls(500, "internal_error", message)

    def to_dict(self, request_id: str) -> dict[str, dict[str, str]]:
        """The error object, as it goes on the wire."""
        return {"error": {"code": self.code, "message": self.message, "request_id": request_id}}

    def to_json(self, request_id: str) -> bytes:
        """The JSON body of the error response."""
        return json.dumps(self.to_dict(request_id), separators=(",", ":")).encode()


def internal_error(exc: BaseException, ctx: Ctx) -> HttpError:
    """Logs `exc` with its traceback through the host and returns the 500 the client sees,
    which names the exception's type only."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(Exception):  # logging must not turn one failure into another
        ctx.log_error(
            f"unhandled {type(exc).__name__} in {ctx.method} {ctx.path}: {exc}",
            traceback=trace,
        )
    return HttpError.internal(
        f"the plugin failed with an unhandled {type(exc).__name__}; "
        f"its log has the details (request {ctx.request_id})"
    )
