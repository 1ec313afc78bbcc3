//! The registry: an immutable snapshot of loaded plugins and their route table, swapped
//! atomically. Requests take the snapshot current when they start and keep it to the end.
//! Loading and validation happen here, off the request path; nothing else builds snapshots.

use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use infergate_nn::Models;
use infergate_runtime::{Plugin, PluginSpec, Runtime};

use crate::config::{Config, PluginConfig};
use crate::router::{Router, Target};

/// A plugin as served: the runtime's plugin plus what the HTTP side derived from its manifest.
pub struct Mounted {
    /// The operator's name for the plugin.
    pub name: String,
    /// Path prefix of its routes ("" for root).
    pub mount: String,
    pub plugin: Plugin,
    /// Compiled request-body validators, one per manifest route (None: no schema).
    pub validators: Vec<Option<jsonschema::Validator>>,
}

/// Everything a request needs to find and run its plugin.
pub struct Snapshot {
    pub plugins: Vec<Arc<Mounted>>,
    pub router: Router,
}

#[derive(Default)]
pub struct Registry {
    current: ArcSwapOption<Snapshot>,
}

impl Registry {
    /// The snapshot to serve a request with; `None` while the host is still loading.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }
}

/// Loads every configured plugin and builds the route table; the error names the plugin.
pub async fn load(
    config: &Config,
    runtime: &Arc<Runtime>,
    models: &Models,
) -> anyhow::Result<Snapshot> {
    let mut plugins = Vec::new();
    let mut router = Router::default();
    for (index, pc) in config.plugins.iter().enumerate() {
        let mounted = load_plugin(pc, runtime, models)
            .await
            .with_context(|| format!("loading plugin `{}`", pc.name))?;
        for (route_index, route) in mounted.plugin.manifest.routes.iter().enumerate() {
            let target = Target {
                plugin: index,
                route: route_index,
            };
            router
                .add(&mounted.mount, route.method.clone(), &route.path, target)
                .map_err(|e| anyhow::anyhow!("plugin `{}`: {e}", pc.name))?;
        }
        tracing::info!(
            plugin = %mounted.name,
            mount = %if mounted.mount.is_empty() { "/" } else { &mounted.mount },
            version = %mounted.plugin.manifest.version,
            routes = mounted.plugin.manifest.routes.len(),
            cache = ?mounted.plugin.cache,
            digest = %&mounted.plugin.digest[..12],
            "plugin loaded"
        );
        plugins.push(Arc::new(mounted));
    }
    Ok(Snapshot { plugins, router })
}

async fn load_plugin(
    pc: &PluginConfig,
    runtime: &Arc<Runtime>,
    models: &Models,
) -> anyhow::Result<Mounted> {
    let wasm: Arc<[u8]> = match (&pc.path, &pc.builtin) {
        (Some(path), _) => std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into(),
        (None, Some(name)) => crate::builtin::wasm(name)
            .with_context(|| format!("no builtin plugin `{name}`"))?
            .into(),
        (None, None) => anyhow::bail!("no `path` or `builtin`"),
    };
    let spec = PluginSpec {
        wasm,
        limits: pc.limits.clone(),
        models: pc.models.clone(),
    };
    let plugin = runtime.load_plugin(spec, models).await?;
    let mut validators = Vec::new();
    for route in &plugin.manifest.routes {
        let validator = match &route.request_schema {
            Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                anyhow::anyhow!(
                    "route `{} {}`: invalid request schema: {e}",
                    route.method,
                    route.path.raw
                )
            })?),
            None => None,
        };
        validators.push(validator);
    }
    Ok(Mounted {
        name: pc.name.clone(),
        mount: pc.mount(),
        plugin,
        validators,
    })
}
