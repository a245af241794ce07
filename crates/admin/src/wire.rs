//! HTTP plumbing shared by the admin API and SCIM: bounded JSON bodies, query
//! strings, and JSON responses.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

/// Largest request body either API accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a request body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("Content-Type must be {0}")]
    UnsupportedType(&'static str),
    #[error("request body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("request body is not valid JSON: {0}")]
    Invalid(String),
}

/// The media type of a request, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Read at most [`MAX_BODY`] bytes of JSON. `accepted` lists the media types
/// allowed in `Content-Type`; a missing header is allowed when `lenient`.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    accepted: &'static [&'static str],
    lenient: bool,
) -> Result<Value, BodyError> {
    let expected = if accepted.len() > 1 {
        "application/json or application/scim+json"
    } else {
        "application/json"
    };
    match media_type(headers) {
        Some(t) if accepted.contains(&t.as_str()) => {}
        None if lenient => {}
        _ => return Err(BodyError::UnsupportedType(expected)),
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| BodyError::TooLarge)?;
    if bytes.is_empty() {
        return Err(BodyError::Invalid("the body is empty".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| BodyError::Invalid(e.to_string()))
}

/// Decoded query parameters, in order.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// A JSON response with the given media type.
pub fn json_response(status: StatusCode, media: &'static str, body: &Value) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    let mut resp = (status, text).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: i64) -> String {
    portcullis_config::calendar::rfc3339_seconds(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // date -u -d @1709251199
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn queries_decode() {
        let q = query_pairs(Some("filter=userName%20eq%20%22a+b%22&count=2"));
        assert_eq!(q[0], ("filter".into(), "userName eq \"a b\"".into()));
        assert_eq!(q[1], ("count".into(), "2".into()));
        assert!(query_pairs(None).is_empty());
    }

    #[tokio::test]
    async fn bodies_are_bounded_and_typed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        let ok = read_json(&h, Body::from("{\"a\":1}"), &["application/json"], false).await;
        assert_eq!(ok, Ok(serde_json::json!({"a": 1})));
        let big = format!("\"{}\"", "x".repeat(MAX_BODY));
        let err = read_json(&h, Body::from(big), &["application/json"], false).await;
        assert_eq!(err, Err(BodyError::TooLarge));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let err = read_json(&h, Body::from("{}"), &["application/json"], false).await;
        assert!(matches!(err, Err(BodyError::UnsupportedType(_))));
        let err = read_json(
            &HeaderMap::new(),
            Body::from("{}"),
            &["application/json"],
            false,
        )
        .await;
        assert!(matches!(err, Err(BodyError::UnsupportedType(_))));
        let ok = read_json(
            &HeaderMap::new(),
            Body::from("{}"),
            &["application/json"],
            true,
        )
        .await;
        assert!(ok.is_ok());
    }
}
