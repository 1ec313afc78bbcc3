//! A plugin's manifest: what it serves and which models it wants, read from its `manifest`
//! export once at load and validated here so the rest of the host can trust it.

use std::collections::HashSet;

use crate::bindings::wit_manifest;

/// HTTP methods a route may declare.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// What one manifest may declare: a plugin is an endpoint or a few, not a way to keep the
/// host busy validating (everything below is checked in one linear pass).
pub const MAX_ROUTES: usize = 256;
/// Longest JSON Schema of one route's request or response.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;
/// All of a manifest's text together (schemas, summaries, paths, names).
pub const MAX_MANIFEST_BYTES: usize = 2 << 20;
/// Longest route path, summary, description, version; most scopes per route, models wanted.
const MAX_PATH_BYTES: usize = 512;
const MAX_TEXT_BYTES: usize = 4096;
const MAX_VERSION_BYTES: usize = 64;
const MAX_SCOPES: usize = 32;
const MAX_MODELS: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub routes: Vec<Route>,
    pub models: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub method: http::Method,
    pub path: PathTemplate,
    pub summary: String,
    pub request_schema: Option<serde_json::Value>,
    pub response_schema: Option<serde_json::Value>,
    pub streaming: bool,
    pub scopes: Vec<String>,
}

/// A route path such as `/items/{id}`: literal segments and whole-segment parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    /// The template exactly as declared; the plugin dispatches on this string.
    pub raw: String,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    Param(String),
}

impl PathTemplate {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(format!("path `{raw}` must start with `/`"));
        };
        let mut segments = Vec::new();
        let mut names = HashSet::new();
        if !rest.is_empty() {
            for part in rest.split('/') {
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if !valid_ident(name) {
                        return Err(format!("path `{raw}`: bad parameter name `{name}`"));
                    }
                    if !names.insert(name) {
                        return Err(format!("path `{raw}`: parameter `{name}` appears twice"));
                    }
                    segments.push(Segment::Param(name.to_string()));
                } else if part.is_empty() || part.contains(['{', '}', '?', '#', '%']) {
                    return Err(format!("path `{raw}`: bad segment `{part}`"));
                } else {
                    segments.push(Segment::Literal(part.to_string()));
                }
            }
        }
        Ok(Self {
            raw: raw.to_string(),
            segments,
        })
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What [`valid_plugin_name`] accepts, for error messages.
pub const PLUGIN_NAME_RULE: &str = "1-64 characters of a-z, 0-9, `-` or `_`";

/// Plugin names become URL segments and metric labels: keep them plain ([`PLUGIN_NAME_RULE`]).
pub fn valid_plugin_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Manifest {
    /// Checks what the plugin declared; the error says which route or field is wrong.
    pub fn from_wit(m: wit_manifest::PluginManifest) -> Result<Self, String> {
        if !valid_plugin_name(&m.name) {
            return Err(format!(
                "plugin name `{}` must be {PLUGIN_NAME_RULE}",
                m.name
            ));
        }
        if m.routes.len() > MAX_ROUTES {
            return Err(format!(
                "it declares {} routes; a plugin may declare at most {MAX_ROUTES}",
                m.routes.len()
            ));
        }
        if m.models.len() > MAX_MODELS {
            return Err(format!(
                "it wants {} models; at most {MAX_MODELS}",
                m.models.len()
            ));
        }
        let too_long = |what: &str, text: &str, max: usize| {
            (text.len() > max).then(|| format!("{what} is {} bytes; at most {max}", text.len()))
        };
        let total: usize = [&m.name, &m.version, &m.description]
            .iter()
            .map(|s| s.len())
            .chain(m.models.iter().map(String::len))
            .chain(m.routes.iter().map(|r| {
                r.method.len()
                    + r.path.len()
                    + r.summary.len()
                    + r.request_schema.as_ref().map_or(0, String::len)
                    + r.response_schema.as_ref().map_or(0, String::len)
                    + r.scopes.iter().map(String::len).sum::<usize>()
            }))
            .sum();
        if total > MAX_MANIFEST_BYTES {
            return Err(format!(
                "it is {total} bytes of text; a manifest may have at most {MAX_MANIFEST_BYTES}"
            ));
        }
        if let Some(e) = too_long("the version", &m.version, MAX_VERSION_BYTES)
            .or_else(|| too_long("the description", &m.description, MAX_TEXT_BYTES))
        {
            return Err(e);
        }
        let mut seen = HashSet::new();
        let mut routes = Vec::with_capacity(m.routes.len());
        for r in m.routes {
            let at = |what: &str| {
                format!(
                    "route `{} {}`: {what}",
                    r.method,
                    r.path.chars().take(64).collect::<String>()
                )
            };
            if let Some(e) = too_long("the path", &r.path, MAX_PATH_BYTES)
                .or_else(|| too_long("the summary", &r.summary, MAX_TEXT_BYTES))
                .or_else(|| {
                    r.request_schema
                        .as_deref()
                        .and_then(|s| too_long("the request schema", s, MAX_SCHEMA_BYTES))
                })
                .or_else(|| {
                    r.response_schema
                        .as_deref()
                        .and_then(|s| too_long("the response schema", s, MAX_SCHEMA_BYTES))
                })
            {
                return Err(at(&e));
            }
            if r.scopes.len() > MAX_SCOPES {
                return Err(at(&format!(
                    "{} scopes; at most {MAX_SCOPES}",
                    r.scopes.len()
                )));
            }
            let method_name = r.method.to_ascii_uppercase();
            if !METHODS.contains(&method_name.as_str()) {
                return Err(format!(
                    "route `{} {}`: unsupported method",
                    r.method, r.path
                ));
            }
            let method: http::Method = method_name
                .parse()
                .map_err(|_| format!("route `{} {}`: bad method", r.method, r.path))?;
            let path = PathTemplate::parse(&r.path)?;
            let shape: Vec<_> = path
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => Some(l.clone()),
                    Segment::Param(_) => None,
                })
                .collect();
            if !seen.insert((method.clone(), shape)) {
                return Err(format!("route `{method} {}` is declared twice", r.path));
            }
            let schema = |text: Option<String>, what: &str| -> Result<_, String> {
                text.map(|t| {
                    serde_json::from_str::<serde_json::Value>(&t).map_err(|e| {
                        format!(
                            "route `{method} {}`: {what} schema is not JSON: {e}",
                            r.path
                        )
                    })
                })
                .transpose()
            };
            routes.push(Route {
                request_schema: schema(r.request_schema, "request")?,
                response_schema: schema(r.response_schema, "response")?,
                method,
                path,
                summary: r.summary,
                streaming: r.streaming,
                scopes: r.scopes,
            });
        }
        Ok(Self {
            name: m.name,
            version: m.version,
            description: m.description,
            routes,
            models: m.models,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_templates() {
        let t = PathTemplate::parse("/items/{id}/tags").unwrap();
        assert_eq!(
            t.segments,
            vec![
                Segment::Literal("items".into()),
                Segment::Param("id".into()),
                Segment::Literal("tags".into())
            ]
        );
        assert!(PathTemplate::parse("/").unwrap().segments.is_empty());
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "items", "/a//b", "/{}", "/{a}/{a}", "/a{b}", "/a?b", "/{a b}",
        ] {
            assert!(
                PathTemplate::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    fn route(method: &str, path: &str) -> wit_manifest::Route {
        wit_manifest::Route {
            method: method.into(),
            path: path.into(),
            summary: String::new(),
            request_schema: None,
            response_schema: None,
            streaming: false,
            scopes: vec![],
        }
    }

    fn manifest(routes: Vec<wit_manifest::Route>) -> wit_manifest::PluginManifest {
        wit_manifest::PluginManifest {
            name: "p".into(),
            version: "1".into(),
            description: String::new(),
            routes,
            models: vec![],
        }
    }

    #[test]
    fn rejects_duplicate_routes_even_with_other_param_names() {
        let err = Manifest::from_wit(manifest(vec![
            route("GET", "/a/{x}"),
            route("get", "/a/{y}"),
        ]));
        assert!(err.unwrap_err().contains("declared twice"));
        assert!(
            Manifest::from_wit(manifest(vec![
                route("GET", "/a/{x}"),
                route("POST", "/a/{y}")
            ]))
            .is_ok()
        );
    }

    #[test]
    fn rejects_bad_methods_names_and_schemas() {
        assert!(Manifest::from_wit(manifest(vec![route("TRACE", "/a")])).is_err());
        let mut m = manifest(vec![]);
        m.name = "Bad Name".into();
        assert!(Manifest::from_wit(m).is_err());
        let mut r = route("POST", "/a");
        r.request_schema = Some("{not json".into());
        assert!(Manifest::from_wit(manifest(vec![r])).is_err());
    }

    #[test]
    fn bounds_what_a_manifest_may_declare() {
        let many: Vec<_> = (0..=MAX_ROUTES)
            .map(|i| route("GET", &format!("/r{i}")))
            .collect();
        let e = Manifest::from_wit(manifest(many)).unwrap_err();
        assert!(e.contains("at most 256"), "{e}");
        let enough: Vec<_> = (0..MAX_ROUTES)
            .map(|i| route("GET", &format!("/r{i}")))
            .collect();
        assert!(Manifest::from_wit(manifest(enough)).is_ok());

        let mut r = route("POST", "/a");
        r.request_schema = Some(format!(
            "{{\"description\": \"{}\"}}",
            "x".repeat(MAX_SCHEMA_BYTES)
        ));
        let e = Manifest::from_wit(manifest(vec![r])).unwrap_err();
        assert!(
            e.contains("the request schema is") && e.contains("POST /a"),
            "{e}"
        );

        // Under each limit, over the total.
        let big = format!(
            "{{\"description\": \"{}\"}}",
            "x".repeat(MAX_SCHEMA_BYTES - 64)
        );
        let routes: Vec<_> = (0..10)
            .map(|i| {
                let mut r = route("POST", &format!("/r{i}"));
                r.request_schema = Some(big.clone());
                r
            })
            .collect();
        let e = Manifest::from_wit(manifest(routes)).unwrap_err();
        assert!(e.contains("a manifest may have at most"), "{e}");

        let mut r = route("GET", "/a");
        r.scopes = vec!["s".into(); MAX_SCOPES + 1];
        assert!(Manifest::from_wit(manifest(vec![r])).is_err());
        let mut m = manifest(vec![]);
        m.version = "v".repeat(65);
        assert!(Manifest::from_wit(m).is_err());
    }
}
