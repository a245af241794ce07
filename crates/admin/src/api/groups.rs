//! Groups and their members. Virtual servers grant access to groups, so every
//! membership change takes effect on the users' open sessions at once.

use super::users::referenced_user;
use super::{applied, body, no_content, ok, query, text, ApiError, ApiResult, Ctx};
use crate::audit_log;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use portcullis_audit::Actor;
use portcullis_store::identity::GroupRow;
use portcullis_store::Store;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

fn group_json(g: &GroupRow, members: &[String]) -> Value {
    json!({
        "id": g.id,
        "display_name": g.display_name,
        "external_id": g.external_id,
        "members": members,
        "created_at": g.created_at,
        "updated_at": g.updated_at,
    })
}

async fn find_group(store: &Store, id: &str) -> Result<GroupRow, ApiError> {
    store
        .group(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no group with id {id:?}")))
}

/// Check every user id exists; duplicates are dropped.
async fn user_ids(store: &Store, field: &str, ids: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        referenced_user(store, field, id).await?;
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// `account.changed` for a group (membership decides access to virtual servers).
async fn record(identity: &Ctx, actor: &Actor, operation: &str, g: &GroupRow, extra: Value) {
    let mut detail = json!({"operation": operation, "via": "api",
                            "group": {"id": g.id, "display_name": g.display_name}});
    if let (Some(d), Value::Object(more)) = (detail.as_object_mut(), extra) {
        d.extend(more);
    }
    audit_log::changed(identity, "account.changed", actor, detail).await;
}

/// Who joined and who left, from the member lists before and after.
fn membership_change(before: &[String], after: &[String]) -> Value {
    let added: Vec<&String> = after.iter().filter(|u| !before.contains(u)).collect();
    let removed: Vec<&String> = before.iter().filter(|u| !after.contains(u)).collect();
    json!({"added": added, "removed": removed})
}

pub async fn list(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ApiResult {
    query(q.as_deref(), &[])?;
    let store = identity.store();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for (g, u) in store.all_memberships().await? {
        members.entry(g).or_default().push(u);
    }
    let items: Vec<Value> = store
        .groups()
        .await?
        .iter()
        .map(|g| group_json(g, members.get(&g.id).map(Vec::as_slice).unwrap_or(&[])))
        .collect();
    Ok(ok(StatusCode::OK, &json!({ "groups": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    display_name: String,
    external_id: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

pub async fn create(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: CreateGroup = body(&headers, b).await?;
    text("display_name", &req.display_name, 256)?;
    if let Some(e) = &req.external_id {
        text("external_id", e, 256)?;
    }
    let store = identity.store();
    if store.group_by_name(&req.display_name).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "group {:?} exists",
            req.display_name
        )));
    }
    let members = user_ids(store, "members", &req.members).await?;
    let group = store
        .create_group(&req.display_name, req.external_id.as_deref())
        .await?;
    if !members.is_empty() {
        store.change_members(&group.id, &members, &[]).await?;
    }
    applied(&identity).await;
    let group = find_group(store, &group.id).await?;
    let change = membership_change(&[], &members);
    record(&identity, &actor, "group.created", &group, change).await;
    Ok(ok(
        StatusCode::CREATED,
        &group_json(&group, &store.group_member_ids(&group.id).await?),
    ))
}

pub async fn show(State(identity): State<Ctx>, Path(id): Path<String>) -> ApiResult {
    let store = identity.store();
    let group = find_group(store, &id).await?;
    Ok(ok(
        StatusCode::OK,
        &group_json(&group, &store.group_member_ids(&id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    display_name: Option<String>,
    external_id: Option<String>,
}

pub async fn update(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: UpdateGroup = body(&headers, b).await?;
    if req.display_name.is_none() && req.external_id.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give display_name or external_id",
        ));
    }
    if let Some(n) = &req.display_name {
        text("display_name", n, 256)?;
    }
    if let Some(e) = &req.external_id {
        text("external_id", e, 256)?;
    }
    let store = identity.store();
    let group = find_group(store, &id).await?;
    let name = req.display_name.unwrap_or(group.display_name);
    if let Some(other) = store.group_by_name(&name).await? {
        if other.id != id {
            return Err(ApiError::conflict(format!("group {name:?} exists")));
        }
    }
    store
        .rename_group(&id, &name, req.external_id.as_deref())
        .await?;
    applied(&identity).await;
    let group = find_group(store, &id).await?;
    record(&identity, &actor, "group.updated", &group, json!({})).await;
    Ok(ok(
        StatusCode::OK,
        &group_json(&group, &store.group_member_ids(&id).await?),
    ))
}

pub async fn remove(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    let store = identity.store();
    let group = find_group(store, &id).await?;
    let members = store.group_member_ids(&id).await?;
    if !store.delete_group(&id).await? {
        return Err(ApiError::not_found(format!("no group with id {id:?}")));
    }
    applied(&identity).await;
    let change = membership_change(&members, &[]);
    record(&identity, &actor, "group.deleted", &group, change).await;
    Ok(no_content())
}

async fn member_list(store: &Store, group_id: &str) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for uid in store.group_member_ids(group_id).await? {
        if let Some(u) = store.user(&uid).await? {
            out.push(
                json!({"id": u.id, "username": u.username, "kind": u.kind, "active": u.active}),
            );
        }
    }
    Ok(json!({ "members": out }))
}

pub async fn members(State(identity): State<Ctx>, Path(id): Path<String>) -> ApiResult {
    let store = identity.store();
    find_group(store, &id).await?;
    Ok(ok(StatusCode::OK, &member_list(store, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceMembers {
    user_ids: Vec<String>,
}

pub async fn replace_members(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: ReplaceMembers = body(&headers, b).await?;
    let store = identity.store();
    let group = find_group(store, &id).await?;
    let members = user_ids(store, "user_ids", &req.user_ids).await?;
    let before = store.group_member_ids(&id).await?;
    store.set_members(&id, &members).await?;
    applied(&identity).await;
    let change = membership_change(&before, &members);
    record(&identity, &actor, "group.members_changed", &group, change).await;
    Ok(ok(StatusCode::OK, &member_list(store, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    user_id: String,
}

pub async fn add_member(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let req: AddMember = body(&headers, b).await?;
    let store = identity.store();
    let group = find_group(store, &id).await?;
    referenced_user(store, "user_id", &req.user_id).await?;
    let already = store.group_member_ids(&id).await?.contains(&req.user_id);
    if !already {
        store
            .change_members(&id, std::slice::from_ref(&req.user_id), &[])
            .await?;
        applied(&identity).await;
        let change = membership_change(&[], std::slice::from_ref(&req.user_id));
        record(&identity, &actor, "group.members_changed", &group, change).await;
    }
    let status = if already {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(ok(status, &member_list(store, &id).await?))
}

pub async fn remove_member(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult {
    let store = identity.store();
    let group = find_group(store, &id).await?;
    if !store.group_member_ids(&id).await?.contains(&user_id) {
        return Err(ApiError::not_found(format!(
            "user {user_id:?} is not a member of group {id:?}"
        )));
    }
    store
        .change_members(&id, &[], std::slice::from_ref(&user_id))
        .await?;
    applied(&identity).await;
    let change = membership_change(std::slice::from_ref(&user_id), &[]);
    record(&identity, &actor, "group.members_changed", &group, change).await;
    Ok(no_content())
}
