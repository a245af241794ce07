//! Fetching a URL a stranger gave us (Client ID Metadata Documents) without
//! letting them aim the gateway at internal services: https only, every resolved
//! address must be public, the connection is pinned to the checked address, no
//! redirects, and size and time limits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Refused(String),
    #[error("fetch failed: {0}")]
    Failed(String),
}

/// Addresses a public URL must never reach.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg0 & 0xffc0) == 0xfec0 // site local (deprecated)
                || (seg0 == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) // NAT64 prefix base
                || (seg0 == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local() // 169.254/16, cloud metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Fetch `url` as JSON under the rules above. `allow_loopback_http` admits
/// `http://` to loopback addresses only (development and tests).
pub async fn fetch_json(
    url: &str,
    max_bytes: usize,
    timeout: Duration,
    allow_loopback_http: bool,
) -> Result<(serde_json::Value, Option<u64>), FetchError> {
    let u = url::Url::parse(url).map_err(|_| FetchError::Refused("not a URL".into()))?;
    let host = u
        .host_str()
        .ok_or_else(|| FetchError::Refused("URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = u.port_or_known_default().unwrap_or(443);
    let insecure = u.scheme() == "http";
    if u.scheme() != "https" && !(insecure && allow_loopback_http) {
        return Err(FetchError::Refused(
            "client metadata documents must use https".into(),
        ));
    }
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err(FetchError::Refused(
            "URL must not carry credentials or a fragment".into(),
        ));
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| FetchError::Failed("DNS lookup timed out".into()))?
            .map_err(|e| FetchError::Failed(format!("DNS lookup failed: {e}")))?
            .collect(),
    };
    let Some(first) = addrs.first().copied() else {
        return Err(FetchError::Failed("host has no addresses".into()));
    };
    for a in &addrs {
        let ok = if insecure {
            a.ip().is_loopback()
        } else {
            !is_forbidden(a.ip()) || (allow_loopback_http && a.ip().is_loopback())
        };
        if !ok {
            return Err(FetchError::Refused(format!(
                "{host} resolves to a private or reserved address ({})",
                a.ip()
            )));
        }
    }
    // Pin the checked address so a second DNS answer cannot swap it.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .resolve(&host, first)
        .build()
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let mut resp = client
        .get(u.as_str())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| FetchError::Failed(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(FetchError::Failed(format!(
            "document answered HTTP {}",
            resp.status()
        )));
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse().ok())
            })
        });
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Failed(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::Refused(format!(
                "document exceeds {max_bytes} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Refused(format!("document is not JSON: {e}")))?;
    Ok((v, max_age))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_forbidden() {
        for a in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::",
        ] {
            assert!(is_forbidden(a.parse().unwrap()), "{a} must be forbidden");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "93.184.216.34"] {
            assert!(!is_forbidden(a.parse().unwrap()), "{a} is public");
        }
    }

    #[tokio::test]
    async fn refuses_before_connecting() {
        let t = Duration::from_secs(1);
        let e = fetch_json("http://example.com/c.json", 1000, t, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let e = fetch_json("https://127.0.0.1/c.json", 1000, t, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("private"), "{e}");
        let e = fetch_json("https://[::ffff:169.254.169.254]/c.json", 1000, t, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("private"), "{e}");
        let e = fetch_json("https://user:pw@8.8.8.8/c.json", 1000, t, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("credentials"), "{e}");
        // Loopback over http is only for development.
        let e = fetch_json("http://127.0.0.1:9/c.json", 1000, t, false)
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::Refused(_)), "{e}");
    }
}
