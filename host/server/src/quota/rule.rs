//! Where a limit applies: a [`Rule`] (a policy, what it is counted per, and its filters) and
//! the [`Subject`] a request presents to the rules.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use super::policy::Policy;

/// What a limit is counted per: each distinct value gets its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Key,
    Tenant,
    Ip,
    Plugin,
    Route,
    Global,
}

/// One limit and where it applies.
#[derive(Clone, Debug)]
pub struct Rule {
    pub policy: Policy,
    pub per: Vec<Dimension>,
    pub tenant: Option<String>,
    pub plugin: Option<String>,
    pub route: Option<String>,
    /// Where it was declared, for people: `limits.rules[2]`, `key k1`, `tenant acme`.
    pub source: String,
    /// The prefix of its store keys.
    id: String,
    /// Its `RateLimit-Policy` value (`100;w=60`), made once: a request-rate limit's answers
    /// carry it.
    pub policy_header: Option<http::HeaderValue>,
}

impl Rule {
    pub fn new(
        policy: Policy,
        per: Vec<Dimension>,
        filters: [Option<String>; 3],
        source: String,
        prefix: &str,
    ) -> Rule {
        let [tenant, plugin, route] = filters;
        let per_text: Vec<String> = per
            .iter()
            .map(|d| format!("{d:?}").to_lowercase())
            .collect();
        let id = format!(
            "{prefix}:l:{policy}\x1f{}\x1f{}\x1f{}\x1f{}",
            per_text.join(","),
            tenant.as_deref().unwrap_or(""),
            plugin.as_deref().unwrap_or(""),
            route.as_deref().unwrap_or("")
        );
        let policy_header = match &policy {
            Policy::Rate { amount, period, .. } => {
                http::HeaderValue::from_str(&format!("{amount};w={}", period.as_secs().max(1))).ok()
            }
            Policy::Concurrent(_) => None,
        };
        Rule {
            policy,
            per,
            tenant,
            plugin,
            route,
            source,
            id,
            policy_header,
        }
    }

    pub(super) fn applies(&self, s: &Subject) -> bool {
        if s.plugin.is_empty() {
            // A host endpoint: only rules that name it (see the admission layer, `pipeline::admission`).
            return self.plugin.is_none()
                && self.route.as_deref() == Some(s.route)
                && self.tenant.as_deref().is_none_or(|t| t == s.tenant);
        }
        self.tenant.as_deref().is_none_or(|t| t == s.tenant)
            && self.plugin.as_deref().is_none_or(|p| p == s.plugin)
            && self.route.as_deref().is_none_or(|r| r == s.route)
    }

    pub(super) fn key(&self, s: &Subject) -> String {
        let mut key = self.id.clone();
        for d in &self.per {
            key.push('\x1f');
            match d {
                Dimension::Key => key.push_str(s.key_id),
                Dimension::Tenant => key.push_str(s.tenant),
                Dimension::Ip => key.push_str(&s.ip.to_string()),
                Dimension::Plugin => key.push_str(s.plugin),
                Dimension::Route => {
                    key.push_str(s.plugin);
                    key.push(' ');
                    key.push_str(s.route);
                }
                Dimension::Global => {}
            }
        }
        key
    }
}

/// Who asks for what, as far as limits care.
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub key_id: &'a str,
    pub ip: IpAddr,
    /// Empty for the host's own endpoints.
    pub plugin: &'a str,
    /// The route template, as the plugin's manifest declares it (host endpoints: as the host
    /// routes it, e.g. `/oauth/token`).
    pub route: &'a str,
    /// Limits stored with the caller's key and tenant.
    pub key_limits: &'a [String],
    pub tenant_limits: &'a [String],
    /// Unique per request: names its concurrency leases.
    pub request_id: &'a str,
    /// The longest the request can run: bounds its concurrency lease in a shared store.
    pub lease: Duration,
}
