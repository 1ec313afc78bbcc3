//! A model's statistics: the counters every compute updates, the [`ModelStats`] snapshot of
//! them, and what they decide: the moving averages of recent compute times, which say where the
//! next compute runs ([`INLINE_BELOW`], [`PIN_ABOVE`], ...), what it is expected to cost (fair
//! queueing, `Retry-After`), and the percentiles of the latest computes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Inferences that recently took less than this on average may run on the calling async thread
/// (tokio's guidance: well under 100 µs between awaits)...
///
/// The average is per inference, not per backend call: a batch of n holds its thread no longer
/// than its n inferences would one after another there, and on a slow machine a gathered batch
/// of a quick model takes 70–90 µs, which must not send every batch through a thread hop that
/// costs more than the compute.
const INLINE_BELOW: Duration = Duration::from_micros(50);

/// ...and keep doing so until the average exceeds this: a model whose inferences sit near
/// [`INLINE_BELOW`] (or that the OS preempted now and then) does not flip between running in
/// place and a thread hop that costs more than the compute.
const INLINE_UNTIL: Duration = Duration::from_micros(100);

/// Whatever the time per inference, backend calls that recently took more than this on average
/// (a large batch) do not run on the async thread.
const INLINE_CALL_MAX: Duration = Duration::from_micros(250);

/// Computes that recently took at least this on average run on a core of their own
/// ([`ComputeCores`](crate::cores::ComputeCores)): long enough to fill that core's caches with
/// the model, so the rest of the request is better off elsewhere, and to dwarf the thread hop.
const PIN_ABOVE: Duration = Duration::from_millis(1);

/// A snapshot of one model's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ModelStats {
    /// Callers waiting for a compute slot now.
    pub queued: u64,
    /// Computes running now (including ones whose caller timed out).
    pub running: u64,
    /// Computes the backend finished successfully.
    pub completed: u64,
    /// Computes the backend refused or failed (invalid input included).
    pub failed: u64,
    /// Callers refused because the queue was full.
    pub rejected: u64,
    /// Callers that gave up after the model's timeout.
    pub timed_out: u64,
    /// Seconds spent computing, summed over all computes.
    pub busy_seconds_total: f64,
    /// Inferences that ran inside a batch of several (a batch counts as one compute).
    pub batched: u64,
    /// The median time of the last [`RECENT_COMPUTES`] successful computes, in seconds (0
    /// before the first).
    pub compute_p50_seconds: f64,
    /// Their 99th percentile.
    pub compute_p99_seconds: f64,
}

/// How many of the latest compute times the percentiles of [`ModelStats`] cover.
pub const RECENT_COMPUTES: usize = 1024;

/// One model's counters, shared by its scheduler, its fair queue and the blocking threads its
/// computes run on.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) waiting: AtomicUsize,
    pub(super) running: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) timed_out: AtomicU64,
    busy_nanos: AtomicU64,
    /// Moving average of recent compute times per backend call (0: no sample yet): what the
    /// next compute costs, for fair queueing, `Retry-After` and where a compute runs.
    pub(super) mean_compute_nanos: AtomicU64,
    /// Moving average of recent compute times per inference (a batch of n counts n).
    mean_inference_nanos: AtomicU64,
    /// Whether small computes run on the async thread (see [`INLINE_BELOW`]).
    inline: AtomicBool,
    /// The latest successful compute times, for percentiles.
    recent: Mutex<Recent>,
}

/// A ring of the latest [`RECENT_COMPUTES`] compute times in nanoseconds.
#[derive(Default)]
struct Recent {
    nanos: Vec<u64>,
    next: usize,
}

impl Recent {
    fn push(&mut self, nanos: u64) {
        if self.nanos.len() < RECENT_COMPUTES {
            self.nanos.push(nanos);
        } else {
            self.nanos[self.next] = nanos;
        }
        self.next = (self.next + 1) % RECENT_COMPUTES;
    }

    /// The `q` quantiles (nearest rank) in seconds; zeros before the first sample.
    fn quantiles<const N: usize>(&self, q: [f64; N]) -> [f64; N] {
        let mut sorted = self.nanos.clone();
        sorted.sort_unstable();
        q.map(|q| match sorted.len() {
            0 => 0.0,
            n => sorted[((n - 1) as f64 * q).round() as usize] as f64 / 1e9,
        })
    }
}

impl Counters {
    /// Records one backend call that served `inferences` inferences (a batch, or 1).
    pub(super) fn record_compute(&self, elapsed: Duration, inferences: usize, ok: bool) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        if ok {
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(nanos);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        ema(&self.mean_compute_nanos, nanos);
        let per_inference = ema(&self.mean_inference_nanos, nanos / inferences.max(1) as u64);
        if per_inference < INLINE_BELOW.as_nanos() as u64 {
            self.inline.store(true, Ordering::Relaxed);
        } else if per_inference > INLINE_UNTIL.as_nanos() as u64 {
            self.inline.store(false, Ordering::Relaxed);
        }
    }

    /// Whether computes are quick enough to run on an async thread: measured, and under
    /// [`INLINE_BELOW`] per inference on average since they last averaged over
    /// [`INLINE_UNTIL`], and no more than [`INLINE_CALL_MAX`] per call.
    pub(super) fn runs_inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
            && self.mean_compute_nanos.load(Ordering::Relaxed) <= INLINE_CALL_MAX.as_nanos() as u64
    }

    /// Whether a compute is long enough to run on a core of its own (when the machine has more
    /// than one): measured, and recently at least [`PIN_ABOVE`] on average.
    pub(super) fn runs_pinned(&self) -> bool {
        self.mean_compute_nanos.load(Ordering::Relaxed) >= PIN_ABOVE.as_nanos() as u64
    }

    /// Whether a long compute may run on the calling worker thread with `block_in_place`:
    /// measured, and recently under a tenth of `timeout` on average. The caller cannot give up
    /// while its compute runs there, so a compute that might come near the timeout goes to the
    /// blocking pool, where the timeout still answers the caller on time.
    pub(super) fn runs_in_place(&self, timeout: Duration) -> bool {
        let mean = self.mean_compute_nanos.load(Ordering::Relaxed);
        mean != 0 && u128::from(mean) * 10 < timeout.as_nanos()
    }

    /// The expected cost of the next compute, in seconds (a millisecond before any sample).
    pub(super) fn estimate_seconds(&self) -> f64 {
        match self.mean_compute_nanos.load(Ordering::Relaxed) {
            0 => 1e-3,
            n => n as f64 / 1e9,
        }
    }

    /// The counters as they are now.
    pub(super) fn snapshot(&self) -> ModelStats {
        let [p50, p99] = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quantiles([0.5, 0.99]);
        ModelStats {
            queued: self.waiting.load(Ordering::Relaxed) as u64,
            running: self.running.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            busy_seconds_total: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            batched: 0,
            compute_p50_seconds: p50,
            compute_p99_seconds: p99,
        }
    }
}

/// Decrements a counter when dropped: keeps `waiting`/`running` right when a caller's future is
/// dropped (timeout, client gone) or a compute panics.
pub(super) struct Gauge<'a, A: GaugeCounter>(pub(super) &'a A);

pub(super) trait GaugeCounter {
    fn dec(&self);
}
impl GaugeCounter for AtomicUsize {
    fn dec(&self) {
        self.fetch_sub(1, Ordering::Relaxed);
    }
}
impl GaugeCounter for AtomicU64 {
    fn dec(&self) {
        self.fetch_sub(1, Ordering::Relaxed);
    }
}
impl<A: GaugeCounter> Drop for Gauge<'_, A> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Folds `sample` into the exponential moving average `mean` (weight 1/4 for the newest; 0:
/// no sample yet) and returns the new average. Races only lose a sample.
fn ema(mean: &AtomicU64, sample: u64) -> u64 {
    let old = mean.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else {
        old - old / 4 + sample / 4
    };
    let new = new.max(1);
    mean.store(new, Ordering::Relaxed);
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_the_latest_successful_computes() {
        let counters = Counters::default();
        assert_eq!(counters.recent.lock().unwrap().quantiles([0.5]), [0.0]);
        // An old slow era, then RECENT_COMPUTES fast computes: only the fast ones count.
        for _ in 0..100 {
            counters.record_compute(Duration::from_secs(1), 1, true);
        }
        for i in 1..=RECENT_COMPUTES as u64 {
            counters.record_compute(Duration::from_micros(i), 1, true);
        }
        counters.record_compute(Duration::from_secs(9), 1, false);
        let [p50, p99] = counters.recent.lock().unwrap().quantiles([0.5, 0.99]);
        assert!((p50 - 512e-6).abs() < 2e-6, "{p50}");
        assert!((p99 - 1014e-6).abs() < 2e-6, "{p99}");
    }

    #[test]
    fn computes_run_inline_below_50_us_until_they_average_over_100() {
        let counters = Counters::default();
        assert!(!counters.runs_inline(), "nothing measured yet");
        counters.record_compute(Duration::from_micros(10), 1, true);
        assert!(counters.runs_inline());
        // Batches of 80 µs: the average climbs past 50 µs but stays inline.
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(80), 1, true);
        }
        assert!(counters.runs_inline(), "between the bounds nothing changes");
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(200), 1, true);
        }
        assert!(
            !counters.runs_inline(),
            "over 100 µs on average: off the async thread"
        );
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(80), 1, true);
        }
        assert!(!counters.runs_inline(), "and back only under 50 µs");
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(20), 1, true);
        }
        assert!(counters.runs_inline());
    }

    #[test]
    fn a_batch_counts_per_inference_for_running_inline() {
        let counters = Counters::default();
        // Gathered batches of 6 at 90 µs: 15 µs per inference, so they stay on the async thread.
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(90), 6, true);
        }
        assert!(counters.runs_inline());
        // The average per call still says what a call costs (Retry-After, pinning, estimates).
        let mean = counters.mean_compute_nanos.load(Ordering::Relaxed);
        assert!((85_000..=90_000).contains(&mean), "{mean}");
        // Batches of 16 at 400 µs are quick per inference, but too long a call for it.
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(400), 16, true);
        }
        assert!(!counters.runs_inline());
        // Single inferences of 200 µs move off it as well.
        for _ in 0..20 {
            counters.record_compute(Duration::from_micros(200), 1, true);
        }
        assert!(!counters.runs_inline());
    }

    #[test]
    fn only_computes_well_inside_the_timeout_run_in_place() {
        let counters = Counters::default();
        assert!(
            !counters.runs_in_place(Duration::from_secs(5)),
            "nothing measured yet"
        );
        counters.record_compute(Duration::from_millis(100), 1, true);
        assert!(counters.runs_in_place(Duration::from_secs(5)));
        assert!(!counters.runs_in_place(Duration::from_millis(900)));
    }
}
