//! Outbound HTTP from plugins (`wasi:http/outgoing-handler`): denied unless the operator grants
//! destinations per plugin, `allowed_outbound_hosts = ["https://api.example.com",
//! "http://127.0.0.1:8081"]` (Spin's model: scheme, host and optional port; no wildcards, no
//! paths). A request anywhere else is refused (`HTTP request denied`) before any connection is
//! made. A granted *name* does not grant the internal network: one that resolves to a loopback,
//! private, link-local or otherwise non-public address is refused too (list the address, or
//! `localhost`, to reach one). Redirects are never followed: the plugin gets the 3xx, and a
//! request to where it points is checked like any other.
//!
//! Per plugin, at most `max_outbound_concurrency` requests are in flight (more wait, within the
//! plugin's wall-clock limit, which also bounds how long any of them may take), and a response
//! body may have at most `max_outbound_response_bytes`.
//!
//! Each request is an `outbound` span (target `otel`, exported only when tracing is on), and
//! carries the trace on to the upstream in `traceparent` once the server installs
//! [`set_trace_headers`].

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::limits::Limits;

/// Writes the current span's trace context into an outbound request's headers.
static TRACE_HEADERS: OnceLock<fn(&mut http::HeaderMap)> = OnceLock::new();

/// Installs what writes the trace context (`traceparent`) into every outbound request; the
/// server does when it exports traces.
pub fn set_trace_headers(write: fn(&mut http::HeaderMap)) {
    let _ = TRACE_HEADERS.set(write);
}

/// One granted destination.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("allowed_outbound_hosts: `{entry}` {why}");
        let (https, rest) = if let Some(rest) = entry.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = entry.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*']) {
            return Err(bad(
                "must be scheme://host[:port], without a path or wildcards",
            ));
        }
        let authority: http::uri::Authority = rest.parse().map_err(|_| bad("has no valid host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        Ok(Origin {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
        })
    }
}

/// What one plugin may reach, shared by all its calls.
#[derive(Debug)]
pub struct OutboundPolicy {
    allowed: Vec<Origin>,
    permits: Arc<Semaphore>,
    max_response_bytes: u64,
}

impl OutboundPolicy {
    /// The grants of `entries` under `limits`; `None` when nothing is granted.
    pub fn new(entries: &[String], limits: &Limits) -> Result<Option<Arc<Self>>, String> {
        if entries.is_empty() {
            return Ok(None);
        }
        let allowed = entries
            .iter()
            .map(|e| Origin::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Arc::new(Self {
            allowed,
            permits: Arc::new(Semaphore::new(limits.max_outbound_concurrency.max(1))),
            max_response_bytes: limits.max_outbound_response_bytes as u64,
        })))
    }

    fn grants(&self, https: bool, host: &str, port: u16) -> bool {
        self.allowed
            .iter()
            .any(|o| o.https == https && o.port == port && o.host == host)
    }
}

/// Whether `ip` is on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast or unspecified).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The `wasi:http` hooks of one plugin call: its outbound policy, or none (deny all).
pub struct Outbound(pub Option<Arc<OutboundPolicy>>);

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

/// Whether `name` is a header `wasi:http` keeps out of a guest's reach: exactly wasmtime's
/// `DEFAULT_FORBIDDEN_HEADERS`, compared as text. The default hook builds that list and an
/// `Arc`'d closure on every call, and it is called for every header of every request.
fn is_forbidden(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "http2-settings"
    )
}

impl wasmtime_wasi_http::WasiHttpHooks for Outbound {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        is_forbidden(name)
    }

    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(is_forbidden)
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let policy = self.0.clone();
        let span = tracing::info_span!(
            target: "otel",
            "outbound",
            otel.kind = "client",
            http.request.method = %request.method(),
            url.full = %request.uri(),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if let Some(write) = TRACE_HEADERS.get() {
            span.in_scope(|| write(request.headers_mut()));
        }
        let recorder = span.clone();
        let sent = async move {
            let policy = policy.ok_or(Error::HttpRequestDenied)?;
            let uri = request.uri();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let host = uri
                .host()
                .ok_or(Error::HttpRequestUriInvalid)?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            if !policy.grants(https, &host, port) {
                return Err(Error::HttpRequestDenied);
            }
            if host.parse::<IpAddr>().is_err() && host != "localhost" {
                let addrs = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| Error::DnsError {
                        rcode: Some("address not available".into()),
                        info_code: None,
                    })?;
                if addrs.into_iter().any(|a| !is_public(a.ip())) {
                    return Err(Error::HttpRequestDenied);
                }
            }
            let permit = policy
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::HttpRequestDenied)?;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let limit = policy.max_response_bytes;
            let response = response.map(|body| {
                Capped {
                    inner: body.boxed_unsync(),
                    left: limit,
                    limit,
                    _permit: permit,
                }
                .boxed_unsync()
            });
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        };
        Box::new(
            async move {
                let result = sent.await;
                match &result {
                    Ok((response, _)) => {
                        recorder.record("http.response.status_code", response.status().as_u16());
                    }
                    Err(e) => {
                        recorder.record("error.type", tracing::field::debug(e));
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// A response body of at most `limit` bytes; it holds the request's concurrency place.
struct Capped {
    inner: WasiBody,
    left: u64,
    limit: u64,
    _permit: OwnedSemaphorePermit,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            if n > self.left {
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.limit)))));
            }
            self.left -= n;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_headers_are_wasmtimes() {
        for name in wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS {
            assert!(is_forbidden(&name), "{name}");
        }
        for name in [
            "content-type",
            "authorization",
            "x-api-key",
            "hostx",
            "content-length",
        ] {
            assert!(
                !is_forbidden(&http::HeaderName::from_static(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn grants_are_exact_origins() {
        let policy = OutboundPolicy::new(
            &[
                "https://api.example.com".into(),
                "http://127.0.0.1:8081/".into(),
            ],
            &Limits::default(),
        )
        .unwrap()
        .unwrap();
        assert!(policy.grants(true, "api.example.com", 443));
        assert!(!policy.grants(false, "api.example.com", 80));
        assert!(!policy.grants(true, "api.example.com", 8443));
        assert!(!policy.grants(true, "evil.example.com", 443));
        assert!(policy.grants(false, "127.0.0.1", 8081));
        assert!(!policy.grants(false, "127.0.0.1", 8082));
        for bad in [
            "api.example.com",
            "https://*.example.com",
            "https://a.example/v1",
            "ftp://a",
        ] {
            assert!(
                OutboundPolicy::new(&[bad.into()], &Limits::default()).is_err(),
                "{bad}"
            );
        }
        assert!(
            OutboundPolicy::new(&[], &Limits::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
