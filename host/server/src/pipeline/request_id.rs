//! The outermost layer: gives every request an id (the client's `X-Request-Id` if it is sane),
//! sets it for the request's task ([`crate::error::REQUEST_ID`]) and echoes it on the response,
//! and turns any error answer that is not JSON (from axum itself) into the one error shape.
//!
//! It also keeps the connection's manners when an answer comes before the request body was
//! read (a refused credential, a body over its limit): the rest of the body is read and thrown
//! away in the background, up to [`LINGER_BYTES`] and [`LINGER_TIME`] ([`Lingering`]), so a
//! client still sending gets the answer instead of a reset connection (nginx's lingering close).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::error::{ApiError, REQUEST_ID};

/// The header the id comes in and goes out in, made once (a `&str` name is parsed at every
/// lookup).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (the client's `X-Request-Id` if it is sane), runs `next` within
/// it, echoes it on the response, and turns any error response that is not JSON into the
/// standard error shape.
pub async fn scope<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let request = request.map(|body| {
        if body.is_end_stream() {
            body
        } else {
            Body::new(Lingering(Some(body)))
        }
    });
    let id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let value = HeaderValue::from_str(&id).ok();
    let mut response = REQUEST_ID
        .scope(id, async move { ensure_json_error(next(request).await) })
        .await;
    if let Some(value) = value {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read: this connection cannot carry another request,
        // and a client must not put it back in its pool.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// 96 random-looking bits in hex. Ids only need to be unique (they name concurrency leases),
/// not secret, so each thread runs SplitMix64 from a seed drawn once from the OS instead of a
/// system call per request.
fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the OS random source failed");
            u64::from_le_bytes(seed)
        });
    }
    let next = || {
        STATE.with(|state| {
            let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(s);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes()[..4]);
    hex::encode(bytes)
}

/// The most of an unread request body read and thrown away after the answer.
pub const LINGER_BYTES: usize = 16 << 20;
/// The longest an unread request body is read for after the answer.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end, is read to its end (within [`LINGER_BYTES`]
/// and [`LINGER_TIME`]) by a task of its own.
struct Lingering(Option<Body>);

impl http_body::Body for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.0.take().filter(|b| !b.is_end_stream()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut read = 0;
                let drain = async {
                    let mut body = body;
                    while let Some(Ok(frame)) = body.frame().await {
                        read += frame.data_ref().map_or(0, Bytes::len);
                        if read > LINGER_BYTES {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(LINGER_TIME, drain).await;
            });
        }
    }
}

fn ensure_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        s if s.is_client_error() => "invalid_request",
        _ => "internal_error",
    };
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    ApiError::new(status, code, reason).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_unique_hex_across_threads() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..5000).map(|_| new_request_id()).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert!(ids.iter().all(|id| {
            id.len() == 24
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }));
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
