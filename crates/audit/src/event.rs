//! The audit event schema (`portcullis.audit/1`), documented in `docs/audit.md`.
//! One envelope for MCP requests and security events; sections that do not
//! apply are absent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SCHEMA: &str = "portcullis.audit/1";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub schema: String,
    pub event_id: String,
    /// `mcp.request`, `auth.login`, `auth.login_failed`, `token.issued`,
    /// `token.revoked`, `policy.changed`, `policy.denied`, `checkpoint.decided`,
    /// `config.loaded`, `config.changed`, `audit.started`, `audit.stopped`,
    /// `audit.pruned`, `audit.read`, …
    pub event_type: String,
    /// UTC with microseconds.
    pub time: String,
    /// The gateway process that wrote the record.
    pub replica: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Event-specific facts of security events (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    /// `user`, `service` (service account), `admin_cli`, `system`, `anonymous`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Id of the credential used (an access token's `jti` or an API token's
    /// id), never the credential itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// `oauth`, `api_token`, `password`, `oidc`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// What the MCP client calls itself (`clientInfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The tool or prompt name the client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The name the upstream knows it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Arguments with secrets masked and long values shortened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// Keyed digest (HMAC-SHA-256) of the full arguments, to match a record to
    /// a payload without storing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_digest: Option<String>,
    pub bytes_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// `allow`, `deny`, or `none` (nothing was decided: no authentication, or
    /// a request policy does not govern).
    pub result: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// `user` or `approver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// `success`, `tool_error`, `protocol_error`, `denied`, `cancelled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub latency_us: u64,
    pub bytes_out: u64,
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
