//! Route declarations. A [`Route`] pairs a method and path template with a handler; typed
//! constructors ([`post`], [`get`], ...) also derive the request and response JSON Schemas, so
//! the manifest always matches the code.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::exports::infergate::plugin::manifest as wit;
use crate::http::{Request, Response};
use crate::{Ctx, Error, Result};

type Handler = Box<dyn Fn(&Ctx, &Request) -> Result<Response> + Send + Sync>;
type SchemaFn = fn() -> String;

/// One HTTP route of the plugin: what the manifest declares and the function that serves it.
pub struct Route {
    /// Upper-case HTTP method.
    method: String,
    /// Path template relative to the mount point, such as `/items/{id}`.
    path: String,
    /// One line for the API docs.
    summary: String,
    /// Scopes a caller needs.
    scopes: Vec<String>,
    /// Whether the response streams (server-sent events), so the host must not buffer it.
    streaming: bool,
    /// Produces the request body's JSON Schema; computed only when the manifest is asked for.
    request_schema: Option<SchemaFn>,
    /// Produces the success response's JSON Schema.
    response_schema: Option<SchemaFn>,
    /// Serves the request.
    handler: Handler,
}

impl Route {
    fn new(method: &str, path: &str, handler: Handler) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            summary: String::new(),
            scopes: Vec::new(),
            streaming: false,
            request_schema: None,
            response_schema: None,
            handler,
        }
    }

    /// Sets the one-line summary shown in the API docs.
    pub fn summary(mut self, summary: &str) -> Self {
        self.summary = summary.to_string();
        self
    }

    /// Sets the scopes a caller needs (the host enforces them before the plugin runs).
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Marks the response as streamed (server-sent events): the host will not buffer it.
    pub fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Declares the JSON Schema of the request body of a [`raw`] route (from `T` as it
    /// deserialises): the host validates bodies against it and documents it, while the handler
    /// still reads the raw request and writes its own response (a stream, for example).
    pub fn request_type<T: JsonSchema>(mut self) -> Self {
        self.request_schema = Some(request_schema::<T>);
        self
    }

    /// Declares the JSON Schema of a [`raw`] route's successful response, for the API docs.
    pub fn response_type<T: JsonSchema>(mut self) -> Self {
        self.response_schema = Some(response_schema::<T>);
        self
    }

    /// The upper-case HTTP method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path template.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(crate) fn call(&self, ctx: &Ctx, request: &Request) -> Result<Response> {
        (self.handler)(ctx, request)
    }

    fn to_wit(&self) -> wit::Route {
        wit::Route {
            method: self.method.clone(),
            path: self.path.clone(),
            summary: self.summary.clone(),
            request_schema: self.request_schema.map(|schema| schema()),
            response_schema: self.response_schema.map(|schema| schema()),
            streaming: self.streaming,
            scopes: self.scopes.clone(),
        }
    }
}

/// `POST path`: the body is JSON deserialised into `Req`; the response is `Resp` as JSON.
pub fn post<Req, Resp, F>(path: &str, handler: F) -> Route
where
    Req: DeserializeOwned + JsonSchema + 'static,
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx, Req) -> Result<Resp> + Send + Sync + 'static,
{
    with_body("POST", path, handler)
}

/// `PUT path`, like [`post`].
pub fn put<Req, Resp, F>(path: &str, handler: F) -> Route
where
    Req: DeserializeOwned + JsonSchema + 'static,
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx, Req) -> Result<Resp> + Send + Sync + 'static,
{
    with_body("PUT", path, handler)
}

/// `PATCH path`, like [`post`].
pub fn patch<Req, Resp, F>(path: &str, handler: F) -> Route
where
    Req: DeserializeOwned + JsonSchema + 'static,
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx, Req) -> Result<Resp> + Send + Sync + 'static,
{
    with_body("PATCH", path, handler)
}

/// `GET path`: no body; the response is `Resp` as JSON. Read the query with [`Ctx::query`].
pub fn get<Resp, F>(path: &str, handler: F) -> Route
where
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx) -> Result<Resp> + Send + Sync + 'static,
{
    without_body("GET", path, handler)
}

/// `DELETE path`, like [`get`].
pub fn delete<Resp, F>(path: &str, handler: F) -> Route
where
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx) -> Result<Resp> + Send + Sync + 'static,
{
    without_body("DELETE", path, handler)
}

/// Any method, with the raw request and response: for bodies that are not JSON, large, or
/// streamed. The manifest carries no schemas for it.
pub fn raw<F>(method: &str, path: &str, handler: F) -> Route
where
    F: Fn(&Ctx, &Request) -> Result<Response> + Send + Sync + 'static,
{
    Route::new(method, path, Box::new(handler))
}

fn with_body<Req, Resp, F>(method: &str, path: &str, handler: F) -> Route
where
    Req: DeserializeOwned + JsonSchema + 'static,
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx, Req) -> Result<Resp> + Send + Sync + 'static,
{
    let mut route = Route::new(
        method,
        path,
        Box::new(move |ctx: &Ctx, request: &Request| {
            // The host validated the body against the schema; deserialise defensively anyway.
            let body: Req = serde_json::from_slice(&request.body).map_err(body_error)?;
            Response::json(200, &handler(ctx, body)?)
        }),
    );
    route.request_schema = Some(request_schema::<Req>);
    route.response_schema = Some(response_schema::<Resp>);
    route
}

fn without_body<Resp, F>(method: &str, path: &str, handler: F) -> Route
where
    Resp: Serialize + JsonSchema + 'static,
    F: Fn(&Ctx) -> Result<Resp> + Send + Sync + 'static,
{
    let mut route = Route::new(
        method,
        path,
        Box::new(move |ctx: &Ctx, _: &Request| Response::json(200, &handler(ctx)?)),
    );
    route.response_schema = Some(response_schema::<Resp>);
    route
}

/// Malformed JSON is a 400; well-formed JSON of the wrong shape is a 422 (both `invalid_request`).
fn body_error(err: serde_json::Error) -> Error {
    match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            Error::bad_request(format!("the body is not valid JSON: {err}"))
        }
        _ => Error::invalid_request(err.to_string()),
    }
}

/// JSON Schema (draft 2020-12) of what `T` accepts when deserialised.
pub fn request_schema<T: JsonSchema>() -> String {
    let generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    generator.into_root_schema_for::<T>().as_value().to_string()
}

/// JSON Schema (draft 2020-12) of what `T` produces when serialised.
pub fn response_schema<T: JsonSchema>() -> String {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    generator.into_root_schema_for::<T>().as_value().to_string()
}

/// Builds the manifest the host reads once when it loads the plugin (used by `plugin!`).
#[doc(hidden)]
pub fn manifest(def: &crate::__private::PluginDef) -> wit::PluginManifest {
    wit::PluginManifest {
        name: def.name.clone(),
        version: def.version.clone(),
        description: def.description.clone(),
        routes: def.routes.iter().map(Route::to_wit).collect(),
        models: def.models.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Pixels {
        #[schemars(length(equal = 64), inner(range(min = 0, max = 16)))]
        pixels: Vec<f32>,
        label: Option<String>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum OneOrMany {
        One(String),
        Many(#[schemars(length(min = 1, max = 64))] Vec<String>),
    }

    #[test]
    fn request_schemas_carry_constraints() {
        let schema: serde_json::Value = serde_json::from_str(&request_schema::<Pixels>()).unwrap();
        println!("{schema}");
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["required"], serde_json::json!(["pixels"]));
        let pixels = &schema["properties"]["pixels"];
        assert_eq!(pixels["minItems"], 64);
        assert_eq!(pixels["maxItems"], 64);
        assert_eq!(pixels["items"]["minimum"], 0);
        assert_eq!(pixels["items"]["maximum"], 16);

        let schema = request_schema::<OneOrMany>();
        println!("{schema}");
        assert!(schema.contains("\"minItems\":1") && schema.contains("\"maxItems\":64"));
    }

    #[test]
    fn routes_declare_their_manifest() {
        fn echo(_: &Ctx, p: Pixels) -> Result<usize> {
            Ok(p.pixels.len())
        }
        fn health(_: &Ctx) -> Result<&'static str> {
            Ok("ok")
        }
        let route = post("/echo", echo)
            .summary("Echo")
            .scopes(&["admin"])
            .to_wit();
        assert_eq!(
            (route.method.as_str(), route.path.as_str()),
            ("POST", "/echo")
        );
        assert_eq!(route.scopes, ["admin"]);
        assert!(route.request_schema.is_some() && route.response_schema.is_some());
        let route = get("/health", health).to_wit();
        assert!(route.request_schema.is_none() && route.response_schema.is_some());
        let route = raw("delete", "/x", |_, _| Response::json(200, &1))
            .streaming()
            .to_wit();
        assert_eq!(route.method, "DELETE");
        assert!(route.streaming && route.request_schema.is_none());
    }

    #[test]
    fn errors_have_the_product_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&Error::model_not_found("x").to_json("req-1")).unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["request_id"], "req-1");
        assert_eq!(Error::invalid_request("m").status(), 422);
        assert_eq!(Error::bad_request("m").status(), 400);
        assert_eq!(Error::backend("m").code(), "backend_error");
    }
}
