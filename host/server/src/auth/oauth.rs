//! The host as an OAuth2 authorization server for its own keys:
//!
//! - `POST /oauth/token` (client-credentials grant, RFC 6749 §4.4): the client id is an API
//!   key's id, the client secret the whole key (HTTP Basic or `client_id`/`client_secret` form
//!   fields). It returns a short-lived JWT (`token_ttl_s`, default 15 min) signed with EdDSA,
//!   carrying the tenant, the key id (`sub`) and scopes (the key's, or the requested subset).
//!   Errors follow RFC 6749 §5.2 (`{"error": "invalid_client"}`), not the host's error shape:
//!   OAuth client libraries parse that shape and nothing else.
//! - `GET /.well-known/jwks.json`: the public keys verifying those tokens.
//!
//! Signing keys live in the database, so every instance signs and verifies with the same set.
//! A key signs for `rotate_after_s`; then a new one is made, and the old one stays published
//! (and accepted) until every token it signed has expired. The host accepts its own tokens as
//! bearer credentials, and checks on each use that the key behind them is still live (cached
//! for at most a second), so revoking a key ends its tokens too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use tokio::sync::{Mutex, RwLock};

use super::db::Db;
use super::sealed::{self, Sealer};
use super::{Auth, b64url, now_s, valid_scope};
use crate::error::ApiError;

/// `[auth.oauth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OauthConfig {
    /// `POST /oauth/token` answers (host-issued tokens are accepted either way).
    pub enabled: bool,
    /// `iss` and `aud` of host-issued tokens.
    pub issuer: String,
    /// Lifetime of an access token, in seconds.
    pub token_ttl_s: u64,
    /// How long one signing key signs before the next is made, in seconds.
    pub rotate_after_s: u64,
}

impl Default for OauthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: "infergate".into(),
            token_ttl_s: 900,
            rotate_after_s: 86_400,
        }
    }
}

impl OauthConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.issuer.is_empty(),
            "auth.oauth.issuer must not be empty"
        );
        anyhow::ensure!(
            (10..=86_400).contains(&self.token_ttl_s),
            "auth.oauth.token_ttl_s must be 10..=86400"
        );
        anyhow::ensure!(
            self.rotate_after_s >= 1,
            "auth.oauth.rotate_after_s must be at least 1"
        );
        Ok(())
    }
}

struct SigningKey {
    kid: String,
    created_at: i64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The Ed25519 public key, base64url (the JWK's `x`).
    x: String,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<SigningKey>>,
    loaded: Option<Instant>,
}

/// What a verified host-issued token says.
pub struct HostToken {
    pub key_id: String,
    pub scopes: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    tenant: String,
    scope: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
}

/// Signs and verifies host-issued tokens with the signing keys in the database.
pub struct TokenIssuer {
    db: Db,
    config: OauthConfig,
    /// Seals the private keys at rest, when an encryption key is given.
    sealer: Option<Sealer>,
    set: RwLock<KeySet>,
    /// Serialises reloads and key creation; remembers the last reload forced by an unknown kid.
    reloading: Mutex<Option<Instant>>,
}

/// How often the key set is read again from the database even when nothing asks.
const RELOAD_EVERY: Duration = Duration::from_secs(60);

impl TokenIssuer {
    pub fn new(db: Db, config: OauthConfig, sealer: Option<Sealer>) -> Self {
        Self {
            db,
            config,
            sealer,
            set: RwLock::new(KeySet::default()),
            reloading: Mutex::new(None),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn token_ttl_s(&self) -> u64 {
        self.config.token_ttl_s
    }

    /// Keys still verifying live tokens: signing now, or signed a token that has not expired.
    fn live(&self, k: &SigningKey, now: i64) -> bool {
        k.created_at + (self.config.rotate_after_s + self.config.token_ttl_s) as i64 + 60 > now
    }

    async fn load(&self) -> anyhow::Result<()> {
        let rows = sqlx::query(
            "SELECT kid, private_key, public_key, created_at FROM ig_signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let now = now_s();
        let mut keys = Vec::new();
        for row in rows {
            let kid: String = row.try_get("kid")?;
            let pkcs8 = sealed::read(
                &row.try_get::<String, _>("private_key")?,
                &kid,
                self.sealer.as_ref(),
            )?;
            let x: String = row.try_get("public_key")?;
            let key = SigningKey {
                kid,
                created_at: row.try_get("created_at")?,
                encoding: EncodingKey::from_ed_der(&pkcs8),
                decoding: DecodingKey::from_ed_components(&x)?,
                x,
            };
            if self.live(&key, now) {
                keys.push(Arc::new(key));
            }
        }
        *self.set.write().await = KeySet {
            keys,
            loaded: Some(Instant::now()),
        };
        Ok(())
    }

    /// Checks at start-up that every stored signing key can be read (a sealed one needs the
    /// key it was sealed with), and seals those stored before an encryption key was given.
    pub async fn prepare_keys(&self) -> anyhow::Result<()> {
        let rows = sqlx::query("SELECT kid, private_key FROM ig_signing_keys")
            .fetch_all(&self.db.pool)
            .await?;
        let mut resealed = 0;
        for row in rows {
            let kid: String = row.try_get("kid")?;
            let stored: String = row.try_get("private_key")?;
            let plain = sealed::read(&stored, &kid, self.sealer.as_ref())
                .map_err(|e| anyhow::anyhow!("token signing key `{kid}`: {e:#}"))?;
            if self.sealer.is_some() && !sealed::is_sealed(&stored) {
                sqlx::query("UPDATE ig_signing_keys SET private_key = $1 WHERE kid = $2")
                    .bind(sealed::write(&plain, &kid, self.sealer.as_ref())?)
                    .bind(&kid)
                    .execute(&self.db.pool)
                    .await?;
                resealed += 1;
            }
        }
        if resealed > 0 {
            tracing::info!(
                keys = resealed,
                "token signing keys sealed with the encryption key"
            );
        }
        if self.sealer.is_none() {
            tracing::info!(
                "token signing keys are stored unencrypted (INFERGATE_ENCRYPTION_KEY seals them)"
            );
        }
        Ok(())
    }

    /// The key to sign with now, making one when none is young enough.
    async fn signing_key(&self) -> anyhow::Result<Arc<SigningKey>> {
        let young = |set: &KeySet| {
            let now = now_s();
            set.keys
                .iter()
                .find(|k| k.created_at + self.config.rotate_after_s as i64 > now)
                .cloned()
                .filter(|_| set.loaded.is_some_and(|t| t.elapsed() < RELOAD_EVERY))
        };
        if let Some(k) = young(&*self.set.read().await) {
            return Ok(k);
        }
        let _guard = self.reloading.lock().await;
        self.load().await?;
        if let Some(k) = young(&*self.set.read().await) {
            return Ok(k);
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("generating a signing key failed"))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("reading the new signing key failed"))?;
        let kid = hex::encode(super::random::<8>());
        let now = now_s();
        sqlx::query(
            "INSERT INTO ig_signing_keys (kid, alg, private_key, public_key, created_at) VALUES ($1, 'EdDSA', $2, $3, $4)",
        )
        .bind(&kid)
        .bind(sealed::write(pkcs8.as_ref(), &kid, self.sealer.as_ref())?)
        .bind(b64url(pair.public_key().as_ref()))
        .bind(now)
        .execute(&self.db.pool)
        .await?;
        // Keys no token can still need are dropped.
        let oldest = now - (self.config.rotate_after_s + self.config.token_ttl_s) as i64 - 3600;
        sqlx::query("DELETE FROM ig_signing_keys WHERE created_at < $1")
            .bind(oldest)
            .execute(&self.db.pool)
            .await?;
        tracing::info!(kid, "new token signing key");
        self.load().await?;
        young(&*self.set.read().await).ok_or_else(|| anyhow::anyhow!("no signing key"))
    }

    /// A signed access token for `tenant`'s key `key_id` with `scopes`.
    pub async fn issue(
        &self,
        tenant: &str,
        key_id: &str,
        scopes: &[String],
    ) -> anyhow::Result<String> {
        let key = self.signing_key().await?;
        let now = now_s();
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: self.config.issuer.clone(),
            sub: key_id.to_string(),
            tenant: tenant.to_string(),
            scope: scopes.join(" "),
            iat: now,
            nbf: now,
            exp: now + self.config.token_ttl_s as i64,
            jti: hex::encode(super::random::<12>()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
    }

    /// Verifies a token this host (or another instance sharing its database) issued.
    pub async fn verify(&self, token: &str) -> Result<HostToken, ApiError> {
        let bad = |why: &dyn std::fmt::Display| {
            ApiError::unauthorized(format!("the token is not valid: {why}"))
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(&e))?;
        let kid = header.kid.ok_or_else(|| bad(&"it has no `kid`"))?;
        let key = match self.find(&kid).await {
            Some(k) => k,
            None => {
                // Maybe another instance made a new key: read the set again, at most once a
                // second.
                let mut last = self.reloading.lock().await;
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    *last = Some(Instant::now());
                    if let Err(e) = self.load().await {
                        tracing::warn!(error = %e, "reading token signing keys failed");
                    }
                }
                drop(last);
                self.find(&kid)
                    .await
                    .ok_or_else(|| bad(&format!("no signing key `{kid}`")))?
            }
        };
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(|e| bad(&e))?;
        Ok(HostToken {
            key_id: data.claims.sub,
            scopes: data
                .claims
                .scope
                .split_whitespace()
                .map(String::from)
                .collect(),
        })
    }

    async fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        let set = self.set.read().await;
        let now = now_s();
        set.keys
            .iter()
            .find(|k| k.kid == kid && self.live(k, now))
            .cloned()
    }

    /// The JWKS document of the live signing keys.
    pub async fn jwks(&self) -> anyhow::Result<serde_json::Value> {
        // Make sure there is a key, and that keys made by other instances show.
        self.signing_key().await?;
        let set = self.set.read().await;
        let now = now_s();
        let keys: Vec<_> = set
            .keys
            .iter()
            .filter(|k| self.live(k, now))
            .map(|k| json!({"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid, "alg": "EdDSA", "use": "sig"}))
            .collect();
        Ok(json!({ "keys": keys }))
    }
}

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Auth>: FromRef<S>,
{
    Router::new()
        .route("/oauth/token", post(token))
        .route("/.well-known/jwks.json", get(jwks))
}

async fn jwks(State(auth): State<Arc<Auth>>) -> Result<Response, ApiError> {
    let doc = auth.oauth.jwks().await.map_err(|e| {
        tracing::error!(error = %e, "publishing the JWKS");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            "the signing keys cannot be read right now",
        )
    })?;
    Ok((
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        )],
        axum::Json(doc),
    )
        .into_response())
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(status: StatusCode, error: &str, description: &str, basic: bool) -> Response {
    let mut r = (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if basic && status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"infergate\""),
        );
    }
    if error == "invalid_client" {
        r.extensions_mut().insert(crate::error::CredentialRefused);
    }
    r
}

/// The client's id and secret from HTTP Basic, if sent that way.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let parsed = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            Some((id.to_string(), secret.to_string()))
        });
    Some(parsed.ok_or(()))
}

/// A form field given at most once.
fn field<'a>(form: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, String> {
    let mut values = form
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(format!("`{name}` is repeated"));
    }
    Ok(first)
}

async fn token(State(auth): State<Arc<Auth>>, headers: HeaderMap, body: Bytes) -> Response {
    use StatusCode as S;
    if !auth.oauth.config.enabled {
        return oauth_error(
            S::BAD_REQUEST,
            "unsupported_grant_type",
            "the token endpoint is disabled",
            false,
        );
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return oauth_error(
            S::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
            false,
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return oauth_error(
            S::BAD_REQUEST,
            "invalid_request",
            "the body is not form-encoded",
            false,
        );
    };
    let fields = (|| {
        Ok::<_, String>((
            field(&form, "grant_type")?,
            field(&form, "client_id")?,
            field(&form, "client_secret")?,
            field(&form, "scope")?,
        ))
    })();
    let (grant_type, form_id, form_secret, scope) = match fields {
        Ok(f) => f,
        Err(why) => return oauth_error(S::BAD_REQUEST, "invalid_request", &why, false),
    };
    match grant_type {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                S::BAD_REQUEST,
                "unsupported_grant_type",
                "only `client_credentials` is supported",
                false,
            );
        }
        None => {
            return oauth_error(
                S::BAD_REQUEST,
                "invalid_request",
                "`grant_type` is missing",
                false,
            );
        }
    }
    let basic = basic_credentials(&headers);
    let used_basic = basic.is_some();
    let (client_id, secret) = match (basic, form_id, form_secret) {
        (Some(Ok(_)), Some(_), _) | (Some(Ok(_)), _, Some(_)) => {
            return oauth_error(
                S::BAD_REQUEST,
                "invalid_request",
                "send client credentials one way only",
                false,
            );
        }
        (Some(Ok((id, secret))), None, None) => (id, secret),
        (Some(Err(())), _, _) => {
            return oauth_error(
                S::UNAUTHORIZED,
                "invalid_client",
                "the Basic credentials are malformed",
                true,
            );
        }
        (None, Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
        (None, _, _) => {
            return oauth_error(
                S::UNAUTHORIZED,
                "invalid_client",
                "client authentication is missing",
                false,
            );
        }
    };
    if secret.len() > super::MAX_CREDENTIAL_BYTES {
        return oauth_error(
            S::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
            used_basic,
        );
    }
    let principal = match auth.client(&client_id, &secret).await {
        Some(p) => p,
        None => {
            return oauth_error(
                S::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
                used_basic,
            );
        }
    };
    let scopes: Vec<String> = match scope {
        None => principal.scopes.clone(),
        Some(s) => {
            let asked: Vec<String> = s.split_whitespace().map(String::from).collect();
            let holds = |a: &String| principal.scopes.iter().any(|h| h == "*" || h == a);
            if asked.is_empty() || !asked.iter().all(|a| valid_scope(a) && holds(a)) {
                return oauth_error(
                    S::BAD_REQUEST,
                    "invalid_scope",
                    "the requested scope exceeds the client's scopes",
                    false,
                );
            }
            asked
        }
    };
    let issued = auth
        .oauth
        .issue(&principal.tenant, &principal.key_id, &scopes)
        .await;
    match issued {
        Ok(token) => (
            [
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::PRAGMA, HeaderValue::from_static("no-cache")),
            ],
            axum::Json(json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": auth.oauth.token_ttl_s(),
                "scope": scopes.join(" "),
            })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "issuing a token");
            oauth_error(
                S::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "tokens cannot be issued right now",
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotation_keeps_earlier_tokens_valid() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/o.db?mode=rwc", dir.path().display());
        let db = Db::open(&url).await.unwrap();
        let config = OauthConfig {
            rotate_after_s: 1,
            ..Default::default()
        };
        let a = TokenIssuer::new(db.clone(), config.clone(), None);
        let first = a.issue("t", "k1", &["*".into()]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // Another instance on the same database, after rotation.
        let b = TokenIssuer::new(db, config, None);
        let second = b.issue("t", "k1", &[]).await.unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        assert_ne!(kid(&first), kid(&second));
        for issuer in [&a, &b] {
            assert_eq!(issuer.verify(&first).await.unwrap().key_id, "k1");
            assert_eq!(issuer.verify(&second).await.unwrap().key_id, "k1");
        }
        assert_eq!(b.jwks().await.unwrap()["keys"].as_array().unwrap().len(), 2);
        let sig_at = second.rfind('.').unwrap() + 10;
        let mut tampered = second.clone().into_bytes();
        tampered[sig_at] = if tampered[sig_at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(b.verify(&tampered).await.is_err());
    }

    #[tokio::test]
    async fn signing_keys_are_sealed_at_rest_when_a_key_is_given() {
        const KEY: &str = "an-encryption-key-of-at-least-32-chars";
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/o.db?mode=rwc", dir.path().display());
        let db = Db::open(&url).await.unwrap();
        let stored = || async {
            sqlx::query("SELECT private_key FROM ig_signing_keys")
                .fetch_all(&db.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String, _>("private_key").unwrap())
                .collect::<Vec<_>>()
        };
        // A key made before an encryption key was given...
        let plain = TokenIssuer::new(db.clone(), OauthConfig::default(), None);
        let token = plain.issue("t", "k1", &[]).await.unwrap();
        assert!(!sealed::is_sealed(&stored().await[0]));
        // ...is sealed when one is, and still verifies what it signed.
        let sealer = || Some(Sealer::new(KEY).unwrap());
        let with_key = TokenIssuer::new(db.clone(), OauthConfig::default(), sealer());
        with_key.prepare_keys().await.unwrap();
        assert!(stored().await.iter().all(|s| sealed::is_sealed(s)));
        assert_eq!(with_key.verify(&token).await.unwrap().key_id, "k1");
        // Without the key, or with another, the host refuses to start on that database.
        let e = TokenIssuer::new(db.clone(), OauthConfig::default(), None)
            .prepare_keys()
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("INFERGATE_ENCRYPTION_KEY"),
            "{e:#}"
        );
        let other = Sealer::new("another-encryption-key-of-32-chars!!").unwrap();
        let e = TokenIssuer::new(db.clone(), OauthConfig::default(), Some(other))
            .prepare_keys()
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("does not open"), "{e:#}");
    }
}
