//! JWTs from external issuers (`[[auth.jwt]]`): Keycloak, Auth0, Google, or any OIDC provider.
//!
//! A token names its issuer (`iss`), which picks the configuration; its `kid` picks a key of
//! that issuer's JWKS (from `jwks_url`, or the OIDC discovery document at
//! `{issuer}/.well-known/openid-configuration`), cached for `jwks_ttl_s` and refetched — at
//! most once per `refresh_interval_ms` — when a token names a `kid` not yet seen, so key
//! rotation needs no restart; a stale set is refreshed in the background while its keys stay in
//! use. While the provider fails, fetches retry with backoff (up to a minute) and a token with
//! an unknown `kid` is refused at once, so an outage never queues requests behind its
//! timeouts. HS256 tokens are verified with the issuer's `hs256_secret`.
//!
//! The algorithm always comes from the key (the JWK's `kty`/`crv`/`alg`, or HS256 for the
//! shared secret), never from the token: `alg: none`, and an HS256 token "signed" with an RSA
//! public key, are refused. Then `iss`, `aud`, `exp` and `nbf` (with `leeway_s`) are checked,
//! and claims map to the tenant (`tenant_claim`, or a fixed `tenant`) and scopes
//! (`scopes_claim`: a space-separated string or an array).
//!
//! An issuer is trusted only for what the operator gave it: the tenants it may assert
//! (`tenants`, with `tenant_claim`), and tokens minted for this host (`audience`, required
//! unless `waive_audience`). Its subjects are its own: `key_id = jwt:<issuer>#<sub>`, so two
//! issuers' `sub: "admin"` never share a quota or an identity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Principal;
use crate::error::ApiError;

/// `[[auth.jwt]]`: one trusted issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exactly the token's `iss`.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them. Required unless
    /// `waive_audience`: without it a token minted for any other service of the issuer works.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Accept tokens whatever their `aud` (an issuer that mints tokens for this host only).
    #[serde(default)]
    pub waive_audience: bool,
    /// The JWKS document; default: `jwks_uri` of the issuer's OIDC discovery document.
    pub jwks_url: Option<String>,
    /// A shared secret for HS256 tokens of this issuer.
    pub hs256_secret: Option<String>,
    /// The claim holding the tenant (e.g. `org_id`), one of `tenants`...
    pub tenant_claim: Option<String>,
    /// ...the tenants this issuer may assert through `tenant_claim` (a token naming another
    /// is refused)...
    #[serde(default)]
    pub tenants: Vec<String>,
    /// ...or one tenant for every token of this issuer.
    pub tenant: Option<String>,
    /// The claim holding scopes: a space-separated string (`scope`) or an array
    /// (Auth0 `permissions`).
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Scopes of a token without the scopes claim.
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// Claims passed to plugins (as text).
    #[serde(default = "default_forward_claims")]
    pub forward_claims: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// How long a fetched JWKS is used before it is fetched again.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_s: u64,
    /// Least time between two fetches caused by unknown `kid`s.
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval_ms: u64,
}

fn default_scopes_claim() -> String {
    "scope".into()
}
fn default_forward_claims() -> Vec<String> {
    vec!["sub".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_jwks_ttl() -> u64 {
    3600
}
fn default_refresh_interval() -> u64 {
    5_000
}

impl IssuerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.issuer.is_empty(), "issuer must not be empty");
        anyhow::ensure!(
            self.tenant_claim.is_some() != self.tenant.is_some(),
            "give exactly one of `tenant_claim` or `tenant`"
        );
        anyhow::ensure!(
            self.tenant_claim.is_none() || !self.tenants.is_empty(),
            "`tenant_claim` needs `tenants`: the tenants this issuer may assert"
        );
        anyhow::ensure!(
            self.tenant.is_none() || self.tenants.is_empty(),
            "`tenants` goes with `tenant_claim`; with a fixed `tenant` it means nothing"
        );
        for t in self.tenants.iter().chain(&self.tenant) {
            anyhow::ensure!(
                crate::auth::admin::valid_tenant(t),
                "tenant `{t}` is not a valid tenant id"
            );
        }
        anyhow::ensure!(
            self.audience.is_empty() == self.waive_audience,
            "{}",
            if self.waive_audience {
                "`waive_audience` and `audience` contradict each other: give one"
            } else {
                "`audience` is required (the `aud` of tokens minted for this host); \
                 `waive_audience = true` accepts any"
            }
        );
        if let Some(s) = &self.hs256_secret {
            anyhow::ensure!(s.len() >= 32, "hs256_secret must be at least 32 bytes");
        }
        if let Some(u) = &self.jwks_url {
            anyhow::ensure!(
                u.starts_with("https://") || u.starts_with("http://"),
                "jwks_url must be an http(s) URL"
            );
        }
        Ok(())
    }
}

/// One verification key of a JWKS, with the only algorithm it verifies.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct Jwks {
    keys: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
}

struct Issuer {
    config: IssuerConfig,
    hs256: Option<DecodingKey>,
    jwks: std::sync::RwLock<Jwks>,
    refresh: std::sync::Mutex<Refresh>,
}

/// The issuer's key-set fetches. One runs at a time, in a task of its own (a caller that
/// goes away does not cancel it); callers that need it await it, others never wait on it.
#[derive(Default)]
struct Refresh {
    in_flight: Option<Fetch>,
    /// When the last fetch started.
    last_started: Option<Instant>,
    /// Failed fetches in a row; while there are, no fetch starts before `retry_at`.
    failures: u32,
    retry_at: Option<Instant>,
}

/// A key-set fetch under way.
type Fetch = Shared<BoxFuture<'static, ()>>;

/// The longest wait between two fetches while the issuer's key set cannot be fetched.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Verifies tokens of the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, Arc<Issuer>>,
    http: reqwest::Client,
}

/// The `iss` claim of a token, unverified: it only selects which keys verify the token.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(String::from)
}

fn unauthorized(why: impl std::fmt::Display) -> ApiError {
    ApiError::unauthorized(format!("the token is not valid: {why}"))
}

/// The algorithm a JWK verifies, from its type and curve; a declared `alg` must agree.
fn jwk_key(jwk: &Jwk) -> Option<Key> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match jwk.common.key_algorithm {
            None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) => Algorithm::RS512,
            Some(KeyAlgorithm::PS256) => Algorithm::PS256,
            _ => return None,
        },
        AlgorithmParameters::EllipticCurve(p) => match (&p.curve, jwk.common.key_algorithm) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match (&p.curve, jwk.common.key_algorithm) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
            _ => return None,
        },
        // Shared secrets are configured, never taken from a published key set.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    Some(Key {
        alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// The keys of a JWKS document; keys this host cannot use are skipped.
fn parse_jwks(doc: &Value) -> HashMap<String, Arc<Key>> {
    let mut out = HashMap::new();
    for k in doc["keys"].as_array().into_iter().flatten() {
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        if let (Some(kid), Some(key)) = (jwk.common.key_id.clone(), jwk_key(&jwk)) {
            out.insert(kid, Arc::new(key));
        }
    }
    out
}

impl Verifier {
    pub fn new(configs: &[IssuerConfig]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let issuers = configs
            .iter()
            .map(|c| {
                let issuer = Arc::new(Issuer {
                    config: c.clone(),
                    hs256: c
                        .hs256_secret
                        .as_ref()
                        .map(|s| DecodingKey::from_secret(s.as_bytes())),
                    jwks: std::sync::RwLock::new(Jwks::default()),
                    refresh: std::sync::Mutex::new(Refresh::default()),
                });
                (c.issuer.clone(), issuer)
            })
            .collect();
        Ok(Self { issuers, http })
    }

    /// Verifies a token whose unverified `iss` is `issuer`.
    pub async fn verify(&self, token: &str, issuer: &str) -> Result<Principal, ApiError> {
        let is = self
            .issuers
            .get(issuer)
            .ok_or_else(|| unauthorized("its issuer is not trusted"))?;
        let header = jsonwebtoken::decode_header(token).map_err(unauthorized)?;
        let key = if header.alg == Algorithm::HS256 && header.kid.is_none() {
            match &is.hs256 {
                Some(secret) => Arc::new(Key {
                    alg: Algorithm::HS256,
                    key: secret.clone(),
                }),
                None => return Err(unauthorized("HS256 is not accepted from this issuer")),
            }
        } else {
            let kid = header
                .kid
                .as_deref()
                .ok_or_else(|| unauthorized("it has no `kid`"))?;
            self.key(is, kid).await?
        };
        let c = &is.config;
        let mut v = Validation::new(key.alg);
        v.leeway = c.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&c.issuer]);
        v.set_required_spec_claims(&["exp", "iss"]);
        if c.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&c.audience);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map_err(unauthorized)?;
        principal(c, &data.claims)
    }

    /// The key `kid` of the issuer. A known key is served from the cache at once, even when
    /// the set is older than `jwks_ttl_s` (it is then refreshed in the background), so an
    /// identity provider outage does not stop tokens signed with keys already seen. An unknown
    /// `kid` waits for a fetch, which starts at most once per `refresh_interval_ms`, and not
    /// at all while the provider is failing (with backoff): then it is refused at once.
    async fn key(&self, is: &Arc<Issuer>, kid: &str) -> Result<Arc<Key>, ApiError> {
        let ttl = Duration::from_secs(is.config.jwks_ttl_s);
        let (known, stale) = {
            let jwks = is.jwks.read().unwrap_or_else(|e| e.into_inner());
            let stale = jwks.fetched.is_none_or(|t| t.elapsed() >= ttl);
            (jwks.keys.get(kid).cloned(), stale)
        };
        if let Some(key) = known {
            if stale {
                // Not awaited: the fetch runs in its own task.
                drop(self.start_fetch(is));
            }
            return Ok(key);
        }
        let down = |why: String| {
            unauthorized(format!(
                "no key `{kid}` is known, and the issuer's key set cannot be fetched now ({why})"
            ))
        };
        match self.start_fetch(is) {
            // Wait for the provider only while it answers.
            Ok((fetch, 0)) => fetch.await,
            Ok((_, failures)) => return Err(down(format!("the last {failures} fetches failed"))),
            Err(Unavailable::Backoff(wait)) => {
                return Err(down(format!("next try in {} ms", wait.as_millis())));
            }
            Err(Unavailable::TooSoon) => {}
        }
        is.jwks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| unauthorized(format!("no key `{kid}` in the issuer's key set")))
    }

    /// The fetch under way, or a new one, with the failed fetches before it; `Err` when none
    /// may start now.
    fn start_fetch(&self, is: &Arc<Issuer>) -> Result<(Fetch, u32), Unavailable> {
        let mut refresh = is.refresh.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fetch) = &refresh.in_flight {
            return Ok((fetch.clone(), refresh.failures));
        }
        let now = Instant::now();
        if let Some(at) = refresh.retry_at
            && at > now
        {
            return Err(Unavailable::Backoff(at - now));
        }
        let min_gap = Duration::from_millis(is.config.refresh_interval_ms);
        if refresh.last_started.is_some_and(|t| now - t < min_gap) {
            return Err(Unavailable::TooSoon);
        }
        refresh.last_started = Some(now);
        let (verifier_http, issuer) = (self.http.clone(), is.clone());
        let fetch = async move {
            let result = fetch(&verifier_http, &issuer.config).await;
            let mut refresh = issuer.refresh.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(keys) => {
                    tracing::info!(issuer = %issuer.config.issuer, keys = keys.len(), "JWKS fetched");
                    *issuer.jwks.write().unwrap_or_else(|e| e.into_inner()) = Jwks {
                        keys,
                        fetched: Some(Instant::now()),
                    };
                    refresh.failures = 0;
                    refresh.retry_at = None;
                }
                Err(e) => {
                    refresh.failures = refresh.failures.saturating_add(1);
                    let base = Duration::from_millis(issuer.config.refresh_interval_ms.max(100));
                    let backoff = base
                        .saturating_mul(1 << refresh.failures.min(16).saturating_sub(1))
                        .min(MAX_BACKOFF);
                    refresh.retry_at = Some(Instant::now() + backoff);
                    tracing::warn!(
                        issuer = %issuer.config.issuer,
                        error = %format!("{e:#}"),
                        failures = refresh.failures,
                        retry_in_ms = backoff.as_millis() as u64,
                        "JWKS fetch failed; known keys stay in use"
                    );
                }
            }
            refresh.in_flight = None;
        }
        .boxed()
        .shared();
        refresh.in_flight = Some(fetch.clone());
        tokio::spawn(fetch.clone());
        Ok((fetch, refresh.failures))
    }
}

/// Why no key-set fetch starts now.
enum Unavailable {
    /// The last fetches failed: none before this long.
    Backoff(Duration),
    /// One started less than `refresh_interval_ms` ago.
    TooSoon,
}

/// Fetches the issuer's key set (through OIDC discovery unless `jwks_url` is given).
async fn fetch(
    http: &reqwest::Client,
    c: &IssuerConfig,
) -> anyhow::Result<HashMap<String, Arc<Key>>> {
    let url = match &c.jwks_url {
        Some(u) => u.clone(),
        None => {
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                c.issuer.trim_end_matches('/')
            );
            let doc: Value = http
                .get(&discovery)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            doc["jwks_uri"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{discovery} has no jwks_uri"))?
                .to_string()
        }
    };
    let doc: Value = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(parse_jwks(&doc))
}

/// Maps verified claims to a principal.
fn principal(c: &IssuerConfig, claims: &Map<String, Value>) -> Result<Principal, ApiError> {
    let tenant = match (&c.tenant, &c.tenant_claim) {
        (Some(t), _) => t.clone(),
        (None, Some(claim)) => {
            let tenant = claims
                .get(claim)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| unauthorized(format!("it has no `{claim}` claim")))?;
            if !c.tenants.iter().any(|t| t == tenant) {
                return Err(unauthorized(format!(
                    "its issuer may not assert tenant `{}`",
                    tenant.escape_debug()
                )));
            }
            tenant.to_string()
        }
        (None, None) => return Err(unauthorized("its issuer maps no tenant")),
    };
    let scopes = match claims.get(&c.scopes_claim) {
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => c.default_scopes.clone(),
    };
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    let forwarded = c
        .forward_claims
        .iter()
        .filter_map(|name| {
            let v = claims.get(name)?;
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((name.clone(), text))
        })
        .collect();
    let mut p = Principal::new(tenant, format!("jwt:{}#{sub}", c.issuer), scopes);
    p.claims = forwarded;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IssuerConfig {
        toml::from_str(
            r#"issuer = "https://idp"
audience = ["infergate"]
tenant_claim = "org_id"
tenants = ["acme"]
scopes_claim = "permissions"
forward_claims = ["sub", "email"]"#,
        )
        .unwrap()
    }

    #[test]
    fn claims_map_to_a_principal() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "u1", "org_id": "acme", "permissions": ["a", "b"], "email": "x@y"
        }))
        .unwrap();
        let p = principal(&issuer(), &claims).unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.key_id, "jwt:https://idp#u1");
        assert_eq!(p.scopes, vec!["a", "b"]);
        assert_eq!(p.claims.len(), 2);
        let mut c = issuer();
        c.scopes_claim = "scope".into();
        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"org_id": "acme", "scope": "x y"})).unwrap();
        assert_eq!(principal(&c, &claims).unwrap().scopes, vec!["x", "y"]);
        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"scope": "x"})).unwrap();
        assert!(principal(&c, &claims).is_err());
        // A tenant the issuer was not given.
        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"org_id": "globex", "scope": "x"})).unwrap();
        let e = principal(&c, &claims).unwrap_err();
        assert!(
            e.message.contains("may not assert tenant `globex`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_issuer_names_its_tenants_and_its_audience() {
        let check = |extra: &str| {
            let text = format!("issuer = \"https://idp\"\n{extra}");
            toml::from_str::<IssuerConfig>(&text).unwrap().validate()
        };
        assert!(check("tenant_claim = \"org\"\ntenants = [\"acme\"]\naudience = [\"a\"]").is_ok());
        assert!(check("tenant = \"acme\"\nwaive_audience = true").is_ok());
        let refused = [
            (
                "tenant_claim = \"org\"\naudience = [\"a\"]",
                "needs `tenants`",
            ),
            ("tenant = \"acme\"", "`audience` is required"),
            (
                "tenant = \"acme\"\naudience = [\"a\"]\nwaive_audience = true",
                "contradict",
            ),
            (
                "tenant = \"acme\"\ntenants = [\"b\"]\naudience = [\"a\"]",
                "goes with",
            ),
        ];
        for (extra, why) in refused {
            let e = check(extra).unwrap_err().to_string();
            assert!(e.contains(why), "{extra}: {e}");
        }
    }

    #[test]
    fn symmetric_keys_are_never_taken_from_a_jwks() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "weird", "kid": "w"},
        ]});
        assert!(parse_jwks(&doc).is_empty());
    }
}
