//! Arguments as the audit record keeps them: values under secret-sounding
//! names are masked, secret-shaped values are masked wherever they appear,
//! and long values are shortened. The full arguments are represented only by
//! a keyed digest (a plain hash of a short secret could be brute-forced).

use hmac::{Hmac, Mac};
use regex::{Regex, RegexSet};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Argument names (lower-case substrings) whose values are never recorded.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "private_key",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
    "session_key",
    "client_secret",
    "bearer",
];

/// Argument names that are secrets only when they are the whole name.
const SECRET_EXACT: &[&str] = &["pin", "otp", "pwd", "key", "auth", "mfa_code", "totp"];

/// Shapes of well-known secrets, masked inside any string value.
#[cfg(test)]
pub(crate) const SHAPE_COUNT: usize = SECRET_SHAPES.len();

const SECRET_SHAPES: &[(&str, &str)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
    ),
    (
        "jwt",
        r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ),
    (
        "github_token",
        r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
    ),
    ("aws_access_key", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("openai_key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ("stripe_key", r"\b[rs]k_(live|test)_[A-Za-z0-9]{16,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("portcullis_token", r"\bpc[ps]_[A-Za-z0-9_-]{16,}"),
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}"),
    (
        "basic_auth_url",
        r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
    ),
    (
        "assignment",
        r#"(?i)\b(password|passwd|secret|token|api[_-]?key)\s*[=:]\s*[^\s,;"']{4,}"#,
    ),
];

/// Longest string kept verbatim; longer ones keep a prefix and their length.
const KEEP_CHARS: usize = 256;
const MAX_DEPTH: usize = 6;

pub struct Masker {
    extra_names: Vec<String>,
    shapes: Vec<(&'static str, Regex)>,
    /// All shapes at once: one pass decides whether a string needs masking.
    any_shape: RegexSet,
    digest_key: Vec<u8>,
}

impl Masker {
    /// `extra_names` add to the built-in secret names; `digest_key` keys the
    /// argument digests.
    pub fn new(extra_names: &[String], digest_key: Vec<u8>) -> Masker {
        let shapes = SECRET_SHAPES
            .iter()
            .filter_map(|(name, re)| Some((*name, Regex::new(re).ok()?)))
            .collect();
        let any_shape = RegexSet::new(SECRET_SHAPES.iter().map(|(_, re)| *re))
            .unwrap_or_else(|_| RegexSet::empty());
        Masker {
            extra_names: extra_names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            shapes,
            any_shape,
            digest_key,
        }
    }

    #[cfg(test)]
    pub(crate) fn shape_count(&self) -> usize {
        self.shapes.len().min(self.any_shape.len())
    }

    pub fn is_secret_name(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        SECRET_NAMES.iter().any(|s| lower.contains(s))
            || SECRET_EXACT.contains(&lower.as_str())
            || self.extra_names.contains(&lower)
    }

    /// The arguments as recorded.
    pub fn arguments(&self, args: &Value) -> Value {
        self.value(args, 0)
    }

    fn value(&self, v: &Value, depth: usize) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Object(map) if depth < MAX_DEPTH => {
                let mut out = Map::with_capacity(map.len());
                for (k, v) in map {
                    let kept = if self.is_secret_name(k) && !v.is_null() {
                        Value::String("[masked]".into())
                    } else {
                        self.value(v, depth + 1)
                    };
                    out.insert(k.clone(), kept);
                }
                Value::Object(out)
            }
            Value::Array(items) if depth < MAX_DEPTH => {
                let n = items.len();
                let mut out: Vec<Value> = items
                    .iter()
                    .take(32)
                    .map(|i| self.value(i, depth + 1))
                    .collect();
                if n > 32 {
                    out.push(Value::String(format!("[{} more]", n - 32)));
                }
                Value::Array(out)
            }
            Value::Object(_) | Value::Array(_) => Value::String("[nested]".into()),
            other => other.clone(),
        }
    }

    /// A string with secret shapes masked, shortened when long.
    pub fn text(&self, s: &str) -> String {
        let mut masked = std::borrow::Cow::Borrowed(s);
        let hits = self.any_shape.matches(s);
        for (i, (name, re)) in self.shapes.iter().enumerate() {
            if hits.matched(i) && re.is_match(&masked) {
                masked = std::borrow::Cow::Owned(
                    re.replace_all(&masked, format!("[masked:{name}]").as_str())
                        .into_owned(),
                );
            }
        }
        let chars = masked.chars().count();
        if chars <= KEEP_CHARS {
            return masked.into_owned();
        }
        let prefix: String = masked.chars().take(64).collect();
        format!("{prefix}…[len={chars}]")
    }

    /// `hmac-sha256:<hex>` of the canonical arguments.
    pub fn digest(&self, args: &Value) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.digest_key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        struct Feed<'a>(&'a mut Hmac<Sha256>);
        impl std::io::Write for Feed<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = crate::canon::write_canonical(Feed(&mut mac), args);
        format!("hmac-sha256:{}", crate::hex(&mac.finalize().into_bytes()))
    }
}
