//! Following the cluster: brings this instance's plugins and models up to the shared record
//! (`cluster.rs`).
//!
//! A notification names what changed, and that plugin (or the models) is brought up to date at
//! once; every `reconcile_ms`, and whenever the notification connection was lost, the whole
//! record is compared with what is served here, so a missed notification heals. Bringing a
//! plugin up to date compiles the versions this instance does not have yet (from the recorded
//! bytes, through the local compile cache) without holding the registry's lock, then publishes
//! them as one change, unless a newer revision got there first. What failed here (a version
//! that does not compile, a model this instance lacks, a route that collides with one of its
//! own config's plugins) keeps the previous version serving and is reported for this instance.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::cluster::{PluginRecord, VersionRecord};
use super::{ChangeError, Cluster, Mounted, Registry, State, build, load_model, prepare};

/// Follows the cluster's record until the process ends.
pub async fn follow(registry: Arc<Registry>, cluster: Arc<Cluster>) {
    let mut listener = None;
    let mut tick = tokio::time::interval(cluster.reconcile);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            match cluster.listener().await {
                Ok(l) => {
                    listener = Some(l);
                    // What changed while no one listened.
                    registry.catch_up().await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen to the cluster's changes"),
            }
        }
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = cluster.heartbeat().await {
                    tracing::warn!(error = %e, "the cluster database does not answer");
                }
                registry.catch_up().await;
            }
            notification = l.try_recv() => match notification {
                Ok(Some(n)) => match n.payload().split_once(':') {
                    Some(("plugin", name)) => registry.sync_plugin(name).await,
                    Some(("model", _)) => registry.sync_models().await,
                    _ => {}
                },
                // The connection was lost; the next receive reconnects. Notifications sent
                // meanwhile are gone, so compare everything.
                Ok(None) => registry.catch_up().await,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the cluster's change notifications");
                    listener = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

impl VersionRecord {
    pub fn of(m: &Mounted) -> VersionRecord {
        VersionRecord {
            digest: m.plugin.digest.clone(),
            settings: m.settings.clone(),
            source: m.source,
            owner: m.owner.clone(),
            deployed_at_unix: m
                .deployed_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Whether `m` is this version (the same component with the same settings).
    fn is(&self, m: &Mounted) -> bool {
        m.plugin.digest == self.digest
            && m.settings == self.settings
            && m.source == self.source
            && m.owner == self.owner
    }
}

impl Registry {
    fn cluster_of(state: &State) -> Option<Arc<Cluster>> {
        state.cluster.clone()
    }

    /// Compares the whole record with what is served here and brings up to date what is not.
    pub async fn catch_up(&self) {
        let Some(cluster) = self.state.lock().await.as_ref().and_then(Self::cluster_of) else {
            return;
        };
        self.sync_models().await;
        let revisions = match cluster.plugin_revisions().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's plugins");
                return;
            }
        };
        let stale: Vec<String> = {
            let guard = self.state.lock().await;
            let Some(state) = guard.as_ref() else { return };
            revisions
                .into_iter()
                .filter(|(name, revision)| {
                    state.applied.get(name).is_none_or(|a| a < revision)
                        && state.failed.get(name) != Some(revision)
                })
                .map(|(name, _)| name)
                .collect()
        };
        for name in stale {
            self.sync_plugin(&name).await;
        }
    }

    /// Brings one plugin up to its record.
    pub async fn sync_plugin(&self, name: &str) {
        let (cluster, runtime, models, have, applied) = {
            let guard = self.state.lock().await;
            let Some(state) = guard.as_ref() else { return };
            let Some(cluster) = Self::cluster_of(state) else {
                return;
            };
            let have: Vec<Arc<Mounted>> = state
                .plugins
                .get(name)
                .map(|e| e.versions.iter().cloned().collect())
                .unwrap_or_default();
            (
                cluster,
                state.runtime.clone(),
                state.models.clone(),
                have,
                state.applied.get(name).copied(),
            )
        };
        let record = match cluster.plugin(name).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "cannot read the plugin's record");
                return;
            }
        };
        if applied.is_some_and(|a| a >= record.revision) {
            return;
        }
        // The versions, compiled here when this instance does not have them yet.
        let mut versions = Vec::with_capacity(record.versions.len());
        let mut failure = None;
        for (i, v) in record.versions.iter().enumerate() {
            if let Some(m) = have.iter().find(|m| v.is(m)) {
                versions.push(m.clone());
                continue;
            }
            let compiled = async {
                let wasm = cluster.wasm(&v.digest).await?;
                let mut m = prepare(
                    &runtime,
                    &models,
                    name,
                    wasm.into(),
                    v.settings.clone(),
                    v.source,
                    v.owner.as_deref(),
                )
                .await?;
                if let Some(m) = Arc::get_mut(&mut m) {
                    m.deployed_at =
                        SystemTime::UNIX_EPOCH + Duration::from_secs(v.deployed_at_unix);
                }
                Ok::<_, ChangeError>(m)
            }
            .await;
            match compiled {
                Ok(m) => versions.push(m),
                Err(e) if i == 0 => {
                    failure = Some(e.to_string());
                    break;
                }
                // An earlier version that does not load here is not kept for rollback here.
                Err(e) => tracing::warn!(plugin = name, error = %e, "a kept version does not load"),
            }
        }

        let mut guard = self.state.lock().await;
        let Some(state) = guard.as_mut() else { return };
        if state
            .applied
            .get(name)
            .is_some_and(|a| *a >= record.revision)
        {
            return; // A newer revision was applied meanwhile.
        }
        let snapshot = match failure {
            Some(e) => Err(ChangeError::Invalid(e)),
            None => build(state, Some((name, versions.first().cloned()))),
        };
        match snapshot {
            Ok(snapshot) => {
                self.publish_snapshot(snapshot);
                match versions.first() {
                    Some(current) => {
                        tracing::info!(
                            plugin = name,
                            revision = record.revision,
                            digest = %&current.plugin.digest[..12],
                            "plugin follows the cluster"
                        );
                        let entry = state.plugins.entry(name.to_string()).or_default();
                        entry.versions = versions.into();
                        entry.last_error = None;
                    }
                    None => {
                        tracing::info!(
                            plugin = name,
                            revision = record.revision,
                            "plugin removed by the cluster"
                        );
                        state.plugins.remove(name);
                    }
                }
                state.applied.insert(name.to_string(), record.revision);
                state.failed.remove(name);
                cluster.report("plugin", name, record.revision, None).await;
            }
            Err(e) => {
                let error = e.to_string();
                tracing::warn!(plugin = name, revision = record.revision, error = %error, "cannot serve the cluster's version here");
                state
                    .plugins
                    .entry(name.to_string())
                    .or_default()
                    .last_error = Some(error.clone());
                state.failed.insert(name.to_string(), record.revision);
                cluster
                    .report("plugin", name, record.revision, Some(&error))
                    .await;
            }
        }
    }

    /// Loads and unloads models as the record says.
    pub async fn sync_models(&self) {
        let mut guard = self.state.lock().await;
        let Some(state) = guard.as_mut() else { return };
        let Some(cluster) = Self::cluster_of(state) else {
            return;
        };
        let records = match cluster.models().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's models");
                return;
            }
        };
        for record in records {
            if state
                .applied_models
                .get(&record.name)
                .is_some_and(|a| *a >= record.revision)
            {
                continue;
            }
            let done = match &record.config {
                Some(config) => load_model(state, config).await.map(|model| {
                    tracing::info!(model = %record.name, revision = record.revision, "model follows the cluster");
                    state.models.insert(model);
                }),
                None if state.models.get(&record.name).is_none() => Ok(()),
                None => super::check_unused(state, &record.name).map(|()| {
                    tracing::info!(model = %record.name, "model unloaded by the cluster");
                    state.models.remove(&record.name);
                }),
            };
            // Applied either way: a model that does not load here is reported, not retried
            // every period; a new record of it is tried again.
            state
                .applied_models
                .insert(record.name.clone(), record.revision);
            let error = done.err().map(|e| e.to_string());
            if let Some(error) = &error {
                tracing::warn!(model = %record.name, error = %error, "cannot follow the cluster's model here");
            } else {
                // A plugin that failed for want of this model may load now.
                state.failed.clear();
            }
            cluster
                .report("model", &record.name, record.revision, error.as_deref())
                .await;
        }
    }

    /// After this instance recorded a change and published it: it serves that revision when its
    /// versions are the record's (else the follower brings them in line).
    pub(super) async fn settle_record(&self, state: &mut State, record: &PluginRecord) {
        let Some(cluster) = Self::cluster_of(state) else {
            return;
        };
        let here: Vec<Arc<Mounted>> = state
            .plugins
            .get(&record.name)
            .map(|e| e.versions.iter().cloned().collect())
            .unwrap_or_default();
        let same = here.len() == record.versions.len()
            && here.iter().zip(&record.versions).all(|(m, v)| v.is(m));
        if same {
            state.applied.insert(record.name.clone(), record.revision);
            state.failed.remove(&record.name);
            cluster
                .report("plugin", &record.name, record.revision, None)
                .await;
        }
    }
}
