//! CORS: a page of another origin calls the host from a browser when `[cors]` lets it, and
//! only then. Preflights are answered before authentication; every answer to an allowed
//! origin, errors included, carries the headers.

use std::process::Command;

use serde_json::json;

use crate::harness::{API_KEY, Host, client, expect_error, shared, standard_config};

const ORIGIN: &str = "https://app.example";

#[tokio::test]
async fn preflights_are_answered_before_authentication_and_answers_carry_the_headers() {
    let host = Host::start(&standard_config(&format!(
        "[cors]\nallowed_origins = [\"{ORIGIN}\"]\n"
    )));
    let preflight = |host: &Host, origin: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, host.url("/digits/classify"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    // No credential: a preflight never carries one.
    let r = preflight(&host, ORIGIN).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert_eq!(h["access-control-max-age"], "600");

    // The call itself, and a refusal: both readable by the page.
    let r = client()
        .post(host.url("/digits/classify"))
        .header("origin", ORIGIN)
        .json(&json!({"pixels": vec![3; 64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let r = reqwest::Client::new()
        .post(host.url("/digits/classify"))
        .header("origin", ORIGIN)
        .json(&json!({"pixels": vec![3; 64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    expect_error(r, 401, "unauthorized").await;

    // Another origin gets no grant; neither does anyone from a host without `[cors]`.
    let r = preflight(&host, "https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = preflight(shared(), ORIGIN).await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

/// A page that calls the host named in its query (`?host=http://...`) with `fetch` and an API
/// key, and writes what it saw into itself.
fn page() -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const host = new URLSearchParams(location.search).get("host");
fetch(host + "/digits/classify", {{
  method: "POST",
  headers: {{"Authorization": "Bearer {API_KEY}", "Content-Type": "application/json"}},
  body: JSON.stringify({{pixels: Array(64).fill(3)}}),
}})
  .then(r => r.json().then(j => "status " + r.status + " id " + r.headers.get("x-request-id") + " " + JSON.stringify(j)))
  .catch(e => "blocked: " + e)
  .then(text => {{ document.getElementById("out").textContent = text; }});
</script></body></html>"#
    )
}

/// Serves `html` at `/` on a loopback port of its own; returns its origin.
async fn serve_page(html: String) -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    format!("http://127.0.0.1:{}", crate::harness::serve(app).await)
}

/// The page's `#out` once headless Chromium has run it.
fn run_in_chromium(chromium: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    let start = dom
        .find("<pre id=\"out\">")
        .map(|i| i + "<pre id=\"out\">".len());
    match start.and_then(|s| dom[s..].find("</pre>").map(|e| dom[s..s + e].to_string())) {
        Some(text) => text,
        None => panic!(
            "no page from chromium:\n{dom}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Chromium, when installed (required in CI: `.ci/run` installs it).
fn chromium() -> Option<String> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI requires chromium (apt-get install chromium; .ci/run does)"
        );
        eprintln!("skipping the browser test: no chromium");
    }
    found.map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_of_another_origin_calls_the_host_only_with_cors() {
    let Some(chromium) = chromium() else {
        return;
    };
    let origin = serve_page(page()).await;
    let with = Host::start(&standard_config(&format!(
        "[cors]\nallowed_origins = [\"{origin}\"]\n"
    )));
    for (host, allowed) in [(&with, true), (shared(), false)] {
        let url = format!("{origin}/?host={}", host.base);
        let chromium = chromium.clone();
        let text = tokio::task::spawn_blocking(move || run_in_chromium(&chromium, &url))
            .await
            .unwrap();
        println!("{} (cors {allowed}): {text}", host.base);
        if allowed {
            // The page read the answer, and an exposed header.
            assert!(text.starts_with("status 200 id "), "{text}");
            assert!(!text.starts_with("status 200 id null"), "{text}");
            assert!(text.contains("\"digit\""), "{text}");
        } else {
            assert!(text.starts_with("blocked"), "{text}");
        }
    }
}
