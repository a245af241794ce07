//! 2026-07-28 mirrored headers (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const SENTINEL_START: &str = "=?base64?";
const SENTINEL_END: &str = "?=";

/// Encode a value for a mirrored header: verbatim when it is plain visible ASCII,
/// otherwise `=?base64?…?=`.
pub fn encode_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.starts_with(SENTINEL_START);
    if plain || value.is_empty() {
        value.to_owned()
    } else {
        format!("{SENTINEL_START}{}{SENTINEL_END}", STANDARD.encode(value))
    }
}

/// Decode a mirrored header value; `None` when the base64 form is malformed.
pub fn decode_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix(SENTINEL_START)
        .and_then(|r| r.strip_suffix(SENTINEL_END))
    {
        Some(b64) => String::from_utf8(STANDARD.decode(b64).ok()?).ok(),
        None => Some(raw.to_owned()),
    }
}

/// The value a JSON argument mirrors into an `Mcp-Param-*` header.
pub fn param_header_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(encode_value(s)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_values_round_trip() {
        assert_eq!(encode_value("get_weather"), "get_weather");
        for v in ["héllo", " padded", "=?base64?x?=", "line\nbreak"] {
            let e = encode_value(v);
            assert!(e.starts_with("=?base64?"), "{e}");
            assert_eq!(decode_value(&e).as_deref(), Some(v));
        }
        assert_eq!(decode_value("=?base64?!!!?="), None);
    }
}
