//! Rate limits, quotas and fair queueing over HTTP: exactness in memory and in Redis, one
//! limit across two hosts, a Redis outage and recovery, per-IP limits behind a trusted proxy,
//! token and compute budgets, concurrency caps, and fairness between tenants.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Fetch as _, Host, client, client_with, expect_error, model, standard_config, wasm,
};

const SYSTEM_REDIS: &str = "redis://127.0.0.1:6379/0";

/// A key prefix no other test (or earlier run) uses.
fn fresh_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("igtest:{name}:{}:{nanos}", std::process::id())
}

/// The `RateLimit-Policy` of a refused request (the bucket is empty when this is called).
async fn client_with_policy_header(c: &reqwest::Client, host: &Host) -> Option<String> {
    let r = greet(c, host).await;
    assert_eq!(r.status(), 429);
    Some(
        r.headers()
            .get("ratelimit-policy")?
            .to_str()
            .ok()?
            .to_string(),
    )
}

async fn greet(c: &reqwest::Client, host: &Host) -> reqwest::Response {
    c.post(host.url("/hello/greet"))
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// 5 per 2 s for one key: exactly 5 pass with the right headers, the 6th is refused with
/// `Retry-After`, another key is unaffected, and after the reset time the whole burst is back.
async fn exact_rate_limit(store: &str) {
    let host = Host::start(&standard_config(&format!(
        r#"
[limits]
{store}
[[limits.rules]]
per = "key"
limit = "5/2s"
plugin = "hello"

[[auth.api_keys]]
id = "other"
key = "other-key-0123456789"
tenant = "other"
"#
    )));
    let c = client();
    for left in (0..5).rev() {
        let r = greet(&c, &host).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-limit"), Some(5));
        assert_eq!(header(&r, "ratelimit-remaining"), Some(left));
        // Each request takes 0.4 s of the bucket: whole again after 0.4 s x the requests so far.
        let used = 0.4 * (5 - left) as f64;
        let reset = header(&r, "ratelimit-reset").unwrap() as f64;
        assert!(
            reset >= used - 0.1 && reset <= used.ceil(),
            "{reset} after {used}"
        );
    }
    assert_eq!(
        client_with_policy_header(&c, &host).await.as_deref(),
        Some("5;w=2")
    );
    let refused_at = Instant::now();
    let r = greet(&c, &host).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        header(&r, "retry-after"),
        Some(1),
        "one request back after 0.4 s"
    );
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    assert_eq!(header(&r, "ratelimit-reset"), Some(2));
    let body = expect_error(r, 429, "rate_limited").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("5/2s"));
    // Another key has its own budget; a route without limits has no headers.
    let r = greet(&client_with("other-key-0123456789"), &host).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-remaining"), Some(4));
    let r = c
        .post(host.url("/hostile/echo"))
        .json(&json!({"n": 1, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("ratelimit-limit").is_none());
    // After the reset the burst is whole again: 5 pass, the 6th does not.
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(refused_at.elapsed()) + Duration::from_millis(50),
    )
    .await;
    let mut passed = 0;
    for _ in 0..6 {
        if greet(&c, &host).await.status() == 200 {
            passed += 1;
        }
    }
    assert_eq!(passed, 5);
}

#[tokio::test]
async fn request_rates_are_exact_in_memory() {
    exact_rate_limit("store = \"memory\"").await;
}

#[tokio::test]
async fn request_rates_are_exact_in_redis() {
    exact_rate_limit(&format!(
        "store = \"redis\"\nredis_url = \"{SYSTEM_REDIS}\"\nkey_prefix = \"{}\"",
        fresh_prefix("exact")
    ))
    .await;
}

#[tokio::test]
async fn two_hosts_sharing_redis_enforce_one_limit() {
    let config = standard_config(&format!(
        r#"
[limits]
store = "redis"
redis_url = "{SYSTEM_REDIS}"
key_prefix = "{}"
[[limits.rules]]
per = "tenant"
limit = "20/minute"
"#,
        fresh_prefix("shared")
    ));
    let (a, b) = (Host::start(&config), Host::start(&config));
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        let url = if i % 2 == 0 {
            a.url("/hello/greet")
        } else {
            b.url("/hello/greet")
        };
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    println!("two hosts: {ok} served, {limited} limited");
    assert_eq!((ok, limited), (20, 20));
}

/// A Redis server of this test's own, on a free port, so it can be killed.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (installed by .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { port, child }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_redis_outage_applies_the_policy_without_hanging_and_recovers() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = OwnRedis::start(port);
    // Each host its own key prefix: their budgets are separate in the one Redis.
    let config = |policy: &str| {
        standard_config(&format!(
            r#"
[limits]
store = "redis"
redis_url = "redis://127.0.0.1:{port}/0"
redis_timeout_ms = 100
on_store_error = "{policy}"
key_prefix = "{policy}"
[[limits.rules]]
per = "key"
limit = "3/minute"
"#
        ))
    };
    let open = Host::start(&config("allow"));
    let closed = Host::start(&config("deny"));
    let c = client();
    for host in [&open, &closed] {
        for _ in 0..3 {
            assert_eq!(greet(&c, host).await.status(), 200);
        }
        expect_error(greet(&c, host).await, 429, "rate_limited").await;
    }

    // Redis hangs (stopped, connections open): every check gives up after its 100 ms timeout.
    redis.signal("STOP");
    for (host, fail_open) in [(&open, true), (&closed, false)] {
        let sent = Instant::now();
        let r = greet(&c, host).await;
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a request waited {took:?} on a hung Redis"
        );
        if fail_open {
            assert_eq!(r.status(), 200);
        } else {
            expect_error(r, 503, "limits_unavailable").await;
        }
    }
    redis.signal("CONT");

    // Redis dies.
    redis.kill();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = if i % 2 == 0 {
            open.url("/hello/greet")
        } else {
            closed.url("/hello/greet")
        };
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = c
                .post(url)
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap();
            (i % 2 == 0, r, sent.elapsed())
        }));
    }
    for t in tasks {
        let (fail_open, r, took) = t.await.unwrap();
        assert!(
            took < Duration::from_secs(2),
            "a request waited {took:?} on a dead Redis"
        );
        if fail_open {
            assert_eq!(r.status(), 200, "fail-open lets requests in");
            assert!(r.headers().get("ratelimit-limit").is_none());
        } else {
            assert!(r.headers().contains_key("retry-after"));
            expect_error(r, 503, "limits_unavailable").await;
        }
    }
    println!("outage: 20 requests answered in {:?}", started.elapsed());
    assert!(open.alive() && closed.alive());
    let metrics = crate::harness::admin()
        .get(open.url("/metrics"))
        .fetch_text()
        .await;
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("infergate_limit_store_errors_total "))
        .and_then(|v| v.parse().ok())
        .expect("the store error counter");
    assert!(errors >= 10, "{errors} store errors counted");

    // Redis comes back (empty): both hosts limit again by themselves.
    let _redis = OwnRedis::start(redis.port);
    let deadline = Instant::now() + Duration::from_secs(15);
    for host in [&open, &closed] {
        loop {
            let r = greet(&c, host).await;
            if r.status() == 429 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "limits did not come back after Redis did"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn per_ip_limits_believe_only_trusted_proxies() {
    let host = Host::start(&standard_config(
        r#"
[limits]
trusted_proxies = ["127.0.0.1"]
[[limits.rules]]
per = "ip"
limit = "2/minute"
"#,
    ));
    let c = client();
    let from = |ip: &'static str| {
        let c = c.clone();
        let url = host.url("/hello/greet");
        async move {
            c.post(url)
                .header("x-forwarded-for", format!("6.6.6.6, {ip}"))
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(from("198.51.100.1").await, 200);
    assert_eq!(from("198.51.100.1").await, 200);
    assert_eq!(from("198.51.100.1").await, 429);
    // The spoofable left-hand entry is the same; the client (rightmost untrusted) differs.
    assert_eq!(from("198.51.100.2").await, 200);
}

async fn embed(c: &reqwest::Client, host: &Host, input: Value) -> reqwest::Response {
    c.post(host.url("/embed/embeddings"))
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn token_quotas_charge_what_plugins_report() {
    let host = Host::start(&standard_config(
        r#"
[limits.tenants.default]
limits = ["40 tokens/hour"]
"#,
    ));
    let c = client();
    let mut used = Vec::new();
    let refusal = loop {
        let r = embed(&c, &host, json!("a short sentence about limits")).await;
        if r.status() != 200 {
            break r;
        }
        let body: Value = r.json().await.unwrap();
        used.push(body["usage"]["prompt_tokens"].as_u64().unwrap());
        assert!(used.len() < 20, "the quota never refused");
    };
    let retry = header(&refusal, "retry-after").unwrap();
    expect_error(refusal, 429, "quota_exceeded").await;
    let total: u64 = used.iter().sum();
    let before_last = total - used.last().unwrap();
    println!("tokens: {used:?}, refused after {total}, retry after {retry}s");
    // Let in while under 40, refused once at or over it.
    assert!(before_last < 40 && total >= 40, "{used:?}");
    assert!(retry > 0 && retry <= 3600);
    // The tenant sees its usage and what is left.
    let report: Value = client().get(host.url("/tenant/usage")).fetch_json().await;
    assert_eq!(report["tenant"], "default");
    assert_eq!(report["usage"]["tokens_in"].as_u64(), Some(total));
    assert_eq!(
        report["usage"]["requests"].as_u64(),
        Some(used.len() as u64)
    );
    assert_eq!(report["limits"][0]["limit"], "40 tokens/3600s");
    assert_eq!(report["limits"][0]["remaining"].as_f64(), Some(0.0));
    // So does the operator; other tenants are empty.
    let admin = crate::harness::admin();
    let report: Value = admin
        .get(host.url("/admin/usage/default"))
        .fetch_json()
        .await;
    assert_eq!(report["usage"]["tokens_in"].as_u64(), Some(total));
    let other: Value = admin
        .get(host.url("/admin/usage/nobody"))
        .fetch_json()
        .await;
    assert_eq!(other["usage"]["requests"].as_u64(), Some(0));
}

#[tokio::test]
async fn compute_budgets_charge_measured_inference_time() {
    let host = Host::start(&standard_config(
        r#"
[limits.tenants.default]
limits = ["2 compute-seconds/hour"]
"#,
    ));
    let c = client();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(8);
    let mut served = 0;
    let refusal = loop {
        let r = embed(&c, &host, json!(vec![text.clone(); 2])).await;
        if r.status() != 200 {
            break r;
        }
        served += 1;
        assert!(served < 500, "the budget never refused");
    };
    expect_error(refusal, 429, "quota_exceeded").await;
    let report: Value = c.get(host.url("/tenant/usage")).fetch_json().await;
    let spent = report["usage"]["compute_seconds"].as_f64().unwrap();
    println!("compute budget: {served} requests, {spent:.3} s measured");
    assert!(
        spent >= 2.0,
        "refused only once the budget was spent ({spent})"
    );
    // A budget of many requests' compute (about 0.08 s each here, up to 0.4 s on a loaded
    // machine), so that it spans several requests however busy the machine is.
    assert!(served >= 2, "the budget spans several requests");
}

#[tokio::test]
async fn concurrency_caps_per_tenant() {
    let host = Host::start(&standard_config(
        r#"
[limits.tenants.default]
limits = ["2 concurrent"]
"#,
    ));
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (c, url) = (c.clone(), host.url("/hostile/sleep?ms=800"));
        tasks.push(tokio::spawn(
            async move { c.get(url).send().await.unwrap() },
        ));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            _ => {
                expect_error(r, 429, "rate_limited").await;
                limited += 1;
            }
        }
    }
    assert_eq!((ok, limited), (2, 3));
    // The places are given back when the requests end.
    for _ in 0..3 {
        let r = c.get(host.url("/hostile/sleep?ms=1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn invalid_policies_stop_the_host_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[limits.rules]]\nper = \"key\"\nlimit = \"60/fortnight\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits.rules[0]") && err.contains("unknown period unit `fortnight`"),
        "{err}"
    );
}

/// A tenant flooding a model must not starve a tenant sending a trickle: with one compute slot,
/// the trickle waits for about one compute, not for the flood's backlog.
#[tokio::test]
async fn a_flooding_tenant_does_not_starve_a_trickle() {
    let host = Host::start(&format!(
        r#"
[[models]]
name = "all-minilm-l6-v2"
path = "{minilm}"
concurrency = 1
queue_depth = 64
timeout_ms = 120000

[[plugins]]
name = "embed"
path = "{embed}"
models = ["all-minilm-l6-v2"]
[plugins.limits]
wall_ms = 120000

[[auth.api_keys]]
id = "flood"
key = "flood-key-0123456789"
tenant = "flood"

[[auth.api_keys]]
id = "trickle"
key = "trickle-key-0123456789"
tenant = "trickle"
"#,
        minilm = model("minilm/model.onnx"),
        embed = wasm("embed"),
    ));
    let batch =
        json!(vec!["The quick brown fox jumps over the lazy dog near the river. ".repeat(3); 4]);
    let flood = client_with("flood-key-0123456789");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let (c, url, batch, stop) = (
            flood.clone(),
            host.url("/embed/embeddings"),
            batch.clone(),
            stop.clone(),
        );
        flooders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let r = c
                    .post(&url)
                    .json(&json!({"input": batch}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    // Let the flood build its backlog, then send the trickle one request at a time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trickle = client_with("trickle-key-0123456789");
    let mut trickle_latencies = Vec::new();
    for _ in 0..6 {
        let sent = Instant::now();
        let r = trickle
            .post(host.url("/embed/embeddings"))
            .json(&json!({"input": batch}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        trickle_latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood_latencies: Vec<Duration> = Vec::new();
    for f in flooders {
        flood_latencies.extend(f.await.unwrap());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (t, f) = (median(&mut trickle_latencies), median(&mut flood_latencies));
    println!(
        "fairness: trickle median {t:?}, flood median {f:?} ({} flood requests)",
        flood_latencies.len()
    );
    // FIFO would make the trickle wait behind the flood's 8 queued requests (ratio ~1).
    assert!(t * 3 < f, "trickle {t:?} vs flood {f:?}");
}

#[tokio::test]
async fn a_limit_that_cannot_be_read_is_refused_when_stored() {
    let host = Host::start(&standard_config(""));
    let admin = crate::harness::admin();
    for (path, body, bad) in [
        (
            "/admin/tenants",
            json!({"id": "typo", "limits": ["10/secnd"]}),
            "10/secnd",
        ),
        (
            "/admin/keys",
            json!({"tenant": "default", "limits": ["60/minute", "lots"]}),
            "lots",
        ),
    ] {
        let r = admin.post(host.url(path)).json(&body).send().await.unwrap();
        let e = expect_error(r, 422, "invalid_request").await;
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{bad}`")), "{message}");
    }
    // Nothing was stored.
    let tenants: Value = admin.get(host.url("/admin/tenants")).fetch_json().await;
    assert!(!tenants.to_string().contains("typo"), "{tenants}");
    let keys: Value = admin.get(host.url("/admin/keys")).fetch_json().await;
    assert_eq!(keys["keys"].as_array().map_or(0, Vec::len), 0, "{keys}");
    // The CLI refuses it too.
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["keys", "create", "--tenant", "acme", "--limits", "10/secnd"])
        .env("XDG_DATA_HOME", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("10/secnd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
