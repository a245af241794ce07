//! The configuration data model. Every struct refuses unknown keys.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory for the embedded database and other state.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Externally visible base URL (used for Host checks and documents).
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub security: Security,
    #[serde(default)]
    pub auth: crate::auth::Auth,
    #[serde(default)]
    pub policy: crate::policy::Policy,
    #[serde(default)]
    pub audit: crate::audit::Audit,
    #[serde(default)]
    pub telemetry: crate::telemetry::Telemetry,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub virtual_servers: Vec<VirtualServer>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest an upstream request may take before the client gets an error.
    pub request_timeout_ms: u64,
    /// A downstream session unused for this long is closed with its upstreams.
    pub session_idle_timeout_secs: u64,
    /// Upper bound on concurrent downstream sessions.
    pub max_sessions: usize,
    /// Longest `initialize` waits for upstreams to open; slower ones join later and
    /// the client is sent `list_changed`.
    pub initialize_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 120_000,
            session_idle_timeout_secs: 1_800,
            max_sessions: 10_000,
            initialize_wait_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    /// Extra `Host` values accepted besides loopback names (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Extra `Origin` values accepted besides loopback origins.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    StreamableHttp,
    Sse,
    Stdio,
}

/// Which protocol era to speak to an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolPreference {
    /// Probe with `server/discover`; speak the client's era when the upstream has both.
    #[default]
    Auto,
    Legacy,
    Modern,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_ms: u64,
    /// Time allowed for `initialize` / `server/discover` (and process start).
    pub init_ms: u64,
    /// Default per-request timeout (the global limit applies when larger).
    pub request_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 5_000,
            init_ms: 30_000,
            request_ms: 120_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Catalog {
    pub owner: Option<String>,
    pub team: Option<String>,
    pub support: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub data_domains: Vec<String>,
    /// 1 (harmless) to 4 (critical).
    pub risk_tier: Option<u8>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub transport: Transport,
    /// Endpoint for `streamable_http` and `sse`.
    #[serde(default)]
    pub url: Option<String>,
    /// Static request headers (values may use `${ENV_VAR}`); never shown to clients.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Program for `stdio` (executed directly, never through a shell).
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub protocol: ProtocolPreference,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// stdio: most processes alive at once for this upstream.
    #[serde(default = "default_max_processes")]
    pub max_processes: usize,
    #[serde(default)]
    pub catalog: Catalog,
}

fn default_max_processes() -> usize {
    16
}

fn default_separator() -> String {
    "_".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Joins a prefix and an upstream name (`gh` + `_` + `create_issue`).
    #[serde(default = "default_separator")]
    pub separator: String,
    pub upstreams: Vec<Member>,
    /// Who may connect; empty means every authenticated principal.
    #[serde(default)]
    pub access: crate::auth::Access,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub upstream: String,
    /// Name prefix; defaults to the upstream's name (`_` becomes `-`). `""` for none.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Per-tool overrides keyed by the upstream tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolOverride>,
    /// Upstream prompt names to hide.
    #[serde(default)]
    pub hide_prompts: Vec<String>,
}

impl Member {
    pub fn effective_prefix(&self) -> String {
        match &self.prefix {
            Some(p) => p.clone(),
            None => self.upstream.replace('_', "-"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToolOverride {
    /// Exposed name instead of prefix + upstream name.
    pub rename: Option<String>,
    pub hide: bool,
    pub description: Option<String>,
    /// Overrides the server's risk tier for this tool (1 harmless .. 4 critical).
    pub risk_tier: Option<u8>,
    /// Argument values always sent upstream; the client cannot see or override them.
    pub fixed_arguments: serde_json::Map<String, serde_json::Value>,
}
