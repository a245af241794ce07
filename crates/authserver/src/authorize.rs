//! The browser side of the authorization-code flow: `/oauth/authorize` validates
//! the request and shows the consent page; only after consent does the browser go
//! to a login (an IdP or the local password form); a successful login ends with a
//! code sent to the client's exact redirect URI, with `state` and `iss`.

use crate::audit::{self, Origin};
use crate::clients;
use crate::web::{self, escape, html, page, parse_form, redirect, with_query, MAX_BODY};
use crate::AuthServer;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use portcullis_audit::AuditEvent;
use portcullis_identity::accounts::{self, PasswordCheck};
use portcullis_identity::secrets;
use portcullis_store::identity::{AuthCodeRow, AuthRequestRow, UserRow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

const REQUEST_TTL_SECS: i64 = 600;
const CODE_TTL_SECS: i64 = 60;
pub(crate) const COOKIE: &str = "pc_authz";

/// A validated authorization request, kept between the consent page and the code.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Params {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub scope: String,
    pub resource: String,
    pub vs: String,
}

pub(crate) fn error_page(status: StatusCode, what: &str) -> Response {
    html(
        status,
        page(
            "Authorization failed",
            &format!("<div class=\"box warn\"><p>{}</p></div><p>Close this window and try again from your application.</p>", escape(what)),
        ),
    )
}

/// Send the browser back to the client with an OAuth error (RFC 6749 §4.1.2.1,
/// `iss` per RFC 9207).
pub(crate) fn fail_to_client(
    s: &AuthServer,
    p: &Params,
    error: &str,
    description: &str,
) -> Response {
    let mut q = vec![
        ("error", error),
        ("error_description", description),
        ("iss", s.issuer()),
    ];
    if let Some(st) = &p.state {
        q.push(("state", st));
    }
    redirect(&with_query(&p.redirect_uri, &q))
}

pub(crate) async fn authorize(State(s): State<Arc<AuthServer>>, RawQuery(q): RawQuery) -> Response {
    let q = parse_form(q.unwrap_or_default().as_bytes());
    let get = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    // Until client and redirect URI are known good, errors stay on our page:
    // redirecting to an unchecked URI would make the gateway an open redirector.
    let Some(client_id) = get("client_id") else {
        return error_page(StatusCode::BAD_REQUEST, "The request has no client_id.");
    };
    let client = match clients::lookup(&s, &client_id).await {
        Ok(c) => c,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let redirect_uri = match get("redirect_uri") {
        Some(r) if client.redirect_uris.contains(&r) => r,
        Some(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The redirect_uri is not registered for this client.",
            )
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "redirect_uri is required for this client.",
            )
        }
    };
    let mut p = Params {
        client_id: client.client_id.clone(),
        client_name: client.name.clone(),
        redirect_uri,
        state: get("state"),
        code_challenge: String::new(),
        scope: String::new(),
        resource: String::new(),
        vs: String::new(),
    };
    if get("response_type").as_deref() != Some("code") {
        return fail_to_client(
            &s,
            &p,
            "unsupported_response_type",
            "response_type must be code",
        );
    }
    match (get("code_challenge"), get("code_challenge_method")) {
        (Some(c), Some(m)) if m == "S256" && c.len() == 43 => p.code_challenge = c,
        (Some(_), Some(m)) if m == "S256" => {
            return fail_to_client(
                &s,
                &p,
                "invalid_request",
                "code_challenge must be 43 base64url characters",
            )
        }
        _ => {
            return fail_to_client(
                &s,
                &p,
                "invalid_request",
                "PKCE with code_challenge_method=S256 is required",
            )
        }
    }
    let Some(resource) = get("resource") else {
        return fail_to_client(
            &s,
            &p,
            "invalid_target",
            "the resource parameter is required (RFC 8707)",
        );
    };
    let Some(r) = s.identity.resource_by_uri(&resource) else {
        return fail_to_client(
            &s,
            &p,
            "invalid_target",
            "resource is not a virtual server of this gateway",
        );
    };
    p.resource = r.uri.clone();
    p.vs = r.vs.clone();
    let scope = get("scope").unwrap_or_else(|| "mcp".into());
    if scope
        .split(' ')
        .filter(|x| !x.is_empty())
        .any(|x| x != "mcp")
    {
        return fail_to_client(&s, &p, "invalid_scope", "the only scope is \"mcp\"");
    }
    p.scope = "mcp".into();
    let row = AuthRequestRow {
        id: web::random(24),
        params: serde_json::to_string(&p).unwrap_or_default(),
        csrf: web::random(24),
        idp_state: None,
        idp_nonce: None,
        idp_verifier: None,
        idp: None,
        expires_at: portcullis_identity::now() + REQUEST_TTL_SECS,
    };
    if let Err(e) = s.identity.store().insert_auth_request(&row).await {
        tracing::error!(error = %e, "storing an authorization request failed");
        return fail_to_client(&s, &p, "server_error", "the request could not be stored");
    }
    let mut r = html(
        StatusCode::OK,
        consent_page(&p, &row.id, &row.csrf, &client.kind),
    );
    web::set_cookie(&mut r, COOKIE, &row.csrf, "/oauth", s.secure_cookies());
    r
}

fn consent_page(p: &Params, request: &str, csrf: &str, kind: &str) -> String {
    let redirect_host = url::Url::parse(&p.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_else(|| p.redirect_uri.clone());
    let local = matches!(
        redirect_host.as_str(),
        "127.0.0.1" | "localhost" | "[::1]" | "::1"
    );
    let mut body = format!(
        "<p><b>{name}</b> wants to use <b>{vs}</b> through Portcullis on your behalf.</p>\
<div class=\"box\"><p>Client id: <code>{id}</code>{verified}</p><p>Access: tools, prompts and resources of <code>{resource}</code> (scope <code>{scope}</code>)</p>\
<p>After you sign in, the result goes to <code>{host}</code></p></div>",
        name = escape(&p.client_name),
        vs = escape(&p.vs),
        id = escape(&p.client_id),
        verified = if kind == "cimd" { " (identified by its metadata document)" } else { " (self-registered: the name is not verified)" },
        resource = escape(&p.resource),
        scope = escape(&p.scope),
        host = escape(&redirect_host),
    );
    if local {
        body.push_str("<div class=\"box warn\"><p>This application receives the result on this computer (localhost). Approve only if you started it yourself just now.</p></div>");
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/oauth/consent\"><input type=\"hidden\" name=\"request\" value=\"{r}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{c}\"><button name=\"decision\" value=\"approve\">Approve and sign in</button>\
<button name=\"decision\" value=\"deny\">Deny</button></form>",
        r = escape(request),
        c = escape(csrf)
    ));
    page("Allow access?", &body)
}

/// Load a pending request and check that this browser is the one that started it
/// (the CSRF value is in both the form and a SameSite cookie).
pub(crate) async fn pending(
    s: &AuthServer,
    headers: &HeaderMap,
    request: Option<&String>,
    csrf: Option<&String>,
) -> Result<(AuthRequestRow, Params), Response> {
    let expired = || {
        error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in request is unknown or has expired.",
        )
    };
    let Some(id) = request else {
        return Err(expired());
    };
    let row = match s.identity.store().auth_request(id).await {
        Ok(Some(r)) => r,
        _ => return Err(expired()),
    };
    let cookie = web::cookie(headers, COOKIE).unwrap_or_default();
    let form = csrf.cloned().unwrap_or_default();
    if !(secrets::same(form.as_bytes(), row.csrf.as_bytes())
        && secrets::same(cookie.as_bytes(), row.csrf.as_bytes()))
    {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            "This sign-in request did not come from this browser.",
        ));
    }
    let p: Params = serde_json::from_str(&row.params).map_err(|_| expired())?;
    Ok((row, p))
}

pub(crate) async fn consent(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, "Request too large.");
    };
    let f = parse_form(&bytes);
    let (row, p) = match pending(&s, &headers, f.get("request"), f.get("csrf")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if f.get("decision").map(String::as_str) != Some("approve") {
        let _ = s.identity.store().delete_auth_request(&row.id).await;
        return fail_to_client(&s, &p, "access_denied", "the user denied the request");
    }
    if s.identity.store().mark_consented(&row.id).await.is_err() {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not record consent.",
        );
    }
    let local = s.identity.settings.local_login;
    let idps = s.idps.names();
    let q = [("request", row.id.as_str()), ("csrf", row.csrf.as_str())];
    match (idps.as_slice(), local) {
        ([], true) => redirect(&with_query(&format!("{}/oauth/local", s.issuer()), &q)),
        ([only], false) => redirect(&with_query(
            &format!("{}/oauth/login/{only}", s.issuer()),
            &q,
        )),
        ([], false) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "No login method is configured on this gateway.",
        ),
        _ => {
            let mut body = String::from("<p>Choose how to sign in:</p>");
            for (name, label) in s.idps.labels() {
                let href = with_query(&format!("{}/oauth/login/{name}", s.issuer()), &q);
                body.push_str(&format!(
                    "<p><a href=\"{}\">Sign in with {}</a></p>",
                    escape(&href),
                    escape(&label)
                ));
            }
            if local {
                let href = with_query(&format!("{}/oauth/local", s.issuer()), &q);
                body.push_str(&format!(
                    "<p><a href=\"{}\">Sign in with a local account</a></p>",
                    escape(&href)
                ));
            }
            html(StatusCode::OK, page("Sign in", &body))
        }
    }
}

fn too_many_attempts() -> Response {
    tracing::warn!("local login throttled after repeated failures");
    error_page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many failed sign-in attempts for this account. Wait five minutes and try again.",
    )
}

fn consented(row: &AuthRequestRow) -> bool {
    row.idp.is_some()
}

fn login_form(action: &str, hidden: &[(&str, &str)], error: Option<&str>) -> String {
    let mut h = String::new();
    for (k, v) in hidden {
        h.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(k),
            escape(v)
        ));
    }
    let err = error
        .map(|e| format!("<div class=\"box warn\"><p>{}</p></div>", escape(e)))
        .unwrap_or_default();
    format!(
        "{err}<form method=\"post\" action=\"{a}\">{h}<label>Username<input name=\"username\" autocomplete=\"username\" required></label>\
<label>Password<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label><button>Sign in</button></form>",
        a = escape(action)
    )
}

pub(crate) async fn local_form(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let q = parse_form(q.unwrap_or_default().as_bytes());
    if !s.identity.settings.local_login {
        return error_page(
            StatusCode::NOT_FOUND,
            "Local accounts are disabled on this gateway.",
        );
    }
    let (row, _) = match pending(&s, &headers, q.get("request"), q.get("csrf")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !consented(&row) {
        return error_page(StatusCode::FORBIDDEN, "Approve the application first.");
    }
    let hidden = [("request", row.id.as_str()), ("csrf", row.csrf.as_str())];
    html(
        StatusCode::OK,
        page("Sign in", &login_form("/oauth/local", &hidden, None)),
    )
}

pub(crate) async fn local_login(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    origin: Origin,
    body: Body,
) -> Response {
    if !s.identity.settings.local_login {
        return error_page(
            StatusCode::NOT_FOUND,
            "Local accounts are disabled on this gateway.",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, "Request too large.");
    };
    let f = parse_form(&bytes);
    let (row, p) = match pending(&s, &headers, f.get("request"), f.get("csrf")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !consented(&row) {
        return error_page(StatusCode::FORBIDDEN, "Approve the application first.");
    }
    let ctx = LoginCtx {
        flow: "oauth",
        client_id: Some(&p.client_id),
        vs: Some(&p.vs),
    };
    let checked = match throttled_password(&s, &f, &origin, &ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match checked {
        Some(u) => {
            tracing::info!(user = %u.username, method = "local", "login");
            let _ = s.identity.store().delete_auth_request(&row.id).await;
            issue_code(&s, &p, &u).await
        }
        None => {
            let hidden = [("request", row.id.as_str()), ("csrf", row.csrf.as_str())];
            html(
                StatusCode::UNAUTHORIZED,
                page(
                    "Sign in",
                    &login_form("/oauth/local", &hidden, Some("Wrong username or password.")),
                ),
            )
        }
    }
}

/// Where a password login happens, for its audit record.
struct LoginCtx<'a> {
    /// `oauth` (an application's authorization request) or `account_page` (`/login`).
    flow: &'static str,
    client_id: Option<&'a str>,
    vs: Option<&'a str>,
}

impl LoginCtx<'_> {
    fn detail(&self) -> serde_json::Value {
        json!({"method": "password", "flow": self.flow, "client_id": self.client_id,
               "virtual_server": self.vs})
    }

    /// `auth.login_failed` for `username` (attempted, so the actor is anonymous).
    async fn failed(&self, s: &AuthServer, origin: &Origin, username: &str, reason: &str) {
        let mut detail = self.detail();
        detail["username"] = json!(audit::attempted(username));
        detail["reason"] = json!(reason);
        let actor = audit::anonymous(origin, self.client_id);
        audit::note(s, "auth.login_failed", actor, detail).await;
    }
}

/// Check the form's username and password, with the per-account brake on
/// guessing, and record the attempt. `Ok(None)`: wrong credentials; `Err`: a
/// page to show instead (throttled, or a login the audit log cannot record
/// while it fails closed).
async fn throttled_password(
    s: &AuthServer,
    f: &HashMap<String, String>,
    origin: &Origin,
    ctx: &LoginCtx<'_>,
) -> Result<Option<UserRow>, Response> {
    let user = f.get("username").cloned().unwrap_or_default();
    let pw = f.get("password").cloned().unwrap_or_default();
    if !s.may_try_password(&user) {
        ctx.failed(s, origin, &user, "throttled").await;
        return Err(too_many_attempts());
    }
    let checked = accounts::check_local_password_detail(s.identity.store(), &user, &pw).await;
    drop(pw);
    s.record_password_result(&user, matches!(checked, Ok(PasswordCheck::Ok(_))));
    match checked {
        Ok(PasswordCheck::Ok(u)) => {
            let actor = audit::signed_in(s, &u, "password", ctx.client_id, origin);
            let event = AuditEvent::security("auth.login", Some(actor), ctx.detail());
            if !audit::record(s, event).await {
                return Err(error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The sign-in cannot be recorded in the audit log right now. Try again later.",
                ));
            }
            Ok(Some(*u))
        }
        Ok(refused) => {
            tracing::info!(user = %user, method = "local", reason = refused.reason(), "login failed");
            ctx.failed(s, origin, &user, refused.reason()).await;
            Ok(None)
        }
        Err(e) => {
            tracing::error!(error = %e, "local login failed");
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed.",
            ))
        }
    }
}

/// A person is authenticated: check they may use the resource, then send the
/// client its code.
pub(crate) async fn issue_code(s: &AuthServer, p: &Params, user: &UserRow) -> Response {
    if let Err(e) = s.identity.refresh().await {
        tracing::warn!(error = %e, "identity refresh before issuing a code failed");
    }
    let allowed = s
        .identity
        .user(&user.id)
        .is_some_and(|u| u.active && s.identity.user_may_use(&u, &p.vs));
    if !allowed {
        tracing::info!(user = %user.username, virtual_server = %p.vs, "authorization denied: no access");
        return fail_to_client(
            s,
            p,
            "access_denied",
            "you are not permitted to use this virtual server",
        );
    }
    let code = web::random(32);
    let row = AuthCodeRow {
        code_hash: secrets::digest_hex(&code),
        client_id: p.client_id.clone(),
        user_id: user.id.clone(),
        redirect_uri: p.redirect_uri.clone(),
        code_challenge: p.code_challenge.clone(),
        resource: p.resource.clone(),
        scope: p.scope.clone(),
        expires_at: portcullis_identity::now() + CODE_TTL_SECS,
        used_at: None,
        family_id: None,
    };
    if s.identity.store().insert_code(&row).await.is_err() {
        return fail_to_client(s, p, "server_error", "the code could not be stored");
    }
    let mut q = vec![("code", code.as_str()), ("iss", s.issuer())];
    if let Some(st) = &p.state {
        q.push(("state", st));
    }
    redirect(&with_query(&p.redirect_uri, &q))
}

/// `/login`: a person signs in to see their virtual servers and endpoints.
pub(crate) async fn account_form(State(s): State<Arc<AuthServer>>) -> Response {
    if !s.identity.settings.local_login {
        return error_page(
            StatusCode::NOT_FOUND,
            "Local accounts are disabled on this gateway.",
        );
    }
    html(
        StatusCode::OK,
        page("Sign in to Portcullis", &login_form("/login", &[], None)),
    )
}

pub(crate) async fn account_login(
    State(s): State<Arc<AuthServer>>,
    origin: Origin,
    body: Body,
) -> Response {
    if !s.identity.settings.local_login {
        return error_page(
            StatusCode::NOT_FOUND,
            "Local accounts are disabled on this gateway.",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, "Request too large.");
    };
    let f: HashMap<String, String> = parse_form(&bytes);
    let ctx = LoginCtx {
        flow: "account_page",
        client_id: None,
        vs: None,
    };
    let checked = match throttled_password(&s, &f, &origin, &ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(u) = checked else {
        return html(
            StatusCode::UNAUTHORIZED,
            page(
                "Sign in to Portcullis",
                &login_form("/login", &[], Some("Wrong username or password.")),
            ),
        );
    };
    let _ = s.identity.refresh().await;
    let view = s.identity.user(&u.id);
    let mut servers: Vec<_> = s
        .identity
        .resources()
        .filter(|r| {
            view.as_ref()
                .is_some_and(|v| s.identity.user_may_use(v, &r.vs))
        })
        .collect();
    servers.sort_by(|a, b| a.vs.cmp(&b.vs));
    let mut body = format!(
        "<p>Signed in as <b>{}</b>{}.</p><p>Your MCP endpoints (clients sign in with OAuth automatically):</p>",
        escape(&u.username),
        if view.as_ref().is_some_and(|v| v.is_admin) { " (administrator)" } else { "" }
    );
    for r in servers {
        body.push_str(&format!(
            "<div class=\"box\"><p><b>{}</b></p><p><code>{}</code></p></div>",
            escape(&r.vs),
            escape(&r.uri)
        ));
    }
    body.push_str("<p>Personal access tokens for agents and CI: <code>portcullis token create</code> or the admin API.</p>");
    html(StatusCode::OK, page("Portcullis", &body))
}
