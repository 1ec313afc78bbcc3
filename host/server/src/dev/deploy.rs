//! `infergate deploy`: uploads a component to a running host, through the operator's admin API
//! (`PUT /admin/plugins/{name}`) or, with `--tenant`, a tenant's self-service API
//! (`PUT /tenant/plugins/{name}`, mounted at `/t/{tenant}/{name}`). The host compiles and checks
//! it before serving it; its answer (or its JSON error) is printed as it came.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

/// What to deploy, where, and as whom.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub wasm: PathBuf,
    /// The host's base URL, e.g. `http://127.0.0.1:8080`.
    pub to: String,
    /// Registered name; default: the file's stem (`hello.wasm` → `hello`).
    pub name: Option<String>,
    /// The admin key, or with `tenant` the tenant's API key.
    pub key: String,
    pub tenant: bool,
    /// Models to grant (comma-separated on the wire).
    pub models: Vec<String>,
    /// Requests one warm instance may serve.
    pub reuse: Option<u32>,
    pub mount: Option<String>,
}

/// Uploads; returns the host's answer.
pub async fn deploy(d: &Deploy) -> anyhow::Result<Value> {
    let name = match &d.name {
        Some(name) => name.clone(),
        None => stem(&d.wasm)?,
    };
    let bytes = std::fs::read(&d.wasm).with_context(|| format!("reading {}", d.wasm.display()))?;
    let api = if d.tenant { "tenant" } else { "admin" };
    let url = format!("{}/{api}/plugins/{name}", d.to.trim_end_matches('/'));
    let mut query = Vec::new();
    if !d.models.is_empty() {
        query.push(("models", d.models.join(",")));
    }
    if let Some(reuse) = d.reuse {
        query.push(("reuse", reuse.to_string()));
    }
    if let Some(mount) = &d.mount {
        query.push(("mount", mount.clone()));
    }
    let response = reqwest::Client::new()
        .put(&url)
        .query(&query)
        .bearer_auth(&d.key)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = response.status();
    let text = response.text().await.context("reading the host's answer")?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| body.to_string());
        anyhow::bail!("the host refused the deploy ({status}): {message}");
    }
    Ok(body)
}

/// The plugin name a file deploys as by default.
fn stem(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.replace('.', "-"))
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{}: give the plugin a --name", path.display()))
}
