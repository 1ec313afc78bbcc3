//! The operator API under `/admin`, guarded by the admin credential
//! (`Authorization: Bearer <admin key>` or `X-API-Key`):
//!
//! - `GET /admin/plugins`: what is deployed — version, digest, status, source, last error.
//! - `PUT /admin/plugins/{name}`: deploy or replace; the body is the `.wasm`, settings go in the
//!   query (`mount`, `models=a,b`, and any limit such as `memory_bytes` or `cpu_ms`).
//! - `DELETE /admin/plugins/{name}`, `POST /admin/plugins/{name}/rollback`.
//! - `GET /admin/models`, `PUT /admin/models/{name}` (JSON: a `[[models]]` entry without
//!   `name`), `DELETE /admin/models/{name}`.
//!
//! And tenant self-service under `/tenant/plugins` (the same calls, with the tenant's own API
//! key), when `[tenant_plugins] enabled`: plugins land in the tenant's namespace, mounted at
//! `/t/{tenant}/{name}`, within the operator's limits (count, size, memory, CPU, models).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, Path, Query, State};
use axum::routing::{get, post, put};
use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;
use infergate_runtime::Limits;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::operator::{Admin, AdminKey};
use crate::auth::{Auth, Principal};
use crate::error::ApiError;
use crate::quota::Quotas;
use crate::registry::Registry;
use crate::registry::{ChangeError, Source};
use crate::registry::{ModelConfig, PluginSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin credential; else `INFERGATE_ADMIN_KEY`. Without one the admin API is off.
    pub key: Option<String>,
    /// A credential that reads `/metrics` and nothing else; else `INFERGATE_METRICS_KEY`.
    pub metrics_key: Option<String>,
    /// `/metrics` without a credential (its series name every plugin, tenants' included).
    pub public_metrics: bool,
    /// Largest plugin upload accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Earlier versions kept per plugin for rollback.
    pub versions_kept: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            key: None,
            metrics_key: None,
            public_metrics: false,
            max_upload_bytes: 64 << 20,
            versions_kept: 5,
        }
    }
}

/// Tenant self-deploys (`PUT /tenant/plugins/{name}` with the tenant's own key): plugins land in
/// the tenant's namespace, mounted at `/t/{tenant}/{name}`, within these limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPluginsConfig {
    pub enabled: bool,
    /// Plugins one tenant may have.
    pub max_plugins: usize,
    pub max_upload_bytes: usize,
    /// The most a tenant plugin may ask for of each sandbox limit; what it does not ask for
    /// is the lower of the plugin default and this.
    pub max_memory_bytes: usize,
    pub max_cpu_ms: u64,
    pub max_wall_ms: u64,
    pub max_concurrency: usize,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Models tenant plugins may be granted.
    pub models: Vec<String>,
}

impl Default for TenantPluginsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_plugins: 3,
            max_upload_bytes: 16 << 20,
            max_memory_bytes: 64 << 20,
            max_cpu_ms: 1_000,
            max_wall_ms: 10_000,
            max_concurrency: 8,
            max_request_bytes: 1 << 20,
            max_response_bytes: 4 << 20,
            models: Vec::new(),
        }
    }
}

/// What the admin and tenant handlers reach.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// For usage reports.
    pub quotas: Arc<Quotas>,
    /// For tenant callers.
    pub auth: Arc<Auth>,
    pub tenant_plugins: Arc<TenantPluginsConfig>,
}

pub fn routes<S>(max_upload_bytes: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    AdminState: FromRef<S>,
    Arc<AdminKey>: FromRef<S>,
{
    Router::new()
        .route("/admin/plugins", get(list_plugins))
        .route(
            "/admin/plugins/{name}",
            put(put_plugin).delete(delete_plugin),
        )
        .route("/admin/plugins/{name}/rollback", post(rollback))
        .route("/admin/usage/{tenant}", get(tenant_usage_admin))
        .route("/admin/models", get(list_models))
        .route("/admin/models/{name}", put(put_model).delete(delete_model))
        .layer(DefaultBodyLimit::max(max_upload_bytes))
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        let message = e.to_string();
        match e {
            ChangeError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", message)
            }
            ChangeError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ChangeError::NotFound(_) => ApiError::not_found(message),
            ChangeError::NotReady => ApiError::not_ready(),
            ChangeError::Limit(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            ChangeError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                message,
            )
            .retry_after(std::time::Duration::from_secs(1)),
        }
    }
}

async fn list_plugins(_: Admin, State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"plugins": state.registry.plugins().await}))
}

/// Settings of `PUT /admin/plugins/{name}`, from the query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    mount: Option<String>,
    /// Comma-separated model names.
    models: Option<String>,
    memory_bytes: Option<usize>,
    cpu_ms: Option<u64>,
    wall_ms: Option<u64>,
    max_concurrency: Option<usize>,
    max_request_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    /// Requests one warm instance may serve (the caller's tenant only).
    reuse: Option<u32>,
}

impl DeployQuery {
    /// The settings asked for; limits not given take the values of `d`.
    fn settings(self, d: Limits) -> PluginSettings {
        PluginSettings {
            mount: self.mount,
            models: self
                .models
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            limits: Limits {
                memory_bytes: self.memory_bytes.unwrap_or(d.memory_bytes),
                cpu_ms: self.cpu_ms.unwrap_or(d.cpu_ms),
                wall_ms: self.wall_ms.unwrap_or(d.wall_ms),
                max_concurrency: self.max_concurrency.unwrap_or(d.max_concurrency),
                max_request_bytes: self.max_request_bytes.unwrap_or(d.max_request_bytes),
                max_response_bytes: self.max_response_bytes.unwrap_or(d.max_response_bytes),
                ..d
            },
            // Outbound grants and secrets are the operator's, in the config or the watched
            // directory.
            allowed_outbound_hosts: Vec::new(),
            config: Default::default(),
            secrets: Default::default(),
            reuse: self.reuse,
        }
    }
}

async fn put_plugin(
    _: Admin,
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::bad_request(format!("bad deploy settings: {}", e.body_text())))?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body must be the plugin's .wasm component",
        ));
    }
    let mounted = state
        .registry
        .deploy(
            &name,
            body.to_vec().into(),
            query.settings(Limits::default()),
            Source::Api,
            None,
        )
        .await?;
    Ok((StatusCode::OK, Json(describe(&mounted))))
}

async fn delete_plugin(
    _: Admin,
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.remove(&name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollback(
    _: Admin,
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mounted = state.registry.rollback(&name).await?;
    Ok(Json(describe(&mounted)))
}

fn describe(m: &crate::registry::Mounted) -> Value {
    json!({
        "name": m.name,
        "version": m.plugin.manifest.version,
        "digest": m.plugin.digest,
        "mount": if m.mount.is_empty() { "/" } else { &m.mount },
        "routes": m.plugin.manifest.routes.iter().map(|r| format!("{} {}{}", r.method, m.mount, r.path.raw)).collect::<Vec<_>>(),
    })
}

/// A tenant's usage (requests, tokens, compute seconds) and the state of its limits.
async fn tenant_usage_admin(
    _: Admin,
    State(state): State<AdminState>,
    Path(tenant): Path<String>,
) -> Json<Value> {
    Json(state.quotas.report(&tenant, None).await)
}

/// The caller's own usage and limits, for its tenant and its key.
async fn tenant_usage(State(state): State<AdminState>, principal: Principal) -> Json<Value> {
    Json(
        state
            .quotas
            .report(&principal.tenant, Some(&principal.key_id))
            .await,
    )
}

async fn list_models(_: Admin, State(state): State<AdminState>) -> Json<Value> {
    Json(json!({"models": state.registry.models().await}))
}

async fn put_model(
    _: Admin,
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::unprocessable("model names are 1-128 characters"));
    }
    // The body is a `[[models]]` entry whose name comes from the path.
    let mut entry: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Some(fields) = entry.as_object_mut() else {
        return Err(ApiError::unprocessable("the body must be a JSON object"));
    };
    if fields
        .insert("name".into(), Value::String(name.clone()))
        .is_some()
    {
        return Err(ApiError::unprocessable(
            "the model's name comes from the path, not the body",
        ));
    }
    let config: ModelConfig = serde_json::from_value(entry)
        .map_err(|e| ApiError::unprocessable(format!("bad model settings: {e}")))?;
    if !config.path.is_file() {
        return Err(ApiError::unprocessable(format!(
            "no model file at {}",
            config.path.display()
        )));
    }
    state.registry.put_model(config).await?;
    Ok(Json(json!({"name": name, "status": "loaded"})))
}

async fn delete_model(
    _: Admin,
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.remove_model(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A caller of the tenant API: a credential with the `deploy` scope (or `*`), when tenant
/// deploys are enabled. A key scoped to calling plugins cannot change them.
pub struct TenantCaller(Principal);

/// The scope that lets a tenant's credential list, deploy, replace, roll back and remove the
/// tenant's plugins.
pub const DEPLOY_SCOPE: &str = "deploy";

impl<S> FromRequestParts<S> for TenantCaller
where
    S: Send + Sync,
    AdminState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !AdminState::from_ref(state).tenant_plugins.enabled {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "tenant plugin deploys are disabled on this host",
            ));
        }
        if !principal
            .scopes
            .iter()
            .any(|s| s == "*" || s == DEPLOY_SCOPE)
        {
            return Err(crate::auth::forbidden(format!(
                "managing the tenant's plugins needs scope `{DEPLOY_SCOPE}`"
            )));
        }
        Ok(TenantCaller(principal))
    }
}

pub fn tenant_routes<S>(max_upload_bytes: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    AdminState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    Router::new()
        .route("/tenant/usage", get(tenant_usage))
        .route("/tenant/plugins", get(tenant_list))
        .route(
            "/tenant/plugins/{name}",
            put(tenant_put).delete(tenant_delete),
        )
        .route("/tenant/plugins/{name}/rollback", post(tenant_rollback))
        .layer(DefaultBodyLimit::max(max_upload_bytes))
}

/// The registry name of a tenant's plugin: `{tenant}--{name}`.
fn namespaced(tenant: &str, name: &str) -> Result<String, ApiError> {
    use crate::registry::names::{SEGMENT_RULE, valid_segment};
    if !valid_segment(tenant) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this tenant's name cannot be used as a plugin namespace",
        ));
    }
    crate::registry::names::namespaced(tenant, name)
        .ok_or_else(|| ApiError::unprocessable(format!("plugin names are {SEGMENT_RULE}")))
}

/// The tenant's plugin, or 404: other tenants' plugins do not exist for it.
async fn owned(state: &AdminState, tenant: &str, name: &str) -> Result<String, ApiError> {
    let full = namespaced(tenant, name)?;
    if state.registry.owned_by(tenant).await.contains(&full) {
        Ok(full)
    } else {
        Err(ApiError::not_found(format!("you have no plugin `{name}`")))
    }
}

async fn tenant_list(
    TenantCaller(who): TenantCaller,
    State(state): State<AdminState>,
) -> Json<Value> {
    let plugins: Vec<_> = state
        .registry
        .plugins()
        .await
        .into_iter()
        .filter(|p| p.owner.as_deref() == Some(who.tenant.as_str()))
        .collect();
    Json(json!({"plugins": plugins}))
}

async fn tenant_put(
    TenantCaller(who): TenantCaller,
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::bad_request(format!("bad deploy settings: {}", e.body_text())))?;
    let policy = &state.tenant_plugins;
    let full = namespaced(&who.tenant, &name)?;
    if query.mount.is_some() {
        return Err(ApiError::unprocessable(format!(
            "tenant plugins are mounted at /t/{}/{name}; `mount` cannot be set",
            who.tenant
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body must be the plugin's .wasm component",
        ));
    }
    let d = Limits::default();
    let capped = Limits {
        memory_bytes: d.memory_bytes.min(policy.max_memory_bytes),
        cpu_ms: d.cpu_ms.min(policy.max_cpu_ms),
        wall_ms: d.wall_ms.min(policy.max_wall_ms),
        max_concurrency: d.max_concurrency.min(policy.max_concurrency),
        max_request_bytes: d.max_request_bytes.min(policy.max_request_bytes),
        max_response_bytes: d.max_response_bytes.min(policy.max_response_bytes),
        ..d
    };
    let mut settings = query.settings(capped);
    let l = &settings.limits;
    let p = policy;
    for (what, asked, max) in [
        ("memory_bytes", l.memory_bytes, p.max_memory_bytes),
        ("cpu_ms", l.cpu_ms as usize, p.max_cpu_ms as usize),
        ("wall_ms", l.wall_ms as usize, p.max_wall_ms as usize),
        ("max_concurrency", l.max_concurrency, p.max_concurrency),
        (
            "max_request_bytes",
            l.max_request_bytes,
            p.max_request_bytes,
        ),
        (
            "max_response_bytes",
            l.max_response_bytes,
            p.max_response_bytes,
        ),
    ] {
        if asked > max {
            return Err(ApiError::unprocessable(format!(
                "{what} = {asked} is above this host's limit for tenant plugins ({max})"
            )));
        }
    }
    if let Some(model) = settings.models.iter().find(|m| !policy.models.contains(m)) {
        return Err(ApiError::unprocessable(format!(
            "model `{model}` is not available to tenant plugins"
        )));
    }
    settings.mount = Some(format!("/t/{}/{name}", who.tenant));
    let mounted = state
        .registry
        .deploy_for_tenant(
            &full,
            body.to_vec().into(),
            settings,
            &who.tenant,
            policy.max_plugins,
        )
        .await?;
    Ok(Json(describe(&mounted)))
}

async fn tenant_delete(
    TenantCaller(who): TenantCaller,
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let full = owned(&state, &who.tenant, &name).await?;
    state.registry.remove(&full, Some(Source::Tenant)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tenant_rollback(
    TenantCaller(who): TenantCaller,
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let full = owned(&state, &who.tenant, &name).await?;
    let mounted = state.registry.rollback(&full).await?;
    Ok(Json(describe(&mounted)))
}
