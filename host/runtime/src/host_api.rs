//! The `infergate:plugin/host` interface: request identity, usage reporting, structured logs.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::wit_host;
use crate::state::PluginState;

/// Longest log message or field value kept; longer ones are cut so a plugin cannot flood logs.
const MAX_LOG_CHARS: usize = 4096;

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit_host::add_to_linker::<_, HasSelf<PluginState>>(linker, |s| s)
}

impl wit_host::Host for PluginState {
    fn context(&mut self) -> wasmtime::Result<wit_host::RequestContext> {
        let r = &self.request;
        Ok(wit_host::RequestContext {
            request_id: r.request_id.clone(),
            tenant: r.tenant.clone(),
            key_id: r.key_id.clone(),
            scopes: r.scopes.clone(),
            claims: r.claims.clone(),
            route: r.route.clone(),
            params: r.params.clone(),
        })
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

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOG_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
