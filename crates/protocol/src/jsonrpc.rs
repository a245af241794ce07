//! Classifying raw JSON-RPC 2.0 messages without a typed model.

use serde_json::{json, Map, Value};

/// JSON-RPC and MCP error codes the gateway emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
    /// 2026-07-28: header and body disagree.
    HeaderMismatch,
    /// 2026-07-28: the request needs a client capability that was not declared.
    MissingRequiredClientCapability,
    /// 2026-07-28: unsupported protocol version.
    UnsupportedProtocolVersion,
    /// Gateway-specific: an upstream could not be reached or failed.
    UpstreamUnavailable,
    /// Gateway-specific: an upstream did not answer in time.
    UpstreamTimeout,
    /// Gateway-specific: request refused by gateway limits.
    LimitExceeded,
    /// Gateway-specific: refused by policy.
    PolicyDenied,
    /// Gateway-specific: a rate limit or daily quota is exhausted.
    RateLimited,
    /// Gateway-specific: a required confirmation was declined or not given.
    ConfirmationRefused,
    /// Gateway-specific: the call could not be recorded in the audit log, and
    /// the audit log fails closed.
    AuditUnavailable,
}

impl ErrorCode {
    pub fn code(self) -> i64 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::InternalError => -32603,
            ErrorCode::HeaderMismatch => -32020,
            ErrorCode::MissingRequiredClientCapability => -32021,
            ErrorCode::UnsupportedProtocolVersion => -32022,
            // Gateway errors sit outside the reserved -32768..-32000 range.
            ErrorCode::UpstreamUnavailable => -31001,
            ErrorCode::UpstreamTimeout => -31002,
            ErrorCode::LimitExceeded => -31003,
            ErrorCode::PolicyDenied => -31010,
            ErrorCode::RateLimited => -31011,
            ErrorCode::ConfirmationRefused => -31012,
            ErrorCode::AuditUnavailable => -31013,
        }
    }
}

/// Build a JSON-RPC error response. `id` is `Value::Null` when unknown.
pub fn error_response(id: Value, code: ErrorCode, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.code(), "message": message.into()}})
}

/// Build a JSON-RPC error response carrying `data`.
pub fn error_response_with_data(
    id: Value,
    code: ErrorCode,
    message: impl Into<String>,
    data: Value,
) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "error": {"code": code.code(), "message": message.into(), "data": data}})
}

/// Build a JSON-RPC success response.
pub fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Why a body is not an acceptable JSON-RPC message.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("parse error: {0}")]
    Json(String),
    #[error("invalid request: {0}")]
    Shape(&'static str),
}

impl ParseError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::Json(_) => ErrorCode::ParseError,
            ParseError::Shape(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// What a message is, by the JSON-RPC rules.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    Request { id: Value, method: String },
    Notification { method: String },
    Response { id: Value },
}

/// A classified message that keeps every byte of the original as a `Value`.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: MessageKind,
    pub value: Value,
}

impl Message {
    /// Parse and classify one JSON-RPC message from bytes.
    pub fn parse(body: &[u8]) -> Result<Message, ParseError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
        Message::classify(value)
    }

    /// Classify an already-parsed value.
    pub fn classify(value: Value) -> Result<Message, ParseError> {
        let obj = match &value {
            Value::Object(o) => o,
            Value::Array(_) => {
                return Err(ParseError::Shape(
                    "JSON-RPC batches are not supported since 2025-06-18",
                ))
            }
            _ => return Err(ParseError::Shape("a JSON-RPC message must be an object")),
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(ParseError::Shape("\"jsonrpc\" must be \"2.0\""));
        }
        let kind = classify_object(obj)?;
        Ok(Message { kind, value })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.kind {
            MessageKind::Request { method, .. } | MessageKind::Notification { method } => {
                Some(method)
            }
            MessageKind::Response { .. } => None,
        }
    }

    pub fn id(&self) -> Option<&Value> {
        match &self.kind {
            MessageKind::Request { id, .. } | MessageKind::Response { id } => Some(id),
            MessageKind::Notification { .. } => None,
        }
    }

    pub fn params(&self) -> Option<&Value> {
        self.value.get("params")
    }
}

fn valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_)) || id.as_i64().is_some() || id.as_u64().is_some()
}

fn classify_object(obj: &Map<String, Value>) -> Result<MessageKind, ParseError> {
    if let Some(method) = obj.get("method") {
        let method = method
            .as_str()
            .ok_or(ParseError::Shape("\"method\" must be a string"))?;
        if let Some(params) = obj.get("params") {
            if !params.is_object() {
                return Err(ParseError::Shape("\"params\" must be an object"));
            }
        }
        return match obj.get("id") {
            None => Ok(MessageKind::Notification {
                method: method.to_owned(),
            }),
            Some(id) if valid_id(id) => Ok(MessageKind::Request {
                id: id.clone(),
                method: method.to_owned(),
            }),
            Some(_) => Err(ParseError::Shape(
                "a request \"id\" must be a string or an integer",
            )),
        };
    }
    let has_result = obj.contains_key("result");
    let has_error = obj.contains_key("error");
    if has_result == has_error {
        return Err(ParseError::Shape(
            "a message needs \"method\", or exactly one of \"result\" and \"error\"",
        ));
    }
    match obj.get("id") {
        Some(id) if valid_id(id) => Ok(MessageKind::Response { id: id.clone() }),
        Some(Value::Null) if has_error => Ok(MessageKind::Response { id: Value::Null }),
        _ => Err(ParseError::Shape(
            "a response \"id\" must be a string or an integer",
        )),
    }
}

/// Mutable access to `params._meta`, creating both objects when absent.
pub fn meta_mut(msg: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = msg.as_object_mut()?;
    let params = obj
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    let params = params.as_object_mut()?;
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    meta.as_object_mut()
}

/// The request's progress token, if it asked for progress.
pub fn progress_token(msg: &Value) -> Option<&Value> {
    msg.get("params")?.get("_meta")?.get("progressToken")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_notification_response() {
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap();
        assert_eq!(
            m.kind,
            MessageKind::Request {
                id: json!(7),
                method: "tools/list".into()
            }
        );
        let n =
            Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(matches!(n.kind, MessageKind::Notification { .. }));
        let r = Message::parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap();
        assert_eq!(r.kind, MessageKind::Response { id: json!("a") });
    }

    #[test]
    fn rejects_bad_shapes_with_precise_codes() {
        let e = Message::parse(b"{not json").unwrap_err();
        assert_eq!(e.code(), ErrorCode::ParseError);
        for bad in [
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":3}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#""hello""#,
        ] {
            let e = Message::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn unknown_fields_survive_classification() {
        let raw = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{},"task":{"ttl":60000},"x-vendor":1}}"#;
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.value["params"]["task"]["ttl"], 60000);
        assert_eq!(m.value["params"]["x-vendor"], 1);
        assert_eq!(m.value["params"]["arguments"], json!({}));
    }
}
