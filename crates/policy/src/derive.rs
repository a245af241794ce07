//! Derived attributes: facts about an argument's value computed before the
//! decision, for what Cedar cannot express (no regex, no URL or path parsing).
//!
//! `context.derived.<arg>` holds `lower` (lowercased), `matches` (names of the
//! configured patterns the value matches), and for URLs `scheme`, `host` and
//! `path`, for file paths `path` (each `""` when it does not apply); paths are normalised (`.`/`..` resolved, no
//! repeated `/`), so `path like "/srv/data/*"` cannot be escaped with `..`.

use cedar_policy::RestrictedExpression;
use regex::Regex;

/// Named regular expressions from `policy.patterns`.
#[derive(Debug, Default, Clone)]
pub struct Patterns(Vec<(String, Regex)>);

impl Patterns {
    pub fn compile(
        config: &std::collections::BTreeMap<String, String>,
    ) -> Result<Patterns, String> {
        let mut out = Vec::with_capacity(config.len());
        for (name, re) in config {
            let compiled = Regex::new(re).map_err(|e| format!("policy.patterns.{name}: {e}"))?;
            out.push((name.clone(), compiled));
        }
        Ok(Patterns(out))
    }
}

/// Lexically normalise an absolute or relative path.
pub fn normalize_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() && !absolute {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

pub(crate) fn derive(value: &str, patterns: &Patterns) -> RestrictedExpression {
    let s = |v: String| RestrictedExpression::new_string(v);
    let mut fields: Vec<(String, RestrictedExpression)> = Vec::with_capacity(5);
    fields.push(("lower".into(), s(value.to_lowercase())));
    let matches = patterns
        .0
        .iter()
        .filter(|(_, re)| re.is_match(value))
        .map(|(name, _)| s(name.clone()));
    fields.push(("matches".into(), RestrictedExpression::new_set(matches)));
    let (scheme, host, path) = match url::Url::parse(value) {
        Ok(u) if u.has_host() || u.scheme() == "file" => (
            u.scheme().to_owned(),
            u.host_str().unwrap_or("").to_ascii_lowercase(),
            normalize_path(&percent_decode(u.path())),
        ),
        _ if value.starts_with('/') || value.starts_with("./") || value.starts_with("../") => {
            (String::new(), String::new(), normalize_path(value))
        }
        _ => Default::default(),
    };
    fields.push(("scheme".into(), s(scheme)));
    fields.push(("host".into(), s(host)));
    fields.push(("path".into(), s(path)));
    RestrictedExpression::new_record(fields).unwrap_or_else(|_| crate::facts::empty_record())
}

/// `%2e%2e` must not slip past normalisation.
fn percent_decode(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        assert_eq!(normalize_path("/srv/data/../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalize_path("/srv//data/./x"), "/srv/data/x");
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(normalize_path("a/../../b"), "../b");
        assert_eq!(percent_decode("/a/%2e%2e/b"), "/a/../b");
        assert_eq!(percent_decode("/a%2"), "/a%2");
    }
}
