//! The operator's configuration: typed, defaulted, validated before a socket is bound.
//!
//! A config file is TOML; unknown keys are errors, and every error names the file and the key.
//! Relative paths are resolved against the config file's directory. With no file, the host
//! serves [`EMBEDDED_DEFAULT`]: the first-party plugins (compiled into the binary) and the
//! bundled models, on 127.0.0.1.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::registry::ClusterConfig;
use crate::registry::names::{PLUGIN_NAME_RULE, valid_plugin_name};
use anyhow::Context as _;
use infergate_nn::{BackendKind, ModelSpec};
use infergate_runtime::Limits;
use serde::Deserialize;

pub use crate::admin::{AdminConfig, TenantPluginsConfig};
pub use crate::auth::{ApiKeyConfig, AuthConfig};
pub use crate::pipeline::cors::CorsConfig;
pub use crate::pipeline::overload::ServerConfig;
pub use crate::quota::{FailPolicy, LimitsConfig, RuleConfig, StoreKind, TenantLimitsConfig};
pub use crate::registry::{BatchingConfig, ModelConfig, PluginSettings};

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
    /// How much the host takes on at once (in-flight limit, request timeout).
    #[serde(default)]
    pub server: ServerConfig,
    /// Which other origins' pages may call the host from a browser.
    #[serde(default)]
    pub cors: CorsConfig,
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
    /// Share deploys with other instances through PostgreSQL (absent: this instance's own).
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrtConfig {
    /// Path to `libonnxruntime.so`; else `ORT_DYLIB_PATH`.
    pub library: Option<PathBuf>,
    /// Graph optimizers that ONNX Runtime's CPU sessions skip, by ONNX Runtime's names (it
    /// ignores a name it does not know); `[]` keeps them all. Default:
    /// `infergate_nn::ORT_CPU_DISABLED_OPTIMIZERS` (`SkipLayerNormFusion`, slower on the CPU).
    pub disabled_optimizers: Option<Vec<String>>,
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
    /// Where it may send HTTP requests: `scheme://host[:port]` each; empty: nowhere.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Values the plugin reads through `wasi:config/store`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets the plugin reads through `wasi:config/store`: key = environment variable.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Requests one warm instance may serve (one tenant's, in turn); default 1: fresh each time.
    pub reuse: Option<u32>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_instances() -> u32 {
    1000
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
        self.cors.layer()?;
        for name in self.onnxruntime.disabled_optimizers.iter().flatten() {
            anyhow::ensure!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "onnxruntime.disabled_optimizers: `{name}` is not an optimizer name (letters, \
                 digits and `_`, e.g. \"SkipLayerNormFusion\")"
            );
        }
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
                "{at}: name must be {PLUGIN_NAME_RULE}"
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

impl PluginConfig {
    pub fn settings(&self) -> PluginSettings {
        PluginSettings {
            mount: self.mount.clone(),
            models: self.models.clone(),
            limits: self.limits.clone(),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            config: self.config.clone(),
            secrets: self.secrets.clone(),
            reuse: self.reuse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config the Kubernetes manifests carry (`deploy/k8s/configmap.yaml`) is one this host
    /// accepts, with the shared state of several instances and a drain that fits the pod's.
    #[test]
    fn the_kubernetes_config_map_holds_a_valid_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let yaml = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
        let (_, block) = yaml.split_once("infergate.toml: |\n").unwrap();
        let toml: String = block
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        // The image puts the bundled models under /opt/infergate, as they are here.
        let home = root.canonicalize().unwrap();
        let toml = toml.replace("/opt/infergate/", &format!("{}/", home.display()));
        let config = Config::parse(&toml, Path::new("/")).unwrap();
        assert!(config.cluster.is_some());
        assert_eq!(config.limits.store, crate::quota::StoreKind::Redis);
        assert!(config.server.shutdown_grace_ms > 0);
        let builtins: Vec<_> = config
            .plugins
            .iter()
            .filter_map(|p| p.builtin.as_deref())
            .collect();
        assert!(builtins.iter().all(|b| crate::builtin::NAMES.contains(b)));
        assert_eq!(builtins.len(), config.plugins.len());
        assert!(config.plugins.iter().all(|p| p.reuse == Some(1000)));
    }

    /// The embedded default serves its first-party plugins (stateless, trusted) on warm
    /// instances, as `make serve` ships it; the benchmark measures the same setting.
    #[test]
    fn the_embedded_default_runs_the_first_party_plugins_warm() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let config = Config::parse(EMBEDDED_DEFAULT, &root).unwrap();
        assert!(!config.plugins.is_empty());
        for plugin in &config.plugins {
            assert!(plugin.builtin.is_some(), "{}", plugin.name);
            assert_eq!(plugin.reuse, Some(1000), "{}", plugin.name);
        }
        // The benchmark's config names components built later in the run (the polyglot
        // plugins), so it is read as TOML rather than loaded.
        let bench = std::fs::read_to_string(root.join("bench/infergate.toml")).unwrap();
        let bench: toml::Table = toml::from_str(&bench).unwrap();
        let plugins = bench["plugins"].as_array().unwrap();
        for name in ["digits", "embed", "openai"] {
            let plugin = plugins
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .unwrap();
            assert_eq!(
                plugin.get("reuse").and_then(|r| r.as_integer()),
                Some(1000),
                "bench/infergate.toml: {name}"
            );
        }
    }

    /// A config in a relative directory naming `../data/keys.db` still opens its file.
    #[test]
    fn a_relative_sqlite_path_becomes_an_absolute_url() {
        let config = Config::parse(
            "[auth]\ndatabase = \"../data/keys.db\"\n",
            std::path::Path::new("conf"),
        )
        .unwrap();
        let url = crate::auth::database_url(&config.auth);
        let path = url
            .strip_prefix("sqlite://")
            .and_then(|u| u.strip_suffix("?mode=rwc"))
            .unwrap();
        assert!(std::path::Path::new(path).is_absolute(), "{url}");
        assert!(path.ends_with("conf/../data/keys.db"), "{url}");
    }

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
        let err = format!(
            "{:#}",
            parse("[onnxruntime]\ndisabled_optimizers = [\"SkipLayerNormFusion;X\"]").unwrap_err()
        );
        assert!(
            err.contains("disabled_optimizers") && err.contains("SkipLayerNormFusion;X"),
            "{err}"
        );
        let c = parse("[onnxruntime]\ndisabled_optimizers = []").unwrap();
        assert_eq!(c.onnxruntime.disabled_optimizers, Some(vec![]));
    }

    #[test]
    fn mounts() {
        let mut c = parse("[[plugins]]\nname = \"a\"\nbuiltin = \"hello\"").unwrap();
        assert_eq!(c.plugins[0].settings().mount_for("a"), "/a");
        c.plugins[0].mount = Some("/".into());
        assert_eq!(c.plugins[0].settings().mount_for("a"), "");
    }
}
