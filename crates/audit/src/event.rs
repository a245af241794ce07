//! The audit event schema (`portcullis.audit/1`), documented in `docs/audit.md`.
//! One envelope for MCP requests and security events; sections that do not
//! apply are absent.
//!
//! Fields are declared in sorted order: the canonical encoding that is hashed
//! into the chain is produced straight from these structs (see `canon.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SCHEMA: &str = "portcullis.audit/1";

/// The values `outcome.status` can take.
pub const OUTCOMES: &[&str] = &[
    "success",
    "tool_error",
    "protocol_error",
    "denied",
    "cancelled",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Event-specific facts of security events (never secrets).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::canon::sorted_opt"
    )]
    pub detail: Option<Value>,
    pub event_id: String,
    /// `mcp.request`, `auth.login`, `auth.login_failed`, `token.issued`,
    /// `token.revoked`, `policy.changed`, `policy.denied`, `checkpoint.decided`,
    /// `config.loaded`, `config.changed`, `audit.started`, `audit.stopped`,
    /// `audit.pruned`, `audit.read`, …
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The gateway process that wrote the record.
    pub replica: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// UTC with microseconds.
    pub time: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    /// `oauth`, `api_token`, `password`, `oidc`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// What the MCP client calls itself (`clientInfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `user`, `service` (service account), `admin_cli`, `system`, `anonymous`.
    pub kind: String,
    /// Id of the credential used (an access token's `jti` or an API token's
    /// id), never the credential itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The tool or prompt name the client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The name the upstream knows it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_server: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// Arguments with secrets masked and long values shortened.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::canon::sorted_opt"
    )]
    pub arguments: Option<Value>,
    /// Keyed digest (HMAC-SHA-256) of the full arguments, to match a record to
    /// a payload without storing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_digest: Option<String>,
    pub bytes_in: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::canon::sorted_opt"
    )]
    pub jsonrpc_id: Option<Value>,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// `user` or `approver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_result: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// `allow`, `deny`, or `none` (nothing was decided: no authentication, or
    /// a request policy does not govern).
    pub result: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub bytes_out: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub latency_us: u64,
    /// `success`, `tool_error`, `protocol_error`, `denied`, `cancelled`.
    pub status: String,
}

impl AuditEvent {
    /// A new event of `event_type`, stamped now. The writer fills `replica`.
    pub fn new(event_type: &str) -> AuditEvent {
        let now = crate::clock::now_us();
        AuditEvent {
            schema: SCHEMA.to_owned(),
            event_id: new_event_id(now),
            event_type: event_type.to_owned(),
            time: crate::clock::format_time(now),
            ..Default::default()
        }
    }

    /// A security event with its facts.
    pub fn security(event_type: &str, actor: Option<Actor>, detail: Value) -> AuditEvent {
        AuditEvent {
            actor,
            detail: Some(detail),
            ..AuditEvent::new(event_type)
        }
    }

    pub fn with_target(mut self, target: Target) -> AuditEvent {
        self.target = Some(target);
        self
    }
}

impl Actor {
    /// The operator at the command line (no network principal).
    pub fn cli() -> Actor {
        Actor {
            kind: "admin_cli".into(),
            username: std::env::var("USER").ok(),
            ..Default::default()
        }
    }

    /// The gateway itself.
    pub fn system() -> Actor {
        Actor {
            kind: "system".into(),
            ..Default::default()
        }
    }
}

/// Time-ordered, unique: 12 hex digits of milliseconds, then 80 random bits.
fn new_event_id(now_us: i64) -> String {
    let r: [u8; 10] = rand::random();
    format!("{:012x}{}", now_us / 1000, crate::hex(&r))
}
