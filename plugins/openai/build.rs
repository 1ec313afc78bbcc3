//! Sizes the component's initial linear memory.

fn main() {
    // 4 MiB from the start, as `plugins/embed/build.rs` explains: an embeddings request's heap
    // then fits without `memory.grow` (two `mprotect` calls in the host per request).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--initial-memory={}", 4 << 20);
    }
}
