//! The admin REST API under `/api/v1`: users, service accounts, groups, API
//! tokens, OAuth clients, grants, signing keys, Cedar policies, approvals and
//! usage. Every route needs an API token with the `admin` scope whose user is an
//! administrator.

mod audit;
mod credentials;
mod groups;
mod policies;
mod users;

use crate::wire::{self, BodyError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portcullis_identity::{AuthFailure, Identity, IdentityError};
use portcullis_store::StoreError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::sync::Arc;

type Ctx = Arc<Identity>;

/// Every admin route as (method, path); the router and the OpenAPI test both use it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users/{id}"),
    ("PATCH", "/api/v1/users/{id}"),
    ("DELETE", "/api/v1/users/{id}"),
    ("POST", "/api/v1/service-accounts"),
    ("GET", "/api/v1/groups"),
    ("POST", "/api/v1/groups"),
    ("GET", "/api/v1/groups/{id}"),
    ("PATCH", "/api/v1/groups/{id}"),
    ("DELETE", "/api/v1/groups/{id}"),
    ("GET", "/api/v1/groups/{id}/members"),
    ("PUT", "/api/v1/groups/{id}/members"),
    ("POST", "/api/v1/groups/{id}/members"),
    ("DELETE", "/api/v1/groups/{id}/members/{user_id}"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
    ("GET", "/api/v1/clients"),
    ("DELETE", "/api/v1/clients/{client_id}"),
    ("GET", "/api/v1/grants"),
    ("DELETE", "/api/v1/grants/{id}"),
    ("POST", "/api/v1/keys/rotate"),
    ("GET", "/api/v1/policies"),
    ("POST", "/api/v1/policies/test"),
    ("GET", "/api/v1/policies/{name}"),
    ("PUT", "/api/v1/policies/{name}"),
    ("DELETE", "/api/v1/policies/{name}"),
    ("GET", "/api/v1/approvals"),
    ("POST", "/api/v1/approvals/{id}"),
    ("GET", "/api/v1/usage"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/status"),
];

/// The handler registered for one entry of [`ROUTES`].
pub fn endpoint(method: &str, path: &str) -> Option<MethodRouter<crate::AdminState>> {
    Some(match (method, path) {
        ("GET", "/api/v1/users") => get(users::list),
        ("POST", "/api/v1/users") => post(users::create),
        ("GET", "/api/v1/users/{id}") => get(users::show),
        ("PATCH", "/api/v1/users/{id}") => patch(users::update),
        ("DELETE", "/api/v1/users/{id}") => delete(users::remove),
        ("POST", "/api/v1/service-accounts") => post(users::create_service_account),
        ("GET", "/api/v1/groups") => get(groups::list),
        ("POST", "/api/v1/groups") => post(groups::create),
        ("GET", "/api/v1/groups/{id}") => get(groups::show),
        ("PATCH", "/api/v1/groups/{id}") => patch(groups::update),
        ("DELETE", "/api/v1/groups/{id}") => delete(groups::remove),
        ("GET", "/api/v1/groups/{id}/members") => get(groups::members),
        ("PUT", "/api/v1/groups/{id}/members") => put(groups::replace_members),
        ("POST", "/api/v1/groups/{id}/members") => post(groups::add_member),
        ("DELETE", "/api/v1/groups/{id}/members/{user_id}") => delete(groups::remove_member),
        ("GET", "/api/v1/tokens") => get(credentials::list_tokens),
        ("POST", "/api/v1/tokens") => post(credentials::create_token),
        ("DELETE", "/api/v1/tokens/{id}") => delete(credentials::revoke_token),
        ("GET", "/api/v1/clients") => get(credentials::list_clients),
        ("DELETE", "/api/v1/clients/{client_id}") => delete(credentials::delete_client),
        ("GET", "/api/v1/grants") => get(credentials::list_grants),
        ("DELETE", "/api/v1/grants/{id}") => delete(credentials::revoke_grant),
        ("POST", "/api/v1/keys/rotate") => post(credentials::rotate_keys),
        ("GET", "/api/v1/policies") => get(policies::list),
        ("POST", "/api/v1/policies/test") => post(policies::test),
        ("GET", "/api/v1/policies/{name}") => get(policies::show),
        ("PUT", "/api/v1/policies/{name}") => put(policies::put),
        ("DELETE", "/api/v1/policies/{name}") => delete(policies::remove),
        ("GET", "/api/v1/approvals") => get(policies::approvals),
        ("POST", "/api/v1/approvals/{id}") => post(policies::decide),
        ("GET", "/api/v1/usage") => get(policies::usage),
        ("GET", "/api/v1/audit") => get(audit::search),
        ("GET", "/api/v1/audit/status") => get(audit::status),
        _ => return None,
    })
}

/// An admin API error: `{"error": ..., "error_description": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// `WWW-Authenticate` value for 401 and 403.
    challenge: Option<String>,
    /// Fields added to the body (an object), e.g. located policy errors.
    details: Option<Box<Value>>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            description: description.into(),
            challenge: None,
            details: None,
        }
    }

    pub fn bad_request(d: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }

    pub fn not_found(d: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", d)
    }

    pub fn conflict(d: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", d)
    }

    fn internal(what: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %what, "admin API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; see the gateway log",
        )
    }

    fn unauthorized(why: &AuthFailure) -> ApiError {
        let description = match why {
            AuthFailure::Missing => {
                "an API token is required: Authorization: Bearer <token>".to_owned()
            }
            AuthFailure::WrongAudience => {
                "the admin API accepts only API tokens (pcp_/pcs_)".to_owned()
            }
            other => other.to_string(),
        };
        let challenge = match why.oauth_error() {
            Some(e) => format!("Bearer error=\"{e}\""),
            None => "Bearer".to_owned(),
        };
        ApiError {
            challenge: Some(challenge),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
        }
    }

    fn forbidden(description: &str) -> ApiError {
        ApiError {
            challenge: Some("Bearer error=\"insufficient_scope\", scope=\"admin\"".to_owned()),
            ..ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", description)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error, "error_description": self.description});
        if let (Some(Value::Object(extra)), Some(b)) =
            (self.details.map(|d| *d), body.as_object_mut())
        {
            b.extend(extra);
        }
        let mut resp = wire::json_response(self.status, "application/json", &body);
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_unique_violation() {
            ApiError::conflict("a resource with that name already exists")
        } else {
            ApiError::internal(&e)
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> ApiError {
        match e {
            IdentityError::Invalid(m) => ApiError::bad_request(m),
            IdentityError::Store(s) => s.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        let status = match e {
            BodyError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid_request", e.to_string())
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// Refuse anything but an administrator's API token with the `admin` scope.
pub async fn guard(State(identity): State<Ctx>, mut req: Request, next: Next) -> Response {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match identity.authenticate_api(authz) {
        Ok(p) => p,
        Err(why) => {
            tracing::info!(reason = %why, path = %req.uri().path(), "admin API request refused");
            return ApiError::unauthorized(&why).into_response();
        }
    };
    if !principal.has_scope("admin") {
        return ApiError::forbidden("the token lacks the admin scope").into_response();
    }
    if !principal.user.is_admin {
        return ApiError::forbidden(&format!(
            "{:?} is not an administrator",
            principal.user.username
        ))
        .into_response();
    }
    tracing::info!(
        admin = %principal.user.username,
        credential = %principal.credential_id(),
        method = %req.method(),
        path = %req.uri().path(),
        "admin API request"
    );
    let actor = crate::audit_log::actor(&principal, req.headers(), req.extensions());
    req.extensions_mut().insert(actor);
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Parse a JSON body into `T`; unknown fields and wrong types are 400s that say which.
pub async fn body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let value = wire::read_json(headers, body, &["application/json"], false).await?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Query parameters, refusing any name outside `allowed` and repeated names.
pub fn query(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = wire::query_pairs(raw);
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(if allowed.is_empty() {
                format!("unknown query parameter {k:?}: this route takes none")
            } else {
                format!(
                    "unknown query parameter {k:?}: expected one of {}",
                    allowed.join(", ")
                )
            }));
        }
        if pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(ApiError::bad_request(format!(
                "query parameter {k:?} given twice"
            )));
        }
    }
    Ok(pairs)
}

pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Apply the change feed in this process now, so the change takes effect before
/// the response is sent (other replicas follow within their poll interval).
pub async fn applied(identity: &Identity) {
    if let Err(e) = identity.refresh().await {
        tracing::warn!(error = %e, "could not apply an admin change to the in-memory view; the watcher will retry");
    }
}

pub fn ok(status: StatusCode, body: &Value) -> Response {
    wire::json_response(status, "application/json", body)
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value, `None` when absent.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Check a free-text field: trimmed, non-empty, at most `max` characters, no
/// control characters.
pub fn text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{field} must not be empty")));
    }
    if v.trim() != v {
        return Err(ApiError::bad_request(format!(
            "{field} must not start or end with whitespace"
        )));
    }
    if v.chars().count() > max {
        return Err(ApiError::bad_request(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

pub fn email(v: &str) -> Result<(), ApiError> {
    text("email", v, 254)?;
    match v.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !v.contains(' ') => {
            Ok(())
        }
        _ => Err(ApiError::bad_request(format!(
            "email {v:?} is not an address"
        ))),
    }
}
