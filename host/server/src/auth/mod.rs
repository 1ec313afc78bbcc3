//! Who is calling, and what they may call.
//!
//! This module owns every credential the host accepts and turns each into a [`Principal`]:
//!
//! - **API keys** (`Authorization: Bearer <key>` or `X-API-Key: <key>`): keys declared in the
//!   config and `INFERGATE_API_KEY` (tenant `default`), held in memory as SHA-256 digests; and
//!   keys created through the admin API or the CLI, shaped `ig_<id>_<secret>`, stored in the
//!   database only as digests ([`keys`]), looked up by id and compared in constant time. Lookups
//!   are cached for at most [`keys::CACHE_TTL`], so a revocation on any instance is honoured
//!   everywhere within a second.
//! - **JWTs** from configured issuers (RS256, ES256, EdDSA, HS256), verified against the
//!   issuer's JWKS ([`jwt`]).
//! - **Host-issued access tokens** from `POST /oauth/token` (client credentials), signed with
//!   EdDSA keys kept in the database and published at `/.well-known/jwks.json` ([`oauth`]).
//!
//! Then [`Auth::authorize`] decides whether a principal may call a matched route: plugin
//! visibility (a private plugin does not exist for other tenants: 404) and scopes (403).
//!
//! ## Scope language
//! A key (or token) carries a list of scope strings:
//! - `*`: everything;
//! - `plugin:NAME`: every route of plugin `NAME` (tenant plugins: `TENANT--NAME`);
//!   `plugin:*`: every plugin;
//! - `plugin:NAME/PATH`: one route, `PATH` as written in the plugin's manifest without the
//!   leading `/` (e.g. `plugin:digits/classify`, `plugin:store/items/{id}`);
//! - any other string is a plain scope that manifest routes may require (`embed:write`).
//!
//! A call needs a plugin grant (`*`, `plugin:*`, `plugin:NAME` or `plugin:NAME/PATH`) and every
//! scope its route declares in the manifest (`*` holds them all). Managing a tenant's own
//! plugins (`/tenant/plugins`) needs `deploy` (or `*`).
//!
//! Layout: [`db`] (connection and migrations), [`keys`] (tenants and API keys in the
//! database), [`jwt`] (external issuers), [`oauth`] (token endpoint, host signing keys, JWKS),
//! [`admin`] (the `/admin/tenants` and `/admin/keys` API), [`sealed`] (signing keys encrypted
//! at rest), [`operator`] (the admin and metrics keys, the shortest secret accepted).

pub mod admin;
mod config;
pub mod db;
pub mod jwt;
pub mod keys;
pub mod oauth;
pub mod operator;
pub mod sealed;

pub use config::{
    ApiKeyConfig, AuthConfig, PluginAccessConfig, Visibility, database_url,
    validate as validate_config,
};

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::registry::Mounted;

/// The identity of an authenticated caller. Plugins see `tenant`, `key_id`, `scopes` and
/// `claims`, never the credential; the quota engine reads the limits and priority.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub tenant: String,
    /// The API key's id (`jwt:<issuer>#<sub>` for external JWTs).
    pub key_id: String,
    pub scopes: Vec<String>,
    /// Selected token claims passed to plugins.
    pub claims: Vec<(String, String)>,
    /// The key's own limit policies (e.g. `60/minute`).
    pub limits: Vec<String>,
    /// The tenant's limit policies.
    pub tenant_limits: Vec<String>,
    /// The tenant's stored weight when capacity is shared; `None`: the config's, else 1.
    pub priority: Option<u32>,
}

impl Principal {
    /// A principal with no limits and default priority.
    pub fn new(tenant: impl Into<String>, key_id: impl Into<String>, scopes: Vec<String>) -> Self {
        Self {
            tenant: tenant.into(),
            key_id: key_id.into(),
            scopes,
            claims: Vec::new(),
            limits: Vec::new(),
            tenant_limits: Vec::new(),
            priority: None,
        }
    }
}

/// Default scopes of a key declared without any: everything.
pub fn all_scopes() -> Vec<String> {
    vec!["*".into()]
}

/// Prefix of generated keys, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "ig_";

/// Longest credential looked at; anything longer is refused unread.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// A scope is 1-128 printable characters without spaces.
pub fn valid_scope(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Everything that authenticates and authorizes requests.
pub struct Auth {
    /// Keys from the config and the environment, by digest.
    static_keys: HashMap<[u8; 32], Principal>,
    /// The same keys by id (for the token endpoint's client id).
    static_by_id: HashMap<String, [u8; 32]>,
    pub keys: keys::KeyStore,
    pub jwt: jwt::Verifier,
    pub oauth: oauth::TokenIssuer,
    access: HashMap<String, PluginAccessConfig>,
}

impl Auth {
    /// Opens the database (migrating it) and builds the verifiers. `env_key` is the key of
    /// tenant `default` (`INFERGATE_API_KEY`, or generated by the caller).
    pub async fn new(config: &AuthConfig, env_key: Option<&str>) -> anyhow::Result<Arc<Self>> {
        let db = db::Db::open(&database_url(config)).await?;
        let auth = Self::with_db(config, db, env_key)?;
        auth.oauth.prepare_keys().await?;
        Ok(Arc::new(auth))
    }

    pub fn with_db(auth: &AuthConfig, db: db::Db, env_key: Option<&str>) -> anyhow::Result<Self> {
        let mut me = Self {
            static_keys: HashMap::new(),
            static_by_id: HashMap::new(),
            keys: keys::KeyStore::new(db.clone()),
            jwt: jwt::Verifier::new(&auth.jwt)?,
            oauth: oauth::TokenIssuer::new(
                db,
                auth.oauth.clone(),
                auth.encryption_key
                    .as_deref()
                    .map(sealed::Sealer::new)
                    .transpose()?,
            ),
            access: auth
                .plugins
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
        };
        for k in &auth.api_keys {
            me.insert_static(&k.key, Principal::new(&k.tenant, &k.id, k.scopes.clone()));
        }
        if let Some(key) = env_key {
            me.insert_static(key, Principal::new("default", "env", all_scopes()));
        }
        Ok(me)
    }

    fn insert_static(&mut self, secret: &str, principal: Principal) {
        let d = digest(secret);
        self.static_by_id.insert(principal.key_id.clone(), d);
        self.static_keys.insert(d, principal);
    }

    /// Finds the caller of a request, or says why not (`unauthorized`).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let credential = presented_key(headers)?;
        self.authenticate_credential(credential).await
    }

    pub async fn authenticate_credential(&self, credential: &str) -> Result<Principal, ApiError> {
        if credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(ApiError::unauthorized("the credential is too long"));
        }
        if looks_like_jwt(credential) {
            // Boxed: an API key's future need not carry a token's (JWKS fetches, the database).
            return Box::pin(self.token(credential)).await;
        }
        self.api_key(credential).await
    }

    /// The principal of a bearer token: one this host issued, or a trusted issuer's JWT.
    async fn token(&self, credential: &str) -> Result<Principal, ApiError> {
        let issuer = jwt::unverified_issuer(credential)
            .ok_or_else(|| ApiError::unauthorized("the token is malformed"))?;
        if issuer == self.oauth.issuer() {
            let token = self.oauth.verify(credential).await?;
            let mut principal = self.key_principal(&token.key_id).await?;
            // A token carries at most its key's scopes, fixed when it was issued.
            principal.scopes = token.scopes;
            return Ok(principal);
        }
        let principal = self.jwt.verify(credential, &issuer).await?;
        self.with_tenant(principal).await
    }

    /// Adds the tenant's priority and limits, when the database has a record of it (keys from
    /// the config and JWTs name tenants that may have none).
    async fn with_tenant(&self, mut principal: Principal) -> Result<Principal, ApiError> {
        if let Some(t) = self.keys.tenant(&principal.tenant).await? {
            principal.tenant_limits = t.limits.clone();
            principal.priority = t.priority;
        }
        Ok(principal)
    }

    /// The principal of an API key (config, environment or database).
    pub async fn api_key(&self, secret: &str) -> Result<Principal, ApiError> {
        let wanted = digest(secret);
        // Looked up by digest: timing can at most tell how much of a SHA-256 digest matched,
        // which says nothing about any secret.
        if let Some(p) = self.static_keys.get(&wanted) {
            return self.with_tenant(p.clone()).await;
        }
        let invalid = || ApiError::unauthorized("the API key is not valid");
        let (id, _) = keys::split_key(secret).ok_or_else(invalid)?;
        let record = self.keys.key(id).await?.ok_or_else(invalid)?;
        if !bool::from(record.digest.ct_eq(&wanted)) {
            return Err(invalid());
        }
        record.principal()
    }

    /// The principal of a live key by id, for host-issued tokens (config keys included).
    async fn key_principal(&self, key_id: &str) -> Result<Principal, ApiError> {
        if let Some(d) = self.static_by_id.get(key_id) {
            return self.with_tenant(self.static_keys[d].clone()).await;
        }
        match self.keys.key(key_id).await? {
            Some(record) => record.principal(),
            None => Err(ApiError::unauthorized("the token's key no longer exists")),
        }
    }

    /// The key behind an OAuth client id and secret, when they match.
    pub async fn client(&self, client_id: &str, secret: &str) -> Option<Principal> {
        let p = self.api_key(secret).await.ok()?;
        (p.key_id == client_id).then_some(p)
    }

    /// Whether `tenant` may see `mounted` at all.
    pub fn visible(&self, tenant: &str, mounted: &Mounted) -> bool {
        match self.access.get(&mounted.name) {
            Some(rule) => {
                rule.visibility == Visibility::Public
                    || mounted.owner.as_deref() == Some(tenant)
                    || rule.tenants.iter().any(|t| t == tenant)
            }
            None => match &mounted.owner {
                None => true,
                Some(owner) => owner == tenant,
            },
        }
    }

    /// May `principal` call route `route` of `mounted`? A plugin it may not see does not exist
    /// for it (404); one it may see but lacks scopes for is `forbidden` (403).
    pub fn authorize(
        &self,
        principal: &Principal,
        mounted: &Mounted,
        route: usize,
    ) -> Result<(), ApiError> {
        let r = &mounted.plugin.manifest.routes[route];
        if !self.visible(&principal.tenant, mounted) {
            // The same answer as for a path no plugin serves.
            let path = format!("{}{}", mounted.mount, r.path.raw);
            return Err(ApiError::not_found(format!(
                "no route for {} {path}",
                r.method
            )));
        }
        check_scopes(&principal.scopes, &mounted.name, &r.path.raw, &r.scopes)
    }
}

/// The scope check of [`Auth::authorize`], on its own for tests.
pub fn check_scopes(
    held: &[String],
    plugin: &str,
    route_path: &str,
    required: &[String],
) -> Result<(), ApiError> {
    let has = |s: &str| held.iter().any(|h| h == "*" || h == s);
    let route = route_path.trim_start_matches('/');
    let granted = has("plugin:*")
        || has(&format!("plugin:{plugin}"))
        || has(&format!("plugin:{plugin}/{route}"));
    if !granted {
        return Err(forbidden(format!(
            "this credential has no scope for plugin `{plugin}` (needs `plugin:{plugin}` or `plugin:{plugin}/{route}`)"
        )));
    }
    if let Some(missing) = required.iter().find(|s| !has(s)) {
        return Err(forbidden(format!("this route needs scope `{missing}`")));
    }
    Ok(())
}

pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// `/oauth/token`, `/.well-known/jwks.json` and the admin API for tenants and keys.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Auth>: FromRef<S>,
    Arc<operator::AdminKey>: FromRef<S>,
{
    oauth::routes().merge(admin::routes())
}

/// The authenticated caller of a request (401 `unauthorized` when there is none).
impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Arc::<Auth>::from_ref(state)
            .authenticate(&parts.headers)
            .await
    }
}

pub(crate) fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Three base64url segments (the last, the signature, may be empty: `alg: none`): a JWS
/// compact token, never one of our API keys.
pub fn looks_like_jwt(s: &str) -> bool {
    let b64 = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| b64(p)) && !parts[0].is_empty() && !parts[1].is_empty()
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `X-API-Key` header's name, made once (a `&str` name is parsed at every lookup).
pub const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// The credential a request presents in `X-API-Key` or `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    if let Some(value) = headers.get(X_API_KEY) {
        return value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the X-API-Key header is not valid text"));
    }
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this route needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <key>`",
        )),
    }
}

/// A new random API key without an id (for `INFERGATE_API_KEY` when unset): the prefix and 32
/// bytes of OS randomness, hex-encoded.
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}", hex::encode(random::<32>()))
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    bytes
}

pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn reads_both_headers() {
        for h in [
            headers(&[("authorization", "Bearer secret-key-0123456789")]),
            headers(&[("authorization", "bearer secret-key-0123456789")]),
            headers(&[("x-api-key", "secret-key-0123456789")]),
        ] {
            assert_eq!(presented_key(&h).unwrap(), "secret-key-0123456789");
        }
        for h in [
            headers(&[]),
            headers(&[("authorization", "Basic secret-key-0123456789")]),
            headers(&[("authorization", "Bearer ")]),
        ] {
            assert_eq!(presented_key(&h).unwrap_err().code, "unauthorized");
        }
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJi."));
        assert!(!looks_like_jwt("ig_abc_def"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b+.c"));
    }

    #[test]
    fn scope_language() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let req = s(&["embed:write"]);
        assert!(check_scopes(&s(&["*"]), "embed", "/embed", &req).is_ok());
        assert!(
            check_scopes(
                &s(&["plugin:embed", "embed:write"]),
                "embed",
                "/embed",
                &req
            )
            .is_ok()
        );
        assert!(check_scopes(&s(&["plugin:embed"]), "embed", "/embed", &req).is_err());
        assert!(check_scopes(&s(&["plugin:digits/classify"]), "digits", "/classify", &[]).is_ok());
        assert!(check_scopes(&s(&["plugin:digits/classify"]), "digits", "/other", &[]).is_err());
        assert!(check_scopes(&s(&["plugin:*"]), "digits", "/other", &[]).is_ok());
        assert!(check_scopes(&s(&["embed:write"]), "embed", "/embed", &req).is_err());
        assert_eq!(
            check_scopes(&[], "x", "/", &[]).unwrap_err().code,
            "forbidden"
        );
    }

    #[test]
    fn generated_keys_are_prefixed_and_unique() {
        let (a, b) = (generate_key(), generate_key());
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, b);
    }
}
