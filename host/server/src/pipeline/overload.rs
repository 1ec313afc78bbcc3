//! Overload protection (`[server]`): at most `max_in_flight` requests are served at once, a
//! streamed answer counting until its last byte (one of known length until its head); one
//! more is shed at once with 503 `overloaded` and `Retry-After` rather than queued behind the
//! others, so the latency of the requests let in holds. A request whose response head takes
//! longer than `request_timeout_ms` gets 504 `request_timeout` (counted from the request's
//! first wait, so one that never waits costs no timer: [`infergate_runtime::timeout`]).
//! `/healthz`, `/readyz` and `/metrics` are never refused here: probes and scrapes must answer
//! under overload. `[server]` also says how the host shuts down (`shutdown_grace_ms`,
//! `drain_timeout_ms`: see `lib.rs`'s `run`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use crate::error::ApiError;

/// `[server]`: how much the host takes on at once.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Requests served at once, streams until their end; 0: no limit.
    pub max_in_flight: usize,
    /// Longest from a request to its response head, in milliseconds; 0: no limit.
    pub request_timeout_ms: u64,
    /// What `Retry-After` tells a shed client, in seconds.
    pub retry_after_s: u64,
    /// After SIGTERM or Ctrl-C: how long `/readyz` answers 503 while the host still accepts
    /// and serves, so a load balancer takes it out of rotation before it stops accepting, in
    /// milliseconds (a few health-check intervals behind a balancer; 0 on one machine).
    pub shutdown_grace_ms: u64,
    /// Then: the longest the requests in flight (streams included) may take to finish before
    /// the host exits anyway, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            request_timeout_ms: 600_000,
            retry_after_s: 1,
            shutdown_grace_ms: 0,
            drain_timeout_ms: 60_000,
        }
    }
}

/// The layer's state.
pub struct Overload {
    /// Requests in flight now, and the most there may be (0: no limit). A counter, not a
    /// semaphore: nothing ever waits for a place, and a counter needs no lock.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    timeout: Option<Duration>,
    retry_after: Duration,
}

impl Overload {
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: config.max_in_flight,
            timeout: (config.request_timeout_ms > 0)
                .then(|| Duration::from_millis(config.request_timeout_ms)),
            retry_after: Duration::from_secs(config.retry_after_s.max(1)),
        }
    }
}

pub async fn guard<F, Fut>(overload: &Overload, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next(request).await;
    }
    let place = match overload.max_in_flight {
        0 => None,
        max => match Place::take(&overload.in_flight, max) {
            Some(place) => Some(place),
            None => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the host is serving as many requests as it takes at once; try again shortly",
                )
                .retry_after(overload.retry_after)
                .into_response();
            }
        },
    };
    let response = match overload.timeout {
        None => next(request).await,
        // Measured from the request's first wait: a request that never waits costs no timer.
        Some(limit) => match infergate_runtime::timeout::timeout(limit, next(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                format!(
                    "no answer within the host's request timeout of {} ms",
                    limit.as_millis()
                ),
            )
            .into_response(),
        },
    };
    match place {
        // A body of known length is all there: the work is done, and the place is free as
        // soon as the head goes out (when `place` is dropped here).
        Some(place)
            if http_body::Body::size_hint(response.body())
                .exact()
                .is_none() =>
        {
            let place = place.keep();
            response.map(|body| {
                Body::new(Held {
                    inner: body,
                    _place: place,
                })
            })
        }
        _ => response,
    }
}

/// One of the in-flight places, given back when dropped. It borrows the counter: only a
/// streamed answer, which outlives the request's handling, takes a reference count
/// ([`Place::keep`]), so most requests touch the shared counter twice and nothing else.
struct Place<'a>(&'a Arc<AtomicUsize>);

impl<'a> Place<'a> {
    fn take(in_flight: &'a Arc<AtomicUsize>, max: usize) -> Option<Place<'a>> {
        in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(in_flight))
    }

    /// The same place, held for as long as the response body lives.
    fn keep(self) -> KeptPlace {
        let kept = KeptPlace(self.0.clone());
        std::mem::forget(self);
        kept
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place held by a streamed response body ([`Place::keep`]).
struct KeptPlace(Arc<AtomicUsize>);

impl Drop for KeptPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's in-flight place until it ends or is dropped.
struct Held {
    inner: Body,
    _place: KeptPlace,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn overload(max_in_flight: usize, request_timeout_ms: u64) -> Overload {
        Overload::new(&ServerConfig {
            max_in_flight,
            request_timeout_ms,
            ..ServerConfig::default()
        })
    }

    fn request() -> Request {
        Request::builder()
            .uri("/plugin/route")
            .body(Body::empty())
            .unwrap()
    }

    /// A body of unknown length: one frame when polled, then its end.
    fn streamed() -> Body {
        let frames = futures::stream::iter([Ok::<_, Infallible>(Bytes::from_static(b"x"))]);
        Body::from_stream(frames)
    }

    #[tokio::test]
    async fn a_place_is_held_until_the_head_or_the_streamed_bodys_end() {
        let o = overload(2, 0);
        let held = || o.in_flight.load(Ordering::Relaxed);
        let known = guard(&o, request(), |_| async { "done".into_response() }).await;
        assert_eq!(held(), 0, "freed with the head");
        drop(known);

        let stream = guard(&o, request(), |_| async { Response::new(streamed()) }).await;
        assert_eq!(held(), 1, "held by the body");
        let also = guard(&o, request(), |_| async { Response::new(streamed()) }).await;
        let shed = guard(&o, request(), |_| async { "never".into_response() }).await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()["retry-after"], "1");
        let read = axum::body::to_bytes(stream.into_body(), 16).await.unwrap();
        assert_eq!(&read[..], b"x");
        assert_eq!(
            held(),
            1,
            "the read stream's place is free, not the other's"
        );
        drop(also);
        assert_eq!(held(), 0, "freed when dropped unread");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_waiting_at_the_timeout_gets_504() {
        let o = overload(0, 1000);
        let slow = guard(&o, request(), |_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late".into_response()
        })
        .await;
        assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
        let fast = guard(&o, request(), |_| async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            "in time".into_response()
        })
        .await;
        assert_eq!(fast.status(), StatusCode::OK);
    }
}
