//! Builds the plugins workspace (first-party plugins, the example and the test fixtures) to
//! wasm32-wasip2 once, so the host can embed the first-party ones and the tests can load all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    for dir in ["plugins", "wit", "examples"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
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
}
