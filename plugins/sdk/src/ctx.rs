//! [`Ctx`]: what the host established about the current request (identity, matched route, path
//! parameters) plus what the plugin saw on the wire (query, headers), and the host services
//! scoped to it (usage reporting, logging).

use crate::bindings::infergate::plugin::host::{self, RequestContext};

/// Log levels for [`Ctx::log`].
pub use crate::bindings::infergate::plugin::host::LogLevel;

/// The context of the request being handled. Plugins see identity, never credentials.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Identity and route, from `infergate:plugin/host.context`.
    host: RequestContext,
    /// The HTTP method, upper case.
    method: String,
    /// The request path relative to the plugin's mount, without the query.
    path: String,
    /// The raw query string (without `?`), if any.
    query: Option<String>,
    /// Request headers as sent (names lower case as the host delivers them).
    headers: Vec<(String, Vec<u8>)>,
}

impl Ctx {
    pub(crate) fn new(
        host: RequestContext,
        method: String,
        path: String,
        query: Option<String>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Self {
        Self {
            host,
            method,
            path,
            query,
            headers,
        }
    }

    /// A context for unit tests of handlers, outside the host: tenant `tenant`, every scope
    /// (`*`), no key, no claims, a `POST /` request. The host services (`log`,
    /// `report_usage`) need the host: call them only from code the test does not reach.
    pub fn for_tests(tenant: &str) -> Self {
        let host = RequestContext {
            request_id: "test".into(),
            tenant: tenant.into(),
            key_id: None,
            scopes: vec!["*".into()],
            claims: Vec::new(),
            route: "/".into(),
            params: Vec::new(),
        };
        Self::new(host, "POST".into(), "/".into(), None, Vec::new())
    }

    /// The id the host gave this request (also in `x-request-id` and error bodies).
    pub fn request_id(&self) -> &str {
        &self.host.request_id
    }

    /// The caller's tenant.
    pub fn tenant(&self) -> &str {
        &self.host.tenant
    }

    /// The id of the caller's API key, if it used one.
    pub fn key_id(&self) -> Option<&str> {
        self.host.key_id.as_deref()
    }

    /// Scopes granted to the caller.
    pub fn scopes(&self) -> &[String] {
        &self.host.scopes
    }

    /// Whether the caller holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.host.scopes.iter().any(|s| s == scope)
    }

    /// Selected claims of the caller's token, as (name, JSON text) pairs.
    pub fn claims(&self) -> &[(String, String)] {
        &self.host.claims
    }

    /// One claim, as JSON text (`"\"alice\""`, `42`).
    pub fn claim(&self, name: &str) -> Option<&str> {
        lookup(&self.host.claims, name)
    }

    /// The route template that matched, exactly as declared (`/items/{id}`).
    pub fn route(&self) -> &str {
        &self.host.route
    }

    /// Path parameters, as (name, value) pairs.
    pub fn params(&self) -> &[(String, String)] {
        &self.host.params
    }

    /// One path parameter: `ctx.param("id")` for `/items/{id}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        lookup(&self.host.params, name)
    }

    /// The HTTP method, upper case.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request path relative to the plugin's mount (`/items/42`), without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without the `?`.
    pub fn query_string(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The first value of header `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// All request headers, as (name, value bytes) pairs.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// Adds to this request's usage (tokens read, tokens generated); calls add up.
    pub fn report_usage(&self, tokens_in: u64, tokens_out: u64) {
        host::report_usage(tokens_in, tokens_out);
    }

    /// Writes a structured log line; the host tags it with the plugin and the request id.
    pub fn log(&self, level: LogLevel, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host::log(level, message, &fields);
    }

    /// Logs at trace level.
    pub fn log_trace(&self, message: &str) {
        self.log(LogLevel::Trace, message, &[]);
    }

    /// Logs at debug level.
    pub fn log_debug(&self, message: &str) {
        self.log(LogLevel::Debug, message, &[]);
    }

    /// Logs at info level.
    pub fn log_info(&self, message: &str) {
        self.log(LogLevel::Info, message, &[]);
    }

    /// Logs at warn level.
    pub fn log_warn(&self, message: &str) {
        self.log(LogLevel::Warn, message, &[]);
    }

    /// Logs at error level.
    pub fn log_error(&self, message: &str) {
        self.log(LogLevel::Error, message, &[]);
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as they are, invalid UTF-8 is
/// replaced.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: &u8) -> Option<u8> {
    (*byte as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
