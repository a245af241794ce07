//! Identity for Portcullis: who is calling, and whether that is still true.
//!
//! It turns a bearer credential (an OAuth access token from the built-in
//! authorization server, or a personal / service-account token) into a
//! [`Principal`] without touching the database: the state it checks against is an
//! in-memory view rebuilt from the store's change feed (`identity_events`), which
//! every replica polls, so revocation reaches the hot path in well under a second.
//! It also owns the signing keys and the account operations the CLI, the admin API
//! and SCIM share. It is not the OAuth protocol (`portcullis-authserver`) and not
//! the HTTP edge (`portcullis-gateway` calls [`Identity::authenticate`]).

pub mod accounts;
pub mod keys;
mod principal;
pub mod secrets;
mod view;

pub use keys::{AccessClaims, KeySet};
pub use principal::{AuthFailure, Credential, Principal, TokenView, UserView};

use portcullis_config::{Access, Auth, Config};
use portcullis_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use view::View;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("key error: {0}")]
    Key(String),
}

/// A virtual server as a protected resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub vs: String,
    /// Canonical URI (RFC 8707): `<issuer>/mcp/<vs>`.
    pub uri: String,
    pub access: Access,
    pub description: Option<String>,
}

type ChangeListener = Box<dyn Fn(&[String]) + Send + Sync>;

pub struct Identity {
    store: Store,
    pub settings: Auth,
    issuer: String,
    resources: HashMap<String, Resource>,
    view: RwLock<Arc<View>>,
    /// Verified access tokens by digest: signature checks happen once per token.
    verified: Mutex<HashMap<[u8; 32], Arc<AccessClaims>>>,
    watches: Mutex<HashMap<String, Arc<tokio::sync::watch::Sender<u64>>>>,
    last_event: AtomicI64,
    listeners: Mutex<Vec<ChangeListener>>,
    reloading: tokio::sync::Mutex<()>,
    /// Where security events (logins, tokens, account changes) are recorded.
    audit: std::sync::OnceLock<portcullis_audit::Auditor>,
}

const VERIFIED_CACHE_MAX: usize = 100_000;

/// How often a running gateway checks whether its signing key is due for rotation.
const KEY_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The issuer (and public base URL) a configuration implies.
pub fn issuer_of(config: &Config) -> String {
    if let Some(i) = &config.auth.issuer {
        return i.trim_end_matches('/').to_owned();
    }
    if let Some(p) = &config.public_url {
        return p.trim_end_matches('/').to_owned();
    }
    format!("http://{}", config.listen)
}

impl Identity {
    /// Load the view, making sure a signing key exists.
    pub async fn open(store: Store, config: &Config) -> Result<Arc<Identity>, IdentityError> {
        let issuer = issuer_of(config);
        accounts::ensure_signing_key(&store, config.auth.key_rotation_days).await?;
        let resources = config
            .virtual_servers
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    Resource {
                        vs: v.name.clone(),
                        uri: format!("{issuer}/mcp/{}", v.name),
                        access: v.access.clone(),
                        description: v.description.clone(),
                    },
                )
            })
            .collect();
        let id = Arc::new(Identity {
            store,
            settings: config.auth.clone(),
            issuer,
            resources,
            view: RwLock::new(Arc::new(View::default())),
            verified: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            last_event: AtomicI64::new(0),
            listeners: Mutex::new(Vec::new()),
            reloading: tokio::sync::Mutex::new(()),
            audit: std::sync::OnceLock::new(),
        });
        id.reload(&[]).await?;
        Ok(id)
    }

    /// Record security events through `auditor` from now on (set once, at start).
    pub fn set_auditor(&self, auditor: portcullis_audit::Auditor) {
        let _ = self.audit.set(auditor);
    }

    /// The audit log for security events; a disabled one until `set_auditor`.
    pub fn audit(&self) -> &portcullis_audit::Auditor {
        static DISABLED: std::sync::OnceLock<portcullis_audit::Auditor> =
            std::sync::OnceLock::new();
        self.audit
            .get()
            .unwrap_or_else(|| DISABLED.get_or_init(portcullis_audit::Auditor::disabled))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn resource(&self, vs: &str) -> Option<&Resource> {
        self.resources.get(vs)
    }

    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// The virtual server whose canonical URI `uri` names, leniently (RFC 8707:
    /// scheme and host case, one trailing slash).
    pub fn resource_by_uri(&self, uri: &str) -> Option<&Resource> {
        let wanted = normalize_uri(uri)?;
        self.resources
            .values()
            .find(|r| normalize_uri(&r.uri).as_deref() == Some(wanted.as_str()))
    }

    /// PRM URL for a virtual server (RFC 9728, path-inserted).
    pub fn resource_metadata_url(&self, vs: &str) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp/{vs}",
            self.issuer
        )
    }

    fn current(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.current().keys.jwks().clone()
    }

    /// Resolve the `Authorization` header of a request to `vs`. No I/O.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        vs: &str,
    ) -> Result<Principal, AuthFailure> {
        let token = bearer(authorization).ok_or(AuthFailure::Missing)?;
        let view = self.current();
        let resource = self.resources.get(vs).ok_or(AuthFailure::WrongAudience)?;
        let principal = self.resolve(&view, token, Some(resource))?;
        check_access(&principal, resource)?;
        Ok(principal)
    }

    /// Resolve a credential without a virtual server (admin API, SCIM): only API
    /// tokens qualify, and the caller checks scopes.
    pub fn authenticate_api(&self, authorization: Option<&str>) -> Result<Principal, AuthFailure> {
        let token = bearer(authorization).ok_or(AuthFailure::Missing)?;
        if !is_api_token(token) {
            return Err(AuthFailure::WrongAudience);
        }
        self.resolve(&self.current(), token, None)
    }

    fn resolve(
        &self,
        view: &View,
        token: &str,
        resource: Option<&Resource>,
    ) -> Result<Principal, AuthFailure> {
        let now = now();
        if is_api_token(token) {
            let t = view
                .tokens
                .get(&secrets::digest(token))
                .ok_or(AuthFailure::Revoked)?
                .clone();
            if t.expires_at.is_some_and(|e| e <= now) {
                return Err(AuthFailure::Expired);
            }
            if let Some(r) = resource {
                if !t.allows_vs(&r.vs) {
                    return Err(AuthFailure::WrongAudience);
                }
            }
            let user = live_user(view, &t.user_id)?;
            return Ok(Principal {
                user,
                credential: Credential::ApiToken(t),
            });
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(AuthFailure::Malformed);
        }
        let digest = secrets::digest(token);
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(view.keys.verify(token, &self.issuer).map_err(|e| match e {
                    keys::VerifyError::Expired => AuthFailure::Expired,
                    keys::VerifyError::WrongIssuer => AuthFailure::WrongIssuer,
                    keys::VerifyError::Malformed => AuthFailure::Malformed,
                    _ => AuthFailure::BadSignature,
                })?);
                let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= VERIFIED_CACHE_MAX {
                    cache.retain(|_, c| c.exp > now);
                    if cache.len() >= VERIFIED_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(digest, c.clone());
                c
            }
        };
        if claims.exp <= now {
            return Err(AuthFailure::Expired);
        }
        match resource {
            Some(r) if claims.aud == r.uri => {}
            _ => return Err(AuthFailure::WrongAudience),
        }
        if view.revoked_families.contains(&claims.sid) {
            return Err(AuthFailure::Revoked);
        }
        let user = live_user(view, &claims.sub)?;
        Ok(Principal {
            user,
            credential: Credential::Access(claims),
        })
    }

    /// Whether a principal resolved earlier may still use `vs` (streams re-check
    /// this when their user changes).
    pub fn still_allowed(&self, p: &Principal, vs: &str) -> bool {
        let view = self.current();
        let Some(resource) = self.resources.get(vs) else {
            return false;
        };
        let Ok(user) = live_user(&view, &p.user.id) else {
            return false;
        };
        let fresh = Principal {
            user,
            credential: p.credential.clone(),
        };
        let credential_ok = match &p.credential {
            Credential::ApiToken(t) => view.token_ids.contains(&t.id),
            Credential::Access(c) => !view.revoked_families.contains(&c.sid) && c.exp > now(),
        };
        credential_ok && check_access(&fresh, resource).is_ok()
    }

    /// Whether the virtual server's access list admits this user.
    pub fn user_may_use(&self, u: &UserView, vs: &str) -> bool {
        self.resources.get(vs).is_some_and(|r| may_use(u, r))
    }

    /// Current view of a user (admin pages, login).
    pub fn user(&self, id: &str) -> Option<Arc<UserView>> {
        self.current().users.get(id).cloned()
    }

    /// Sign an access token for `user` at `resource`.
    pub fn mint_access(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        family: &str,
    ) -> Result<(String, i64), IdentityError> {
        let iat = now();
        let exp = iat + self.settings.access_token_ttl_secs as i64;
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: user_id.to_owned(),
            aud: resource.to_owned(),
            exp,
            iat,
            jti: portcullis_store::identity::new_id(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            sid: family.to_owned(),
        };
        let token = self
            .current()
            .keys
            .sign(&claims)
            .map_err(IdentityError::Key)?;
        Ok((token, exp))
    }

    /// Be told which users changed after each reload (the gateway closes their
    /// sessions when they lost access).
    pub fn on_change(&self, f: impl Fn(&[String]) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// Apply new events now (after a change made in this process).
    pub async fn refresh(&self) -> Result<(), IdentityError> {
        let _g = self.reloading.lock().await;
        let events = self
            .store
            .events_since(self.last_event.load(Ordering::Relaxed))
            .await?;
        if events.is_empty() {
            return Ok(());
        }
        let mut users: Vec<String> = events
            .iter()
            .filter(|e| e.kind != "keys")
            .filter_map(|e| e.subject.clone())
            .collect();
        users.sort();
        users.dedup();
        if events.iter().any(|e| e.kind == "keys") {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        self.reload_locked(&users).await
    }

    async fn reload(&self, changed: &[String]) -> Result<(), IdentityError> {
        let _g = self.reloading.lock().await;
        self.reload_locked(changed).await
    }

    async fn reload_locked(&self, changed: &[String]) -> Result<(), IdentityError> {
        let snap = self.store.identity_snapshot().await?;
        let last = snap.last_event;
        let view = {
            let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            View::build(snap, &self.settings.admin_groups, &mut watches)
        };
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        self.last_event.store(last, Ordering::Relaxed);
        if changed.is_empty() {
            return Ok(());
        }
        {
            let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            for u in changed {
                if let Some(w) = watches.get(u) {
                    w.send_modify(|v| *v += 1);
                }
            }
        }
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            l(changed);
        }
        Ok(())
    }

    /// Follow the change feed: every replica polls it, so a revocation made anywhere
    /// (CLI, admin API, SCIM, another replica) applies here within `every`.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_key_check = std::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(id) = me.upgrade() else { return };
                // Long-running gateways rotate their signing key on schedule too.
                if last_key_check.elapsed() >= KEY_CHECK_EVERY {
                    last_key_check = std::time::Instant::now();
                    match accounts::ensure_signing_key(&id.store, id.settings.key_rotation_days)
                        .await
                    {
                        Ok(Some(kid)) => id.audit().record_detached(
                            portcullis_audit::AuditEvent::security(
                                "keys.rotated",
                                Some(portcullis_audit::Actor::system()),
                                serde_json::json!({"operation": "keys.rotated", "via": "schedule", "kid": kid}),
                            ),
                        ),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "signing key rotation check failed"),
                    }
                }
                if let Err(e) = id.refresh().await {
                    tracing::warn!(error = %e, "identity change feed unavailable; keeping the last view");
                }
            }
        });
    }
}

fn live_user(view: &View, id: &str) -> Result<Arc<UserView>, AuthFailure> {
    let u = view.users.get(id).ok_or(AuthFailure::Revoked)?;
    if !u.active {
        return Err(AuthFailure::Disabled);
    }
    Ok(u.clone())
}

fn check_access(p: &Principal, r: &Resource) -> Result<(), AuthFailure> {
    if may_use(&p.user, r) {
        Ok(())
    } else {
        Err(AuthFailure::Forbidden)
    }
}

fn may_use(u: &UserView, r: &Resource) -> bool {
    r.access.is_open()
        || r.access.users.contains(&u.username)
        || r.access.groups.iter().any(|g| u.groups.contains(g))
}

pub fn is_api_token(token: &str) -> bool {
    token.starts_with(secrets::PAT_PREFIX) || token.starts_with(secrets::SERVICE_PREFIX)
}

fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// `scheme://host[:port]/path` with scheme and host lowercased and one trailing
/// slash removed; `None` for anything with a query or fragment.
pub fn normalize_uri(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    if u.query().is_some() || u.fragment().is_some() || !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let host = u.host_str()?.to_ascii_lowercase();
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = u.path().trim_end_matches('/');
    Some(format!("{}://{host}{port}{path}", u.scheme()))
}
