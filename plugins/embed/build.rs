//! Sizes the component's initial linear memory (the tokenizer's vocabulary table is built by
//! the `embedding` crate's own build script).

fn main() {
    // Start with 4 MiB of linear memory instead of just the stack and the data: a request's
    // heap (the 29 KB output tensor and its f32 copy for one 19-token text) then fits without
    // `memory.grow`, which costs the host two `mprotect` calls per request (grow, then shrink
    // back when the pool resets the instance). Measured: about 50 µs less per request at one
    // connection (bench/RESULTS.md). Untouched pages cost nothing.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--initial-memory={}", 4 << 20);
    }
}
