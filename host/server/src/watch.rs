//! The watched plugins directory: `NAME.wasm`, with optional settings in `NAME.toml`, is deployed
//! when it appears or changes and removed when it disappears.
//!
//! The directory is polled. A change is applied once the files have looked the same for one
//! whole poll, so a half-copied file is never loaded; a version that fails to deploy is logged,
//! shown by `GET /admin/plugins`, and retried only when the files change again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::registry::{PluginSettings, Registry, Source};

/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// Size and modification time of a plugin's `.wasm` and `.toml`: what "changed" means.
type Stamp = [(u64, Option<SystemTime>); 2];

pub struct Watcher {
    dir: PathBuf,
    /// Stamps seen at the last poll.
    seen: HashMap<String, Stamp>,
    /// Stamps last applied (deployed, or failed to deploy).
    applied: HashMap<String, Stamp>,
}

impl Watcher {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            seen: HashMap::new(),
            applied: HashMap::new(),
        }
    }

    /// Applies what the directory holds now, without waiting for files to settle (start-up).
    pub async fn initial_scan(&mut self, registry: &Registry) {
        self.scan(registry, false).await;
    }

    /// Polls forever.
    pub async fn run(mut self, registry: Arc<Registry>) {
        tracing::info!(dir = %self.dir.display(), "watching the plugins directory");
        loop {
            tokio::time::sleep(POLL).await;
            self.scan(&registry, true).await;
        }
    }

    async fn scan(&mut self, registry: &Registry, wait_until_stable: bool) {
        let now = match stamps(&self.dir) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read the plugins directory: {e}");
                return;
            }
        };
        for (name, stamp) in &now {
            let stable = !wait_until_stable || self.seen.get(name) == Some(stamp);
            if stable && self.applied.get(name) != Some(stamp) {
                self.apply(registry, name).await;
                self.applied.insert(name.clone(), *stamp);
            }
        }
        let gone: Vec<String> = self
            .applied
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.applied.remove(&name);
            match registry.remove(&name, Some(Source::Directory)).await {
                Ok(()) => tracing::info!(plugin = %name, "plugin file removed: plugin removed"),
                Err(e) => tracing::warn!(plugin = %name, "plugin file removed: {e}"),
            }
        }
        self.seen = now;
    }

    async fn apply(&self, registry: &Registry, name: &str) {
        let wasm_path = self.dir.join(format!("{name}.wasm"));
        let settings_path = self.dir.join(format!("{name}.toml"));
        let settings = match read_settings(&settings_path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(plugin = name, "not deploying: {e:#}");
                return;
            }
        };
        let wasm: Arc<[u8]> = match std::fs::read(&wasm_path) {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                tracing::error!(
                    plugin = name,
                    "not deploying: reading {}: {e}",
                    wasm_path.display()
                );
                return;
            }
        };
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
        if registry.current_version(name).await
            == Some((digest, settings.clone(), Source::Directory))
        {
            return;
        }
        if let Err(e) = registry
            .deploy(name, wasm, settings, Source::Directory, None)
            .await
        {
            tracing::error!(
                plugin = name,
                "deploy from the plugins directory failed: {e}"
            );
        }
    }
}

fn read_settings(path: &Path) -> anyhow::Result<PluginSettings> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PluginSettings::default()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn stamps(dir: &Path) -> std::io::Result<HashMap<String, Stamp>> {
    let stamp = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    };
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            out.insert(
                name.to_string(),
                [stamp(&path), stamp(&path.with_extension("toml"))],
            );
        }
    }
    Ok(out)
}
