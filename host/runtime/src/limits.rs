//! Per-plugin limits, and the one place they are applied to a store.
//!
//! Memory is capped by a [`ResourceLimiter`] that also remembers whether the cap was hit, so a
//! trap that follows can be reported as `plugin_out_of_memory`. CPU time is the time spent in
//! guest code, measured at every crossing between guest and host (wasmtime's call hook): time
//! in host calls (an inference, waiting for a token, `wasi:io/poll`, a yield) does not count,
//! guest code the host calls back into (`cabi_realloc` while a host call returns its results)
//! does. The epoch ticker is only where it is checked: each tick the guest observes runs the
//! check and yields to the async executor, so a looping plugin cannot monopolise a runtime
//! thread. Wall-clock time, concurrency
//! and body sizes are enforced by [`crate::plugin`] around the call.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::{CallHook, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};

use crate::state::{HostAbort, PluginState};

/// Limits for one plugin; every field has a safe default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest linear memory a plugin instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Guest CPU time one request may use, in milliseconds (host calls such as inference excluded).
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
    store.call_hook(|mut ctx, hook| {
        ctx.data_mut().cpu.cross(hook);
        Ok(())
    });
    store.epoch_deadline_callback(move |ctx| {
        // The callback runs in a host call (`CallingHost` has just closed the guest's stint).
        if ctx.data().cpu.used > budget {
            return Err(wasmtime::Error::new(HostAbort::CpuTimeExceeded));
        }
        Ok(UpdateDeadline::Yield(1))
    });
}

/// The guest's CPU time in one request: the sum of its stints in guest code.
#[derive(Debug, Default)]
pub struct CpuClock {
    /// Guest time so far.
    pub used: Duration,
    /// When the guest's current stint began, while guest code runs.
    since: Option<Instant>,
}

impl CpuClock {
    /// Accounts one crossing between host and guest.
    fn cross(&mut self, hook: CallHook) {
        match hook {
            // Into guest code: an export called, a host call returned, or the host calling back
            // into the guest (its allocator, for a host call's results).
            CallHook::CallingWasm | CallHook::ReturningFromHost => {
                self.since.get_or_insert_with(Instant::now);
            }
            CallHook::CallingHost | CallHook::ReturningFromWasm => {
                if let Some(since) = self.since.take() {
                    self.used += since.elapsed();
                }
            }
        }
    }
}
