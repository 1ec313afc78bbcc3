//! Plugins in Python (componentize-py) and JavaScript (componentize-js), built from source by
//! their SDKs' build scripts and served like Rust ones: typed validation, the error shape, a
//! model call, streaming, the sandbox's limits, warm instances that never cross tenants, and a
//! streamed generation. Each test runs once per language.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Host, client, client_with, expect_error, get_ok, model, root};

const OTHER_KEY: &str = "other-key-0123456789abcdef";

/// One language's plugins: the test fixture and the two examples, by mount name.
struct Lang {
    /// `python` or `js`.
    name: &'static str,
    fixture: &'static str,
    hello: &'static str,
    digits: &'static str,
}

const PYTHON: Lang = Lang {
    name: "python",
    fixture: "pyfixture",
    hello: "hello-py",
    digits: "digits-py",
};
const JS: Lang = Lang {
    name: "js",
    fixture: "jsfixture",
    hello: "hello-js",
    digits: "digits-js",
};

/// Builds the component from `app` (a `.py` module's directory or a `.js` file) into
/// `target/polyglot/NAME.wasm`, unless it is newer than every source it is built from.
fn build(lang: &str, app: &str, name: &str) -> PathBuf {
    let root = root();
    let out_dir = root.join("target/polyglot");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}.wasm"));
    let app = root.join(app);
    let sdk = root.join(match lang {
        "python" => "plugins/sdk-python",
        _ => "plugins/sdk-js",
    });
    let sources = [app.clone(), sdk.clone(), root.join("wit")];
    if fresh(&out, &sources) {
        return out;
    }
    let mut cmd = match lang {
        "python" => {
            let mut cmd = Command::new(sdk.join("build.sh"));
            cmd.arg(&app).arg(&out);
            cmd
        }
        _ => {
            let mut cmd = Command::new("node");
            cmd.arg(sdk.join("build.mjs")).arg(&app).arg(&out);
            cmd
        }
    };
    let started = Instant::now();
    let result = cmd.output().expect("running the SDK's build");
    assert!(
        result.status.success(),
        "building {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!("built {name} in {:?}", started.elapsed());
    out
}

/// Whether `out` exists and is newer than every file under `sources` (`node_modules` aside).
fn fresh(out: &Path, sources: &[PathBuf]) -> bool {
    fn newest(path: &Path) -> std::time::SystemTime {
        let meta = std::fs::metadata(path).unwrap();
        if !meta.is_dir() {
            return meta.modified().unwrap();
        }
        std::fs::read_dir(path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "node_modules" && e.file_name() != "__pycache__")
            .map(|e| newest(&e.path()))
            .max()
            .unwrap_or(std::time::UNIX_EPOCH)
    }
    let Ok(built) = std::fs::metadata(out).and_then(|m| m.modified()) else {
        return false;
    };
    sources.iter().all(|s| newest(s) < built)
}

/// The host these tests share: both languages' fixtures (fresh and warm) and examples, the
/// digits model and the chat model.
fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut plugins = String::new();
        for (lang, fixture, hello, digits) in [
            ("python", "plugins/fixtures/python", "examples/hello-python", "examples/digits-python"),
            ("js", "plugins/fixtures/js/app.js", "examples/hello-js/app.js", "examples/digits-js/app.js"),
        ] {
            let l = if lang == "python" { &PYTHON } else { &JS };
            let fixture = build(lang, fixture, l.fixture);
            let limits = "[plugins.limits]\nmemory_bytes = 134217728\ncpu_ms = 1000\nwall_ms = 10000\n";
            for (name, reuse) in [(l.fixture.to_string(), 1), (format!("{}-warm", l.fixture), 50)] {
                plugins += &format!(
                    "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\nmodels = [\"smollm2-135m-instruct\"]\nreuse = {reuse}\n{limits}\n",
                    fixture.display()
                );
            }
            plugins += &format!(
                "[[plugins]]\nname = \"{}\"\npath = \"{}\"\n\n[[plugins]]\nname = \"{}\"\npath = \"{}\"\nmodels = [\"digits\"]\n\n",
                l.hello,
                build(lang, hello, l.hello).display(),
                l.digits,
                build(lang, digits, l.digits).display(),
            );
        }
        let config = format!(
            r#"
[[models]]
name = "digits"
path = "{digits}"

[[models]]
name = "smollm2-135m-instruct"
path = "{gguf}"
backend = "llamacpp"
concurrency = 2
context = 1024

[[auth.api_keys]]
id = "other"
key = "{OTHER_KEY}"
tenant = "other"

{plugins}
"#,
            digits = model("digits/digits.onnx"),
            gguf = model("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        );
        let host = Host::start(&config);
        host.die_with_tests();
        host
    })
}

async fn both(test: impl AsyncFn(&'static Lang)) {
    for lang in [&PYTHON, &JS] {
        test(lang).await;
    }
}

#[tokio::test]
async fn the_examples_greet_and_classify() {
    both(async |l| {
        let host = host();
        let c = client();
        let r = c
            .post(host.url(&format!("/{}/greet", l.hello)))
            .json(&json!({"name": "Ada"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", l.name);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["message"], "Hello, Ada! (tenant default)",
            "{}",
            l.name
        );

        // The same classification as the Rust plugin, through wasi:nn.
        let pixels = digit_zero();
        let ours: Value = c
            .post(host.url(&format!("/{}/classify", l.digits)))
            .json(&json!({"pixels": pixels}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ours["digit"], 0, "{}: {ours}", l.name);
        assert_eq!(ours["scores"].as_array().unwrap().len(), 10, "{}", l.name);
        let r = c
            .post(host.url(&format!("/{}/classify", l.digits)))
            .json(&json!({"pixels": [1, 2, 3]}))
            .send()
            .await
            .unwrap();
        expect_error(r, 422, "invalid_request").await;
    })
    .await;
}

/// The first image of scikit-learn's digits: a zero.
fn digit_zero() -> Vec<u8> {
    vec![
        0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
        0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0,
        0, 6, 13, 10, 0, 0, 0,
    ]
}

#[tokio::test]
async fn bodies_are_typed_and_errors_have_the_product_shape() {
    both(async |l| {
        let host = host();
        let c = client();
        let url = host.url(&format!("/{}/echo", l.fixture));
        // Each fixture's echo body: a nested object, an enum, an optional field.
        let (good, nested, bad) = match l.name {
            "python" => (
                json!({"name": "Ada", "where": {"x": 1.5, "y": 2}}),
                "/where/x",
                vec![
                    json!({"name": "Ada", "where": {"x": 1, "y": 2}, "kind": "medium"}),
                    json!({"name": "Ada"}),
                    json!({"name": "Ada", "where": {"x": "1", "y": 2}}),
                    json!({"name": "Ada", "where": {"x": 1, "y": 2}, "extra": 1}),
                ],
            ),
            _ => (
                json!({"name": "Ada", "mode": "fast", "options": {"count": 3}}),
                "/options/count",
                vec![
                    json!({"name": "Ada", "mode": "slow", "options": {"count": 3}}),
                    json!({"name": "Ada", "mode": "fast"}),
                    json!({"name": "Ada", "mode": "fast", "options": {"count": "3"}}),
                    json!({"name": "Ada", "mode": "fast", "options": {"count": 3}, "extra": 1}),
                ],
            ),
        };
        let r = c.post(&url).json(&good).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", l.name);
        let echoed: Value = r.json().await.unwrap();
        assert_eq!(echoed["name"], "Ada", "{}: {echoed}", l.name);
        assert_eq!(
            echoed.pointer(nested),
            good.pointer(nested),
            "{}: {echoed}",
            l.name
        );
        for bad in bad {
            let r = c.post(&url).json(&bad).send().await.unwrap();
            expect_error(r, 422, "invalid_request").await;
        }
        let r = c
            .post(host.url(&format!("/{}/fail", l.fixture)))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        expect_error(r, 418, "teapot").await;
        let r = c
            .post(host.url(&format!("/{}/crash", l.fixture)))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let e = expect_error(r, 500, "internal_error").await;
        assert!(!e.to_string().contains("boom"), "no stack in the body: {e}");
    })
    .await;
}

#[tokio::test]
async fn a_streamed_route_sends_its_events_as_they_are_made() {
    both(async |l| {
        let host = host();
        let r = client()
            .get(host.url(&format!("/{}/stream", l.fixture)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", l.name);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let text = r.text().await.unwrap();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            events,
            (0..5).map(|n| json!({"n": n})).collect::<Vec<_>>(),
            "{}: {text}",
            l.name
        );
    })
    .await;
}

#[tokio::test]
async fn the_sandbox_stops_an_interpreted_loop_and_a_memory_hog() {
    both(async |l| {
        let host = host();
        let c = client();
        let started = Instant::now();
        let r = c
            .get(host.url(&format!("/{}/spin", l.fixture)))
            .send()
            .await
            .unwrap();
        let e = expect_error(r, 504, "plugin_timeout").await;
        assert!(
            e["error"]["message"].as_str().unwrap().contains("CPU"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(8), "{}", l.name);
        let r = c
            .get(host.url(&format!("/{}/hog", l.fixture)))
            .send()
            .await
            .unwrap();
        expect_error(r, 500, "plugin_out_of_memory").await;
        // The plugin and the host go on serving.
        let r = c
            .post(host.url(&format!("/{}/greet", l.hello)))
            .json(&json!({"name": "Ada"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", l.name);
        assert!(host.alive());
    })
    .await;
}

#[tokio::test]
async fn warm_instances_keep_state_for_one_tenant_only() {
    both(async |l| {
        let host = host();
        let (mine, other) = (client(), client_with(OTHER_KEY));
        let state = async |c: &reqwest::Client, plugin: &str| -> Value {
            get_ok(c, &host.url(&format!("/{plugin}/state"))).await
        };
        let warm = format!("{}-warm", l.fixture);
        // Without reuse: a fresh instance, a fresh module, every time.
        for _ in 0..3 {
            assert_eq!(state(&mine, l.fixture).await["count"], 0, "{}", l.name);
        }
        // With reuse: the module's state lives on, for this tenant only.
        let mut counts = Vec::new();
        for _ in 0..3 {
            let s = state(&mine, &warm).await;
            assert!(
                s["last_tenant"].is_null() || s["last_tenant"] == "default",
                "{}: {s}",
                l.name
            );
            counts.push(s["count"].as_u64().unwrap());
        }
        assert!(
            counts.windows(2).all(|w| w[1] == w[0] + 1),
            "{}: {counts:?}",
            l.name
        );
        let calls = (0..20).map(|i| {
            let (c, tenant) = if i % 2 == 0 {
                (mine.clone(), "default")
            } else {
                (other.clone(), "other")
            };
            let url = host.url(&format!("/{warm}/state"));
            async move {
                let s: Value = c.get(url).send().await.unwrap().json().await.unwrap();
                (tenant, s)
            }
        });
        for (tenant, s) in futures::future::join_all(calls).await {
            assert!(
                s["last_tenant"].is_null() || s["last_tenant"] == tenant,
                "{}: {tenant} saw {s}",
                l.name
            );
            assert_eq!(s["tenant"], tenant, "{}", l.name);
        }
    })
    .await;
}

#[tokio::test]
async fn a_plugin_streams_a_generation_token_by_token() {
    both(async |l| {
        let host = host();
        let r = client()
            .post(host.url(&format!("/{}/chat", l.fixture)))
            .json(&json!({"prompt": "What is the capital of France?", "max_tokens": 12}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", l.name);
        let text = r.text().await.unwrap();
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert!(data.len() >= 3, "{}: several chunks: {text}", l.name);
        let done: Value = serde_json::from_str(data.last().unwrap()).unwrap();
        let usage = &done["usage"];
        assert!(
            usage["prompt_tokens"].as_u64().unwrap() > 5,
            "{}: {done}",
            l.name
        );
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&completion), "{}: {done}", l.name);
        assert!(
            ["stop", "length"].contains(&done["finish_reason"].as_str().unwrap()),
            "{}: {done}",
            l.name
        );
    })
    .await;
}
