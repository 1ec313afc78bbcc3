//! Shared deploys (`[cluster]`): the record in PostgreSQL that lets several instances serve one
//! set of plugins and models.
//!
//! Every change made through an instance (admin API, tenant API, watched directory) is written
//! here in one transaction before it is published locally: the component's bytes (by digest,
//! once), the plugin's version list (current first, then the ones kept for rollback) or the
//! model's settings, and a revision taken from one sequence. The commit sends `NOTIFY
//! ig_changes` with what changed; every instance follows (`follow.rs`) and applies the record,
//! compiling what it has not compiled yet. What an instance made of each revision (serving, or
//! the error) is written back per instance, for `GET /admin/plugins`.
//!
//! Writes serialise on one advisory lock, so the checks made against the record (the owner of
//! a name, a tenant's plugin count, the version to roll back to) hold across instances. A
//! deleted plugin stays as a row with no versions, so an instance that was down when it was
//! deleted still removes it. Plugins of an instance's own config are not recorded; a record of
//! the same name, once there is one, wins over them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Row, postgres::PgRow};

use super::{ChangeError, ModelConfig, PluginSettings, Source};

/// `[cluster]`: share deploys with the other instances using the same database.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres://...`; default: `[auth] database` (which must then be PostgreSQL).
    pub database: Option<String>,
    /// This instance's name in reports; default `HOSTNAME:PORT` (a pod's name on Kubernetes).
    pub instance: Option<String>,
    /// How often the whole record is compared with what is served, in case a notification was
    /// missed (a dropped connection), in milliseconds.
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_ms: u64,
}

fn default_reconcile_ms() -> u64 {
    5_000
}

/// The channel changes are announced on; the payload is `plugin:NAME` or `model:NAME`.
pub const CHANNEL: &str = "ig_changes";

/// The advisory lock every write takes (a constant: "infergat").
const WRITE_LOCK: i64 = 0x696e_6665_7267_6174;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ig_components (
        digest TEXT PRIMARY KEY,
        wasm BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    )",
    "CREATE SEQUENCE IF NOT EXISTS ig_revisions",
    "CREATE TABLE IF NOT EXISTS ig_plugins (
        name TEXT PRIMARY KEY,
        revision BIGINT NOT NULL,
        owner TEXT,
        versions TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS ig_models (
        name TEXT PRIMARY KEY,
        revision BIGINT NOT NULL,
        config TEXT,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS ig_instances (
        instance TEXT PRIMARY KEY,
        started_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS ig_instance_status (
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        revision BIGINT NOT NULL,
        error TEXT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (instance, kind, name)
    )",
];

/// One recorded version of a plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    /// sha256 of the component (its bytes are in `ig_components`).
    pub digest: String,
    pub settings: PluginSettings,
    pub source: Source,
    pub owner: Option<String>,
    pub deployed_at_unix: u64,
}

/// A plugin as recorded: no versions means deleted.
#[derive(Clone, Debug)]
pub struct PluginRecord {
    pub name: String,
    pub revision: i64,
    pub versions: Vec<VersionRecord>,
}

/// A model as recorded: no config means unloaded.
#[derive(Clone, Debug)]
pub struct ModelRecord {
    pub name: String,
    pub revision: i64,
    pub config: Option<ModelConfig>,
}

/// A change to a plugin's record.
pub enum PluginChange<'a> {
    /// A new current version; `keep` earlier ones stay for rollback.
    Deploy {
        version: VersionRecord,
        wasm: &'a [u8],
        keep: usize,
        /// A tenant's deploy: the most plugins it may own.
        max_owned: Option<usize>,
    },
    Rollback,
    Remove {
        only_from: Option<Source>,
    },
}

/// What one instance made of a plugin's or model's latest record.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    /// `serving` (or `loaded`), or `failed`.
    pub status: &'static str,
    pub revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Cluster {
    pool: PgPool,
    pub instance: String,
    pub reconcile: Duration,
}

impl Cluster {
    /// Connects to the shared database and creates its tables if they are missing.
    pub async fn open(url: &str, config: &ClusterConfig, port: u16) -> anyhow::Result<Cluster> {
        use anyhow::Context as _;
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "[cluster] needs a PostgreSQL database (`database = \"postgres://...\"`, or a PostgreSQL `[auth] database`)"
        );
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .context("connecting to the [cluster] database")?;
        // Instances starting together create the schema once.
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        for sql in SCHEMA {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        tx.commit().await.context("creating the cluster tables")?;
        let instance = config.instance.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_string())
                })
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{port}")
        });
        let cluster = Cluster {
            pool,
            instance,
            reconcile: Duration::from_millis(config.reconcile_ms.max(100)),
        };
        cluster.heartbeat().await?;
        tracing::info!(instance = %cluster.instance, "following the cluster's deploys");
        Ok(cluster)
    }

    /// A connection that receives the change notifications.
    pub async fn listener(&self) -> sqlx::Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    /// Records a change to a plugin, checked against the record, and announces it.
    pub async fn change_plugin(
        &self,
        name: &str,
        change: PluginChange<'_>,
    ) -> Result<PluginRecord, ChangeError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let row = sqlx::query("SELECT versions FROM ig_plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let mut versions: Vec<VersionRecord> = match row {
            Some(row) => parse_versions(&row)?,
            None => Vec::new(),
        };
        match change {
            PluginChange::Deploy {
                version,
                wasm,
                keep,
                max_owned,
            } => {
                if let Some(current) = versions.first()
                    && current.owner != version.owner
                {
                    return Err(ChangeError::Conflict(format!(
                        "plugin `{name}` belongs to {}",
                        current
                            .owner
                            .as_ref()
                            .map_or("the operator".to_string(), |t| format!("tenant `{t}`"))
                    )));
                }
                if let (Some(max), Some(owner)) = (max_owned, version.owner.as_deref()) {
                    let owned: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM ig_plugins WHERE owner = $1 AND name <> $2 AND versions <> '[]'",
                    )
                    .bind(owner)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    if owned as usize >= max {
                        return Err(ChangeError::Limit(format!(
                            "a tenant may have at most {max} plugins"
                        )));
                    }
                }
                sqlx::query(
                    "INSERT INTO ig_components (digest, wasm, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (digest) DO NOTHING",
                )
                .bind(&version.digest)
                .bind(wasm)
                .bind(now_s())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                versions.insert(0, version);
                versions.truncate(keep + 1);
            }
            PluginChange::Rollback => {
                if versions.len() < 2 {
                    return Err(ChangeError::NotFound(format!(
                        "plugin `{name}` has no earlier version"
                    )));
                }
                versions.remove(0);
            }
            PluginChange::Remove { only_from } => {
                let Some(current) = versions.first() else {
                    return Err(ChangeError::NotFound(format!("no plugin `{name}`")));
                };
                if let Some(from) = only_from
                    && current.source != from
                {
                    return Err(ChangeError::Conflict(format!(
                        "plugin `{name}` was deployed through {:?}, not {from:?}",
                        current.source
                    )));
                }
                versions.clear();
            }
        }
        let owner = versions.first().and_then(|v| v.owner.clone());
        let text = serde_json::to_string(&versions).expect("versions serialise");
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO ig_plugins (name, revision, owner, versions, updated_at) \
             VALUES ($1, nextval('ig_revisions'), $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision, owner = EXCLUDED.owner, \
             versions = EXCLUDED.versions, updated_at = EXCLUDED.updated_at \
             RETURNING revision",
        )
        .bind(name)
        .bind(&owner)
        .bind(&text)
        .bind(now_s())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        notify(&mut tx, &format!("plugin:{name}")).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(PluginRecord {
            name: name.to_string(),
            revision,
            versions,
        })
    }

    /// Records a model loaded (`Some`) or unloaded (`None`), and announces it.
    pub async fn change_model(
        &self,
        name: &str,
        config: Option<&ModelConfig>,
    ) -> Result<i64, ChangeError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let text = config.map(|c| serde_json::to_string(c).expect("model config serialises"));
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO ig_models (name, revision, config, updated_at) \
             VALUES ($1, nextval('ig_revisions'), $2, $3) \
             ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision, config = EXCLUDED.config, \
             updated_at = EXCLUDED.updated_at RETURNING revision",
        )
        .bind(name)
        .bind(&text)
        .bind(now_s())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        notify(&mut tx, &format!("model:{name}")).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(revision)
    }

    /// Every plugin's name and revision.
    pub async fn plugin_revisions(&self) -> sqlx::Result<BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT name, revision FROM ig_plugins")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("revision")?)))
            .collect()
    }

    pub async fn plugin(&self, name: &str) -> Result<Option<PluginRecord>, ChangeError> {
        let row = sqlx::query("SELECT revision, versions FROM ig_plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| {
            Ok(PluginRecord {
                name: name.to_string(),
                revision: row.try_get("revision").map_err(unavailable)?,
                versions: parse_versions(&row)?,
            })
        })
        .transpose()
    }

    /// Every model's record (few, small).
    pub async fn models(&self) -> Result<Vec<ModelRecord>, ChangeError> {
        let rows = sqlx::query("SELECT name, revision, config FROM ig_models ORDER BY revision")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let config: Option<String> = row.try_get("config").map_err(unavailable)?;
                Ok(ModelRecord {
                    name: row.try_get("name").map_err(unavailable)?,
                    revision: row.try_get("revision").map_err(unavailable)?,
                    config: config
                        .map(|c| serde_json::from_str(&c))
                        .transpose()
                        .map_err(|e| {
                            ChangeError::Invalid(format!("a recorded model cannot be read: {e}"))
                        })?,
                })
            })
            .collect()
    }

    /// A recorded component's bytes.
    pub async fn wasm(&self, digest: &str) -> Result<Vec<u8>, ChangeError> {
        sqlx::query_scalar("SELECT wasm FROM ig_components WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| ChangeError::Invalid(format!("component {digest} is not recorded")))
    }

    /// Records what this instance made of a revision (`error`: `None` when it serves it).
    pub async fn report(&self, kind: &str, name: &str, revision: i64, error: Option<&str>) {
        let done = sqlx::query(
            "INSERT INTO ig_instance_status (instance, kind, name, revision, error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance, kind, name) DO UPDATE SET \
             revision = EXCLUDED.revision, error = EXCLUDED.error, updated_at = EXCLUDED.updated_at",
        )
        .bind(&self.instance)
        .bind(kind)
        .bind(name)
        .bind(revision)
        .bind(error)
        .bind(now_s())
        .execute(&self.pool)
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not report to the cluster database");
        }
    }

    /// Says this instance is alive (reports of instances not seen lately are not shown).
    pub async fn heartbeat(&self) -> sqlx::Result<()> {
        let now = now_s();
        sqlx::query(
            "INSERT INTO ig_instances (instance, started_at, last_seen) VALUES ($1, $2, $2) \
             ON CONFLICT (instance) DO UPDATE SET last_seen = EXCLUDED.last_seen",
        )
        .bind(&self.instance)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Leaves the cluster's reports (a graceful shutdown).
    pub async fn leave(&self) {
        let _ = sqlx::query("DELETE FROM ig_instances WHERE instance = $1")
            .bind(&self.instance)
            .execute(&self.pool)
            .await;
    }

    /// What each live instance made of each plugin (`kind` `plugin`) or model, by name.
    pub async fn statuses(&self, kind: &str) -> BTreeMap<String, Vec<InstanceStatus>> {
        // Live: seen within three reconcile periods (each instance beats once a period).
        let live_after = now_s() - 3 * (self.reconcile.as_secs() as i64).max(5);
        let rows = sqlx::query(
            "SELECT s.instance, s.name, s.revision, s.error FROM ig_instance_status s \
             JOIN ig_instances i ON i.instance = s.instance \
             WHERE s.kind = $1 AND i.last_seen >= $2 ORDER BY s.name, s.instance",
        )
        .bind(kind)
        .bind(live_after)
        .fetch_all(&self.pool)
        .await;
        let mut by_name: BTreeMap<String, Vec<InstanceStatus>> = BTreeMap::new();
        match rows {
            Ok(rows) => {
                for row in rows {
                    let (Ok(instance), Ok(name), Ok(revision), Ok(error)) = (
                        row.try_get::<String, _>("instance"),
                        row.try_get::<String, _>("name"),
                        row.try_get::<i64, _>("revision"),
                        row.try_get::<Option<String>, _>("error"),
                    ) else {
                        continue;
                    };
                    by_name.entry(name).or_default().push(InstanceStatus {
                        instance,
                        status: if error.is_some() {
                            "failed"
                        } else if kind == "model" {
                            "loaded"
                        } else {
                            "serving"
                        },
                        revision,
                        error,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the cluster's reports"),
        }
        by_name
    }
}

fn parse_versions(row: &PgRow) -> Result<Vec<VersionRecord>, ChangeError> {
    let text: String = row.try_get("versions").map_err(unavailable)?;
    serde_json::from_str(&text)
        .map_err(|e| ChangeError::Invalid(format!("a recorded plugin cannot be read: {e}")))
}

async fn notify(tx: &mut sqlx::PgConnection, what: &str) -> Result<(), ChangeError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(what)
        .execute(tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn unavailable(e: sqlx::Error) -> ChangeError {
    tracing::warn!(error = %e, "the cluster database failed");
    ChangeError::Unavailable(format!("the cluster database failed: {e}"))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
