//! Cedar policies and approvals: the installed set, API-managed policy
//! documents (validated together with everything else before they are
//! stored, applied before the answer), "what would happen if" tests in the
//! suite format, and calls waiting for an approver.

use super::{body, ok, param, query, ApiError, ApiResult};
use crate::audit_log;
use crate::wire::MAX_BODY;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use http::{header, HeaderMap, StatusCode};
use portcullis_audit::{Actor, Target};
use portcullis_identity::{now, Identity, Principal};
use portcullis_policy::{PolicyError, PolicyRuntime, SourceError, Suite, STORED_PREFIX};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type Policy = Option<Arc<PolicyRuntime>>;

fn runtime(p: &Policy) -> Result<&Arc<PolicyRuntime>, ApiError> {
    p.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "policy_disabled",
            "this gateway runs without a policy engine",
        )
    })
}

/// `^[a-zA-Z0-9_.-]{1,64}$`, and not only dots (`.` and `..` are path steps).
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.bytes().all(|b| b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "policy name {name:?}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )))
    }
}

fn policy_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::Invalid(errors) => invalid(&errors),
        PolicyError::Config(m) => ApiError::internal(&m),
    }
}

/// 400 with every located error, so an editor can point at each line.
fn invalid(errors: &[SourceError]) -> ApiError {
    let first = errors.first().map(ToString::to_string).unwrap_or_default();
    ApiError {
        details: Some(Box::new(json!({ "errors": errors }))),
        ..ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_policy",
            format!(
                "the policy set would not load ({} error{}): {first}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ),
        )
    }
}

pub async fn list(State(policy): State<Policy>, RawQuery(q): RawQuery) -> ApiResult {
    query(q.as_deref(), &[])?;
    let rt = runtime(&policy)?;
    let current = rt.engine.current();
    let documents: Vec<Value> = rt
        .store()
        .list_policies()
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "name": d.name,
                "origin": format!("{STORED_PREFIX}{}", d.name),
                "updated_at": d.updated_at,
                "updated_by": d.updated_by,
            })
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        &json!({
            "version": current.version,
            "policies": current.policies(),
            "documents": documents,
            "last_error": rt.last_error(),
        }),
    ))
}

pub async fn show(State(policy): State<Policy>, Path(name): Path<String>) -> ApiResult {
    check_name(&name)?;
    let rt = runtime(&policy)?;
    let doc = rt
        .store()
        .list_policies()
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no stored policy document {name:?}")))?;
    Ok(ok(
        StatusCode::OK,
        &json!({
            "name": doc.name,
            "text": doc.text,
            "updated_at": doc.updated_at,
            "updated_by": doc.updated_by,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyText {
    text: String,
}

/// Cedar text from `text/plain`, or `{"text": ...}` from `application/json`.
async fn policy_text(headers: &HeaderMap, b: Body) -> Result<String, ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let text = match media.as_deref() {
        Some("text/plain") => {
            let bytes = axum::body::to_bytes(b, MAX_BODY)
                .await
                .map_err(|_| crate::wire::BodyError::TooLarge)?;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::bad_request("the policy text is not UTF-8"))?
        }
        Some("application/json") => body::<PolicyText>(headers, b).await?.text,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "Content-Type must be text/plain (Cedar) or application/json ({\"text\": ...})",
            ))
        }
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the policy text is empty; DELETE removes a document",
        ));
    }
    Ok(text)
}

/// Reload so the change is in force before the answer. Another source may
/// have broken meanwhile (a file edited under `policy.dir`, a concurrent
/// change): the document is stored, the previous set stays, and the answer
/// says so.
async fn apply(rt: &PolicyRuntime, name: &str, revision: i64) -> Value {
    let (applied, version) = match rt.reload_now().await {
        Ok(_) => (true, rt.engine.current().version),
        Err(e) => {
            tracing::warn!(error = %e, name, "stored a policy document the set could not load with");
            (false, rt.engine.current().version)
        }
    };
    json!({
        "name": name,
        "revision": revision,
        "version": version,
        "applied": applied,
        "last_error": rt.last_error(),
    })
}

pub async fn put(
    State(policy): State<Policy>,
    State(identity): State<Arc<Identity>>,
    Extension(caller): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    check_name(&name)?;
    let rt = runtime(&policy)?;
    let text = policy_text(&headers, b).await?;
    let sources = rt
        .sources_with(&name, Some(&text))
        .await
        .map_err(policy_error)?;
    rt.engine.compile(&sources, 0).map_err(policy_error)?;
    let revision = rt
        .store()
        .put_policy(&name, &text, &caller.user.username)
        .await?;
    tracing::info!(name, admin = %caller.user.username, revision, "policy document stored");
    let answer = apply(rt, &name, revision).await;
    let mut detail = change_detail("put", &answer);
    detail["sha256"] = json!(audit_log::sha256(&text));
    detail["bytes"] = json!(text.len());
    audit_log::changed(&identity, "policy.changed", &actor, detail).await;
    Ok(ok(StatusCode::OK, &answer))
}

/// A stored document's change as recorded: name, revision, the version in
/// force after it and whether it applied (the text only by digest).
fn change_detail(operation: &str, answer: &Value) -> Value {
    json!({
        "operation": operation,
        "via": "api",
        "name": answer["name"],
        "origin": answer["name"].as_str().map(|n| format!("{STORED_PREFIX}{n}")),
        "revision": answer["revision"],
        "version": answer["version"],
        "applied": answer["applied"],
    })
}

pub async fn remove(
    State(policy): State<Policy>,
    State(identity): State<Arc<Identity>>,
    Extension(caller): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult {
    check_name(&name)?;
    let rt = runtime(&policy)?;
    let exists = rt
        .store()
        .list_policies()
        .await?
        .iter()
        .any(|d| d.name == name);
    if !exists {
        return Err(ApiError::not_found(format!(
            "no stored policy document {name:?}"
        )));
    }
    // What remains must load: removing a document can orphan nothing in
    // Cedar, but it can leave no policy at all, or the built-in allow-all.
    let sources = rt.sources_with(&name, None).await.map_err(policy_error)?;
    rt.engine.compile(&sources, 0).map_err(policy_error)?;
    let revision = rt
        .store()
        .delete_policy(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no stored policy document {name:?}")))?;
    tracing::info!(name, admin = %caller.user.username, revision, "policy document deleted");
    let answer = apply(rt, &name, revision).await;
    let detail = change_detail("delete", &answer);
    audit_log::changed(&identity, "policy.changed", &actor, detail).await;
    Ok(ok(StatusCode::OK, &answer))
}

/// Decide described requests with the installed set; nothing is called.
pub async fn test(State(policy): State<Policy>, headers: HeaderMap, b: Body) -> ApiResult {
    let rt = runtime(&policy)?;
    let value: Value = body(&headers, b).await?;
    let suite = Suite::from_json(value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let compiled = rt.engine.current();
    let report = suite
        .run(&rt.engine, &compiled, now())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(ok(StatusCode::OK, &json!(report)))
}

pub async fn approvals(State(policy): State<Policy>, RawQuery(q): RawQuery) -> ApiResult {
    query(q.as_deref(), &[])?;
    let rt = runtime(&policy)?;
    Ok(ok(
        StatusCode::OK,
        &json!({ "approvals": rt.approvals.list() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    approve: bool,
}

pub async fn decide(
    State(policy): State<Policy>,
    State(identity): State<Arc<Identity>>,
    Extension(caller): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult {
    let rt = runtime(&policy)?;
    let req: Decide = body(&headers, b).await?;
    let by = &caller.user.username;
    let request = rt
        .approvals
        .decide(&id, req.approve, by)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    tracing::info!(id, approved = req.approve, approver = %by, user = %request.user, tool = %request.tool, "approval decided");
    let detail = json!({
        "approval_id": request.id,
        "checkpoint": "approver",
        "decision": if req.approve { "approved" } else { "refused" },
        "approver": by,
        "requesting_user": request.user,
        "virtual_server": request.virtual_server,
        "tool": request.tool,
        "policies": request.policies,
        "requested_at": portcullis_audit::format_time(request.requested_at.saturating_mul(1_000_000)),
    });
    let target = Target {
        virtual_server: Some(request.virtual_server.clone()),
        tool: Some(request.tool.clone()),
        ..Default::default()
    };
    audit_log::changed_on(&identity, "checkpoint.decided", &actor, detail, target).await;
    Ok(ok(
        StatusCode::OK,
        &json!({ "approval": request, "approved": req.approve, "by": by }),
    ))
}

/// `YYYY-MM-DD` with a real month and day.
fn check_day(day: &str) -> Result<(), ApiError> {
    let valid =
        day.len() == 10 && portcullis_policy::parse_rfc3339(&format!("{day}T00:00:00Z")).is_some();
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "day {day:?}: expected YYYY-MM-DD"
        )))
    }
}

/// Calls and refusals per (team, user, virtual server, tool) for one UTC
/// day, today unless `day` says otherwise: cost attribution and quota checks.
pub async fn usage(State(identity): State<Arc<Identity>>, RawQuery(q): RawQuery) -> ApiResult {
    let q = query(q.as_deref(), &["day"])?;
    let day = match param(&q, "day") {
        Some(d) => {
            check_day(d)?;
            d.to_owned()
        }
        None => crate::wire::rfc3339(now())[..10].to_owned(),
    };
    let rows = identity.store().usage(Some(&day)).await?;
    let (mut calls, mut refused) = (0u64, 0u64);
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            calls = calls.saturating_add(r.calls);
            refused = refused.saturating_add(r.refused);
            json!({
                "team": r.team,
                "user": r.user,
                "virtual_server": r.virtual_server,
                "tool": r.tool,
                "calls": r.calls,
                "refused": r.refused,
            })
        })
        .collect();
    Ok(ok(
        StatusCode::OK,
        &json!({ "day": day, "calls": calls, "refused": refused, "usage": items }),
    ))
}
