//! The `policy:` section: where Cedar policies come from, how denials read,
//! which calls need a human checkpoint, and rate limits and quotas.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Directory of `*.cedar` files, watched and reloaded on change. Relative
    /// paths are relative to the configuration file. Without it (and without
    /// policies stored through the admin API) a built-in set permits every
    /// authenticated caller, which the gateway warns about at start.
    pub dir: Option<PathBuf>,
    /// What a caller is told when policy denies a call.
    pub on_deny: DenyMode,
    /// Types of arguments policies test as `context.args.<name>`. Arguments
    /// named in policies but not listed here are strings.
    pub arguments: BTreeMap<String, ArgumentType>,
    /// Named regular expressions; `context.derived.<arg>.matches` holds the
    /// names of those an argument's value matches (Cedar has no regex).
    pub patterns: BTreeMap<String, String>,
    pub checkpoint: CheckpointRules,
    pub rate_limits: Vec<RateLimit>,
    /// How often the policy directory is checked for changes.
    pub reload_interval_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dir: None,
            on_deny: DenyMode::Explain,
            arguments: BTreeMap::new(),
            patterns: BTreeMap::new(),
            checkpoint: CheckpointRules::default(),
            rate_limits: Vec::new(),
            reload_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DenyMode {
    /// "denied by policy", naming the tool.
    Explain,
    /// Exactly the answer an unknown tool, prompt or resource gets.
    Hide,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArgumentType {
    String,
    Long,
    Bool,
    SetOfString,
}

/// Calls that need a confirmation before they run, besides those whose
/// deciding `permit` carries `@checkpoint(...)`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointRules {
    /// Tools at or above this risk tier need the user's confirmation.
    pub risk_tier_at_least: Option<u8>,
    /// Tools an upstream annotates `destructiveHint: true` need it too.
    pub destructive: bool,
    /// How long a call waits for an answer (user or approver).
    pub timeout_secs: u64,
}

impl Default for CheckpointRules {
    fn default() -> Self {
        CheckpointRules {
            risk_tier_at_least: None,
            destructive: false,
            timeout_secs: 300,
        }
    }
}

/// One rate limit or quota. Filters choose the calls it counts; `per` chooses
/// what gets its own bucket.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub per: LimitKey,
    #[serde(default)]
    pub virtual_server: Option<String>,
    /// Exposed tool name.
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Sustained rate of the token bucket.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Bucket size; defaults to the per-minute rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Calls per UTC day.
    #[serde(default)]
    pub daily_quota: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    User,
    Group,
    Tool,
    VirtualServer,
}
