//! The token endpoint: authorization-code redemption (PKCE S256, exact redirect
//! URI, one use only) and refresh-token rotation with reuse detection; and RFC 7009
//! revocation.

use crate::audit::{self, Origin};
use crate::clients;
use crate::web::{json, oauth_error, parse_form, MAX_BODY};
use crate::AuthServer;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use portcullis_audit::AuditEvent;
use portcullis_identity::secrets;
use portcullis_store::identity::{new_id, FamilyRow, Redeemed, Rotated};
use serde_json::json as j;
use std::collections::HashMap;
use std::sync::Arc;

fn invalid_grant(why: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
}

fn server_error() -> Response {
    oauth_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the token could not be issued",
    )
}

/// Read a token-endpoint form and authenticate the client that sent it.
async fn authenticated_form(
    s: &AuthServer,
    headers: &HeaderMap,
    body: Body,
) -> Result<(HashMap<String, String>, clients::Client), Response> {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Err(oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "request too large",
        ));
    };
    let f = parse_form(&bytes);
    let client = clients::authenticate(s, headers, &f).await?;
    Ok((f, client))
}

pub(crate) async fn token(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    origin: Origin,
    body: Body,
) -> Response {
    let (f, client) = match authenticated_form(&s, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let get = |k: &str| f.get(k).filter(|v| !v.is_empty());
    match get("grant_type").map(String::as_str) {
        Some("authorization_code") => {}
        Some("refresh_token") => {
            return refresh(&s, &client, get("refresh_token"), get("resource"), &origin).await
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )
        }
    }
    let (Some(code), Some(verifier)) = (get("code"), get("code_verifier")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code and code_verifier are required",
        );
    };
    let code_hash = secrets::digest_hex(code);
    let c = match s.identity.store().redeem_code(&code_hash).await {
        Ok(Redeemed::Fresh(c)) => c,
        Ok(Redeemed::Replayed { family_id }) => {
            tracing::warn!(client_id = %client.client_id, "authorization code replayed; its grant is revoked");
            let _ = s.identity.refresh().await;
            let detail = j!({"credential": "grant", "grant_id": family_id,
                             "reason": "authorization_code_replayed", "client_id": client.client_id});
            let actor = audit::anonymous(&origin, Some(&client.client_id));
            audit::note(&s, "token.revoked", actor, detail).await;
            return invalid_grant("authorization code already used");
        }
        Ok(Redeemed::Unknown) => return invalid_grant("unknown authorization code"),
        Err(_) => return server_error(),
    };
    if c.client_id != client.client_id {
        return invalid_grant("the code was issued to another client");
    }
    if c.expires_at < portcullis_identity::now() {
        return invalid_grant("authorization code expired");
    }
    if get("redirect_uri").map(String::as_str) != Some(c.redirect_uri.as_str()) {
        return invalid_grant("redirect_uri does not match the authorization request");
    }
    let computed = secrets::pkce_challenge(verifier);
    if !secrets::same(computed.as_bytes(), c.code_challenge.as_bytes()) {
        return invalid_grant(
            "PKCE verification failed: code_verifier does not match code_challenge",
        );
    }
    if let Some(r) = get("resource") {
        if s.identity.resource_by_uri(r).map(|x| x.uri.as_str()) != Some(c.resource.as_str()) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource differs from the authorization request",
            );
        }
    }
    let now = portcullis_identity::now();
    let family = FamilyRow {
        id: new_id(),
        user_id: c.user_id.clone(),
        client_id: c.client_id.clone(),
        resource: c.resource.clone(),
        scope: c.scope.clone(),
        created_at: now,
        expires_at: now + s.identity.settings.refresh_token_ttl_secs as i64,
        revoked_at: None,
    };
    let refresh = secrets::random_token(secrets::REFRESH_PREFIX);
    if s.identity
        .store()
        .open_family(&family, Some(&code_hash), &secrets::digest_hex(&refresh))
        .await
        .is_err()
    {
        return server_error();
    }
    issue(&s, &family, refresh, "authorization_code", &client, &origin).await
}

/// Sign the access token and answer, once `token.issued` is recorded (a token
/// the log cannot record is not handed out while the log fails closed).
async fn issue(
    s: &AuthServer,
    f: &FamilyRow,
    refresh: String,
    grant_type: &str,
    client: &clients::Client,
    origin: &Origin,
) -> Response {
    match s
        .identity
        .mint_access(&f.user_id, &f.client_id, &f.resource, &f.scope, &f.id)
    {
        Ok((access, exp)) => {
            let detail = j!({
                "credential": "oauth_access_token",
                "grant_type": grant_type,
                "client_id": f.client_id,
                "client_name": client.name,
                "scope": f.scope,
                "audience": f.resource,
                "virtual_server": s.identity.resource_by_uri(&f.resource).map(|r| r.vs.clone()),
                "jti": audit::claims_of(&access).map(|c| c.jti),
                "grant_id": f.id,
                "expires_at": portcullis_audit::format_time(exp.saturating_mul(1_000_000)),
                "refresh_token_rotated": true,
            });
            let actor = audit::user(s, &f.user_id, None, "oauth", Some(&f.client_id), origin);
            let event = AuditEvent::security("token.issued", Some(actor), detail);
            if !audit::record(s, event).await {
                return oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the token cannot be recorded in the audit log right now",
                );
            }
            json(
                StatusCode::OK,
                &j!({
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": exp - portcullis_identity::now(),
                    "refresh_token": refresh,
                    "scope": f.scope,
                }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "signing an access token failed");
            server_error()
        }
    }
}

async fn refresh(
    s: &AuthServer,
    client: &clients::Client,
    token: Option<&String>,
    resource: Option<&String>,
    origin: &Origin,
) -> Response {
    let Some(token) = token else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let next = secrets::random_token(secrets::REFRESH_PREFIX);
    let rotated = s
        .identity
        .store()
        .rotate_refresh(&secrets::digest_hex(token), &secrets::digest_hex(&next))
        .await;
    let family = match rotated {
        Ok(Rotated::Fresh(f)) => f,
        Ok(Rotated::Reused { family_id }) => {
            tracing::warn!(client_id = %client.client_id, family = %family_id, "refresh token reused; the grant is revoked");
            let _ = s.identity.refresh().await;
            let detail = j!({"credential": "grant", "grant_id": family_id,
                             "reason": "refresh_token_reused", "client_id": client.client_id});
            let actor = audit::anonymous(origin, Some(&client.client_id));
            audit::note(s, "token.revoked", actor, detail).await;
            return invalid_grant("refresh token already used; the grant has been revoked");
        }
        Ok(Rotated::Revoked) => return invalid_grant("the grant has been revoked or has expired"),
        Ok(Rotated::Unknown) => return invalid_grant("unknown refresh token"),
        Err(_) => return server_error(),
    };
    if family.client_id != client.client_id {
        // Rotation already happened; revoke so a stolen token cannot be laundered.
        let _ = s
            .identity
            .store()
            .revoke_family(&family.id, "refresh token presented by another client")
            .await;
        let _ = s.identity.refresh().await;
        let detail = j!({"credential": "grant", "grant_id": family.id,
                         "reason": "refresh_token_presented_by_another_client",
                         "client_id": client.client_id, "grant_client_id": family.client_id});
        let actor = audit::anonymous(origin, Some(&client.client_id));
        audit::note(s, "token.revoked", actor, detail).await;
        return invalid_grant("the refresh token was issued to another client");
    }
    if let Some(r) = resource {
        if s.identity.resource_by_uri(r).map(|x| x.uri.as_str()) != Some(family.resource.as_str()) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource differs from the original grant",
            );
        }
    }
    let active = s.identity.user(&family.user_id).is_some_and(|u| u.active);
    if !active {
        return invalid_grant("the account is disabled");
    }
    issue(s, &family, next, "refresh_token", client, origin).await
}

/// RFC 7009: revoke a refresh token (its whole grant) or an access token (its
/// grant too: access tokens name the grant they belong to).
pub(crate) async fn revoke(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    origin: Origin,
    body: Body,
) -> Response {
    let (f, client) = match authenticated_form(&s, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(token) = f.get("token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let store = s.identity.store();
    let kind = if token.starts_with(secrets::REFRESH_PREFIX) {
        "refresh_token"
    } else {
        "access_token"
    };
    let family = if token.starts_with(secrets::REFRESH_PREFIX) {
        store
            .family_of_refresh(&secrets::digest_hex(token))
            .await
            .ok()
            .flatten()
    } else {
        let claims = token.split('.').nth(1).and_then(|p| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()?;
            serde_json::from_slice::<portcullis_identity::AccessClaims>(&raw).ok()
        });
        // Only a token this client holds can be revoked by it; the signature is
        // not needed for that (a forged token names a grant the client owns or
        // the check below fails).
        claims
            .filter(|c| c.client_id == client.client_id)
            .map(|c| c.sid)
    };
    if let Some(fid) = family {
        let owned = store
            .families(None)
            .await
            .ok()
            .and_then(|fs| fs.into_iter().find(|x| x.id == fid))
            .filter(|x| x.client_id == client.client_id);
        if let Some(grant) = owned {
            let _ = store.revoke_family(&fid, "revoked by the client").await;
            let _ = s.identity.refresh().await;
            if grant.revoked_at.is_none() {
                let detail = j!({"credential": "grant", "grant_id": fid, "presented": kind,
                                 "reason": "revoked_by_client", "via": "rfc7009",
                                 "client_id": client.client_id});
                let actor = audit::user(
                    &s,
                    &grant.user_id,
                    None,
                    "oauth",
                    Some(&client.client_id),
                    &origin,
                );
                audit::note(&s, "token.revoked", actor, detail).await;
            }
        }
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    json(StatusCode::OK, &j!({}))
}
