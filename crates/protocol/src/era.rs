//! Protocol revisions, headers and reserved `_meta` keys.

/// The stateless 2026-07-28 revision ("modern").
pub const MODERN: &str = "2026-07-28";
/// Newest revision negotiated with `initialize` ("legacy").
pub const LATEST_LEGACY: &str = "2025-11-25";
/// Legacy revisions the gateway accepts from clients, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

pub const HEADER_SESSION_ID: &str = "mcp-session-id";
pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const HEADER_METHOD: &str = "mcp-method";
pub const HEADER_NAME: &str = "mcp-name";
pub const HEADER_PARAM_PREFIX: &str = "mcp-param-";
pub const HEADER_LAST_EVENT_ID: &str = "last-event-id";

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Which protocol era a message or peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    Legacy,
    Modern,
}

/// True for a revision negotiated through `initialize`.
pub fn is_legacy_version(v: &str) -> bool {
    LEGACY_VERSIONS.contains(&v)
}

/// The legacy version to answer an `initialize` asking for `requested`: the same when
/// known, otherwise our newest (the client then decides whether it can continue).
pub fn negotiate_legacy(requested: Option<&str>) -> &'static str {
    match requested {
        Some(v) => LEGACY_VERSIONS
            .iter()
            .find(|k| **k == v)
            .copied()
            .unwrap_or(LATEST_LEGACY),
        None => LATEST_LEGACY,
    }
}

/// The version a modern request declares in `params._meta`.
pub fn meta_protocol_version(msg: &serde_json::Value) -> Option<&str> {
    msg.get("params")?
        .get("_meta")?
        .get(META_PROTOCOL_VERSION)?
        .as_str()
}

/// The body value `Mcp-Name` mirrors for `method`: `params.name` or `params.uri` on
/// tools/call, prompts/get and resources/read; `params.taskId` on tasks requests.
pub fn mirrored_name<'a>(
    method: &str,
    msg: &'a serde_json::Value,
) -> Option<(&'static str, Option<&'a str>)> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    let value = msg
        .get("params")
        .and_then(|p| p.get(field))
        .and_then(|v| v.as_str());
    Some((field, value))
}
