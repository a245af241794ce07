//! SCIM Users. Provisioned people get `idp = "scim"` and keep the IdP's
//! `externalId`; their `userName` is the username an IdP login matches later.
//! Service accounts and local (password) users are not SCIM resources and stay
//! invisible here, so an IdP can neither rename nor lock out the break-glass
//! administrators the CLI creates; their usernames still count for uniqueness.

use super::filter::get_ci;
use super::patch::apply_ops;
use super::{
    applied, base, check_text, created, list_query, meta, opt_str, projection, read_body, respond,
    Ctx, ScimError, ScimResult, USER_SCHEMA,
};
use crate::audit_log::{self, who};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::Extension;
use http::{HeaderMap, StatusCode};
use portcullis_audit::Actor;
use portcullis_store::identity::{NewUser, UserPatch, UserRow};
use portcullis_store::Store;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The SCIM form of a user; `groups` is (id, display name).
pub fn render(u: &UserRow, groups: &[(String, String)], base: &str) -> Value {
    let mut r = json!({
        "schemas": [USER_SCHEMA],
        "id": u.id,
        "userName": u.username,
        "active": u.active,
        "groups": groups.iter().map(|(id, name)| json!({
            "value": id, "display": name, "$ref": format!("{base}/Groups/{id}"), "type": "direct",
        })).collect::<Vec<_>>(),
        "meta": meta("User", format!("{base}/Users/{}", u.id), u.created_at, u.updated_at),
    });
    if let Some(x) = &u.external_id {
        r["externalId"] = json!(x);
    }
    if let Some(d) = &u.display_name {
        r["displayName"] = json!(d);
        r["name"] = json!({ "formatted": d });
    }
    if let Some(e) = &u.email {
        r["emails"] = json!([{ "value": e, "type": "work", "primary": true }]);
    }
    r
}

/// What a SCIM User body says about the fields Portcullis stores.
#[derive(Debug, PartialEq)]
struct Fields {
    username: String,
    display_name: Option<String>,
    email: Option<String>,
    external_id: Option<String>,
    active: Option<bool>,
}

fn username_of(res: &Value) -> Result<String, ScimError> {
    let u = opt_str(res, "userName")?
        .ok_or_else(|| ScimError::invalid_value("userName is required"))?;
    check_text("userName", &u, 128)?;
    Ok(u)
}

fn name_display(res: &Value) -> Result<Option<String>, ScimError> {
    let Some(name) = get_ci(res, "name").filter(|n| !n.is_null()) else {
        return Ok(None);
    };
    if !name.is_object() {
        return Err(ScimError::invalid_value("name must be an object"));
    }
    if let Some(f) = opt_str(name, "formatted")? {
        return Ok(Some(f));
    }
    let parts: Vec<String> = [opt_str(name, "givenName")?, opt_str(name, "familyName")?]
        .into_iter()
        .flatten()
        .collect();
    Ok((!parts.is_empty()).then(|| parts.join(" ")))
}

fn display_of(res: &Value) -> Result<Option<String>, ScimError> {
    let d = match opt_str(res, "displayName")? {
        Some(d) => Some(d),
        None => name_display(res)?,
    };
    if let Some(d) = &d {
        check_text("displayName", d, 256)?;
    }
    Ok(d)
}

/// The primary email, else the first.
fn email_of(res: &Value) -> Result<Option<String>, ScimError> {
    let emails = match get_ci(res, "emails") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ScimError::invalid_value("emails must be an array")),
    };
    let primary = |e: &&Value| {
        matches!(get_ci(e, "primary"), Some(Value::Bool(true)))
            || get_ci(e, "primary")
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("true"))
    };
    let Some(chosen) = emails.iter().find(primary).or_else(|| emails.first()) else {
        return Ok(None);
    };
    let v = opt_str(chosen, "value")?;
    if let Some(v) = &v {
        check_text("emails.value", v, 254)?;
    }
    Ok(v)
}

/// `active`, as a boolean or the strings Entra sends ("True"/"False").
fn active_of(res: &Value) -> Result<Option<bool>, ScimError> {
    match get_ci(res, "active") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(ScimError::invalid_value(format!(
            "active must be a boolean, not {other}"
        ))),
    }
}

fn fields(res: &Value) -> Result<Fields, ScimError> {
    let external_id = opt_str(res, "externalId")?;
    if let Some(x) = &external_id {
        check_text("externalId", x, 256)?;
    }
    Ok(Fields {
        username: username_of(res)?,
        display_name: display_of(res)?,
        email: email_of(res)?,
        external_id,
        active: active_of(res)?,
    })
}

/// The store changes a PATCH made, comparing the rendered user before and after.
fn patch_changes(before: &Value, after: &Value, current: &UserRow) -> Result<UserPatch, ScimError> {
    let mut p = UserPatch::default();
    let username = opt_str(after, "userName")?
        .ok_or_else(|| ScimError::mutability("userName cannot be removed"))?;
    if username != current.username {
        p.username = Some(username_of(after)?);
    }
    let display = if opt_str(after, "displayName")? != opt_str(before, "displayName")? {
        display_of(after)?
    } else if get_ci(after, "name") != get_ci(before, "name") {
        let formatted = |r: &Value| {
            get_ci(r, "name")
                .and_then(|n| get_ci(n, "formatted"))
                .cloned()
        };
        if formatted(after) != formatted(before) || current.display_name.is_none() {
            name_display(after)?
        } else {
            current.display_name.clone()
        }
    } else {
        current.display_name.clone()
    };
    if display != current.display_name {
        if let Some(d) = &display {
            check_text("displayName", d, 256)?;
        }
        p.display_name = Some(display);
    }
    let email = email_of(after)?;
    if email != current.email {
        p.email = Some(email);
    }
    let external_id = opt_str(after, "externalId")?;
    if external_id != current.external_id {
        p.external_id = Some(external_id);
    }
    if let Some(a) = active_of(after)? {
        if a != current.active {
            p.active = Some(a);
        }
    }
    Ok(p)
}

fn is_empty(p: &UserPatch) -> bool {
    p.username.is_none()
        && p.email.is_none()
        && p.display_name.is_none()
        && p.external_id.is_none()
        && p.active.is_none()
        && p.is_admin.is_none()
        && p.password_hash.is_none()
}

/// Whether SCIM manages this user: people, except local (password) accounts.
fn managed(u: &UserRow) -> bool {
    u.kind == "user" && u.idp.as_deref() != Some("local")
}

/// A SCIM-visible user.
async fn find(store: &Store, id: &str) -> Result<UserRow, ScimError> {
    store
        .user(id)
        .await?
        .filter(managed)
        .ok_or_else(|| ScimError::not_found(format!("User {id:?} not found")))
}

/// userName is unique regardless of case (RFC 7643: caseExact false).
async fn check_unique(
    store: &Store,
    username: &str,
    except: Option<&str>,
) -> Result<(), ScimError> {
    let taken = store
        .users(None)
        .await?
        .into_iter()
        .any(|u| u.username.eq_ignore_ascii_case(username) && Some(u.id.as_str()) != except);
    if taken {
        return Err(ScimError::uniqueness(format!(
            "userName {username:?} is taken"
        )));
    }
    Ok(())
}

async fn rendered(store: &Store, u: &UserRow, base: &str) -> Result<Value, ScimError> {
    Ok(render(u, &store.user_groups(&u.id).await?, base))
}

pub async fn list(State(identity): State<Ctx>, RawQuery(q): RawQuery) -> ScimResult {
    let q = list_query(q.as_deref())?;
    let store = identity.store();
    let names: HashMap<String, String> = store
        .groups()
        .await?
        .into_iter()
        .map(|g| (g.id, g.display_name))
        .collect();
    let mut groups: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (g, u) in store.all_memberships().await? {
        if let Some(n) = names.get(&g) {
            groups.entry(u).or_default().push((g, n.clone()));
        }
    }
    let b = base(&identity);
    let all: Vec<Value> = store
        .users(Some("user"))
        .await?
        .iter()
        .filter(|u| managed(u))
        .map(|u| render(u, groups.get(&u.id).map(Vec::as_slice).unwrap_or(&[]), &b))
        .collect();
    Ok(super::list_response(all, &q))
}

/// `account.changed` for a provisioning operation on `u`.
async fn record(identity: &Ctx, actor: &Actor, operation: &str, u: &UserRow, changed: Value) {
    let detail = json!({"operation": operation, "via": "scim",
                        "user": who(&u.id, &u.username, &u.kind),
                        "external_id": u.external_id, "active": u.active, "changed": changed});
    audit_log::changed(identity, "account.changed", actor, detail).await;
}

/// The names of the attributes a patch changes (not their values).
fn changed_names(p: &UserPatch) -> Value {
    let names: Vec<&str> = [
        ("userName", p.username.is_some()),
        ("emails", p.email.is_some()),
        ("displayName", p.display_name.is_some()),
        ("externalId", p.external_id.is_some()),
        ("active", p.active.is_some()),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(n, _)| n)
    .collect();
    json!(names)
}

pub async fn create(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> ScimResult {
    let res = read_body(&headers, body).await?;
    let f = fields(&res)?;
    let store = identity.store();
    check_unique(store, &f.username, None).await?;
    let mut user = store
        .create_user(&NewUser {
            kind: "user".into(),
            username: f.username,
            email: f.email,
            display_name: f.display_name,
            external_id: f.external_id,
            idp: Some("scim".into()),
            ..Default::default()
        })
        .await?;
    if f.active == Some(false) {
        let patch = UserPatch {
            active: Some(false),
            ..Default::default()
        };
        user = store.update_user(&user.id, &patch).await?.unwrap_or(user);
    }
    applied(&identity).await;
    tracing::info!(user = %user.username, "SCIM: user provisioned");
    record(&identity, &actor, "user.provisioned", &user, json!([])).await;
    Ok(created(&rendered(store, &user, &base(&identity)).await?))
}

pub async fn show(
    State(identity): State<Ctx>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ScimResult {
    let store = identity.store();
    let user = find(store, &id).await?;
    let r = rendered(store, &user, &base(&identity)).await?;
    Ok(respond(StatusCode::OK, &projection(q.as_deref()).apply(r)))
}

async fn save(identity: &Ctx, actor: &Actor, id: &str, patch: &UserPatch) -> ScimResult {
    let store = identity.store();
    if let Some(u) = &patch.username {
        check_unique(store, u, Some(id)).await?;
    }
    let user = if is_empty(patch) {
        find(store, id).await?
    } else {
        let u = store
            .update_user(id, patch)
            .await?
            .ok_or_else(|| ScimError::not_found(format!("User {id:?} not found")))?;
        applied(identity).await;
        if patch.active == Some(false) {
            tracing::info!(user = %u.username, "SCIM: user deactivated; credentials revoked");
        }
        let operation = match patch.active {
            Some(false) => "user.deprovisioned",
            Some(true) => "user.reactivated",
            None => "user.updated",
        };
        record(identity, actor, operation, &u, changed_names(patch)).await;
        u
    };
    Ok(respond(
        StatusCode::OK,
        &rendered(store, &user, &base(identity)).await?,
    ))
}

/// PUT replaces the user's attributes; an absent `externalId` is kept (the IdP's
/// link to the person), an absent `active` leaves the state alone.
pub async fn replace(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ScimResult {
    let res = read_body(&headers, body).await?;
    let f = fields(&res)?;
    let current = find(identity.store(), &id).await?;
    let patch = UserPatch {
        username: (f.username != current.username).then_some(f.username),
        email: Some(f.email),
        display_name: Some(f.display_name),
        external_id: f.external_id.map(Some),
        active: f.active,
        ..Default::default()
    };
    save(&identity, &actor, &id, &patch).await
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
    let patch = patch_changes(&before, &after, &current)?;
    save(&identity, &actor, &id, &patch).await
}

pub async fn remove(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ScimResult {
    let store = identity.store();
    let user = find(store, &id).await?;
    store.delete_user(&id).await?;
    applied(&identity).await;
    tracing::info!(user = %user.username, "SCIM: user deleted; credentials revoked");
    record(&identity, &actor, "user.deleted", &user, json!([])).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> UserRow {
        UserRow {
            id: "u1".into(),
            kind: "user".into(),
            username: "alice".into(),
            email: Some("alice@example.com".into()),
            display_name: Some("Alice".into()),
            external_id: Some("00u1".into()),
            idp: Some("scim".into()),
            idp_subject: None,
            password_hash: None,
            active: true,
            is_admin: false,
            owner_id: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn changes(ops: Value) -> Result<UserPatch, ScimError> {
        let u = row();
        let before = render(&u, &[], "https://gw/scim/v2");
        let mut after = before.clone();
        apply_ops(&mut after, &json!({ "Operations": ops }))?;
        patch_changes(&before, &after, &u)
    }

    #[test]
    fn deactivation_maps_to_active_false() {
        for ops in [
            json!([{"op": "replace", "path": "active", "value": false}]),
            json!([{"op": "replace", "value": {"active": false}}]),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        ] {
            let p = changes(ops.clone()).unwrap_or_else(|e| panic!("{ops}: {e:?}"));
            assert_eq!(p.active, Some(false), "{ops}");
            assert!(
                p.username.is_none() && p.email.is_none() && p.display_name.is_none(),
                "{ops}"
            );
        }
        let p = changes(json!([{"op": "replace", "path": "active", "value": true}]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(is_empty(&p), "already active: nothing to change");
        let err = changes(json!([{"op": "replace", "path": "active", "value": 0}]))
            .expect_err("0 is not a boolean");
        assert_eq!(err.scim_type, Some("invalidValue"));
    }

    #[test]
    fn profile_changes() {
        let p = changes(json!([
            {"op": "replace", "path": "userName", "value": "alice.l"},
            {"op": "replace", "path": "name.formatted", "value": "Alice Liddell"},
            {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "al@example.com"},
            {"op": "add", "path": "title", "value": "ignored"}
        ]))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.username.as_deref(), Some("alice.l"));
        assert_eq!(p.display_name, Some(Some("Alice Liddell".into())));
        assert_eq!(p.email, Some(Some("al@example.com".into())));
        assert!(p.active.is_none() && p.external_id.is_none());
        let p = changes(json!([{"op": "replace", "path": "displayName", "value": "Al"}]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.display_name, Some(Some("Al".into())));
        let p = changes(
            json!([{"op": "remove", "path": "emails"}, {"op": "remove", "path": "externalId"}]),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((p.email, p.external_id), (Some(None), Some(None)));
        let err = changes(json!([{"op": "remove", "path": "userName"}]))
            .expect_err("userName is required");
        assert_eq!(err.scim_type, Some("mutability"));
    }

    #[test]
    fn create_bodies() {
        let f = fields(&json!({
            "schemas": [USER_SCHEMA], "userName": "bob@example.com", "externalId": "00u2",
            "name": {"givenName": "Bob", "familyName": "Smith"},
            "emails": [{"value": "b@home", "primary": false}, {"value": "bob@example.com", "primary": true}],
            "active": true
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            f,
            Fields {
                username: "bob@example.com".into(),
                display_name: Some("Bob Smith".into()),
                email: Some("bob@example.com".into()),
                external_id: Some("00u2".into()),
                active: Some(true),
            }
        );
        assert_eq!(
            fields(&json!({"displayName": "x"}))
                .map(|_| ())
                .map_err(|e| e.scim_type),
            Err(Some("invalidValue"))
        );
        assert!(fields(&json!({"userName": 5})).is_err());
        assert!(fields(&json!({"userName": "a", "emails": "x"})).is_err());
    }
}
