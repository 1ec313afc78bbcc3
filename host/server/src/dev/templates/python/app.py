"""{{name}}: an infergate plugin. `POST /{{name}}/greet {"name": "Ada"}` answers
`{"message": "Hello, Ada! (tenant acme)"}`."""
from dataclasses import dataclass

from infergate import Ctx, HttpError, Plugin

plugin = Plugin("{{name}}", version="0.1.0", description="Greets people")


@dataclass
class Hello:
    name: str


@dataclass
class Greeting:
    message: str


@plugin.post("/greet", summary="Greet someone")
def greet(ctx: Ctx, req: Hello) -> Greeting:
    if not req.name.strip():
        raise HttpError.invalid_request("name must not be empty")
    return Greeting(message=f"Hello, {req.name}! (tenant {ctx.tenant})")


IncomingHandler, Manifest = plugin.exports()
