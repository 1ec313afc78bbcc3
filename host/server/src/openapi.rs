//! The OpenAPI 3.1 document, derived from the manifests of the current snapshot (the plugins'
//! own request and response schemas), and the `/docs` page that renders it without any
//! external script.
//!
//! A manifest's schema is a JSON Schema document of its own: its definitions sit in `$defs`
//! (or `definitions`) and its `$ref`s point there, which inside an OpenAPI document would
//! resolve against the document's root. So definitions are hoisted into `components/schemas`
//! (named `<plugin>.<Name>`, with a suffix when one plugin's routes define a name twice
//! differently) and the refs rewritten to them.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::registry::{Mounted, Snapshot};

/// The document of the plugins `visible` admits (a caller never sees another tenant's private
/// plugins).
pub fn document(snapshot: &Snapshot, visible: impl Fn(&Mounted) -> bool) -> Value {
    let mut paths = Map::new();
    let mut components = Components::default();
    components.schemas.insert("Error".into(), error_schema());
    let mut tags = Vec::new();
    for mounted in &snapshot.plugins {
        if !visible(mounted.as_ref()) {
            continue;
        }
        tags.push(json!({"name": mounted.name, "description": format!("{} (v{})", mounted.plugin.manifest.description, mounted.plugin.manifest.version)}));
        let mut hoist = |schema: &Value| hoisted(schema, &mounted.name, &mut components);
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
                let schema = hoist(schema);
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
            let ok_schema = route
                .response_schema
                .as_ref()
                .map_or_else(|| json!({}), &mut hoist);
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
            "schemas": components.schemas
        }
    })
}

fn error_schema() -> Value {
    json!({
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
    })
}

/// The document's `components/schemas`, and what each hoisted one was before its refs were
/// rewritten (the same definition hoisted twice is one component).
#[derive(Default)]
struct Components {
    schemas: Map<String, Value>,
    originals: HashMap<String, Value>,
}

/// `schema` with its definitions moved into `components` (as `<plugin>.<Name>`) and every
/// local `$ref` to them rewritten.
fn hoisted(schema: &Value, plugin: &str, components: &mut Components) -> Value {
    let mut schema = schema.clone();
    let mut defs: Vec<(String, String, Value)> = Vec::new();
    if let Value::Object(root) = &mut schema {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(d)) = root.remove(key) {
                for (name, def) in d {
                    defs.push((format!("#/{key}/{}", pointer_escape(&name)), name, def));
                }
            }
        }
        // The document says which dialect; a component is not a document of its own.
        root.remove("$schema");
    }
    let mut renamed: Vec<(String, String)> = Vec::new();
    let mut new = Vec::new();
    for (pointer, name, def) in defs {
        let base = format!("{}.{}", component_name(plugin), component_name(&name));
        let mut candidate = base.clone();
        let mut n = 1;
        let fresh = loop {
            match components.originals.get(&candidate) {
                None => break true,
                Some(original) if *original == def => break false,
                Some(_) => {
                    n += 1;
                    candidate = format!("{base}_{n}");
                }
            }
        };
        if fresh {
            components.originals.insert(candidate.clone(), def.clone());
            new.push((candidate.clone(), def));
        }
        renamed.push((pointer, format!("#/components/schemas/{candidate}")));
    }
    for (name, mut def) in new {
        rewrite_refs(&mut def, &renamed);
        components.schemas.insert(name, def);
    }
    rewrite_refs(&mut schema, &renamed);
    schema
}

/// Rewrites `$ref`s that start with one of `renamed`'s local pointers.
fn rewrite_refs(value: &mut Value, renamed: &[(String, String)]) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some((from, to)) = renamed
                    .iter()
                    .find(|(from, _)| r == from || r.starts_with(&format!("{from}/")))
            {
                *r = format!("{to}{}", &r[from.len()..]);
            }
            for v in map.values_mut() {
                rewrite_refs(v, renamed);
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite_refs(v, renamed);
            }
        }
        _ => {}
    }
}

/// A JSON pointer token (RFC 6901).
fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// What OpenAPI allows in a component's name: `[A-Za-z0-9._-]`, anything else as `_`.
fn component_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_hoisted_into_components_and_refs_follow_them() {
        let mut components = Components::default();
        let request = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
            "$defs": {
                "Item": {"type": "object", "properties": {"tag": {"$ref": "#/$defs/Tag"}}},
                "Tag": {"type": "string"}
            }
        });
        let out = hoisted(&request, "shop", &mut components);
        assert_eq!(
            out["properties"]["items"]["items"]["$ref"],
            "#/components/schemas/shop.Item"
        );
        assert!(out.get("$defs").is_none() && out.get("$schema").is_none());
        assert_eq!(
            components.schemas["shop.Item"]["properties"]["tag"]["$ref"],
            "#/components/schemas/shop.Tag"
        );
        // The same definitions again: the same components.
        hoisted(&request, "shop", &mut components);
        assert_eq!(components.schemas.len(), 2);
        // Another definition under a taken name, and the old `definitions` keyword.
        let other = json!({
            "$ref": "#/definitions/Item",
            "definitions": {"Item": {"type": "integer"}}
        });
        let out = hoisted(&other, "shop", &mut components);
        assert_eq!(out["$ref"], "#/components/schemas/shop.Item_2");
        assert_eq!(
            components.schemas["shop.Item_2"],
            json!({"type": "integer"})
        );
        // Names OpenAPI would refuse are made safe.
        let odd = json!({"$ref": "#/$defs/Pair<A, B>", "$defs": {"Pair<A, B>": {}}});
        let out = hoisted(&odd, "t--x", &mut components);
        assert_eq!(out["$ref"], "#/components/schemas/t--x.Pair_A__B_");
        // Nothing local is left anywhere.
        let text = serde_json::to_string(&components.schemas).unwrap();
        assert!(
            !text.contains("#/$defs") && !text.contains("#/definitions"),
            "{text}"
        );
    }
}
