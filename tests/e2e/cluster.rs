//! Several instances, one service: three hosts sharing one PostgreSQL database (deploys, keys)
//! and one Redis (limits) follow each other's deploys, enforce one limit and one token budget,
//! honour a key revoked on one of them, and restart one at a time behind HAProxy without
//! losing a request.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Host, PgDatabase, admin, client_with, hex_id, model, wasm};

const REDIS: &str = "redis://127.0.0.1:6379/0";
/// Tenant `paced`: 10 requests a minute.
const PACED_KEY: &str = "paced-key-0123456789abcdef";
/// Tenant `budget`: 300 tokens a day.
const BUDGET_KEY: &str = "budget-key-0123456789abcdef";
const LLM: &str = "smollm2-135m-instruct";
/// How long a change may take to reach every instance.
const CONVERGE: Duration = Duration::from_secs(2);

/// The config every instance of a test shares; `own` adds what only one instance has.
fn config(db: &str, prefix: &str, own: &str) -> String {
    format!(
        r#"
[server]
shutdown_grace_ms = 1500
drain_timeout_ms = 20000

[auth]
database = "{db}"

[[auth.api_keys]]
id = "paced"
key = "{PACED_KEY}"
tenant = "paced"

[[auth.api_keys]]
id = "budget"
key = "{BUDGET_KEY}"
tenant = "budget"

[cluster]
reconcile_ms = 1000

[tenant_plugins]
enabled = true
max_plugins = 1

[limits]
store = "redis"
redis_url = "{REDIS}"
key_prefix = "{prefix}"
on_store_error = "deny"

[limits.tenants.paced]
limits = ["10/minute"]

[limits.tenants.budget]
limits = ["300 tokens/day"]

[[models]]
name = "digits"
path = "{digits}"

[[plugins]]
name = "hostile"
path = "{hostile}"
models = ["digits"]

{own}
"#,
        digits = model("digits/digits.onnx"),
        hostile = wasm("hostile"),
    )
}

/// The OpenAI-compatible plugin on a small language model (for the token budget).
fn with_llm() -> String {
    format!(
        r#"
[[models]]
name = "{LLM}"
path = "{gguf}"
backend = "llamacpp"
concurrency = 1
context = 512

[[models]]
name = "all-minilm-l6-v2"
path = "{minilm}"

[[plugins]]
name = "openai"
path = "{openai}"
mount = "/v1"
models = ["{LLM}", "all-minilm-l6-v2"]
"#,
        gguf = model("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        minilm = model("minilm/model.onnx"),
        openai = wasm("openai"),
    )
}

async fn deploy(host: &Host, name: &str, fixture: &str, query: &str) -> reqwest::Response {
    admin()
        .put(host.url(&format!("/admin/plugins/{name}{query}")))
        .header("content-type", "application/wasm")
        .body(std::fs::read(wasm(fixture)).unwrap())
        .send()
        .await
        .unwrap()
}

/// What `GET /greeter/version` answers on `host`: the version, or the status.
async fn version(host: &Host) -> String {
    let r = crate::harness::client()
        .get(host.url("/greeter/version"))
        .send()
        .await
        .unwrap();
    match r.status().as_u16() {
        200 => r.json::<Value>().await.unwrap()["version"]
            .as_str()
            .unwrap()
            .to_string(),
        status => status.to_string(),
    }
}

/// Waits until every host answers `want`; how long that took.
async fn converge(hosts: &[&Host], want: &str) -> Duration {
    let started = Instant::now();
    for host in hosts {
        loop {
            let got = version(host).await;
            if got == want {
                break;
            }
            assert!(
                started.elapsed() < CONVERGE,
                "{} answers {got}, not {want}, {:?} after the change",
                host.base,
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

/// `GET /admin/plugins` on `host`: the entry of `name`.
async fn listed(host: &Host, name: &str) -> Value {
    let all: Value = admin()
        .get(host.url("/admin/plugins"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_deploys_limits_budgets_and_keys() {
    let db = PgDatabase::create().await;
    let prefix = format!("igtest:cluster:{}", hex_id());
    // C lacks the model `digits2`, so a plugin granted it cannot be served there.
    let digits2 = format!(
        "[[models]]\nname = \"digits2\"\npath = \"{}\"\n",
        model("digits/digits.onnx")
    );
    let llm = with_llm();
    // A also watches a plugins directory.
    let watched = tempfile::tempdir().unwrap();
    let a = Host::start(&format!(
        "plugins_dir = \"{}\"\n{}",
        watched.path().display(),
        config(&db.url(), &prefix, &format!("{digits2}{llm}"))
    ));
    let b = Host::start(&config(&db.url(), &prefix, &format!("{digits2}{llm}")));

    // Deploy through A: B serves it within the bound.
    assert_eq!(deploy(&a, "greeter", "greeter_v1", "").await.status(), 200);
    let deployed = converge(&[&a, &b], "v1").await;
    // An instance started later serves it as soon as it is ready.
    let c = Host::start(&config(&db.url(), &prefix, &llm));
    assert_eq!(version(&c).await, "v1", "C caught up at start-up");
    let all = [&a, &b, &c];

    // Replace through B, roll back through C, delete through A.
    assert_eq!(deploy(&b, "greeter", "greeter_v2", "").await.status(), 200);
    let replaced = converge(&all, "v2").await;
    let r = admin()
        .post(c.url("/admin/plugins/greeter/rollback"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rolled_back = converge(&all, "v1").await;
    let listing = listed(&b, "greeter").await;
    assert_eq!(listing["previous"], json!([]), "{listing:#}");
    assert_eq!(
        listing["instances"].as_array().unwrap().len(),
        3,
        "{listing:#}"
    );
    let r = admin()
        .delete(a.url("/admin/plugins/greeter"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let deleted = converge(&all, "404").await;
    println!(
        "converged on every instance: deploy {deployed:?}, replace {replaced:?}, \
         rollback {rolled_back:?}, delete {deleted:?}"
    );

    // A plugin dropped into A's watched directory is served by all; removing the file removes
    // it everywhere. (The watcher applies a file once it has stopped changing: two polls.)
    let file = watched.path().join("dropped.wasm");
    std::fs::write(&file, std::fs::read(wasm("greeter_v2")).unwrap()).unwrap();
    let path_version = |host: &Host| {
        let url = host.url("/dropped/version");
        async move {
            let r = crate::harness::client().get(url).send().await.unwrap();
            r.status().as_u16()
        }
    };
    for want in [200, 404] {
        if want == 404 {
            std::fs::remove_file(&file).unwrap();
        }
        let started = Instant::now();
        for host in all {
            while path_version(host).await != want {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{} does not answer {want} for the watched plugin",
                    host.base
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        println!(
            "watched directory: {want} everywhere after {:?}",
            started.elapsed()
        );
    }

    // A tenant's plugin count holds across instances: two uploads at once, through A and B,
    // for a tenant that may own one plugin; one is published, everywhere.
    let upload = |host: &Host, name: &str| {
        crate::harness::client()
            .put(host.url(&format!("/tenant/plugins/{name}")))
            .header("content-type", "application/wasm")
            .body(std::fs::read(wasm("greeter_v1")).unwrap())
            .send()
    };
    let (one, two) = tokio::join!(upload(&a, "first"), upload(&b, "second"));
    let mut statuses = [
        one.unwrap().status().as_u16(),
        two.unwrap().status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 403],
        "one of two uploads is within max_plugins = 1"
    );
    let started = Instant::now();
    loop {
        let mut served = 0;
        for host in all {
            for name in ["first", "second"] {
                let r = crate::harness::client()
                    .get(host.url(&format!("/t/default/{name}/version")))
                    .send()
                    .await
                    .unwrap();
                served += usize::from(r.status() == 200);
            }
        }
        if served == 3 {
            break;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "{served} of 3 instances serve it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A version one instance cannot serve is reported for that instance; the others serve it.
    let r = deploy(&a, "greeter", "greeter_v2", "?models=digits2").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    converge(&[&a, &b], "v2").await;
    let started = Instant::now();
    let instances = loop {
        let listing = listed(&a, "greeter").await;
        let instances = listing["instances"].as_array().cloned().unwrap_or_default();
        if instances.len() == 3
            && instances
                .iter()
                .all(|i| i["revision"] == listing["revision"])
        {
            break instances;
        }
        assert!(started.elapsed() < CONVERGE, "{listing:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failed: Vec<&Value> = instances
        .iter()
        .filter(|i| i["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{instances:#?}");
    assert!(
        failed[0]["instance"]
            .as_str()
            .unwrap()
            .ends_with(&c.base[c.base.rfind(':').unwrap()..]),
        "{instances:#?}"
    );
    assert!(
        failed[0]["error"].as_str().unwrap().contains("digits2"),
        "{instances:#?}"
    );
    assert_eq!(version(&c).await, "404", "C serves nothing it cannot load");
    let c_listing = listed(&c, "greeter").await;
    assert_eq!(c_listing["status"], "failed", "{c_listing:#}");

    // A limit of 10 a minute holds across the three.
    let paced = client_with(PACED_KEY);
    let mut statuses = Vec::new();
    for i in 0..30 {
        let host = all[i % 3];
        let r = paced.get(host.url("/hostile/whoami")).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("10/minute across three instances: {served} served, {limited} limited");
    assert_eq!((served, limited), (10, 20), "{statuses:?}");

    // A budget of 300 tokens holds across the three: a generation is let in only while its
    // prompt and `max_tokens` fit in what is left, whichever instance it reaches.
    let budget = client_with(BUDGET_KEY);
    let max_tokens = 40;
    let mut used = 0.0;
    let mut accepted = 0;
    for i in 0.. {
        let host = all[i % 3];
        let r = budget
            .post(host.url("/v1/chat/completions"))
            .json(
                &json!({"model": LLM, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": "Count to one hundred."}]}),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if status == 200 {
            let prompt = body["usage"]["prompt_tokens"].as_f64().unwrap();
            assert!(
                used + prompt + f64::from(max_tokens) <= 300.0,
                "let in with {used} used: {body}"
            );
            used += body["usage"]["total_tokens"].as_f64().unwrap();
            accepted += 1;
        } else {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
            // Refused on every instance now.
            for other in all {
                let r = budget
                    .post(other.url("/v1/chat/completions"))
                    .json(&json!({"model": LLM, "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": "Count to one hundred."}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 429);
            }
            break;
        }
        assert!(i < 20, "the budget never ran out");
    }
    println!("300 tokens/day across three instances: {accepted} generations, {used} tokens");
    assert!(accepted >= 3 && used <= 300.0);

    // A key revoked on A is refused on all three within a second.
    let r = admin()
        .post(a.url("/admin/tenants"))
        .json(&json!({"id": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = admin()
        .post(a.url("/admin/keys"))
        .json(&json!({"tenant": "acme"}))
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().expect("a key").to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let holder = client_with(&key);
    for host in all {
        let r = holder
            .get(host.url("/hostile/whoami"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = admin()
        .delete(a.url(&format!("/admin/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let revoked = Instant::now();
    for host in all {
        loop {
            let r = holder
                .get(host.url("/hostile/whoami"))
                .send()
                .await
                .unwrap();
            if r.status() == 401 {
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "{} still takes the revoked key",
                host.base
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "a revoked key was refused everywhere after {:?}",
        revoked.elapsed()
    );

    // A model loaded through B is loaded on A and C; unloaded through C, it is gone from all.
    let models = |host: &Host| {
        let url = host.url("/admin/models");
        async move {
            let all: Value = admin().get(url).send().await.unwrap().json().await.unwrap();
            all["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let r = admin()
        .put(b.url("/admin/models/digits3"))
        .json(&json!({"path": model("digits/digits.onnx")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for (name, loaded) in [("digits3", true), ("digits3", false)] {
        if !loaded {
            let r = admin()
                .delete(c.url(&format!("/admin/models/{name}")))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
        let started = Instant::now();
        for host in all {
            while models(host).await.contains(&name.to_string()) != loaded {
                assert!(
                    started.elapsed() < CONVERGE,
                    "{}: {name} loaded: {}",
                    host.base,
                    !loaded
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop((a, b, c));
    db.drop_it().await;
}

/// A free loopback port (a restarted instance comes back on the same one).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in front of `backends`, checking each one's `/readyz` every 200 ms.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backends: &[u16]) -> Haproxy {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server s{i} 127.0.0.1:{p} check\n"))
            .collect();
        let config = format!(
            r#"
global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend web
    bind 127.0.0.1:{port}
    default_backend infergate
backend infergate
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
{servers}"#
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy (Debian's `haproxy`; `make test-tools` installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each instance in turn gets SIGTERM and is started again, under 16 clients looping through
/// HAProxy; a stream in flight when its instance is told to stop still ends whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_behind_haproxy_loses_no_request() {
    let db = PgDatabase::create().await;
    let prefix = format!("igtest:rolling:{}", hex_id());
    let greeter = format!(
        "[[plugins]]\nname = \"greeter\"\npath = \"{}\"\n",
        wasm("greeter_v1")
    );
    let config = config(&db.url(), &prefix, &greeter);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut hosts: Vec<Option<Host>> = ports
        .iter()
        .map(|p| Some(Host::start_on(&config, &addr(*p))))
        .collect();
    let lb = Haproxy::start(&ports);
    let through = format!("http://127.0.0.1:{}", lb.port);
    // Every backend is up before the clients start.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (stop, ok, failed, failures) =
            (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        let url = format!("{through}/greeter/version");
        clients.push(tokio::spawn(async move {
            let c = crate::harness::client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{status}: {body}"));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(e.to_string());
                    }
                }
            }
        }));
    }

    for (i, port) in ports.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A stream that is under way when the instance is told to stop.
        let stream = tokio::spawn(
            crate::harness::client()
                .get(format!("http://{}/hostile/events?n=20&ms=100", addr(*port)))
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = ok.load(Ordering::Relaxed);
        let host = hosts[i].take().unwrap();
        host.terminate();
        // Not ready at once, still serving.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let direct = reqwest::Client::new();
        let ready = direct
            .get(format!("http://{}/readyz", addr(*port)))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503, "/readyz during the grace period");
        let served = crate::harness::client()
            .get(format!("http://{}/greeter/version", addr(*port)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            served.status(),
            200,
            "still serving during the grace period"
        );
        let status = tokio::task::spawn_blocking(move || host.wait_exit(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(status.success(), "instance {i} exited with {status}");
        let body = stream.await.unwrap().unwrap().text().await.unwrap();
        assert_eq!(
            body.matches("data:").count(),
            20,
            "the stream in flight ended whole: {body}"
        );
        hosts[i] = Some(
            tokio::task::spawn_blocking({
                let (config, listen) = (config.clone(), addr(*port));
                move || Host::start_on(&config, &listen)
            })
            .await
            .unwrap(),
        );
        println!(
            "instance {i} restarted; {} requests served through HAProxy meanwhile",
            ok.load(Ordering::Relaxed) - before
        );
        // HAProxy sees it up again (2 checks) before the next one goes.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling restart of 3 instances under 16 clients: {ok} served, {failed} failed");
    assert_eq!(failed, 0, "{:?}", failures.lock().unwrap());
    assert!(ok > 100, "the clients ran: {ok}");
    drop(lb);
    drop(hosts);
    db.drop_it().await;
}

/// The drain is bounded: a stream longer than `drain_timeout_ms` is cut and the host exits;
/// and a second SIGTERM ends a host at once, whatever its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_is_bounded_and_a_second_signal_is_immediate() {
    let plugins = format!(
        "[[models]]\nname = \"digits\"\npath = \"{}\"\n[[plugins]]\nname = \"hostile\"\npath = \"{}\"\nmodels = [\"digits\"]\n",
        model("digits/digits.onnx"),
        wasm("hostile")
    );
    let bounded = Host::start(&format!(
        "[server]\nshutdown_grace_ms = 0\ndrain_timeout_ms = 500\n{plugins}"
    ));
    let mut stream = crate::harness::client()
        .get(bounded.url("/hostile/events?n=100&ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap_or_default();
    assert!(!first.is_empty());
    let told = Instant::now();
    bounded.terminate();
    let status = tokio::task::spawn_blocking(move || bounded.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    let took = told.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM with a 10 s stream open and drain_timeout_ms = 500"
    );
    let mut events = String::from_utf8_lossy(&first).to_string();
    while let Ok(Some(chunk)) = stream.chunk().await {
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(events.matches("data:").count() < 100, "the stream was cut");

    let patient = Host::start(&format!("[server]\nshutdown_grace_ms = 60000\n{plugins}"));
    patient.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(patient.alive(), "within its grace period");
    let told = Instant::now();
    patient.terminate();
    let status = tokio::task::spawn_blocking(move || patient.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(told.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(130), "{status}");
}
