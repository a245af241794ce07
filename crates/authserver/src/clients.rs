//! OAuth clients: Client ID Metadata Documents (the client id is an https URL the
//! gateway fetches), Dynamic Client Registration (RFC 7591, honouring
//! `application_type`), and client authentication at the token endpoint.

use crate::web::{json, oauth_error, MAX_BODY};
use crate::AuthServer;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use http::{HeaderMap, StatusCode};
use portcullis_identity::secrets;
use portcullis_store::identity::ClientRow;
use serde_json::{json as j, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Client {
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub auth_method: String,
    pub secret_hash: Option<String>,
    pub kind: String,
}

fn from_row(r: ClientRow) -> Client {
    Client {
        redirect_uris: serde_json::from_str(&r.redirect_uris).unwrap_or_default(),
        client_id: r.client_id,
        name: r.client_name,
        auth_method: r.auth_method,
        secret_hash: r.secret_hash,
        kind: r.kind,
    }
}

fn is_url_client_id(id: &str) -> bool {
    id.starts_with("https://") || id.starts_with("http://")
}

/// Find a client by id, fetching (or refreshing) its metadata document when the id
/// is a URL. The error text is safe to show on the error page.
pub(crate) async fn lookup(s: &AuthServer, client_id: &str) -> Result<Client, String> {
    if client_id.is_empty() || client_id.len() > 2048 {
        return Err("client_id is missing".into());
    }
    let stored = s
        .identity
        .store()
        .client(client_id)
        .await
        .map_err(|_| "client lookup failed".to_string())?;
    if !is_url_client_id(client_id) {
        return stored
            .map(from_row)
            .ok_or_else(|| "unknown client_id".into());
    }
    let cimd = &s.identity.settings.cimd;
    if !cimd.enabled {
        return Err("client ID metadata documents are disabled on this gateway".into());
    }
    let now = portcullis_identity::now();
    if let Some(row) = stored {
        if row.kind == "cimd"
            && row
                .fetched_at
                .is_some_and(|f| now - f < cimd.cache_secs as i64)
        {
            return Ok(from_row(row));
        }
    }
    let (doc, max_age) = crate::ssrf::fetch_json(
        client_id,
        cimd.max_bytes,
        Duration::from_millis(cimd.timeout_ms),
        cimd.allow_insecure_loopback,
    )
    .await
    .map_err(|e| format!("client metadata document refused: {e}"))?;
    let row = validate_document(client_id, &doc, now)?;
    let _ = max_age; // The configured cache period bounds how long a document is trusted.
    s.identity
        .store()
        .upsert_client(&row)
        .await
        .map_err(|_| "client lookup failed".to_string())?;
    Ok(from_row(row))
}

fn str_list(v: &Value, key: &str) -> Option<Vec<String>> {
    v.get(key)?
        .as_array()?
        .iter()
        .map(|x| x.as_str().map(String::from))
        .collect()
}

fn validate_document(url: &str, doc: &Value, now: i64) -> Result<ClientRow, String> {
    if doc.get("client_id").and_then(Value::as_str) != Some(url) {
        return Err("client metadata document: client_id must equal the document URL".into());
    }
    let name = doc
        .get("client_name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
        .ok_or("client metadata document: client_name is required")?;
    let redirect_uris = str_list(doc, "redirect_uris")
        .filter(|r| !r.is_empty())
        .ok_or("client metadata document: redirect_uris is required")?;
    let app_type = doc
        .get("application_type")
        .and_then(Value::as_str)
        .unwrap_or("native");
    for r in &redirect_uris {
        check_redirect_uri(r, app_type)?;
    }
    let method = doc
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("none");
    if method != "none" {
        return Err(
            "client metadata document: only token_endpoint_auth_method \"none\" is supported"
                .into(),
        );
    }
    Ok(ClientRow {
        client_id: url.to_owned(),
        secret_hash: None,
        kind: "cimd".into(),
        client_name: name.chars().take(200).collect(),
        redirect_uris: serde_json::to_string(&redirect_uris).unwrap_or_default(),
        application_type: app_type.into(),
        auth_method: "none".into(),
        metadata: doc.to_string(),
        created_at: now,
        fetched_at: Some(now),
    })
}

fn is_loopback_host(h: &str) -> bool {
    matches!(h, "127.0.0.1" | "[::1]" | "localhost")
}

/// Redirect URI rules by application type (OIDC Dynamic Registration, RFC 8252).
pub(crate) fn check_redirect_uri(r: &str, app_type: &str) -> Result<(), String> {
    let u = url::Url::parse(r).map_err(|_| format!("redirect_uri {r:?} is not an absolute URL"))?;
    if u.fragment().is_some() {
        return Err(format!("redirect_uri {r:?} must not contain a fragment"));
    }
    let host = u.host_str().unwrap_or_default();
    match (app_type, u.scheme()) {
        ("web", "https") if !is_loopback_host(host) => Ok(()),
        ("web", _) => Err(format!(
            "redirect_uri {r:?}: web clients use https and a non-loopback host"
        )),
        ("native", "http") if is_loopback_host(host) => Ok(()),
        ("native", "https") => Ok(()),
        ("native", "http") => Err(format!(
            "redirect_uri {r:?}: http is allowed for loopback hosts only"
        )),
        ("native", scheme) if scheme.contains('.') || scheme.len() > 3 => {
            // Private-use scheme (RFC 8252 §7.1), e.g. com.example.app:/cb;
            // never the dangerous pseudo-schemes.
            if matches!(
                scheme,
                "javascript" | "data" | "file" | "vbscript" | "about" | "blob"
            ) {
                Err(format!(
                    "redirect_uri {r:?}: scheme {scheme} is not allowed"
                ))
            } else {
                Ok(())
            }
        }
        ("native", _) => Err(format!("redirect_uri {r:?}: unsupported scheme")),
        _ => Err("application_type must be \"native\" or \"web\"".into()),
    }
}

fn reg_error(msg: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", msg)
}

/// `POST /oauth/register` (RFC 7591).
pub(crate) async fn register(
    State(s): State<Arc<AuthServer>>,
    origin: crate::audit::Origin,
    body: Body,
) -> Response {
    if !s.identity.settings.registration.enabled {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "dynamic client registration is disabled",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return reg_error("registration request too large");
    };
    let Ok(req) = serde_json::from_slice::<Value>(&bytes) else {
        return reg_error("registration request must be a JSON object");
    };
    if !req.is_object() {
        return reg_error("registration request must be a JSON object");
    }
    if !s.take_registration() {
        return oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            "too many registrations; retry in a minute",
        );
    }
    let Some(redirect_uris) =
        str_list(&req, "redirect_uris").filter(|r| !r.is_empty() && r.len() <= 10)
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "redirect_uris: one to ten URLs required",
        );
    };
    // MCP clients are desktop, CLI and IDE apps: native unless they say otherwise.
    let app_type = req
        .get("application_type")
        .and_then(Value::as_str)
        .unwrap_or("native");
    for r in &redirect_uris {
        if let Err(e) = check_redirect_uri(r, app_type) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", &e);
        }
    }
    let method = req
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("client_secret_basic");
    if !matches!(
        method,
        "none" | "client_secret_basic" | "client_secret_post"
    ) {
        return reg_error(
            "token_endpoint_auth_method must be none, client_secret_basic or client_secret_post",
        );
    }
    let grants = str_list(&req, "grant_types").unwrap_or_else(|| vec!["authorization_code".into()]);
    if grants
        .iter()
        .any(|g| g != "authorization_code" && g != "refresh_token")
    {
        return reg_error("grant_types may contain authorization_code and refresh_token only");
    }
    let responses = str_list(&req, "response_types").unwrap_or_else(|| vec!["code".into()]);
    if responses.iter().any(|r| r != "code") {
        return reg_error("response_types may contain code only");
    }
    let name: String = req
        .get("client_name")
        .and_then(Value::as_str)
        .unwrap_or("unnamed client")
        .chars()
        .take(200)
        .collect();
    let client_id = format!("pc-{}", crate::web::random(16));
    let secret = (method != "none").then(|| crate::web::random(32));
    let now = portcullis_identity::now();
    let row = ClientRow {
        client_id: client_id.clone(),
        secret_hash: secret.as_deref().map(secrets::digest_hex),
        kind: "dcr".into(),
        client_name: name.clone(),
        redirect_uris: serde_json::to_string(&redirect_uris).unwrap_or_default(),
        application_type: app_type.into(),
        auth_method: method.into(),
        metadata: req.to_string(),
        created_at: now,
        fetched_at: None,
    };
    if let Err(e) = s.identity.store().upsert_client(&row).await {
        tracing::error!(error = %e, "storing a client registration failed");
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "registration could not be stored",
        );
    }
    tracing::info!(client_id, client_name = %name, application_type = app_type, "client registered");
    // Registration is unauthenticated: the registrant is anonymous; the record
    // names the client, never its secret.
    let detail = j!({"operation": "client.registered", "via": "dcr", "client_id": client_id,
                     "client_name": name, "application_type": app_type,
                     "auth_method": method, "redirect_uris": redirect_uris});
    let actor = crate::audit::anonymous(&origin, Some(&client_id));
    crate::audit::note(&s, "account.changed", actor, detail).await;
    let mut out = j!({
        "client_id": client_id,
        "client_id_issued_at": now,
        "client_name": name,
        "redirect_uris": redirect_uris,
        "grant_types": grants,
        "response_types": responses,
        "token_endpoint_auth_method": method,
        "application_type": app_type,
    });
    if let Some(sec) = secret {
        out["client_secret"] = j!(sec);
        out["client_secret_expires_at"] = j!(0);
    }
    json(StatusCode::CREATED, &out)
}

/// Authenticate the client of a token or revocation request. Returns the client.
pub(crate) async fn authenticate(
    s: &AuthServer,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Client, Response> {
    let basic = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, sec) = s.split_once(':')?;
            let dec = |x: &str| {
                url::form_urlencoded::parse(format!("x={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((dec(id)?, dec(sec)?))
        });
    let invalid = |why: &str| {
        let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why);
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
        r
    };
    let (client_id, secret) = match (&basic, form.get("client_id")) {
        (Some((id, sec)), body_id) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(invalid("client_id differs between header and body"));
            }
            (id.clone(), Some(sec.clone()))
        }
        (None, Some(id)) => (id.clone(), form.get("client_secret").cloned()),
        (None, None) => return Err(invalid("client authentication required (client_id)")),
    };
    let client = lookup(s, &client_id).await.map_err(|e| invalid(&e))?;
    match (
        client.auth_method.as_str(),
        client.secret_hash.as_deref(),
        secret,
    ) {
        ("none", _, None) => Ok(client),
        ("none", _, Some(_)) => Err(invalid("this client is public and has no secret")),
        (_, Some(hash), Some(sec)) => {
            let given = secrets::digest_hex(&sec);
            if secrets::same(given.as_bytes(), hash.as_bytes()) {
                Ok(client)
            } else {
                Err(invalid("client authentication failed"))
            }
        }
        _ => Err(invalid("client authentication failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_rules() {
        assert!(check_redirect_uri("http://127.0.0.1:3000/callback", "native").is_ok());
        assert!(check_redirect_uri("http://localhost/cb", "native").is_ok());
        assert!(check_redirect_uri("com.example.app:/cb", "native").is_ok());
        assert!(check_redirect_uri("https://app.example.com/cb", "web").is_ok());
        assert!(check_redirect_uri("http://evil.example.com/cb", "native").is_err());
        assert!(check_redirect_uri("http://127.0.0.1/cb", "web").is_err());
        assert!(check_redirect_uri("javascript:alert(1)", "native").is_err());
        assert!(check_redirect_uri("https://a.example/cb#frag", "web").is_err());
        assert!(check_redirect_uri("/relative", "native").is_err());
    }

    #[test]
    fn documents_are_checked() {
        let url = "https://client.example/meta.json";
        let ok =
            j!({"client_id": url, "client_name": "C", "redirect_uris": ["http://127.0.0.1:9/cb"]});
        assert_eq!(validate_document(url, &ok, 0).unwrap().kind, "cimd");
        let other = j!({"client_id": "https://evil.example/x", "client_name": "C", "redirect_uris": ["http://127.0.0.1:9/cb"]});
        assert!(validate_document(url, &other, 0)
            .unwrap_err()
            .contains("equal"));
        let no_uris = j!({"client_id": url, "client_name": "C"});
        assert!(validate_document(url, &no_uris, 0)
            .unwrap_err()
            .contains("redirect_uris"));
    }
}
