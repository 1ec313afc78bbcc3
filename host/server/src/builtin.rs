//! First-party plugins compiled into the binary (built by `build.rs` from `plugins/`).

/// Names accepted by `builtin = "..."` in a plugin's config.
pub const NAMES: [&str; 5] = ["digits", "embed", "gateway", "hello", "openai"];

/// The component bytes of a first-party plugin.
pub fn wasm(name: &str) -> Option<&'static [u8]> {
    Some(match name {
        "digits" => include_bytes!(concat!(env!("INFERGATE_WASM_DIR"), "/digits.wasm")),
        "embed" => include_bytes!(concat!(env!("INFERGATE_WASM_DIR"), "/embed.wasm")),
        "gateway" => include_bytes!(concat!(env!("INFERGATE_WASM_DIR"), "/gateway.wasm")),
        "hello" => include_bytes!(concat!(env!("INFERGATE_WASM_DIR"), "/hello.wasm")),
        "openai" => include_bytes!(concat!(env!("INFERGATE_WASM_DIR"), "/openai.wasm")),
        _ => return None,
    })
}
