//! Quotas and rate limits: which limits apply to a request, asking the store, and the answer
//! (`rate_limited`/`quota_exceeded` 429 with `Retry-After`, `RateLimit-*` headers).
//!
//! - [`policy`]: the policy language (`60/minute`, `100000 tokens/day`, `8 concurrent`, ...).
//! - [`gcra`]: the one algorithm, exact, as a pure function.
//! - [`memory`] and [`redis`]: the two stores (one machine; several instances).
//! - [`client_ip`]: the client address behind trusted proxies.
//! - `rule`: where a limit applies; `admission`: a request let in or refused; `config`:
//!   `[limits]`.
//!
//! A request's limits come from the config's `[[limits.rules]]` (matched by tenant, plugin and
//! route, counted per key, tenant, IP, plugin, route or globally), the config's per-tenant
//! limits, and the limits stored with the caller's key and tenant. All must pass; request
//! rates and concurrency are charged up front, all or nothing. Tokens and compute seconds are
//! only known afterwards: a request is let in while its budget has room, and what it used is
//! charged when its plugin instance is gone, so an overdraft blocks the next requests until it
//! is paid back.

mod admission;
pub mod client_ip;
mod config;
pub mod gcra;
pub mod memory;
pub mod policy;
pub mod redis;
mod rule;

pub use admission::{Admission, Refusal};
pub use config::{FailPolicy, LimitsConfig, RuleConfig, StoreKind, TenantLimitsConfig};
pub use rule::{Dimension, Rule, Subject};

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

use crate::error::ApiError;
use gcra::Decision;
use policy::{Metered, Policy};

/// One question to a store.
#[derive(Clone, Debug)]
pub struct Check {
    pub key: String,
    pub kind: CheckKind,
}

#[derive(Clone, Copy, Debug)]
pub enum CheckKind {
    /// Charge `cost` if every check of the request passes.
    Charge { amount: f64, period: f64, cost: f64 },
    /// Would `cost` pass? Charges nothing.
    Peek { amount: f64, period: f64, cost: f64 },
    /// Take one of `cap` places, for at most `lease` seconds.
    Acquire { cap: u32, lease: f64 },
}

/// A cost known after the fact.
#[derive(Clone, Debug)]
pub struct Debit {
    pub key: String,
    pub amount: f64,
    pub period: f64,
    pub cost: f64,
}

/// Usage summed over requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub compute_seconds: f64,
}

impl UsageTotals {
    fn add(&mut self, other: &UsageTotals) {
        self.requests += other.requests;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.compute_seconds += other.compute_seconds;
    }
}

/// Redis's futures are boxed where they start: otherwise every request's future (and the
/// copy made when it is boxed) carries their size, with or without Redis.
enum Store {
    Memory(memory::MemoryStore),
    Redis(Box<redis::RedisStore>),
}

impl Store {
    async fn check(
        &self,
        checks: &[Check],
        member: &str,
    ) -> Result<Vec<Decision>, redis::StoreError> {
        match self {
            Store::Memory(m) => Ok(m.check(checks)),
            Store::Redis(r) => Box::pin(r.check(checks, member)).await,
        }
    }

    async fn debit(
        &self,
        debits: &[Debit],
        usage: Option<(&[String], UsageTotals)>,
    ) -> Result<(), redis::StoreError> {
        match self {
            Store::Memory(m) => {
                m.debit(debits, usage);
                Ok(())
            }
            Store::Redis(r) => Box::pin(r.debit(debits, usage)).await,
        }
    }

    async fn usage(&self, account: &str) -> Result<UsageTotals, redis::StoreError> {
        match self {
            Store::Memory(m) => Ok(m.usage(account)),
            Store::Redis(r) => Box::pin(r.usage(account)).await,
        }
    }
}

/// The limits of this host, and the store that keeps their state.
pub struct Quotas {
    rules: Vec<Rule>,
    /// Per-tenant limits and priorities from the config.
    tenants: std::collections::HashMap<String, (Vec<Rule>, Option<u32>)>,
    store: Arc<Store>,
    on_store_error: FailPolicy,
    trusted_proxies: Vec<ipnet::IpNet>,
    prefix: String,
    /// Checks the store could not answer.
    store_errors: std::sync::atomic::AtomicU64,
}

impl Quotas {
    /// Builds the limits of `config`; errors name the key at fault.
    pub fn new(config: &LimitsConfig) -> anyhow::Result<Quotas> {
        let prefix = config.key_prefix.clone();
        let mut rules = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            let at = format!("limits.rules[{i}]");
            anyhow::ensure!(
                !r.per.is_empty(),
                "{at}: per: name what the limit is counted per (key, tenant, ip, plugin, route or global)"
            );
            let texts: Vec<&String> = r.limit.iter().chain(r.limits.iter()).collect();
            anyhow::ensure!(!texts.is_empty(), "{at}: give `limit` or `limits`");
            for text in texts {
                let policy: Policy = text.parse().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
                rules.push(Rule::new(
                    policy,
                    r.per.clone(),
                    [r.tenant.clone(), r.plugin.clone(), r.route.clone()],
                    at.clone(),
                    &prefix,
                ));
            }
        }
        let mut tenants = std::collections::HashMap::new();
        for (tenant, t) in &config.tenants {
            let at = format!("limits.tenants.{tenant}");
            let mut list = Vec::new();
            for text in &t.limits {
                let policy: Policy = text.parse().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
                list.push(Rule::new(
                    policy,
                    vec![Dimension::Tenant],
                    [Some(tenant.clone()), None, None],
                    format!("tenant {tenant}"),
                    &prefix,
                ));
            }
            if let Some(p) = t.priority {
                anyhow::ensure!(p >= 1, "{at}: priority must be at least 1");
            }
            tenants.insert(tenant.clone(), (list, t.priority));
        }
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .map(|p| {
                client_ip::parse_net(p).map_err(|e| anyhow::anyhow!("limits.trusted_proxies: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let store = match config.store {
            StoreKind::Memory => Store::Memory(memory::MemoryStore::new(config.max_entries)),
            StoreKind::Redis => {
                let url = config.redis_url.as_deref().ok_or_else(|| {
                    anyhow::anyhow!("limits.redis_url: needed with store = \"redis\"")
                })?;
                Store::Redis(Box::new(
                    redis::RedisStore::new(url, Duration::from_millis(config.redis_timeout_ms))
                        .map_err(|e| anyhow::anyhow!("limits.redis_url: {e}"))?,
                ))
            }
        };
        Ok(Quotas {
            rules,
            tenants,
            store: Arc::new(store),
            on_store_error: config.on_store_error,
            trusted_proxies,
            prefix,
            store_errors: Default::default(),
        })
    }

    /// Background work for as long as `self` lives: connecting to Redis ahead of the first
    /// request, or sweeping idle in-memory limit states every few seconds.
    pub fn start(self: &Arc<Self>) {
        if matches!(*self.store, Store::Redis(_)) {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Store::Redis(r) = &*store {
                    r.warm_up().await;
                }
            });
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(quotas) = weak.upgrade() else { return };
                if let Store::Memory(m) = &*quotas.store {
                    m.sweep();
                }
            }
        });
    }

    /// Limit checks the store could not answer so far.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The client's address: the peer, or what trusted proxies say in `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip::client_ip(peer, headers, &self.trusted_proxies)
    }

    /// Whether a rule names the host endpoint `route` (a template as the host routes it).
    pub fn limits_host_route(&self, route: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.plugin.is_none() && r.route.as_deref() == Some(route))
    }

    /// The tenant's weight in the models' fair queues: its stored priority, else the config's,
    /// else 1.
    pub fn priority(&self, tenant: &str, stored: Option<u32>) -> u32 {
        stored
            .or_else(|| self.tenants.get(tenant).and_then(|t| t.1))
            .unwrap_or(1)
            .max(1)
    }

    /// The rules that apply to `s`, in order: config rules, config tenant limits, the tenant's
    /// and the key's stored limits. A stored limit that does not parse (they are checked when
    /// stored, so only one written some other way) refuses the request rather than let it run
    /// without that limit.
    fn rules_for(&self, s: &Subject) -> Result<Vec<Cow<'_, Rule>>, Refusal> {
        let mut rules: Vec<Cow<'_, Rule>> = self
            .rules
            .iter()
            .filter(|r| r.applies(s))
            .map(Cow::Borrowed)
            .collect();
        if s.plugin.is_empty() {
            return Ok(rules);
        }
        if let Some((list, _)) = self.tenants.get(s.tenant) {
            rules.extend(list.iter().map(Cow::Borrowed));
        }
        let stored = [
            (s.tenant_limits, Dimension::Tenant, "tenant", s.tenant),
            (s.key_limits, Dimension::Key, "key", s.key_id),
        ];
        for (texts, per, what, who) in stored {
            for text in texts {
                let source = format!("{what} {who}");
                match text.parse::<Policy>() {
                    Ok(policy) => rules.push(Cow::Owned(Rule::new(
                        policy,
                        vec![per],
                        [None, None, None],
                        source,
                        &self.prefix,
                    ))),
                    Err(e) => {
                        tracing::error!("{source}: stored limit `{text}` is not valid: {e}");
                        return Err(Refusal::from(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "limits_unavailable",
                            format!(
                                "the {source}'s stored limit `{text}` cannot be read; an operator must fix it"
                            ),
                        )));
                    }
                }
            }
        }
        Ok(rules)
    }

    /// Lets a request in, or answers why not. The admission it returns charges what the
    /// request used when it is settled, and gives back its concurrency places when dropped.
    pub async fn admit(&self, s: &Subject<'_>) -> Result<Admission, Refusal> {
        let rules = self.rules_for(s)?;
        let accounts = vec![
            format!("{}:usage:tenant:{}", self.prefix, s.tenant),
            format!("{}:usage:key:{}", self.prefix, s.key_id),
        ];
        let mut admission = Admission {
            store: self.store.clone(),
            // Only Redis keeps track of who holds a concurrency place.
            member: match &*self.store {
                Store::Memory(_) => String::new(),
                Store::Redis(_) => s.request_id.to_string(),
            },
            leases: Vec::new(),
            debits: Vec::new(),
            accounts,
            headers: HeaderMap::new(),
        };
        if rules.is_empty() {
            return Ok(admission);
        }
        let checks: Vec<Check> = rules
            .iter()
            .map(|r| Check {
                key: r.key(s),
                kind: match r.policy {
                    Policy::Rate {
                        metered: Metered::Requests,
                        amount,
                        period,
                    } => CheckKind::Charge {
                        amount,
                        period: period.as_secs_f64(),
                        cost: 1.0,
                    },
                    // Let the request in while the budget has any room left.
                    Policy::Rate { amount, period, .. } => CheckKind::Peek {
                        amount,
                        period: period.as_secs_f64(),
                        cost: 1e-3,
                    },
                    Policy::Concurrent(cap) => CheckKind::Acquire {
                        cap,
                        lease: s.lease.as_secs_f64() + 5.0,
                    },
                },
            })
            .collect();
        let decisions = match self.store.check(&checks, s.request_id).await {
            Ok(d) => d,
            Err(e) => {
                self.store_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return match self.on_store_error {
                    FailPolicy::Allow => {
                        tracing::warn!("limits not checked, letting the request in: {e}");
                        Ok(admission)
                    }
                    FailPolicy::Deny => {
                        tracing::warn!("limits not checked, refusing the request: {e}");
                        Err(Refusal {
                            error: ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "limits_unavailable",
                                "limits cannot be checked right now; try again shortly",
                            )
                            .retry_after(Duration::from_secs(1)),
                            headers: HeaderMap::new(),
                        })
                    }
                };
            }
        };
        admission.headers = rate_headers(&rules, &decisions);
        if let Some((rule, decision)) = rules
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| !d.allowed)
            .max_by(|a, b| a.1.retry_after.total_cmp(&b.1.retry_after))
        {
            let retry = Duration::from_secs_f64(decision.retry_after.max(0.0));
            let (code, message) = match &rule.policy {
                Policy::Rate {
                    metered: Metered::Requests,
                    ..
                } => (
                    "rate_limited",
                    format!("rate limit {} ({}) reached", rule.policy, rule.source),
                ),
                Policy::Rate { metered, .. } => (
                    "quota_exceeded",
                    format!(
                        "{} quota {} ({}) is used up",
                        metered.as_str(),
                        rule.policy,
                        rule.source
                    ),
                ),
                Policy::Concurrent(_) => (
                    "rate_limited",
                    format!(
                        "concurrency limit {} ({}) reached",
                        rule.policy, rule.source
                    ),
                ),
            };
            let headers = std::mem::take(&mut admission.headers);
            return Err(Refusal {
                error: ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
                    .retry_after(retry),
                headers,
            });
        }
        for (rule, check) in rules.iter().zip(checks) {
            match (&rule.policy, check.kind) {
                (Policy::Concurrent(_), _) => admission.leases.push(check.key),
                (Policy::Rate { metered, .. }, CheckKind::Peek { amount, period, .. }) => {
                    admission.debits.push((
                        *metered,
                        Debit {
                            key: check.key,
                            amount,
                            period,
                            cost: 0.0,
                        },
                    ))
                }
                _ => {}
            }
        }
        Ok(admission)
    }

    /// Usage so far and the state of each limit that applies to a tenant (and its key).
    pub async fn report(&self, tenant: &str, key_id: Option<&str>) -> serde_json::Value {
        let usage = self
            .store
            .usage(&format!("{}:usage:tenant:{tenant}", self.prefix))
            .await;
        let key_usage = match key_id {
            Some(k) => Some(
                self.store
                    .usage(&format!("{}:usage:key:{k}", self.prefix))
                    .await,
            ),
            None => None,
        };
        let subject = Subject {
            tenant,
            key_id: key_id.unwrap_or(""),
            ip: IpAddr::from([0, 0, 0, 0]),
            plugin: "",
            route: "",
            key_limits: &[],
            tenant_limits: &[],
            request_id: "",
            lease: Duration::ZERO,
        };
        // Limits counted only per tenant, key or globally, whatever plugin they are for.
        let mut rules: Vec<Rule> = self
            .rules
            .iter()
            .filter(|r| r.tenant.as_deref().is_none_or(|t| t == tenant))
            .filter(|r| {
                r.per.iter().all(|d| match d {
                    Dimension::Tenant | Dimension::Global => true,
                    Dimension::Key => key_id.is_some(),
                    _ => false,
                })
            })
            .cloned()
            .collect();
        if let Some((list, _)) = self.tenants.get(tenant) {
            rules.extend(list.iter().cloned());
        }
        let checks: Vec<Check> = rules
            .iter()
            .filter_map(|r| match r.policy {
                Policy::Rate { amount, period, .. } => Some(Check {
                    key: r.key(&subject),
                    kind: CheckKind::Peek {
                        amount,
                        period: period.as_secs_f64(),
                        cost: 0.0,
                    },
                }),
                Policy::Concurrent(_) => None,
            })
            .collect();
        let rate_rules = rules
            .iter()
            .filter(|r| matches!(r.policy, Policy::Rate { .. }));
        let limits: Vec<serde_json::Value> = match self.store.check(&checks, "").await {
            Ok(decisions) => rate_rules
                .zip(decisions)
                .map(|(r, d)| {
                    let Policy::Rate { amount, .. } = r.policy else {
                        unreachable!()
                    };
                    serde_json::json!({
                        "limit": r.policy.to_string(),
                        "source": r.source,
                        "per": r.per,
                        "plugin": r.plugin,
                        "route": r.route,
                        "amount": amount,
                        "remaining": d.remaining,
                        "reset_seconds": (d.reset * 1000.0).ceil() / 1000.0,
                    })
                })
                .collect(),
            Err(e) => vec![serde_json::json!({"error": e.to_string()})],
        };
        let shown = |u: Result<UsageTotals, redis::StoreError>| match u {
            Ok(u) => serde_json::to_value(u).unwrap_or_default(),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        let mut out = serde_json::json!({
            "tenant": tenant,
            "usage": shown(usage),
            "limits": limits,
        });
        if let (Some(k), Some(u)) = (key_id, key_usage) {
            out["key"] = serde_json::json!({"id": k, "usage": shown(u)});
        }
        out
    }
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy` for the request-rate limit closest
/// to refusing (lowest remaining).
fn rate_headers(rules: &[Cow<'_, Rule>], decisions: &[Decision]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let tightest = rules
        .iter()
        .zip(decisions)
        .filter_map(|(r, d)| match r.policy {
            Policy::Rate {
                metered: Metered::Requests,
                amount,
                ..
            } => Some((r, amount, d)),
            _ => None,
        })
        .min_by(|a, b| a.2.remaining.total_cmp(&b.2.remaining));
    if let Some((rule, amount, d)) = tightest {
        let num = |n: f64| HeaderValue::from(n.max(0.0).ceil() as u64);
        // Names made once, not parsed per request.
        const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
        const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
        const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
        const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
        headers.reserve(4);
        headers.insert(LIMIT, num(amount));
        headers.insert(REMAINING, num(d.remaining));
        headers.insert(RESET, num(d.reset));
        if let Some(v) = &rule.policy_header {
            headers.insert(POLICY, v.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored limit that does not parse (written around the API's check) refuses the
    /// request: the key never runs without it.
    #[tokio::test]
    async fn a_stored_limit_that_cannot_be_read_refuses_the_request() {
        let quotas = Quotas::new(&LimitsConfig::default()).unwrap();
        let bad = ["10/secnd".to_string()];
        let subject = |key_limits| Subject {
            tenant: "acme",
            key_id: "k1",
            ip: IpAddr::from([127, 0, 0, 1]),
            plugin: "digits",
            route: "/classify",
            key_limits,
            tenant_limits: &[],
            request_id: "r1",
            lease: Duration::from_secs(1),
        };
        let refused = quotas.admit(&subject(&bad)).await.err().expect("refused");
        assert_eq!(refused.error.code, "limits_unavailable");
        assert!(refused.error.message.contains("`10/secnd`"));
        assert!(quotas.admit(&subject(&[])).await.is_ok());
    }
}
