//! Users and service accounts.

use super::{
    applied, body, email, no_content, nullable, ok, param, query, text, ApiError, ApiResult, Ctx,
};
use crate::audit_log::{self, who};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use portcullis_audit::Actor;
use portcullis_identity::{accounts, secrets, Principal};
use portcullis_store::identity::{NewUser, UserPatch, UserRow};
use portcullis_store::Store;
use serde::Deserialize;
use serde_json::{json, Value};

/// A user as the admin API shows it: never the password hash.
pub fn user_json(u: &UserRow) -> Value {
    json!({
        "id": u.id,
        "kind": u.kind,
        "username": u.username,
        "email": u.email,
        "display_name": u.display_name,
        "external_id": u.external_id,
        "idp": u.idp,
        "active": u.active,
        "is_admin": u.is_admin,
        "owner_id": u.owner_id,
        "has_password": u.password_hash.is_some(),
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    })
}

pub async fn find_user(store: &Store, id: &str) -> Result<UserRow, ApiError> {
    store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with id {id:?}")))
}

/// A user named in a request body (not the path): unknown is a 400.
pub async fn referenced_user(store: &Store, field: &str, id: &str) -> Result<UserRow, ApiError> {
    store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::bad_request(format!("{field}: no user with id {id:?}")))
}

pub async fn list(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q.as_deref(), &["kind"])?;
    let kind = param(&q, "kind");
    if let Some(k) = kind {
        if k != "user" && k != "service" {
            return Err(ApiError::bad_request(format!(
                "kind must be user or service, not {k:?}"
            )));
        }
    }
    let users = identity.store().users(kind).await?;
    let items: Vec<Value> = users.iter().map(user_json).collect();
    Ok(ok(StatusCode::OK, &json!({ "users": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    email: Option<String>,
    display_name: Option<String>,
    #[serde(default)]
    is_admin: bool,
    /// Makes a local (password) user; without it the user signs in through an IdP.
    password: Option<String>,
}

pub async fn create(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: CreateUser = body(&headers, b).await?;
    text("username", &req.username, 128)?;
    if let Some(e) = &req.email {
        email(e)?;
    }
    if let Some(d) = &req.display_name {
        text("display_name", d, 256)?;
    }
    let store = identity.store();
    if store.user_by_username(&req.username).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "username {:?} is taken",
            req.username
        )));
    }
    let password_hash = match req.password {
        Some(pw) => Some(hash(pw).await?),
        None => None,
    };
    let user = store
        .create_user(&NewUser {
            kind: "user".into(),
            username: req.username,
            email: req.email,
            display_name: req.display_name,
            idp: password_hash.as_ref().map(|_| "local".to_owned()),
            password_hash,
            is_admin: req.is_admin,
            ..Default::default()
        })
        .await?;
    applied(&identity).await;
    let detail = json!({"operation": "user.created", "via": "api",
                        "user": who(&user.id, &user.username, &user.kind),
                        "is_admin": user.is_admin, "local": user.password_hash.is_some()});
    audit_log::changed(&identity, "account.changed", &actor, detail).await;
    Ok(ok(StatusCode::CREATED, &user_json(&user)))
}

async fn hash(pw: String) -> Result<String, ApiError> {
    let n = pw.chars().count();
    if !(12..=1024).contains(&n) {
        return Err(ApiError::bad_request(
            "password must have 12 to 1024 characters",
        ));
    }
    tokio::task::spawn_blocking(move || secrets::hash_password(&pw))
        .await
        .map_err(|e| ApiError::bad_request(format!("password hashing failed: {e}")))?
        .map_err(|e| ApiError::bad_request(format!("password hashing failed: {e}")))
}

pub async fn show(State(identity): State<Ctx>, Path(id): Path<String>) -> ApiResult {
    let store = identity.store();
    let user = find_user(store, &id).await?;
    let groups: Vec<Value> = store
        .user_groups(&id)
        .await?
        .into_iter()
        .map(|(id, name)| json!({"id": id, "display_name": name}))
        .collect();
    let mut v = user_json(&user);
    v["groups"] = Value::Array(groups);
    Ok(ok(StatusCode::OK, &v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    active: Option<bool>,
    is_admin: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    display_name: Option<Option<String>>,
}

pub async fn update(
    State(identity): State<Ctx>,
    Extension(caller): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: UpdateUser = body(&headers, b).await?;
    if req.active.is_none()
        && req.is_admin.is_none()
        && req.email.is_none()
        && req.display_name.is_none()
    {
        return Err(ApiError::bad_request(
            "nothing to change: give active, is_admin, email or display_name",
        ));
    }
    if let Some(Some(e)) = &req.email {
        email(e)?;
    }
    if let Some(Some(d)) = &req.display_name {
        text("display_name", d, 256)?;
    }
    let store = identity.store();
    let before = find_user(store, &id).await?;
    if id == caller.user.id && (req.active == Some(false) || req.is_admin == Some(false)) {
        return Err(ApiError::bad_request(
            "refusing to disable or demote the account making this request",
        ));
    }
    let patch = UserPatch {
        email: req.email,
        display_name: req.display_name,
        active: req.active,
        is_admin: req.is_admin,
        ..Default::default()
    };
    let user = store
        .update_user(&id, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with id {id:?}")))?;
    applied(&identity).await;
    let operation = match (before.active, user.active) {
        (true, false) => "user.disabled",
        (false, true) => "user.enabled",
        _ => "user.updated",
    };
    let detail = json!({"operation": operation, "via": "api",
                        "user": who(&user.id, &user.username, &user.kind),
                        "changed": changed_fields(&before, &user)});
    audit_log::changed(&identity, "account.changed", &actor, detail).await;
    Ok(ok(StatusCode::OK, &user_json(&user)))
}

/// Which of the attributes the admin API edits differ (names and new values;
/// none is a secret).
fn changed_fields(before: &UserRow, after: &UserRow) -> Value {
    let mut out = serde_json::Map::new();
    if before.active != after.active {
        out.insert("active".into(), json!(after.active));
    }
    if before.is_admin != after.is_admin {
        out.insert("is_admin".into(), json!(after.is_admin));
    }
    if before.email != after.email {
        out.insert("email".into(), json!(after.email));
    }
    if before.display_name != after.display_name {
        out.insert("display_name".into(), json!(after.display_name));
    }
    Value::Object(out)
}

pub async fn remove(
    State(identity): State<Ctx>,
    Extension(caller): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    if id == caller.user.id {
        return Err(ApiError::bad_request(
            "refusing to delete the account making this request",
        ));
    }
    let store = identity.store();
    let user = find_user(store, &id).await?;
    if !store.delete_user(&id).await? {
        return Err(ApiError::not_found(format!("no user with id {id:?}")));
    }
    applied(&identity).await;
    let detail = json!({"operation": "user.deleted", "via": "api",
                        "user": who(&user.id, &user.username, &user.kind)});
    audit_log::changed(&identity, "account.changed", &actor, detail).await;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    name: String,
    /// User id or username of the person accountable for the account.
    owner: Option<String>,
}

pub async fn create_service_account(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: CreateServiceAccount = body(&headers, b).await?;
    text("name", &req.name, 128)?;
    let store = identity.store();
    let owner = match &req.owner {
        None => None,
        Some(o) => {
            let found = match store.user(o).await? {
                Some(u) => Some(u),
                None => store.user_by_username(o).await?,
            };
            let u = found.ok_or_else(|| ApiError::bad_request(format!("owner: no user {o:?}")))?;
            if u.kind != "user" || !u.active {
                return Err(ApiError::bad_request(format!(
                    "owner: {:?} must be an active person, not a service account or disabled user",
                    u.username
                )));
            }
            Some(u.id)
        }
    };
    if store.user_by_username(&req.name).await?.is_some() {
        return Err(ApiError::conflict(format!("name {:?} is taken", req.name)));
    }
    let sa = accounts::create_service_account(store, &req.name, owner.as_deref()).await?;
    applied(&identity).await;
    let detail = json!({"operation": "service_account.created", "via": "api",
                        "user": who(&sa.id, &sa.username, &sa.kind), "owner_id": sa.owner_id});
    audit_log::changed(&identity, "account.changed", &actor, detail).await;
    Ok(ok(StatusCode::CREATED, &user_json(&sa)))
}
