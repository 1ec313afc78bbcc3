//! `[limits]`: the rules, per-tenant limits, the store their state lives in and what happens
//! when that store does not answer.

use serde::Deserialize;

/// `[limits]`: rate limits and quotas (see the module and the README for the syntax).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Where limit state lives: `memory` (one instance) or `redis` (shared by instances).
    pub store: StoreKind,
    /// e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: Option<String>,
    /// Longest a limit check may wait for Redis; then `on_store_error` decides.
    pub redis_timeout_ms: u64,
    /// `allow` (fail open) or `deny` (fail closed, 503 `limits_unavailable`).
    pub on_store_error: FailPolicy,
    /// Prefix of every store key; lets several deployments share one Redis.
    pub key_prefix: String,
    /// Most limit states kept in memory (idle ones are dropped first).
    pub max_entries: usize,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR networks).
    pub trusted_proxies: Vec<String>,
    pub rules: Vec<RuleConfig>,
    /// Per-tenant limits (counted per tenant) and fair-queueing priority.
    pub tenants: std::collections::BTreeMap<String, TenantLimitsConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            redis_url: None,
            redis_timeout_ms: 100,
            on_store_error: FailPolicy::Allow,
            key_prefix: "infergate".into(),
            max_entries: 1_000_000,
            trusted_proxies: Vec::new(),
            rules: Vec::new(),
            tenants: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    Allow,
    Deny,
}

/// `[[limits.rules]]`: limits counted `per` key, tenant, ip, plugin, route or global, for the
/// requests that match the optional `tenant`, `plugin` and `route` (template) filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(deserialize_with = "one_or_many")]
    pub per: Vec<super::Dimension>,
    pub limit: Option<String>,
    #[serde(default)]
    pub limits: Vec<String>,
    pub tenant: Option<String>,
    pub plugin: Option<String>,
    pub route: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitsConfig {
    #[serde(default)]
    pub limits: Vec<String>,
    /// Weight in the models' fair queues (default 1).
    pub priority: Option<u32>,
}

fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v,
    })
}
