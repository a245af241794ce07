//! The resource-server edge: every request to an MCP endpoint carries a bearer
//! token for that virtual server, checked on every request (not only at session
//! start). Failures answer 401/403 with the RFC 9728 challenge; streams end when
//! their principal loses access.

use crate::Gateway;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode};
use portcullis_identity::{AuthFailure, Credential, Identity, Principal};
use serde_json::json;
use std::sync::Arc;

/// The virtual server a request path addresses, if any.
fn vs_of<'a>(gw: &'a Gateway, path: &'a str) -> Option<&'a str> {
    match path {
        "/mcp" | "/sse" | "/messages" => gw.default_vs.as_deref(),
        _ => {
            let rest = path.strip_prefix("/mcp/")?;
            Some(rest.split('/').next().unwrap_or(rest))
        }
    }
}

pub(crate) async fn require_token(
    State(gw): State<Arc<Gateway>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(identity) = gw.identity.clone() else {
        return next.run(req).await;
    };
    let Some(vs) = vs_of(&gw, req.uri().path()).map(str::to_owned) else {
        return next.run(req).await;
    };
    if identity.resource(&vs).is_none() {
        // Unknown virtual server: the handler answers 404.
        return next.run(req).await;
    }
    let authz = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match identity.authenticate(authz, &vs) {
        Ok(p) => p,
        Err(why) => {
            tracing::info!(virtual_server = %vs, reason = %why, "request refused");
            // A request without any credential is how every OAuth client
            // discovers the authorization server: only refused credentials
            // are invalid access attempts worth a record.
            if authz.is_some() {
                record_refusal(&gw, &req, &vs, &why);
            }
            return challenge(&identity, &vs, &why);
        }
    };
    let ip = peer(&req);
    req.extensions_mut().insert(principal.clone());
    req.extensions_mut().insert(crate::govern::Who {
        principal: principal.clone(),
        ip,
    });
    let resp = next.run(req).await;
    let streaming = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !streaming {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let lost = lost_access(identity, principal, vs);
    let guarded = body.into_data_stream().take_until(lost);
    Response::from_parts(parts, Body::from_stream(guarded))
}

fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// An `auth.rejected` security event, written without holding up the refusal.
fn record_refusal(gw: &Gateway, req: &Request, vs: &str, why: &AuthFailure) {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let actor = portcullis_audit::Actor {
        kind: "anonymous".into(),
        ip: peer(req).map(|ip| ip.to_string()),
        user_agent: header(http::header::USER_AGENT).map(|v| v.chars().take(256).collect()),
        ..Default::default()
    };
    let event = portcullis_audit::AuditEvent::security(
        "auth.rejected",
        Some(actor),
        json!({
            "reason": why.to_string(),
            "status": if why.is_forbidden() { 403 } else { 401 },
            "path": req.uri().path(),
        }),
    )
    .with_target(portcullis_audit::Target {
        virtual_server: Some(vs.to_owned()),
        ..Default::default()
    });
    gw.auditor.record_detached(event);
}

/// Resolves when the principal no longer may use `vs` (token revoked, user
/// disabled or removed from the group that granted access).
async fn lost_access(identity: Arc<Identity>, p: Principal, vs: String) {
    let expires = match &p.credential {
        Credential::Access(c) => Some(c.exp),
        Credential::ApiToken(t) => t.expires_at,
    };
    let left = expires
        .map(|e| (e - portcullis_identity::now()).max(0) as u64)
        .unwrap_or(10 * 365 * 86_400);
    let expiry = tokio::time::sleep(std::time::Duration::from_secs(left));
    tokio::pin!(expiry);
    let mut changes = p.user.changes.subscribe();
    loop {
        tokio::select! {
            _ = &mut expiry => {
                tracing::info!(virtual_server = %vs, user = %p.user.username, "closing stream: credential expired");
                return;
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    // The user vanished from the view entirely.
                    return;
                }
                if !identity.still_allowed(&p, &vs) {
                    tracing::info!(virtual_server = %vs, user = %p.user.username, "closing stream: access revoked");
                    return;
                }
            }
        }
    }
}

fn challenge(identity: &Identity, vs: &str, why: &AuthFailure) -> Response {
    let metadata = identity.resource_metadata_url(vs);
    let mut value = format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp\"");
    if let Some(err) = why.oauth_error() {
        value.push_str(&format!(", error=\"{err}\", error_description=\"{why}\""));
    }
    let status = if why.is_forbidden() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let body = json!({
        "error": why.oauth_error().unwrap_or("invalid_request"),
        "error_description": why.to_string(),
    });
    let mut r = crate::http::json_response(status, &body);
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Session owner key of a request's principal (`None` with authentication off).
pub(crate) fn owner(p: &Option<axum::Extension<Principal>>) -> Option<&str> {
    p.as_ref().map(|e| e.0.subject())
}
