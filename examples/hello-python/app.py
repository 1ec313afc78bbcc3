"""The smallest infergate plugin, in Python: `POST /hello/greet {"name": "Ada"}`."""

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
