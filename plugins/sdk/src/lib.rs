//! # infergate-sdk: write infergate plugins in Rust
//!
//! A plugin is a WebAssembly component (wasm32-wasip2) for the `infergate:plugin/plugin` world.
//! This crate owns everything between that world and a plugin author's typed functions:
//!
//! - [`bindings`]: the one `wit_bindgen::generate!` over `wit/` (raw access to every interface).
//! - [`route`]: route declarations (`post("/classify", classify)`), from which the manifest and
//!   its JSON Schemas are derived, so nothing is written twice.
//! - [`ctx`]: [`Ctx`], what the host tells the plugin about the current request, plus usage
//!   reporting and logging.
//! - [`error`]: [`Error`], rendered as the product's one error shape.
//! - [`http`]: reading the request body and writing the response over `wasi:http` streams.
//! - [`nn`]: typed helpers over `wasi:nn` (load a model by name, run it, read outputs).
//! - [`llm`]: text generation on host-owned language models, streamed token by token.
//! - [`outbound`]: HTTP requests to the destinations the operator granted this plugin.
//! - [`config`]: the operator's settings and secrets for this plugin.
//! - [`plugin!`]: the macro that ties a plugin's routes to the component's exports.
//!
//! ```ignore
//! use infergate_sdk::prelude::*;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Hello { name: String }
//! #[derive(Serialize, JsonSchema)]
//! struct Greeting { message: String }
//!
//! fn greet(ctx: &Ctx, req: Hello) -> Result<Greeting> {
//!     Ok(Greeting { message: format!("Hello, {}! (tenant {})", req.name, ctx.tenant()) })
//! }
//!
//! plugin! {
//!     name: "hello",
//!     version: env!("CARGO_PKG_VERSION"),
//!     description: "Greets people",
//!     models: [],
//!     routes: [ post("/greet", greet).summary("Greet someone") ],
//! }
//! ```

// Lets the generated bindings (and the export macro) name this crate as `infergate_sdk` from
// inside it as well as from plugins.
extern crate self as infergate_sdk;

/// Raw bindings for the `infergate:plugin/plugin` world, generated once here.
///
/// Plugins rarely need them: [`plugin!`] exports the world, [`Ctx`] wraps the `host` interface,
/// [`nn`] wraps `wasi:nn`, [`outbound`] wraps `wasi:http/outgoing-handler` and [`config`] wraps
/// `wasi:config/store`. They are public for what the SDK does not cover.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "infergate:plugin/plugin",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "infergate_sdk::bindings",
        runtime_path: "infergate_sdk::__private::wit_bindgen::rt",
    });
}

pub mod config;
pub mod ctx;
pub mod error;
pub mod http;
pub mod llm;
pub mod nn;
pub mod outbound;
pub mod route;

pub use ctx::{Ctx, LogLevel};
pub use error::{Error, Result};
pub use http::{Body, BodyWriter, Request, Response};
pub use route::{delete, get, patch, post, put, raw, Route};

/// Re-exported so plugins can use the exact versions the SDK was built with.
pub use schemars;
pub use serde;
pub use serde_json;

/// Everything a plugin usually needs: `use infergate_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{config, llm, nn, outbound};
    pub use crate::{
        delete, get, patch, plugin, post, put, raw, BodyWriter, Ctx, Error, LogLevel, Request,
        Response, Result, Route,
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

/// Declares the plugin: its manifest and its routes, and exports the component's world.
///
/// ```ignore
/// plugin! {
///     name: "digits",
///     version: env!("CARGO_PKG_VERSION"),
///     description: "Handwritten digit classifier",
///     models: ["digits"],
///     routes: [ post("/classify", classify).summary("Classify an 8x8 image") ],
/// }
/// ```
///
/// Use it once, at the root of the plugin's `cdylib` crate.
#[macro_export]
macro_rules! plugin {
    (
        name: $name:expr,
        version: $version:expr,
        description: $description:expr,
        models: [$($model:expr),* $(,)?],
        routes: [$($route:expr),* $(,)?] $(,)?
    ) => {
        #[doc(hidden)]
        struct __InfergatePlugin;

        #[doc(hidden)]
        fn __infergate_plugin() -> &'static $crate::__private::PluginDef {
            static DEF: $crate::__private::OnceLock<$crate::__private::PluginDef> =
                $crate::__private::OnceLock::new();
            DEF.get_or_init(|| $crate::__private::PluginDef {
                name: ::std::string::String::from($name),
                version: ::std::string::String::from($version),
                description: ::std::string::String::from($description),
                models: ::std::vec![$(::std::string::String::from($model)),*],
                routes: ::std::vec![$($crate::Route::from($route)),*],
            })
        }

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for __InfergatePlugin {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                response_out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::__private::handle(__infergate_plugin(), request, response_out)
            }
        }

        impl $crate::bindings::exports::infergate::plugin::manifest::Guest for __InfergatePlugin {
            fn manifest() -> $crate::bindings::exports::infergate::plugin::manifest::PluginManifest {
                $crate::__private::manifest(__infergate_plugin())
            }
        }

        $crate::bindings::export!(__InfergatePlugin with_types_in $crate::bindings);
    };
}

/// Used by [`plugin!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use std::sync::OnceLock;
    pub use wit_bindgen;

    pub use crate::http::handle;
    pub use crate::route::manifest;

    /// Everything [`plugin!`](crate::plugin) declared, built once per instance.
    pub struct PluginDef {
        pub name: String,
        pub version: String,
        pub description: String,
        pub models: Vec<String>,
        pub routes: Vec<crate::Route>,
    }
}
