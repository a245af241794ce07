//! Small HTTP helpers: forms, cookies, redirects, OAuth error bodies, and the
//! headers every page of the authorization server carries.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Largest form or JSON body the authorization server reads.
pub const MAX_BODY: usize = 64 * 1024;

pub fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        // A repeated parameter is an error in OAuth; keep the first and let
        // validation see an ambiguous value as missing.
        out.entry(k.into_owned())
            .and_modify(|x: &mut String| x.clear())
            .or_insert_with(|| v.into_owned());
    }
    out
}

pub fn json(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// An OAuth error response (RFC 6749 §5.2).
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

pub fn html(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_page(h);
    r
}

/// Pages must not be framed (clickjacking of the consent button), cached, or leak
/// their URL (which carries request ids) to other sites.
pub fn secure_page(h: &mut HeaderMap) {
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

pub fn redirect(location: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    secure_page(r.headers_mut());
    r
}

/// `base` with `params` appended to its query.
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let Ok(mut u) = url::Url::parse(base) else {
        return base.to_owned();
    };
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    u.to_string()
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name {
                    return Some(val.to_owned());
                }
            }
        }
    }
    None
}

/// A session-scoped, HttpOnly, SameSite=Lax cookie; `Secure` on https issuers.
pub fn set_cookie(r: &mut Response, name: &str, value: &str, path: &str, secure: bool) {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age=600");
    if secure {
        c.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(http::header::SET_COOKIE, v);
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub fn random(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} - Portcullis</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1d2330}}\
h1{{font-size:1.4rem}}.box{{border:1px solid #d5d9e2;border-radius:8px;padding:1rem 1.2rem;margin:1rem 0}}\
.warn{{background:#fff4e5;border-color:#f0b45a}}button{{font-size:1rem;padding:.5rem 1.1rem;margin-right:.5rem}}\
input{{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box;margin:.2rem 0 .8rem}}code{{word-break:break-all}}</style>\
</head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}
