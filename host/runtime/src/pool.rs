//! Warm instances: what a plugin that opts in (`reuse = N`) keeps between requests.
//!
//! By default every request gets a fresh instance, so nothing a request leaves in the guest's
//! memory is seen by another. A plugin that opts in serves up to `N` requests from one instance
//! (as `wasmtime serve --max-instance-reuse-count` and Spin do), which matters for interpreted
//! plugins: a Python component takes about a millisecond to instantiate, a Rust one ~30 µs.
//!
//! An instance is kept only when its request ended cleanly, and only for the tenant it served:
//! - the pool is keyed by tenant, so state one tenant's request wrote is never seen by another's;
//! - a trap, a CPU, wall-clock or memory limit hit, an error response (status >= 400), a
//!   streamed response, or a generation still open at the end discards it;
//! - at most `max_concurrency` instances idle (least recently used go first), and none longer
//!   than [`IDLE`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::bindings::exports::wasi::http::incoming_handler::Guest as Handler;
use crate::state::PluginState;

/// The longest an instance waits in the pool for its next request.
pub const IDLE: Duration = Duration::from_secs(60);

/// An instance between two requests of one tenant.
pub(crate) struct Warm {
    pub store: Store<PluginState>,
    /// Its `wasi:http` handler.
    pub instance: Handler,
    /// Requests it has served.
    pub served: u32,
}

/// Idle instances of one plugin, most recently used last.
pub(crate) struct Pool {
    /// Requests one instance may serve.
    reuse: u32,
    /// Instances that may wait at once, all tenants together.
    capacity: usize,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    tenant: Arc<str>,
    since: Instant,
    warm: Warm,
}

impl Pool {
    /// `None` unless the plugin opted in (`reuse` of 2 or more).
    pub fn new(reuse: u32, capacity: usize) -> Option<Self> {
        (reuse > 1 && capacity > 0).then(|| Self {
            reuse,
            capacity,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// The most recently used idle instance of `tenant`, if any.
    pub fn take(&self, tenant: &str) -> Option<Warm> {
        let mut expired = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle.front().is_some_and(|i| i.since.elapsed() > IDLE) {
            expired.extend(idle.pop_front());
        }
        let found = idle.iter().rposition(|i| &*i.tenant == tenant);
        let warm = found.and_then(|at| idle.remove(at)).map(|i| i.warm);
        drop(idle);
        // Stores are dropped outside the lock: freeing an instance's memory takes a while.
        drop(expired);
        warm
    }

    /// Keeps an instance that served `tenant` cleanly, if it may serve again.
    pub fn put(&self, tenant: Arc<str>, warm: Warm) {
        if warm.served >= self.reuse {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push_back(Idle {
            tenant,
            since: Instant::now(),
            warm,
        });
        let evicted = (idle.len() > self.capacity).then(|| idle.pop_front());
        drop(idle);
        drop(evicted);
    }
}
