//! The `wasi:http` side: turning an incoming request into a [`Request`] and [`Ctx`], finding
//! the route, and writing the [`Response`] back over the output stream.
//!
//! Stream rules followed here: the whole body is read with `blocking-read` until
//! `stream-error::closed` (or until `content-length` bytes are in); the response is handed to
//! `response-outparam.set` *before* its body is written (the host reads the body as it
//! streams); body bytes go out through `blocking-write-and-flush` in chunks of at most 4096
//! bytes, then `outgoing-body.finish`.

use std::io;

use serde::Serialize;

use crate::bindings::infergate::plugin::host;
use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, OutputStream, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::{Ctx, Error, Result};

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;
/// How much one `blocking-read` asks for.
const READ_CHUNK: u64 = 64 * 1024;

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
#[doc(hidden)]
pub fn handle(
    def: &crate::__private::PluginDef,
    incoming: IncomingRequest,
    response_out: ResponseOutparam,
) {
    let context = host::context();
    let request_id = context.request_id.clone();
    let method = method_name(incoming.method());
    let path_with_query = incoming
        .path_with_query()
        .unwrap_or_else(|| "/".to_string());
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (path_with_query, None),
    };
    let headers = incoming.headers().entries();
    let ctx = Ctx::new(
        context,
        method.clone(),
        path.clone(),
        query.clone(),
        headers.clone(),
    );

    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.trim().parse().ok());
    let response = match read_body(&incoming, length) {
        Ok(body) => {
            drop(incoming);
            let request = Request {
                method,
                path,
                query,
                headers,
                body,
            };
            dispatch(def, &ctx, &request)
        }
        Err(err) => Err(err),
    };
    let response = response.unwrap_or_else(|err| error_response(&err, &request_id));
    send(response, response_out);
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

/// Reads the whole body; with its `content-length` known, stops once that many bytes are in
/// instead of asking once more for the end of the stream.
fn read_body(request: &IncomingRequest, length: Option<usize>) -> Result<Vec<u8>> {
    let failed = |what: &str| Error::bad_request(format!("cannot read the request body: {what}"));
    let body = request
        .consume()
        .map_err(|()| failed("body already consumed"))?;
    let stream = body.stream().map_err(|()| failed("no body stream"))?;
    let mut bytes = Vec::with_capacity(length.unwrap_or(0).min(READ_CHUNK as usize));
    while length != Some(bytes.len()) {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(failed(&err.to_debug_string()))
            }
        }
    }
    // The stream is a child of the body: drop it first.
    drop(stream);
    drop(body);
    Ok(bytes)
}

fn error_response(err: &Error, request_id: &str) -> Response {
    Response::bytes(err.status(), "application/json", err.to_json(request_id))
}

fn send(response: Response, response_out: ResponseOutparam) {
    let headers = match Fields::from_list(&response.headers) {
        Ok(fields) => fields,
        Err(err) => {
            let err = Error::internal(format!("invalid response header: {err:?}"));
            return send(
                error_response(&err, &host::context().request_id),
                response_out,
            );
        }
    };
    let outgoing = OutgoingResponse::new(headers);
    if outgoing.set_status_code(response.status).is_err() {
        let err = Error::internal(format!("invalid response status {}", response.status));
        return send(
            error_response(&err, &host::context().request_id),
            response_out,
        );
    }
    // `body` can only be taken once, so it is taken before the response moves to the host.
    let Ok(body) = outgoing.body() else { return };
    ResponseOutparam::set(response_out, Ok(outgoing));
    let Ok(stream) = body.write() else { return };
    let mut writer = BodyWriter {
        stream,
        buffer: Vec::with_capacity(WRITE_CHUNK),
    };
    let written = match response.body {
        Body::Bytes(bytes) => writer.send(&bytes),
        Body::Stream(write) => write(&mut writer).and_then(|()| io::Write::flush(&mut writer)),
    };
    drop(writer);
    // Finishing tells the host the body is complete; an unfinished body reads as an error.
    if written.is_ok() {
        let _ = OutgoingBody::finish(body, None);
    }
}

fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.to_ascii_uppercase(),
    }
}
