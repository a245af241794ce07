//! 2026-07-28 rules at the edge: mirrored-header validation and result decoration.

use http::{HeaderMap, StatusCode};
use portcullis_protocol::era::{self};
use portcullis_protocol::headers::decode_value;
use portcullis_protocol::jsonrpc::{error_response, error_response_with_data};
use portcullis_protocol::{ErrorCode, Message};
use serde_json::{json, Value};

pub type Rejection = (StatusCode, Value);

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every version this gateway speaks downstream, newest first.
pub fn supported_versions() -> Value {
    let mut v = vec![Value::from(era::MODERN)];
    v.extend(era::LEGACY_VERSIONS.iter().map(|s| Value::from(*s)));
    Value::Array(v)
}

/// Check the client's `Mcp-Param-*` headers against the arguments, for every
/// argument the tool annotates with `x-mcp-header`.
pub fn check_param_headers(
    tool: &Value,
    args: Option<&Value>,
    sent: &[(String, String)],
) -> Result<(), String> {
    let Some(props) = tool
        .pointer("/inputSchema/properties")
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    for (arg, schema) in props {
        let Some(h) = schema.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let name = format!("{}{}", era::HEADER_PARAM_PREFIX, h.to_ascii_lowercase());
        let header = sent
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str());
        let value = args.and_then(|a| a.get(arg));
        let expected = value.and_then(portcullis_protocol::headers::param_header_value);
        match (header, expected) {
            (None, None) => {}
            (Some(_), None) if value.is_none() => {
                return Err(format!("{name} is present but argument {arg:?} is not"))
            }
            (None, Some(_)) => {
                return Err(format!("{name} header is required for argument {arg:?}"))
            }
            (Some(raw), _) => {
                let decoded =
                    decode_value(raw).ok_or_else(|| format!("{name} is not validly encoded"))?;
                let body = match value {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                if decoded != body {
                    return Err(format!("{name} does not match argument {arg:?}"));
                }
            }
        }
    }
    Ok(())
}

/// Check a modern request's `_meta` and mirrored headers against its body.
pub fn validate(headers: &HeaderMap, msg: &Message) -> Result<(), Rejection> {
    let id = msg.id().cloned().unwrap_or(Value::Null);
    let bad = |code, text: String| {
        (
            StatusCode::BAD_REQUEST,
            error_response(id.clone(), code, text),
        )
    };
    let version = era::meta_protocol_version(&msg.value);
    let Some(version) = version else {
        return Err(bad(
            ErrorCode::InvalidParams,
            format!(
                "params._meta[\"{}\"] is required",
                era::META_PROTOCOL_VERSION
            ),
        ));
    };
    match header(headers, era::HEADER_PROTOCOL_VERSION) {
        Some(h) if h == version => {}
        Some(h) => {
            return Err(bad(
                ErrorCode::HeaderMismatch,
                format!("MCP-Protocol-Version header {h:?} does not match _meta {version:?}"),
            ))
        }
        None => {
            return Err(bad(
                ErrorCode::HeaderMismatch,
                "MCP-Protocol-Version header is required".into(),
            ))
        }
    }
    if version != era::MODERN {
        return Err((
            StatusCode::BAD_REQUEST,
            error_response_with_data(
                id.clone(),
                ErrorCode::UnsupportedProtocolVersion,
                format!("unsupported protocol version {version}"),
                json!({"supported": supported_versions(), "requested": version}),
            ),
        ));
    }
    let method = msg.method().unwrap_or_default();
    match header(headers, era::HEADER_METHOD) {
        Some(h) if h == method => {}
        Some(h) => {
            return Err(bad(
                ErrorCode::HeaderMismatch,
                format!("Mcp-Method header {h:?} does not match method {method:?}"),
            ))
        }
        None => {
            return Err(bad(
                ErrorCode::HeaderMismatch,
                "Mcp-Method header is required".into(),
            ))
        }
    }
    if let Some((field, body)) = era::mirrored_name(method, &msg.value) {
        match header(headers, era::HEADER_NAME).map(decode_value) {
            Some(Some(h)) if Some(h.as_str()) == body => {}
            Some(_) => {
                return Err(bad(
                    ErrorCode::HeaderMismatch,
                    format!("Mcp-Name header does not match params.{field}"),
                ))
            }
            None => {
                return Err(bad(
                    ErrorCode::HeaderMismatch,
                    "Mcp-Name header is required".into(),
                ))
            }
        }
    }
    if matches!(msg.kind, portcullis_protocol::MessageKind::Request { .. })
        && msg
            .value
            .pointer("/params/_meta")
            .and_then(|m| m.get(era::META_CLIENT_CAPABILITIES))
            .is_none()
    {
        return Err(bad(
            ErrorCode::InvalidParams,
            format!(
                "params._meta[\"{}\"] is required",
                era::META_CLIENT_CAPABILITIES
            ),
        ));
    }
    Ok(())
}

/// Make a result conform to 2026-07-28: `resultType`, cache hints (lists are
/// filtered per caller, so never public), and the server's identity.
pub fn decorate(method: &str, resp: &mut Value, server_info: &Value) {
    let Some(result) = resp.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    result
        .entry("resultType")
        .or_insert_with(|| Value::from("complete"));
    let cacheable = matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    );
    if cacheable {
        result.insert("ttlMs".into(), Value::from(0));
        result.insert("cacheScope".into(), Value::from("private"));
    }
    let meta = result.entry("_meta").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        // The virtual server speaks for itself, whichever upstream answered.
        m.insert(era::META_SERVER_INFO.into(), server_info.clone());
    }
}

/// Header-level rejection for a modern request whose method the server lacks.
pub fn status_for(resp: &Value) -> StatusCode {
    match resp.pointer("/error/code").and_then(Value::as_i64) {
        Some(-32601) => StatusCode::NOT_FOUND,
        Some(-32022..=-32020) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

/// Methods 2026-07-28 removed: answered 404 + method-not-found on the modern path.
pub fn is_removed_method(method: &str) -> bool {
    matches!(
        method,
        "initialize"
            | "ping"
            | "logging/setLevel"
            | "resources/subscribe"
            | "resources/unsubscribe"
    )
}
