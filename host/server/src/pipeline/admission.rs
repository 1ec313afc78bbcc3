//! Quotas on the host's own endpoints (`/oauth/token`, `/admin/...`, `/tenant/...`, `/openapi.json`).
//!
//! A `[[limits.rules]]` entry whose `route` names one of them as the host routes it (for
//! example `route = "/oauth/token"` or `route = "/tenant/plugins/{name}"`) and that has no
//! `plugin` filter limits it like a plugin route, with the same answers (429 and `RateLimit-*`
//! headers). Only such rules apply there: the limits of tenants and keys stay with plugin calls.
//! A caller that presents a valid credential is counted under its tenant and key; anyone else
//! under its address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Auth;
use crate::error::current_request_id;
use crate::quota::{Quotas, Subject};

/// The layer's state.
#[derive(Clone)]
pub struct HostAdmission {
    pub quotas: Arc<Quotas>,
    pub auth: Arc<Auth>,
}

/// Longest a host endpoint holds a concurrency place.
const LEASE: Duration = Duration::from_secs(300);

pub async fn admit(State(host): State<HostAdmission>, request: Request, next: Next) -> Response {
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        return next.run(request).await;
    };
    if !host.quotas.limits_host_route(&route) {
        return next.run(request).await;
    }
    let principal = host.auth.authenticate(request.headers()).await.ok();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let admitted = host
        .quotas
        .admit(&Subject {
            tenant: principal.as_ref().map_or("", |p| &p.tenant),
            key_id: principal.as_ref().map_or("", |p| &p.key_id),
            ip: host.quotas.client_ip(peer, request.headers()),
            plugin: "",
            route: &route,
            key_limits: &[],
            tenant_limits: &[],
            request_id: &current_request_id(),
            lease: LEASE,
        })
        .await;
    match admitted {
        Ok(admission) => {
            let mut response = next.run(request).await;
            response.headers_mut().extend(admission.headers.clone());
            drop(admission);
            response
        }
        Err(refusal) => {
            let mut response = refusal.error.into_response();
            response.headers_mut().extend(refusal.headers);
            response
        }
    }
}
