//! The request pipeline's layers seen from outside: every answer is counted by status, early
//! refusals included; a global in-flight limit sheds a burst fast with 503 `overloaded`; a request
//! with no answer within the request timeout gets 504 `request_timeout`; a quota
//! rule limits a host endpoint (`/oauth/token`) like a plugin route.

use std::time::{Duration, Instant};

use crate::harness::{Host, client, client_with, expect_error, get_ok, standard_config};

async fn scrape(host: &Host) -> String {
    crate::harness::admin()
        .get(host.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `infergate_request_duration_seconds_count` of one label set, 0 when absent.
fn count(metrics: &str, plugin: &str, route: &str, status: u16) -> u64 {
    let series = format!(
        "infergate_request_duration_seconds_count{{plugin=\"{plugin}\",route=\"{route}\",status=\"{status}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn early_refusals_show_in_metrics_by_status() {
    let host = Host::start(&standard_config(
        r#"
[[auth.api_keys]]
id = "narrow"
key = "narrow-key-0123456789abcdef"
scopes = ["plugin:hello"]
"#,
    ));
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(host.url("/digits/classify"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = client()
        .get(host.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    let r = client_with("narrow-key-0123456789abcdef")
        .post(host.url("/digits/classify"))
        .json(&serde_json::json!({"pixels": vec![0; 64]}))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden").await;
    let r = client()
        .get(host.url("/hostile/spin"))
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "method_not_allowed").await;

    let metrics = scrape(&host).await;
    assert_eq!(
        count(&metrics, "digits", "POST /classify", 401),
        1,
        "{metrics}"
    );
    assert_eq!(count(&metrics, "", "", 404), 1, "{metrics}");
    assert_eq!(count(&metrics, "", "", 405), 1, "{metrics}");
    assert_eq!(count(&metrics, "digits", "POST /classify", 403), 1);
    // The host's own endpoints are counted under their route, with no plugin.
    assert!(count(&metrics, "", "GET /metrics", 200) <= 1);
    let again = scrape(&host).await;
    assert_eq!(count(&again, "", "GET /metrics", 200), 1, "{again}");
}

#[tokio::test]
async fn a_burst_beyond_the_in_flight_limit_is_shed_fast() {
    const LIMIT: usize = 4;
    let host = Host::start(&format!(
        "[server]\nmax_in_flight = {LIMIT}\nretry_after_s = 2\n{}",
        standard_config("")
    ));
    let c = client();
    let sleep = Duration::from_millis(2000);
    let started = Instant::now();
    let burst: Vec<_> = (0..4 * LIMIT)
        .map(|_| {
            let (c, url) = (c.clone(), host.url("/hostile/sleep?ms=2000"));
            tokio::spawn(async move {
                let sent = Instant::now();
                let r = c.get(url).send().await.unwrap();
                (r, sent.elapsed())
            })
        })
        .collect();
    // Probes answer under overload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    let (mut served, mut shed) = (0, 0);
    for task in burst {
        let (r, took) = task.await.unwrap();
        match r.status().as_u16() {
            200 => {
                served += 1;
                assert!(took >= sleep, "{took:?}");
            }
            503 => {
                shed += 1;
                assert_eq!(r.headers()["retry-after"], "2");
                expect_error(r, 503, "overloaded").await;
                assert!(
                    took < sleep / 2,
                    "a shed request is answered at once: {took:?}"
                );
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!((served, shed), (LIMIT, 3 * LIMIT));
    // The places are given back: the next request is served.
    let r = c
        .get(host.url("/hostile/sleep?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = scrape(&host).await;
    assert_eq!(count(&metrics, "", "", 503), 3 * LIMIT as u64, "{metrics}");
    println!("burst of {} answered in {:?}", 4 * LIMIT, started.elapsed());
}

#[tokio::test]
async fn a_request_without_a_head_in_time_gets_504_and_frees_its_place() {
    let host = Host::start(&format!(
        "[server]\nmax_in_flight = 1\nrequest_timeout_ms = 500\n{}",
        standard_config("")
    ));
    let c = client();
    let sent = Instant::now();
    let r = c
        .get(host.url("/hostile/sleep?ms=5000"))
        .send()
        .await
        .unwrap();
    let took = sent.elapsed();
    expect_error(r, 504, "request_timeout").await;
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    // Its one in-flight place is free again: the next request is served, not shed.
    get_ok(&c, &host.url("/hostile/sleep?ms=10")).await;
    let metrics = scrape(&host).await;
    assert_eq!(count(&metrics, "", "", 504), 1, "{metrics}");
}

#[tokio::test]
async fn a_rule_on_the_token_endpoint_limits_it_like_any_route() {
    let host = Host::start(&standard_config(
        r#"
[[limits.rules]]
per = "ip"
limit = "3/minute"
route = "/oauth/token"
"#,
    ));
    let c = reqwest::Client::new();
    let token = || {
        c.post(host.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "env"),
                ("client_secret", crate::harness::API_KEY),
            ])
            .send()
    };
    for _ in 0..3 {
        let r = token().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
    }
    let r = token().await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "rate_limited").await;
    // Other host endpoints and plugin routes are not counted by that rule.
    for _ in 0..5 {
        let r = client()
            .post(host.url("/hello/greet"))
            .json(&serde_json::json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let metrics = scrape(&host).await;
    assert_eq!(
        count(&metrics, "", "POST /oauth/token", 429),
        1,
        "{metrics}"
    );
}
