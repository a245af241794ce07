//! Rate limits (token buckets) and daily quotas per user, group, tool and
//! virtual server, with usage counters per team for cost attribution.
//!
//! PLACEHOLDER API: admits everything until the implementation lands.

use portcullis_config::RateLimit;

/// One call, as limits see it.
#[derive(Debug, Clone, Copy)]
pub struct LimitedCall<'a> {
    pub user_id: &'a str,
    pub username: &'a str,
    pub groups: &'a [String],
    pub virtual_server: &'a str,
    /// Exposed tool (or prompt) name.
    pub tool: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    Rate,
    Quota,
}

/// Why a call was refused, for the client's error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub limit: String,
    pub kind: RefusalKind,
    pub retry_after_secs: u64,
    pub message: String,
}

pub struct RateLimiter {
    _rules: Vec<RateLimit>,
}

impl RateLimiter {
    pub fn new(rules: &[RateLimit]) -> RateLimiter {
        RateLimiter {
            _rules: rules.to_vec(),
        }
    }

    /// Count one call against every matching limit; a refused call consumes nothing.
    pub fn admit(&self, _call: &LimitedCall<'_>, _now_unix: i64) -> Result<(), Refusal> {
        Ok(())
    }
}
