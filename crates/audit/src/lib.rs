//! The audit log: a durable, tamper-evident record of every MCP request the
//! gateway serves and every security event (logins, tokens, policy and
//! configuration changes, checkpoint decisions).
//!
//! Records are written by one group-committing writer per process into their
//! own SQLite database, each hash-chained to the one before (SHA-256 over a
//! canonical encoding), with the chain head signed (Ed25519) at regular
//! checkpoints. The crate also verifies the chain, searches it, prunes it
//! (exporting expired ranges first) and feeds SIEM sinks from it.
//!
//! It does not decide anything about a call (policy does), does not know the
//! MCP wire format beyond the event schema, and is not the telemetry pipeline:
//! traces and metrics may drop under pressure, this log may not.

mod canon;
mod clock;
mod committer;
mod db;
mod event;
mod keys;
mod mask;
mod relay;
mod retention;
mod search;
pub mod sinks;
mod syncer;
mod verify;
mod walcheck;
mod writer;

pub use canon::canonical_json;
pub use clock::{format_time, now_us, parse_time};
pub use db::{AuditDb, StoredRecord};
pub use event::{Actor, AuditEvent, Decision, Outcome, Request, Target, OUTCOMES, SCHEMA};
pub use keys::{public_path as public_key_path, PublicKey, SigningKey};
pub use mask::Masker;
pub use retention::{prune, PruneReport};
pub use search::Query;
pub use verify::{verify, Problem, VerifyReport};
pub use writer::{Auditor, BatchStats, GroupCommit};

/// Hash a chained record: the previous hash, the sequence number and the
/// canonical body, so neither content nor position can change unnoticed.
pub fn chain_hash(prev_hash: &str, seq: i64, body: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(decimal(seq, &mut [0u8; 20]));
    h.update(b"\n");
    h.update(body.as_bytes());
    hex(&h.finalize())
}

/// `n` in decimal, written into `buf` (no allocation on the commit path).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        // Sequence numbers start at 1; kept total for any i64 all the same.
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// The `prev_hash` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("audit signing key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("audit log I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("audit record could not be written: {0}")]
    WriteFailed(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests;
