//! Host bindings for the `infergate:plugin/plugin` world, generated once from `wit/`.
//!
//! Interfaces that wasmtime already implements (`wasi:http`, `wasi:io`, `wasi:cli`,
//! `wasi:clocks`, `wasi:random`) are mapped onto wasmtime's own bindings; `wasi:nn` resources are
//! mapped onto our types in [`crate::nn_host`], whose `compute` is async so that inference never
//! blocks the async runtime.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "infergate:plugin/plugin",
    imports: {
        "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
        "infergate:plugin/llm.start": async | trappable,
        "infergate:plugin/llm.[method]generation.read": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:cli": wasmtime_wasi::p2::bindings::cli,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:nn/graph.graph": crate::nn_host::GraphHandle,
        "wasi:nn/tensor.tensor": wasmtime_wasi_nn::Tensor,
        "wasi:nn/inference.graph-execution-context": crate::nn_host::ContextHandle,
        "wasi:nn/errors.error": crate::nn_host::NnErrorHandle,
        "infergate:plugin/llm.generation": crate::llm_host::GenerationHandle,
    },
});

pub use exports::infergate::plugin::manifest as wit_manifest;
pub use infergate::plugin::host as wit_host;
pub use infergate::plugin::llm as wit_llm;
pub use wasi::config::store as wit_config;
pub use wasi::nn as wit_nn;
