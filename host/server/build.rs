//! Builds the plugins workspace (first-party plugins, the example and the test fixtures) to
//! wasm32-wasip2 once, so the host can embed the first-party ones and the tests can load all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // The Rust parts only: the Python and JavaScript SDKs and plugins beside them (and their
    // node_modules) are built by the tests that use them.
    for dir in ["plugins", "examples"] {
        watch_rust(&root.join(dir));
    }
    let target_dir = root.join("target/wasm");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    let out = target_dir.join("wasm32-wasip2/release");
    println!("cargo:rustc-env=INFERGATE_WASM_DIR={}", out.display());
    println!("cargo:rustc-env=INFERGATE_SOURCE_ROOT={}", root.display());
    // For tests that build a plugin's unit tests natively.
    println!(
        "cargo:rustc-env=INFERGATE_HOST_TARGET={}",
        std::env::var("TARGET").unwrap()
    );
}

/// Reruns this script when a Rust crate under `dir` changes: each `Cargo.toml`, `Cargo.lock`,
/// `src/` directory and loose `.rs` file (shared sources), found recursively.
fn watch_rust(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name == "src" {
                println!("cargo:rerun-if-changed={}", path.display());
            } else if name != "node_modules" && name != "target" {
                watch_rust(&path);
            }
        } else if name == "Cargo.toml"
            || name == "Cargo.lock"
            || path.extension().is_some_and(|e| e == "rs")
        {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
