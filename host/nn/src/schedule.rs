//! The scheduling of one model's inferences: a bounded queue in front of a concurrency limit,
//! served fairly across tenants, where each compute runs (in place, on tokio's blocking pool, or
//! there on a core of its own), timeouts, and statistics.
//!
//! Fairness: when every slot is busy, callers wait in one queue per tenant, and a freed slot
//! goes to the waiting tenant with the least compute used relative to its weight (start-time
//! fair queueing over measured compute seconds: a tenant's "pass" grows by each compute's time
//! divided by its weight; a tenant that was idle re-enters at the current virtual time, so
//! idleness earns no credit). One busy tenant therefore cannot starve a light one: the light one
//! waits for about one compute, not for the busy tenant's whole backlog.
//!
//! A compute holds its slot until the backend really returns, even when its caller has given
//! up on it: a timed-out inference still occupies the CPU, so it keeps counting against the
//! model's concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::NnError;
use crate::cores::ComputeCores;

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
/// ([`ComputeCores`]): long enough to fill that core's caches with the model, so the rest of the
/// request is better off elsewhere, and to dwarf the thread hop.
const PIN_ABOVE: Duration = Duration::from_millis(1);

/// A snapshot of one model's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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

/// Who asks for a compute, for fair queueing: the tenant and its weight (priority).
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: Arc<str>,
    /// A tenant of weight 2 gets twice the compute of a tenant of weight 1 under contention.
    pub weight: u32,
}

impl Default for Caller {
    fn default() -> Self {
        Caller {
            tenant: Arc::from(""),
            weight: 1,
        }
    }
}

pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    concurrency: usize,
    queue_depth: usize,
    /// The longest a caller waits for a slot.
    queue_timeout: Duration,
    counters: Arc<Counters>,
}

/// The slots and the per-tenant queues, behind one short-held lock.
struct Shared {
    queue: Mutex<FairQueue>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct FairQueue {
    /// Slots nobody holds.
    free: usize,
    /// Virtual time: the pass of the tenant served last.
    virtual_time: f64,
    tenants: HashMap<Arc<str>, Lane>,
}

#[derive(Default)]
struct Lane {
    /// Compute seconds used, divided by the weight, in virtual time.
    pass: f64,
    /// The tenant's weight, as its latest caller gave it.
    weight: u32,
    waiters: VecDeque<oneshot::Sender<Slot>>,
}

/// A compute slot; dropping it hands it to the next waiter by fairness, or frees it.
pub(crate) struct Slot {
    shared: Option<Arc<Shared>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release();
        }
    }
}

impl Shared {
    /// Charges `caller` for one compute of the estimated cost (virtual seconds).
    fn charge(queue: &mut FairQueue, caller: &Caller, estimate: f64) {
        let vt = queue.virtual_time;
        let lane = queue.tenants.entry(caller.tenant.clone()).or_default();
        lane.weight = caller.weight.max(1);
        if lane.waiters.is_empty() && lane.pass < vt {
            lane.pass = vt;
        }
        lane.pass += estimate / f64::from(lane.weight);
    }

    /// Gives a freed slot to the waiting tenant with the lowest pass, or makes it free.
    fn release(self: &Arc<Self>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let estimate = self.counters.estimate_seconds();
        loop {
            let next = queue
                .tenants
                .iter()
                .filter(|(_, lane)| !lane.waiters.is_empty())
                .min_by(|a, b| a.1.pass.total_cmp(&b.1.pass))
                .map(|(tenant, _)| tenant.clone());
            let Some(tenant) = next else {
                queue.free += 1;
                // Forget lanes that could not matter any more: empty and not ahead of time.
                let vt = queue.virtual_time;
                queue
                    .tenants
                    .retain(|_, lane| !lane.waiters.is_empty() || lane.pass > vt);
                return;
            };
            let queue = &mut *queue;
            let lane = queue.tenants.get_mut(&tenant).expect("lane exists");
            let waiter = lane.waiters.pop_front().expect("lane has waiters");
            if waiter.is_closed() {
                continue;
            }
            let slot = Slot {
                shared: Some(self.clone()),
            };
            match waiter.send(slot) {
                Ok(()) => {
                    queue.virtual_time = lane.pass;
                    // Charge the estimate now so the next pick already sees this tenant as
                    // served; the caller settles the measured cost when its compute ends.
                    lane.pass += estimate / f64::from(lane.weight.max(1));
                    return;
                }
                // The caller gave up between the check and the send: try the next one without
                // running this slot's own release (we hold the lock).
                Err(mut slot) => {
                    slot.shared = None;
                }
            }
        }
    }

    /// Replaces the estimate charged at dispatch with the measured cost.
    fn settle(&self, caller: &Caller, estimate: f64, actual: f64) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = queue.tenants.get_mut(&caller.tenant) {
            lane.pass += (actual - estimate) / f64::from(caller.weight.max(1));
        }
    }
}

#[derive(Default)]
struct Counters {
    waiting: AtomicUsize,
    running: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    busy_nanos: AtomicU64,
    /// Moving average of recent compute times per backend call (0: no sample yet): what the
    /// next compute costs, for fair queueing, `Retry-After` and where a compute runs.
    mean_compute_nanos: AtomicU64,
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
    fn record_compute(&self, elapsed: Duration, inferences: usize, ok: bool) {
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
    fn runs_inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
            && self.mean_compute_nanos.load(Ordering::Relaxed) <= INLINE_CALL_MAX.as_nanos() as u64
    }

    /// Whether a compute is long enough to run on a core of its own (when the machine has more
    /// than one): measured, and recently at least [`PIN_ABOVE`] on average.
    fn runs_pinned(&self) -> bool {
        self.mean_compute_nanos.load(Ordering::Relaxed) >= PIN_ABOVE.as_nanos() as u64
    }

    /// Whether a long compute may run on the calling worker thread with `block_in_place`:
    /// measured, and recently under a tenth of `timeout` on average. The caller cannot give up
    /// while its compute runs there, so a compute that might come near the timeout goes to the
    /// blocking pool, where the timeout still answers the caller on time.
    fn runs_in_place(&self, timeout: Duration) -> bool {
        let mean = self.mean_compute_nanos.load(Ordering::Relaxed);
        mean != 0 && u128::from(mean) * 10 < timeout.as_nanos()
    }

    /// The expected cost of the next compute, in seconds (a millisecond before any sample).
    fn estimate_seconds(&self) -> f64 {
        match self.mean_compute_nanos.load(Ordering::Relaxed) {
            0 => 1e-3,
            n => n as f64 / 1e9,
        }
    }
}

/// Decrements a counter when dropped: keeps `waiting`/`running` right when a caller's future is
/// dropped (timeout, client gone) or a compute panics.
struct Gauge<'a, A: GaugeCounter>(&'a A);

trait GaugeCounter {
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

impl Scheduler {
    pub(crate) fn new(concurrency: usize, queue_depth: usize, queue_timeout: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        Scheduler {
            shared: Arc::new(Shared {
                queue: Mutex::new(FairQueue {
                    free: concurrency,
                    ..FairQueue::default()
                }),
                counters: counters.clone(),
            }),
            concurrency,
            queue_depth,
            queue_timeout,
            counters,
        }
    }

    /// Runs `job` once `caller` gets a slot; returns its result with the time spent queueing
    /// and computing. `timeout` bounds the whole; the queue wait is also bounded by the model's
    /// queue timeout. Where the job runs:
    /// - right here when it is `small` (its inputs are) and this model's inferences recently
    ///   took under [`INLINE_BELOW`] each (until they average over [`INLINE_UNTIL`]; calls over
    ///   [`INLINE_CALL_MAX`] never): a hop to another thread would cost more than the compute;
    /// - on a blocking thread pinned to a core of its own ([`ComputeCores`]) when computes
    ///   recently took at least [`PIN_ABOVE`] and the machine has several cores: the model then
    ///   fills that core's caches, not those the rest of the request runs on (at one connection
    ///   on the benchmark's 2-vCPU guest, about 90 µs less per embed request than in place);
    /// - on this thread, inside `block_in_place` (the worker's other tasks move to another
    ///   thread), when computes recently took well under `timeout`: the caller then goes on
    ///   where its compute ended, without the two cross-thread wake-ups of the blocking pool
    ///   (about 70 µs per compute on that guest, `examples/floor.rs`);
    /// - else on the blocking pool, where the timeout can answer the caller mid-compute.
    pub(crate) async fn run<T, F>(
        &self,
        model: &str,
        caller: &Caller,
        timeout: Duration,
        small: bool,
        job: F,
    ) -> Result<(T, Duration, Duration), NnError>
    where
        F: FnOnce() -> Result<T, NnError> + Send + 'static,
        T: Send + 'static,
    {
        let (value, queued, compute) = self
            .run_if(model, caller, timeout, small, move || Some((1, job())))
            .await?;
        Ok((value.expect("the job always computes"), queued, compute))
    }

    /// [`Scheduler::run`] for a job that may find nothing to compute once it holds the slot
    /// (`None`: a batch already took its work; such a run is not counted as a compute), and
    /// that says how many inferences its compute served (a batch's rows).
    pub(crate) async fn run_if<T, F>(
        &self,
        model: &str,
        caller: &Caller,
        timeout: Duration,
        small: bool,
        job: F,
    ) -> Result<(Option<T>, Duration, Duration), NnError>
    where
        F: FnOnce() -> Option<(usize, Result<T, NnError>)> + Send + 'static,
        T: Send + 'static,
    {
        let arrived = Instant::now();
        let estimate = self.counters.estimate_seconds();
        // Take a slot at once if one is free and nobody waits; else join the queue or be refused.
        let ticket = self.admit(model, caller, estimate)?;
        let work = async move {
            let slot = match ticket {
                Ticket::Slot(slot) => slot,
                Ticket::Wait(receiver, place_in_queue) => {
                    let waited = tokio::time::timeout(self.queue_timeout, receiver).await;
                    drop(place_in_queue);
                    match waited {
                        Ok(Ok(slot)) => slot,
                        Ok(Err(_)) => {
                            return Err(NnError::Backend(
                                "the model's scheduler is closed".to_string(),
                            ));
                        }
                        Err(_) => {
                            self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            return Err(NnError::QueueTimeout {
                                model: model.to_string(),
                                after: self.queue_timeout,
                                retry_after: self.retry_after(self.queue_depth.max(1)),
                            });
                        }
                    }
                }
            };
            let queued = arrived.elapsed();
            let pin = self.counters.runs_pinned() && ComputeCores::global().available();
            let (result, compute) = if small && self.counters.runs_inline() {
                run_holding(slot, &self.counters, job)
            } else if !pin && self.counters.runs_in_place(timeout) && on_worker_pool() {
                tokio::task::block_in_place(|| run_holding(slot, &self.counters, job))
            } else {
                let counters = self.counters.clone();
                tokio::task::spawn_blocking(move || {
                    let _pinned = pin
                        .then(|| ComputeCores::global().pin_current_thread())
                        .flatten();
                    run_holding(slot, &counters, job)
                })
                .await
                .map_err(|e| NnError::Backend(format!("the compute task failed: {e}")))?
            };
            self.shared.settle(caller, estimate, compute.as_secs_f64());
            result.map(|value| (value, queued, compute))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(NnError::Timeout {
                    model: model.to_string(),
                    after: timeout,
                })
            }
        }
    }

    /// A slot now, a place in `caller`'s lane, or `QueueFull` when the queue is at its depth.
    fn admit(&self, model: &str, caller: &Caller, estimate: f64) -> Result<Ticket<'_>, NnError> {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = self.counters.waiting.load(Ordering::Relaxed);
        if queue.free > 0 && waiting == 0 {
            queue.free -= 1;
            Shared::charge(&mut queue, caller, estimate);
            return Ok(Ticket::Slot(Slot {
                shared: Some(self.shared.clone()),
            }));
        }
        if waiting >= self.queue_depth {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(NnError::QueueFull {
                model: model.to_string(),
                retry_after: self.retry_after(waiting + 1),
            });
        }
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        let vt = queue.virtual_time;
        let lane = queue.tenants.entry(caller.tenant.clone()).or_default();
        lane.weight = caller.weight.max(1);
        lane.waiters.retain(|w| !w.is_closed());
        if lane.waiters.is_empty() && lane.pass < vt {
            lane.pass = vt;
        }
        lane.waiters.push_back(sender);
        Ok(Ticket::Wait(receiver, Gauge(&self.counters.waiting)))
    }

    /// How long a refused caller should wait: the recent mean compute time times its place in
    /// the queue, spread over the slots; at least one second, rounded up to seconds.
    fn retry_after(&self, position: usize) -> Duration {
        let mean = self.counters.mean_compute_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let rounds = (position as f64 / self.concurrency as f64).ceil();
        let seconds = (mean * rounds).ceil().clamp(1.0, 3600.0);
        Duration::from_secs(seconds as u64)
    }

    /// Whether this model's small computes run on the calling async thread (see [`Scheduler::run`]).
    pub(crate) fn runs_inline(&self) -> bool {
        self.counters.runs_inline()
    }

    pub(crate) fn stats(&self) -> ModelStats {
        let c = &self.counters;
        let [p50, p99] = c
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quantiles([0.5, 0.99]);
        ModelStats {
            queued: c.waiting.load(Ordering::Relaxed) as u64,
            running: c.running.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            busy_seconds_total: c.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            batched: 0,
            compute_p50_seconds: p50,
            compute_p99_seconds: p99,
        }
    }
}

enum Ticket<'a> {
    Slot(Slot),
    Wait(oneshot::Receiver<Slot>, Gauge<'a, AtomicUsize>),
}

/// Whether this thread is a worker of a multi-threaded tokio runtime, where `block_in_place`
/// may hand the worker's other tasks to another thread.
fn on_worker_pool() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
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

/// The blocking side of a compute: holds the slot until the job really ends.
fn run_holding<T>(
    slot: Slot,
    counters: &Counters,
    job: impl FnOnce() -> Option<(usize, Result<T, NnError>)>,
) -> (Result<Option<T>, NnError>, Duration) {
    counters.running.fetch_add(1, Ordering::Relaxed);
    let _running = Gauge(&counters.running);
    let started = Instant::now();
    let result = job();
    let elapsed = started.elapsed();
    let result = result.map(|(inferences, result)| {
        counters.record_compute(elapsed, inferences, result.is_ok());
        result
    });
    drop(slot);
    (result.transpose(), elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_after_is_at_least_a_second_and_grows_with_the_queue() {
        let s = Scheduler::new(1, 4, Duration::from_secs(5));
        assert_eq!(s.retry_after(1), Duration::from_secs(1));
        s.counters
            .record_compute(Duration::from_millis(1500), 1, true);
        assert_eq!(s.retry_after(1), Duration::from_secs(2));
        assert_eq!(s.retry_after(3), Duration::from_secs(5));
    }

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

    /// Once measured, a long compute runs on a core of its own (a blocking thread pinned to one
    /// CPU) where the machine has several, else on its caller's thread; either way the worker's
    /// other tasks go on meanwhile. The first compute (nothing measured yet) goes to the
    /// blocking pool, unpinned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn measured_long_computes_run_apart_without_blocking_other_tasks() {
        let s = Arc::new(Scheduler::new(1, 4, Duration::from_secs(5)));
        let call = |s: Arc<Scheduler>| {
            tokio::spawn(async move {
                let caller = std::thread::current().id();
                let ((computed_on, cpus), ..) = s
                    .run(
                        "m",
                        &Caller::default(),
                        Duration::from_secs(5),
                        false,
                        || {
                            std::thread::sleep(Duration::from_millis(30));
                            Ok((
                                std::thread::current().id(),
                                crate::cores::current_thread_cpus(),
                            ))
                        },
                    )
                    .await
                    .unwrap();
                (caller, computed_on, cpus)
            })
        };
        let all_cpus = crate::cores::current_thread_cpus();
        let (caller, computed_on, cpus) = call(s.clone()).await.unwrap();
        assert_ne!(
            caller, computed_on,
            "the first compute runs on the blocking pool"
        );
        assert_eq!(cpus, all_cpus, "unpinned");

        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let (caller, computed_on, cpus) = call(s.clone()).await.unwrap();
        ticker.abort();
        if ComputeCores::global().available() {
            assert_ne!(caller, computed_on, "a measured compute runs apart");
            // On one CPU, unless other tests' computes hold them all at that moment.
            let mut pinned = cpus.len() == 1;
            for _ in 0..10 {
                if pinned {
                    break;
                }
                pinned = call(s.clone()).await.unwrap().2.len() == 1;
            }
            assert!(pinned, "no compute ran on a single CPU: {cpus:?}");
        } else {
            assert_eq!(
                caller, computed_on,
                "a measured compute runs on the caller's thread"
            );
        }
        let ticks = ticks.load(Ordering::Relaxed);
        assert!(
            ticks >= 3,
            "the only worker's other task ticked {ticks} times meanwhile"
        );
    }
}

#[cfg(test)]
mod fairness {
    use super::*;

    /// Two tenants, both with a backlog, weights 3 and 1: the freed slots go 3:1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_go_to_tenants_by_weight() {
        let s = Arc::new(Scheduler::new(1, 100, Duration::from_secs(60)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let heavy = Caller {
            tenant: Arc::from("heavy"),
            weight: 3,
        };
        let light = Caller {
            tenant: Arc::from("light"),
            weight: 1,
        };
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (s, order) = (s.clone(), order.clone());
            let caller = if i % 2 == 0 {
                heavy.clone()
            } else {
                light.clone()
            };
            tasks.push(tokio::spawn(async move {
                let tag = caller.tenant.clone();
                s.run("m", &caller, Duration::from_secs(60), false, move || {
                    std::thread::sleep(Duration::from_millis(3));
                    order.lock().unwrap().push(tag);
                    Ok(())
                })
                .await
                .unwrap();
            }));
            // Everyone is queued before the first slot frees.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let heavy_first = order[..24].iter().filter(|t| &***t == "heavy").count();
        assert!(
            (15..=21).contains(&heavy_first),
            "heavy got {heavy_first} of the first 24 slots: {order:?}"
        );
    }

    /// One tenant's backlog does not delay another tenant's single request by more than about
    /// one compute.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newcomer_is_served_next() {
        let s = Arc::new(Scheduler::new(1, 100, Duration::from_secs(60)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |tenant: &'static str| {
            let (s, order) = (s.clone(), order.clone());
            tokio::spawn(async move {
                let caller = Caller {
                    tenant: Arc::from(tenant),
                    weight: 1,
                };
                s.run("m", &caller, Duration::from_secs(60), false, move || {
                    std::thread::sleep(Duration::from_millis(3));
                    order.lock().unwrap().push(tenant);
                    Ok(())
                })
                .await
                .unwrap();
            })
        };
        let mut tasks: Vec<_> = (0..20).map(|_| spawn("flood")).collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let done_before = order.lock().unwrap().len();
        tasks.push(spawn("newcomer"));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let at = order.iter().position(|t| *t == "newcomer").unwrap();
        // FIFO would put it after the whole remaining backlog (about 16 computes).
        assert!(
            at <= done_before + 2,
            "the newcomer came {at}th, {done_before} were done when it arrived: {order:?}"
        );
    }

    #[tokio::test]
    async fn a_queue_wait_has_its_own_timeout() {
        let s = Arc::new(Scheduler::new(1, 10, Duration::from_millis(50)));
        let busy = {
            let s = s.clone();
            tokio::spawn(async move {
                s.run(
                    "m",
                    &Caller::default(),
                    Duration::from_secs(10),
                    false,
                    || {
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(())
                    },
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waited = s
            .run(
                "m",
                &Caller::default(),
                Duration::from_secs(10),
                false,
                || Ok(()),
            )
            .await;
        assert!(
            matches!(waited, Err(NnError::QueueTimeout { .. })),
            "{waited:?}"
        );
        busy.await.unwrap().unwrap();
        // The slot is free again afterwards.
        s.run(
            "m",
            &Caller::default(),
            Duration::from_secs(10),
            false,
            || Ok(()),
        )
        .await
        .unwrap();
    }
}
