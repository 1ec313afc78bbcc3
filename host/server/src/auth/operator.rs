//! The operator's credential (`[admin] key` or `INFERGATE_ADMIN_KEY`), kept as a digest, and
//! [`Admin`], the extractor that admits only it: every `/admin` handler takes one.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use http::StatusCode;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

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
