//! What the registry is asked to serve: a model (`[[models]]`, `PUT /admin/models/{name}`) and
//! the settings of a plugin (its mount, models and limits), whatever brought it in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use infergate_nn::{BackendKind, ModelSpec, Target};
use infergate_runtime::Limits;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
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

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// The most rows (inputs' leading dimension, summed) one backend call holds.
    pub max_rows: u32,
    /// Pad axis 1 (sequence length) with zeros so inputs of different lengths batch together,
    /// and cut the outputs back (right for BERT-style encoders: padding id 0, attention mask 0).
    #[serde(default)]
    pub pad: bool,
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

/// How a plugin is served, whatever brought it in (config, watched directory, admin API).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Path prefix of its routes; default `/{name}`; `/` for the root.
    pub mount: Option<String>,
    /// Models it may open.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Where it may send HTTP requests: `scheme://host[:port]` each; empty: nowhere.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Values the plugin reads through `wasi:config/store` (an upstream's URL, a model name).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets the plugin reads through `wasi:config/store`, by key: the name of the environment
    /// variable of the host's process that holds each one. Read when the plugin is loaded, so a
    /// secret is never written in a config file and never logged.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Requests one instance may serve, one after another and only for one tenant (warm
    /// instances, for plugins that keep no per-request state); default 1: a fresh instance per
    /// request. See `infergate_runtime::pool`.
    pub reuse: Option<u32>,
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
        self.limits.validate().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(self.reuse != Some(0), "reuse must be at least 1");
        for key in self.config.keys().chain(self.secrets.keys()) {
            anyhow::ensure!(
                !key.is_empty()
                    && key.len() <= 128
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
                "config/secrets key `{key}`: use 1 to 128 letters, digits, `_`, `-` or `.`"
            );
            anyhow::ensure!(
                !(self.config.contains_key(key) && self.secrets.contains_key(key)),
                "`{key}` is both in config and in secrets"
            );
        }
        Ok(())
    }

    /// The values the plugin reads through `wasi:config/store`: `config`, and each secret read
    /// from its environment variable now. An unset variable is an error naming it (and never a
    /// value).
    pub fn variables(&self) -> anyhow::Result<infergate_runtime::Variables> {
        let mut values = self.config.clone();
        for (key, var) in &self.secrets {
            let value = std::env::var(var).map_err(|_| {
                anyhow::anyhow!("secret `{key}`: environment variable `{var}` is not set")
            })?;
            values.insert(key.clone(), value);
        }
        Ok(infergate_runtime::Variables::new(values))
    }

    /// The path prefix for a plugin called `name`, without a trailing slash ("" for root).
    pub fn mount_for(&self, name: &str) -> String {
        let mount = self.mount.clone().unwrap_or_else(|| format!("/{name}"));
        mount.trim_end_matches('/').to_string()
    }
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
