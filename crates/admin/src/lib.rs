//! Administration of a Portcullis gateway over HTTP.
//!
//! Two APIs, merged into the gateway's router with [`router`]:
//!
//! - the admin REST API under `/api/v1` (users, service accounts, groups, API
//!   tokens, OAuth clients, grants, signing-key rotation), for administrators'
//!   API tokens with the `admin` scope, described by the OpenAPI document at
//!   `/api/v1/openapi.json`;
//! - the policy routes under `/api/v1/policies` and `/api/v1/approvals`
//!   (installed Cedar policies, API-managed policy documents validated before
//!   they are stored, "what would happen if" tests, and calls waiting for an
//!   approver), when the gateway runs a [`PolicyRuntime`];
//! - SCIM 2.0 provisioning under `/scim/v2` (RFC 7643 / RFC 7644), for tokens with
//!   the `scim` scope, so an IdP (Okta, Entra ID) creates, updates and
//!   deprovisions people and groups.
//!
//! Every change goes through the store, which records it in the identity change
//! feed; this process applies it before answering and other replicas follow the
//! feed. This crate does not authenticate browser users, issue OAuth tokens
//! (`portcullis-authserver`) or guard MCP traffic (`portcullis-gateway`), and it
//! never returns a secret except a new API token in its creation answer.

mod api;
mod audit_log;
mod scim;
mod wire;

pub use audit_log::{record_policy_reloads, sha256 as sha256_hex};
pub use wire::rfc3339;

use axum::extract::FromRef;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::Router;
use http::{header, HeaderValue};
use portcullis_identity::Identity;
use portcullis_policy::PolicyRuntime;
use std::sync::Arc;

/// What handlers share. Handlers take the part they need (`State<Arc<Identity>>`,
/// `State<Option<Arc<PolicyRuntime>>>`) through [`FromRef`].
#[derive(Clone)]
pub(crate) struct AdminState {
    identity: Arc<Identity>,
    /// `None` when the gateway runs without policy: the policy routes say so.
    policy: Option<Arc<PolicyRuntime>>,
}

impl FromRef<AdminState> for Arc<Identity> {
    fn from_ref(s: &AdminState) -> Self {
        s.identity.clone()
    }
}

impl FromRef<AdminState> for Option<Arc<PolicyRuntime>> {
    fn from_ref(s: &AdminState) -> Self {
        s.policy.clone()
    }
}

/// Routes that need no credential.
const PUBLIC_ROUTES: &[(&str, &str)] = &[("GET", "/api/v1/openapi.json")];

/// The OpenAPI 3.1 description of every route this crate serves.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        OPENAPI,
    )
}

fn public_endpoint(method: &str, path: &str) -> Option<MethodRouter<AdminState>> {
    match (method, path) {
        ("GET", "/api/v1/openapi.json") => Some(get(openapi)),
        _ => None,
    }
}

type Endpoint = fn(&str, &str) -> Option<MethodRouter<AdminState>>;

fn routes(table: &[(&str, &str)], endpoint: Endpoint) -> Router<AdminState> {
    let mut r = Router::new();
    for (method, path) in table {
        match endpoint(method, path) {
            Some(h) => r = r.route(path, h),
            None => tracing::error!(method, path, "route without a handler"),
        }
    }
    r
}

/// The admin API, SCIM and the OpenAPI document, with absolute paths. With
/// `policy: None` the policy and approval routes answer 404 `policy_disabled`.
pub fn router(identity: Arc<Identity>, policy: Option<Arc<PolicyRuntime>>) -> Router {
    let admin = routes(api::ROUTES, api::endpoint)
        .route_layer(from_fn_with_state(identity.clone(), api::guard));
    let scim = routes(scim::ROUTES, scim::endpoint)
        .route_layer(from_fn_with_state(identity.clone(), scim::guard));
    routes(PUBLIC_ROUTES, public_endpoint)
        .merge(admin)
        .merge(scim)
        .with_state(AdminState { identity, policy })
}

/// Every (method, path) [`router`] serves.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    PUBLIC_ROUTES
        .iter()
        .chain(api::ROUTES)
        .chain(scim::ROUTES)
        .copied()
        .collect()
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
