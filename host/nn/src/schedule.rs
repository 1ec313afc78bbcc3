//! The scheduling of one model's inferences: a bounded queue in front of a concurrency limit,
//! compute on tokio's blocking pool, a timeout around queueing and compute, and statistics.
//!
//! A compute holds its slot until the backend really returns, even when its caller has given
//! up on it: a timed-out inference still occupies the CPU, so it keeps counting against the
//! model's concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::NnError;

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
}

pub(crate) struct Scheduler {
    /// One permit per compute slot.
    slots: Arc<Semaphore>,
    concurrency: usize,
    queue_depth: usize,
    counters: Arc<Counters>,
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
    /// Moving average of recent compute times, for `Retry-After` (0: no sample yet).
    mean_compute_nanos: AtomicU64,
}

impl Counters {
    fn record_compute(&self, elapsed: Duration, ok: bool) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        if ok {
            self.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        // Exponential moving average, weight 1/4 for the newest sample; races only lose a sample.
        let old = self.mean_compute_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            nanos
        } else {
            old - old / 4 + nanos / 4
        };
        self.mean_compute_nanos.store(new.max(1), Ordering::Relaxed);
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
    pub(crate) fn new(concurrency: usize, queue_depth: usize) -> Scheduler {
        Scheduler {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            queue_depth,
            counters: Arc::default(),
        }
    }

    /// Runs `job` on the blocking pool once a slot is free; returns its result with the time
    /// spent queueing and computing.
    pub(crate) async fn run<T, F>(
        &self,
        model: &str,
        timeout: Duration,
        job: F,
    ) -> Result<(T, Duration, Duration), NnError>
    where
        F: FnOnce() -> Result<T, NnError> + Send + 'static,
        T: Send + 'static,
    {
        let arrived = Instant::now();
        // Take a slot at once if one is free; otherwise join the queue or be refused.
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => Err(self.enter_queue(model)?),
        };
        let work = async move {
            let permit = match slot {
                Ok(permit) => permit,
                Err(place_in_queue) => {
                    let permit = self.slots.clone().acquire_owned().await.map_err(|_| {
                        NnError::Backend("the model's scheduler is closed".to_string())
                    })?;
                    drop(place_in_queue);
                    permit
                }
            };
            let queued = arrived.elapsed();
            let counters = self.counters.clone();
            let handle = tokio::task::spawn_blocking(move || run_holding(permit, &counters, job));
            let (result, compute) = handle
                .await
                .map_err(|e| NnError::Backend(format!("the compute task failed: {e}")))?;
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

    /// Takes a place in the queue (given back when the returned guard drops), or refuses with
    /// `QueueFull` when the queue is at its depth.
    fn enter_queue(&self, model: &str) -> Result<Gauge<'_, AtomicUsize>, NnError> {
        let waiting = &self.counters.waiting;
        let mut current = waiting.load(Ordering::Relaxed);
        loop {
            if current >= self.queue_depth {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(NnError::QueueFull {
                    model: model.to_string(),
                    retry_after: self.retry_after(current + 1),
                });
            }
            match waiting.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(Gauge(waiting)),
                Err(actual) => current = actual,
            }
        }
    }

    /// How long a refused caller should wait: the recent mean compute time times its place in
    /// the queue, spread over the slots; at least one second, rounded up to seconds.
    fn retry_after(&self, position: usize) -> Duration {
        let mean = self.counters.mean_compute_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let rounds = (position as f64 / self.concurrency as f64).ceil();
        let seconds = (mean * rounds).ceil().clamp(1.0, 3600.0);
        Duration::from_secs(seconds as u64)
    }

    pub(crate) fn stats(&self) -> ModelStats {
        let c = &self.counters;
        ModelStats {
            queued: c.waiting.load(Ordering::Relaxed) as u64,
            running: c.running.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            busy_seconds_total: c.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The blocking side of a compute: holds the slot until the job really ends.
fn run_holding<T>(
    permit: OwnedSemaphorePermit,
    counters: &Counters,
    job: impl FnOnce() -> Result<T, NnError>,
) -> (Result<T, NnError>, Duration) {
    counters.running.fetch_add(1, Ordering::Relaxed);
    let _running = Gauge(&counters.running);
    let started = Instant::now();
    let result = job();
    let elapsed = started.elapsed();
    counters.record_compute(elapsed, result.is_ok());
    drop(permit);
    (result, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_after_is_at_least_a_second_and_grows_with_the_queue() {
        let s = Scheduler::new(1, 4);
        assert_eq!(s.retry_after(1), Duration::from_secs(1));
        s.counters.record_compute(Duration::from_millis(1500), true);
        assert_eq!(s.retry_after(1), Duration::from_secs(2));
        assert_eq!(s.retry_after(3), Duration::from_secs(5));
    }
}
