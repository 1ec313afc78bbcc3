//! The operator's credentials, kept as digests: the admin key (`[admin] key` or
//! `INFERGATE_ADMIN_KEY`) and [`Admin`], the extractor that admits only it (every `/admin`
//! handler takes one); who may read `/metrics` ([`MetricsAccess`], [`MetricsReader`]); and the
//! shortest secret the host accepts.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use http::StatusCode;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Secrets the host is given (API keys, the admin and metrics keys) have at least this many
/// characters: a short one can be guessed.
pub const MIN_SECRET_CHARS: usize = 16;

/// Refuses a secret shorter than [`MIN_SECRET_CHARS`]; `name` says where it came from.
pub fn check_secret(name: &str, secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(format!(
            "{name} must be at least {MIN_SECRET_CHARS} characters (a short secret can be guessed)"
        ));
    }
    Ok(())
}

/// The admin credential's digest; `None` turns the admin API off.
pub struct AdminKey(Option<[u8; 32]>);

impl AdminKey {
    pub fn new(key: Option<&str>) -> Self {
        Self(key.map(|k| Sha256::digest(k.as_bytes()).into()))
    }
}

/// A request that presented the admin credential.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Arc<AdminKey>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Some(key) = Arc::<AdminKey>::from_ref(state).0 else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the admin API is disabled: set INFERGATE_ADMIN_KEY or [admin] key",
            ));
        };
        let presented = super::presented_key(&parts.headers)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&key)) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("the admin key is not valid"))
        }
    }
}

/// Who may read `/metrics`. Its series name every plugin, tenants' private ones included, so by
/// default only the operator may: with the admin key or the metrics key (`[admin] metrics_key`
/// or `INFERGATE_METRICS_KEY`, for a scraper that should not hold the admin key).
/// `[admin] public_metrics = true` opens it to anyone.
pub struct MetricsAccess {
    public: bool,
    keys: Vec<[u8; 32]>,
}

impl MetricsAccess {
    pub fn new(public: bool, admin_key: Option<&str>, metrics_key: Option<&str>) -> Self {
        let keys = [admin_key, metrics_key]
            .into_iter()
            .flatten()
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        Self { public, keys }
    }
}

/// A request that may read `/metrics`.
pub struct MetricsReader;

impl<S> FromRequestParts<S> for MetricsReader
where
    S: Send + Sync,
    Arc<MetricsAccess>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let access = Arc::<MetricsAccess>::from_ref(state);
        if access.public {
            return Ok(MetricsReader);
        }
        if access.keys.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "metrics need the admin or metrics key, and neither is set: set \
                 INFERGATE_METRICS_KEY or [admin] metrics_key (or [admin] public_metrics = true)",
            ));
        }
        let presented = super::presented_key(&parts.headers)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, so timing does not tell which one matched.
        let matched = access
            .keys
            .iter()
            .fold(subtle::Choice::from(0), |any, k| any | digest.ct_eq(k));
        if bool::from(matched) {
            Ok(MetricsReader)
        } else {
            Err(ApiError::unauthorized(
                "metrics need the admin key or the metrics key",
            ))
        }
    }
}
