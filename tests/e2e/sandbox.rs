//! Hostile plugins: each misbehaviour gets its error code, and never hurts the host or the
//! requests of another plugin running at the same time.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Host, client, expect_error, shared};

async fn digits_ok(c: &reqwest::Client, base: &str) -> Duration {
    let started = Instant::now();
    let r = c
        .post(format!("{base}/digits/classify"))
        .json(&json!({"pixels": vec![3; 64]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a good request to another plugin must succeed"
    );
    started.elapsed()
}

#[tokio::test]
async fn infinite_loop_hits_the_cpu_limit_without_blocking_others() {
    let host = shared();
    let c = client();
    let spin = tokio::spawn({
        let (c, url) = (c.clone(), host.url("/hostile/spin"));
        async move { c.post(url).json(&json!({})).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        digits_ok(&c, &host.base).await;
    }
    let e = expect_error(spin.await.unwrap(), 504, "plugin_timeout").await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("CPU"),
        "{e}"
    );
}

#[tokio::test]
async fn sleeping_past_the_wall_clock_limit_times_out() {
    let host = shared();
    let c = client();
    let started = Instant::now();
    let r = c
        .get(host.url("/hostile/sleep?ms=20000"))
        .send()
        .await
        .unwrap();
    expect_error(r, 504, "plugin_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 3 s wall limit applies"
    );
    let r = c
        .get(host.url("/hostile/sleep?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn memory_bomb_is_contained() {
    let host = shared();
    let c = client();
    for _ in 0..3 {
        let bomb = c.post(host.url("/hostile/grow")).json(&json!({})).send();
        let (r, _) = tokio::join!(bomb, digits_ok(&c, &host.base));
        expect_error(r.unwrap(), 500, "plugin_out_of_memory").await;
    }
}

#[tokio::test]
async fn panic_is_a_trap() {
    let host = shared();
    let r = client()
        .post(host.url("/hostile/panic"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(r, 500, "plugin_trap").await;
}

#[tokio::test]
async fn oversized_response_is_cut() {
    let host = shared();
    let c = client();
    let r = c.get(host.url("/hostile/huge?mb=4")).send().await.unwrap();
    expect_error(r, 502, "plugin_response_too_large").await;
}

#[tokio::test]
async fn no_filesystem_environment_or_network() {
    let host = shared();
    let c = client();
    let get = |path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let file = get(host.url("/hostile/file")).await;
    assert!(file["read"].is_null(), "{file}");
    assert!(file["error"].is_string(), "{file}");
    let env = get(host.url("/hostile/env")).await;
    assert_eq!(env["vars"], json!([]), "{env}");

    // A real listening socket on loopback that the plugin must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = get(host.url(&format!("/hostile/socket?port={port}"))).await;
    assert_eq!(socket["connected"], false, "{socket}");
    let outbound = get(host.url(&format!("/hostile/http?port={port}"))).await;
    assert_eq!(outbound["sent"], false, "{outbound}");
    assert!(listener.accept().is_err(), "nothing may have connected");
}

#[tokio::test]
async fn plugins_see_identity_not_credentials() {
    let host = shared();
    let r = client()
        .get(host.url("/hostile/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ctx: Value = r.json().await.unwrap();
    assert_eq!(ctx["tenant"], "default", "{ctx}");
    assert_eq!(ctx["key_id"], "env", "{ctx}");
    assert_eq!(ctx["route"], "/whoami", "{ctx}");
    assert!(
        !ctx.to_string().contains(crate::harness::API_KEY),
        "the key never reaches a plugin"
    );
}

#[tokio::test]
async fn ungranted_model_is_not_found() {
    let host = shared();
    let c = client();
    let r = c
        .post(host.url("/hostile/model"))
        .json(&json!({"name": "all-minilm-l6-v2"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "model_not_found").await;
    let r = c
        .post(host.url("/hostile/model"))
        .json(&json!({"name": "digits"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_host_survives_a_storm_of_bad_plugins() {
    let host = shared();
    let c = client();
    let mut bad = Vec::new();
    for path in ["spin", "grow", "panic", "spin", "grow", "panic"] {
        let (c, url) = (c.clone(), host.url(&format!("/hostile/{path}")));
        bad.push(tokio::spawn(async move {
            c.post(url)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for _ in 0..20 {
        digits_ok(&c, &host.base).await;
    }
    for task in bad {
        let status = task.await.unwrap();
        assert!(
            status == 500 || status == 504,
            "bad plugin answered {status}"
        );
    }
    let r = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(host.alive(), "the host never exits");
}

#[tokio::test]
async fn streaming_routes_pass_events_through_as_they_are_written() {
    let host = shared();
    let started = Instant::now();
    let mut r = client()
        .get(host.url("/hostile/events?n=5&ms=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let first = started.elapsed();
    while let Some(chunk) = r.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let total = started.elapsed();
    println!("streaming: first event after {first:?}, all 5 after {total:?}");
    assert_eq!(
        body,
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
    );
    assert!(total >= Duration::from_millis(1200), "{total:?}");
    assert!(
        first * 3 < total,
        "the first event arrives before the rest are written: {first:?} of {total:?}"
    );
}

#[tokio::test]
async fn a_stream_is_cut_at_the_wall_clock_limit() {
    let host = shared();
    let started = Instant::now();
    // 100 events 100 ms apart would take 10 s; the hostile plugin's wall limit is 3 s.
    let mut r = client()
        .get(host.url("/hostile/events?n=100&ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A server-sent-event stream cut by the host ends with an `error` event carrying the
    // usual error object: to an SSE client, a cut stream never looks complete.
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        body.extend_from_slice(&chunk);
    }
    let took = started.elapsed();
    let body = String::from_utf8(body).unwrap();
    let events = body.matches("data: ").count() - 1;
    println!("stream cut after {events} events, {took:?}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("event: error\ndata: ") && last.contains("\"code\":\"plugin_timeout\""),
        "a cut stream must not look complete: {last:?}"
    );
    assert!(
        events < 100 && took < Duration::from_secs(8),
        "{events} events in {took:?}"
    );
    digits_ok(&client(), &host.base).await;
}

/// A stream whose plugin hits its CPU limit after the head was sent (the guest's store is
/// dropped, which ends the body) ends in that error too, never as a finished stream.
#[tokio::test]
async fn a_stream_whose_plugin_traps_ends_in_the_error() {
    let host = shared();
    let r = client()
        .get(host.url("/hostile/events?n=3&ms=10&then=spin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(
        body.matches("data: ").count(),
        4,
        "3 events and the error: {body}"
    );
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("event: error\ndata: ")
            && last.contains("\"code\":\"plugin_timeout\"")
            && last.contains("CPU"),
        "a stream cut by the CPU limit must not look complete: {body:?}"
    );
    digits_ok(&client(), &host.base).await;
}

#[tokio::test]
async fn a_plugin_answers_only_with_final_statuses() {
    let host = shared();
    let c = client();
    for code in [100, 101, 103, 199, 600, 999] {
        let r = c
            .get(host.url(&format!("/hostile/status?code={code}")))
            .send()
            .await
            .unwrap();
        let e = expect_error(r, 502, "plugin_error").await;
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&code.to_string()),
            "{e}"
        );
    }
    for code in [200, 204, 418] {
        let r = c
            .get(host.url(&format!("/hostile/status?code={code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code);
    }
    digits_ok(&c, &host.base).await;
}

/// `host.respond` (the one-call answer of interpreted plugins) refuses what `wasi:http` would:
/// a bad status, a header that is not HTTP, a header the host sets, and a second answer.
#[tokio::test]
async fn a_plugin_answers_once_through_host_respond() {
    let host = shared();
    let c = client();
    let r = c.get(host.url("/hostile/respond")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let body: Value = r.json().await.unwrap();
    let refused = body["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 4, "{body}");
    for (reason, wanted) in refused
        .iter()
        .zip(["status", "name", "value", "host's to set"])
    {
        assert!(reason.as_str().unwrap().contains(wanted), "{body}");
    }
    digits_ok(&c, &host.base).await;
}

/// What a plugin logs cannot pass for the host's own lines: in text logs its message and fields
/// are escaped (no line breaks, no escape sequences), in JSON logs they are strings of one
/// event; and a log that is not a terminal carries no colour codes.
#[tokio::test]
async fn a_plugin_cannot_forge_host_log_lines() {
    const FORGED: &str =
        "2026-01-01T00:00:00.000000Z  INFO infergate: plugin deployed plugin=\"evil\"";
    let line = json!({
        "message": format!("innocent\n{FORGED}\r\n\u{1b}[2K\u{85}tail"),
        "fields": {"note": format!("x\n{FORGED}"), "key\nwith break": "v"},
    });

    let text = Host::start(&crate::harness::standard_config(""));
    let r = client()
        .post(text.url("/hostile/log"))
        .json(&line)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = text.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("innocent")).collect();
    assert_eq!(ours.len(), 1, "{log}");
    assert!(
        ours[0].contains(r"innocent\n2026-01-01T00:00:00.000000Z"),
        "{}",
        ours[0]
    );
    assert!(ours[0].contains(r"\r\n\u{1b}[2K\u{85}tail"), "{}", ours[0]);
    assert!(ours[0].contains(r"note=x\n2026-01-01"), "{}", ours[0]);
    assert!(ours[0].contains(r"key\nwith break=v"), "{}", ours[0]);
    for l in log.lines() {
        assert!(!l.starts_with("2026-01-01T00:00:00"), "a forged line: {l}");
        assert!(
            !l.starts_with("tail") && !l.starts_with("with break"),
            "{l}"
        );
    }

    let json_host = Host::start_with_env(
        &crate::harness::standard_config(""),
        &[("INFERGATE_LOG_FORMAT", "json")],
    );
    let r = client()
        .post(json_host.url("/hostile/log"))
        .json(&line)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = json_host.log_text();
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let ours: Vec<&Value> = events.iter().filter(|e| e["target"] == "plugin").collect();
    assert_eq!(ours.len(), 1, "{log}");
    assert_eq!(ours[0]["fields"]["message"], line["message"]);
    assert_eq!(ours[0]["fields"]["plugin"], "hostile");
    assert_eq!(ours[0]["level"], "WARN");

    // A format that does not exist is refused at start-up, naming it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("INFERGATE_LOG_FORMAT", "jsonl")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFERGATE_LOG_FORMAT is `jsonl`"),
        "{stderr}"
    );
}
