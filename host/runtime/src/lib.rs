//! The infergate plugin sandbox.
//!
//! This crate owns everything between a `.wasm` file and a finished plugin call: the wasmtime
//! [`Engine`](wasmtime::Engine) and its configuration, the one `bindgen!` over `wit/`, per-store
//! state and the limits applied to it, plugin loading (compile cache, manifest, pre-instantiation)
//! and the host side of the interfaces a plugin imports (`wasi:nn` over the host's models,
//! `infergate:plugin/host`). It knows nothing about HTTP routing, authentication or quotas: the
//! server crate decides *whether* a request runs; this crate decides *how* it runs safely.
//!
//! Layout:
//! - [`engine`]: the shared engine, the epoch ticker and the compiled-component cache.
//! - [`limits`]: per-plugin limits and the one function that applies them to a store.
//! - [`state`]: what each store holds (WASI, HTTP, resources, request context, usage).
//! - [`bindings`]: host bindings generated from `wit/`.
//! - [`nn_host`]: the async `wasi:nn` host with model grants, over `infergate-nn`.
//! - [`host_api`]: the `infergate:plugin/host` interface.
//! - [`llm_host`]: the `infergate:plugin/llm` interface: text generation on granted language
//!   models, with the tenant's token budget charged before decoding.
//! - [`plugin`]: loading a plugin and calling it for one request.
//! - [`pool`]: warm instances of plugins that opt in (`reuse`), kept per tenant.
//! - [`outbound`]: outgoing HTTP, denied unless the operator grants destinations.
//! - [`variables`]: configuration values and secrets the operator gives a plugin
//!   (`wasi:config/store`).
//! - [`timeout`]: timeouts for the request path that make their timer only once it waits.
//! - [`private_dir`]: directories whose contents the host trusts later (the compile cache), made
//!   and checked private to this user.

pub mod bindings;
pub mod engine;
pub mod host_api;
pub mod limits;
pub mod llm_host;
pub mod manifest;
pub mod nn_host;
pub mod outbound;
pub mod plugin;
pub mod pool;
pub mod private_dir;
pub mod state;
pub mod timeout;
pub mod variables;

pub use engine::{Runtime, RuntimeOptions};
pub use limits::Limits;
pub use manifest::{Manifest, Route};
pub use nn_host::ModelTable;
pub use plugin::{
    Inspection, InvokeError, Plugin, PluginBody, PluginRequest, PluginResponse, PluginSpec,
};
pub use state::{BudgetRefused, RequestContext, TokenBudget, Usage, UsageSink};
pub use variables::Variables;
