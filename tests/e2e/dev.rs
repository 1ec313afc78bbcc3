//! The plugin author's loop, as an author runs it: `infergate new` for each language, the
//! project's own test, its build, `infergate check`, `infergate deploy` to a running host, and a
//! call of the route it serves.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{ADMIN_KEY, Host, client, root};

/// Runs `cmd` in `dir`; its stdout, or a panic with everything it printed.
fn run(dir: &Path, cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    // Cargo's variables for this test binary would steer a nested cargo to our own target.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.current_dir(dir).output().expect(&what);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{what} failed in {}:\n{stdout}\n{stderr}",
        dir.display()
    );
    stdout
}

fn infergate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infergate"));
    cmd.env("INFERGATE_HOME", root().canonicalize().unwrap());
    cmd
}

/// `infergate new NAME --lang LANG` in a fresh directory; the project's directory.
fn scaffold(parent: &Path, name: &str, lang: &str) -> std::path::PathBuf {
    let stdout = run(parent, infergate().args(["new", name, "--lang", lang]));
    assert!(stdout.contains("infergate deploy"), "{stdout}");
    parent.join(name)
}

/// `infergate check --json`, then deploy to `host` and call the greeting route.
async fn check_deploy_call(host: &Host, project: &Path, wasm: &str, name: &str) {
    let report: Value =
        serde_json::from_str(&run(project, infergate().args(["check", wasm, "--json"]))).unwrap();
    assert_eq!(report["name"], name, "{report}");
    assert_eq!(report["routes"][0]["method"], "POST", "{report}");
    assert_eq!(report["routes"][0]["path"], "/greet", "{report}");
    assert!(report["instantiate_us"].as_f64().unwrap() > 0.0, "{report}");
    // Every SDK reads the request in one host call, not through the `wasi:http` resources.
    assert_eq!(report["reads_request_whole"], true, "{report}");
    assert!(
        report["routes"][0]["request_schema"].is_object(),
        "{report}"
    );

    let deployed = run(
        project,
        infergate()
            .args([
                "deploy", wasm, "--name", name, "--reuse", "10", "--to", &host.base,
            ])
            .env("INFERGATE_ADMIN_KEY", ADMIN_KEY),
    );
    assert!(deployed.contains(name), "{deployed}");

    let c = client();
    let r = c
        .post(host.url(&format!("/{name}/greet")))
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Hello, Ada! (tenant default)", "{body}");
    // The schema derived from the handler's types is enforced by the host.
    let r = c
        .post(host.url(&format!("/{name}/greet")))
        .json(&json!({"name": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{name}");
    // And the handler's own refusal has the product's error shape.
    let r = c
        .post(host.url(&format!("/{name}/greet")))
        .json(&json!({"name": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{name}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request", "{e}");
}

fn empty_host() -> Host {
    Host::start("")
}

#[tokio::test]
async fn a_rust_plugin_from_nothing_to_a_served_route() {
    let dir = tempfile::tempdir().unwrap();
    let project = scaffold(dir.path(), "greeter-rs", "rust");
    // The plugins' target directory, so the SDK's dependencies are built once for all tests.
    let target = root().join("target/wasm");
    let host_target = env!("INFERGATE_HOST_TARGET");
    run(
        &project,
        Command::new("cargo")
            .args(["test", "--target", host_target, "--target-dir"])
            .arg(&target),
    );
    run(
        &project,
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target),
    );
    let wasm = target.join("wasm32-wasip2/release/greeter_rs.wasm");
    let host = empty_host();
    check_deploy_call(&host, &project, wasm.to_str().unwrap(), "greeter-rs").await;
}

#[tokio::test]
async fn a_python_plugin_from_nothing_to_a_served_route() {
    let dir = tempfile::tempdir().unwrap();
    let project = scaffold(dir.path(), "greeter-py", "python");
    run(&project, Command::new("make").arg("test"));
    run(&project, &mut Command::new("make"));
    let host = empty_host();
    check_deploy_call(&host, &project, "greeter-py.wasm", "greeter-py").await;
}

#[tokio::test]
async fn a_javascript_plugin_from_nothing_to_a_served_route() {
    let dir = tempfile::tempdir().unwrap();
    let project = scaffold(dir.path(), "greeter-js", "js");
    run(&project, Command::new("make").arg("test"));
    run(&project, &mut Command::new("make"));
    let host = empty_host();
    check_deploy_call(&host, &project, "greeter-js.wasm", "greeter-js").await;
}

#[test]
fn new_refuses_a_bad_name_and_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = infergate()
        .args(["new", "Not A Name", "--lang", "python"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a plugin name"));
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/file"), "x").unwrap();
    let out = infergate()
        .args(["new", "taken", "--lang", "js"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn check_says_what_is_wrong_with_a_file_that_is_not_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"\0asm junk").unwrap();
    let out = infergate().arg("check").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("compil") || stderr.contains("invalid"),
        "{stderr}"
    );
}

/// A plain `wasi:http` component (no SDK) reads its request through the resources, and
/// `check` says so.
#[test]
fn check_tells_a_plain_wasi_http_plugin_from_one_that_reads_its_request_whole() {
    let report = |name: &str| -> Value {
        let out = infergate()
            .args(["check", &crate::harness::wasm(name), "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(report("noop")["reads_request_whole"], false);
    assert_eq!(report("digits")["reads_request_whole"], true);
    let human = infergate()
        .args(["check", &crate::harness::wasm("noop")])
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("read through the wasi:http resources"),
        "{human}"
    );
}
