//! Starts the real `infergate` binary on a free loopback port and talks to it over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const API_KEY: &str = "test-key-0123456789abcdef";
pub const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Directory of the plugins built by the host's build script.
pub fn wasm(name: &str) -> String {
    format!("{}/{name}.wasm", env!("INFERGATE_WASM_DIR"))
}

pub fn model(path: &str) -> String {
    root().join("models").join(path).display().to_string()
}

/// A running host; killed when dropped. Its log goes to a file of its own, and a test that
/// fails prints the end of it (so a failure shows what its host said, and only that host).
pub struct Host {
    pub base: String,
    child: std::sync::Mutex<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Starts a host with `config` (TOML, without `listen`) and waits until it is ready.
    pub fn start(config: &str) -> Host {
        Self::start_with_cache(config, &root().join("target/e2e-cache"))
    }

    /// Like [`Host::start`], with its own compiled-component cache directory.
    pub fn start_with_cache(config: &str, cache: &Path) -> Host {
        Self::start_with(config, cache, &[])
    }

    /// Like [`Host::start`], with more environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Host {
        Self::start_with(config, &root().join("target/e2e-cache"), env)
    }

    /// Like [`Host::start`], listening on `listen` (a restarted instance keeps its address).
    pub fn start_on(config: &str, listen: &str) -> Host {
        Self::start_listening(config, &root().join("target/e2e-cache"), &[], listen)
    }

    fn start_with(config: &str, cache: &Path, env: &[(&str, &str)]) -> Host {
        Self::start_listening(config, cache, env, "127.0.0.1:0")
    }

    fn start_listening(config: &str, cache: &Path, env: &[(&str, &str)], listen: &str) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("infergate.toml");
        let config = format!("cache_dir = \"{}\"\n{config}", cache.display());
        std::fs::write(&path, config).expect("writing config");
        let log = dir.path().join("host.log");
        let log_file = std::fs::File::create(&log).expect("creating the host log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(["serve", "--listen", listen, "--config"])
            .arg(&path)
            .env("INFERGATE_API_KEY", API_KEY)
            .env("INFERGATE_ADMIN_KEY", ADMIN_KEY)
            .env("INFERGATE_LOG", "info,infergate_runtime=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("starting infergate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let Some(line) = lines.next() else {
                panic!(
                    "infergate exited before listening:\n{}",
                    tail(&log, LOG_TAIL_LINES)
                );
            };
            let line = line.expect("reading stdout");
            if let Some(addr) = line.strip_prefix("infergate listening on ") {
                break addr.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let host = Host {
            base,
            child: std::sync::Mutex::new(child),
            log,
            _dir: dir,
        };
        // Generous: a host whose plugins are interpreted (18 MB Python components) compiles each
        // for 7-20 s on a busy 2-core machine before it is ready.
        host.wait_ready(Duration::from_secs(300));
        host
    }

    fn wait_ready(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "infergate exited while loading: {status}\n{}",
                    tail(&self.log, LOG_TAIL_LINES)
                );
            }
            if raw_get(&self.base, "/readyz").is_some_and(|s| s == 200) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "infergate not ready after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the host has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).expect("reading the host log")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// For a host kept in a static, which is never dropped: it dies with the test process.
    pub fn die_with_tests(&self) {
        kill_with_parent(self.child.lock().unwrap().id());
    }

    /// Sends SIGTERM (what an orchestrator does); the host shuts down gracefully.
    pub fn terminate(&self) {
        let pid = self.child.lock().unwrap().id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to end; its exit status.
    pub fn wait_exit(&self, timeout: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "infergate still running {timeout:?} after it was told to stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the host process runs.
    pub fn alive(&self) -> bool {
        self.child
            .lock()
            .unwrap()
            .try_wait()
            .expect("try_wait")
            .is_none()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // Captured by the test harness and shown with the failure.
            println!(
                "---- the last {LOG_TAIL_LINES} lines of the host's log ----\n{}",
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
    }
}

const LOG_TAIL_LINES: usize = 40;

/// The last `n` lines of the file at `path`.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A minimal blocking GET returning the status code (used before any async runtime exists).
fn raw_get(base: &str, path: &str) -> Option<u16> {
    let addr = base.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The host most tests share: every fixture and first-party plugin, started once. It lives in
/// a process-wide static and is killed when the test binary exits (parent-death signal).
pub fn shared() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let host = Host::start(&standard_config(""));
        host.die_with_tests();
        host
    })
}

/// Kills `pid` when this test process exits, through a tiny watchdog process.
fn kill_with_parent(pid: u32) {
    let me = std::process::id();
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// The embedded default (`host/server/src/default.toml`: the first-party plugins and bundled
/// models) with its paths made absolute and `extra` appended.
pub fn embedded_default(extra: &str) -> String {
    let text = std::fs::read_to_string(root().join("host/server/src/default.toml")).unwrap();
    let models = root().join("models");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("listen"))
        .map(|l| {
            l.replace(
                "path = \"models/",
                &format!("path = \"{}/", models.display()),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!("{text}\n\n{extra}")
}

/// Models and plugins of the standard test host; `extra` is appended.
pub fn standard_config(extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "digits"
path = "{digits}"
concurrency = 2

[[models]]
name = "all-minilm-l6-v2"
path = "{minilm}"
concurrency = 2
max_batch = 64

[[plugins]]
name = "digits"
path = "{digits_wasm}"
models = ["digits"]

[[plugins]]
name = "embed"
path = "{embed_wasm}"
models = ["all-minilm-l6-v2"]

[[plugins]]
name = "hello"
path = "{hello_wasm}"

[[plugins]]
name = "hostile"
path = "{hostile_wasm}"
models = ["digits"]
[plugins.limits]
memory_bytes = 33554432
cpu_ms = 500
wall_ms = 3000
max_request_bytes = 4096
max_response_bytes = 1048576
{extra}
"#,
        digits = model("digits/digits.onnx"),
        minilm = model("minilm/model.onnx"),
        digits_wasm = wasm("digits"),
        embed_wasm = wasm("embed"),
        hello_wasm = wasm("hello"),
        hostile_wasm = wasm("hostile"),
    )
}

/// Serves `app` on a loopback port of its own for the rest of the test; returns the port.
pub async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// An HTTP client with the test API key.
pub fn client() -> reqwest::Client {
    client_with(API_KEY)
}

/// An HTTP client with the admin key.
pub fn admin() -> reqwest::Client {
    client_with(ADMIN_KEY)
}

/// An HTTP client with `key` as its bearer credential.
pub fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Asserts `response` is the standard JSON error with `status` and `code`; returns the body.
pub async fn expect_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    let got = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("every response has x-request-id");
    let text = response.text().await.unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    assert_eq!(got, status, "status for {body}");
    assert_eq!(body["error"]["code"], code, "code in {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    assert_eq!(
        body["error"]["request_id"],
        request_id.as_str(),
        "request_id in {body}"
    );
    body
}

/// GETs `url`, which must answer 200, and reads its JSON body.
pub async fn get_ok(c: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().await.unwrap()
}

/// Sends a request that must get an answer and reads its body: the tests' common
/// `send().await.unwrap()` then `json()`/`text()` `.await.unwrap()`.
pub trait Fetch {
    async fn fetch_json<T: serde::de::DeserializeOwned>(self) -> T;
    async fn fetch_text(self) -> String;
}

impl Fetch for reqwest::RequestBuilder {
    async fn fetch_json<T: serde::de::DeserializeOwned>(self) -> T {
        self.send().await.unwrap().json().await.unwrap()
    }

    async fn fetch_text(self) -> String {
        self.send().await.unwrap().text().await.unwrap()
    }
}

/// A fresh PostgreSQL database for one test, dropped at the end. The server is the local one
/// (`INFERGATE_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`, then user
/// `root`); each test makes its own database there, so parallel runs never collide.
pub struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    async fn connect() -> (String, sqlx::PgConnection) {
        use sqlx::Connection as _;
        let candidates = match std::env::var("INFERGATE_TEST_POSTGRES") {
            Ok(url) => vec![url],
            Err(_) => vec![
                "postgres://postgres@127.0.0.1:5432/test".to_string(),
                "postgres://root@127.0.0.1:5432/test".to_string(),
            ],
        };
        let mut errors = Vec::new();
        for url in candidates {
            match sqlx::PgConnection::connect(&url).await {
                Ok(conn) => return (url, conn),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        panic!("no PostgreSQL to test with: {errors:?}");
    }

    pub async fn create() -> PgDatabase {
        let (admin_url, mut conn) = Self::connect().await;
        let name = format!("ig_test_{}", hex_id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let server = admin_url.rsplit_once('/').unwrap().0.to_string();
        PgDatabase { server, name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    pub async fn drop_it(self) {
        let (_, mut conn) = Self::connect().await;
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await;
    }
}

pub fn hex_id() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}
