//! Warm instances (`reuse = N`): one instance serves several requests of one tenant, never
//! another tenant's, and is thrown away after a trap, a limit, an error answer or N requests.
//! `hostile`'s `/memo` keeps the tenant of every request it served in the instance's memory.

use serde_json::{Value, json};

use crate::harness::{Host, client, client_with, get_ok, standard_config, wasm};

const OTHER_KEY: &str = "other-key-0123456789abcdef";

fn warm_host() -> Host {
    Host::start(&standard_config(&format!(
        r#"
[[plugins]]
name = "warm"
path = "{hostile}"
models = ["digits"]
reuse = 5
[plugins.limits]
memory_bytes = 33554432
cpu_ms = 500
wall_ms = 3000

[[auth.api_keys]]
id = "other"
key = "{OTHER_KEY}"
tenant = "other"
"#,
        hostile = wasm("hostile"),
    )))
}

async fn memo(c: &reqwest::Client, host: &Host, plugin: &str) -> Value {
    get_ok(c, &host.url(&format!("/{plugin}/memo"))).await
}

fn served(memo: &Value) -> u64 {
    memo["served"].as_u64().unwrap()
}

#[tokio::test]
async fn a_warm_instance_serves_one_tenant_and_no_other() {
    let host = warm_host();
    let (mine, other) = (client(), client_with(OTHER_KEY));

    // One tenant in turn: the same instance, up to `reuse` requests, then a fresh one.
    let runs = serial(&mine, &host, 7).await;
    assert_eq!(runs, [1, 2, 3, 4, 5, 1, 2], "five requests per instance");

    // The other tenant never gets an instance the first one used, though one waits idle.
    let first = memo(&other, &host, "warm").await;
    assert_eq!(first["tenants"], json!(["other"]), "{first}");
    let again = memo(&other, &host, "warm").await;
    assert_eq!(again["tenants"], json!(["other", "other"]), "{again}");
    assert_eq!(served(&memo(&mine, &host, "warm").await), 3);

    // Many requests of both at once: every instance answers for one tenant only.
    let calls = (0..40).map(|i| {
        let (c, tenant) = if i % 2 == 0 {
            (mine.clone(), "default")
        } else {
            (other.clone(), "other")
        };
        let url = host.url("/warm/memo");
        async move {
            let body: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            (tenant, body)
        }
    });
    for (tenant, body) in futures::future::join_all(calls).await {
        let tenants = body["tenants"].as_array().unwrap();
        assert!(tenants.iter().all(|t| t == tenant), "{tenant}: {body}");
        assert!(served(&body) <= 5, "{body}");
    }

    // Without `reuse`, every request gets a fresh instance.
    for _ in 0..3 {
        assert_eq!(served(&memo(&mine, &host, "hostile").await), 1);
    }
}

/// `n` requests one after the other; what each answered as `served`.
async fn serial(c: &reqwest::Client, host: &Host, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(served(&memo(c, host, "warm").await));
    }
    out
}

#[tokio::test]
async fn a_trap_a_limit_or_an_error_answer_discards_the_instance() {
    let host = warm_host();
    let c = client();
    for (what, method, path, status) in [
        ("a panic", "POST", "/warm/panic", 500),
        ("the CPU limit", "POST", "/warm/spin", 504),
        ("the memory limit", "POST", "/warm/grow", 500),
        ("the wall-clock limit", "GET", "/warm/sleep?ms=10000", 504),
        ("an error answer", "GET", "/warm/status?code=500", 500),
        ("an error answer (4xx)", "GET", "/warm/status?code=418", 418),
    ] {
        assert_eq!(served(&memo(&c, &host, "warm").await), 1, "before {what}");
        assert_eq!(served(&memo(&c, &host, "warm").await), 2, "before {what}");
        let r = c
            .request(method.parse().unwrap(), host.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{what}");
        assert_eq!(
            served(&memo(&c, &host, "warm").await),
            1,
            "after {what}, the next request gets a fresh instance"
        );
        // Settle the pool: the instance just used serves up to 5; start over with a new one.
        for _ in 0..4 {
            memo(&c, &host, "warm").await;
        }
    }
}

/// What a request in a warm instance reports is charged to it, as from a fresh one: the
/// instance's usage is settled at the end of each request, not when it is dropped.
#[tokio::test]
async fn each_request_in_a_warm_instance_is_charged_its_own_usage() {
    let host = warm_host();
    let other = client_with(OTHER_KEY);
    for _ in 0..5 {
        let r = other.get(host.url("/warm/whoami")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // One instance served all five (and retired after the fifth, reuse = 5): four of them
    // were settled while it stayed warm.
    assert_eq!(served(&memo(&other, &host, "warm").await), 1);
    let report: Value = crate::harness::admin()
        .get(host.url("/admin/usage/other"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // `/whoami` reports 3 tokens in and 4 out; `/memo` none.
    assert_eq!(report["usage"]["requests"].as_u64(), Some(6), "{report}");
    assert_eq!(report["usage"]["tokens_in"].as_u64(), Some(15), "{report}");
    assert_eq!(report["usage"]["tokens_out"].as_u64(), Some(20), "{report}");
}
