//! Login through the company's OpenID Connect providers: the gateway is a relying
//! party using the authorization-code flow with PKCE, a nonce, and a single-use
//! state stored only after consent. IdP quirks live in [`Adapter`].

use crate::audit::{self, Origin};
use crate::authorize::{self, error_page, fail_to_client, pending, Params};
use crate::web::{parse_form, redirect, with_query};
use crate::AuthServer;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_audit::AuditEvent;
use portcullis_config::{Idp, IdpKind};
use portcullis_identity::secrets;
use portcullis_store::identity::{NewUser, UserRow};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Provider-specific behaviour, kept in one place.
#[derive(Clone, Copy)]
enum Adapter {
    Generic,
    /// Entra ID v2: `resource` must not accompany `scope`; a multi-tenant
    /// discovery document names the issuer with a `{tenantid}` placeholder; and a
    /// user in many groups gets an overage marker instead of the list.
    Entra,
}

impl Adapter {
    fn issuer_matches(self, configured: &str, advertised: &str) -> bool {
        let c = configured.trim_end_matches('/');
        let a = advertised.trim_end_matches('/');
        match self {
            Adapter::Generic => c == a,
            Adapter::Entra => {
                c == a
                    || a.contains("{tenantid}")
                        && c.starts_with(a.split("{tenantid}").next().unwrap_or(""))
            }
        }
    }

    fn groups(self, claims: &Value, claim: &str) -> Option<Vec<String>> {
        if let Adapter::Entra = self {
            if claims.pointer("/_claim_names/groups").is_some() {
                tracing::warn!("Entra sent a groups overage marker; configure group filtering or SCIM for this IdP");
                return None;
            }
        }
        match claims.get(claim)? {
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            ),
            Value::String(s) => Some(
                s.split([',', ' '])
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            _ => None,
        }
    }
}

struct Discovered {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks: Vec<Value>,
    iss_supported: bool,
    at: Instant,
}

struct IdpRt {
    cfg: Idp,
    adapter: Adapter,
    cache: Mutex<Option<Arc<Discovered>>>,
}

pub(crate) struct Idps(HashMap<String, Arc<IdpRt>>, Vec<String>);

const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

impl Idps {
    pub fn new(cfg: &[Idp]) -> Idps {
        let map = cfg
            .iter()
            .map(|c| {
                let adapter = match c.kind {
                    IdpKind::Generic => Adapter::Generic,
                    IdpKind::Entra => Adapter::Entra,
                };
                (
                    c.name.clone(),
                    Arc::new(IdpRt {
                        cfg: c.clone(),
                        adapter,
                        cache: Mutex::new(None),
                    }),
                )
            })
            .collect();
        Idps(map, cfg.iter().map(|c| c.name.clone()).collect())
    }

    pub fn names(&self) -> Vec<String> {
        self.1.clone()
    }

    pub fn labels(&self) -> Vec<(String, String)> {
        self.1
            .iter()
            .filter_map(|n| self.0.get(n))
            .map(|i| {
                (
                    i.cfg.name.clone(),
                    i.cfg
                        .display_name
                        .clone()
                        .unwrap_or_else(|| i.cfg.name.clone()),
                )
            })
            .collect()
    }
}

async fn get_json(s: &AuthServer, url: &str) -> Result<Value, String> {
    let r = s
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    if !r.status().is_success() {
        return Err(format!("{url} answered HTTP {}", r.status()));
    }
    r.json().await.map_err(|e| format!("{url}: {e}"))
}

async fn discover(s: &AuthServer, idp: &IdpRt, force: bool) -> Result<Arc<Discovered>, String> {
    if !force {
        if let Some(d) = idp.cache.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            if d.at.elapsed() < DISCOVERY_TTL {
                return Ok(d);
            }
        }
    }
    let issuer = idp.cfg.issuer.trim_end_matches('/');
    let meta = get_json(s, &format!("{issuer}/.well-known/openid-configuration")).await?;
    let advertised = meta
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !idp.adapter.issuer_matches(issuer, advertised) {
        return Err(format!(
            "IdP metadata names issuer {advertised:?}, configured {issuer:?}"
        ));
    }
    let field = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or(format!("IdP metadata lacks {k}"))
    };
    let jwks = get_json(s, &field("jwks_uri")?).await?;
    let d = Arc::new(Discovered {
        authorization_endpoint: field("authorization_endpoint")?,
        token_endpoint: field("token_endpoint")?,
        jwks: jwks
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        iss_supported: meta
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            == Some(true),
        at: Instant::now(),
    });
    *idp.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(d.clone());
    Ok(d)
}

fn callback_url(s: &AuthServer) -> String {
    format!("{}/oauth/callback", s.issuer())
}

/// `GET /oauth/login/<idp>`: after consent, send the browser to the IdP.
pub(crate) async fn start(
    State(s): State<Arc<AuthServer>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let q = parse_form(q.unwrap_or_default().as_bytes());
    let Some(idp) = s.idps.0.get(&name).cloned() else {
        return error_page(StatusCode::NOT_FOUND, "Unknown identity provider.");
    };
    let (row, p) = match pending(&s, &headers, q.get("request"), q.get("csrf")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if row.idp.is_none() {
        return error_page(StatusCode::FORBIDDEN, "Approve the application first.");
    }
    let d = match discover(&s, &idp, false).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(idp = %name, error = %e, "IdP discovery failed");
            return fail_to_client(
                &s,
                &p,
                "temporarily_unavailable",
                "the identity provider is unreachable",
            );
        }
    };
    let state = crate::web::random(24);
    let nonce = crate::web::random(24);
    let verifier = crate::web::random(48);
    if s.identity
        .store()
        .begin_idp_login(&row.id, &name, &state, &nonce, &verifier)
        .await
        .is_err()
    {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not start the sign-in.",
        );
    }
    let challenge = secrets::pkce_challenge(&verifier);
    let scope = idp.cfg.scopes.join(" ");
    let redirect_uri = callback_url(&s);
    let params = [
        ("response_type", "code"),
        ("client_id", idp.cfg.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("nonce", nonce.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    redirect(&with_query(&d.authorization_endpoint, &params))
}

/// `GET /oauth/callback`: the IdP sends the browser back.
pub(crate) async fn callback(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    origin: Origin,
    RawQuery(q): RawQuery,
) -> Response {
    let q = parse_form(q.unwrap_or_default().as_bytes());
    let Some(state) = q.get("state").filter(|v| !v.is_empty()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The identity provider's answer has no state.",
        );
    };
    // Single use: the row is deleted as it is read.
    let row = match s.identity.store().take_by_idp_state(state).await {
        Ok(Some(r)) => r,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in is unknown, expired or already used.",
            )
        }
    };
    // Only the browser that consented may finish: otherwise an attacker could send
    // a victim straight to the IdP and collect a code for the victim's account.
    let cookie = crate::web::cookie(&headers, authorize::COOKIE).unwrap_or_default();
    if !secrets::same(cookie.as_bytes(), row.csrf.as_bytes()) {
        tracing::warn!("IdP callback from a browser that did not consent; refused");
        let detail = json!({"method": "oidc", "idp": row.idp, "reason": "foreign_browser",
                            "error": "the callback came from a browser that did not consent"});
        audit::note(
            &s,
            "auth.login_failed",
            audit::anonymous(&origin, None),
            detail,
        )
        .await;
        return error_page(
            StatusCode::FORBIDDEN,
            "This sign-in did not start in this browser.",
        );
    }
    let Ok(p) = serde_json::from_str::<Params>(&row.params) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, expired or already used.",
        );
    };
    let name = row.idp.clone().unwrap_or_default();
    let Some(idp) = s.idps.0.get(&name).cloned() else {
        return error_page(StatusCode::BAD_REQUEST, "Unknown identity provider.");
    };
    let detail = json!({"method": "oidc", "idp": name, "flow": "oauth",
                        "client_id": p.client_id, "virtual_server": p.vs});
    let failed = |reason: &str, why: &str| {
        let mut d = detail.clone();
        d["reason"] = json!(reason);
        d["error"] = json!(why);
        audit::note(
            &s,
            "auth.login_failed",
            audit::anonymous(&origin, Some(&p.client_id)),
            d,
        )
    };
    match finish(&s, &idp, &q, &row, &p).await {
        Ok(user) => {
            tracing::info!(user = %user.username, idp = %name, "login");
            // The login may have created the user and synced their groups.
            if let Err(e) = s.identity.refresh().await {
                tracing::warn!(error = %e, "identity refresh after an IdP login failed");
            }
            let actor = audit::signed_in(&s, &user, "oidc", Some(&p.client_id), &origin);
            let event = AuditEvent::security("auth.login", Some(actor), detail.clone());
            if !audit::record(&s, event).await {
                return fail_to_client(
                    &s,
                    &p,
                    "temporarily_unavailable",
                    "the sign-in cannot be recorded in the audit log right now",
                );
            }
            authorize::issue_code(&s, &p, &user).await
        }
        Err(Failure::Denied(why)) => {
            tracing::info!(idp = %name, reason = %why, "login refused");
            failed(denial_reason(&why), &why).await;
            fail_to_client(&s, &p, "access_denied", &why)
        }
        Err(Failure::Broken(why)) => {
            tracing::warn!(idp = %name, reason = %why, "login failed");
            let reason = if why.contains("id_token") {
                "bad_id_token"
            } else {
                "idp_error"
            };
            failed(reason, &why).await;
            fail_to_client(
                &s,
                &p,
                "server_error",
                "sign-in with the identity provider failed",
            )
        }
    }
}

enum Failure {
    Denied(String),
    Broken(String),
}

/// The audit `reason` of a refused IdP login.
fn denial_reason(why: &str) -> &'static str {
    if why.contains("disabled") {
        "account_disabled"
    } else if why.contains("identity provider refused") {
        "idp_refused"
    } else if why.contains("issuer") || why.contains("iss parameter") {
        "issuer_mismatch"
    } else if why.contains("belongs to another account") {
        "username_taken"
    } else {
        "refused"
    }
}

async fn finish(
    s: &AuthServer,
    idp: &IdpRt,
    q: &HashMap<String, String>,
    row: &portcullis_store::identity::AuthRequestRow,
    _p: &Params,
) -> Result<UserRow, Failure> {
    let d = discover(s, idp, false).await.map_err(Failure::Broken)?;
    // RFC 9207: a response from another issuer is a mix-up attack.
    match q.get("iss") {
        Some(iss) if !idp.adapter.issuer_matches(&idp.cfg.issuer, iss) => {
            return Err(Failure::Denied(
                "the answer came from another issuer".into(),
            ))
        }
        None if d.iss_supported => {
            return Err(Failure::Denied("the answer lacks the iss parameter".into()))
        }
        _ => {}
    }
    if let Some(e) = q.get("error") {
        return Err(Failure::Denied(format!(
            "the identity provider refused: {e}"
        )));
    }
    let code = q
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or(Failure::Denied("no code".into()))?;
    let verifier = row.idp_verifier.clone().unwrap_or_default();
    let redirect_uri = callback_url(s);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let enc = |x: &str| url::form_urlencoded::byte_serialize(x.as_bytes()).collect::<String>();
    let mut req = s
        .http
        .post(&d.token_endpoint)
        .header("accept", "application/json");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    req = match &idp.cfg.client_secret {
        Some(sec) => req.basic_auth(enc(&idp.cfg.client_id), Some(enc(sec))),
        None => req,
    };
    let body = if idp.cfg.client_secret.is_none() {
        format!("{body}&client_id={}", enc(&idp.cfg.client_id))
    } else {
        body
    };
    let resp = req
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Broken(format!("token endpoint: {}", e.without_url())))?;
    let status = resp.status();
    let tokens: Value = resp
        .json()
        .await
        .map_err(|e| Failure::Broken(format!("token response: {e}")))?;
    if !status.is_success() {
        return Err(Failure::Broken(format!(
            "token endpoint answered {status}: {}",
            tokens.get("error").and_then(Value::as_str).unwrap_or("?")
        )));
    }
    let id_token = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or(Failure::Broken("no id_token in the token response".into()))?;
    let claims = verify_id_token(
        s,
        idp,
        id_token,
        row.idp_nonce.as_deref().unwrap_or_default(),
    )
    .await?;
    upsert_user(s, idp, &claims).await
}

async fn verify_id_token(
    s: &AuthServer,
    idp: &IdpRt,
    token: &str,
    nonce: &str,
) -> Result<Value, Failure> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| Failure::Broken("malformed id_token".into()))?;
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    ) {
        return Err(Failure::Broken("id_token algorithm not accepted".into()));
    }
    let mut d = discover(s, idp, false).await.map_err(Failure::Broken)?;
    let find = |d: &Discovered| -> Option<DecodingKey> {
        let jwk = d.jwks.iter().find(|k| match &header.kid {
            Some(kid) => k.get("kid").and_then(Value::as_str) == Some(kid),
            None => true,
        })?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).ok()?;
        DecodingKey::from_jwk(&jwk).ok()
    };
    let key = match find(&d) {
        Some(k) => k,
        None => {
            // The IdP may have rotated its keys.
            d = discover(s, idp, true).await.map_err(Failure::Broken)?;
            find(&d).ok_or(Failure::Broken(
                "id_token signed with an unknown key".into(),
            ))?
        }
    };
    let mut v = Validation::new(header.alg);
    v.set_audience(&[&idp.cfg.client_id]);
    v.leeway = 60;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v)
        .map_err(|e| Failure::Broken(format!("id_token rejected: {e}")))?;
    let c = data.claims;
    let iss = c.get("iss").and_then(Value::as_str).unwrap_or_default();
    if !idp.adapter.issuer_matches(&idp.cfg.issuer, iss) {
        return Err(Failure::Broken("id_token from another issuer".into()));
    }
    if c.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(Failure::Broken("id_token nonce does not match".into()));
    }
    Ok(c)
}

async fn upsert_user(s: &AuthServer, idp: &IdpRt, c: &Value) -> Result<UserRow, Failure> {
    let db = |e: portcullis_store::StoreError| Failure::Broken(format!("store: {e}"));
    let store = s.identity.store();
    let name = idp.cfg.name.as_str();
    let sub = c.get("sub").and_then(Value::as_str).unwrap_or_default();
    let email = c.get("email").and_then(Value::as_str);
    // An unverified address is a claim anyone can make at some IdPs: never a key.
    let verified_email =
        email.filter(|_| c.get("email_verified").and_then(Value::as_bool) == Some(true));
    let display = c.get("name").and_then(Value::as_str);
    let username = c
        .get("preferred_username")
        .and_then(Value::as_str)
        .or(verified_email)
        .map(String::from)
        .unwrap_or_else(|| format!("{name}:{sub}"));
    let user = match store.user_by_idp(name, sub).await.map_err(db)? {
        Some(u) => u,
        None => match store.user_by_username(&username).await.map_err(db)? {
            // Provisioned for SSO earlier (SCIM) and never linked: link it. A local
            // (password) account is never taken over by an IdP login.
            Some(u)
                if u.idp_subject.is_none()
                    && u.kind == "user"
                    && u.idp.as_deref().is_none_or(|i| i == "scim") =>
            {
                store
                    .link_idp(&u.id, name, sub, email, display)
                    .await
                    .map_err(db)?;
                store
                    .user(&u.id)
                    .await
                    .map_err(db)?
                    .ok_or(Failure::Broken("user vanished".into()))?
            }
            Some(_) => {
                return Err(Failure::Denied(format!(
                    "the username {username:?} belongs to another account"
                )))
            }
            None => store
                .create_user(&NewUser {
                    kind: "user".into(),
                    username: username.clone(),
                    email: email.map(String::from),
                    display_name: display.map(String::from),
                    idp: Some(name.into()),
                    idp_subject: Some(sub.into()),
                    ..Default::default()
                })
                .await
                .map_err(db)?,
        },
    };
    if !user.active {
        return Err(Failure::Denied("this account is disabled".into()));
    }
    if let Some(groups) = idp.adapter.groups(c, &idp.cfg.groups_claim) {
        store
            .sync_user_groups(&user.id, &groups)
            .await
            .map_err(db)?;
    }
    Ok(user)
}
