//! Hot reload: deploy, replace, roll back and remove plugins (and models) while traffic flows,
//! through the admin API and the watched plugins directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Fetch as _, Host, admin, client, client_with, expect_error, model, wasm};

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(wasm(name)).unwrap()
}

/// A host with no plugins of its own, for deploying into.
fn empty_host(extra: &str) -> Host {
    Host::start(&format!(
        "{extra}\n[[models]]\nname = \"digits\"\npath = \"{}\"\n",
        model("digits/digits.onnx")
    ))
}

async fn deploy(host: &Host, name: &str, wasm: Vec<u8>, query: &str) -> reqwest::Response {
    admin()
        .put(host.url(&format!("/admin/plugins/{name}{query}")))
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await
        .unwrap()
}

/// The version `/greeter/version` (or another path) answers with; checks the body is uniform.
async fn serving(c: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    let version = body["version"].as_str().unwrap_or_default().to_string();
    if body["payload"].as_str() != Some(version.repeat(512).as_str()) {
        return Err(format!("a response mixing versions: {body}"));
    }
    Ok(version)
}

#[tokio::test]
async fn replacing_a_plugin_20_times_under_load_fails_no_request() {
    let host = empty_host("");
    let (v1, v2) = (bytes("greeter_v1"), bytes("greeter_v2"));
    assert_eq!(deploy(&host, "greeter", v1.clone(), "").await.status(), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (stop, ok, failed, seen) = (stop.clone(), ok.clone(), failed.clone(), seen.clone());
        let (c, url) = (client(), host.url("/greeter/version"));
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match serving(&c, &url).await {
                    Ok(v) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.lock().unwrap().insert(v);
                    }
                    Err(e) => {
                        eprintln!("failed request: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 0..20 {
        let next = if i % 2 == 0 { v2.clone() } else { v1.clone() };
        let r = deploy(&host, "greeter", next, "").await;
        assert_eq!(r.status(), 200, "replace {i}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("reload under load: {ok} requests served, {failed} failed, 20 replacements");
    assert_eq!(failed, 0);
    assert!(ok > 100, "traffic really flowed: {ok}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["v1".to_string(), "v2".to_string()].into()
    );
    // The last deploy (i = 19) was v1.
    assert_eq!(
        serving(&client(), &host.url("/greeter/version"))
            .await
            .unwrap(),
        "v1"
    );
}

#[tokio::test]
async fn bad_uploads_are_rejected_and_the_old_version_keeps_serving() {
    let host = empty_host("[admin]\nmax_upload_bytes = 2097152");
    let v1 = bytes("greeter_v1");
    assert_eq!(deploy(&host, "greeter", v1.clone(), "").await.status(), 200);
    let url = host.url("/greeter/version");

    let corrupt = b"this is not WebAssembly at all".to_vec();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let truncated = bytes("greeter_v2")[..v1.len() / 2].to_vec();
    for (what, body) in [
        ("corrupt", corrupt),
        ("core module", core_module),
        ("truncated", truncated),
    ] {
        let e = expect_error(
            deploy(&host, "greeter", body, "").await,
            422,
            "invalid_plugin",
        )
        .await;
        println!("{what}: {}", e["error"]["message"]);
        assert_eq!(
            serving(&client(), &url).await.unwrap(),
            "v1",
            "after the {what} upload"
        );
    }
    // A valid plugin granted a model this host does not have.
    let r = deploy(&host, "greeter", bytes("greeter_v2"), "?models=nope").await;
    expect_error(r, 422, "invalid_plugin").await;
    let r = deploy(&host, "greeter", vec![7u8; 3 << 20], "").await;
    expect_error(r, 413, "payload_too_large").await;
    let r = deploy(&host, "greeter", Vec::new(), "").await;
    expect_error(r, 400, "invalid_request").await;
    let r = deploy(&host, "greeter", bytes("greeter_v2"), "?cpu_ms=0").await;
    expect_error(r, 422, "invalid_plugin").await;
    let r = deploy(&host, "greeter", bytes("greeter_v2"), "?color=blue").await;
    expect_error(r, 400, "invalid_request").await;
    assert_eq!(serving(&client(), &url).await.unwrap(), "v1");

    let list: Value = admin().get(host.url("/admin/plugins")).fetch_json().await;
    let greeter = &list["plugins"][0];
    assert_eq!(greeter["name"], "greeter");
    assert_eq!(greeter["status"], "serving");
    assert_eq!(greeter["version"], "v1");
    assert!(
        greeter["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{greeter}"
    );
}

#[tokio::test]
async fn a_route_collision_is_rejected_and_the_first_plugin_keeps_serving() {
    let host = empty_host("");
    assert_eq!(
        deploy(&host, "greeter", bytes("greeter_v1"), "")
            .await
            .status(),
        200
    );
    let r = deploy(&host, "other", bytes("greeter_v2"), "?mount=/greeter").await;
    let e = expect_error(r, 409, "conflict").await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("collides"),
        "{e}"
    );
    assert_eq!(
        serving(&client(), &host.url("/greeter/version"))
            .await
            .unwrap(),
        "v1"
    );
    // The same plugin mounted elsewhere is fine.
    assert_eq!(
        deploy(&host, "other", bytes("greeter_v2"), "?mount=/other")
            .await
            .status(),
        200
    );
    assert_eq!(
        serving(&client(), &host.url("/other/version"))
            .await
            .unwrap(),
        "v2"
    );
}

#[tokio::test]
async fn deleting_under_load_lets_in_flight_requests_finish() {
    let host = empty_host("");
    assert_eq!(
        deploy(&host, "sleepy", bytes("hostile"), "?models=digits")
            .await
            .status(),
        200
    );
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        let (c, url) = (client(), host.url("/sleepy/sleep?ms=3000"));
        in_flight.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    // Let the four requests reach the plugin (they sleep 3 s in it), then delete it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = admin()
        .delete(host.url("/admin/plugins/sleepy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client()
        .get(host.url("/sleepy/sleep?ms=1"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    for t in in_flight {
        assert_eq!(
            t.await.unwrap(),
            200,
            "in-flight requests finish on the removed plugin"
        );
    }
    let r = admin()
        .delete(host.url("/admin/plugins/sleepy"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn rollback_restores_the_previous_version_at_once() {
    let host = empty_host("");
    let url = host.url("/greeter/version");
    assert_eq!(
        deploy(&host, "greeter", bytes("greeter_v1"), "")
            .await
            .status(),
        200
    );
    assert_eq!(
        deploy(&host, "greeter", bytes("greeter_v2"), "")
            .await
            .status(),
        200
    );
    assert_eq!(serving(&client(), &url).await.unwrap(), "v2");
    let r = admin()
        .post(host.url("/admin/plugins/greeter/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        serving(&client(), &url).await.unwrap(),
        "v1",
        "the very next request"
    );
    let r = admin()
        .post(host.url("/admin/plugins/greeter/rollback"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    assert_eq!(serving(&client(), &url).await.unwrap(), "v1");
}

#[tokio::test]
async fn the_watched_directory_deploys_replaces_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let host = empty_host(&format!("plugins_dir = \"{}\"", dir.path().display()));
    let c = client();
    let wait_for = |url: String, want: Option<&'static str>| {
        let c = c.clone();
        async move {
            let started = Instant::now();
            loop {
                let got = serving(&c, &url).await.ok();
                if got.as_deref() == want {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{url}: still {got:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    std::fs::write(dir.path().join("greeter.wasm"), bytes("greeter_v1")).unwrap();
    let took = wait_for(host.url("/greeter/version"), Some("v1")).await;
    println!("watched directory: new plugin served after {took:?}");
    std::fs::write(dir.path().join("greeter.toml"), "mount = \"/g\"\n").unwrap();
    wait_for(host.url("/g/version"), Some("v1")).await;
    std::fs::write(dir.path().join("greeter.wasm"), bytes("greeter_v2")).unwrap();
    wait_for(host.url("/g/version"), Some("v2")).await;
    // A broken settings file or component is not applied; v2 keeps serving.
    std::fs::write(dir.path().join("greeter.toml"), "mount = 42\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(serving(&c, &host.url("/g/version")).await.unwrap(), "v2");
    std::fs::write(dir.path().join("greeter.toml"), "mount = \"/g\"\n").unwrap();
    std::fs::write(dir.path().join("greeter.wasm"), b"garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(serving(&c, &host.url("/g/version")).await.unwrap(), "v2");
    std::fs::remove_file(dir.path().join("greeter.wasm")).unwrap();
    wait_for(host.url("/g/version"), None).await;
    let r = c.get(host.url("/g/version")).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn models_are_loaded_replaced_and_unloaded_through_the_admin_api() {
    let host = empty_host("");
    assert_eq!(
        deploy(&host, "hostile", bytes("hostile"), "?models=digits")
            .await
            .status(),
        200
    );
    let classify = || async {
        let r = client()
            .post(host.url("/hostile/digits"))
            .json(&json!({"pixels": vec![4; 64]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let before = classify().await;
    // Replace the model (same file, fresh load, other settings): new requests use the new one.
    let r = admin()
        .put(host.url("/admin/models/digits"))
        .json(&json!({"path": model("digits/digits.onnx"), "concurrency": 1, "queue_depth": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(classify().await, before);
    let models: Value = admin().get(host.url("/admin/models")).fetch_json().await;
    let digits = &models["models"][0];
    assert_eq!(
        (digits["name"].as_str(), digits["queue_depth"].as_u64()),
        (Some("digits"), Some(3)),
        "{models}"
    );
    assert_eq!(
        digits["stats"]["completed"], 1,
        "the request after the swap ran on the new model: {models}"
    );

    // A granted model cannot be unloaded; a spare one can.
    let r = admin()
        .delete(host.url("/admin/models/digits"))
        .send()
        .await
        .unwrap();
    expect_error(r, 409, "conflict").await;
    let r = admin()
        .put(host.url("/admin/models/spare"))
        .json(&json!({"path": model("digits/digits.onnx")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        admin()
            .delete(host.url("/admin/models/spare"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let r = admin()
        .put(host.url("/admin/models/bad"))
        .json(&json!({"path": "/no/such/model.onnx"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_request").await;
    let r = admin()
        .put(host.url("/admin/models/bad"))
        .json(&json!({"path": model("digits/digits.onnx"), "colour": 1}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_request").await;
    assert_eq!(classify().await, before);
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_key() {
    let host = crate::harness::shared();
    let url = host.url("/admin/plugins");
    let r = reqwest::Client::new().get(&url).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = client().get(&url).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = client()
        .put(host.url("/admin/plugins/x"))
        .body(bytes("greeter_v1"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = admin().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tenants_deploy_into_their_own_namespace_within_limits() {
    const ACME: &str = "acme-key-0123456789abcdef";
    const GLOBEX: &str = "globex-key-0123456789abcdef";
    let host = empty_host(&format!(
        r#"[auth]
api_keys = [{{ id = "acme-1", key = "{ACME}", tenant = "acme" }}, {{ id = "globex-1", key = "{GLOBEX}", tenant = "globex" }}]
[tenant_plugins]
enabled = true
max_plugins = 2
max_upload_bytes = 2097152
max_memory_bytes = 33554432
"#
    ));
    let as_tenant = |key: &'static str| {
        let url = |p: &str| host.url(p);
        let c = reqwest::Client::new();
        move |method: reqwest::Method, path: &str, body: Option<Vec<u8>>| {
            let mut r = c.request(method, url(path)).bearer_auth(key);
            if let Some(b) = body {
                r = r.body(b);
            }
            r.send()
        }
    };
    let (acme, globex) = (as_tenant(ACME), as_tenant(GLOBEX));
    use reqwest::Method;
    let r = acme(
        Method::PUT,
        "/tenant/plugins/greeter",
        Some(bytes("greeter_v1")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["mount"], "/t/acme/greeter");
    assert_eq!(
        serving(&client_with(ACME), &host.url("/t/acme/greeter/version"))
            .await
            .unwrap(),
        "v1"
    );
    assert_eq!(
        acme(
            Method::PUT,
            "/tenant/plugins/greeter",
            Some(bytes("greeter_v2"))
        )
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        serving(&client_with(ACME), &host.url("/t/acme/greeter/version"))
            .await
            .unwrap(),
        "v2"
    );
    assert_eq!(
        acme(Method::POST, "/tenant/plugins/greeter/rollback", None)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        serving(&client_with(ACME), &host.url("/t/acme/greeter/version"))
            .await
            .unwrap(),
        "v1"
    );

    // Another tenant neither sees nor touches it.
    let list: Value = globex(Method::GET, "/tenant/plugins", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["plugins"], json!([]));
    expect_error(
        globex(Method::DELETE, "/tenant/plugins/greeter", None)
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        globex(Method::POST, "/tenant/plugins/greeter/rollback", None)
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;

    // The operator's limits hold.
    let r = acme(
        Method::PUT,
        "/tenant/plugins/big?memory_bytes=1073741824",
        Some(bytes("greeter_v1")),
    )
    .await
    .unwrap();
    expect_error(r, 422, "invalid_request").await;
    let r = acme(
        Method::PUT,
        "/tenant/plugins/m?models=digits",
        Some(bytes("hostile")),
    )
    .await
    .unwrap();
    expect_error(r, 422, "invalid_request").await;
    let r = acme(
        Method::PUT,
        "/tenant/plugins/x?mount=/digits",
        Some(bytes("greeter_v1")),
    )
    .await
    .unwrap();
    expect_error(r, 422, "invalid_request").await;
    let r = acme(
        Method::PUT,
        "/tenant/plugins/huge",
        Some(vec![1u8; 3 << 20]),
    )
    .await
    .unwrap();
    expect_error(r, 413, "payload_too_large").await;
    assert_eq!(
        acme(
            Method::PUT,
            "/tenant/plugins/second",
            Some(bytes("greeter_v2"))
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let r = acme(
        Method::PUT,
        "/tenant/plugins/third",
        Some(bytes("greeter_v2")),
    )
    .await
    .unwrap();
    expect_error(r, 403, "forbidden").await;

    let all: Value = admin().get(host.url("/admin/plugins")).fetch_json().await;
    let owners: Vec<&str> = all["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["owner"].as_str())
        .collect();
    assert_eq!(owners, ["acme", "acme"], "{all}");
    assert_eq!(
        acme(Method::DELETE, "/tenant/plugins/greeter", None)
            .await
            .unwrap()
            .status(),
        204
    );
    // A tenant's plugins are private to it (see auth.rs); after deletion, gone for it too.
    expect_error(
        client_with(ACME)
            .get(host.url("/t/acme/greeter/version"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;

    // Off by default.
    let shared = crate::harness::shared();
    let r = client()
        .get(shared.url("/tenant/plugins"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden").await;
}

/// Tenant self-deploys are held to what the operator allows: a credential needs the `deploy`
/// scope; every sandbox limit has a cap; `max_plugins` holds under concurrent uploads; a failed
/// deploy leaves nothing behind.
#[tokio::test]
async fn tenant_deploys_need_the_deploy_scope_and_stay_within_every_cap() {
    const FULL: &str = "acme-full-0123456789abcdef";
    const CALLER: &str = "acme-call-0123456789abcdef";
    let host = empty_host(&format!(
        r#"[auth]
api_keys = [{{ id = "full", key = "{FULL}", tenant = "acme" }}, {{ id = "caller", key = "{CALLER}", tenant = "acme", scopes = ["plugin:*"] }}]
[tenant_plugins]
enabled = true
max_plugins = 2
max_concurrency = 4
"#
    ));
    let put = |key: &'static str, name: &str, query: &str, body: Vec<u8>| {
        reqwest::Client::new()
            .put(host.url(&format!("/tenant/plugins/{name}{query}")))
            .bearer_auth(key)
            .body(body)
            .send()
    };

    // A key that may call plugins may not change them, nor list them.
    let r = put(CALLER, "greeter", "", bytes("greeter_v1"))
        .await
        .unwrap();
    let e = expect_error(r, 403, "forbidden").await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`deploy`"),
        "{e}"
    );
    let r = client_with(CALLER)
        .get(host.url("/tenant/plugins"))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden").await;

    // Every limit has its cap.
    let r = put(FULL, "greeter", "?max_concurrency=5", bytes("greeter_v1"))
        .await
        .unwrap();
    let e = expect_error(r, 422, "invalid_request").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrency"),
        "{e}"
    );
    for query in [
        "?max_request_bytes=1073741824",
        "?max_response_bytes=1073741824",
    ] {
        let r = put(FULL, "greeter", query, bytes("greeter_v1"))
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{query}");
    }

    // A deploy that fails leaves no entry.
    let r = put(FULL, "broken", "", b"not a component".to_vec())
        .await
        .unwrap();
    expect_error(r, 422, "invalid_plugin").await;
    let all: Value = admin().get(host.url("/admin/plugins")).fetch_json().await;
    assert_eq!(all["plugins"], json!([]), "{all}");

    // Four uploads at once under max_plugins = 2: two get in.
    let uploads = ["a", "b", "c", "d"].map(|n| put(FULL, n, "", bytes("greeter_v1")));
    let statuses: Vec<u16> = futures::future::join_all(uploads)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 2, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    let all: Value = admin().get(host.url("/admin/plugins")).fetch_json().await;
    assert_eq!(all["plugins"].as_array().unwrap().len(), 2, "{all}");
    // What it got runs with the caps as its limits.
    let list: Value = client_with(FULL)
        .get(host.url("/tenant/plugins"))
        .fetch_json()
        .await;
    assert_eq!(list["plugins"].as_array().unwrap().len(), 2, "{list}");
}

/// A manifest that declares 100,000 routes is refused (422, naming the bound) and does not
/// hold up the registry: the plugin list and another deploy go through while it is read.
#[tokio::test]
async fn a_sprawling_manifest_is_refused_without_stalling_the_registry() {
    let host = empty_host("");
    let sprawl = tokio::spawn(
        admin()
            .put(host.url("/admin/plugins/sprawl"))
            .header("content-type", "application/wasm")
            .body(bytes("sprawl"))
            .send(),
    );
    let list: Value = admin().get(host.url("/admin/plugins")).fetch_json().await;
    assert!(list["plugins"].is_array());
    let r = deploy(&host, "greeter", bytes("greeter_v1"), "").await;
    assert_eq!(r.status(), 200);
    let r = sprawl.await.unwrap().unwrap();
    let e = expect_error(r, 422, "invalid_plugin").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 256"),
        "{e}"
    );
    assert!(host.alive());
}
