//! Tenants and API keys in the database.
//!
//! A key is `ig_<id>_<secret>`: `id` (12 hex digits) is its public name and primary key; the
//! whole key is stored only as its SHA-256 digest, compared in constant time. The secret is
//! shown once, when the key is created. Lookups by id are cached for [`CACHE_TTL`]: a key
//! revoked on any instance stops working everywhere within that time (and at once on the
//! instance that revoked it). An id that names no key is remembered longer
//! ([`MISSING_TTL`]), so guessing ids does not cost a query each; ids are random, so a new
//! key is never one that was looked up before (and creating it forgets the miss here).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::Db;
use super::{KEY_PREFIX, Principal, now_s};
use crate::error::ApiError;

/// How long a looked-up key or tenant may be reused without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// How long an id that names no key is remembered as missing.
pub const MISSING_TTL: Duration = Duration::from_secs(60);

/// Found keys for [`CACHE_TTL`], missing ones for [`MISSING_TTL`].
struct KeyExpiry;

impl moka::Expiry<String, Option<Arc<KeyRecord>>> for KeyExpiry {
    fn expire_after_create(
        &self,
        _id: &String,
        found: &Option<Arc<KeyRecord>>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(if found.is_some() {
            CACHE_TTL
        } else {
            MISSING_TTL
        })
    }
}

/// A tenant: owns keys, plugins and limits.
#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: String,
    /// Its weight in the models' fair queues; `None`: the config's, else 1. Stored as 0.
    pub priority: Option<u32>,
    pub limits: Vec<String>,
    pub created_at: i64,
}

/// A stored API key (never its secret).
#[derive(Clone, Debug, Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub limits: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    #[serde(skip)]
    pub digest: [u8; 32],
    /// The tenant's priority and limits, joined in.
    #[serde(skip)]
    pub tenant_priority: Option<u32>,
    #[serde(skip)]
    pub tenant_limits: Vec<String>,
}

impl KeyRecord {
    /// The key's caller, if the key is live.
    pub fn principal(&self) -> Result<Principal, ApiError> {
        if self.revoked_at.is_some() {
            return Err(ApiError::unauthorized("the API key has been revoked"));
        }
        if self.expires_at.is_some_and(|t| t <= now_s()) {
            return Err(ApiError::unauthorized("the API key has expired"));
        }
        Ok(Principal {
            tenant: self.tenant.clone(),
            key_id: self.id.clone(),
            scopes: self.scopes.clone(),
            claims: Vec::new(),
            limits: self.limits.clone(),
            tenant_limits: self.tenant_limits.clone(),
            priority: self.tenant_priority,
        })
    }
}

/// What a new key is given.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub tenant: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub limits: Vec<String>,
    pub expires_at: Option<i64>,
}

/// Why a change to tenants or keys was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the auth database failed: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::new(http::StatusCode::CONFLICT, "conflict", m),
            StoreError::Db(e) => {
                tracing::error!(error = %e, "auth database");
                ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    "credentials cannot be checked right now",
                )
            }
        }
    }
}

pub struct KeyStore {
    db: Db,
    keys: Cache<String, Option<Arc<KeyRecord>>>,
    tenants: Cache<String, Option<Arc<Tenant>>>,
}

/// Splits `ig_<id>_<secret>` into id and secret.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

fn list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

const KEY_COLUMNS: &str = "k.id, k.tenant, k.digest, k.scopes, k.limits, k.name, k.created_at, \
    k.expires_at, k.revoked_at, t.priority, t.limits AS tenant_limits";

fn key_row(row: &AnyRow) -> Result<KeyRecord, sqlx::Error> {
    let digest: String = row.try_get("digest")?;
    let mut d = [0u8; 32];
    hex::decode_to_slice(&digest, &mut d).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        scopes: list(&row.try_get::<String, _>("scopes")?),
        limits: list(&row.try_get::<String, _>("limits")?),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        digest: d,
        tenant_priority: row
            .try_get::<Option<i64>, _>("priority")?
            .and_then(stored_priority),
        tenant_limits: row
            .try_get::<Option<String>, _>("tenant_limits")?
            .map(|t| list(&t))
            .unwrap_or_default(),
    })
}

/// A priority column: 0 means none was given.
fn stored_priority(p: i64) -> Option<u32> {
    (p > 0).then(|| p.min(u32::MAX as i64) as u32)
}

fn tenant_row(row: &AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: row.try_get("id")?,
        priority: stored_priority(row.try_get::<i64, _>("priority")?),
        limits: list(&row.try_get::<String, _>("limits")?),
        created_at: row.try_get("created_at")?,
    })
}

impl KeyStore {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            keys: Cache::builder()
                .max_capacity(100_000)
                .expire_after(KeyExpiry)
                .build(),
            tenants: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// Forgets every cached lookup (benchmarks measure the database path with it).
    pub fn clear_cache(&self) {
        self.keys.invalidate_all();
        self.tenants.invalidate_all();
    }

    /// A key by id, from the cache or the database.
    pub async fn key(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        if let Some(hit) = self.keys.get(id).await {
            return Ok(hit);
        }
        // Boxed, as the query below: a cache hit's future need not carry a query's.
        let found = Box::pin(self.load_key(id)).await?.map(Arc::new);
        self.keys.insert(id.to_string(), found.clone()).await;
        Ok(found)
    }

    async fn load_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM ig_api_keys k LEFT JOIN ig_tenants t ON t.id = k.tenant WHERE k.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.as_ref().map(key_row).transpose()?)
    }

    /// A tenant by id, from the cache or the database.
    pub async fn tenant(&self, id: &str) -> Result<Option<Arc<Tenant>>, StoreError> {
        if let Some(hit) = self.tenants.get(id).await {
            return Ok(hit);
        }
        let row = Box::pin(
            sqlx::query("SELECT id, priority, limits, created_at FROM ig_tenants WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.db.pool),
        )
        .await?;
        let found = row.as_ref().map(tenant_row).transpose()?.map(Arc::new);
        self.tenants.insert(id.to_string(), found.clone()).await;
        Ok(found)
    }

    pub async fn create_tenant(
        &self,
        id: &str,
        priority: Option<u32>,
        limits: &[String],
    ) -> Result<Tenant, StoreError> {
        let tenant = Tenant {
            id: id.to_string(),
            priority,
            limits: limits.to_vec(),
            created_at: now_s(),
        };
        let done = sqlx::query(
            "INSERT INTO ig_tenants (id, priority, limits, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(priority.map_or(0, i64::from))
        .bind(json(limits))
        .bind(tenant.created_at)
        .execute(&self.db.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("tenant `{id}` exists")));
        }
        self.tenants.invalidate(id).await;
        Ok(tenant)
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows =
            sqlx::query("SELECT id, priority, limits, created_at FROM ig_tenants ORDER BY id")
                .fetch_all(&self.db.pool)
                .await?;
        Ok(rows.iter().map(tenant_row).collect::<Result<_, _>>()?)
    }

    /// Deletes a tenant and revokes every key it has.
    pub async fn delete_tenant(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        let done = sqlx::query("DELETE FROM ig_tenants WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no tenant `{id}`")));
        }
        sqlx::query(
            "UPDATE ig_api_keys SET revoked_at = $1 WHERE tenant = $2 AND revoked_at IS NULL",
        )
        .bind(now_s())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.tenants.invalidate(id).await;
        self.keys.invalidate_all();
        Ok(())
    }

    /// Creates a key for an existing tenant; returns its record and the full key, the only
    /// time the secret exists outside the caller.
    pub async fn create_key(&self, new: NewKey) -> Result<(KeyRecord, String), StoreError> {
        if self.tenant(&new.tenant).await?.is_none() {
            self.tenants.invalidate(&new.tenant).await;
            return Err(StoreError::NotFound(format!("no tenant `{}`", new.tenant)));
        }
        let id = hex::encode(super::random::<6>());
        let key = format!("{KEY_PREFIX}{id}_{}", hex::encode(super::random::<32>()));
        let digest = super::digest(&key);
        let created_at = now_s();
        sqlx::query(
            "INSERT INTO ig_api_keys (id, tenant, digest, scopes, limits, name, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
        )
        .bind(&id)
        .bind(&new.tenant)
        .bind(hex::encode(digest))
        .bind(json(&new.scopes))
        .bind(json(&new.limits))
        .bind(new.name.clone())
        .bind(created_at)
        .bind(new.expires_at)
        .execute(&self.db.pool)
        .await?;
        self.keys.invalidate(&id).await;
        let tenant = self.tenant(&new.tenant).await?;
        let record = KeyRecord {
            id,
            tenant: new.tenant,
            name: new.name,
            scopes: new.scopes,
            limits: new.limits,
            created_at,
            expires_at: new.expires_at,
            revoked_at: None,
            digest,
            tenant_priority: tenant.as_ref().and_then(|t| t.priority),
            tenant_limits: tenant.map(|t| t.limits.clone()).unwrap_or_default(),
        };
        Ok((record, key))
    }

    /// Keys, of one tenant or all, newest first.
    pub async fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM ig_api_keys k LEFT JOIN ig_tenants t ON t.id = k.tenant \
             WHERE ($1 = '' OR k.tenant = $1) ORDER BY k.created_at DESC, k.id"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.unwrap_or(""))
            .fetch_all(&self.db.pool)
            .await?;
        Ok(rows.iter().map(key_row).collect::<Result<_, _>>()?)
    }

    /// Revokes a key: it stops working here at once and everywhere within [`CACHE_TTL`].
    pub async fn revoke(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE ig_api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_s())
        .bind(id)
        .execute(&self.db.pool)
        .await?;
        self.keys.invalidate(id).await;
        if done.rows_affected() == 0 {
            let exists = self.load_key(id).await?.is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("no key `{id}`")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (KeyStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
        (KeyStore::new(Db::open(&url).await.unwrap()), dir)
    }

    #[test]
    fn key_shape() {
        assert_eq!(
            split_key("ig_0123456789ab_secret"),
            Some(("0123456789ab", "secret"))
        );
        assert_eq!(split_key("ig_0123456789ab_"), None);
        assert_eq!(split_key("ig_xyz_secret"), None);
        assert_eq!(split_key("test-key"), None);
    }

    #[tokio::test]
    async fn a_missing_id_is_remembered_longer_than_a_found_one() {
        let (s, _d) = store().await;
        s.create_tenant("acme", None, &[]).await.unwrap();
        let (found, _) = s
            .create_key(NewKey {
                tenant: "acme".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let missing = "0123456789ab";
        assert!(s.key(&found.id).await.unwrap().is_some());
        assert!(s.key(missing).await.unwrap().is_none());
        // Behind the cache's back, the key moves to the id that was looked up and missed.
        sqlx::query("UPDATE ig_api_keys SET id = $1 WHERE id = $2")
            .bind(missing)
            .bind(&found.id)
            .execute(&s.db.pool)
            .await
            .unwrap();
        tokio::time::sleep(CACHE_TTL + Duration::from_millis(200)).await;
        // A found key is asked for again after CACHE_TTL; a miss is not (no query per guess).
        assert!(s.key(&found.id).await.unwrap().is_none());
        assert!(s.key(missing).await.unwrap().is_none());
        s.clear_cache();
        assert!(s.key(missing).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn keys_live_and_die() {
        let (s, _d) = store().await;
        assert!(matches!(
            s.create_key(NewKey {
                tenant: "acme".into(),
                ..Default::default()
            })
            .await,
            Err(StoreError::NotFound(_))
        ));
        s.create_tenant("acme", Some(3), &["10/minute".into()])
            .await
            .unwrap();
        assert!(matches!(
            s.create_tenant("acme", None, &[]).await,
            Err(StoreError::Conflict(_))
        ));
        let (rec, key) = s
            .create_key(NewKey {
                tenant: "acme".into(),
                scopes: vec!["*".into()],
                limits: vec!["5/second".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let (id, _) = split_key(&key).unwrap();
        assert_eq!(id, rec.id);
        let got = s.key(id).await.unwrap().unwrap();
        assert_eq!(got.digest, crate::auth::digest(&key));
        let p = got.principal().unwrap();
        assert_eq!(
            (p.priority, p.tenant_limits.clone(), p.limits.clone()),
            (
                Some(3),
                vec!["10/minute".to_string()],
                vec!["5/second".to_string()]
            )
        );
        assert_eq!(s.keys(Some("acme")).await.unwrap().len(), 1);
        assert_eq!(s.keys(Some("other")).await.unwrap().len(), 0);
        s.revoke(id).await.unwrap();
        assert!(s.key(id).await.unwrap().unwrap().principal().is_err());
        assert!(matches!(
            s.revoke("000000000000").await,
            Err(StoreError::NotFound(_))
        ));
        s.delete_tenant("acme").await.unwrap();
        assert!(s.tenant("acme").await.unwrap().is_none());
    }
}
