//! Authentication and tenants: every kind of credential, the tokens that must be refused,
//! JWKS rotation, the OAuth2 token endpoint, tenant isolation, route scopes, and revocation
//! seen by two instances sharing PostgreSQL within a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Fetch as _, Host, admin, expect_error, model, wasm};

#[path = "auth_keys.rs"]
mod keys;

const CONFIG_KEY: &str = "config-key-0123456789abcdef";
const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
const AUDIENCE: &str = "infergate-tests";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A small host: the hostile fixture (whose `/whoami` reports what the plugin sees) and its
/// model; `extra` is appended.
fn small_config(extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "digits"
path = "{digits}"
concurrency = 1

[[plugins]]
name = "hostile"
path = "{hostile}"
models = ["digits"]
{extra}
"#,
        digits = model("digits/digits.onnx"),
        hostile = wasm("hostile"),
    )
}

/// An identity provider on loopback: OIDC discovery and a JWKS that tests can change, and
/// take down (`down`: it accepts connections and never answers).
struct Idp {
    base: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u32>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Idp {
    async fn start(jwks: Value) -> Idp {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(jwks));
        let fetches = Arc::new(Mutex::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (j, f, b) = (jwks.clone(), fetches.clone(), base.clone());
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let b = b.clone();
                    async move { axum::Json(json!({"issuer": b, "jwks_uri": format!("{b}/jwks")})) }
                }),
            )
            .route(
                "/jwks",
                get(move || {
                    let (j, f) = (j.clone(), f.clone());
                    async move {
                        *f.lock().unwrap() += 1;
                        axum::Json(j.lock().unwrap().clone())
                    }
                }),
            )
            .layer(axum::middleware::from_fn({
                let down = down.clone();
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let down = down.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if down {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        next.run(request).await
                    }
                }
            }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp {
            base,
            jwks,
            fetches,
            down,
        }
    }
}

fn rsa_jwk(kid: &str, n: &str, e: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e})
}

fn initial_jwks() -> Value {
    json!({"keys": [
        rsa_jwk("rsa1", keys::RSA1_N, keys::RSA1_E),
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "x": keys::EC_X, "y": keys::EC_Y},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": keys::ED_X},
        // A key the host cannot use must not spoil the others.
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": keys::RSA2_N, "e": keys::RSA2_E},
    ]})
}

/// Claims of a valid token of the loopback issuer.
fn claims(iss: &str) -> Value {
    json!({
        "iss": iss, "aud": AUDIENCE, "sub": "user-1", "org_id": "acme",
        "permissions": ["plugin:hostile"], "email": "dev@acme.test",
        "iat": now(), "nbf": now() - 5, "exp": now() + 300,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 if kid == Some("rsa2") => {
            EncodingKey::from_rsa_pem(keys::RSA2_PEM.as_bytes()).unwrap()
        }
        Algorithm::RS256 => EncodingKey::from_rsa_pem(keys::RSA1_PEM.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(keys::EC_PEM.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(keys::ED_PEM.as_bytes()).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn whoami(host: &Host, credential: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(host.url("/hostile/whoami"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
}

async fn whoami_ok(host: &Host, credential: &str) -> Value {
    let r = whoami(host, credential).await;
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn create_tenant(host: &Host, id: &str) {
    let r = admin()
        .post(host.url("/admin/tenants"))
        .json(&json!({"id": id, "priority": 2, "limits": ["60/minute"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Creates a key through the admin API; returns (id, key).
async fn create_key(host: &Host, body: Value) -> (String, String) {
    let r = admin()
        .post(host.url("/admin/keys"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

async fn oauth_token(
    host: &Host,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(host.url("/oauth/token"))
        .form(form);
    if let Some((id, secret)) = basic {
        r = r.basic_auth(id, Some(secret));
    }
    r.send().await.unwrap()
}

/// A host that takes every kind of credential: the config key `cfg` (tenant `acme`), JWTs of
/// the loopback issuer (keys by OIDC discovery, refreshed at most every 200 ms) and HS256
/// tokens of `hs-issuer`; database keys come from the admin API. The issuer is returned so that
/// tests can sign for it, rotate its keys and count its JWKS fetches.
async fn host_with_every_credential_kind() -> (Idp, Host) {
    let idp = Idp::start(initial_jwks()).await;
    let host = Host::start(&small_config(&format!(
        r#"
[[auth.api_keys]]
id = "cfg"
key = "{CONFIG_KEY}"
tenant = "acme"

[[auth.jwt]]
issuer = "{idp}"
audience = ["{AUDIENCE}"]
tenant_claim = "org_id"
tenants = ["acme"]
scopes_claim = "permissions"
forward_claims = ["sub", "email"]
refresh_interval_ms = 200

[[auth.jwt]]
issuer = "hs-issuer"
hs256_secret = "{HS_SECRET}"
tenant = "acme"
waive_audience = true
default_scopes = ["*"]
"#,
        idp = idp.base
    )));
    (idp, host)
}

/// Creates tenant `acme` and a database key for it (5/second); returns (id, key).
async fn acme_database_key(host: &Host) -> (String, String) {
    create_tenant(host, "acme").await;
    create_key(host, json!({"tenant": "acme", "limits": ["5/second"]})).await
}

/// Exchanges a key for a host-issued access token (client credentials in HTTP Basic).
async fn access_token(host: &Host, id: &str, key: &str) -> String {
    let r = oauth_token(
        host,
        &[("grant_type", "client_credentials")],
        Some((id, key)),
    )
    .await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    t["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn config_keys_are_accepted_as_bearer_token_or_x_api_key() {
    let (_idp, host) = host_with_every_credential_kind().await;

    let me = whoami_ok(&host, CONFIG_KEY).await;
    assert_eq!(
        (me["tenant"].as_str(), me["key_id"].as_str()),
        (Some("acme"), Some("cfg"))
    );
    let r = reqwest::Client::new()
        .get(host.url("/hostile/whoami"))
        .header("x-api-key", CONFIG_KEY)
        .send()
        .await
        .unwrap();
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["tenant"], "acme");
    // The plugin never sees the credential.
    let headers = me["headers"].to_string().to_lowercase();
    assert!(
        !headers.contains("x-api-key") && !headers.contains("authorization"),
        "{headers}"
    );
}

#[tokio::test]
async fn database_keys_are_accepted_and_listed_without_their_secret() {
    let (_idp, host) = host_with_every_credential_kind().await;

    let (id, key) = acme_database_key(&host).await;
    assert!(key.starts_with(&format!("ig_{id}_")), "{key}");
    let me = whoami_ok(&host, &key).await;
    assert_eq!(me["key_id"], id.as_str());
    assert_eq!(me["tenant"], "acme");
    let listed: Value = admin()
        .get(host.url("/admin/keys?tenant=acme"))
        .fetch_json()
        .await;
    assert_eq!(listed["keys"][0]["id"], id.as_str());
    assert_eq!(listed["keys"][0]["limits"], json!(["5/second"]));
    assert!(
        !listed.to_string().contains(&key[16..]),
        "the secret is never listed"
    );
}

#[tokio::test]
async fn external_jwts_are_accepted_in_every_algorithm() {
    let (idp, host) = host_with_every_credential_kind().await;

    // JWTs of the loopback issuer (keys by OIDC discovery), in each asymmetric algorithm.
    for (alg, kid) in [
        (Algorithm::RS256, "rsa1"),
        (Algorithm::ES256, "ec1"),
        (Algorithm::EdDSA, "ed1"),
    ] {
        let me = whoami_ok(&host, &sign(alg, Some(kid), &claims(&idp.base))).await;
        assert_eq!(me["tenant"], "acme", "{alg:?}");
        // The subject is the issuer's: another issuer's `user-1` is someone else.
        assert_eq!(me["key_id"], format!("jwt:{}#user-1", idp.base));
        assert_eq!(me["scopes"], json!(["plugin:hostile"]));
        assert_eq!(
            me["claims"],
            json!([["sub", "user-1"], ["email", "dev@acme.test"]])
        );
    }
    // HS256 with the issuer's shared secret.
    let hs = sign(
        Algorithm::HS256,
        None,
        &json!({"iss": "hs-issuer", "sub": "svc", "exp": now() + 60}),
    );
    assert_eq!(whoami_ok(&host, &hs).await["tenant"], "acme");
}

#[tokio::test]
async fn bad_tokens_are_refused_as_unauthorized() {
    let (idp, host) = host_with_every_credential_kind().await;

    let good = claims(&idp.base);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let valid = sign(Algorithm::RS256, Some("rsa1"), &good);
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut sig = signature.as_bytes().to_vec();
    sig[20] = if sig[20] == b'A' { b'B' } else { b'A' };
    let tampered_signature = format!("{head}.{payload}.{}", String::from_utf8(sig).unwrap());
    let forged_payload = b64(with("org_id", json!("globex")).to_string().as_bytes());
    let tampered_payload = format!("{head}.{forged_payload}.{signature}");
    let none_header = b64(br#"{"alg":"none","typ":"JWT","kid":"rsa1"}"#);
    let alg_none = format!("{none_header}.{payload}.");
    // Algorithm confusion: HS256 "signed" with the RSA public key, which anyone has.
    let confused = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_secret(keys::RSA1_PUBLIC_PEM.as_bytes()),
        )
        .unwrap()
    };
    let oversized = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &with("padding", json!("x".repeat(9 * 1024))),
    );
    let refused = [
        (
            "expired",
            sign(
                Algorithm::RS256,
                Some("rsa1"),
                &with("exp", json!(now() - 600)),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::ES256,
                Some("ec1"),
                &with("nbf", json!(now() + 600)),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                Some("rsa1"),
                &with("iss", json!("https://evil.test")),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::EdDSA,
                Some("ed1"),
                &with("aud", json!("someone-else")),
            ),
        ),
        ("unknown kid", sign(Algorithm::RS256, Some("nope"), &good)),
        // Validly signed, but naming a tenant this issuer was not given.
        (
            "a tenant the issuer may not assert",
            sign(
                Algorithm::RS256,
                Some("rsa1"),
                &with("org_id", json!("globex")),
            ),
        ),
        (
            "key not for signatures",
            sign(Algorithm::RS256, Some("enc"), &good),
        ),
        ("tampered signature", tampered_signature),
        ("tampered payload", tampered_payload),
        ("alg none", alg_none),
        (
            "hs256 with the rsa public key, rsa kid",
            confused(Some("rsa1")),
        ),
        ("hs256 with the rsa public key, no kid", confused(None)),
        ("hs256 with the wrong secret", {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = None;
            jsonwebtoken::encode(
                &h,
                &json!({"iss": "hs-issuer", "exp": now() + 60}),
                &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
            )
            .unwrap()
        }),
        (
            "hs256 expired",
            sign(
                Algorithm::HS256,
                None,
                &json!({"iss": "hs-issuer", "exp": now() - 600}),
            ),
        ),
        ("oversized", oversized),
        (
            "malformed",
            "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".to_string(),
        ),
        ("malformed segments", "a.b.c".to_string()),
        ("garbage", "not a token at all".to_string()),
        ("unknown API key", "ig_0123456789ab_0000".to_string()),
    ];
    for (what, token) in refused {
        let r = whoami(&host, &token).await;
        let body = expect_error(r, 401, "unauthorized").await;
        assert!(!body.to_string().contains("panicked"), "{what}: {body}");
    }
}

#[tokio::test]
async fn a_rotated_issuer_key_is_fetched_and_unknown_kids_do_not_hammer_the_issuer() {
    let (idp, host) = host_with_every_credential_kind().await;
    // The host has fetched the issuer's keys: a token of its first key was accepted.
    whoami_ok(
        &host,
        &sign(Algorithm::RS256, Some("rsa1"), &claims(&idp.base)),
    )
    .await;

    // Key rotation at the issuer: a new kid appears and is fetched; old tokens keep working.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetches = *idp.fetches.lock().unwrap();
    idp.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(rsa_jwk("rsa2", keys::RSA2_N, keys::RSA2_E));
    let rotated = sign(Algorithm::RS256, Some("rsa2"), &claims(&idp.base));
    assert_eq!(whoami_ok(&host, &rotated).await["tenant"], "acme");
    assert!(
        *idp.fetches.lock().unwrap() > fetches,
        "the new kid was fetched"
    );
    whoami_ok(
        &host,
        &sign(Algorithm::RS256, Some("rsa1"), &claims(&idp.base)),
    )
    .await;
    // Unknown kids do not make the host hammer the issuer.
    let good = claims(&idp.base);
    let before = *idp.fetches.lock().unwrap();
    for _ in 0..20 {
        let r = whoami(&host, &sign(Algorithm::RS256, Some("nope"), &good)).await;
        expect_error(r, 401, "unauthorized").await;
    }
    assert!(*idp.fetches.lock().unwrap() <= before + 2);
}

/// An identity provider that stops answering does not serialise JWT traffic behind its
/// timeouts: tokens signed with keys already fetched keep working at once, also after the key
/// set's TTL (it is refreshed in the background); a token with an unknown `kid` is refused at
/// once while the provider is failing; and when it is back, new keys are fetched again.
#[tokio::test]
async fn an_identity_provider_outage_does_not_stall_jwt_traffic() {
    let idp = Idp::start(initial_jwks()).await;
    let host = Host::start(&small_config(&format!(
        r#"
[[auth.jwt]]
issuer = "{idp}"
audience = ["{AUDIENCE}"]
tenant_claim = "org_id"
tenants = ["acme"]
scopes_claim = "permissions"
jwks_ttl_s = 1
refresh_interval_ms = 100
"#,
        idp = idp.base
    )));
    let known = sign(Algorithm::RS256, Some("rsa1"), &claims(&idp.base));
    whoami_ok(&host, &known).await;

    idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    // Past the TTL: the set is stale and its refresh hangs (the host gives up after 5 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let calls = (0..16).map(|_| whoami_ok(&host, &known));
    futures::future::join_all(calls).await;
    let known_took = started.elapsed();
    // Let the hanging refresh time out, so the host knows the provider is down.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let unknown = sign(Algorithm::RS256, Some("rsa2"), &claims(&idp.base));
    let started = Instant::now();
    let calls = (0..16).map(|_| whoami(&host, &unknown));
    for r in futures::future::join_all(calls).await {
        let body = expect_error(r, 401, "unauthorized").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot be fetched now"),
            "{body}"
        );
    }
    let unknown_took = started.elapsed();
    println!(
        "during the outage: 16 known-key calls in {known_took:?}, 16 unknown-kid refusals in {unknown_took:?}"
    );
    // Each would have waited out the 5 s fetch timeout in turn before.
    assert!(known_took < Duration::from_secs(3), "{known_took:?}");
    assert!(unknown_took < Duration::from_secs(3), "{unknown_took:?}");

    // The provider is back, with a new key: after the backoff it is fetched.
    idp.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(rsa_jwk("rsa2", keys::RSA2_N, keys::RSA2_E));
    idp.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = whoami(&host, &unknown).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new key was never fetched");
        // Slowly: refused credentials count towards the address's throttle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(host.alive());
}

#[tokio::test]
async fn host_issued_oauth_tokens_are_exchanged_for_keys() {
    let (_idp, host) = host_with_every_credential_kind().await;
    let (id, key) = acme_database_key(&host).await;

    // Exchanged for the database key, in HTTP Basic...
    let r = oauth_token(
        &host,
        &[("grant_type", "client_credentials")],
        Some((&id, &key)),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 900);
    let access = t["access_token"].as_str().unwrap().to_string();
    let me = whoami_ok(&host, &access).await;
    assert_eq!(
        (me["tenant"].as_str(), me["key_id"].as_str()),
        (Some("acme"), Some(id.as_str()))
    );
    let kid = jsonwebtoken::decode_header(&access).unwrap().kid.unwrap();
    let jwks: Value = reqwest::get(host.url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str() && k["kty"] == "OKP")
    );
    // ...and in form fields, narrowed to a scope.
    let r = oauth_token(
        &host,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &key),
            ("scope", "plugin:hostile"),
        ],
        None,
    )
    .await;
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["scope"], "plugin:hostile");
    let narrow = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        whoami_ok(&host, &narrow).await["scopes"],
        json!(["plugin:hostile"])
    );
    // A config key may exchange too.
    let r = oauth_token(
        &host,
        &[("grant_type", "client_credentials")],
        Some(("cfg", CONFIG_KEY)),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_token_endpoint_answers_rfc_6749_errors() {
    let (_idp, host) = host_with_every_credential_kind().await;
    let (id, key) = acme_database_key(&host).await;

    for (form, basic, status, error) in [
        (
            vec![("grant_type", "client_credentials")],
            Some((id.as_str(), "ig_0123456789ab_bad")),
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials")],
            Some(("cfg", key.as_str())),
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "client_credentials")],
            None,
            401,
            "invalid_client",
        ),
        (
            vec![("grant_type", "password")],
            Some((id.as_str(), key.as_str())),
            400,
            "unsupported_grant_type",
        ),
        (
            vec![],
            Some((id.as_str(), key.as_str())),
            400,
            "invalid_request",
        ),
    ] {
        let r = oauth_token(&host, &form, basic).await;
        assert_eq!(r.status(), status, "{form:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], error, "{form:?}");
    }
    // A scope beyond the key's own.
    let (narrow_id, narrow_key) = create_key(
        &host,
        json!({"tenant": "acme", "scopes": ["plugin:hostile"]}),
    )
    .await;
    let r = oauth_token(
        &host,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "hostile:admin"),
        ],
        Some((&narrow_id, &narrow_key)),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
}

#[tokio::test]
async fn revoking_a_key_ends_the_key_and_the_tokens_made_from_it() {
    let (_idp, host) = host_with_every_credential_kind().await;
    let (id, key) = acme_database_key(&host).await;
    let access = access_token(&host, &id, &key).await;
    whoami_ok(&host, &key).await;
    whoami_ok(&host, &access).await;

    let r = admin()
        .delete(host.url(&format!("/admin/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_error(whoami(&host, &key).await, 401, "unauthorized").await;
    expect_error(whoami(&host, &access).await, 401, "unauthorized").await;
    let r = admin()
        .delete(host.url("/admin/keys/000000000000"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn tenants_see_only_their_own_and_public_plugins() {
    let host = Host::start(&small_config(&format!(
        r#"
[[plugins]]
name = "hello"
path = "{hello}"

[[auth.plugins]]
name = "hello"
visibility = "private"
tenants = ["acme"]

[tenant_plugins]
enabled = true
"#,
        hello = wasm("hello")
    )));
    create_tenant(&host, "acme").await;
    create_tenant(&host, "globex").await;
    let (_, acme) = create_key(&host, json!({"tenant": "acme"})).await;
    let (_, globex) = create_key(&host, json!({"tenant": "globex"})).await;
    let greet = |key: &str| {
        reqwest::Client::new()
            .post(host.url("/hello/greet"))
            .bearer_auth(key.to_string())
            .json(&json!({"name": "x"}))
            .send()
    };

    // The operator's private plugin: there for acme, absent for globex.
    assert_eq!(greet(&acme).await.unwrap().status(), 200);
    expect_error(greet(&globex).await.unwrap(), 404, "not_found").await;
    // Public plugins work for both.
    assert_eq!(whoami_ok(&host, &acme).await["tenant"], "acme");
    assert_eq!(whoami_ok(&host, &globex).await["tenant"], "globex");
    // The OpenAPI document shows each caller what it may see.
    let paths = |key: Option<String>| {
        let mut r = reqwest::Client::new().get(host.url("/openapi.json"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let v: Value = r.fetch_json().await;
            v["paths"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        }
    };
    assert!(
        paths(Some(acme.clone()))
            .await
            .contains(&"/hello/greet".to_string())
    );
    assert!(
        !paths(Some(globex.clone()))
            .await
            .contains(&"/hello/greet".to_string())
    );
    let anonymous = paths(None).await;
    assert!(!anonymous.contains(&"/hello/greet".to_string()));
    assert!(anonymous.contains(&"/hostile/whoami".to_string()));

    // A tenant's own plugin is private to it: invisible, uncallable and unlisted for others.
    let wasm_bytes = std::fs::read(wasm("greeter_v1")).unwrap();
    let r = reqwest::Client::new()
        .put(host.url("/tenant/plugins/greeter"))
        .bearer_auth(&acme)
        .body(wasm_bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let version = |key: &str| {
        reqwest::Client::new()
            .get(host.url("/t/acme/greeter/version"))
            .bearer_auth(key.to_string())
            .send()
    };
    assert_eq!(version(&acme).await.unwrap().status(), 200);
    expect_error(version(&globex).await.unwrap(), 404, "not_found").await;
    let listed: Value = reqwest::Client::new()
        .get(host.url("/tenant/plugins"))
        .bearer_auth(&globex)
        .fetch_json()
        .await;
    assert_eq!(listed["plugins"], json!([]));
    assert!(
        !paths(Some(globex.clone()))
            .await
            .iter()
            .any(|p| p.starts_with("/t/acme"))
    );
    assert!(
        paths(Some(acme.clone()))
            .await
            .iter()
            .any(|p| p.starts_with("/t/acme"))
    );

    // Deleting a tenant revokes its keys.
    let r = admin()
        .delete(host.url("/admin/tenants/globex"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_error(whoami(&host, &globex).await, 401, "unauthorized").await;
    let tenants: Value = admin().get(host.url("/admin/tenants")).fetch_json().await;
    assert_eq!(
        tenants["tenants"],
        json!([{"id": "acme", "priority": 2, "limits": ["60/minute"], "created_at": tenants["tenants"][0]["created_at"]}])
    );
    // Bad admin input.
    for body in [
        json!({"id": "Bad Name"}),
        json!({"id": "x", "limits": [""]}),
        json!({"id": "x", "limits": ["x".repeat(65)]}),
    ] {
        let r = admin()
            .post(host.url("/admin/tenants"))
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(r, 422, "invalid_request").await;
    }
    let r = admin()
        .post(host.url("/admin/keys"))
        .json(&json!({"tenant": "nobody"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found").await;
    let r = reqwest::Client::new()
        .get(host.url("/admin/keys"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn route_and_plugin_scopes_are_enforced() {
    let host = Host::start(&small_config(&format!(
        r#"
[[plugins]]
name = "hello"
path = "{hello}"
"#,
        hello = wasm("hello")
    )));
    create_tenant(&host, "acme").await;
    let get = |key: String, path: &'static str| {
        reqwest::Client::new()
            .get(host.url(path))
            .bearer_auth(key)
            .send()
    };
    // One route only.
    let (_, one_route) = create_key(
        &host,
        json!({"tenant": "acme", "scopes": ["plugin:hostile/whoami"]}),
    )
    .await;
    assert_eq!(
        get(one_route.clone(), "/hostile/whoami")
            .await
            .unwrap()
            .status(),
        200
    );
    expect_error(
        get(one_route.clone(), "/hostile/scoped").await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    expect_error(
        get(one_route.clone(), "/hostile/env").await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let r = reqwest::Client::new()
        .post(host.url("/hello/greet"))
        .bearer_auth(&one_route)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden").await;
    // The whole plugin, but not the route's own scope.
    let (_, plugin) = create_key(
        &host,
        json!({"tenant": "acme", "scopes": ["plugin:hostile"]}),
    )
    .await;
    assert_eq!(
        get(plugin.clone(), "/hostile/whoami")
            .await
            .unwrap()
            .status(),
        200
    );
    let body = expect_error(
        get(plugin.clone(), "/hostile/scoped").await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hostile:admin"),
        "{body}"
    );
    // The route's scope without a plugin grant is not enough either.
    let (_, bare) = create_key(
        &host,
        json!({"tenant": "acme", "scopes": ["hostile:admin"]}),
    )
    .await;
    expect_error(
        get(bare, "/hostile/scoped").await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    // Both, or everything.
    let (_, both) = create_key(
        &host,
        json!({"tenant": "acme", "scopes": ["plugin:hostile", "hostile:admin"]}),
    )
    .await;
    let r = get(both, "/hostile/scoped").await.unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["scopes"], json!(["plugin:hostile", "hostile:admin"]));
    let (_, all) = create_key(&host, json!({"tenant": "acme"})).await;
    assert_eq!(get(all, "/hostile/scoped").await.unwrap().status(), 200);
    // An expired key.
    let (_, short) = create_key(&host, json!({"tenant": "acme", "expires_in": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    expect_error(
        get(short, "/hostile/whoami").await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn revocation_reaches_every_instance_within_a_second() {
    let db = crate::harness::PgDatabase::create().await;
    let config = small_config(&format!("[auth]\ndatabase = \"{}\"\n", db.url()));
    let a = Host::start(&config);
    let b = Host::start(&config);
    create_tenant(&a, "acme").await;
    let (id, key) = create_key(&a, json!({"tenant": "acme"})).await;
    // The key and a token made on A work on both.
    let t: Value = oauth_token(
        &a,
        &[("grant_type", "client_credentials")],
        Some((&id, &key)),
    )
    .await
    .json()
    .await
    .unwrap();
    let token = t["access_token"].as_str().unwrap().to_string();
    for host in [&a, &b] {
        assert_eq!(whoami_ok(host, &key).await["key_id"], id.as_str());
        assert_eq!(whoami_ok(host, &token).await["key_id"], id.as_str());
    }
    let tenants: Value = admin().get(b.url("/admin/tenants")).fetch_json().await;
    assert_eq!(tenants["tenants"][0]["id"], "acme");

    let r = admin()
        .delete(a.url(&format!("/admin/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let revoked = Instant::now();
    let mut pending: Vec<(&Host, &str)> = vec![(&a, &key), (&b, &key), (&a, &token), (&b, &token)];
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (host, credential) in pending {
            if whoami(host, credential).await.status() != 401 {
                still.push((host, credential));
            }
        }
        pending = still;
        assert!(
            revoked.elapsed() <= Duration::from_secs(1),
            "{} credential(s) still accepted {:?} after revocation",
            pending.len(),
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((a, b));
    db.drop_it().await;
}

/// Guessing credentials is throttled: once an address has had `max_failures_per_minute`
/// credentials refused (API keys, the admin key, OAuth client secrets alike), its requests get
/// 429 at once, before any lookup, while other addresses go on; a key id that is guessed at is
/// throttled whatever the address. Health stays up for everyone.
#[tokio::test]
async fn refused_credentials_are_throttled_per_address_and_key_id() {
    let host = Host::start(&small_config(
        "[auth]\nmax_failures_per_minute = 5\n\n[limits]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    ));
    let (id, key) = acme_database_key(&host).await;
    let from = |ip: &str| {
        let ip = ip.to_string();
        move |r: reqwest::RequestBuilder| r.header("x-forwarded-for", ip.clone())
    };
    let c = reqwest::Client::new();
    let whoami_as = |ip: &str, credential: &str| {
        from(ip)(c.get(host.url("/hostile/whoami")).bearer_auth(credential)).send()
    };

    // Wrong API keys from one address: 5 refusals, then 429 even with the right key.
    for i in 0..5 {
        let r = whoami_as("203.0.113.1", &format!("wrong-key-{i}-0123456789"))
            .await
            .unwrap();
        expect_error(r, 401, "unauthorized").await;
    }
    let r = whoami_as("203.0.113.1", &key).await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "rate_limited").await;
    let r = from("203.0.113.1")(c.get(host.url("/healthz")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another address is not affected.
    let r = whoami_as("203.0.113.2", &key).await.unwrap();
    assert_eq!(r.status(), 200);

    // The admin key, guessed at from one address.
    for _ in 0..5 {
        let r = from("203.0.113.3")(
            c.get(host.url("/admin/plugins"))
                .bearer_auth("not-the-admin-key"),
        )
        .send()
        .await
        .unwrap();
        expect_error(r, 401, "unauthorized").await;
    }
    let r = from("203.0.113.3")(admin().get(host.url("/admin/plugins")))
        .send()
        .await
        .unwrap();
    expect_error(r, 429, "rate_limited").await;

    // OAuth client secrets.
    for _ in 0..5 {
        let r = from("203.0.113.4")(
            c.post(host.url("/oauth/token"))
                .form(&[("grant_type", "client_credentials")])
                .basic_auth(&id, Some("ig_wrong_secret")),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = from("203.0.113.4")(
        c.post(host.url("/oauth/token"))
            .form(&[("grant_type", "client_credentials")])
            .basic_auth(&id, Some(&key)),
    )
    .send()
    .await
    .unwrap();
    expect_error(r, 429, "rate_limited").await;

    // One key id guessed at from many addresses: that id is throttled everywhere, other keys
    // are not.
    let (other_id, other_key) = create_key(&host, json!({"tenant": "acme"})).await;
    for i in 0..5 {
        let guess = format!("ig_{other_id}_guess{i}");
        let r = whoami_as(&format!("198.51.100.{i}"), &guess).await.unwrap();
        expect_error(r, 401, "unauthorized").await;
    }
    let r = whoami_as("198.51.100.99", &other_key).await.unwrap();
    expect_error(r, 429, "rate_limited").await;
    let r = whoami_as("198.51.100.99", &key).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(host.alive());
}
