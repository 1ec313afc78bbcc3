//! Prints the per-request cost of checking each kind of credential, measured in-process
//! (no HTTP): API keys from the config, database keys (SQLite, or PostgreSQL with `AUTH_BENCH_DATABASE`) with the lookup cached and not,
//! host-issued OAuth2 tokens, and external JWTs (RS256, ES256, EdDSA, HS256) with the issuer's
//! JWKS cached, and with a JWKS fetch from a loopback server (a cache miss).
//!
//! Run: `cargo run --release -p infergate --example auth_bench`

use std::time::Instant;

use infergate::auth::{Auth, jwt::Verifier};
use infergate::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

#[path = "../../../tests/e2e/auth_keys.rs"]
mod keys;

const CONFIG_KEY: &str = "bench-config-key-0123456789";
const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

/// Runs `f` `n` times and prints the mean time per call.
async fn measure<F, Fut>(what: &str, n: u32, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n.min(100) {
        f().await;
    }
    let started = Instant::now();
    for _ in 0..n {
        f().await;
    }
    let per = started.elapsed() / n;
    println!(
        "{what:<58} {:>10.2} µs/check  ({n} checks)",
        per.as_nanos() as f64 / 1000.0
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(alg: Algorithm, kid: Option<&str>, iss: &str) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(keys::RSA1_PEM.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(keys::EC_PEM.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(keys::ED_PEM.as_bytes()).unwrap(),
        _ => EncodingKey::from_secret(HS_SECRET.as_bytes()),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    let claims = json!({"iss": iss, "aud": "bench", "sub": "u", "org_id": "acme",
        "scope": "*", "exp": now() + 3600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::main]
async fn main() {
    // A loopback JWKS server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = format!("http://{}", listener.local_addr().unwrap());
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa1", "n": keys::RSA1_N, "e": keys::RSA1_E},
        {"kty": "EC", "crv": "P-256", "kid": "ec1", "x": keys::EC_X, "y": keys::EC_Y},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": keys::ED_X},
    ]});
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let j = jwks.clone();
            async move { axum::Json(j) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    // The database several instances share is PostgreSQL: `AUTH_BENCH_DATABASE=postgres://...`.
    let database = std::env::var("AUTH_BENCH_DATABASE")
        .unwrap_or_else(|_| dir.path().join("auth.db").display().to_string());
    let kind = if database.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let config = Config::parse(
        &format!(
            r#"
[auth]
database = "{db}"
[[auth.api_keys]]
id = "cfg"
key = "{CONFIG_KEY}"
[[auth.jwt]]
issuer = "{idp}"
jwks_url = "{idp}/jwks"
audience = ["bench"]
tenant_claim = "org_id"
tenants = ["acme"]
[[auth.jwt]]
issuer = "hs"
hs256_secret = "{HS_SECRET}"
audience = ["bench"]
tenant = "acme"
"#,
            db = database
        ),
        dir.path(),
    )
    .unwrap();
    let auth = Auth::new(&config.auth, None).await.unwrap();
    auth.keys.create_tenant("acme", None, &[]).await.unwrap();
    let new = infergate::auth::admin::new_key("acme".into(), vec!["*".into()], vec![], None, None)
        .unwrap();
    let (record, db_key) = auth.keys.create_key(new).await.unwrap();
    let token = auth
        .oauth
        .issue("acme", &record.id, &["*".to_string()])
        .await
        .unwrap();

    let auth = &*auth;
    let db_key = db_key.as_str();
    let token = token.as_str();
    println!("credential checks (per request, in-process, this machine):");
    measure("API key from the config", 200_000, || async move {
        auth.authenticate_credential(CONFIG_KEY).await.unwrap();
    })
    .await;
    measure(
        &format!("API key in {kind}, lookup cached (hit)"),
        200_000,
        || async move {
            auth.authenticate_credential(db_key).await.unwrap();
        },
    )
    .await;
    measure(
        &format!("API key in {kind}, not cached (miss: one query)"),
        5_000,
        || async move {
            auth.keys.clear_cache();
            auth.authenticate_credential(db_key).await.unwrap();
        },
    )
    .await;
    measure(
        "host-issued OAuth2 token (EdDSA), key status cached",
        20_000,
        || async move {
            auth.authenticate_credential(token).await.unwrap();
        },
    )
    .await;
    for (alg, kid) in [
        (Algorithm::RS256, Some("rsa1")),
        (Algorithm::ES256, Some("ec1")),
        (Algorithm::EdDSA, Some("ed1")),
    ] {
        let jwt = sign(alg, kid, &idp);
        let jwt = jwt.as_str();
        measure(
            &format!("JWT {alg:?}, JWKS cached (hit)"),
            20_000,
            || async move {
                auth.authenticate_credential(jwt).await.unwrap();
            },
        )
        .await;
    }
    let hs = sign(Algorithm::HS256, None, "hs");
    let hs = hs.as_str();
    measure("JWT HS256 (shared secret)", 100_000, || async move {
        auth.authenticate_credential(hs).await.unwrap();
    })
    .await;
    let jwt = sign(Algorithm::RS256, Some("rsa1"), &idp);
    let (jwt, issuers, idp) = (jwt.as_str(), config.auth.jwt.as_slice(), idp.as_str());
    measure(
        "JWT RS256, JWKS not cached (miss: loopback fetch)",
        500,
        || async move {
            let fresh = Verifier::new(issuers).unwrap();
            fresh.verify(jwt, idp).await.unwrap();
        },
    )
    .await;
}
