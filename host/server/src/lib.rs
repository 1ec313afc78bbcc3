//! infergate: a multi-tenant HTTP host whose endpoints are sandboxed WebAssembly plugins and
//! whose models run natively in the host.
//!
//! Layout (each module says in its first lines what it owns). Modules only import downward:
//! the concerns at the bottom know nothing of the state or the app that compose them.
//! - [`error`]: the one error type and JSON error shape.
//! - [`router`]: the pure route table built from plugin manifests.
//! - [`registry`]: deploy, replace, remove and roll back plugins and models; the snapshot
//!   requests are served from, swapped atomically. Owns the model and plugin settings types,
//!   and with `[cluster]` the record of deploys shared through PostgreSQL and its follower.
//! - [`auth`]: who is calling (API keys, JWTs, host-issued OAuth2 tokens), tenants, and what
//!   each may call; the `/oauth` token endpoint and the admin API for tenants and keys.
//! - [`quota`]: rate limits, token and compute quotas, concurrency caps; memory or Redis.
//! - [`telemetry`]: request and model metrics, rendered for Prometheus at `/metrics`; log lines.
//! - [`openapi`]: the OpenAPI document derived from manifests, and the `/docs` page.
//! - [`watch`]: the watched plugins directory.
//! - [`builtin`]: first-party plugins compiled into the binary.
//! - [`admin`]: the operator API under `/admin` (plugins and models) and tenant self-service.
//! - [`pipeline`]: the request path as layers: request id, metrics, overload protection, and
//!   the plugin handler (route, caller, authorisation, admission, the call).
//! - [`mcp`]: the plugins' routes as MCP tools at `/mcp`, called through the same pipeline.
//! - [`state`]: the state every handler reaches, composed of the concerns' parts.
//! - [`http`]: the app: the host's endpoints, the plugin routes and the layers around them.
//! - [`config`]: the operator's TOML configuration and the embedded default; it only composes
//!   the concerns' own config types.
//!
//! The sandbox itself lives in `infergate-runtime`; models and their backends in `infergate-nn`.
//! - [`dev`]: the plugin author's commands (`new`, `check`, `deploy`), beside the server.
//!
//! [`run`] is the entry point: the binary only parses arguments.

pub mod admin;
pub mod auth;
pub mod builtin;
pub mod config;
pub mod dev;
pub mod error;
pub mod http;
pub mod mcp;
pub mod openapi;
pub mod pipeline;
pub mod quota;
pub mod registry;
pub mod router;
pub mod state;
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
use crate::registry::{Registry, Source};
use crate::state::AppState;

/// Serves `config` on `listener` until `shutdown` resolves, then shuts down gracefully.
///
/// The socket answers at once (`/healthz`; `/readyz` says 503 until ready) while models and
/// plugins load in the background. A start-up load failure ends `run` with that error.
///
/// Shutting down, for rolling updates behind a load balancer: `/readyz` answers 503 at once
/// while the host keeps accepting and serving for `[server] shutdown_grace_ms` (the balancer
/// sees it leave first); then it stops accepting and the requests in flight, streams included,
/// finish, for at most `drain_timeout_ms`; then `run` returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    auth: Arc<auth::Auth>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (app, registry) = app(&config, auth)?;
    let grace = std::time::Duration::from_millis(config.server.shutdown_grace_ms);
    let drain = std::time::Duration::from_millis(config.server.drain_timeout_ms);
    let port = listener.local_addr()?.port();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let (cluster_tx, mut cluster_rx) = tokio::sync::oneshot::channel::<Arc<registry::Cluster>>();
    let loading = registry.clone();
    tokio::spawn(async move {
        let registry = loading;
        match start(&config, &registry, port).await {
            Ok((watcher, cluster)) => {
                registry.set_ready();
                tracing::info!("ready");
                if let Some(watcher) = watcher {
                    tokio::spawn(watcher.run(registry.clone()));
                }
                if let Some(cluster) = cluster {
                    tokio::spawn(registry::follow(registry.clone(), cluster.clone()));
                    let _ = cluster_tx.send(cluster);
                }
            }
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        }
    });

    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let (closed_tx, mut closed_rx) = tokio::sync::watch::channel(false);
    let close = async move {
        shutdown.await;
        registry.set_draining();
        if !grace.is_zero() {
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: /readyz answers 503; still serving for the grace period"
            );
            tokio::time::sleep(grace).await;
        }
        tracing::info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: no longer accepting; finishing the requests in flight"
        );
        let _ = closed_tx.send(true);
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(close);
    let drain_bound = async move {
        let _ = closed_rx.wait_for(|closed| *closed).await;
        tokio::time::sleep(drain).await;
    };
    let done = tokio::select! {
        result = server => result.context("serving HTTP"),
        () = drain_bound => {
            tracing::warn!("requests still in flight after drain_timeout_ms: exiting anyway");
            Ok(())
        }
        Ok(error) = failed_rx => Err(error),
    };
    if let Ok(cluster) = cluster_rx.try_recv() {
        cluster.leave().await;
    }
    done
}

/// The app [`run`] serves for `config`: the state every handler reaches, the host's endpoints
/// and the plugin routes inside their layers; and its registry, empty (every plugin route 503
/// `not_ready`) until [`start`] has loaded it and it is set ready.
pub fn app(
    config: &Config,
    auth: Arc<auth::Auth>,
) -> anyhow::Result<(axum::Router, Arc<Registry>)> {
    let quotas = Arc::new(quota::Quotas::new(&config.limits).context("in [limits]")?);
    quotas.start();
    let state = AppState::new(state::Parts {
        registry: Arc::new(Registry::default()),
        auth,
        admin_key: Arc::new(auth::operator::AdminKey::new(config.admin.key.as_deref())),
        metrics_access: Arc::new(auth::operator::MetricsAccess::new(
            config.admin.public_metrics,
            config.admin.key.as_deref(),
            config.admin.metrics_key.as_deref(),
        )),
        quotas,
        metrics: Arc::new(telemetry::Metrics::default()),
        tenant_plugins: Arc::new(config.tenant_plugins.clone()),
    });
    let limits = http::AppConfig {
        max_upload_bytes: config.admin.max_upload_bytes,
        tenant_max_upload_bytes: config.tenant_plugins.max_upload_bytes,
        max_auth_failures_per_minute: config.auth.max_failures_per_minute,
        cors: config.cors.layer()?,
    };
    let overload = pipeline::overload::Overload::new(&config.server);
    let registry = state.registry.clone();
    Ok((crate::http::app(state, overload, &limits), registry))
}

/// Loads models, the runtime and every plugin of the config, what the cluster's record holds
/// and the watched directory's plugins (`port`: this instance's, for the cluster's record).
pub async fn start(
    config: &Config,
    registry: &Registry,
    port: u16,
) -> anyhow::Result<(Option<watch::Watcher>, Option<Arc<registry::Cluster>>)> {
    let cluster = match &config.cluster {
        Some(cluster) => {
            let url = cluster
                .database
                .clone()
                .or_else(|| config.auth.database.clone())
                .context("[cluster] needs `database`, or a PostgreSQL `[auth] database`")?;
            Some(Arc::new(
                registry::Cluster::open(&url, cluster, port).await?,
            ))
        }
        None => None,
    };
    let specs = config.model_specs();
    let backend_options = BackendOptions {
        ort_dylib: config.onnxruntime.library.clone(),
        ort_disabled_optimizers: config.onnxruntime.disabled_optimizers.clone(),
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
            cluster.clone(),
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
    // An instance started later serves what the others serve before it says it is ready.
    registry.catch_up().await;
    let mut watcher = config.plugins_dir.clone().map(watch::Watcher::new);
    if let Some(w) = watcher.as_mut() {
        w.initial_scan(registry).await;
    }
    Ok((watcher, cluster))
}

fn default_cache_dir() -> PathBuf {
    infergate_runtime::private_dir::user_dir("XDG_CACHE_HOME", ".cache")
}

/// Where the embedded default finds its bundled models: `INFERGATE_HOME`, else the source tree
/// this binary was built from.
pub fn home() -> PathBuf {
    std::env::var_os("INFERGATE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("INFERGATE_SOURCE_ROOT")))
}

/// The crate's shape, checked: its top-level modules import one another without a circle, so
/// they can be read (and drawn) bottom up.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module → the top-level modules its files name as `crate::…`.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph = BTreeMap::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if matches!(name.as_str(), "lib" | "main") || name.starts_with('.') {
                continue;
            }
            let files: Vec<_> = if path.is_dir() {
                walk(&path)
            } else if path.extension().is_some_and(|e| e == "rs") {
                vec![path.clone()]
            } else {
                continue;
            };
            let mut uses = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (at, _) in text.match_indices("crate::") {
                    let rest = &text[at + "crate::".len()..];
                    let module: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if module != name && !module.is_empty() {
                        uses.insert(module);
                    }
                }
            }
            graph.insert(name, uses);
        }
        graph
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn modules_import_without_a_circle() {
        let graph = imports();
        // Peel off modules whose imports are all placed already: what is left is a circle.
        let mut placed: Vec<String> = Vec::new();
        let mut left = graph.clone();
        while !left.is_empty() {
            let ready: Vec<String> = left
                .iter()
                .filter(|(_, uses)| {
                    uses.iter()
                        .all(|u| placed.contains(u) || !graph.contains_key(u))
                })
                .map(|(m, _)| m.clone())
                .collect();
            assert!(
                !ready.is_empty(),
                "these modules import one another in a circle: {left:#?}"
            );
            for m in ready {
                left.remove(&m);
                placed.push(m);
            }
        }
        println!("bottom up: {}", placed.join(" → "));
        let position = |m: &str| placed.iter().position(|p| p == m).unwrap();
        // The concerns sit below the state that composes them and the app that serves them.
        for concern in ["error", "router", "registry", "quota", "auth", "telemetry"] {
            assert!(position(concern) < position("state"), "{concern}");
        }
        assert!(position("state") < position("http"));
    }
}
