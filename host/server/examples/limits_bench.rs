//! The cost of a limit check: `cargo run --release -p infergate --example limits_bench`.
//!
//! Times `Quotas::admit` (plus dropping the admission) for a request under one request-rate
//! rule and under three limits at once (rate per key, rate per tenant, tokens per tenant), in
//! memory and in Redis (`REDIS_URL`, default the local one): sequentially (latency per check)
//! and from 32 concurrent tasks (throughput). Figures are medians of 5 runs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infergate::config::{Config, LimitsConfig};
use infergate::quota::{Quotas, Subject};

fn limits(store: &str, rules: &str) -> LimitsConfig {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let text = format!(
        "[limits]\nstore = \"{store}\"\nredis_url = \"{redis}\"\nkey_prefix = \"igbench:{}\"\n{rules}",
        std::process::id()
    );
    Config::parse(&text, std::path::Path::new("."))
        .expect("bench config")
        .limits
}

const ONE: &str = "[[limits.rules]]\nper = \"key\"\nlimit = \"1000000000/second\"\n";
const THREE: &str = "[[limits.rules]]\nper = \"key\"\nlimit = \"1000000000/second\"\n\
[[limits.rules]]\nper = \"tenant\"\nlimit = \"1000000000/second\"\n\
[[limits.rules]]\nper = \"tenant\"\nlimit = \"1000000000000 tokens/day\"\n";

async fn admit(q: &Quotas, key: &str) {
    let admission = q
        .admit(&Subject {
            tenant: "acme",
            key_id: key,
            ip: IpAddr::from([127, 0, 0, 1]),
            plugin: "digits",
            route: "/classify",
            key_limits: &[],
            tenant_limits: &[],
            request_id: "bench",
            lease: Duration::from_secs(30),
        })
        .await;
    assert!(admission.is_ok(), "the bench limits must not refuse");
}

/// Seconds per check: sequential, then from 32 concurrent tasks (per check, amortised).
async fn measure(q: Arc<Quotas>, n: usize) -> (f64, f64) {
    for i in 0..n / 10 {
        admit(&q, &format!("k{}", i % 100)).await;
    }
    let started = Instant::now();
    for i in 0..n {
        admit(&q, &format!("k{}", i % 100)).await;
    }
    let sequential = started.elapsed().as_secs_f64() / n as f64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..n / 32 {
                    admit(&q, &format!("k{}", (i + t) % 100)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let concurrent = started.elapsed().as_secs_f64() / (n / 32 * 32) as f64;
    (sequential, concurrent)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    println!(
        "{:<28} {:>16} {:>22}",
        "limit check", "sequential", "32 concurrent tasks"
    );
    for (store, n) in [("memory", 200_000), ("redis", 5_000)] {
        for (label, rules) in [("1 rate", ONE), ("rate+rate+tokens", THREE)] {
            let q = Arc::new(Quotas::new(&limits(store, rules)).expect("limits"));
            let (mut seq, mut conc) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let (s, c) = measure(q.clone(), n).await;
                seq.push(s);
                conc.push(c);
            }
            let show = |s: f64| {
                if s < 1e-6 {
                    format!("{:.0} ns", s * 1e9)
                } else {
                    format!("{:.1} µs", s * 1e6)
                }
            };
            println!(
                "{:<28} {:>16} {:>22}",
                format!("{store}, {label}"),
                show(median(seq)),
                show(median(conc))
            );
        }
    }
    // Without any rule: what every request pays when no limit applies.
    let q = Arc::new(Quotas::new(&limits("memory", "")).expect("limits"));
    let (s, _) = measure(q, 200_000).await;
    println!("{:<28} {:>16}", "no limits", format!("{:.0} ns", s * 1e9));
}
