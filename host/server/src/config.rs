//! The operator's configuration: typed, defaulted, validated before a socket is bound.
//!
//! A config file is TOML; unknown keys are errors, and every error names the file and the key.
//! Relative paths are resolved against the config file's directory. With no file, the host
//! serves [`EMBEDDED_DEFAULT`]: the first-party plugins (compiled into the binary) and the
//! bundled models, on 127.0.0.1.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use infergate_nn::{BackendKind, ModelSpec, Target};
use infergate_runtime::Limits;
use infergate_runtime::manifest::valid_plugin_name;
use serde::Deserialize;

/// The configuration served when `infergate serve` is given no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where compiled plugins are cached; defaults to the user's cache directory.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances that may exist at once, across all plugins.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Rate limits, quotas and where their state lives.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Whether and within which limits tenants deploy plugins themselves.
    #[serde(default)]
    pub tenant_plugins: TenantPluginsConfig,
    /// A directory watched for plugins: `NAME.wasm`, with optional settings in `NAME.toml`
    /// (the keys of a `[[plugins]]` entry other than `name`, `path` and `builtin`).
    pub plugins_dir: Option<PathBuf>,
    #[serde(default)]
    pub onnxruntime: OrtConfig,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
}

#[derive(Debug, Default, Deserialize)]
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
    pub jwt: Vec<crate::auth::jwt::IssuerConfig>,
    /// The host's own OAuth2 token endpoint and the tokens it signs.
    #[serde(default)]
    pub oauth: crate::auth::oauth::OauthConfig,
    /// Who may see which plugin (default: operator plugins public, tenant plugins private).
    #[serde(default)]
    pub plugins: Vec<crate::auth::PluginAccessConfig>,
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
    #[serde(default = "crate::auth::all_scopes")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin credential; else `INFERGATE_ADMIN_KEY`. Without one the admin API is off.
    pub key: Option<String>,
    /// Largest plugin upload accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Earlier versions kept per plugin for rollback.
    pub versions_kept: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            key: None,
            max_upload_bytes: 64 << 20,
            versions_kept: 5,
        }
    }
}

/// Tenant self-deploys (`PUT /tenant/plugins/{name}` with the tenant's own key): plugins land in
/// the tenant's namespace, mounted at `/t/{tenant}/{name}`, within these limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPluginsConfig {
    pub enabled: bool,
    /// Plugins one tenant may have.
    pub max_plugins: usize,
    pub max_upload_bytes: usize,
    /// Highest `memory_bytes`, `cpu_ms` and `wall_ms` a tenant may ask for.
    pub max_memory_bytes: usize,
    pub max_cpu_ms: u64,
    pub max_wall_ms: u64,
    /// Models tenant plugins may be granted.
    pub models: Vec<String>,
}

impl Default for TenantPluginsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_plugins: 3,
            max_upload_bytes: 16 << 20,
            max_memory_bytes: 64 << 20,
            max_cpu_ms: 1_000,
            max_wall_ms: 10_000,
            models: Vec::new(),
        }
    }
}

/// `[limits]`: rate limits and quotas (see [`crate::quota`] and the README for the syntax).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Where limit state lives: `memory` (one instance) or `redis` (shared by instances).
    pub store: StoreKind,
    /// e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: Option<String>,
    /// Longest a limit check may wait for Redis; then `on_store_error` decides.
    pub redis_timeout_ms: u64,
    /// `allow` (fail open) or `deny` (fail closed, 503 `limits_unavailable`).
    pub on_store_error: FailPolicy,
    /// Prefix of every store key; lets several deployments share one Redis.
    pub key_prefix: String,
    /// Most limit states kept in memory (idle ones are dropped first).
    pub max_entries: usize,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR networks).
    pub trusted_proxies: Vec<String>,
    pub rules: Vec<RuleConfig>,
    /// Per-tenant limits (counted per tenant) and fair-queueing priority.
    pub tenants: std::collections::BTreeMap<String, TenantLimitsConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis_url: None,
            redis_timeout_ms: 100,
            on_store_error: FailPolicy::Allow,
            key_prefix: "infergate".into(),
            max_entries: 1_000_000,
            trusted_proxies: Vec::new(),
            rules: Vec::new(),
            tenants: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    Allow,
    Deny,
}

/// `[[limits.rules]]`: limits counted `per` key, tenant, ip, plugin, route or global, for the
/// requests that match the optional `tenant`, `plugin` and `route` (template) filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(deserialize_with = "one_or_many")]
    pub per: Vec<crate::quota::Dimension>,
    pub limit: Option<String>,
    #[serde(default)]
    pub limits: Vec<String>,
    pub tenant: Option<String>,
    pub plugin: Option<String>,
    pub route: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitsConfig {
    #[serde(default)]
    pub limits: Vec<String>,
    /// Weight in the models' fair queues (default 1).
    pub priority: Option<u32>,
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrtConfig {
    /// Path to `libonnxruntime.so`; else `ORT_DYLIB_PATH`.
    pub library: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub path: PathBuf,
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    #[serde(default = "default_target")]
    pub target: Target,
    /// Inferences of this model that run at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests that may wait for a free slot; one more gets `queue_full`.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Longest an inference may take, queue wait included, in milliseconds.
    #[serde(default = "default_model_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest a request waits for a compute slot, in milliseconds; default `timeout_ms`.
    /// Waiting longer answers `queue_timeout` (503 with `Retry-After`).
    pub queue_timeout_ms: Option<u64>,
    /// Largest leading (batch) dimension of any input; bounds the memory one inference can take.
    pub max_batch: Option<u32>,
    /// Inferences waiting at the same time run as one backend call, e.g.
    /// `batching = { max_rows = 16, pad = true }` (see infergate-nn's `batch` module).
    pub batching: Option<BatchingConfig>,
    /// `llamacpp` only: tokens one generation may hold, prompt and completion (default 2048).
    /// Each of the `concurrency` sequences decoded together has a context this long.
    pub context: Option<u32>,
    /// `llamacpp` only: threads llama.cpp computes with (default: every CPU the process may use).
    pub threads: Option<u32>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// The most rows (inputs' leading dimension, summed) one backend call holds.
    pub max_rows: u32,
    /// Pad axis 1 (sequence length) with zeros so inputs of different lengths batch together,
    /// and cut the outputs back (right for BERT-style encoders: padding id 0, attention mask 0).
    #[serde(default)]
    pub pad: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin's name; it is mounted at `/{name}` unless `mount` says otherwise.
    pub name: String,
    /// A `.wasm` component file...
    pub path: Option<PathBuf>,
    /// ...or the name of a first-party plugin compiled into this binary.
    pub builtin: Option<String>,
    /// Path prefix the plugin's routes are mounted under (`/` for root).
    pub mount: Option<String>,
    /// Models the plugin may open with `load-by-name`.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// How a plugin is served, whatever brought it in (config, watched directory, admin API).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Path prefix of its routes; default `/{name}`; `/` for the root.
    pub mount: Option<String>,
    /// Models it may open.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

impl PluginSettings {
    /// Checks what can be checked without loading; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(mount) = &self.mount {
            anyhow::ensure!(
                mount.starts_with('/') && !mount.contains(['{', '}', '?', '#']),
                "mount must be a plain path starting with `/`"
            );
        }
        self.limits.validate().map_err(anyhow::Error::msg)
    }

    /// The path prefix for a plugin called `name`, without a trailing slash ("" for root).
    pub fn mount_for(&self, name: &str) -> String {
        let mount = self.mount.clone().unwrap_or_else(|| format!("/{name}"));
        mount.trim_end_matches('/').to_string()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_instances() -> u32 {
    1000
}
fn default_tenant() -> String {
    "default".into()
}
fn default_backend() -> BackendKind {
    BackendKind::Tract
}
fn default_target() -> Target {
    Target::Cpu
}
fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_queue_depth() -> usize {
    64
}
fn default_model_timeout_ms() -> u64 {
    30_000
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::parse(&text, base)
            .with_context(|| format!("in config file {}", path.display()))?;
        // The key database defaults to a SQLite file beside the config.
        config
            .auth
            .database
            .get_or_insert_with(|| base.join("infergate.db").display().to_string());
        Ok(config)
    }

    /// The embedded default; its relative paths are resolved against `home`.
    pub fn embedded(home: &Path) -> anyhow::Result<Self> {
        Self::parse(EMBEDDED_DEFAULT, home).context("in the embedded default config")
    }

    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let mut config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.models.iter_mut().for_each(|m| resolve(&mut m.path));
        self.plugins
            .iter_mut()
            .filter_map(|p| p.path.as_mut())
            .for_each(resolve);
        if let Some(p) = self.cache_dir.as_mut() {
            resolve(p)
        }
        if let Some(p) = self.onnxruntime.library.as_mut() {
            resolve(p)
        }
        if let Some(p) = self.plugins_dir.as_mut() {
            resolve(p)
        }
        if let Some(db) = self.auth.database.as_mut()
            && !db.contains("://")
            && !db.starts_with("sqlite:")
            && Path::new(db.as_str()).is_relative()
        {
            *db = base.join(&*db).display().to_string();
        }
    }

    /// Checks everything that can be checked without loading anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let at = format!("models[{i}] (`{}`)", m.name);
            anyhow::ensure!(!m.name.is_empty(), "{at}: name must not be empty");
            anyhow::ensure!(names.insert(&m.name), "{at}: name is declared twice");
            anyhow::ensure!(m.concurrency > 0, "{at}: concurrency must be at least 1");
            anyhow::ensure!(m.timeout_ms > 0, "{at}: timeout_ms must be greater than 0");
            if m.backend == BackendKind::LlamaCpp {
                anyhow::ensure!(
                    m.batching.is_none() && m.max_batch.is_none(),
                    "{at}: batching and max_batch are for graph models; a language model batches its sequences itself (concurrency)"
                );
                anyhow::ensure!(
                    m.context.is_none_or(|c| (16..=1 << 20).contains(&c)),
                    "{at}: context must be between 16 and 1048576 tokens"
                );
                anyhow::ensure!(
                    m.concurrency <= 64,
                    "{at}: concurrency (sequences decoded together) must be at most 64"
                );
            } else {
                anyhow::ensure!(
                    m.context.is_none() && m.threads.is_none(),
                    "{at}: context and threads are for backend = \"llamacpp\""
                );
            }
            anyhow::ensure!(
                m.path.is_file(),
                "{at}: path: no model file at {}",
                m.path.display()
            );
        }
        let mut plugin_names = HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] (`{}`)", p.name);
            anyhow::ensure!(
                valid_plugin_name(&p.name),
                "{at}: name must be 1-64 characters of a-z, 0-9, `-` or `_`"
            );
            anyhow::ensure!(plugin_names.insert(&p.name), "{at}: name is declared twice");
            match (&p.path, &p.builtin) {
                (Some(path), None) => anyhow::ensure!(
                    path.is_file(),
                    "{at}: path: no component file at {}",
                    path.display()
                ),
                (None, Some(b)) => anyhow::ensure!(
                    crate::builtin::wasm(b).is_some(),
                    "{at}: builtin: no first-party plugin named `{b}` (have: {})",
                    crate::builtin::NAMES.join(", ")
                ),
                _ => anyhow::bail!("{at}: give exactly one of `path` or `builtin`"),
            }
            p.settings()
                .validate()
                .map_err(|e| anyhow::anyhow!("{at}: {e:#}"))?;
            for model in &p.models {
                anyhow::ensure!(
                    names.contains(model),
                    "{at}: models: `{model}` is not declared in [[models]]"
                );
            }
        }
        crate::quota::Quotas::new(&self.limits)?;
        for (i, k) in self.auth.api_keys.iter().enumerate() {
            anyhow::ensure!(
                k.key.len() >= 16,
                "auth.api_keys[{i}] (`{}`): key must be at least 16 characters",
                k.id
            );
        }
        crate::auth::validate_config(&self.auth)?;
        Ok(())
    }

    pub fn model_specs(&self) -> Vec<ModelSpec> {
        self.models.iter().map(ModelConfig::spec).collect()
    }
}

impl ModelConfig {
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            name: self.name.clone(),
            path: self.path.clone(),
            backend: self.backend,
            target: self.target,
            concurrency: self.concurrency,
            queue_depth: self.queue_depth,
            timeout: Duration::from_millis(self.timeout_ms),
            queue_timeout: Duration::from_millis(self.queue_timeout_ms.unwrap_or(self.timeout_ms)),
            max_batch: self.max_batch,
            batching: self.batching.map(|b| infergate_nn::Batching {
                max_rows: b.max_rows,
                pad: b.pad,
            }),
            llm: infergate_nn::LlmOptions {
                context: self
                    .context
                    .unwrap_or(infergate_nn::LlmOptions::default().context),
                threads: self.threads,
            },
        }
    }
}

impl PluginConfig {
    pub fn settings(&self) -> PluginSettings {
        PluginSettings {
            mount: self.mount.clone(),
            models: self.models.clone(),
            limits: self.limits.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("/nonexistent"))
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, default_listen());
        assert!(c.plugins.is_empty());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = format!(
            "{:#}",
            parse("listen = \"127.0.0.1:1\"\nlisten_port = 3").unwrap_err()
        );
        assert!(err.contains("listen_port"), "{err}");
        let err = format!(
            "{:#}",
            parse("[[plugins]]\nname = \"a\"\nbuiltin = \"hello\"\n[plugins.limits]\nmemory = 1")
                .unwrap_err()
        );
        assert!(err.contains("memory"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = format!(
            "{:#}",
            parse("[[plugins]]\nname = \"Bad Name\"\nbuiltin = \"hello\"").unwrap_err()
        );
        assert!(err.contains("plugins[0]") && err.contains("name"), "{err}");
        let err = format!(
            "{:#}",
            parse("[[plugins]]\nname = \"a\"\nbuiltin = \"nope\"").unwrap_err()
        );
        assert!(err.contains("builtin"), "{err}");
        let err = format!(
            "{:#}",
            parse("[[plugins]]\nname = \"a\"\nbuiltin = \"hello\"\nmodels = [\"m\"]").unwrap_err()
        );
        assert!(err.contains("`m` is not declared"), "{err}");
        let err = format!(
            "{:#}",
            parse("[[models]]\nname = \"m\"\npath = \"x.onnx\"").unwrap_err()
        );
        assert!(
            err.contains("models[0]") && err.contains("no model file"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse("[[plugins]]\nname = \"a\"\nbuiltin = \"hello\"\n[plugins.limits]\ncpu_ms = 0")
                .unwrap_err()
        );
        assert!(err.contains("cpu_ms"), "{err}");
    }

    #[test]
    fn mounts() {
        let mut c = parse("[[plugins]]\nname = \"a\"\nbuiltin = \"hello\"").unwrap();
        assert_eq!(c.plugins[0].settings().mount_for("a"), "/a");
        c.plugins[0].mount = Some("/".into());
        assert_eq!(c.plugins[0].settings().mount_for("a"), "");
    }
}
