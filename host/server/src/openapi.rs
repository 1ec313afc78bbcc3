//! The OpenAPI 3.1 document, derived from the manifests of the current snapshot (the plugins'
//! own request and response schemas), and the `/docs` page that renders it without any
//! external script.

use serde_json::{Map, Value, json};

use crate::registry::{Mounted, Snapshot};

/// The document of the plugins `visible` admits (a caller never sees another tenant's private
/// plugins).
pub fn document(snapshot: &Snapshot, visible: impl Fn(&Mounted) -> bool) -> Value {
    let mut paths = Map::new();
    for mounted in &snapshot.plugins {
        if !visible(mounted.as_ref()) {
            continue;
        }
        for route in &mounted.plugin.manifest.routes {
            let path = format!("{}{}", mounted.mount, route.path.raw);
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            let mut op = Map::new();
            op.insert("tags".into(), json!([mounted.name]));
            op.insert("summary".into(), json!(route.summary));
            op.insert(
                "operationId".into(),
                json!(format!(
                    "{}_{}_{}",
                    mounted.name,
                    route.method.as_str().to_lowercase(),
                    route.path.raw
                )),
            );
            let params: Vec<Value> = route
                .path
                .segments
                .iter()
                .filter_map(|s| match s {
                    infergate_runtime::manifest::Segment::Param(name) => Some(json!({
                        "name": name, "in": "path", "required": true, "schema": {"type": "string"}
                    })),
                    _ => None,
                })
                .collect();
            if !params.is_empty() {
                op.insert("parameters".into(), Value::Array(params));
            }
            if let Some(schema) = &route.request_schema {
                op.insert(
                    "requestBody".into(),
                    json!({"required": true, "content": {"application/json": {"schema": schema}}}),
                );
            }
            let ok_type = if route.streaming {
                "text/event-stream"
            } else {
                "application/json"
            };
            let ok_schema = route.response_schema.clone().unwrap_or_else(|| json!({}));
            op.insert(
                "responses".into(),
                json!({
                    "200": {"description": "Success", "content": {ok_type: {"schema": ok_schema}}},
                    "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                }),
            );
            if !route.scopes.is_empty() {
                op.insert("x-required-scopes".into(), json!(route.scopes));
            }
            let entry = paths
                .entry(path)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(methods) = entry {
                methods.insert(route.method.as_str().to_lowercase(), Value::Object(op));
            }
        }
    }
    let tags: Vec<Value> = snapshot
        .plugins
        .iter()
        .map(|m| json!({"name": m.name, "description": format!("{} (v{})", m.plugin.manifest.description, m.plugin.manifest.version)}))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {"title": "infergate", "version": env!("CARGO_PKG_VERSION")},
        "tags": tags,
        "paths": paths,
        "security": [{"bearer": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message", "request_id"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "request_id": {"type": "string"}
                        }
                    }}
                }
            }
        }
    })
}

/// A page that renders `/openapi.json`: every route with its summary and schemas.
pub const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>infergate API</title>
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.6rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;margin:.8rem 0;padding:.6rem .8rem}
.m{display:inline-block;min-width:4.5rem;font-weight:bold;font-family:monospace}
.path{font-family:monospace;font-size:1.05rem} details{margin-top:.4rem}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.85rem}
</style></head><body>
<h1>infergate API</h1>
<p>Authenticate with <code>Authorization: Bearer &lt;key&gt;</code> or <code>X-API-Key: &lt;key&gt;</code>.
Errors share one shape: <code>{"error": {"code", "message", "request_id"}}</code>.
Raw document: <a href="/openapi.json">/openapi.json</a>.</p>
<div id="api">Loading…</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('api'); root.textContent = '';
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths || {}))
    for (const [method, op] of Object.entries(ops))
      (byTag[(op.tags || ['other'])[0]] ||= []).push({path, method, op});
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text) e.textContent = text; if (cls) e.className = cls; return e; };
  for (const tag of doc.tags || []) {
    root.append(el('h2', tag.name)); root.append(el('p', tag.description));
    for (const {path, method, op} of byTag[tag.name] || []) {
      const box = el('div', null, 'op');
      box.append(el('span', method.toUpperCase(), 'm'), el('span', path, 'path'), el('p', op.summary || ''));
      const schemas = [['Request body', op.requestBody?.content?.['application/json']?.schema],
                       ['Response', Object.values(op.responses?.['200']?.content || {})[0]?.schema]];
      for (const [label, schema] of schemas) if (schema) {
        const d = el('details'); d.append(el('summary', label), el('pre', JSON.stringify(schema, null, 2))); box.append(d);
      }
      root.append(box);
    }
  }
}).catch(e => { document.getElementById('api').textContent = 'Could not load /openapi.json: ' + e; });
</script></body></html>"#;
