//! Metrics: every request (count and latency to the response head, by plugin, route and status;
//! refusals show with their status, early ones with empty labels), the models' queues and compute time (a total
//! and recent percentiles), language models' generations (time to first token and between
//! tokens, OpenTelemetry `gen_ai` names; tokens by tenant, plugin and model), and limit store
//! errors, rendered as Prometheus text at `/metrics`.
//! Requests are recorded once each by the metrics layer (`pipeline::metrics`).
//! Log lines: [`logs`]. Traces (spans exported over OTLP, `traceparent`): [`trace`].

pub mod logs;
pub mod trace;

use std::collections::BTreeMap;
use std::fmt::Write as _;
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

#[derive(Default)]
pub struct Metrics {
    /// (plugin, route, status) → latency histogram.
    requests: Mutex<BTreeMap<(Arc<str>, Arc<str>, u16), Histogram>>,
    /// The empty label of answers given before any route was known.
    unrouted: Arc<str>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// One answered request: `plugin` and `route` ("METHOD /template") as resolved, empty when
    /// the request was refused before a route was known (not found, overloaded, not ready).
    pub fn record(&self, plugin: &Arc<str>, route: &Arc<str>, status: StatusCode, took: Duration) {
        let seconds = took.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let h = requests
            .entry((plugin.clone(), route.clone(), status.as_u16()))
            .or_default();
        for (bucket, le) in h.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= le {
                *bucket += 1;
            }
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
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((plugin, route, status), h) in requests.iter() {
            let labels = format!(
                "plugin=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(plugin),
                escape(route)
            );
            for (count, le) in h.buckets.iter().zip(BUCKETS) {
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
