//! Configuration values and secrets the operator gives one plugin, read by the plugin through
//! the standard `wasi:config/store` interface (`get(key)`, `get-all()`). A plugin sees only its
//! own values, and only the operator sets them: nothing a request carries reaches them. This is
//! how a plugin gets an upstream's URL or API key without the key ever being in its code, its
//! requests or the host's logs ([`Variables`]'s `Debug` shows keys, never values).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::wit_config;
use crate::state::PluginState;

/// One plugin's values, shared by all its calls. None (the default, made for every store
/// before its plugin's are set) allocates nothing.
#[derive(Clone, Default)]
pub struct Variables(Option<Arc<BTreeMap<String, String>>>);

impl Variables {
    /// The values of `entries`, by key.
    pub fn new(entries: BTreeMap<String, String>) -> Self {
        Self((!entries.is_empty()).then(|| Arc::new(entries)))
    }

    /// The keys that have a value.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries().keys().map(String::as_str)
    }

    fn entries(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.0.as_deref().unwrap_or(&NONE)
    }
}

impl fmt::Debug for Variables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Variables")
            .field("keys", &self.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit_config::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)
}

impl wit_config::Host for PluginState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, wit_config::Error>> {
        Ok(Ok(self.variables.entries().get(&key).cloned()))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, wit_config::Error>> {
        Ok(Ok(self
            .variables
            .entries()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_value() {
        let vars = Variables::new(BTreeMap::from([("api_key".into(), "sk-secret".into())]));
        let shown = format!("{vars:?}");
        assert!(
            shown.contains("api_key") && !shown.contains("sk-secret"),
            "{shown}"
        );
    }
}
