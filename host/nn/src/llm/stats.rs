//! A language model's counters, as typed values: the decode thread writes them, `/metrics` and
//! the admin API read a [`LlmStats`] snapshot.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the time-to-first-token histogram, in seconds.
pub const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the time-between-tokens histogram, in seconds.
pub const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];

/// A cumulative histogram with fixed bounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Observations at most each bound (cumulative, like Prometheus' `le`).
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            cumulative: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (n, le) in self.cumulative.iter_mut().zip(self.bounds) {
            if s <= *le {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

/// Prompt and completion tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TokenCounts {
    pub prompt: u64,
    pub completion: u64,
}

/// A snapshot of one language model's counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmStats {
    /// Generations waiting for a sequence now.
    pub waiting: u64,
    /// Sequences generating (or prefilling) now.
    pub active: u64,
    /// Generations admitted to a sequence so far.
    pub started: u64,
    /// Generations that ended by a stop (end of turn or stop string), by length, by an error.
    pub finished_stop: u64,
    pub finished_length: u64,
    pub failed: u64,
    /// Generations refused because the queue was full.
    pub rejected: u64,
    /// Generations whose reader went away before the end.
    pub cancelled: u64,
    /// Tokens decoded for a generation after its reader had gone (at most the one in flight
    /// each time).
    pub decoded_after_cancel: u64,
    /// Prompt tokens prefilled and tokens generated, in all.
    pub tokens: TokenCounts,
    /// Prompt tokens that were already in the KV cache (the prompt cache), so not prefilled
    /// again; they are counted in `tokens.prompt` too.
    pub prompt_tokens_cached: u64,
    /// The same by tenant and plugin.
    pub tokens_by: Vec<TokenShare>,
    /// Decode steps (one batch each) and the seconds they took.
    pub steps: u64,
    pub busy_seconds: f64,
    /// From the request to the first token, queue wait and prefill included.
    pub time_to_first_token: Histogram,
    /// Between two tokens of one generation.
    pub time_per_output_token: Histogram,
}

/// One tenant's tokens through one plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenShare {
    pub tenant: String,
    pub plugin: String,
    #[serde(flatten)]
    pub tokens: TokenCounts,
}

/// What the decode thread updates.
pub(super) struct Counters {
    pub(super) active: AtomicU64,
    pub(super) started: AtomicU64,
    pub(super) finished_stop: AtomicU64,
    pub(super) finished_length: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) decoded_after_cancel: AtomicU64,
    pub(super) prompt_cached: AtomicU64,
    pub(super) steps: AtomicU64,
    busy_nanos: AtomicU64,
    slow: Mutex<Slow>,
}

/// Counters updated under a lock (once per token or generation, by the decode thread only).
struct Slow {
    tokens: TokenCounts,
    tokens_by: BTreeMap<(String, String), TokenCounts>,
    ttft: Histogram,
    itl: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            active: AtomicU64::new(0),
            started: AtomicU64::new(0),
            finished_stop: AtomicU64::new(0),
            finished_length: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            decoded_after_cancel: AtomicU64::new(0),
            prompt_cached: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            slow: Mutex::new(Slow {
                tokens: TokenCounts::default(),
                tokens_by: BTreeMap::new(),
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
            }),
        }
    }
}

impl Counters {
    fn slow(&self) -> std::sync::MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn step(&self, took: Duration) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.busy_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Tokens of one generation: `prompt` prefilled, `completion` generated (either may be 0).
    pub(super) fn tokens(&self, tenant: &str, plugin: &str, prompt: u64, completion: u64) {
        let mut slow = self.slow();
        slow.tokens.prompt += prompt;
        slow.tokens.completion += completion;
        let by = slow
            .tokens_by
            .entry((tenant.to_string(), plugin.to_string()))
            .or_default();
        by.prompt += prompt;
        by.completion += completion;
    }

    pub(super) fn first_token(&self, after: Duration) {
        self.slow().ttft.observe(after);
    }

    pub(super) fn next_token(&self, after: Duration) {
        self.slow().itl.observe(after);
    }

    pub(super) fn snapshot(&self, waiting: u64) -> LlmStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let slow = self.slow();
        LlmStats {
            waiting,
            active: load(&self.active),
            started: load(&self.started),
            finished_stop: load(&self.finished_stop),
            finished_length: load(&self.finished_length),
            failed: load(&self.failed),
            rejected: load(&self.rejected),
            cancelled: load(&self.cancelled),
            decoded_after_cancel: load(&self.decoded_after_cancel),
            tokens: slow.tokens,
            prompt_tokens_cached: load(&self.prompt_cached),
            tokens_by: slow
                .tokens_by
                .iter()
                .map(|((tenant, plugin), tokens)| TokenShare {
                    tenant: tenant.clone(),
                    plugin: plugin.clone(),
                    tokens: *tokens,
                })
                .collect(),
            steps: load(&self.steps),
            busy_seconds: load(&self.busy_nanos) as f64 / 1e9,
            time_to_first_token: slow.ttft.clone(),
            time_per_output_token: slow.itl.clone(),
        }
    }
}
