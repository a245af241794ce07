//! The OAuth 2.1 authorization server built into Portcullis (MCP authorization,
//! 2025-06-18 through 2026-07-28).
//!
//! It publishes RFC 8414 / OIDC discovery metadata, RFC 9728 protected-resource
//! metadata for each virtual server and the JWKS; runs the authorization-code flow
//! with PKCE S256 only, `resource` required (RFC 8707) and `iss` in every
//! authorization response (RFC 9207); knows clients by Client ID Metadata
//! Documents (fetched with SSRF protection) or Dynamic Client Registration; shows
//! a consent page before any redirect to a login; logs people in through the
//! company IdPs over OIDC or with a local password; and issues short-lived access
//! tokens with rotating refresh tokens. It does not check tokens on MCP requests
//! (`portcullis-identity` and the gateway do) and holds no hot-path state.

mod audit;
mod authorize;
mod clients;
mod idp;
mod metadata;
mod ssrf;
mod token;
mod web;

use axum::routing::{get, post};
use axum::Router;
use portcullis_identity::Identity;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) struct AuthServer {
    pub identity: Arc<Identity>,
    pub http: reqwest::Client,
    pub idps: idp::Idps,
    registrations: Mutex<(Instant, u32)>,
    /// Failed local logins per username: a window start and a count.
    failures: Mutex<std::collections::HashMap<String, (Instant, u32)>>,
}

/// Failed password attempts allowed per username and window.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW_SECS: u64 = 300;

impl AuthServer {
    pub fn issuer(&self) -> &str {
        self.identity.issuer()
    }

    pub fn secure_cookies(&self) -> bool {
        self.issuer().starts_with("https://")
    }

    /// Whether `username` may try a password now (brute-force brake).
    pub fn may_try_password(&self, username: &str) -> bool {
        let g = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        g.get(username).is_none_or(|(at, n)| {
            at.elapsed().as_secs() >= FAILURE_WINDOW_SECS || *n < MAX_FAILURES
        })
    }

    pub fn record_password_result(&self, username: &str, ok: bool) {
        let mut g = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            g.remove(username);
            return;
        }
        if g.len() > 100_000 {
            g.retain(|_, (at, _)| at.elapsed().as_secs() < FAILURE_WINDOW_SECS);
        }
        let e = g.entry(username.to_owned()).or_insert((Instant::now(), 0));
        if e.0.elapsed().as_secs() >= FAILURE_WINDOW_SECS {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// Global registration budget per minute (registration is unauthenticated).
    pub fn take_registration(&self) -> bool {
        let mut g = self.registrations.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.elapsed().as_secs() >= 60 {
            *g = (Instant::now(), 0);
        }
        if g.1 >= self.identity.settings.registration.per_minute {
            return false;
        }
        g.1 += 1;
        true
    }
}

/// Every route of the authorization server and the protected-resource metadata.
pub fn router(identity: Arc<Identity>) -> Router {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let idps = idp::Idps::new(&identity.settings.idps);
    let state = Arc::new(AuthServer {
        identity,
        http,
        idps,
        registrations: Mutex::new((Instant::now(), 0)),
        failures: Mutex::new(std::collections::HashMap::new()),
    });
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::root_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{vs}",
            get(metadata::protected_resource),
        )
        .route("/oauth/jwks", get(metadata::jwks))
        .route("/oauth/authorize", get(authorize::authorize))
        .route("/oauth/consent", post(authorize::consent))
        .route(
            "/oauth/local",
            get(authorize::local_form).post(authorize::local_login),
        )
        .route("/oauth/login/{idp}", get(idp::start))
        .route("/oauth/callback", get(idp::callback))
        .route("/oauth/token", post(token::token))
        .route("/oauth/revoke", post(token::revoke))
        .route("/oauth/register", post(clients::register))
        .route(
            "/login",
            get(authorize::account_form).post(authorize::account_login),
        )
        .with_state(state)
}
