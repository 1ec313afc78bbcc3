//! Outbound HTTP from a plugin over `wasi:http/outgoing-handler`, blocking and typed.
//!
//! The host refuses every destination the operator did not grant to this plugin
//! (`allowed_outbound_hosts`), never follows redirects, caps the bytes of each response and
//! counts the time in the plugin's wall-clock limit. A refusal is [`SendError::Denied`].
//!
//! ```ignore
//! use infergate_sdk::outbound;
//!
//! let response = outbound::Request::post("https://api.example.com/v1/chat/completions")
//!     .header("authorization", &format!("Bearer {key}"))
//!     .json(&body)?
//!     .send()?;
//! if response.status() == 200 {
//!     let answer: serde_json::Value = response.json()?;
//! }
//! ```
//!
//! A [`Response`] is also an [`std::io::Read`] over its body, for streaming it on as it comes.

use std::fmt;
use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::wasi::http::outgoing_handler::{self, RequestOptions};
use crate::bindings::wasi::http::types::{
    self as wasi, ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::Error;

/// Bytes written to the request body per call.
const WRITE_CHUNK: usize = 4096;
/// Bytes asked for per read of the response body.
const READ_CHUNK: u64 = 64 * 1024;

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The URL cannot be sent (not `http(s)://host[:port]/...`, or bad header).
    Invalid(String),
    /// The operator did not grant this destination to the plugin.
    Denied,
    /// No connection, or no answer in time.
    Timeout,
    /// Any other failure (DNS, connection refused, TLS, protocol, response too large).
    Failed(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid outbound request: {why}"),
            Self::Denied => f.write_str("the destination is not granted to this plugin"),
            Self::Timeout => f.write_str("the upstream did not answer in time"),
            Self::Failed(why) => write!(f, "outbound request failed: {why}"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<SendError> for Error {
    /// `502 upstream_unavailable` (`504 upstream_timeout` for a timeout); a refused destination
    /// is the operator's configuration, so it is `500 outbound_denied`.
    fn from(err: SendError) -> Self {
        match err {
            SendError::Denied => Error::new(500, "outbound_denied", err.to_string()),
            SendError::Timeout => Error::new(504, "upstream_timeout", err.to_string()),
            SendError::Invalid(_) => Error::internal(err.to_string()),
            SendError::Failed(_) => Error::new(502, "upstream_unavailable", err.to_string()),
        }
    }
}

impl From<ErrorCode> for SendError {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => Self::Denied,
            ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => Self::Timeout,
            other => Self::Failed(format!("{other:?}")),
        }
    }
}

/// An outbound request, built then [`send`](Request::send)t.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with any method (`GET`, `POST`, ...) to an absolute `http(s)://` URL.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("serializing the request: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Gives up when connecting, or waiting for the first byte of the answer, takes longer than
    /// `timeout` ([`SendError::Timeout`]). Without it only the plugin's wall-clock limit applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and waits for the response's status and headers; the body is read
    /// from the [`Response`].
    pub fn send(self) -> Result<Response, SendError> {
        let (scheme, rest) = if let Some(rest) = self.url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = self.url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(SendError::Invalid(format!(
                "`{}` is not an http(s):// URL",
                self.url
            )));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let fields = Fields::from_list(&self.headers)
            .map_err(|e| SendError::Invalid(format!("headers: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        };
        let invalid = |what: &str| SendError::Invalid(format!("{what} of `{}`", self.url));
        request
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| invalid("path"))?;
        let options = self.timeout.map(|t| {
            let options = RequestOptions::new();
            let ns = t.as_nanos().min(u64::MAX as u128) as u64;
            let _ = options.set_connect_timeout(Some(ns));
            let _ = options.set_first_byte_timeout(Some(ns));
            options
        });
        let body = request
            .body()
            .map_err(|()| SendError::Invalid("request body taken".into()))?;
        let future = outgoing_handler::handle(request, options)?;
        {
            let stream = body
                .write()
                .map_err(|()| SendError::Invalid("request body stream taken".into()))?;
            for chunk in self.body.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| SendError::from_stream(e))?;
            }
        }
        OutgoingBody::finish(body, None)?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(code.into()),
            Some(Err(())) | None => return Err(SendError::Failed("no response".into())),
        };
        Response::new(response)
    }
}

impl SendError {
    fn from_stream(err: StreamError) -> Self {
        match err {
            StreamError::Closed => Self::Failed("connection closed".into()),
            StreamError::LastOperationFailed(e) => match wasi::http_error_code(&e) {
                Some(code) => code.into(),
                None => Self::Failed(e.to_debug_string()),
            },
        }
    }
}

/// A response: status and headers, and its body to read (as [`std::io::Read`], or whole).
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    // Dropped in this order: a stream before its body, a body before its response.
    stream: Option<InputStream>,
    _body: IncomingBody,
    _response: IncomingResponse,
}

impl Response {
    fn new(response: IncomingResponse) -> Result<Self, SendError> {
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| SendError::Failed("response body taken".into()))?;
        let stream = body
            .stream()
            .map_err(|()| SendError::Failed("response body stream taken".into()))?;
        Ok(Self {
            status,
            headers,
            stream: Some(stream),
            _body: body,
            _response: response,
        })
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first value of the header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The next chunk of the body as it arrives; `None` at its end.
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>, SendError> {
        self.read_at_most(READ_CHUNK)
    }

    /// Up to `max` bytes of the body, waiting for at least one; `None` at its end (after
    /// which the stream is gone).
    fn read_at_most(&mut self, max: u64) -> Result<Option<Vec<u8>>, SendError> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        let read = stream.blocking_read(max);
        if read.is_err() {
            self.stream = None;
        }
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => Ok(None),
            Err(e) => Err(SendError::from_stream(e)),
        }
    }

    /// The whole body.
    pub fn bytes(mut self) -> Result<Vec<u8>, SendError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The whole body as JSON.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        let body = self.bytes()?;
        serde_json::from_slice(&body).map_err(|e| {
            Error::new(
                502,
                "upstream_invalid",
                format!("the upstream's answer is not the JSON expected: {e}"),
            )
        })
    }
}

impl io::Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self
                .read_at_most(buf.len() as u64)
                .map_err(io::Error::other)?
            {
                Some(bytes) if bytes.is_empty() => continue,
                Some(bytes) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    return Ok(bytes.len());
                }
                None => return Ok(0),
            }
        }
    }
}
