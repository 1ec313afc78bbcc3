//! The `infergate:plugin/host` interface: request identity, the request and its answer in one
//! call each ([`Exchange`]), usage reporting, structured logs.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi_http::p2::types::HostResponseOutparam;

use crate::bindings::wit_host;
use crate::state::PluginState;

/// Longest log message or field value kept; longer ones are cut so a plugin cannot flood logs.
const MAX_LOG_CHARS: usize = 4096;

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit_host::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)
}

/// The request a call serves, as `read-request` hands it over, and the slot `respond` answers
/// through: the `response-outparam` the guest's handler received, by its handle in the
/// resource table.
#[derive(Default)]
pub struct Exchange {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The handle of the call's `response-outparam`; `None` once answered through `respond`.
    pub outparam: Option<u32>,
}

impl Exchange {
    /// What [`wit_host::Host::respond`] sends: the response as the outparam would carry it.
    fn response(
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    ) -> Result<http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, String> {
        let status = StatusCode::from_u16(status)
            .map_err(|_| format!("invalid response status {status}"))?;
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid response header name {name:?}"))?;
            // The headers `wasi:http` fields refuse, refused here too.
            if wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(&header) {
                return Err(format!("the response header {name:?} is the host's to set"));
            }
            let value = HeaderValue::from_bytes(&value)
                .map_err(|_| format!("invalid value of the response header {name:?}"))?;
            map.append(header, value);
        }
        let mut response = http::Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| -> wasmtime_wasi_http::Error { match never {} })
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        *response.headers_mut() = map;
        Ok(response)
    }
}

impl wit_host::Host for PluginState {
    fn context(&mut self) -> wasmtime::Result<wit_host::RequestContext> {
        Ok(self.wit_context())
    }

    fn read_request(&mut self) -> wasmtime::Result<wit_host::Request> {
        let e = &self.exchange;
        Ok(wit_host::Request {
            context: self.wit_context(),
            method: e.method.as_str().to_string(),
            path_with_query: e.path_and_query.clone(),
            headers: e
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect(),
            body: e.body.to_vec(),
        })
    }

    fn respond(
        &mut self,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let already = || Ok(Err("the request was already answered".to_string()));
        let Some(rep) = self.exchange.outparam else {
            return already();
        };
        let response = match Exchange::response(status, headers, body) {
            Ok(response) => response,
            Err(why) => return Ok(Err(why)),
        };
        // The guest still holds the outparam's handle (and drops it later): the slot stays in
        // the table with a sender that sends nowhere, and the real one answers now.
        let Ok(slot) = self
            .table
            .get_mut::<HostResponseOutparam>(&Resource::new_own(rep))
        else {
            return already(); // set through `response-outparam.set`, which removed it
        };
        let send = std::mem::replace(&mut slot.send, Box::new(|_| {}));
        self.exchange.outparam = None;
        send(Ok(response));
        Ok(Ok(()))
    }

    fn report_usage(&mut self, tokens_in: u64, tokens_out: u64) -> wasmtime::Result<()> {
        self.usage.tokens_in = self.usage.tokens_in.saturating_add(tokens_in);
        self.usage.tokens_out = self.usage.tokens_out.saturating_add(tokens_out);
        Ok(())
    }

    fn log(
        &mut self,
        level: wit_host::LogLevel,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let message = truncate(&message);
        let fields: Vec<String> = fields
            .iter()
            .take(32)
            .map(|(k, v)| format!("{}={}", truncate(k), truncate(v)))
            .collect();
        let fields = fields.join(" ");
        let (plugin, request_id) = (&*self.plugin, &self.request.request_id);
        match level {
            wit_host::LogLevel::Trace => {
                tracing::trace!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            wit_host::LogLevel::Debug => {
                tracing::debug!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            wit_host::LogLevel::Info => {
                tracing::info!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            wit_host::LogLevel::Warn => {
                tracing::warn!(target: "plugin", plugin, request_id, fields, "{message}")
            }
            wit_host::LogLevel::Error => {
                tracing::error!(target: "plugin", plugin, request_id, fields, "{message}")
            }
        }
        Ok(())
    }
}

impl PluginState {
    fn wit_context(&self) -> wit_host::RequestContext {
        let r = &self.request;
        wit_host::RequestContext {
            request_id: r.request_id.clone(),
            tenant: r.tenant.clone(),
            key_id: r.key_id.clone(),
            scopes: r.scopes.clone(),
            claims: r.claims.clone(),
            route: r.route.clone(),
            params: r.params.clone(),
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOG_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
