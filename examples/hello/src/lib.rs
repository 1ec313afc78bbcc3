//! The smallest infergate plugin: `POST /hello/greet {"name": "Ada"}`.
use infergate_sdk::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Hello {
    name: String,
}

#[derive(Serialize, JsonSchema)]
struct Greeting {
    message: String,
}

fn greet(ctx: &Ctx, req: Hello) -> Result<Greeting> {
    Ok(Greeting {
        message: format!("Hello, {}! (tenant {})", req.name, ctx.tenant()),
    })
}

plugin! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    description: "Greets people",
    models: [],
    routes: [post("/greet", greet).summary("Greet someone")],
}
