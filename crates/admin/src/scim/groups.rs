//! SCIM Groups. Membership is what virtual servers grant access by, so every
//! change applies to the members' open sessions at once.

use super::filter::get_ci;
use super::patch::apply_ops;
use super::{
    applied, base, check_text, created, list_query, meta, opt_str, projection, read_body, respond,
    Ctx, ScimError, ScimResult, GROUP_SCHEMA,
};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::Extension;
use http::{HeaderMap, StatusCode};
use portcullis_audit::Actor;
use portcullis_store::identity::GroupRow;
use portcullis_store::Store;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The SCIM form of a group; `members` is (user id, username).
fn render(g: &GroupRow, members: &[(String, String)], base: &str) -> Value {
    let mut r = json!({
        "schemas": [GROUP_SCHEMA],
        "id": g.id,
        "displayName": g.display_name,
        "members": members.iter().map(|(id, name)| json!({
            "value": id, "display": name, "$ref": format!("{base}/Users/{id}"), "type": "User",
        })).collect::<Vec<_>>(),
        "meta": meta("Group", format!("{base}/Groups/{}", g.id), g.created_at, g.updated_at),
    });
    if let Some(x) = &g.external_id {
        r["externalId"] = json!(x);
    }
    r
}

async fn usernames(store: &Store) -> Result<HashMap<String, String>, ScimError> {
    Ok(store
        .users(None)
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect())
}

async fn rendered(store: &Store, g: &GroupRow, base: &str) -> Result<Value, ScimError> {
    let names = usernames(store).await?;
    let members: Vec<(String, String)> = store
        .group_member_ids(&g.id)
        .await?
        .into_iter()
        .map(|id| {
            let n = names.get(&id).cloned().unwrap_or_default();
            (id, n)
        })
        .collect();
    Ok(render(g, &members, base))
}

async fn find(store: &Store, id: &str) -> Result<GroupRow, ScimError> {
    store
        .group(id)
        .await?
        .ok_or_else(|| ScimError::not_found(format!("Group {id:?} not found")))
}

fn display_name_of(res: &Value) -> Result<String, ScimError> {
    let n = opt_str(res, "displayName")?
        .ok_or_else(|| ScimError::invalid_value("displayName is required"))?;
    check_text("displayName", &n, 256)?;
    Ok(n)
}

fn external_id_of(res: &Value) -> Result<Option<String>, ScimError> {
    let x = opt_str(res, "externalId")?;
    if let Some(x) = &x {
        check_text("externalId", x, 256)?;
    }
    Ok(x)
}

/// Member user ids of a group body, deduplicated, each checked to exist.
async fn members_of(store: &Store, res: &Value) -> Result<Vec<String>, ScimError> {
    let items = match get_ci(res, "members") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ScimError::invalid_value("members must be an array")),
    };
    let mut ids: Vec<String> = Vec::with_capacity(items.len());
    for m in items {
        let id = opt_str(m, "value")?
            .ok_or_else(|| ScimError::invalid_value("each member needs a \"value\" (a User id)"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let known = usernames(store).await?;
    if let Some(missing) = ids.iter().find(|id| !known.contains_key(*id)) {
        return Err(ScimError::invalid_value(format!(
            "member {missing:?} is not a known User"
        )));
    }
    Ok(ids)
}

async fn check_unique(store: &Store, name: &str, except: Option<&str>) -> Result<(), ScimError> {
    if let Some(g) = store.group_by_name(name).await? {
        if Some(g.id.as_str()) != except {
            return Err(ScimError::uniqueness(format!(
                "displayName {name:?} is taken"
            )));
        }
    }
    Ok(())
}

pub async fn list(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ScimResult {
    let q = list_query(q.as_deref())?;
    let store = identity.store();
    let names = usernames(store).await?;
    let mut members: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (g, u) in store.all_memberships().await? {
        let n = names.get(&u).cloned().unwrap_or_default();
        members.entry(g).or_default().push((u, n));
    }
    let b = base(&identity);
    let all: Vec<Value> = store
        .groups()
        .await?
        .iter()
        .map(|g| render(g, members.get(&g.id).map(Vec::as_slice).unwrap_or(&[]), &b))
        .collect();
    Ok(super::list_response(all, &q))
}

/// `account.changed` for a provisioning operation on a group.
async fn record(identity: &Ctx, actor: &Actor, operation: &str, g: &GroupRow, extra: Value) {
    let mut detail = json!({"operation": operation, "via": "scim",
                            "group": {"id": g.id, "display_name": g.display_name,
                                      "external_id": g.external_id}});
    if let (Some(d), Value::Object(more)) = (detail.as_object_mut(), extra) {
        d.extend(more);
    }
    crate::audit_log::changed(identity, "account.changed", actor, detail).await;
}

fn membership_change(before: &[String], after: &[String]) -> Value {
    let added: Vec<&String> = after.iter().filter(|u| !before.contains(u)).collect();
    let removed: Vec<&String> = before.iter().filter(|u| !after.contains(u)).collect();
    json!({"added": added, "removed": removed})
}

pub async fn create(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> ScimResult {
    let res = read_body(&headers, body).await?;
    let name = display_name_of(&res)?;
    let external_id = external_id_of(&res)?;
    let store = identity.store();
    check_unique(store, &name, None).await?;
    let members = members_of(store, &res).await?;
    let group = store.create_group(&name, external_id.as_deref()).await?;
    if !members.is_empty() {
        store.change_members(&group.id, &members, &[]).await?;
    }
    applied(&identity).await;
    tracing::info!(group = %name, members = members.len(), "SCIM: group provisioned");
    let group = find(store, &group.id).await?;
    let change = membership_change(&[], &members);
    record(&identity, &actor, "group.provisioned", &group, change).await;
    Ok(created(&rendered(store, &group, &base(&identity)).await?))
}

pub async fn show(
    State(identity): State<Ctx>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ScimResult {
    let store = identity.store();
    let group = find(store, &id).await?;
    let r = rendered(store, &group, &base(&identity)).await?;
    Ok(respond(StatusCode::OK, &projection(q.as_deref()).apply(r)))
}

/// Store a group's new name, external id and members.
async fn save(
    identity: &Ctx,
    actor: &Actor,
    current: &GroupRow,
    name: String,
    external_id: Option<String>,
    members: Option<Vec<String>>,
) -> ScimResult {
    let store = identity.store();
    let mut changed = false;
    let mut extra = json!({});
    if name != current.display_name || (external_id.is_some() && external_id != current.external_id)
    {
        extra["renamed"] = json!(name != current.display_name);
        check_unique(store, &name, Some(&current.id)).await?;
        store
            .rename_group(&current.id, &name, external_id.as_deref())
            .await?;
        changed = true;
    }
    if let Some(m) = members {
        let now = store.group_member_ids(&current.id).await?;
        if now.len() != m.len() || m.iter().any(|x| !now.contains(x)) {
            store.set_members(&current.id, &m).await?;
            changed = true;
            if let (Some(e), Value::Object(ch)) =
                (extra.as_object_mut(), membership_change(&now, &m))
            {
                e.extend(ch);
            }
        }
    }
    if changed {
        applied(identity).await;
    }
    let group = find(store, &current.id).await?;
    if changed {
        record(identity, actor, "group.updated", &group, extra).await;
    }
    Ok(respond(
        StatusCode::OK,
        &rendered(store, &group, &base(identity)).await?,
    ))
}

pub async fn replace(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ScimResult {
    let res = read_body(&headers, body).await?;
    let store = identity.store();
    let current = find(store, &id).await?;
    let name = display_name_of(&res)?;
    let external_id = external_id_of(&res)?;
    let members = members_of(store, &res).await?;
    save(
        &identity,
        &actor,
        &current,
        name,
        external_id,
        Some(members),
    )
    .await
}

pub async fn patch(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ScimResult {
    let ops = read_body(&headers, body).await?;
    let store = identity.store();
    let current = find(store, &id).await?;
    let before = rendered(store, &current, &base(&identity)).await?;
    let mut after = before.clone();
    apply_ops(&mut after, &ops)?;
    let name = display_name_of(&after)?;
    let external_id = external_id_of(&after)?;
    let members = if get_ci(&after, "members") != get_ci(&before, "members") {
        Some(members_of(store, &after).await?)
    } else {
        None
    };
    save(&identity, &actor, &current, name, external_id, members).await
}

pub async fn remove(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ScimResult {
    let store = identity.store();
    let group = find(store, &id).await?;
    let members = store.group_member_ids(&id).await?;
    store.delete_group(&id).await?;
    applied(&identity).await;
    record(
        &identity,
        &actor,
        "group.deleted",
        &group,
        membership_change(&members, &[]),
    )
    .await;
    tracing::info!(group = %group.display_name, "SCIM: group deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
