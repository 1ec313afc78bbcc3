//! Metrics: every request (count and latency to the response head, by plugin, route and status;
//! refusals show with their status, early ones with empty labels), the models' queues and compute time (a total
//! and recent percentiles), language models' generations (time to first token and between
//! tokens, OpenTelemetry `gen_ai` names; tokens by tenant, plugin and model), and limit store
//! errors, rendered as Prometheus text at `/metrics`.
//! Requests are recorded once each by the metrics layer (`pipeline::metrics`).
//! Log lines: [`logs`]. Traces (spans exported over OTLP, `traceparent`): [`trace`].

pub mod logs;
pub mod trace;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use infergate_nn::llm::LlmStats;
use infergate_nn::{ModelStats, RECENT_COMPUTES};

use crate::registry::ModelInfo;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Request histograms are kept in this many shards; a thread records into one of its own.
const SHARDS: usize = 16;

#[derive(Default)]
pub struct Metrics {
    /// (plugin, route, status) → latency histogram, in shards: each thread records into its
    /// own (a lock nobody else takes but a scrape), so the worker threads never wait for each
    /// other or pass one cache line back and forth per request. A scrape sums them.
    shards: [Padded<Mutex<Shard>>; SHARDS],
    /// The empty label of answers given before any route was known.
    unrouted: Arc<str>,
}

/// One shard: series keyed by the addresses of their label strings and the status, so a
/// request's record hashes three words and neither compares strings nor touches a reference
/// count (the label strings are shared by every request of a route).
#[derive(Default)]
struct Shard(HashMap<(usize, usize, u16), Labelled, BuildHasherDefault<WordHasher>>);

/// A histogram and its labels.
struct Labelled {
    plugin: Arc<str>,
    route: Arc<str>,
    histogram: Histogram,
}

impl Shard {
    /// The series of `plugin`, `route`, `status`; a new one takes over the counts of a series
    /// with the same labels under other strings (a reloaded plugin's), so a shard holds one
    /// series per label set however often plugins are reloaded.
    fn series(&mut self, plugin: &Arc<str>, route: &Arc<str>, status: u16) -> &mut Histogram {
        let key = (
            Arc::as_ptr(plugin).cast::<u8>() as usize,
            Arc::as_ptr(route).cast::<u8>() as usize,
            status,
        );
        if !self.0.contains_key(&key) {
            let stale = self
                .0
                .iter()
                .find(|(k, s)| k.2 == status && s.plugin == *plugin && s.route == *route)
                .map(|(k, _)| *k);
            let histogram = stale
                .and_then(|k| self.0.remove(&k))
                .map_or_else(Histogram::default, |s| s.histogram);
            self.0.insert(
                key,
                Labelled {
                    plugin: plugin.clone(),
                    route: route.clone(),
                    histogram,
                },
            );
        }
        &mut self.0.get_mut(&key).expect("inserted above").histogram
    }
}

/// Hashes a few machine words (FxHash's step): enough for addresses and a status.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A value on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The shard of the calling thread: threads take shards in turn as they first record.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Counts per bucket (each answer in the first bucket it fits; a scrape sums them up to
/// Prometheus's cumulative buckets).
#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

impl Metrics {
    /// One answered request: `plugin` and `route` ("METHOD /template") as resolved, empty when
    /// the request was refused before a route was known (not found, overloaded, not ready).
    pub fn record(&self, plugin: &Arc<str>, route: &Arc<str>, status: StatusCode, took: Duration) {
        let seconds = took.as_secs_f64();
        let mut shard = self.shards[my_shard()]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let h = shard.series(plugin, route, status.as_u16());
        if let Some(bucket) = BUCKETS.iter().position(|&le| seconds <= le) {
            h.buckets[bucket] += 1;
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// An answer given before any route was known (not found, overloaded, not ready).
    pub fn record_unrouted(&self, status: StatusCode, took: Duration) {
        self.record(&self.unrouted, &self.unrouted, status, took);
    }

    pub fn render(&self, models: &[ModelInfo], limit_store_errors: u64) -> String {
        let mut out = String::new();
        out.push_str("# HELP infergate_request_duration_seconds Requests by plugin, route and status: time to the response head.\n");
        out.push_str("# TYPE infergate_request_duration_seconds histogram\n");
        let mut requests: BTreeMap<(Arc<str>, Arc<str>, u16), Histogram> = BTreeMap::new();
        for shard in &self.shards {
            let shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            for (&(_, _, status), series) in &shard.0 {
                requests
                    .entry((series.plugin.clone(), series.route.clone(), status))
                    .or_default()
                    .add(&series.histogram);
            }
        }
        for ((plugin, route, status), h) in requests.iter() {
            let labels = format!(
                "plugin=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(plugin),
                escape(route)
            );
            let mut count = 0;
            for (in_bucket, le) in h.buckets.iter().zip(BUCKETS) {
                count += in_bucket;
                let _ = writeln!(
                    out,
                    "infergate_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "infergate_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "infergate_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "infergate_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        drop(requests);
        let series: [Series<ModelStats>; 8] = [
            (
                "infergate_model_queued",
                "gauge",
                "Inferences waiting for a slot.",
                |s| s.queued as f64,
            ),
            (
                "infergate_model_running",
                "gauge",
                "Inferences running.",
                |s| s.running as f64,
            ),
            (
                "infergate_model_completed_total",
                "counter",
                "Inferences the backend finished.",
                |s| s.completed as f64,
            ),
            (
                "infergate_model_failed_total",
                "counter",
                "Inferences the backend failed.",
                |s| s.failed as f64,
            ),
            (
                "infergate_model_rejected_total",
                "counter",
                "Inferences refused because the queue was full.",
                |s| s.rejected as f64,
            ),
            (
                "infergate_model_timed_out_total",
                "counter",
                "Inferences given up at the model's timeout.",
                |s| s.timed_out as f64,
            ),
            (
                "infergate_model_busy_seconds_total",
                "counter",
                "Seconds of compute.",
                |s| s.busy_seconds_total,
            ),
            (
                "infergate_model_batched_total",
                "counter",
                "Inferences that ran batched with others (a batch is one completed).",
                |s| s.batched as f64,
            ),
        ];
        let graphs: Vec<(String, &ModelStats)> =
            models.iter().map(|m| (escape(&m.name), &m.stats)).collect();
        write_series(&mut out, "model", &series, &graphs);
        let _ = writeln!(
            out,
            "# HELP infergate_model_compute_seconds Time of one backend call (a batch is one): quantiles over the latest {RECENT_COMPUTES} successful calls, sum and count over all.\n\
             # TYPE infergate_model_compute_seconds summary"
        );
        for m in models {
            let (s, model) = (&m.stats, escape(&m.name));
            for (quantile, value) in [
                ("0.5", s.compute_p50_seconds),
                ("0.99", s.compute_p99_seconds),
            ] {
                let _ = writeln!(
                    out,
                    "infergate_model_compute_seconds{{model=\"{model}\",quantile=\"{quantile}\"}} {value}"
                );
            }
            let _ = writeln!(
                out,
                "infergate_model_compute_seconds_sum{{model=\"{model}\"}} {}\n\
                 infergate_model_compute_seconds_count{{model=\"{model}\"}} {}",
                s.busy_seconds_total,
                s.completed + s.failed
            );
        }
        render_generation(&mut out, models);
        let _ = writeln!(
            out,
            "# HELP infergate_limit_store_errors_total Limit checks the store (Redis) could not answer; on_store_error decided them.\n\
             # TYPE infergate_limit_store_errors_total counter\n\
             infergate_limit_store_errors_total {limit_store_errors}"
        );
        out
    }
}

/// Language models: `gen_ai_server_*` histograms as the OpenTelemetry semantic conventions
/// name them, and infergate's own counters.
fn render_generation(out: &mut String, models: &[ModelInfo]) {
    let llms: Vec<(String, &LlmStats)> = models
        .iter()
        .filter_map(|m| Some((escape(&m.name), m.generation.as_ref()?)))
        .collect();
    if llms.is_empty() {
        return;
    }
    let histograms: [(&str, &str, fn(&LlmStats) -> &infergate_nn::llm::Histogram); 2] = [
        (
            "gen_ai_server_time_to_first_token_seconds",
            "From the request to the first generated token, queue wait and prompt included.",
            |s| &s.time_to_first_token,
        ),
        (
            "gen_ai_server_time_per_output_token_seconds",
            "Between two generated tokens of one generation.",
            |s| &s.time_per_output_token,
        ),
    ];
    for (name, help, get) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (model, stats) in &llms {
            let h = get(stats);
            let labels = format!("gen_ai_request_model=\"{model}\"");
            for (count, le) in h.cumulative.iter().zip(h.bounds) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {count}\n{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}",
                count = h.count,
                sum = h.sum
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP infergate_llm_tokens_total Tokens prefilled (input) and generated (output), by model, tenant and plugin.\n\
         # TYPE infergate_llm_tokens_total counter"
    );
    for (model, stats) in &llms {
        for share in &stats.tokens_by {
            for (kind, n) in [
                ("input", share.tokens.prompt),
                ("output", share.tokens.completion),
            ] {
                let _ = writeln!(
                    out,
                    "infergate_llm_tokens_total{{gen_ai_request_model=\"{model}\",tenant=\"{}\",plugin=\"{}\",gen_ai_token_type=\"{kind}\"}} {n}",
                    escape(&share.tenant),
                    escape(&share.plugin)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP infergate_llm_generations_total Generations by how they ended.\n\
         # TYPE infergate_llm_generations_total counter"
    );
    for (model, s) in &llms {
        for (outcome, n) in [
            ("stop", s.finished_stop),
            ("length", s.finished_length),
            ("error", s.failed),
            ("cancelled", s.cancelled),
            ("rejected", s.rejected),
        ] {
            let _ = writeln!(
                out,
                "infergate_llm_generations_total{{gen_ai_request_model=\"{model}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    let gauges: [Series<LlmStats>; 5] = [
        (
            "infergate_llm_sequences_active",
            "gauge",
            "Sequences generating or prefilling now.",
            |s| s.active as f64,
        ),
        (
            "infergate_llm_waiting",
            "gauge",
            "Generations waiting for a free sequence.",
            |s| s.waiting as f64,
        ),
        (
            "infergate_llm_decoded_after_cancel_total",
            "counter",
            "Tokens decoded for a generation after its reader had gone (at most the one in flight per cancel).",
            |s| s.decoded_after_cancel as f64,
        ),
        (
            "infergate_llm_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens found in the prompt cache (the same tenant's earlier prefix), not prefilled again.",
            |s| s.prompt_tokens_cached as f64,
        ),
        (
            "infergate_llm_busy_seconds_total",
            "counter",
            "Seconds the model spent decoding.",
            |s| s.busy_seconds,
        ),
    ];
    write_series(out, "gen_ai_request_model", &gauges, &llms);
}

/// One metric of a statistics type: name, Prometheus type, help, and how to read it.
type Series<T> = (&'static str, &'static str, &'static str, fn(&T) -> f64);

/// Each series with its help and type, then one sample per model (`label` = its escaped name).
fn write_series<T>(out: &mut String, label: &str, series: &[Series<T>], models: &[(String, &T)]) {
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (model, stats) in models {
            let _ = writeln!(out, "{name}{{{label}=\"{model}\"}} {}", get(stats));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("infergate_request_duration_seconds"))
            .collect()
    }

    #[test]
    fn requests_from_many_threads_and_reloads_sum_into_one_series_per_label() {
        let metrics = Arc::new(Metrics::default());
        let (plugin, route): (Arc<str>, Arc<str>) = ("digits".into(), "POST /classify".into());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (metrics, plugin, route) = (metrics.clone(), plugin.clone(), route.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        metrics.record(&plugin, &route, StatusCode::OK, Duration::from_micros(300));
                    }
                    // The same labels under other strings, as a reloaded plugin has them.
                    let (plugin, route): (Arc<str>, Arc<str>) =
                        ("digits".into(), "POST /classify".into());
                    metrics.record(&plugin, &route, StatusCode::OK, Duration::from_millis(2));
                    metrics.record(
                        &plugin,
                        &route,
                        StatusCode::NOT_FOUND,
                        Duration::from_secs(9),
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        metrics.record_unrouted(StatusCode::UNAUTHORIZED, Duration::from_micros(100));
        let text = metrics.render(&[], 0);
        let lines = series_lines(&text);
        let ok = r#"plugin="digits",route="POST /classify",status="200""#;
        for (le, count) in [("0.0005", 400), ("0.001", 400), ("0.0025", 404), ("5", 404)] {
            let line =
                format!("infergate_request_duration_seconds_bucket{{{ok},le=\"{le}\"}} {count}");
            assert!(lines.contains(&line.as_str()), "{line} in\n{text}");
        }
        let count = format!("infergate_request_duration_seconds_count{{{ok}}} 404");
        assert!(lines.contains(&count.as_str()), "{text}");
        // Over the last bucket: only in +Inf.
        let missing = r#"plugin="digits",route="POST /classify",status="404""#;
        for line in [
            format!("infergate_request_duration_seconds_bucket{{{missing},le=\"5\"}} 0"),
            format!("infergate_request_duration_seconds_bucket{{{missing},le=\"+Inf\"}} 4"),
            format!(
                "infergate_request_duration_seconds_count{{plugin=\"\",route=\"\",status=\"401\"}} 1"
            ),
        ] {
            assert!(lines.contains(&line.as_str()), "{line} in\n{text}");
        }
        // One series per label set: 3 label sets, 12 buckets + +Inf + sum + count each.
        assert_eq!(lines.len(), 3 * 15, "{text}");
        // A shard keeps one series per label set, however many strings carried it.
        let kept: usize = metrics
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap().0.len())
            .sum();
        assert!(kept <= 4 * 2 + 1, "{kept} series kept");
    }
}
