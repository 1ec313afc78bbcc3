//! The auth database: a connection pool over SQLite (the embedded default, one instance) or
//! PostgreSQL (several instances sharing tenants, keys and signing keys), and its schema
//! migrations, applied at start-up.
//!
//! The SQL is written once for both backends: portable types only (`TEXT`, `BIGINT`), JSON
//! lists kept as text, times as Unix seconds, and `$N` placeholders (which SQLite accepts too).

use std::str::FromStr;

use anyhow::Context as _;
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

/// Migrations, in order; each is applied once and recorded in `ig_schema_migrations`.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS ig_tenants (
            id TEXT PRIMARY KEY,
            priority BIGINT NOT NULL,
            limits TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS ig_api_keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            digest TEXT NOT NULL,
            scopes TEXT NOT NULL,
            limits TEXT NOT NULL,
            name TEXT,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            revoked_at BIGINT
        )",
        "CREATE INDEX IF NOT EXISTS ig_api_keys_tenant ON ig_api_keys (tenant)",
        "CREATE TABLE IF NOT EXISTS ig_signing_keys (
            kid TEXT PRIMARY KEY,
            alg TEXT NOT NULL,
            private_key TEXT NOT NULL,
            public_key TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
    ],
)];

/// A handle on the auth database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
}

impl Db {
    /// Connects to `url` (`sqlite://FILE?mode=rwc` or `postgres://...`) and migrates it.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let shown = redact(url);
        let file = url
            .strip_prefix("sqlite://")
            .map(|p| std::path::Path::new(p.split('?').next().unwrap_or(p)));
        // A SQLite file holds the keys' digests and the token signing keys: its directory is
        // private to this user, and so is the file (SQLite gives its journals the same mode).
        if let Some(dir) = file.and_then(|f| f.parent())
            && !dir.as_os_str().is_empty()
        {
            infergate_runtime::private_dir::ensure(dir, "auth database's directory")?;
        }
        let options =
            AnyConnectOptions::from_str(url).with_context(|| format!("database URL {shown}"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(if url.starts_with("sqlite") { 4 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to the auth database {shown}"))?;
        if let Some(file) = file
            && file.exists()
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", file.display()))?;
        }
        let db = Db { pool };
        db.migrate()
            .await
            .with_context(|| format!("migrating the auth database {shown}"))?;
        tracing::info!(database = %shown, "auth database ready");
        Ok(db)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS ig_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for (version, statements) in MIGRATIONS {
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM ig_schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for sql in *statements {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO ig_schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(super::now_s())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "auth database migrated");
        }
        Ok(())
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn sqlite_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/a/b.db?mode=rwc", dir.path().display());
        Db::open(&url).await.unwrap();
        Db::open(&url).await.unwrap();
    }
}
