//! The registry: what is deployed, and the immutable snapshot requests are served from.
//!
//! A snapshot (plugins + route table) is swapped atomically; a request takes the snapshot
//! current when it starts and keeps it to the end, so it finishes on the version it started on,
//! and an old version is dropped when its last request is done. Every change — deploy,
//! replace, remove, rollback, model load or unload — goes through this module, one at a time:
//! the new version is compiled and validated off the request path (it instantiates, its
//! manifest parses, its routes do not collide, its models are granted and loaded) and only then
//! published. A change that fails leaves the previous snapshot serving.

pub mod cluster;
mod config;
mod follow;
pub mod names;

pub use cluster::{Cluster, ClusterConfig};
pub use config::{BatchingConfig, ModelConfig, PluginSettings};
pub use follow::follow;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use infergate_nn::{BackendOptions, Models};
use infergate_runtime::{ModelTable, Plugin, PluginSpec, Runtime};
use serde::{Deserialize, Serialize};

use crate::router::{Router, Target};
use cluster::{InstanceStatus, PluginChange, VersionRecord};

/// How a plugin came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Directory,
    Api,
    /// A tenant's own deploy, into its namespace.
    Tenant,
}

/// One deployed version of a plugin, with what the HTTP side derived from its manifest.
pub struct Mounted {
    /// The operator's name for the plugin.
    pub name: String,
    /// Path prefix of its routes ("" for root).
    pub mount: String,
    pub settings: PluginSettings,
    pub plugin: Plugin,
    /// Compiled request-body validators, one per manifest route (None: no schema).
    pub validators: Vec<Option<jsonschema::Validator>>,
    pub source: Source,
    /// The tenant that deployed it (tenant deploys only).
    pub owner: Option<String>,
    pub deployed_at: SystemTime,
    /// What metrics call it and each of its routes (`METHOD /template`), made once here so
    /// a request only shares them.
    pub label: Arc<str>,
    pub route_labels: Vec<Arc<str>>,
}

/// Everything a request needs to find and run its plugin.
pub struct Snapshot {
    pub plugins: Vec<Arc<Mounted>>,
    pub router: Router,
}

/// Why a change was refused; the previous state keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the host is still starting")]
    NotReady,
    /// An operator's limit on tenants is reached.
    #[error("{0}")]
    Limit(String),
    /// The cluster's database did not answer: nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

/// What an operator sees of a plugin.
#[derive(Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// `serving`, or `failed` when its only deploy failed.
    pub status: &'static str,
    pub mount: Option<String>,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub source: Option<Source>,
    pub owner: Option<String>,
    pub deployed_at_unix: Option<u64>,
    pub routes: Vec<String>,
    /// Earlier versions kept for rollback, newest first (digests).
    pub previous: Vec<String>,
    pub last_error: Option<String>,
    /// With `[cluster]`: the revision of the shared record this instance serves...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// ...and what each live instance made of the plugin's latest record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceStatus>>,
}

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    pub backend: String,
    pub concurrency: usize,
    pub queue_depth: usize,
    pub timeout_ms: u64,
    pub queue_timeout_ms: u64,
    /// The scheduler's counters (graph models).
    pub stats: infergate_nn::ModelStats,
    /// A language model's generation counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<infergate_nn::llm::LlmStats>,
    /// With `[cluster]`: what each live instance made of the model's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceStatus>>,
}

pub struct Registry {
    current: ArcSwapOption<Snapshot>,
    ready: AtomicBool,
    /// Shutting down: still serving, no longer ready.
    draining: AtomicBool,
    state: tokio::sync::Mutex<Option<State>>,
    /// Counts published snapshots, for whoever follows changes (MCP's `list_changed`).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

/// What changes serialise over.
struct State {
    runtime: Arc<Runtime>,
    models: ModelTable,
    backend_options: BackendOptions,
    versions_kept: usize,
    plugins: BTreeMap<String, Entry>,
    /// The shared record of deploys, with `[cluster]`.
    cluster: Option<Arc<Cluster>>,
    /// The revision of each plugin's and model's record served here (`[cluster]`).
    applied: HashMap<String, i64>,
    applied_models: HashMap<String, i64>,
    /// Plugin revisions that failed here, not tried again until something changes.
    failed: HashMap<String, i64>,
}

#[derive(Default)]
struct Entry {
    /// Current version first; earlier ones after it, for rollback.
    versions: VecDeque<Arc<Mounted>>,
    last_error: Option<String>,
}

impl Registry {
    /// The snapshot to serve a request with; `None` until the host is ready.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        if self.ready.load(Ordering::Acquire) {
            self.current.load_full()
        } else {
            None
        }
    }

    /// Hands the registry what it needs to make changes; the host is not ready yet.
    pub async fn init(
        &self,
        runtime: Arc<Runtime>,
        models: ModelTable,
        backend_options: BackendOptions,
        versions_kept: usize,
        cluster: Option<Arc<Cluster>>,
    ) {
        self.current.store(Some(Arc::new(Snapshot {
            plugins: Vec::new(),
            router: Router::default(),
        })));
        *self.state.lock().await = Some(State {
            runtime,
            models,
            backend_options,
            versions_kept,
            plugins: BTreeMap::new(),
            cluster,
            applied: HashMap::new(),
            applied_models: HashMap::new(),
            failed: HashMap::new(),
        });
    }

    /// Serves `snapshot` from now on, and tells the followers of changes.
    fn publish_snapshot(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every snapshot published from now on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Opens the host to requests: everything loaded at start-up is in.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The host is shutting down: it serves on, but tells load balancers it is not ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Deploys a new plugin or a new version of one.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Arc<[u8]>,
        settings: PluginSettings,
        source: Source,
        owner: Option<&str>,
    ) -> Result<Arc<Mounted>, ChangeError> {
        self.deploy_within(name, wasm, settings, source, owner, None)
            .await
    }

    /// Deploys a tenant's plugin, unless that makes the tenant own more than `max_owned`:
    /// counted when the new version is published, so uploads at the same time cannot both
    /// slip under the limit. A tenant's failed deploy leaves nothing behind.
    pub async fn deploy_for_tenant(
        &self,
        name: &str,
        wasm: Arc<[u8]>,
        settings: PluginSettings,
        tenant: &str,
        max_owned: usize,
    ) -> Result<Arc<Mounted>, ChangeError> {
        self.deploy_within(
            name,
            wasm,
            settings,
            Source::Tenant,
            Some(tenant),
            Some(max_owned),
        )
        .await
    }

    /// The work of a deploy. The slow part (compiling, reading and checking the manifest,
    /// compiling its schemas) runs without the registry's lock, so reads and other changes
    /// never wait on one upload; the lock is taken to check what may have changed meanwhile
    /// (the owner, the models granted, the tenant's count) and to publish.
    async fn deploy_within(
        &self,
        name: &str,
        wasm: Arc<[u8]>,
        settings: PluginSettings,
        source: Source,
        owner: Option<&str>,
        max_owned: Option<usize>,
    ) -> Result<Arc<Mounted>, ChangeError> {
        if !names::valid_plugin_name(name) {
            return Err(ChangeError::Invalid(format!(
                "plugin name `{name}` must be {}",
                names::PLUGIN_NAME_RULE
            )));
        }
        settings
            .validate()
            .map_err(|e| ChangeError::Invalid(format!("{e:#}")))?;
        let (runtime, models) = {
            let guard = self.state.lock().await;
            let state = guard.as_ref().ok_or(ChangeError::NotReady)?;
            check_owner(state, name, owner)?;
            (state.runtime.clone(), state.models.clone())
        };
        let built = prepare(
            &runtime,
            &models,
            name,
            wasm.clone(),
            settings,
            source,
            owner,
        )
        .await;

        let mut guard = self.state.lock().await;
        let state = guard.as_mut().ok_or(ChangeError::NotReady)?;
        let result = match built {
            Ok(mounted) => self.publish(state, mounted, &wasm, max_owned).await,
            Err(e) => Err(e),
        };
        let someone_elses = state
            .plugins
            .get(name)
            .and_then(|e| e.versions.front())
            .is_some_and(|m| m.owner.as_deref() != owner);
        if someone_elses {
            // Refused as another owner's plugin: its entry is not this deploy's to mark.
        } else if result.is_err() && owner.is_some() {
            // A tenant sees the error in its answer; nothing of it stays in the registry.
            if state
                .plugins
                .get(name)
                .is_some_and(|e| e.versions.is_empty())
            {
                state.plugins.remove(name);
            }
        } else {
            // A failed first deploy of the operator's stays listed as `failed`, with its error.
            let entry = state.plugins.entry(name.to_string()).or_default();
            entry.last_error = result.as_ref().err().map(ToString::to_string);
        }
        result
    }

    /// Publishes a prepared version, after checking what may have changed while it was built
    /// (and, with `[cluster]`, recording it for the other instances first).
    async fn publish(
        &self,
        state: &mut State,
        mounted: Arc<Mounted>,
        wasm: &[u8],
        max_owned: Option<usize>,
    ) -> Result<Arc<Mounted>, ChangeError> {
        let name = mounted.name.as_str();
        check_owner(state, name, mounted.owner.as_deref())?;
        if let Some(model) = mounted
            .settings
            .models
            .iter()
            .find(|m| state.models.get(m).is_none())
        {
            return Err(ChangeError::Conflict(format!(
                "model `{model}` was unloaded while the plugin was being deployed"
            )));
        }
        if let (Some(max), Some(owner)) = (max_owned, mounted.owner.as_deref()) {
            let owned = state
                .plugins
                .iter()
                .filter(|(n, e)| {
                    n.as_str() != name
                        && e.versions
                            .front()
                            .is_some_and(|m| m.owner.as_deref() == Some(owner))
                })
                .count();
            if owned >= max {
                return Err(ChangeError::Limit(format!(
                    "a tenant may have at most {max} plugins"
                )));
            }
        }
        let snapshot = build(state, Some((name, Some(mounted.clone()))))?;
        let record = match &state.cluster {
            // A config's plugins are each instance's own.
            Some(cluster) if mounted.source != Source::Config => Some(
                cluster
                    .change_plugin(
                        name,
                        PluginChange::Deploy {
                            version: VersionRecord::of(&mounted),
                            wasm,
                            keep: state.versions_kept,
                            max_owned,
                        },
                    )
                    .await?,
            ),
            _ => None,
        };
        self.publish_snapshot(snapshot);
        let entry = state.plugins.entry(name.to_string()).or_default();
        entry.versions.push_front(mounted.clone());
        entry.versions.truncate(state.versions_kept + 1);
        if let Some(record) = record {
            self.settle_record(state, &record).await;
        }
        tracing::info!(
            plugin = name,
            mount = %if mounted.mount.is_empty() { "/" } else { &mounted.mount },
            version = %mounted.plugin.manifest.version,
            digest = %&mounted.plugin.digest[..12],
            cache = ?mounted.plugin.cache,
            source = ?mounted.source,
            "plugin deployed"
        );
        Ok(mounted)
    }

    /// Stops serving a plugin; requests in flight finish. `only_from` restricts removal to
    /// plugins that came from that source (the watched directory removes only its own).
    pub async fn remove(&self, name: &str, only_from: Option<Source>) -> Result<(), ChangeError> {
        let mut guard = self.state.lock().await;
        let state = guard.as_mut().ok_or(ChangeError::NotReady)?;
        let Some(entry) = state.plugins.get(name) else {
            return Err(ChangeError::NotFound(format!("no plugin `{name}`")));
        };
        if let (Some(from), Some(current)) = (only_from, entry.versions.front())
            && current.source != from
        {
            return Err(ChangeError::Conflict(format!(
                "plugin `{name}` was deployed through {:?}, not {from:?}",
                current.source
            )));
        }
        let snapshot = build(state, Some((name, None)))?;
        let record = match &state.cluster {
            Some(cluster) => Some(
                cluster
                    .change_plugin(name, PluginChange::Remove { only_from })
                    .await?,
            ),
            None => None,
        };
        self.publish_snapshot(snapshot);
        state.plugins.remove(name);
        if let Some(record) = record {
            self.settle_record(state, &record).await;
        }
        tracing::info!(plugin = name, "plugin removed");
        Ok(())
    }

    /// Serves the previous version of a plugin again.
    pub async fn rollback(&self, name: &str) -> Result<Arc<Mounted>, ChangeError> {
        let mut guard = self.state.lock().await;
        let state = guard.as_mut().ok_or(ChangeError::NotReady)?;
        let previous = state
            .plugins
            .get(name)
            .and_then(|e| e.versions.get(1).cloned())
            .ok_or_else(|| {
                ChangeError::NotFound(format!("plugin `{name}` has no earlier version"))
            })?;
        let snapshot = build(state, Some((name, Some(previous.clone()))))?;
        let record = match &state.cluster {
            Some(cluster) => Some(cluster.change_plugin(name, PluginChange::Rollback).await?),
            None => None,
        };
        self.publish_snapshot(snapshot);
        if let Some(entry) = state.plugins.get_mut(name) {
            entry.versions.pop_front();
        }
        if let Some(record) = record {
            self.settle_record(state, &record).await;
        }
        tracing::info!(plugin = name, digest = %&previous.plugin.digest[..12], "plugin rolled back");
        Ok(previous)
    }

    /// The plugins a tenant deployed (serving ones).
    pub async fn owned_by(&self, tenant: &str) -> Vec<String> {
        let guard = self.state.lock().await;
        let Some(state) = guard.as_ref() else {
            return Vec::new();
        };
        state
            .plugins
            .iter()
            .filter(|(_, e)| {
                e.versions
                    .front()
                    .is_some_and(|m| m.owner.as_deref() == Some(tenant))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The digest and settings of the version serving now, if any.
    pub async fn current_version(&self, name: &str) -> Option<(String, PluginSettings, Source)> {
        let guard = self.state.lock().await;
        let m = guard.as_ref()?.plugins.get(name)?.versions.front()?.clone();
        Some((m.plugin.digest.clone(), m.settings.clone(), m.source))
    }

    pub async fn plugins(&self) -> Vec<PluginInfo> {
        let guard = self.state.lock().await;
        let Some(state) = guard.as_ref() else {
            return Vec::new();
        };
        let mut statuses = match &state.cluster {
            Some(cluster) => Some(cluster.statuses("plugin").await),
            None => None,
        };
        state
            .plugins
            .iter()
            .map(|(name, entry)| {
                let current = entry.versions.front();
                PluginInfo {
                    name: name.clone(),
                    status: if current.is_some() {
                        "serving"
                    } else {
                        "failed"
                    },
                    mount: current.map(|m| {
                        if m.mount.is_empty() {
                            "/".into()
                        } else {
                            m.mount.clone()
                        }
                    }),
                    version: current.map(|m| m.plugin.manifest.version.clone()),
                    digest: current.map(|m| m.plugin.digest.clone()),
                    source: current.map(|m| m.source),
                    owner: current.and_then(|m| m.owner.clone()),
                    deployed_at_unix: current.and_then(|m| {
                        m.deployed_at
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    routes: current
                        .map(|m| {
                            m.plugin
                                .manifest
                                .routes
                                .iter()
                                .map(|r| format!("{} {}{}", r.method, m.mount, r.path.raw))
                                .collect()
                        })
                        .unwrap_or_default(),
                    previous: entry
                        .versions
                        .iter()
                        .skip(1)
                        .map(|m| m.plugin.digest.clone())
                        .collect(),
                    last_error: entry.last_error.clone(),
                    revision: state.applied.get(name).copied(),
                    instances: statuses
                        .as_mut()
                        .map(|s| s.remove(name).unwrap_or_default()),
                }
            })
            .collect()
    }

    /// Loads a model (off the async runtime) and serves it to new `load-by-name` calls;
    /// replacing one lets requests holding the old graph finish on it.
    pub async fn put_model(&self, config: ModelConfig) -> Result<(), ChangeError> {
        let mut guard = self.state.lock().await;
        let state = guard.as_mut().ok_or(ChangeError::NotReady)?;
        let model = load_model(state, &config).await?;
        if let Some(cluster) = &state.cluster {
            let revision = cluster.change_model(&config.name, Some(&config)).await?;
            state.applied_models.insert(config.name.clone(), revision);
            cluster.report("model", &config.name, revision, None).await;
        }
        tracing::info!(model = %config.name, backend = %model.backend_description(), "model loaded");
        state.models.insert(model);
        Ok(())
    }

    /// Unloads a model no deployed plugin is granted.
    pub async fn remove_model(&self, name: &str) -> Result<(), ChangeError> {
        let mut guard = self.state.lock().await;
        let state = guard.as_mut().ok_or(ChangeError::NotReady)?;
        check_unused(state, name)?;
        if let Some(cluster) = &state.cluster {
            let revision = cluster.change_model(name, None).await?;
            state.applied_models.insert(name.to_string(), revision);
            cluster.report("model", name, revision, None).await;
        }
        state.models.remove(name);
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    pub async fn models(&self) -> Vec<ModelInfo> {
        let guard = self.state.lock().await;
        let Some(state) = guard.as_ref() else {
            return Vec::new();
        };
        let mut statuses = match &state.cluster {
            Some(cluster) => Some(cluster.statuses("model").await),
            None => None,
        };
        state
            .models
            .all()
            .into_iter()
            .map(|(name, m)| {
                let spec = m.spec();
                ModelInfo {
                    name,
                    path: spec.path.display().to_string(),
                    backend: m.backend_description(),
                    concurrency: spec.concurrency,
                    queue_depth: spec.queue_depth,
                    timeout_ms: spec.timeout.as_millis() as u64,
                    queue_timeout_ms: spec.queue_timeout.as_millis() as u64,
                    stats: m.stats(),
                    generation: m.llm().map(|llm| llm.stats()),
                    instances: statuses
                        .as_mut()
                        .map(|s| s.remove(&spec.name).unwrap_or_default()),
                }
            })
            .collect()
    }
}

/// Loads a model off the async runtime (not yet served).
async fn load_model(
    state: &State,
    config: &ModelConfig,
) -> Result<Arc<infergate_nn::Model>, ChangeError> {
    let spec = config.spec();
    let options = state.backend_options.clone();
    let name = spec.name.clone();
    let models = tokio::task::spawn_blocking(move || Models::load(&[spec], &options))
        .await
        .map_err(|e| ChangeError::Invalid(format!("loading model `{name}`: {e}")))?
        .map_err(|e| ChangeError::Invalid(format!("{e:#}")))?;
    models
        .get(&config.name)
        .ok_or_else(|| ChangeError::Invalid(format!("model `{}` did not load", config.name)))
}

/// A model may be unloaded when it is loaded and no version of any plugin is granted it.
fn check_unused(state: &State, name: &str) -> Result<(), ChangeError> {
    let users: Vec<&str> = state
        .plugins
        .iter()
        .filter(|(_, e)| {
            e.versions
                .iter()
                .any(|m| m.settings.models.iter().any(|g| g == name))
        })
        .map(|(n, _)| n.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ChangeError::Conflict(format!(
            "model `{name}` is granted to {} (current or kept versions); remove or redeploy them first",
            users.join(", ")
        )));
    }
    if state.models.get(name).is_none() {
        return Err(ChangeError::NotFound(format!("no model `{name}`")));
    }
    Ok(())
}

/// A plugin of one owner (a tenant, or the operator) cannot be replaced by another.
fn check_owner(state: &State, name: &str, owner: Option<&str>) -> Result<(), ChangeError> {
    let existing = state
        .plugins
        .get(name)
        .and_then(|e| e.versions.front())
        .map(|m| m.owner.clone());
    if let Some(existing) = existing
        && existing.as_deref() != owner
    {
        return Err(ChangeError::Conflict(format!(
            "plugin `{name}` belongs to {}",
            existing.map_or("the operator".to_string(), |t| format!("tenant `{t}`"))
        )));
    }
    Ok(())
}

/// Compiles and checks a version, ready to publish: it instantiates, its manifest is valid,
/// its request schemas compile.
async fn prepare(
    runtime: &Arc<Runtime>,
    models: &ModelTable,
    name: &str,
    wasm: Arc<[u8]>,
    settings: PluginSettings,
    source: Source,
    owner: Option<&str>,
) -> Result<Arc<Mounted>, ChangeError> {
    let spec = PluginSpec {
        wasm,
        limits: settings.limits.clone(),
        models: settings.models.clone(),
        allowed_outbound_hosts: settings.allowed_outbound_hosts.clone(),
        reuse: settings.reuse.unwrap_or(1),
        variables: settings
            .variables()
            .map_err(|e| ChangeError::Invalid(format!("{e:#}")))?,
    };
    let plugin = runtime
        .load_plugin(spec, models)
        .await
        .map_err(|e| ChangeError::Invalid(format!("{e:#}")))?;
    let mut validators = Vec::new();
    for route in &plugin.manifest.routes {
        let validator = match &route.request_schema {
            Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                ChangeError::Invalid(format!(
                    "route `{} {}`: invalid request schema: {e}",
                    route.method, route.path.raw
                ))
            })?),
            None => None,
        };
        validators.push(validator);
    }
    let route_labels = plugin
        .manifest
        .routes
        .iter()
        .map(|r| Arc::from(format!("{} {}", r.method, r.path.raw)))
        .collect();
    Ok(Arc::new(Mounted {
        label: Arc::from(name),
        route_labels,
        name: name.to_string(),
        mount: settings.mount_for(name),
        settings,
        plugin,
        validators,
        source,
        owner: owner.map(String::from),
        deployed_at: SystemTime::now(),
    }))
}

/// A snapshot of the current versions with one plugin changed (`Some`) or removed (`None`).
fn build(
    state: &State,
    change: Option<(&str, Option<Arc<Mounted>>)>,
) -> Result<Snapshot, ChangeError> {
    let mut current: BTreeMap<&str, Arc<Mounted>> = state
        .plugins
        .iter()
        .filter_map(|(n, e)| Some((n.as_str(), e.versions.front()?.clone())))
        .collect();
    if let Some((name, version)) = change {
        match version {
            Some(m) => {
                current.insert(name, m);
            }
            None => {
                current.remove(name);
            }
        }
    }
    let mut router = Router::default();
    let mut plugins = Vec::with_capacity(current.len());
    for (index, mounted) in current.into_values().enumerate() {
        for (route_index, route) in mounted.plugin.manifest.routes.iter().enumerate() {
            let target = Target {
                plugin: index,
                route: route_index,
            };
            router
                .add(&mounted.mount, route.method.clone(), &route.path, target)
                .map_err(|e| ChangeError::Conflict(format!("plugin `{}`: {e}", mounted.name)))?;
        }
        plugins.push(mounted);
    }
    Ok(Snapshot { plugins, router })
}
