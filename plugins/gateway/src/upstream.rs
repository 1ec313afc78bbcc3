//! The upstreams the operator lists for this plugin, read from its configuration
//! (`wasi:config/store`):
//!
//! ```toml
//! [plugins.config]
//! upstreams = "primary, backup"            # tried in this order
//! "primary.url" = "https://api.example.com/v1"
//! "primary.timeout_ms" = "10000"           # connect + first byte; default 30000
//! "backup.url" = "http://10.0.0.7:8000/v1"
//! "backup.model" = "llama-3.1-8b"          # replaces the request's `model`
//! [plugins.secrets]
//! "primary.api_key" = "PRIMARY_API_KEY"    # sent as `Authorization: Bearer ...`
//! ```

use std::time::Duration;

use infergate_sdk::{config, Error, Result};

/// Connect + first-byte timeout of an upstream that sets none.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// Base URL, without a trailing slash (`https://api.example.com/v1`).
    pub url: String,
    pub api_key: Option<String>,
    /// Model name sent instead of the request's.
    pub model: Option<String>,
    pub timeout: Duration,
}

impl Upstream {
    /// The upstreams in the order they are tried; an error names what is missing or wrong.
    pub fn configured() -> Result<Vec<Upstream>> {
        let names = config::require("upstreams")?;
        let upstreams = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| Upstream::read(name, |key| config::get(key)))
            .collect::<Result<Vec<_>>>()?;
        if upstreams.is_empty() {
            return Err(misconfigured("`upstreams` lists no upstream"));
        }
        Ok(upstreams)
    }

    fn read(name: &str, get: impl Fn(&str) -> Result<Option<String>>) -> Result<Upstream> {
        let key = |field: &str| format!("{name}.{field}");
        let url = get(&key("url"))?
            .ok_or_else(|| misconfigured(format!("`{}` is not set", key("url"))))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(misconfigured(format!(
                "`{}` must be an http:// or https:// URL",
                key("url")
            )));
        }
        let timeout_ms = match get(&key("timeout_ms"))? {
            Some(ms) => ms.trim().parse().map_err(|_| {
                misconfigured(format!("`{}` must be milliseconds", key("timeout_ms")))
            })?,
            None => DEFAULT_TIMEOUT_MS,
        };
        Ok(Upstream {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            api_key: get(&key("api_key"))?,
            model: get(&key("model"))?,
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

fn misconfigured(message: impl Into<String>) -> Error {
    Error::new(500, "plugin_misconfigured", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Upstream> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Upstream::read("a", |key| {
            Ok(pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
        })
    }

    #[test]
    fn an_upstream_is_read_from_its_keys() {
        let up = read(&[
            ("a.url", "http://127.0.0.1:9/v1/"),
            ("a.api_key", "k"),
            ("a.timeout_ms", "250"),
        ])
        .unwrap();
        assert_eq!(up.url, "http://127.0.0.1:9/v1");
        assert_eq!(up.api_key.as_deref(), Some("k"));
        assert_eq!(up.timeout, Duration::from_millis(250));
        assert_eq!(up.model, None);
    }

    #[test]
    fn mistakes_name_the_key() {
        for (pairs, key) in [
            (&[][..], "a.url"),
            (&[("a.url", "ftp://x")][..], "a.url"),
            (
                &[("a.url", "http://x"), ("a.timeout_ms", "soon")][..],
                "a.timeout_ms",
            ),
        ] {
            let err = read(pairs).unwrap_err();
            assert_eq!(err.code(), "plugin_misconfigured");
            assert!(err.message().contains(key), "{}", err.message());
        }
    }
}
