//! Who is calling. For now: API keys from the config and `INFERGATE_API_KEY`, presented as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//!
//! Keys are stored only as SHA-256 digests and looked up by digest, so the secret is never
//! compared byte by byte; the digest comparison itself is constant-time.

use std::collections::HashMap;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The identity of an authenticated caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub tenant: String,
    pub key_id: String,
    pub scopes: Vec<String>,
}

/// Prefix of generated keys, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "ig_";

#[derive(Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl KeyStore {
    pub fn insert(&mut self, secret: &str, principal: Principal) {
        self.by_digest.insert(digest(secret), principal);
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Finds the caller of a request, or says why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let secret = presented_key(headers)?;
        let wanted = digest(secret);
        self.by_digest
            .iter()
            .find(|(d, _)| bool::from(d.ct_eq(&wanted)))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The credential a request presents in `X-API-Key` or `Authorization: Bearer`.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    if let Some(value) = headers.get("x-api-key") {
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

/// A new random API key: the prefix and 32 bytes of OS randomness, hex-encoded.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        let mut s = KeyStore::default();
        s.insert(
            "secret-key-0123456789",
            Principal {
                tenant: "t".into(),
                key_id: "k".into(),
                scopes: vec![],
            },
        );
        s
    }

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
    fn accepts_both_headers() {
        let s = store();
        assert!(
            s.authenticate(&headers(&[(
                "authorization",
                "Bearer secret-key-0123456789"
            )]))
            .is_ok()
        );
        assert!(
            s.authenticate(&headers(&[(
                "authorization",
                "bearer secret-key-0123456789"
            )]))
            .is_ok()
        );
        assert!(
            s.authenticate(&headers(&[("x-api-key", "secret-key-0123456789")]))
                .is_ok()
        );
    }

    #[test]
    fn rejects_missing_wrong_and_malformed() {
        let s = store();
        for h in [
            headers(&[]),
            headers(&[("authorization", "Bearer wrong")]),
            headers(&[("authorization", "Basic secret-key-0123456789")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("x-api-key", "")]),
        ] {
            assert_eq!(s.authenticate(&h).unwrap_err().code, "unauthorized");
        }
    }

    #[test]
    fn generated_keys_are_prefixed_and_unique() {
        let (a, b) = (generate_key(), generate_key());
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, b);
    }
}
