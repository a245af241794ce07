//! Authentication settings: the built-in authorization server, the company IdPs
//! it federates to, and who administers the gateway.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every MCP request needs a token (the default).
    #[default]
    Required,
    /// No authentication: allowed only on loopback listen addresses (local development).
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub mode: AuthMode,
    /// Issuer URL of the built-in authorization server; defaults to `public_url`,
    /// else `http://<listen>`.
    pub issuer: Option<String>,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Longest lifetime a personal or service-account token may be given.
    pub max_api_token_ttl_days: u64,
    /// Offer the local username/password login (demo, air-gapped installs).
    pub local_login: bool,
    pub idps: Vec<Idp>,
    /// Members of these groups are gateway administrators.
    pub admin_groups: Vec<String>,
    pub cimd: Cimd,
    pub registration: Registration,
    /// Rotate the token signing key after this many days (0: never).
    pub key_rotation_days: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: AuthMode::Required,
            issuer: None,
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 86_400,
            max_api_token_ttl_days: 365,
            local_login: true,
            idps: Vec::new(),
            admin_groups: Vec::new(),
            cimd: Cimd::default(),
            registration: Registration::default(),
            key_rotation_days: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdpKind {
    #[default]
    Generic,
    /// Microsoft Entra ID: v2 endpoints reject the `resource` parameter next to
    /// `scope`, and groups may arrive as object ids.
    Entra,
}

/// An OpenID Connect provider users log in with.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Idp {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub issuer: String,
    pub client_id: String,
    /// Client secret (use `${ENV_VAR}`); never logged or stored in the database.
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default = "default_idp_scopes")]
    pub scopes: Vec<String>,
    /// ID-token or userinfo claim holding group names.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default)]
    pub kind: IdpKind,
}

fn default_idp_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Client ID Metadata Documents: how the gateway fetches a client's document.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cimd {
    pub enabled: bool,
    /// Development only: accept `http://` documents on loopback addresses.
    pub allow_insecure_loopback: bool,
    pub max_bytes: usize,
    pub timeout_ms: u64,
    pub cache_secs: u64,
}

impl Default for Cimd {
    fn default() -> Self {
        Cimd {
            enabled: true,
            allow_insecure_loopback: false,
            max_bytes: 16 * 1024,
            timeout_ms: 5_000,
            cache_secs: 3_600,
        }
    }
}

/// Dynamic Client Registration (RFC 7591).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    pub enabled: bool,
    /// Registrations accepted per minute across all callers.
    pub per_minute: u32,
}

impl Default for Registration {
    fn default() -> Self {
        Registration {
            enabled: true,
            per_minute: 30,
        }
    }
}

/// Who may use a virtual server. Empty lists: every authenticated principal.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    pub groups: Vec<String>,
    pub users: Vec<String>,
}

impl Access {
    pub fn is_open(&self) -> bool {
        self.groups.is_empty() && self.users.is_empty()
    }
}
