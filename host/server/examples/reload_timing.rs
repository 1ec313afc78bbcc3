//! Prints how long hot reload and restarts take, measured in-process on loopback:
//! - restart time until `/readyz` is 200, with a cold and with a warm compile cache;
//! - time from the start of an upload (`PUT /admin/plugins/...`) to the first request served by
//!   the new version, for a component never seen (compiled) and one in the cache.
//!
//! Run: `cargo run --release -p infergate --example reload_timing`

use std::path::Path;
use std::time::{Duration, Instant};

use infergate::config::Config;

const KEY: &str = "bench-key-0123456789";
const ADMIN: &str = "bench-admin-0123456789";

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{name}.wasm", env!("INFERGATE_WASM_DIR"))).unwrap()
}

struct Running {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(cache: &Path) -> (Running, Duration) {
    let root = Path::new(env!("INFERGATE_SOURCE_ROOT"));
    let config = format!(
        r#"cache_dir = "{cache}"
[[models]]
name = "digits"
path = "{root}/models/digits/digits.onnx"
[[plugins]]
name = "digits"
builtin = "digits"
models = ["digits"]
[[plugins]]
name = "hello"
builtin = "hello"
[[plugins]]
name = "hostile"
path = "{wasm_dir}/hostile.wasm"
models = ["digits"]
"#,
        wasm_dir = env!("INFERGATE_WASM_DIR"),
        cache = cache.display(),
        root = root.display()
    );
    let config = Config::parse(&config, root).unwrap();
    let mut config = config;
    config.admin.key = Some(ADMIN.into());
    config.auth.database = Some(cache.join("auth.db").display().to_string());
    let keys = infergate::auth::Auth::new(&config.auth, Some(KEY))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(infergate::run(listener, config, keys, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            !task.is_finished(),
            "the host stopped while starting: {:?}",
            task.await
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (Running { base, stop, task }, started.elapsed())
}

async fn stop(r: Running) {
    let _ = r.stop.send(());
    let _ = r.task.await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let cache = tempfile::tempdir().unwrap();
    let (running, cold) = start(cache.path()).await;
    stop(running).await;
    let mut warm = Vec::new();
    for _ in 0..5 {
        let (running, t) = start(cache.path()).await;
        warm.push(t);
        stop(running).await;
    }
    println!(
        "restart to ready (3 plugins, 1 model): cold cache {cold:?}, warm cache {:?} (median of 5)",
        median(warm)
    );

    let (running, _) = start(cache.path()).await;
    let admin = reqwest::Client::new();
    let client = reqwest::Client::new();
    let versions = [("v1", wasm("greeter_v1")), ("v2", wasm("greeter_v2"))];
    let mut fresh = Vec::new();
    let mut cached = Vec::new();
    for i in 0..12 {
        let (want, bytes) = &versions[i % 2];
        let t = Instant::now();
        let r = admin
            .put(format!("{}/admin/plugins/greeter", running.base))
            .bearer_auth(ADMIN)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        loop {
            let r = client
                .get(format!("{}/greeter/version", running.base))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap();
            if r.status() == 200 && r.json::<serde_json::Value>().await.unwrap()["version"] == *want
            {
                break;
            }
        }
        if i < 2 {
            fresh.push(t.elapsed())
        } else {
            cached.push(t.elapsed())
        }
    }
    println!(
        "upload to first request served by the new version: new component {:?} (compiled; mean of 2), known component {:?} (compile cache; median of 10)",
        (fresh[0] + fresh[1]) / 2,
        median(cached)
    );
    stop(running).await;
}
