//! The operator's settings and secrets for this plugin, through the standard `wasi:config/store`.
//!
//! The operator sets them per plugin (`[plugins.config]` for values, `[plugins.secrets]` for
//! values read from the host's environment); a request cannot change them, and the plugin
//! never needs a secret in its code or its requests.
//!
//! ```ignore
//! let upstream = infergate_sdk::config::require("upstream")?;
//! let api_key = infergate_sdk::config::get("api_key")?; // Option<String>
//! ```

use crate::bindings::wasi::config::store;
use crate::Error;

/// The value of `key`, if the operator set one.
pub fn get(key: &str) -> Result<Option<String>, Error> {
    store::get(key).map_err(config_error)
}

/// The value of `key`; a `500 plugin_misconfigured` error naming the key when it is not set.
pub fn require(key: &str) -> Result<String, Error> {
    get(key)?.ok_or_else(|| {
        Error::new(
            500,
            "plugin_misconfigured",
            format!("the operator has not set `{key}` for this plugin"),
        )
    })
}

/// Every key and value set for this plugin.
pub fn all() -> Result<Vec<(String, String)>, Error> {
    store::get_all().map_err(config_error)
}

fn config_error(err: store::Error) -> Error {
    let detail = match err {
        store::Error::Upstream(m) | store::Error::Io(m) => m,
    };
    Error::internal(format!("reading the plugin's configuration: {detail}"))
}
