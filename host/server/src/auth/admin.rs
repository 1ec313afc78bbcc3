//! The operator API for tenants and keys (admin credential only):
//!
//! - `POST /admin/tenants` `{"id", "priority"?, "limits"?}`, `GET /admin/tenants`,
//!   `DELETE /admin/tenants/{id}` (revokes the tenant's keys).
//! - `POST /admin/keys` `{"tenant", "scopes"?, "limits"?, "name"?, "expires_in"? (seconds) |
//!   "expires_at"? (Unix seconds)}` → the key record and, this once, `"key"`: the secret.
//! - `GET /admin/keys?tenant=`, `DELETE /admin/keys/{id}` (revoke).
//!
//! `limits` are policy strings (`"60/minute"`) read by the quota engine; a string it cannot
//! read is refused here (422 naming it), so a stored limit is never skipped.

use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Auth;
use super::keys::{NewKey, Tenant};
use super::operator::{Admin, AdminKey};
use super::{now_s, valid_scope};
use crate::error::ApiError;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Auth>: FromRef<S>,
    Arc<AdminKey>: FromRef<S>,
{
    Router::new()
        .route("/admin/tenants", get(list_tenants).post(create_tenant))
        .route("/admin/tenants/{id}", delete(delete_tenant))
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}", delete(revoke_key))
}

/// A tenant id: it names the tenant's plugin namespace (see [`crate::registry::names`]).
pub fn valid_tenant(id: &str) -> bool {
    crate::registry::names::valid_segment(id)
}

/// Checks limit policy strings before they are stored: each must be a policy the quota engine
/// reads (`60/minute`, `100000 tokens/day`, `8 concurrent`, ...) of at most 64 characters.
pub fn validate_limits(limits: &[String]) -> Result<(), String> {
    for limit in limits {
        if limit.len() > 64 {
            return Err(format!("limit `{limit}` is longer than 64 characters"));
        }
        limit
            .parse::<crate::quota::policy::Policy>()
            .map_err(|e| format!("limit `{limit}`: {e}"))?;
    }
    Ok(())
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable(format!("bad request body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
    /// Default: the config's priority for the tenant, else 1.
    priority: Option<u32>,
    #[serde(default)]
    limits: Vec<String>,
}

fn tenant_json(t: &Tenant) -> Value {
    json!({"id": t.id, "priority": t.priority, "limits": t.limits, "created_at": t.created_at})
}

async fn create_tenant(
    _: Admin,
    State(auth): State<Arc<Auth>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewTenant = json_body(&body)?;
    if !valid_tenant(&new.id) {
        return Err(ApiError::unprocessable(format!(
            "tenant ids are {}",
            crate::registry::names::SEGMENT_RULE
        )));
    }
    validate_limits(&new.limits).map_err(ApiError::unprocessable)?;
    if new.priority == Some(0) {
        return Err(ApiError::unprocessable("priority must be at least 1"));
    }
    let t = auth
        .keys
        .create_tenant(&new.id, new.priority, &new.limits)
        .await?;
    Ok((StatusCode::CREATED, Json(tenant_json(&t))))
}

async fn list_tenants(_: Admin, State(auth): State<Arc<Auth>>) -> Result<Json<Value>, ApiError> {
    let tenants = auth.keys.tenants().await?;
    Ok(Json(
        json!({"tenants": tenants.iter().map(tenant_json).collect::<Vec<_>>()}),
    ))
}

async fn delete_tenant(
    _: Admin,
    State(auth): State<Arc<Auth>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.keys.delete_tenant(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tenant: String,
    #[serde(default = "super::all_scopes")]
    scopes: Vec<String>,
    #[serde(default)]
    limits: Vec<String>,
    name: Option<String>,
    expires_in: Option<i64>,
    expires_at: Option<i64>,
}

/// Checks a new key's settings and turns them into a [`NewKey`].
pub fn new_key(
    tenant: String,
    scopes: Vec<String>,
    limits: Vec<String>,
    name: Option<String>,
    expires_at: Option<i64>,
) -> Result<NewKey, String> {
    if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
        return Err(format!(
            "scope `{bad}` must be 1-128 printable characters without spaces"
        ));
    }
    validate_limits(&limits)?;
    if name.as_ref().is_some_and(|n| n.len() > 128) {
        return Err("a key's name is at most 128 characters".into());
    }
    if expires_at.is_some_and(|t| t <= now_s()) {
        return Err("the expiry must be in the future".into());
    }
    Ok(NewKey {
        tenant,
        name,
        scopes,
        limits,
        expires_at,
    })
}

async fn create_key(
    _: Admin,
    State(auth): State<Arc<Auth>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateKey = json_body(&body)?;
    let expires_at = match (req.expires_in, req.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give `expires_in` or `expires_at`, not both",
            ));
        }
        (Some(s), None) => Some(now_s().saturating_add(s)),
        (None, at) => at,
    };
    let new = new_key(req.tenant, req.scopes, req.limits, req.name, expires_at)
        .map_err(ApiError::unprocessable)?;
    let (record, key) = auth.keys.create_key(new).await?;
    let mut out = serde_json::to_value(&record).unwrap_or_default();
    out["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    tenant: Option<String>,
}

async fn list_keys(
    _: Admin,
    State(auth): State<Arc<Auth>>,
    query: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let keys = auth.keys.keys(q.tenant.as_deref()).await?;
    Ok(Json(json!({"keys": keys})))
}

async fn revoke_key(
    _: Admin,
    State(auth): State<Arc<Auth>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.keys.revoke(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
