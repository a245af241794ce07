//! SCIM 2.0 provisioning (RFC 7643 / RFC 7644) under `/scim/v2`, for Okta, Entra
//! ID and other IdPs: Users, Groups and the discovery endpoints. Every route needs
//! an API token with the `scim` scope (normally a service account's).
//! Deactivating or deleting a user revokes everything the user holds at once.

mod discovery;
pub mod filter;
mod groups;
pub mod patch;
mod users;

use crate::wire::{self, BodyError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch as patch_route, post, put, MethodRouter};
use filter::{parse_filter, Filter};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portcullis_identity::{AuthFailure, Identity};
use portcullis_store::StoreError;
use serde_json::{json, Value};
use std::sync::Arc;

type Ctx = Arc<Identity>;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const MEDIA: &str = "application/scim+json";
/// Most resources one list answer carries.
pub const MAX_RESULTS: usize = 1000;

/// Every SCIM route as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/scim/v2/Users"),
    ("POST", "/scim/v2/Users"),
    ("GET", "/scim/v2/Users/{id}"),
    ("PUT", "/scim/v2/Users/{id}"),
    ("PATCH", "/scim/v2/Users/{id}"),
    ("DELETE", "/scim/v2/Users/{id}"),
    ("GET", "/scim/v2/Groups"),
    ("POST", "/scim/v2/Groups"),
    ("GET", "/scim/v2/Groups/{id}"),
    ("PUT", "/scim/v2/Groups/{id}"),
    ("PATCH", "/scim/v2/Groups/{id}"),
    ("DELETE", "/scim/v2/Groups/{id}"),
    ("GET", "/scim/v2/ServiceProviderConfig"),
    ("GET", "/scim/v2/ResourceTypes"),
    ("GET", "/scim/v2/ResourceTypes/{id}"),
    ("GET", "/scim/v2/Schemas"),
    ("GET", "/scim/v2/Schemas/{id}"),
];

pub fn endpoint(method: &str, path: &str) -> Option<MethodRouter<crate::AdminState>> {
    Some(match (method, path) {
        ("GET", "/scim/v2/Users") => get(users::list),
        ("POST", "/scim/v2/Users") => post(users::create),
        ("GET", "/scim/v2/Users/{id}") => get(users::show),
        ("PUT", "/scim/v2/Users/{id}") => put(users::replace),
        ("PATCH", "/scim/v2/Users/{id}") => patch_route(users::patch),
        ("DELETE", "/scim/v2/Users/{id}") => delete(users::remove),
        ("GET", "/scim/v2/Groups") => get(groups::list),
        ("POST", "/scim/v2/Groups") => post(groups::create),
        ("GET", "/scim/v2/Groups/{id}") => get(groups::show),
        ("PUT", "/scim/v2/Groups/{id}") => put(groups::replace),
        ("PATCH", "/scim/v2/Groups/{id}") => patch_route(groups::patch),
        ("DELETE", "/scim/v2/Groups/{id}") => delete(groups::remove),
        ("GET", "/scim/v2/ServiceProviderConfig") => get(discovery::service_provider_config),
        ("GET", "/scim/v2/ResourceTypes") => get(discovery::resource_types),
        ("GET", "/scim/v2/ResourceTypes/{id}") => get(discovery::resource_type),
        ("GET", "/scim/v2/Schemas") => get(discovery::schemas),
        ("GET", "/scim/v2/Schemas/{id}") => get(discovery::schema),
        _ => return None,
    })
}

/// A SCIM error (RFC 7644 §3.12).
#[derive(Debug)]
pub struct ScimError {
    pub status: StatusCode,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    fn new(
        status: StatusCode,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> ScimError {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    fn bad(scim_type: &'static str, detail: impl Into<String>) -> ScimError {
        ScimError::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }

    pub fn invalid_filter(d: impl Into<String>) -> ScimError {
        ScimError::bad("invalidFilter", d)
    }

    pub fn invalid_syntax(d: impl Into<String>) -> ScimError {
        ScimError::bad("invalidSyntax", d)
    }

    pub fn invalid_path(d: impl Into<String>) -> ScimError {
        ScimError::bad("invalidPath", d)
    }

    pub fn invalid_value(d: impl Into<String>) -> ScimError {
        ScimError::bad("invalidValue", d)
    }

    pub fn no_target(d: impl Into<String>) -> ScimError {
        ScimError::bad("noTarget", d)
    }

    pub fn mutability(d: impl Into<String>) -> ScimError {
        ScimError::bad("mutability", d)
    }

    pub fn uniqueness(d: impl Into<String>) -> ScimError {
        ScimError::new(StatusCode::CONFLICT, Some("uniqueness"), d)
    }

    pub fn not_found(d: impl Into<String>) -> ScimError {
        ScimError::new(StatusCode::NOT_FOUND, None, d)
    }

    fn internal(what: &dyn std::fmt::Display) -> ScimError {
        tracing::error!(error = %what, "SCIM request failed");
        ScimError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "internal error; see the gateway log",
        )
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        let mut resp = wire::json_response(self.status, MEDIA, &body);
        let challenge = match self.status {
            StatusCode::UNAUTHORIZED => Some("Bearer error=\"invalid_token\""),
            StatusCode::FORBIDDEN => Some("Bearer error=\"insufficient_scope\", scope=\"scim\""),
            _ => None,
        };
        if let Some(c) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> ScimError {
        if e.is_unique_violation() {
            ScimError::uniqueness("a resource with that name already exists")
        } else {
            ScimError::internal(&e)
        }
    }
}

impl From<BodyError> for ScimError {
    fn from(e: BodyError) -> ScimError {
        match e {
            BodyError::UnsupportedType(_) => {
                ScimError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, None, e.to_string())
            }
            BodyError::TooLarge => {
                ScimError::new(StatusCode::PAYLOAD_TOO_LARGE, None, e.to_string())
            }
            BodyError::Invalid(_) => ScimError::invalid_syntax(e.to_string()),
        }
    }
}

pub type ScimResult = Result<Response, ScimError>;

/// Refuse anything but an API token with the `scim` scope.
pub async fn guard(State(identity): State<Ctx>, mut req: Request, next: Next) -> Response {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match identity.authenticate_api(authz) {
        Ok(p) => p,
        Err(why) => {
            tracing::info!(reason = %why, path = %req.uri().path(), "SCIM request refused");
            let detail = match why {
                AuthFailure::Missing => "an API token with the scim scope is required".to_owned(),
                AuthFailure::WrongAudience => "SCIM accepts only API tokens (pcp_/pcs_)".to_owned(),
                other => other.to_string(),
            };
            return ScimError::new(StatusCode::UNAUTHORIZED, None, detail).into_response();
        }
    };
    if !principal.has_scope("scim") {
        return ScimError::new(
            StatusCode::FORBIDDEN,
            None,
            "the token lacks the scim scope",
        )
        .into_response();
    }
    tracing::info!(
        client = %principal.user.username,
        method = %req.method(),
        path = %req.uri().path(),
        "SCIM request"
    );
    let actor = crate::audit_log::actor(&principal, req.headers(), req.extensions());
    req.extensions_mut().insert(actor);
    next.run(req).await
}

pub fn respond(status: StatusCode, body: &Value) -> Response {
    wire::json_response(status, MEDIA, body)
}

/// 201 with `Location`.
pub fn created(body: &Value) -> Response {
    let mut resp = respond(StatusCode::CREATED, body);
    if let Some(loc) = body["meta"]["location"]
        .as_str()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Value, ScimError> {
    let v = wire::read_json(headers, body, &[MEDIA, "application/json"], true).await?;
    if !v.is_object() {
        return Err(ScimError::invalid_syntax("the body must be a JSON object"));
    }
    Ok(v)
}

/// Base URL of the SCIM endpoints, for `meta.location`.
pub fn base(identity: &Identity) -> String {
    format!("{}/scim/v2", identity.issuer())
}

/// Apply the change feed here now (see `api::applied`).
pub async fn applied(identity: &Identity) {
    if let Err(e) = identity.refresh().await {
        tracing::warn!(error = %e, "could not apply a SCIM change to the in-memory view; the watcher will retry");
    }
}

/// `attributes` / `excludedAttributes` (RFC 7644 §3.9), top-level names.
#[derive(Debug, Default)]
pub struct Projection {
    attributes: Vec<String>,
    excluded: Vec<String>,
}

impl Projection {
    pub fn apply(&self, mut res: Value) -> Value {
        let top = |a: &str| {
            a.rsplit(':')
                .next()
                .unwrap_or(a)
                .split('.')
                .next()
                .unwrap_or(a)
                .to_owned()
        };
        if let Some(obj) = res.as_object_mut() {
            if !self.attributes.is_empty() {
                let keep: Vec<String> = self.attributes.iter().map(|a| top(a)).collect();
                obj.retain(|k, _| {
                    ["id", "schemas", "meta"].contains(&k.as_str())
                        || keep.iter().any(|a| a.eq_ignore_ascii_case(k))
                });
            }
            let drop: Vec<String> = self.excluded.iter().map(|a| top(a)).collect();
            obj.retain(|k, _| {
                k == "id" || k == "schemas" || !drop.iter().any(|a| a.eq_ignore_ascii_case(k))
            });
        }
        res
    }
}

/// Query parameters of a list request.
#[derive(Debug)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub start_index: usize,
    pub count: usize,
    pub projection: Projection,
}

fn names(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Projection parameters alone (single-resource GETs).
pub fn projection(raw: Option<&str>) -> Projection {
    let mut p = Projection::default();
    for (k, v) in wire::query_pairs(raw) {
        if k.eq_ignore_ascii_case("attributes") {
            p.attributes = names(&v);
        } else if k.eq_ignore_ascii_case("excludedAttributes") {
            p.excluded = names(&v);
        }
    }
    p
}

pub fn list_query(raw: Option<&str>) -> Result<ListQuery, ScimError> {
    let mut q = ListQuery {
        filter: None,
        start_index: 1,
        count: MAX_RESULTS,
        projection: projection(raw),
    };
    let number = |k: &str, v: &str| -> Result<i64, ScimError> {
        v.trim()
            .parse::<i64>()
            .map_err(|_| ScimError::invalid_value(format!("{k} must be an integer, not {v:?}")))
    };
    for (k, v) in wire::query_pairs(raw) {
        match k.as_str() {
            "filter" => {
                let f = parse_filter(&v)
                    .map_err(|e| ScimError::invalid_filter(format!("filter {v:?}: {e}")))?;
                q.filter = Some(f);
            }
            // RFC 7644 §3.4.2.4: below 1 means 1; a negative count means 0.
            "startIndex" => q.start_index = number(&k, &v)?.max(1) as usize,
            "count" => q.count = number(&k, &v)?.clamp(0, MAX_RESULTS as i64) as usize,
            _ => {}
        }
    }
    Ok(q)
}

/// Filter, page and wrap resources in a ListResponse.
pub fn list_response(all: Vec<Value>, q: &ListQuery) -> Response {
    let matching: Vec<Value> = all
        .into_iter()
        .filter(|r| q.filter.as_ref().is_none_or(|f| filter::matches(f, r)))
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(q.start_index - 1)
        .take(q.count)
        .map(|r| q.projection.apply(r))
        .collect();
    respond(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": q.start_index,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
    )
}

/// A `meta` attribute.
pub fn meta(kind: &str, location: String, created: i64, modified: i64) -> Value {
    json!({
        "resourceType": kind,
        "created": wire::rfc3339(created),
        "lastModified": wire::rfc3339(modified),
        "location": location,
    })
}

/// A string attribute, if present: anything but a string (or null) is a 400.
pub fn opt_str(res: &Value, name: &str) -> Result<Option<String>, ScimError> {
    match filter::get_ci(res, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ScimError::invalid_value(format!(
            "{name} must be a string, not {other}"
        ))),
    }
}

/// A string no longer than `max` characters without control characters.
pub fn check_text(name: &str, v: &str, max: usize) -> Result<(), ScimError> {
    if v.trim().is_empty() {
        return Err(ScimError::invalid_value(format!(
            "{name} must not be empty"
        )));
    }
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(ScimError::invalid_value(format!(
            "{name} must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}
