//! Per-plugin limits, and the one place they are applied to a store.
//!
//! Memory is capped by a [`ResourceLimiter`] that also remembers whether the cap was hit, so a
//! trap that follows can be reported as `plugin_out_of_memory`. CPU time ([`CpuClock`]) is the
//! time the guest's call runs (is polled), less the host calls that do work of their own (an
//! inference, a generation: they pause the clock, [`CpuClock::host_work`]); waiting (`wasi:io`
//! poll, a queued inference, a token not yet decoded, a yield) suspends the call and never
//! counts. The epoch ticker is only where it is checked: each tick the guest observes runs the
//! check and yields to the async executor, so a looping plugin cannot monopolise a runtime
//! thread. Wall-clock time, concurrency and body sizes are enforced by [`crate::plugin`] around
//! the call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};

use crate::state::{HostAbort, PluginState};

/// Limits for one plugin; every field has a safe default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest linear memory a plugin instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Guest CPU time one request may use, in milliseconds (waiting, and the host's own work
    /// such as inference, excluded).
    pub cpu_ms: u64,
    /// Wall-clock time one request may take from instantiation to the last response byte, in ms.
    pub wall_ms: u64,
    /// Requests this plugin may serve at once; further ones wait (within `wall_ms`).
    pub max_concurrency: usize,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest response body a plugin may produce, in bytes.
    pub max_response_bytes: usize,
    /// Outbound HTTP requests (to granted hosts) one plugin may have in flight at once.
    pub max_outbound_concurrency: usize,
    /// Largest response body of one outbound HTTP request, in bytes.
    pub max_outbound_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            cpu_ms: 2_000,
            wall_ms: 30_000,
            max_concurrency: 64,
            max_request_bytes: 1 << 20,
            max_response_bytes: 8 << 20,
            max_outbound_concurrency: 8,
            max_outbound_response_bytes: 8 << 20,
        }
    }
}

impl Limits {
    pub fn wall_time(&self) -> Duration {
        Duration::from_millis(self.wall_ms)
    }

    pub fn cpu_time(&self) -> Duration {
        Duration::from_millis(self.cpu_ms)
    }

    /// Checks the values make sense; errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("memory_bytes", self.memory_bytes as u64),
            ("cpu_ms", self.cpu_ms),
            ("wall_ms", self.wall_ms),
            ("max_concurrency", self.max_concurrency as u64),
            ("max_request_bytes", self.max_request_bytes as u64),
            ("max_response_bytes", self.max_response_bytes as u64),
            (
                "max_outbound_concurrency",
                self.max_outbound_concurrency as u64,
            ),
            (
                "max_outbound_response_bytes",
                self.max_outbound_response_bytes as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        if self.memory_bytes > crate::engine::MAX_MEMORY_BYTES {
            return Err(format!(
                "limits.memory_bytes must be at most {} (the engine's per-instance reservation)",
                crate::engine::MAX_MEMORY_BYTES
            ));
        }
        Ok(())
    }
}

/// Caps memories, tables and instances of one store, and remembers a refused memory growth.
pub struct Limiter {
    inner: StoreLimits,
    /// Set when the guest asked for more memory than its limit; turns the trap that usually
    /// follows (an allocator abort) into `plugin_out_of_memory`.
    pub memory_exceeded: bool,
}

impl Limiter {
    pub fn new(limits: &Limits) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(100_000)
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            memory_exceeded: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_exceeded = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Applies every per-store limit. The only place limits touch a store.
pub fn configure_store(store: &mut Store<PluginState>, limits: &Limits) {
    store.limiter(|state| &mut state.limiter);
    let budget = limits.cpu_time();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |ctx| {
        if ctx.data().cpu.used() > budget {
            return Err(wasmtime::Error::new(HostAbort::CpuTimeExceeded));
        }
        Ok(UpdateDeadline::Yield(1))
    });
}

/// The guest's CPU time in one request: the time its call runs (each poll of it, [`Timed`]),
/// less the host calls that pause it ([`CpuClock::host_work`]).
///
/// Short host calls (a header read, a stream write) count as the guest's: reading the clock
/// at every crossing between guest and host (wasmtime's call hook, tens per request) cost more
/// than they take, and a guest gains nothing from them. A call that waits suspends the guest,
/// which ends the poll, so waiting never counts; a host call that works (an inference run
/// right on the calling thread, starting a generation) pauses the clock while it does.
#[derive(Debug, Default)]
pub struct CpuClock {
    /// Guest time so far, in nanoseconds, the running stint not included.
    used: AtomicU64,
    /// When the running stint began, in nanoseconds after [`EPOCH`] plus one; 0: stopped.
    since: AtomicU64,
}

/// The origin of [`CpuClock`]'s instants.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    EPOCH.elapsed().as_nanos() as u64 + 1
}

impl CpuClock {
    /// Guest time so far, the running stint included.
    pub fn used(&self) -> Duration {
        let since = self.since.load(Ordering::Relaxed);
        let running = if since == 0 {
            0
        } else {
            now_nanos().saturating_sub(since)
        };
        Duration::from_nanos(self.used.load(Ordering::Relaxed) + running)
    }

    /// Starts a stint now; one already running is dropped uncounted (it was host work: see
    /// [`CpuClock::host_work`]).
    fn start(&self) {
        self.since.store(now_nanos(), Ordering::Relaxed);
    }

    /// Ends the running stint, if any, and counts it.
    fn stop(&self) {
        let since = self.since.swap(0, Ordering::Relaxed);
        if since != 0 {
            self.used
                .fetch_add(now_nanos().saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Back to zero, for a warm instance's next request.
    pub fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }

    /// Pauses the clock for a host call that does work of its own, until the guard is dropped
    /// (when the call returns, whichever way). The call may suspend in between: the poll that
    /// resumes it starts a stint, which the guard's drop replaces, so the host's work after the
    /// wait is not counted either.
    pub fn host_work(self: &Arc<Self>) -> HostWork {
        self.stop();
        HostWork(self.clone())
    }
}

/// A host call's work, not the guest's: see [`CpuClock::host_work`].
pub struct HostWork(Arc<CpuClock>);

impl Drop for HostWork {
    fn drop(&mut self) {
        self.0.start();
    }
}

/// Guest code run under `clock`: timed while it is polled. Every place the host runs guest
/// code (instantiation, the manifest, a request) runs it through this, so the CPU limit
/// applies to all of them.
pub fn timed<'a, F: Future>(clock: &'a CpuClock, call: Pin<&'a mut F>) -> Timed<'a, F> {
    Timed { clock, call }
}

/// See [`timed`].
pub struct Timed<'a, F> {
    clock: &'a CpuClock,
    call: Pin<&'a mut F>,
}

impl<F: Future> Future for Timed<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.clock.start();
        let polled = self.call.as_mut().poll(cx);
        self.clock.stop();
        polled
    }
}
