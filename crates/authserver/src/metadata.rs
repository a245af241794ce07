//! Discovery documents: authorization-server metadata (RFC 8414, also served as
//! OIDC discovery), protected-resource metadata per virtual server (RFC 9728), JWKS.

use crate::web::json;
use crate::AuthServer;
use axum::extract::{Path, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{json as j, Value};
use std::sync::Arc;

pub(crate) fn as_metadata(s: &AuthServer) -> Value {
    let iss = s.issuer();
    let settings = &s.identity.settings;
    let mut m = j!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth/authorize"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "jwks_uri": format!("{iss}/oauth/jwks"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": ["mcp"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": settings.cimd.enabled,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "service_documentation": format!("{iss}/login"),
    });
    if settings.registration.enabled {
        m["registration_endpoint"] = j!(format!("{iss}/oauth/register"));
    }
    m
}

pub(crate) async fn authorization_server(State(s): State<Arc<AuthServer>>) -> Response {
    json(StatusCode::OK, &as_metadata(&s))
}

fn prm(s: &AuthServer, vs: &str) -> Option<Value> {
    let r = s.identity.resource(vs)?;
    Some(j!({
        "resource": r.uri,
        "authorization_servers": [s.issuer()],
        "scopes_supported": ["mcp"],
        "bearer_methods_supported": ["header"],
        "resource_name": r.description.clone().unwrap_or_else(|| format!("{vs} via Portcullis")),
    }))
}

pub(crate) async fn protected_resource(
    State(s): State<Arc<AuthServer>>,
    Path(vs): Path<String>,
) -> Response {
    match prm(&s, &vs) {
        Some(doc) => json(StatusCode::OK, &doc),
        None => {
            crate::web::oauth_error(StatusCode::NOT_FOUND, "not_found", "no such virtual server")
        }
    }
}

/// The root document exists only when one virtual server is the obvious default.
pub(crate) async fn root_resource(State(s): State<Arc<AuthServer>>) -> Response {
    let mut all: Vec<&str> = s.identity.resources().map(|r| r.vs.as_str()).collect();
    all.sort();
    match all.as_slice() {
        [only] => protected_resource(State(s.clone()), Path((*only).to_owned())).await,
        _ => crate::web::oauth_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "each virtual server has its own metadata at /.well-known/oauth-protected-resource/mcp/<name>",
        ),
    }
}

pub(crate) async fn jwks(State(s): State<Arc<AuthServer>>) -> Response {
    let mut r = json(StatusCode::OK, &s.identity.jwks());
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300"),
    );
    r
}
