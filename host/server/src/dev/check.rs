//! `infergate check`: a component as the host would load it, without a host running.
//!
//! The component is compiled (never taken from a cache, so the time is what a first load
//! costs), linked against every host interface, its manifest read and validated as a deploy
//! would (plugin name, routes, request schemas), and instantiated in the real sandbox with the
//! default limits. Models it names are not opened: the report says which ones the operator
//! must grant.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use infergate_runtime::{Inspection, Limits, Runtime, RuntimeOptions};
use serde_json::{Value, json};

/// Fresh instances timed for the instantiate figure (the median is reported).
const RUNS: usize = 20;

/// Checks the component at `path`; an error says what is wrong with it.
pub async fn check(path: &Path) -> anyhow::Result<Inspection> {
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let runtime = Arc::new(Runtime::new(&RuntimeOptions {
        cache_dir: None,
        max_instances: 4,
    })?);
    let inspection = runtime
        .inspect(wasm.into(), &Limits::default(), RUNS)
        .await?;
    for route in &inspection.manifest.routes {
        if let Some(schema) = &route.request_schema {
            jsonschema::validator_for(schema).map_err(|e| {
                anyhow::anyhow!(
                    "route {} {}: its request schema does not compile: {e}",
                    route.method,
                    route.path.raw
                )
            })?;
        }
    }
    Ok(inspection)
}

/// The report, for people.
pub fn render(path: &Path, i: &Inspection) -> String {
    let m = &i.manifest;
    let mut out = format!("{} {}: {}\n", m.name, m.version, m.description);
    out += &format!(
        "  component    {} ({:.1} MB)\n",
        path.display(),
        i.size as f64 / 1e6
    );
    out += &format!(
        "  compile      {} (Cranelift, here; a host with a cache_dir compiles once)\n",
        human(i.compile)
    );
    out += &format!(
        "  instantiate  {} per fresh instance (median of {RUNS}); `reuse = N` skips it\n",
        human(i.instantiate)
    );
    out += if i.reads_request {
        "  request      read whole in one host call (host.read-request)\n"
    } else {
        "  request      read through the wasi:http resources (the SDKs read it in one host call)\n"
    };
    out += "  routes\n";
    for r in &m.routes {
        let mut notes = Vec::new();
        if r.request_schema.is_some() {
            notes.push("validated body".to_string());
        }
        if r.streaming {
            notes.push("streams".into());
        }
        if !r.scopes.is_empty() {
            notes.push(format!("scopes: {}", r.scopes.join(" ")));
        }
        out += &format!(
            "    {:<6} /{}{}  {}{}\n",
            r.method.as_str(),
            m.name,
            r.path.raw,
            r.summary,
            if notes.is_empty() {
                String::new()
            } else {
                format!("  [{}]", notes.join(", "))
            }
        );
    }
    if m.models.is_empty() {
        out += "  models       none\n";
    } else {
        out += &format!(
            "  models       {} (the operator grants them: models = [{}])\n",
            m.models.join(", "),
            m.models
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out += "ok: it loads in infergate's sandbox\n";
    out
}

/// The report, for programs (`--json`).
pub fn to_json(path: &Path, i: &Inspection) -> Value {
    let m = &i.manifest;
    json!({
        "path": path.display().to_string(),
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "size_bytes": i.size,
        "compile_ms": i.compile.as_secs_f64() * 1e3,
        "instantiate_us": i.instantiate.as_secs_f64() * 1e6,
        "reads_request_whole": i.reads_request,
        "models": m.models,
        "routes": m.routes.iter().map(|r| json!({
            "method": r.method.as_str(),
            "path": r.path.raw,
            "summary": r.summary,
            "streaming": r.streaming,
            "scopes": r.scopes,
            "request_schema": r.request_schema,
            "response_schema": r.response_schema,
        })).collect::<Vec<_>>(),
    })
}

fn human(d: Duration) -> String {
    match d.as_secs_f64() {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.1} ms", s * 1e3),
        s => format!("{:.0} µs", s * 1e6),
    }
}
