//! What the HTTP sinks (OTLP, Splunk HEC) share: the client settings, error
//! reports without URLs, and reading a bounded answer.

use super::DeliveryError;
use std::time::Duration;

/// The shared HTTP client settings: bounded connect and request times.
pub(crate) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {}", error_chain(&e.without_url())))
}

/// A send error, with its causes but without its URL.
pub(crate) fn transport_error(e: reqwest::Error) -> DeliveryError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    DeliveryError::Transport(format!("{what}: {}", error_chain(&e.without_url())))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// A response's status, `Retry-After` and (the start of) its body.
pub(crate) async fn read_response(
    mut resp: reqwest::Response,
) -> Result<(u16, Option<Duration>, String), DeliveryError> {
    const LIMIT: usize = 64 * 1024;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        body.extend_from_slice(&chunk);
        if body.len() >= LIMIT {
            body.truncate(LIMIT);
            break;
        }
    }
    Ok((
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// The failure for a non-2xx answer: 4xx other than 408 and 429 mean the
/// receiver will not take these records as configured.
pub(crate) fn status_error(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
) -> DeliveryError {
    let body = shorten(body.trim(), 300);
    if (400..500).contains(&status) && status != 408 && status != 429 {
        DeliveryError::Rejected { status, body }
    } else {
        DeliveryError::Status {
            status,
            body,
            retry_after,
        }
    }
}

pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
