//! Checks on the `audit.sinks` configuration, run by `portcullis check` and
//! at start. Messages name the sink and the key, never a token or header
//! value.

use portcullis_config::{Sink, SinkKind};
use std::collections::HashSet;

/// Every problem found, one per line, or `Ok`.
pub fn validate_sinks(sinks: &[Sink]) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        let at = if sink.name.is_empty() {
            format!("audit.sinks[{i}]")
        } else {
            format!("audit.sinks[{i}] ({})", sink.name)
        };
        let mut bad = |what: String| problems.push(format!("{at}: {what}"));
        if sink.name.trim().is_empty() {
            bad("name must not be empty".into());
        } else if !names.insert(sink.name.as_str()) {
            bad(format!("the name {:?} is used by another sink", sink.name));
        }
        if sink.name.chars().any(char::is_control) {
            bad("name must not contain control characters".into());
        }
        if sink.batch == 0 {
            bad("batch must be at least 1".into());
        }
        if sink.backoff_min_ms == 0 {
            bad("backoff_min_ms must be at least 1".into());
        }
        if sink.backoff_min_ms > sink.backoff_max_ms {
            bad(format!(
                "backoff_min_ms ({}) must not exceed backoff_max_ms ({})",
                sink.backoff_min_ms, sink.backoff_max_ms
            ));
        }
        if sink.max_backlog == 0 {
            bad("max_backlog must be at least 1".into());
        }
        match &sink.kind {
            SinkKind::File { path } => {
                if path.as_os_str().is_empty() {
                    bad("path must not be empty".into());
                } else if !paths.insert(path.clone()) {
                    bad(format!(
                        "the file {} is written by another sink",
                        path.display()
                    ));
                }
            }
            SinkKind::Otlp { endpoint, headers } => {
                if let Err(e) = http_url(endpoint) {
                    bad(format!("endpoint {e}"));
                }
                for (name, value) in headers {
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        bad(format!("headers: {name:?} is not a valid header name"));
                    }
                    if reqwest::header::HeaderValue::from_str(value).is_err() {
                        // The value may be a secret: name the header only.
                        bad(format!(
                            "headers: the value of {name:?} is not a valid header value"
                        ));
                    }
                }
            }
            SinkKind::SplunkHec {
                endpoint,
                token,
                index,
                sourcetype,
            } => {
                if let Err(e) = http_url(endpoint) {
                    bad(format!("endpoint {e}"));
                }
                if token.trim().is_empty() {
                    bad("token must not be empty".into());
                } else if reqwest::header::HeaderValue::from_str(&format!("Splunk {token}"))
                    .is_err()
                {
                    bad("token contains characters a header cannot carry".into());
                }
                if index.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    bad("index must not be empty when given".into());
                }
                if sourcetype.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    bad("sourcetype must not be empty when given".into());
                }
            }
            SinkKind::Syslog { address, app_name } => {
                if let Err(e) = syslog_address(address) {
                    bad(format!("address {e}"));
                }
                if app_name.is_empty()
                    || app_name.len() > 48
                    || !app_name.bytes().all(|b| (33..=126).contains(&b))
                {
                    bad(
                        "app_name must be 1 to 48 printable ASCII characters without spaces".into(),
                    );
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("{text:?} must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(url)
}

/// Whether a syslog sink speaks TCP (octet-counted) or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyslogTransport {
    Udp,
    Tcp,
}

/// `udp://host:port` or `tcp://host:port` (IPv6 hosts in brackets).
pub(crate) fn syslog_address(text: &str) -> Result<(SyslogTransport, String, u16), String> {
    let (transport, rest) = if let Some(rest) = text.strip_prefix("udp://") {
        (SyslogTransport::Udp, rest)
    } else if let Some(rest) = text.strip_prefix("tcp://") {
        (SyslogTransport::Tcp, rest)
    } else {
        return Err(format!("{text:?} must start with udp:// or tcp://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} needs a port (udp://host:514, tcp://host:601)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("{text:?} has no valid host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?} has no valid port"))?;
    Ok((transport, host.to_owned(), port))
}
