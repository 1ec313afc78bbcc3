//! Per-request micro figures for the benchmark (bench/run.sh), measured in-process (no HTTP):
//! - a fresh instance of the no-op plugin (`plugins/fixtures/noop`) plus its call, through the
//!   runtime's public API (`Runtime::load_plugin`, `Plugin::handle`): one after the other, and
//!   from 16 concurrent tasks (the benchmark's connections); and a warm instance's call
//!   (`reuse`);
//! - the auth check of a config API key (`Auth::authenticate_credential`) and the limit check of
//!   the benchmark's rule (`Quotas::admit`, one per-key rate in memory), what every request pays
//!   before its plugin runs. `auth_bench` and `limits_bench` break these down further;
//! - the host's whole overhead per request: `GET /noop/ping` through the app `infergate serve`
//!   runs (`infergate::app`: every layer, the route, the API key, the limit, the instance, the
//!   call, the response), called in process without a socket; with a fresh instance and warm;
//! - the same for the benchmark's digits route, warm, with its JSON body, schema and model (on
//!   ONNX Runtime where `ORT_DYLIB_PATH` names its library, as in the benchmark, else tract).
//!
//! `cargo build --release --workspace --examples && target/release/examples/bench_micro [NOOP.wasm]`
//! (default: the noop.wasm built by host/server/build.rs)
//! Output lines (bench/report.py reads them): `micro NAME median_us p99_us`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt as _;
use infergate::auth::Auth;
use infergate::config::Config;
use infergate::quota::{Quotas, Subject};
use infergate_runtime::{
    Limits, ModelTable, Plugin, PluginRequest, PluginSpec, RequestContext, Runtime, RuntimeOptions,
};
use tower::ServiceExt as _;

const KEY: &str = "bench-key-0123456789abcdef";

/// Times `n` calls of `f` one after the other (after `n / 10` warm-up calls): (median, p99).
async fn time<F, Fut>(n: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn print(name: &str, (median, p99): (Duration, Duration), what: &str) {
    println!(
        "micro {name} {:.2} {:.2}    # {what}",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn request() -> PluginRequest {
    PluginRequest {
        budget: None,
        method: Method::GET,
        path_and_query: "/ping".into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
        context: RequestContext {
            request_id: "bench".into(),
            tenant: "bench".into(),
            key_id: Some("bench".into()),
            scopes: vec!["*".into()],
            route: "/ping".into(),
            ..Default::default()
        },
        streaming: false,
        usage_sink: None,
    }
}

async fn call(plugin: &Plugin) {
    let response = plugin
        .handle(request())
        .await
        .expect("the no-op plugin answers");
    assert_eq!(response.status, 200);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("# micro NAME median_us p99_us");

    // The no-op plugin: instantiate + call.
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("{}/noop.wasm", env!("INFERGATE_WASM_DIR")));
    let wasm = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions::default())?);
    let spec = PluginSpec {
        wasm: wasm.into(),
        limits: Limits::default(),
        models: vec![],
        allowed_outbound_hosts: vec![],
        variables: Default::default(),
        reuse: 1,
    };
    let warm = Arc::new(
        runtime
            .load_plugin(
                PluginSpec {
                    reuse: 1000,
                    ..spec.clone()
                },
                &ModelTable::default(),
            )
            .await?,
    );
    let plugin = Arc::new(runtime.load_plugin(spec, &ModelTable::default()).await?);
    let plugin_ref = &*plugin;
    print(
        "noop_call",
        time(20_000, || call(plugin_ref)).await,
        "instantiate + call of the no-op plugin, one at a time",
    );
    let warm_ref = &*warm;
    print(
        "noop_call_warm",
        time(20_000, || call(warm_ref)).await,
        "the same with `reuse = 1000`: a warm instance's call",
    );
    // 16 tasks at once: the time per call is the wall time over all calls (throughput).
    let (tasks, per_task) = (16, 2_000);
    let mut runs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let plugin = plugin.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        call(&plugin).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await?;
        }
        runs.push(started.elapsed() / (tasks * per_task) as u32);
    }
    runs.sort();
    println!(
        "micro noop_call_16 {:.2} -    # the same from 16 concurrent tasks: wall time per call (median of 5), {:.0} calls/s",
        runs[2].as_secs_f64() * 1e6,
        1.0 / runs[2].as_secs_f64()
    );

    // Auth and limits, as bench/infergate.toml configures them; the no-op plugin with a fresh
    // instance per request and with warm instances; the digits plugin, warm, on its model (on
    // ONNX Runtime where its library is at hand, as in the benchmark).
    let backend = if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        "onnxruntime"
    } else {
        "tract"
    };
    let dir = std::env::temp_dir().join(format!("infergate-bench-micro-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = Config::parse(
        &format!(
            "cache_dir = \"{dir}/cache\"\n\
             [auth]\ndatabase = \"{dir}/auth.db\"\napi_keys = [{{ id = \"bench\", key = \"{KEY}\", tenant = \"bench\" }}]\n\
             [limits]\nstore = \"memory\"\n[[limits.rules]]\nper = \"key\"\nlimit = \"100000000/minute\"\n\
             [[plugins]]\nname = \"noop\"\npath = \"{path}\"\n\
             [[plugins]]\nname = \"noop-warm\"\npath = \"{path}\"\nreuse = 1000\n\
             [[models]]\nname = \"digits\"\npath = \"{model}\"\nbackend = \"{backend}\"\n\
             concurrency = 2\nbatching = {{ max_rows = 16 }}\n\
             [[plugins]]\nname = \"digits\"\npath = \"{digits}\"\nmodels = [\"digits\"]\nreuse = 1000\n",
            dir = dir.display(),
            model = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/digits/digits.onnx"
            ),
            digits = concat!(env!("INFERGATE_WASM_DIR"), "/digits.wasm"),
        ),
        &dir,
    )?;
    let auth = Auth::new(&config.auth, None).await?;
    let (app, registry) = infergate::app(&config, auth.clone())?;
    infergate::start(&config, &registry, 0).await?;
    registry.set_ready();
    let app = &app;
    let get = |path: &'static str| async move {
        let request = axum::http::Request::get(path)
            .header("x-api-key", KEY)
            .body(axum::body::Body::empty())
            .expect("a valid request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), 200, "{path}");
        response.into_body().collect().await.expect("the body");
    };
    print(
        "host_path",
        time(20_000, || get("/noop/ping")).await,
        "the whole request path in process (layers, route, API key, limit, fresh instance, call, response)",
    );
    print(
        "host_path_warm",
        time(20_000, || get("/noop-warm/ping")).await,
        "the same with `reuse = 1000`: a warm instance",
    );
    // bench/infergate.toml's digits route: a JSON body, its schema, the plugin's parse, the
    // model (one request at a time, so batches of one) and the JSON answer.
    let body = Bytes::from_static(include_bytes!("../../../bench/requests/digits.json"));
    print(
        "digits_path_warm",
        time(20_000, || async {
            let request = axum::http::Request::post("/digits/classify")
                .header("x-api-key", KEY)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.clone()))
                .expect("a valid request");
            let response = app.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), 200, "/digits/classify");
            response.into_body().collect().await.expect("the body");
        })
        .await,
        "POST /digits/classify as bench/run.sh sends it, warm instance, model included",
    );
    let auth = &*auth;
    print(
        "auth",
        time(200_000, || async move {
            auth.authenticate_credential(KEY)
                .await
                .expect("the key is valid");
        })
        .await,
        "API key from the config",
    );
    let quotas = Quotas::new(&config.limits)?;
    let quotas = &quotas;
    print(
        "limit",
        time(200_000, || async move {
            let admission = quotas
                .admit(&Subject {
                    tenant: "bench",
                    key_id: "bench",
                    ip: IpAddr::from([127, 0, 0, 1]),
                    plugin: "noop",
                    route: "/ping",
                    key_limits: &[],
                    tenant_limits: &[],
                    request_id: "bench",
                    lease: Duration::from_secs(30),
                })
                .await;
            assert!(admission.is_ok(), "the bench limit must not refuse");
        })
        .await,
        "limit check: one per-key rate, in memory (admission dropped)",
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
