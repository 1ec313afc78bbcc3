//! CORS, so that a page on another origin can call the host from a browser. Off unless
//! `[cors] allowed_origins` names some. Preflights (`OPTIONS` with
//! `Access-Control-Request-Method`) are answered here, before authentication or any limit, and
//! every answer to an allowed origin (errors included, so a page can read why it was refused)
//! carries the CORS headers. tower-http's layer does the protocol.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// `[cors]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins whose pages may call the host (`https://app.example.com`), or `["*"]` for any.
    /// Empty: CORS is off, and browsers keep pages of other origins out.
    pub allowed_origins: Vec<String>,
    /// Methods a page may use.
    pub allowed_methods: Vec<String>,
    /// Request headers a page may send.
    pub allowed_headers: Vec<String>,
    /// Response headers a page may read beyond the simple ones.
    pub expose_headers: Vec<String>,
    /// Whether a page may send cookies or HTTP authentication (not with `*`).
    pub allow_credentials: bool,
    /// How long a browser may reuse a preflight's answer, in seconds.
    pub max_age_s: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: strings(&["GET", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: strings(&[
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "traceparent",
            ]),
            expose_headers: strings(&[
                "x-request-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
                "ratelimit-policy",
            ]),
            allow_credentials: false,
            max_age_s: 600,
        }
    }
}

impl CorsConfig {
    /// The layer, or `None` when CORS is off; errors name the bad entry.
    pub fn layer(&self) -> anyhow::Result<Option<CorsLayer>> {
        if self.allowed_origins.is_empty() {
            return Ok(None);
        }
        let any = self.allowed_origins.iter().any(|o| o == "*");
        anyhow::ensure!(
            !any || self.allowed_origins.len() == 1,
            "cors.allowed_origins: `*` stands alone"
        );
        anyhow::ensure!(
            !(any && self.allow_credentials),
            "cors: `allow_credentials` cannot go with `allowed_origins = [\"*\"]` (browsers refuse \
             it): list the origins"
        );
        let origin = if any {
            AllowOrigin::any()
        } else {
            let origins = self
                .allowed_origins
                .iter()
                .map(|o| {
                    let valid = (o.starts_with("https://") || o.starts_with("http://"))
                        && !o.trim_end_matches('/').ends_with(':')
                        && o.matches('/').count() == 2;
                    anyhow::ensure!(
                        valid,
                        "cors.allowed_origins: `{o}` is not an origin (scheme://host[:port], no path)"
                    );
                    HeaderValue::from_str(o)
                        .map_err(|_| anyhow::anyhow!("cors.allowed_origins: `{o}` is not valid"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            AllowOrigin::list(origins)
        };
        let methods = self
            .allowed_methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| anyhow::anyhow!("cors.allowed_methods: `{m}` is not a method"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let names = |list: &[String], key: &str| {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                        .map_err(|_| anyhow::anyhow!("cors.{key}: `{h}` is not a header name"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        Ok(Some(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods(methods)
                .allow_headers(names(&self.allowed_headers, "allowed_headers")?)
                .expose_headers(names(&self.expose_headers, "expose_headers")?)
                .allow_credentials(self.allow_credentials)
                .max_age(Duration::from_secs(self.max_age_s)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str], credentials: bool) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            ..Default::default()
        }
    }

    #[test]
    fn bad_settings_are_refused_at_start_up() {
        assert!(config(&[], false).layer().unwrap().is_none());
        assert!(
            config(&["https://app.example.com"], true)
                .layer()
                .unwrap()
                .is_some()
        );
        assert!(
            config(&["http://localhost:3000"], false)
                .layer()
                .unwrap()
                .is_some()
        );
        assert!(config(&["*"], false).layer().unwrap().is_some());
        for (origins, credentials, why) in [
            (&["*"][..], true, "allow_credentials"),
            (&["*", "https://a.example"][..], false, "stands alone"),
            (&["https://a.example/path"][..], false, "not an origin"),
            (&["a.example"][..], false, "not an origin"),
        ] {
            let e = config(origins, credentials)
                .layer()
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{origins:?}: {e}");
        }
    }
}
