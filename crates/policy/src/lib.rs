//! Authorization for Portcullis: Cedar policies over an MCP schema, decided per
//! call with the call's arguments, per list item for filtered catalogs, and
//! the human checkpoints policies ask for.
//!
//! This crate decides; it does not enforce (the gateway does) and does not
//! know who the caller is (the identity layer says, in a [`Subject`]). It reads
//! policy text from a directory and from the store, and keeps the approval
//! queue and rate-limit counters of this replica.

mod approvals;
mod derive;
mod engine;
mod facts;
mod limits;
mod runtime;
mod schema;
mod source;
mod suite;

pub use approvals::{ApprovalError, Approvals, PendingApproval, Verdict};
pub use derive::{normalize_path, Patterns};
pub use engine::{Ask, Checkpoint, Compiled, Decision, PolicyEngine, PolicyError};
pub use facts::{Subject, Target, ToolFlags, DEFAULT_RISK_TIER};
pub use limits::{day_label, LimitedCall, RateLimiter, Refusal, RefusalKind, UsageRow};
pub use runtime::{PolicyChange, PolicyRuntime, STORED_PREFIX};
pub use schema::{schema_text, ArgumentUse};
pub use source::{read_dir, PolicyInfo, PolicySource, SourceError};
pub use suite::{
    parse_rfc3339, run_suite, Case, CasePrincipal, CaseResult, Expect, ExpectedCheckpoint, Suite,
    SuiteError, SuiteReport,
};

/// What applies when nothing is configured: every authenticated caller who
/// may use a virtual server may use all of it (the gateway warns at start).
pub const BUILTIN_ALLOW_ALL: &str =
    "@id(\"builtin:allow-authenticated\")\npermit(principal, action, resource);\n";

#[cfg(test)]
mod tests;
