//! The scheduling of one model's inferences: a bounded queue in front of a concurrency limit,
//! served fairly across tenants, where each compute runs (in place, on tokio's blocking pool, or
//! there on a core of its own), timeouts, and statistics.
//!
//! A compute holds its slot until the backend really returns, even when its caller has given
//! up on it: a timed-out inference still occupies the CPU, so it keeps counting against the
//! model's concurrency.
//!
//! This file is the [`Scheduler`] itself: admission (a slot now, a place in the queue, or
//! `QueueFull`), the queue and compute timeouts, and where a compute runs. It builds on
//! - `fair`: the slots and the per-tenant queues that hand a freed slot to the tenant with the
//!   least compute used relative to its weight;
//! - `stats`: the counters every compute updates, their moving averages (which decide where
//!   the next compute runs) and the [`ModelStats`] snapshot.

mod fair;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::NnError;
use crate::cores::ComputeCores;
use fair::{Shared, Slot};
use stats::{Counters, Gauge};

pub use fair::Caller;
pub use stats::{ModelStats, RECENT_COMPUTES};

/// One model's scheduler: its slots and queue, its limits, its counters.
pub(crate) struct Scheduler {
    /// The slots and the per-tenant queues of waiting callers.
    shared: Arc<Shared>,
    concurrency: usize,
    queue_depth: usize,
    /// The longest a caller waits for a slot.
    queue_timeout: Duration,
    counters: Arc<Counters>,
}

impl Scheduler {
    pub(crate) fn new(concurrency: usize, queue_depth: usize, queue_timeout: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        Scheduler {
            shared: Arc::new(Shared::new(concurrency, counters.clone())),
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
    ///
    /// [`INLINE_BELOW`]: stats::INLINE_BELOW
    /// [`INLINE_UNTIL`]: stats::INLINE_UNTIL
    /// [`INLINE_CALL_MAX`]: stats::INLINE_CALL_MAX
    /// [`PIN_ABOVE`]: stats::PIN_ABOVE
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
        // Take a slot at once if one is free; else join the queue or be refused.
        let ticket = self.admit(model, caller, estimate)?;
        // Spans of target `otel` exist only while traces are exported.
        let wait_span = tracing::info_span!(target: "otel", "queue_wait", model);
        let work = async move {
            let slot = match ticket {
                Ticket::Slot(slot) => {
                    drop(wait_span);
                    slot
                }
                Ticket::Wait(receiver, place_in_queue) => {
                    let waited = tokio::time::timeout(self.queue_timeout, receiver)
                        .instrument(wait_span)
                        .await;
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
            let span = tracing::info_span!(target: "otel", "inference", model);
            let (result, compute) = if small && self.counters.runs_inline() {
                span.in_scope(|| run_holding(slot, &self.counters, job))
            } else if !pin && self.counters.runs_in_place(timeout) && on_worker_pool() {
                span.in_scope(|| {
                    tokio::task::block_in_place(|| run_holding(slot, &self.counters, job))
                })
            } else {
                let counters = self.counters.clone();
                tokio::task::spawn_blocking(move || {
                    let _span = span.enter();
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
    ///
    /// A free slot is taken at once: a slot is only ever freed when no caller waits for it (a
    /// released slot goes to the next waiter first), so taking it jumps no queue. The `waiting`
    /// gauge must not decide this: it still counts a waiter that was handed a slot and has not
    /// run yet, and a caller refused a free slot on its account would queue behind a busy one
    /// while that slot stays free, and so would everyone after it for as long as the queue
    /// never empties: a model of two slots ran on one for whole runs of `make bench` (embed at
    /// half its throughput, full batches, bench/RESULTS.md).
    fn admit(&self, model: &str, caller: &Caller, estimate: f64) -> Result<Ticket<'_>, NnError> {
        let mut queue = self.shared.lock();
        if queue.free > 0 {
            queue.free -= 1;
            queue.charge(caller, estimate);
            return Ok(Ticket::Slot(self.shared.slot()));
        }
        let waiting = self.counters.waiting.load(Ordering::Relaxed);
        if waiting >= self.queue_depth {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(NnError::QueueFull {
                model: model.to_string(),
                retry_after: self.retry_after(waiting + 1),
            });
        }
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        let receiver = queue.wait(caller);
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
        self.counters.snapshot()
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

/// The blocking side of a compute: holds the slot until the job really ends.
fn run_holding<T>(
    slot: Slot,
    counters: &Counters,
    job: impl FnOnce() -> Option<(usize, Result<T, NnError>)>,
) -> (Result<Option<T>, NnError>, Duration) {
    counters.running.fetch_add(1, Ordering::Relaxed);
    let running = Gauge(&counters.running);
    let started = Instant::now();
    let result = job();
    let elapsed = started.elapsed();
    let result = result.map(|(inferences, result)| {
        counters.record_compute(elapsed, inferences, result.is_ok());
        result
    });
    // This compute leaves the gauge before its slot goes to the next caller, so `running`
    // never reads above the concurrency (a panic in the job drops both, in the same order).
    drop(running);
    drop(slot);
    (result.transpose(), elapsed)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

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

    /// The race that left a slot free while callers queued: a waiter handed a slot still
    /// counts as waiting until its task runs; a slot freed meanwhile must go to the next caller.
    #[test]
    fn a_freed_slot_goes_to_the_next_caller_while_a_handed_over_one_is_unclaimed() {
        let s = Scheduler::new(2, 10, Duration::from_secs(5));
        let caller = Caller::default();
        let slot = |t: Ticket<'_>| match t {
            Ticket::Slot(slot) => slot,
            Ticket::Wait(..) => panic!("a slot is free, yet the caller was queued"),
        };
        let a = slot(s.admit("m", &caller, 1e-3).unwrap());
        let b = slot(s.admit("m", &caller, 1e-3).unwrap());
        let Ticket::Wait(mut handed_over, place) = s.admit("m", &caller, 1e-3).unwrap() else {
            panic!("both slots are held: the third caller waits");
        };
        drop(a); // handed to the waiter, whose task has not run yet: it still counts as waiting
        drop(b); // nobody else waits: this one is free
        assert_eq!(s.counters.waiting.load(Ordering::Relaxed), 1);
        let c = slot(s.admit("m", &caller, 1e-3).unwrap());
        drop(c);
        // The waiter claims its slot at last; with every slot back, both are free.
        let claimed = handed_over
            .try_recv()
            .expect("the waiter was handed a slot");
        drop(place);
        drop(claimed);
        assert_eq!(s.shared.lock().free, 2);
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
