//! Security events of the authorization server in the audit log: logins and
//! failed logins, tokens issued and revoked (by clients and automatically),
//! clients registered. Records name credentials by id (`jti`, grant id) only:
//! never a password, token, code, client secret or PKCE verifier.
//!
//! Records are written durably before the answer. When one cannot be written
//! and the log fails closed (`audit.on_failure: closed`), what was about to be
//! granted (a login, a token) is refused; what already happened (a
//! revocation, a failed login) is answered as usual and the loss is logged.

use crate::AuthServer;
use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use portcullis_audit::{Actor, AuditEvent};
use portcullis_identity::AccessClaims;
use portcullis_store::identity::UserRow;
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;

/// Where a request came from: the peer address and the `User-Agent`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Origin, Infallible> {
        Ok(Origin {
            ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect()),
        })
    }
}

/// Longest attempted username kept in a record (people paste passwords there).
const MAX_ATTEMPTED: usize = 128;

/// A username someone tried, bounded, for `auth.login_failed`.
pub(crate) fn attempted(username: &str) -> String {
    username.chars().take(MAX_ATTEMPTED).collect()
}

/// Nobody authenticated yet: a login attempt, a client at the token endpoint.
pub(crate) fn anonymous(origin: &Origin, client_id: Option<&str>) -> Actor {
    Actor {
        kind: "anonymous".into(),
        client_id: client_id.map(str::to_owned),
        ip: origin.ip.clone(),
        user_agent: origin.user_agent.clone(),
        ..Default::default()
    }
}

/// A person or service account, with their groups as the identity view has
/// them, authenticated by `method` (`password`, `oidc`, `oauth`).
pub(crate) fn user(
    s: &AuthServer,
    user_id: &str,
    username: Option<&str>,
    method: &str,
    client_id: Option<&str>,
    origin: &Origin,
) -> Actor {
    let view = s.identity.user(user_id);
    let kind = match view.as_ref().map(|v| v.kind.as_str()) {
        Some("service") => "service",
        _ => "user",
    };
    Actor {
        kind: kind.into(),
        id: Some(user_id.to_owned()),
        username: view
            .as_ref()
            .map(|v| v.username.clone())
            .or_else(|| username.map(str::to_owned)),
        groups: view.as_ref().map(|v| v.groups.clone()).unwrap_or_default(),
        auth_method: Some(method.into()),
        client_id: client_id.map(str::to_owned),
        ip: origin.ip.clone(),
        user_agent: origin.user_agent.clone(),
        ..Default::default()
    }
}

/// The actor for a person who just signed in.
pub(crate) fn signed_in(
    s: &AuthServer,
    u: &UserRow,
    method: &str,
    client_id: Option<&str>,
    origin: &Origin,
) -> Actor {
    user(s, &u.id, Some(&u.username), method, client_id, origin)
}

/// Write `event` durably. `false` when it could not be written and the log
/// fails closed: the caller must then refuse what it was about to grant.
pub(crate) async fn record(s: &AuthServer, event: AuditEvent) -> bool {
    let audit = s.identity.audit();
    match audit.record(event).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "security event not written to the audit log");
            !audit.fails_closed()
        }
    }
}

/// Record a security event whose outcome does not depend on the record (a
/// refusal, a revocation that already happened).
pub(crate) async fn note(s: &AuthServer, event_type: &str, actor: Actor, detail: Value) {
    let _ = record(s, AuditEvent::security(event_type, Some(actor), detail)).await;
}

/// The claims of an access token this server just signed (to name it by
/// `jti` in the record).
pub(crate) fn claims_of(token: &str) -> Option<AccessClaims> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}
