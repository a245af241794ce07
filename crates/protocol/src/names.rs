//! Exposed names: what clients see for upstream tools, prompts and resource URIs.
//!
//! Clients reject tool names outside `^[a-zA-Z0-9_-]{1,64}$`, so every exposed tool
//! name is forced into that alphabet. When the upstream name has to be altered, a
//! short digest of the original is appended so two different upstream names never
//! collapse into one; the gateway keeps the exposed → upstream table, which makes the
//! mapping reversible and stable across restarts (it depends only on the names).

use sha2::{Digest, Sha256};

pub const MAX_TOOL_NAME: usize = 64;

/// True when `name` matches `^[a-zA-Z0-9_-]{1,64}$`.
pub fn is_client_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for a prefix usable both in names and as a URI scheme prefix.
pub fn is_valid_prefix(prefix: &str) -> bool {
    prefix.is_empty()
        || (prefix.len() <= 32
            && prefix.as_bytes()[0].is_ascii_alphabetic()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The client-safe exposed name for `name` under `prefix` (empty for none).
pub fn expose(prefix: &str, separator: &str, name: &str) -> String {
    let joined = if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}{separator}{name}")
    };
    if is_client_safe(&joined) {
        return joined;
    }
    let mut safe: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(joined.as_bytes());
    let tag = format!(
        "-{:02x}{:02x}{:02x}{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    );
    let keep = MAX_TOOL_NAME - tag.len();
    if safe.len() > keep {
        safe.truncate(keep);
    }
    safe.push_str(&tag);
    safe
}

/// Namespace a resource URI or URI template under `prefix` (`fs` + `file:///a`
/// → `fs+file:///a`). A prefix is a valid scheme start, so the result is still a URI.
pub fn namespace_uri(prefix: &str, uri: &str) -> String {
    if prefix.is_empty() {
        uri.to_owned()
    } else {
        format!("{prefix}+{uri}")
    }
}

/// Reverse of [`namespace_uri`]: the upstream URI if `uri` is under `prefix`.
pub fn strip_uri<'a>(prefix: &str, uri: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(uri);
    }
    uri.strip_prefix(prefix)?.strip_prefix('+')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_prefixed_verbatim() {
        assert_eq!(expose("gh", "_", "create_issue"), "gh_create_issue");
        assert_eq!(expose("", "_", "echo"), "echo");
    }

    #[test]
    fn unsafe_names_become_safe_distinct_and_stable() {
        let a = expose("gh", "_", "repo.create");
        let b = expose("gh", "_", "repo_create");
        assert!(is_client_safe(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, expose("gh", "_", "repo.create"));
        let long = "x".repeat(100);
        let l = expose("srv", "_", &long);
        assert!(is_client_safe(&l) && l.len() == 64, "{l}");
        let colon = expose("docker", ":", "run");
        assert!(is_client_safe(&colon), "{colon}");
        let unicode = expose("", "_", "héllo wörld");
        assert!(is_client_safe(&unicode), "{unicode}");
    }

    #[test]
    fn uri_namespacing_round_trips() {
        let n = namespace_uri("fs", "file:///tmp/a.txt");
        assert_eq!(n, "fs+file:///tmp/a.txt");
        assert_eq!(strip_uri("fs", &n), Some("file:///tmp/a.txt"));
        assert_eq!(strip_uri("fs", "fsx+file:///a"), None);
        assert_eq!(strip_uri("", "test://x"), Some("test://x"));
    }

    #[test]
    fn prefixes_must_be_scheme_safe() {
        assert!(is_valid_prefix("ev"));
        assert!(is_valid_prefix("my-server2"));
        assert!(!is_valid_prefix("1abc"));
        assert!(!is_valid_prefix("a_b"));
        assert!(!is_valid_prefix("a:b"));
    }
}
