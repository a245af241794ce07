//! API tokens, OAuth clients, grants (token families) and signing keys. Secrets
//! and their hashes never appear here except the token in the one creation answer.

use super::users::referenced_user;
use super::{applied, body, no_content, ok, param, query, text, ApiError, ApiResult, Ctx};
use crate::audit_log::{self, who};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use portcullis_audit::{format_time, Actor};
use portcullis_identity::{accounts, now, Identity};
use portcullis_store::identity::{ApiTokenRow, ClientRow, UserRow};
use portcullis_store::identity_admin::GrantRow;
use serde::Deserialize;
use serde_json::{json, Map, Value};

fn status(revoked_at: Option<i64>, expires_at: Option<i64>) -> &'static str {
    if revoked_at.is_some() {
        "revoked"
    } else if expires_at.is_some_and(|e| e <= now()) {
        "expired"
    } else {
        "active"
    }
}

/// A token's metadata: never its secret or hash.
fn token_json(t: &ApiTokenRow) -> Value {
    let scopes: Vec<String> = serde_json::from_str(&t.scopes).unwrap_or_default();
    json!({
        "id": t.id,
        "user_id": t.user_id,
        "name": t.name,
        "scopes": scopes,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
        "status": status(t.revoked_at, t.expires_at),
    })
}

pub async fn list_tokens(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q.as_deref(), &["user_id"])?;
    let tokens = identity.store().api_tokens(param(&q, "user_id")).await?;
    let items: Vec<Value> = tokens.iter().map(token_json).collect();
    Ok(ok(StatusCode::OK, &json!({ "tokens": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    user_id: String,
    name: String,
    scopes: Vec<String>,
    expires_in_days: Option<u64>,
}

/// Scopes must be well-formed and name configured virtual servers.
pub fn check_scopes(identity: &Identity, scopes: &[String]) -> Result<(), ApiError> {
    accounts::check_scopes(scopes)?;
    for s in scopes {
        if let Some(vs) = s.strip_prefix("vs:") {
            if vs != "*" && identity.resource(vs).is_none() {
                return Err(ApiError::bad_request(format!(
                    "scope {s:?}: no virtual server named {vs:?}"
                )));
            }
        }
    }
    Ok(())
}

/// An API token as its audit records name it: id and metadata, never the secret.
pub(crate) fn token_detail(t: &ApiTokenRow, user: &UserRow) -> Value {
    let scopes: Vec<String> = serde_json::from_str(&t.scopes).unwrap_or_default();
    json!({
        "credential": if user.kind == "service" { "service_account_token" } else { "api_token" },
        "token_id": t.id,
        "name": t.name,
        "user": who(&user.id, &user.username, &user.kind),
        "scopes": scopes,
        "expires_at": t.expires_at.map(|e| format_time(e.saturating_mul(1_000_000))),
    })
}

pub async fn create_token(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: CreateToken = body(&headers, b).await?;
    text("name", &req.name, 128)?;
    check_scopes(&identity, &req.scopes)?;
    let store = identity.store();
    let user = referenced_user(store, "user_id", &req.user_id).await?;
    let (row, secret) = accounts::create_api_token(
        store,
        &user,
        &req.name,
        &req.scopes,
        req.expires_in_days,
        identity.settings.max_api_token_ttl_days,
    )
    .await?;
    applied(&identity).await;
    let mut detail = token_detail(&row, &user);
    detail["via"] = json!("api");
    audit_log::changed(&identity, "token.issued", &actor, detail).await;
    let mut v = token_json(&row);
    v["token"] = Value::String(secret);
    Ok(ok(StatusCode::CREATED, &v))
}

pub async fn revoke_token(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    let store = identity.store();
    let Some(t) = store.api_token(&id).await? else {
        return Err(ApiError::not_found(format!("no token with id {id:?}")));
    };
    if t.revoked_at.is_none() {
        store.revoke_api_token(&id).await?;
        applied(&identity).await;
        let mut detail = match store.user(&t.user_id).await? {
            Some(u) => token_detail(&t, &u),
            None => json!({"credential": "api_token", "token_id": t.id, "name": t.name,
                           "user": {"id": t.user_id}}),
        };
        detail["via"] = json!("api");
        detail["reason"] = json!("revoked_by_admin");
        audit_log::changed(&identity, "token.revoked", &actor, detail).await;
    }
    Ok(no_content())
}

/// A client's registration: never its secret hash; metadata without secrets.
fn client_json(c: &ClientRow) -> Value {
    let redirect_uris: Value =
        serde_json::from_str(&c.redirect_uris).unwrap_or(Value::Array(vec![]));
    let metadata = match serde_json::from_str::<Value>(&c.metadata) {
        Ok(Value::Object(m)) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.to_ascii_lowercase().contains("secret"))
                .collect::<Map<String, Value>>(),
        ),
        _ => Value::Object(Map::new()),
    };
    json!({
        "client_id": c.client_id,
        "kind": c.kind,
        "client_name": c.client_name,
        "redirect_uris": redirect_uris,
        "application_type": c.application_type,
        "auth_method": c.auth_method,
        "confidential": c.secret_hash.is_some(),
        "metadata": metadata,
        "created_at": c.created_at,
        "fetched_at": c.fetched_at,
    })
}

pub async fn list_clients(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ApiResult {
    query(q.as_deref(), &[])?;
    let clients = identity.store().clients().await?;
    let items: Vec<Value> = clients.iter().map(client_json).collect();
    Ok(ok(StatusCode::OK, &json!({ "clients": items })))
}

pub async fn delete_client(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(client_id): Path<String>,
) -> ApiResult {
    let name = identity
        .store()
        .client(&client_id)
        .await?
        .map(|c| c.client_name);
    if !identity.store().delete_client(&client_id).await? {
        return Err(ApiError::not_found(format!(
            "no client with id {client_id:?}"
        )));
    }
    applied(&identity).await;
    let detail = json!({"operation": "client.deleted", "via": "api", "client_id": client_id,
                        "client_name": name, "grants_revoked": true});
    audit_log::changed(&identity, "account.changed", &actor, detail).await;
    Ok(no_content())
}

fn grant_json(g: &GrantRow) -> Value {
    json!({
        "id": g.id,
        "user_id": g.user_id,
        "client_id": g.client_id,
        "resource": g.resource,
        "scope": g.scope,
        "created_at": g.created_at,
        "expires_at": g.expires_at,
        "revoked_at": g.revoked_at,
        "revoke_reason": g.revoke_reason,
        "status": status(g.revoked_at, Some(g.expires_at)),
    })
}

pub async fn list_grants(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q.as_deref(), &["user_id"])?;
    let grants = identity.store().grants(param(&q, "user_id")).await?;
    let items: Vec<Value> = grants.iter().map(grant_json).collect();
    Ok(ok(StatusCode::OK, &json!({ "grants": items })))
}

pub async fn revoke_grant(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    let store = identity.store();
    let Some(f) = store.family(&id).await? else {
        return Err(ApiError::not_found(format!("no grant with id {id:?}")));
    };
    if f.revoked_at.is_none() {
        store
            .revoke_family(&id, "revoked by an administrator")
            .await?;
        applied(&identity).await;
        let detail = json!({"credential": "grant", "grant_id": f.id, "user": {"id": f.user_id},
                            "client_id": f.client_id, "audience": f.resource,
                            "reason": "revoked_by_admin", "via": "api"});
        audit_log::changed(&identity, "token.revoked", &actor, detail).await;
    }
    Ok(no_content())
}

pub async fn rotate_keys(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    query(q.as_deref(), &[])?;
    let kid = accounts::rotate_signing_key(identity.store()).await?;
    applied(&identity).await;
    let detail = json!({"operation": "keys.rotated", "via": "api", "kid": kid});
    audit_log::changed(&identity, "keys.rotated", &actor, detail).await;
    Ok(ok(StatusCode::OK, &json!({ "kid": kid })))
}
