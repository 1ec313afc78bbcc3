//! Failed authentication, throttled. A client address, or a database key id, with more than
//! `[auth] max_failures_per_minute` credentials refused within a minute (the host's 401s and
//! OAuth `invalid_client`; not a plugin's own 401s) is refused at once with 429
//! `rate_limited` (and `Retry-After`) until that minute is over, before any credential is
//! looked at: guessing API keys, the admin key or client secrets costs the guesser, not the
//! key database. Counts are this instance's, in memory, for at most 100,000 addresses and ids.
//! `/healthz` and `/readyz` are never refused.
//!
//! Per key id: a key whose id is being guessed at is refused for the rest of the minute even
//! with its right secret; that is the price of not letting its id be tried without end.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use moka::sync::Cache;

use crate::auth::keys::split_key;
use crate::auth::presented_key;
use crate::error::{ApiError, CredentialRefused};
use crate::quota::Quotas;

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// Failures since `started`, the window's first.
struct Count {
    started: Instant,
    failures: AtomicU32,
}

/// The layer's state.
pub struct Failures {
    /// Most failures in a window; 0: no throttling.
    limit: u32,
    by_ip: Cache<IpAddr, Arc<Count>>,
    by_key: Cache<String, Arc<Count>>,
    /// When the last failure was recorded (ms after `epoch`; 0: never): while none was within
    /// a window, requests skip the lookups.
    last_failure_ms: AtomicU64,
    epoch: Instant,
    /// Which address a request comes from (trusted proxies).
    quotas: Arc<Quotas>,
}

impl Failures {
    pub fn new(limit: u32, quotas: Arc<Quotas>) -> Self {
        fn cache<K: std::hash::Hash + Eq + Send + Sync + 'static>() -> Cache<K, Arc<Count>> {
            Cache::builder()
                .max_capacity(100_000)
                .time_to_live(WINDOW)
                .build()
        }
        Self {
            limit,
            by_ip: cache(),
            by_key: cache(),
            last_failure_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            quotas,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether any failure was recorded within the last window.
    fn recent_failures(&self) -> bool {
        let last = self.last_failure_ms.load(Ordering::Relaxed);
        last != 0 && self.now_ms().saturating_sub(last) <= WINDOW.as_millis() as u64
    }

    /// How long until `count` is no longer over the limit; `None` when it is not.
    fn over(&self, count: Option<Arc<Count>>) -> Option<Duration> {
        let count = count?;
        (count.failures.load(Ordering::Relaxed) >= self.limit)
            .then(|| WINDOW.saturating_sub(count.started.elapsed()))
    }
}

fn record<K>(cache: &Cache<K, Arc<Count>>, key: K)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    cache
        .get_with(key, || {
            Arc::new(Count {
                started: Instant::now(),
                failures: AtomicU32::new(0),
            })
        })
        .failures
        .fetch_add(1, Ordering::Relaxed);
}

pub async fn throttle<F, Fut>(f: &Failures, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if f.limit == 0 || matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let ip = f.quotas.client_ip(peer, request.headers());
    let key_id = presented_key(request.headers())
        .ok()
        .and_then(split_key)
        .map(|(id, _)| id.to_string());
    let wait = f.recent_failures().then(|| {
        f.over(f.by_ip.get(&ip)).or_else(|| {
            let id = key_id.as_ref()?;
            f.over(f.by_key.get(id))
        })
    });
    if let Some(Some(wait)) = wait {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed authentications: try again later",
        )
        .retry_after(wait.max(Duration::from_secs(1)))
        .into_response();
    }
    let response = next(request).await;
    if response.extensions().get::<CredentialRefused>().is_some() {
        f.last_failure_ms.store(f.now_ms(), Ordering::Relaxed);
        record(&f.by_ip, ip);
        if let Some(id) = key_id {
            record(&f.by_key, id);
        }
    }
    response
}
