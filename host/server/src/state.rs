//! The state behind every handler, composed of what each concern owns. Handlers and layers take
//! only the part they need (`State<Arc<Auth>>`, `State<AdminState>`, ...) through [`FromRef`],
//! so no concern depends on this composition, and each can be read on its own.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::admin::{AdminState, TenantPluginsConfig};
use crate::auth::Auth;
use crate::auth::operator::{AdminKey, MetricsAccess};
use crate::pipeline::plugin::PluginRoutes;
use crate::quota::Quotas;
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// Cheap to clone (one reference count): axum clones the state for every handler call.
#[derive(Clone)]
pub struct AppState(Arc<Composed>);

struct Composed {
    parts: Parts,
    /// What the plugin path takes, made once: one reference count per request, not three.
    plugin_routes: Arc<PluginRoutes>,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let plugin_routes = Arc::new(PluginRoutes {
            registry: parts.registry.clone(),
            auth: parts.auth.clone(),
            quotas: parts.quotas.clone(),
        });
        Self(Arc::new(Composed {
            parts,
            plugin_routes,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0.parts
    }
}

pub struct Parts {
    /// What is deployed, and the snapshot requests are served from.
    pub registry: Arc<Registry>,
    /// Credentials and who may call what.
    pub auth: Arc<Auth>,
    /// The operator's credential.
    pub admin_key: Arc<AdminKey>,
    /// Who may read `/metrics`.
    pub metrics_access: Arc<MetricsAccess>,
    /// Rate limits and quotas.
    pub quotas: Arc<Quotas>,
    /// Request counts and latencies, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// What tenants may deploy themselves.
    pub tenant_plugins: Arc<TenantPluginsConfig>,
}

macro_rules! part {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(state: &AppState) -> Self {
                state.$field.clone()
            }
        })*
    };
}

part!(
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    admin_key: Arc<AdminKey>,
    metrics_access: Arc<MetricsAccess>,
    quotas: Arc<Quotas>,
    metrics: Arc<Metrics>,
    tenant_plugins: Arc<TenantPluginsConfig>,
);

impl FromRef<AppState> for Arc<PluginRoutes> {
    fn from_ref(state: &AppState) -> Self {
        state.0.plugin_routes.clone()
    }
}

impl FromRef<AppState> for AdminState {
    fn from_ref(state: &AppState) -> Self {
        AdminState {
            registry: state.registry.clone(),
            quotas: state.quotas.clone(),
            auth: state.auth.clone(),
            tenant_plugins: state.tenant_plugins.clone(),
        }
    }
}
