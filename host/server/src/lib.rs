//! infergate: a multi-tenant HTTP host whose endpoints are sandboxed WebAssembly plugins and
//! whose models run natively in the host.
//!
//! Layout (each module says in its first lines what it owns):
//! - [`config`]: the operator's TOML configuration and the embedded default.
//! - [`http`]: the HTTP surface — built-in endpoints, request ids, the dispatch pipeline.
//! - [`error`]: the one error type and JSON error shape.
//! - [`auth`]: who is calling (API keys for now).
//! - [`router`]: the pure route table built from plugin manifests.
//! - [`registry`]: loading plugins into an immutable snapshot, swapped atomically.
//! - [`openapi`]: the OpenAPI document derived from manifests, and the `/docs` page.
//! - [`builtin`]: first-party plugins compiled into the binary.
//!
//! The sandbox itself lives in `infergate-runtime`; models and their backends in `infergate-nn`.
//! [`run`] is the entry point: the binary only parses arguments.

pub mod auth;
pub mod builtin;
pub mod config;
pub mod error;
pub mod http;
pub mod openapi;
pub mod registry;
pub mod router;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use infergate_nn::{BackendOptions, Models};
use infergate_runtime::{Runtime, RuntimeOptions};
use tokio::net::TcpListener;

use crate::auth::KeyStore;
use crate::config::Config;
use crate::http::AppState;
use crate::registry::Registry;

/// Serves `config` on `listener` until `shutdown` resolves; in-flight requests then finish.
///
/// The socket answers at once (`/healthz`; `/readyz` says 503 until ready) while models and
/// plugins load in the background. A load failure ends `run` with that error.
pub async fn run(
    listener: TcpListener,
    config: Config,
    keys: KeyStore,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = Arc::new(AppState {
        registry: Registry::default(),
        keys,
    });
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader_state = state.clone();
    tokio::spawn(async move {
        match load(&config).await {
            Ok((snapshot, runtime, models)) => {
                loader_state.registry.publish(snapshot);
                tracing::info!("ready");
                // The runtime and models live as long as the server.
                std::mem::forget((runtime, models));
            }
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        }
    });

    let server = axum::serve(listener, crate::http::app(state)).with_graceful_shutdown(shutdown);
    tokio::select! {
        result = server => result.context("serving HTTP"),
        Ok(error) = failed_rx => Err(error),
    }
}

async fn load(config: &Config) -> anyhow::Result<(registry::Snapshot, Arc<Runtime>, Models)> {
    let specs = config.model_specs();
    let options = BackendOptions {
        ort_dylib: config.onnxruntime.library.clone(),
        ..Default::default()
    };
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
    let snapshot = registry::load(config, &runtime, &models).await?;
    Ok((snapshot, runtime, models))
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
