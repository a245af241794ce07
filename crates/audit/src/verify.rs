//! `portcullis audit verify`: replay the chain and the signed checkpoints and
//! name the first record that is not what was written.

use crate::db::{AuditDb, StoredRecord};
use crate::keys::{checkpoint_message, PublicKey};
use crate::AuditError;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// The first record found bad (or the checkpoint's sequence number).
    pub seq: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub checkpoints_verified: u64,
    /// Records after the last signed checkpoint: chained but not yet sealed.
    pub unsealed: u64,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verify the whole log against the trusted `key`.
pub async fn verify(db: &AuditDb, key: &PublicKey) -> Result<VerifyReport, AuditError> {
    let checkpoints: BTreeMap<i64, crate::db::Checkpoint> = db
        .checkpoints()
        .await?
        .into_iter()
        .map(|c| (c.seq, c))
        .collect();
    let mut report = VerifyReport {
        records: 0,
        first_seq: None,
        last_seq: None,
        checkpoints_verified: 0,
        unsealed: 0,
        problem: None,
    };
    let prune = last_prune(db).await?;
    let mut expected_seq: Option<i64> = None;
    let mut prev_hash = String::new();
    let mut after = 0i64;
    let mut last_sealed = 0i64;
    'outer: loop {
        let batch = db.read_after(after, 5000).await?;
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            after = r.seq;
            report.records += 1;
            if let Some(p) = check(r, expected_seq, &prev_hash, &prune) {
                report.problem = Some(p);
                break 'outer;
            }
            if report.first_seq.is_none() {
                report.first_seq = Some(r.seq);
            }
            report.last_seq = Some(r.seq);
            if let Some(c) = checkpoints.get(&r.seq) {
                if c.hash != r.hash {
                    report.problem = Some(Problem {
                        seq: r.seq,
                        reason: format!(
                            "does not match the signed checkpoint at seq {} (a record at or before it was changed and the chain recomputed)",
                            c.seq
                        ),
                    });
                    break 'outer;
                }
                if c.key_id != key.key_id
                    || !key.verify(&checkpoint_message(c.seq, &c.hash, c.time_us), &c.signature)
                {
                    report.problem = Some(Problem {
                        seq: c.seq,
                        reason: "checkpoint signature does not verify with the trusted key".into(),
                    });
                    break 'outer;
                }
                report.checkpoints_verified += 1;
                last_sealed = r.seq;
            }
            expected_seq = Some(r.seq + 1);
            prev_hash.clone_from(&r.hash);
        }
    }
    if report.problem.is_none() {
        let last = report.last_seq.unwrap_or(0);
        if let Some((&seq, _)) = checkpoints.range(last + 1..).next() {
            report.problem = Some(Problem {
                seq: last + 1,
                reason: format!(
                    "missing: a signed checkpoint covers seq {seq} but the log ends at seq {last} (records deleted from the end)"
                ),
            });
        } else if let Some(first) = report.first_seq {
            // A checkpoint below the first record must have been pruned away.
            if let Some((&seq, _)) = checkpoints.range(..first).next_back() {
                if prune.as_ref().is_none_or(|p| seq > p.through_seq) {
                    report.problem = Some(Problem {
                        seq: first,
                        reason: format!("records before seq {first} are missing (a checkpoint at seq {seq} covered them)"),
                    });
                }
            }
        }
        report.unsealed = (last - last_sealed.max(report.first_seq.unwrap_or(1) - 1)).max(0) as u64;
    }
    Ok(report)
}

struct Prune {
    through_seq: i64,
    through_hash: String,
}

async fn last_prune(db: &AuditDb) -> Result<Option<Prune>, AuditError> {
    let rows = db
        .query_records("WHERE event_type = 'audit.pruned'", &[], 1)
        .await?;
    Ok(rows.first().and_then(|r| {
        let body: Value = serde_json::from_str(&r.body).ok()?;
        Some(Prune {
            through_seq: body.pointer("/detail/through_seq")?.as_i64()?,
            through_hash: body.pointer("/detail/through_hash")?.as_str()?.to_owned(),
        })
    }))
}

fn check(
    r: &StoredRecord,
    expected_seq: Option<i64>,
    prev_hash: &str,
    prune: &Option<Prune>,
) -> Option<Problem> {
    let bad = |reason: String| Some(Problem { seq: r.seq, reason });
    match expected_seq {
        None => {
            // The first record: either the start of the log or right after a
            // recorded prune.
            let anchored = (r.seq == 1 && r.prev_hash == crate::GENESIS)
                || prune
                    .as_ref()
                    .is_some_and(|p| p.through_seq + 1 == r.seq && p.through_hash == r.prev_hash);
            if !anchored {
                return bad(if r.seq == 1 {
                    "first record does not start the chain (prev_hash is not the genesis value)"
                        .into()
                } else {
                    format!(
                        "records before seq {} are missing (no recorded prune explains them)",
                        r.seq
                    )
                });
            }
        }
        Some(expected) => {
            if r.seq != expected {
                return bad(format!(
                    "records {expected}..{} are missing (deleted)",
                    r.seq - 1
                ));
            }
            if r.prev_hash != prev_hash {
                return bad(format!(
                    "prev_hash does not chain to record {} (inserted or replaced record)",
                    r.seq - 1
                ));
            }
        }
    }
    if crate::chain_hash(&r.prev_hash, r.seq, &r.body) != r.hash {
        return bad("content changed: the hash does not match the record".into());
    }
    let body: Value = match serde_json::from_str(&r.body) {
        Ok(v) => v,
        Err(e) => return bad(format!("body is not JSON: {e}")),
    };
    if crate::canon::canonical_json(&body) != r.body {
        return bad("body is not in canonical form".into());
    }
    if let Some(col) = StoredRecord::columns_from_body(&body).first_difference(&r.columns()) {
        return bad(format!(
            "column {col} was edited: it no longer matches the hashed record"
        ));
    }
    None
}
