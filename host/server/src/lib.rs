//! infergate: a multi-tenant HTTP host whose endpoints are sandboxed WebAssembly plugins and
//! whose models run natively in the host.
//!
//! Layout (each module says in its first lines what it owns):
//! - [`config`]: the operator's TOML configuration and the embedded default.
//! - [`http`]: the HTTP surface — built-in endpoints, request ids, the dispatch pipeline.
//! - [`admin`]: the operator API under `/admin` (plugins and models).
//! - [`error`]: the one error type and JSON error shape.
//! - [`auth`]: who is calling (API keys, JWTs, host-issued OAuth2 tokens), tenants, and what
//!   each may call; the `/oauth` token endpoint and the admin API for tenants and keys.
//! - [`quota`]: rate limits, token and compute quotas, concurrency caps; memory or Redis.
//! - [`router`]: the pure route table built from plugin manifests.
//! - [`registry`]: deploy, replace, remove and roll back plugins and models; the snapshot
//!   requests are served from, swapped atomically.
//! - [`watch`]: the watched plugins directory.
//! - [`telemetry`]: request and model metrics, rendered for Prometheus at `/metrics`.
//! - [`openapi`]: the OpenAPI document derived from manifests, and the `/docs` page.
//! - [`builtin`]: first-party plugins compiled into the binary.
//!
//! The sandbox itself lives in `infergate-runtime`; models and their backends in `infergate-nn`.
//! [`run`] is the entry point: the binary only parses arguments.

pub mod admin;
pub mod auth;
pub mod builtin;
pub mod config;
pub mod error;
pub mod http;
pub mod openapi;
pub mod quota;
pub mod registry;
pub mod router;
pub mod telemetry;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use infergate_nn::{BackendOptions, Models};
use infergate_runtime::{ModelTable, Runtime, RuntimeOptions};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::AppState;
use crate::registry::{Registry, Source};

/// Serves `config` on `listener` until `shutdown` resolves; in-flight requests then finish.
///
/// The socket answers at once (`/healthz`; `/readyz` says 503 until ready) while models and
/// plugins load in the background. A start-up load failure ends `run` with that error.
pub async fn run(
    listener: TcpListener,
    config: Config,
    auth: Arc<auth::Auth>,
    admin_key: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let quotas = Arc::new(quota::Quotas::new(&config.limits).context("in [limits]")?);
    quotas.start();
    let state = Arc::new(AppState {
        registry: Registry::default(),
        auth,
        admin: admin_key.map(|k| admin::AdminKey::new(&k)),
        max_upload_bytes: config.admin.max_upload_bytes,
        tenant_plugins: config.tenant_plugins.clone(),
        metrics: telemetry::Metrics::default(),
        quotas,
    });
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader_state = state.clone();
    tokio::spawn(async move {
        match start(&config, &loader_state.registry).await {
            Ok(watcher) => {
                loader_state.registry.set_ready();
                tracing::info!("ready");
                if let Some(watcher) = watcher {
                    tokio::spawn(watcher.run(loader_state.clone()));
                }
            }
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        }
    });

    let app = crate::http::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    tokio::select! {
        result = server => result.context("serving HTTP"),
        Ok(error) = failed_rx => Err(error),
    }
}

/// Loads models, the runtime and every plugin of the config and of the watched directory.
async fn start(config: &Config, registry: &Registry) -> anyhow::Result<Option<watch::Watcher>> {
    let specs = config.model_specs();
    let backend_options = BackendOptions {
        ort_dylib: config.onnxruntime.library.clone(),
        ..Default::default()
    };
    let options = backend_options.clone();
    let models = tokio::task::spawn_blocking(move || Models::load(&specs, &options))
        .await?
        .context("loading models")?;
    for name in models.names() {
        if let Some(model) = models.get(name) {
            tracing::info!(model = name, backend = %model.backend_description(), "model loaded");
        }
    }
    let runtime = Arc::new(Runtime::new(&RuntimeOptions {
        cache_dir: Some(config.cache_dir.clone().unwrap_or_else(default_cache_dir)),
        max_instances: config.max_instances,
    })?);
    registry
        .init(
            runtime,
            ModelTable::new(&models),
            backend_options,
            config.admin.versions_kept,
        )
        .await;
    for pc in &config.plugins {
        let wasm: Arc<[u8]> = match (&pc.path, &pc.builtin) {
            (Some(path), _) => std::fs::read(path)
                .with_context(|| format!("reading plugin `{}` from {}", pc.name, path.display()))?
                .into(),
            (None, Some(name)) => crate::builtin::wasm(name)
                .with_context(|| format!("no builtin plugin `{name}`"))?
                .into(),
            (None, None) => anyhow::bail!("plugin `{}` has no `path` or `builtin`", pc.name),
        };
        registry
            .deploy(&pc.name, wasm, pc.settings(), Source::Config, None)
            .await
            .with_context(|| format!("loading plugin `{}`", pc.name))?;
    }
    let mut watcher = config.plugins_dir.clone().map(watch::Watcher::new);
    if let Some(w) = watcher.as_mut() {
        w.initial_scan(registry).await;
    }
    Ok(watcher)
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("infergate")
}

/// Where the embedded default finds its bundled models: `INFERGATE_HOME`, else the source tree
/// this binary was built from.
pub fn home() -> PathBuf {
    std::env::var_os("INFERGATE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("INFERGATE_SOURCE_ROOT")))
}
