//! {{name}}: an infergate plugin. `POST /{{name}}/greet {"name": "Ada"}` answers
//! `{"message": "Hello, Ada! (tenant acme)"}`.
use infergate_sdk::prelude::*;

/// The request body; the host checks it against this type's JSON Schema before the plugin runs.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Hello {
    /// Who to greet.
    name: String,
}

#[derive(Serialize, JsonSchema)]
struct Greeting {
    message: String,
}

fn greet(ctx: &Ctx, req: Hello) -> Result<Greeting> {
    if req.name.trim().is_empty() {
        return Err(Error::invalid_request("name must not be empty"));
    }
    Ok(Greeting {
        message: format!("Hello, {}! (tenant {})", req.name, ctx.tenant()),
    })
}

plugin! {
    name: "{{name}}",
    version: env!("CARGO_PKG_VERSION"),
    description: "Greets people",
    models: [],
    routes: [post("/greet", greet).summary("Greet someone")],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_by_name() {
        let hello = Hello { name: "Ada".into() };
        let greeting = greet(&Ctx::for_tests("acme"), hello).unwrap();
        assert_eq!(greeting.message, "Hello, Ada! (tenant acme)");
    }

    #[test]
    fn an_empty_name_is_refused() {
        let hello = Hello { name: " ".into() };
        let error = greet(&Ctx::for_tests("acme"), hello).err().unwrap();
        assert_eq!((error.status(), error.code()), (422, "invalid_request"));
    }
}
