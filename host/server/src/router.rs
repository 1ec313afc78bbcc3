//! The route table: a pure type from (method, path) to a plugin route, built from manifests.
//!
//! Matching is by segments: literal segments beat parameters at the same position, so
//! `/items/new` wins over `/items/{id}`. A path that matches with another method gives
//! `MethodNotAllowed` with the methods that would work.

use http::Method;
use infergate_runtime::manifest::{PathTemplate, Segment};

/// Where a route lives: which plugin (index into the snapshot) and which of its routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub plugin: usize,
    pub route: usize,
}

struct Entry {
    method: Method,
    /// The mount prefix split into segments, then the template's segments.
    segments: Vec<Segment>,
    mount_len: usize,
    target: Target,
}

#[derive(Default)]
pub struct Router {
    entries: Vec<Entry>,
}

#[derive(Debug, PartialEq)]
pub enum Match {
    Found {
        target: Target,
        params: Vec<(String, String)>,
        /// The path below the plugin's mount point.
        relative_path: String,
    },
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

impl Router {
    /// Adds a route; fails if an equal route (same method and shape) is already there.
    pub fn add(
        &mut self,
        mount: &str,
        method: Method,
        template: &PathTemplate,
        target: Target,
    ) -> Result<(), String> {
        let mut segments: Vec<Segment> = mount
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| Segment::Literal(s.to_string()))
            .collect();
        let mount_len = segments.len();
        segments.extend(template.segments.iter().cloned());
        let shape = |segs: &[Segment]| -> Vec<Option<String>> {
            segs.iter()
                .map(|s| match s {
                    Segment::Literal(l) => Some(l.clone()),
                    Segment::Param(_) => None,
                })
                .collect()
        };
        let new_shape = shape(&segments);
        if self
            .entries
            .iter()
            .any(|e| e.method == method && shape(&e.segments) == new_shape)
        {
            return Err(format!(
                "route `{method} {mount}{}` collides with an existing route",
                template.raw
            ));
        }
        self.entries.push(Entry {
            method,
            segments,
            mount_len,
            target,
        });
        Ok(())
    }

    pub fn find(&self, method: &Method, path: &str) -> Match {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // The best match so far: entry, its params, how many literal segments matched.
        type Best<'a> = (&'a Entry, Vec<(String, String)>, usize);
        let mut best: Option<Best> = None;
        let mut allowed = Vec::new();
        for entry in &self.entries {
            let Some((params, literals)) = match_segments(&entry.segments, &parts) else {
                continue;
            };
            if entry.method != *method {
                if !allowed.contains(&entry.method) {
                    allowed.push(entry.method.clone());
                }
                continue;
            }
            if best.as_ref().is_none_or(|(_, _, l)| literals > *l) {
                best = Some((entry, params, literals));
            }
        }
        match best {
            Some((entry, params, _)) => Match::Found {
                target: entry.target,
                params,
                relative_path: relative_path(&parts[entry.mount_len..], path.len()),
            },
            None if !allowed.is_empty() => Match::MethodNotAllowed(allowed),
            None => Match::NotFound,
        }
    }
}

/// `/` and the parts below the mount, `/`-separated (one allocation, no formatting).
fn relative_path(parts: &[&str], capacity: usize) -> String {
    if parts.is_empty() {
        return "/".to_string();
    }
    let mut path = String::with_capacity(capacity);
    for part in parts {
        path.push('/');
        path.push_str(part);
    }
    path
}

/// Matches path parts against segments; returns the params and how many literals matched.
fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<(Vec<(String, String)>, usize)> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut params = Vec::new();
    let mut literals = 0;
    for (segment, part) in segments.iter().zip(parts) {
        match segment {
            Segment::Literal(l) if l == part => literals += 1,
            Segment::Literal(_) => return None,
            Segment::Param(name) => params.push((name.clone(), percent_decode(part))),
        }
    }
    Some((params, literals))
}

/// Decodes `%XX` escapes of a path segment; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> PathTemplate {
        PathTemplate::parse(raw).unwrap()
    }

    fn target(plugin: usize, route: usize) -> Target {
        Target { plugin, route }
    }

    fn router() -> Router {
        let mut r = Router::default();
        r.add("/digits", Method::POST, &t("/classify"), target(0, 0))
            .unwrap();
        r.add("/shop", Method::GET, &t("/items/{id}"), target(1, 0))
            .unwrap();
        r.add("/shop", Method::GET, &t("/items/new"), target(1, 1))
            .unwrap();
        r.add("/shop", Method::DELETE, &t("/items/{id}"), target(1, 2))
            .unwrap();
        r.add("", Method::POST, &t("/v1/chat/completions"), target(2, 0))
            .unwrap();
        r
    }

    #[test]
    fn finds_literal_routes_and_relative_paths() {
        let m = router().find(&Method::POST, "/digits/classify");
        assert_eq!(
            m,
            Match::Found {
                target: target(0, 0),
                params: vec![],
                relative_path: "/classify".into()
            }
        );
        assert!(matches!(
            router().find(&Method::POST, "/v1/chat/completions"),
            Match::Found {
                target: Target { plugin: 2, .. },
                ..
            }
        ));
    }

    #[test]
    fn params_and_literal_precedence() {
        let r = router();
        match r.find(&Method::GET, "/shop/items/42") {
            Match::Found {
                target: tg,
                params,
                relative_path,
            } => {
                assert_eq!(tg, target(1, 0));
                assert_eq!(params, vec![("id".to_string(), "42".to_string())]);
                assert_eq!(relative_path, "/items/42");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.find(&Method::GET, "/shop/items/new"),
            Match::Found {
                target: Target { route: 1, .. },
                ..
            }
        ));
        match r.find(&Method::GET, "/shop/items/a%20b") {
            Match::Found { params, .. } => assert_eq!(params[0].1, "a b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let r = router();
        assert_eq!(r.find(&Method::GET, "/nope"), Match::NotFound);
        assert_eq!(r.find(&Method::GET, "/digits"), Match::NotFound);
        assert_eq!(
            r.find(&Method::GET, "/digits/classify/extra"),
            Match::NotFound
        );
        assert_eq!(
            r.find(&Method::GET, "/digits/classify"),
            Match::MethodNotAllowed(vec![Method::POST])
        );
        assert_eq!(
            r.find(&Method::PUT, "/shop/items/1"),
            Match::MethodNotAllowed(vec![Method::GET, Method::DELETE])
        );
    }

    #[test]
    fn collisions_are_rejected() {
        let mut r = router();
        assert!(
            r.add("/shop", Method::GET, &t("/items/{other}"), target(3, 0))
                .is_err()
        );
        assert!(
            r.add("/", Method::POST, &t("/digits/classify"), target(3, 0))
                .is_err()
        );
        assert!(
            r.add("/shop", Method::POST, &t("/items/{id}"), target(3, 0))
                .is_ok()
        );
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%aé"), "%aé");
    }
}
