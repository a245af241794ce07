//! Who is calling: the principal a credential resolves to, and why a credential
//! was refused.

use crate::keys::AccessClaims;
use std::sync::Arc;
use tokio::sync::watch;

/// A person or a service account as the hot path sees it.
#[derive(Debug)]
pub struct UserView {
    pub id: String,
    pub username: String,
    /// `user` or `service`.
    pub kind: String,
    pub email: Option<String>,
    pub active: bool,
    pub is_admin: bool,
    pub groups: Vec<String>,
    /// Bumped whenever this user or one of their credentials changes.
    pub changes: Arc<watch::Sender<u64>>,
}

/// A personal access or service-account token.
#[derive(Debug)]
pub struct TokenView {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

impl TokenView {
    pub fn allows_vs(&self, vs: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s == "vs:*" || s.strip_prefix("vs:") == Some(vs))
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    /// An OAuth access token issued by the built-in authorization server.
    Access(Arc<AccessClaims>),
    /// A personal access or service-account token.
    ApiToken(Arc<TokenView>),
}

/// The authenticated caller of one HTTP request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: Arc<UserView>,
    pub credential: Credential,
}

impl Principal {
    /// Who this is, as an audit record names them: never the credential,
    /// only its id. The caller adds what only it knows (address, user agent,
    /// client name).
    pub fn audit_actor(&self) -> portcullis_audit::Actor {
        let u = &self.user;
        portcullis_audit::Actor {
            kind: if u.kind == "service" {
                "service"
            } else {
                "user"
            }
            .into(),
            id: Some(u.id.clone()),
            username: Some(u.username.clone()),
            groups: u.groups.clone(),
            token_id: Some(self.credential_id().to_owned()),
            auth_method: Some(
                match self.credential {
                    Credential::Access(_) => "oauth",
                    Credential::ApiToken(_) => "api_token",
                }
                .into(),
            ),
            client_id: self.client_id().map(str::to_owned),
            ..Default::default()
        }
    }

    /// Stable key sessions are bound to: the user, not the credential, so a
    /// refreshed token keeps its session.
    pub fn subject(&self) -> &str {
        &self.user.id
    }

    /// Identifier of the credential, for logs and audit (never the secret).
    pub fn credential_id(&self) -> &str {
        match &self.credential {
            Credential::Access(c) => &c.jti,
            Credential::ApiToken(t) => &t.id,
        }
    }

    pub fn client_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::Access(c) => Some(&c.client_id),
            Credential::ApiToken(_) => None,
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        match &self.credential {
            Credential::Access(c) => c.scope.split(' ').any(|s| s == scope),
            Credential::ApiToken(t) => t.has_scope(scope),
        }
    }
}

/// Why a request was refused. Each maps to a precise OAuth error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signature or key not recognised")]
    BadSignature,
    #[error("token issued by another issuer")]
    WrongIssuer,
    #[error("token expired")]
    Expired,
    #[error("token is not valid for this resource")]
    WrongAudience,
    #[error("token unknown or revoked")]
    Revoked,
    #[error("account disabled")]
    Disabled,
    #[error("not permitted to use this virtual server")]
    Forbidden,
}

impl AuthFailure {
    /// 403 for a valid credential without access; 401 otherwise.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthFailure::Forbidden)
    }

    /// `error` of the `WWW-Authenticate` challenge (RFC 6750 §3.1).
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            AuthFailure::Missing => None,
            AuthFailure::Forbidden => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }
}
