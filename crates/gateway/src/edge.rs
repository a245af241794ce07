//! Checks at the HTTP edge: DNS-rebinding defence through `Host` and `Origin`.

use http::HeaderMap;

/// Which `Host` and `Origin` values a request may carry.
#[derive(Clone, Debug, Default)]
pub struct HostPolicy {
    hosts: Vec<String>,
    origins: Vec<String>,
}

const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]", "::1"];

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .map(|h| &host[..h.len() + 2])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

impl HostPolicy {
    /// Loopback names plus `extra_hosts` (host names, with or without port); origins
    /// may also come from `extra_origins` (URLs or host names).
    pub fn new(extra_hosts: &[String], extra_origins: &[String]) -> HostPolicy {
        let norm = |h: &String| {
            let h = h.to_ascii_lowercase();
            let h = h.split_once("://").map(|(_, r)| r.to_owned()).unwrap_or(h);
            let h = h.split('/').next().unwrap_or_default().to_owned();
            strip_port(&h).to_owned()
        };
        let mut hosts: Vec<String> = LOOPBACK.iter().map(|s| s.to_string()).collect();
        hosts.extend(extra_hosts.iter().map(norm));
        let mut origins = hosts.clone();
        origins.extend(extra_origins.iter().map(norm));
        HostPolicy { hosts, origins }
    }

    fn allowed(&self, host: &str) -> bool {
        let h = strip_port(host).to_ascii_lowercase();
        self.hosts.contains(&h)
    }

    fn origin_allowed(&self, host: &str) -> bool {
        let h = strip_port(host).to_ascii_lowercase();
        self.origins.contains(&h)
    }

    /// `Err(reason)` when the request must be refused with 403.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        match headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(h) if self.allowed(h) => {}
            Some(_) => return Err("Host header not allowed"),
            None => return Err("Host header required"),
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let o = origin.to_str().map_err(|_| "Origin header not allowed")?;
            if o == "null" {
                return Err("Origin header not allowed");
            }
            let host = o.split_once("://").map(|(_, h)| h).unwrap_or(o);
            let host = host.split('/').next().unwrap_or(host);
            if !self.origin_allowed(host) {
                return Err("Origin header not allowed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(http::header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            m.insert(http::header::ORIGIN, o.parse().unwrap());
        }
        m
    }

    #[test]
    fn loopback_allowed_rebinding_refused() {
        let p = HostPolicy::new(
            &["gw.example.com".into()],
            &["https://app.example.com".into()],
        );
        assert!(p.check(&h("127.0.0.1:8080", None)).is_ok());
        assert!(p
            .check(&h("localhost", Some("http://localhost:3000")))
            .is_ok());
        assert!(p.check(&h("[::1]:8080", None)).is_ok());
        assert!(p
            .check(&h("gw.example.com:443", Some("https://gw.example.com")))
            .is_ok());
        assert!(p.check(&h("evil.example.com", None)).is_err());
        assert!(p
            .check(&h("localhost:8080", Some("http://evil.example.com")))
            .is_err());
        assert!(p.check(&h("localhost:8080", Some("null"))).is_err());
        assert!(p
            .check(&h("localhost:8080", Some("https://app.example.com")))
            .is_ok());
        assert!(
            p.check(&h("app.example.com", None)).is_err(),
            "an allowed origin is not an allowed host"
        );
    }
}
