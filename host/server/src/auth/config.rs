//! `[auth]`: the credentials the config declares, the key database, JWT issuers, the token
//! endpoint and who may see which plugin; checked here beyond their types.

use serde::Deserialize;

use super::valid_scope;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys declared in the config. `INFERGATE_API_KEY` adds one for tenant `default`.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Where tenants, keys and token signing keys live: `postgres://...`, `sqlite://...` or a
    /// SQLite file path. Default: `infergate.db` beside the config file (the embedded default:
    /// the user's data directory).
    pub database: Option<String>,
    /// JWT issuers whose tokens are accepted.
    #[serde(default)]
    pub jwt: Vec<super::jwt::IssuerConfig>,
    /// The host's own OAuth2 token endpoint and the tokens it signs.
    #[serde(default)]
    pub oauth: super::oauth::OauthConfig,
    /// Who may see which plugin (default: operator plugins public, tenant plugins private).
    #[serde(default)]
    pub plugins: Vec<PluginAccessConfig>,
    /// Refused credentials a client address (or a key id) may have in a minute before its
    /// requests are refused (429) for the rest of it; 0: no throttling.
    #[serde(default = "default_max_failures")]
    pub max_failures_per_minute: u32,
    /// Seals the token signing keys in the database; else `INFERGATE_ENCRYPTION_KEY`.
    pub encryption_key: Option<String>,
}

fn default_max_failures() -> u32 {
    60
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            database: None,
            jwt: Vec::new(),
            oauth: Default::default(),
            plugins: Vec::new(),
            max_failures_per_minute: default_max_failures(),
            encryption_key: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for the key, shown to plugins as `key-id` and in logs (never the secret).
    pub id: String,
    /// The secret a client presents.
    pub key: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// What the key may call (see `auth` for the scope language); default everything.
    #[serde(default = "super::all_scopes")]
    pub scopes: Vec<String>,
}

/// `[[auth.plugins]]`: who may see a plugin.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginAccessConfig {
    /// The plugin's registry name (tenant plugins: `TENANT--NAME`).
    pub name: String,
    pub visibility: Visibility,
    /// Tenants that may see a private plugin (besides the tenant that deployed it).
    #[serde(default)]
    pub tenants: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
}

/// Checks the `[auth]` table beyond its types.
pub fn validate(auth: &AuthConfig) -> anyhow::Result<()> {
    for (i, j) in auth.jwt.iter().enumerate() {
        j.validate()
            .map_err(|e| anyhow::anyhow!("auth.jwt[{i}] (`{}`): {e}", j.issuer))?;
    }
    auth.oauth.validate()?;
    for (i, k) in auth.api_keys.iter().enumerate() {
        for s in &k.scopes {
            anyhow::ensure!(
                valid_scope(s),
                "auth.api_keys[{i}] (`{}`): scope `{s}` is not valid",
                k.id
            );
        }
    }
    Ok(())
}

/// The database URL of a config: `[auth] database`, else a SQLite file in the data directory.
pub fn database_url(config: &AuthConfig) -> String {
    let db = config.database.clone().unwrap_or_else(|| {
        infergate_runtime::private_dir::user_dir("XDG_DATA_HOME", ".local/share")
            .join("infergate.db")
            .display()
            .to_string()
    });
    if db.contains("://") || db.starts_with("sqlite:") {
        db
    } else {
        // SQLite wants a plain file name: absolute, so `..` in a relative one cannot trip it.
        let path = std::path::Path::new(&db);
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        format!("sqlite://{}?mode=rwc", path.display())
    }
}

fn default_tenant() -> String {
    "default".into()
}
