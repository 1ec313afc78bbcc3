//! The `wasi:http` side: turning an incoming request into a [`Request`] and [`Ctx`], finding
//! the route, and sending the [`Response`] back.
//!
//! The request is read whole with `infergate:plugin/host.read-request`, and a response in
//! memory is sent whole with `host.respond`: two host calls in all, where the `wasi:http`
//! resources take about twenty. A streamed body goes through `wasi:http`, by its stream
//! rules: the response is handed to `response-outparam.set` *before* its body is written (the
//! host reads the body as it streams); body bytes go out through `blocking-write-and-flush` in
//! chunks of at most 4096 bytes, then `outgoing-body.finish`.

use std::io;

use serde::Serialize;

use crate::bindings::infergate::plugin::host;
use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, OutputStream, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::{Ctx, Error, Result};

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;

/// A request as raw handlers see it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Upper-case HTTP method.
    pub method: String,
    /// Path relative to the plugin's mount, without the query.
    pub path: String,
    /// Raw query string without `?`.
    pub query: Option<String>,
    /// Headers as (name, value bytes) pairs.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A response: status, headers and a body that is either in memory or written as it is made.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers as (name, value bytes) pairs.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Body,
}

/// A response body.
pub enum Body {
    /// Bytes already in memory.
    Bytes(Vec<u8>),
    /// A function that writes the body as it is produced (large or streamed bodies, SSE).
    /// Its I/O error means the client went away; it is not reported further.
    Stream(StreamFn),
}

/// Writes a streamed body; see [`Body::Stream`].
pub type StreamFn = Box<dyn FnOnce(&mut BodyWriter) -> io::Result<()>>;

impl Response {
    /// A response with a body in memory and one `content-type` header.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
            body: Body::Bytes(body),
        }
    }

    /// `value` as an `application/json` response.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|err| Error::internal(format!("cannot serialise the response: {err}")))?;
        Ok(Self::bytes(status, "application/json", body))
    }

    /// A body written by `write` as it is produced, e.g. megabytes or server-sent events.
    pub fn stream(
        status: u16,
        content_type: &str,
        write: impl FnOnce(&mut BodyWriter) -> io::Result<()> + 'static,
    ) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
            body: Body::Stream(Box::new(write)),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }
}

/// Writes a response body to the host; implements [`std::io::Write`]. Bytes are sent in chunks
/// of at most 4096 bytes; [`flush`](io::Write::flush) sends what is buffered (use it after each
/// server-sent event).
pub struct BodyWriter {
    stream: OutputStream,
    buffer: Vec<u8>,
}

impl BodyWriter {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(WRITE_CHUNK) {
            self.stream
                .blocking_write_and_flush(chunk)
                .map_err(stream_error)?;
        }
        Ok(())
    }
}

impl io::Write for BodyWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + bytes.len() > WRITE_CHUNK {
            let buffered = std::mem::take(&mut self.buffer);
            self.send(&buffered)?;
        }
        if bytes.len() >= WRITE_CHUNK {
            self.send(bytes)?;
        } else {
            self.buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let buffered = std::mem::take(&mut self.buffer);
        self.send(&buffered)
    }
}

fn stream_error(err: StreamError) -> io::Error {
    match err {
        StreamError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"),
        StreamError::LastOperationFailed(e) => io::Error::other(e.to_debug_string()),
    }
}

/// Serves one request: the body of `wasi:http/incoming-handler.handle` (used by `plugin!`).
///
/// The request comes whole from `host.read-request` (one host call, instead of reading the
/// `wasi:http` resources piece by piece), and a response in memory goes back whole through
/// `host.respond`; only a streamed body is written through the `response-outparam`.
#[doc(hidden)]
pub fn handle(
    def: &crate::__private::PluginDef,
    incoming: IncomingRequest,
    response_out: ResponseOutparam,
) {
    drop(incoming);
    let host::Request {
        context,
        method,
        path_with_query,
        headers,
        body,
    } = host::read_request();
    let request_id = context.request_id.clone();
    let method = if method.bytes().any(|b| b.is_ascii_lowercase()) {
        method.to_ascii_uppercase()
    } else {
        method
    };
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (path_with_query, None),
    };
    let ctx = Ctx::new(
        context,
        method.clone(),
        path.clone(),
        query.clone(),
        headers.clone(),
    );
    let request = Request {
        method,
        path,
        query,
        headers,
        body,
    };
    let response =
        dispatch(def, &ctx, &request).unwrap_or_else(|err| error_response(&err, &request_id));
    send(response, response_out, &request_id);
}

/// Finds the route by (method, template) as the host matched it, falling back to the literal
/// path (useful when the host did not match a template, e.g. in local tests).
fn dispatch(def: &crate::__private::PluginDef, ctx: &Ctx, request: &Request) -> Result<Response> {
    let routes = &def.routes;
    let route = routes
        .iter()
        .find(|r| r.method() == request.method && r.path() == ctx.route())
        .or_else(|| {
            routes
                .iter()
                .find(|r| r.method() == request.method && r.path() == request.path)
        });
    match route {
        Some(route) => route.call(ctx, request),
        None => Err(Error::not_found(format!(
            "no route for {} {} in plugin '{}'",
            request.method, request.path, def.name
        ))),
    }
}

fn error_response(err: &Error, request_id: &str) -> Response {
    Response::bytes(err.status(), "application/json", err.to_json(request_id))
}

fn send(response: Response, response_out: ResponseOutparam, request_id: &str) {
    let Response {
        status,
        headers,
        body,
    } = response;
    match body {
        Body::Bytes(bytes) => {
            if let Err(why) = host::respond(status, &headers, &bytes) {
                // Nothing was sent (an invalid status or header): the error goes instead, once.
                // Not through `send` again: a handler that answered through `respond` itself
                // makes every later answer fail with "already answered".
                let err = Error::internal(format!("invalid response: {why}"));
                let answer = error_response(&err, request_id);
                let Body::Bytes(bytes) = answer.body else {
                    unreachable!("error responses are in memory")
                };
                let _ = host::respond(answer.status, &answer.headers, &bytes);
            }
            // Answered through `respond`: the outparam is left unused.
            drop(response_out);
        }
        Body::Stream(write) => stream(status, &headers, write, response_out, request_id),
    }
}

/// Sends a streamed body through `wasi:http`: the head first (the host reads the body as it
/// streams), then the body as `write` produces it.
fn stream(
    status: u16,
    headers: &[(String, Vec<u8>)],
    write: StreamFn,
    response_out: ResponseOutparam,
    request_id: &str,
) {
    let invalid = |what: String| error_response(&Error::internal(what), request_id);
    let fields = match Fields::from_list(headers) {
        Ok(fields) => fields,
        Err(err) => {
            let answer = invalid(format!("invalid response header: {err:?}"));
            return send(answer, response_out, request_id);
        }
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(status).is_err() {
        let answer = invalid(format!("invalid response status {status}"));
        return send(answer, response_out, request_id);
    }
    // `body` can only be taken once, so it is taken before the response moves to the host.
    let Ok(body) = outgoing.body() else { return };
    ResponseOutparam::set(response_out, Ok(outgoing));
    let Ok(stream) = body.write() else { return };
    let mut writer = BodyWriter {
        stream,
        buffer: Vec::with_capacity(WRITE_CHUNK),
    };
    let written = write(&mut writer).and_then(|()| io::Write::flush(&mut writer));
    drop(writer);
    // Finishing tells the host the body is complete; an unfinished body reads as an error.
    if written.is_ok() {
        let _ = OutgoingBody::finish(body, None);
    }
}
