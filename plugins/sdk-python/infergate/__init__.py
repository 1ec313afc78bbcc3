"""infergate: write infergate plugins in Python.

A plugin is a WebAssembly component for the `infergate:plugin/plugin` world, built from a
Python module with componentize-py (`plugins/sdk-python/build.sh APP_DIR OUT.wasm`). This
package owns everything between that world and a plugin author's typed functions:

- `routing`: `Plugin` and its route decorators; the manifest derived from them.
- `schema`: JSON Schemas from type hints (`Schema` for constraints).
- `codec`: request JSON to dataclasses, results back to JSON.
- `ctx`: `Ctx`, what the host says about the current request, plus usage and logging.
- `errors`: `HttpError`, rendered as the product's one error shape.
- `message`: raw `Request` and `Response`; `sse`: server-sent events for streaming routes.
- `http`: the `wasi:http` glue and the exported classes.
- `nn`: `wasi:nn` helpers; `llm`: text generation on host-owned models; `config`: settings.
- `testing`: run a plugin's routes in plain Python, without a host.

    from dataclasses import dataclass
    from infergate import Ctx, Plugin

    plugin = Plugin("hello", version="0.1.0", description="Greets people")

    @dataclass
    class Hello:
        name: str

    @dataclass
    class Greeting:
        message: str

    @plugin.post("/greet", summary="Greet someone")
    def greet(ctx: Ctx, req: Hello) -> Greeting:
        return Greeting(message=f"Hello, {req.name}! (tenant {ctx.tenant})")

    IncomingHandler, Manifest = plugin.exports()
"""

from . import config, llm, nn
from .ctx import Ctx, LogLevel
from .errors import HttpError
from .message import Request, Response
from .routing import Plugin, RouteError
from .schema import Schema
from .sse import ServerEvent

__version__ = "0.1.0"

__all__ = [
    "Ctx",
    "HttpError",
    "LogLevel",
    "Plugin",
    "Request",
    "Response",
    "RouteError",
    "Schema",
    "ServerEvent",
    "config",
    "llm",
    "nn",
]
