//! Retention: records older than the retention period are first written to
//! an archive file (JSON lines, chain fields included, so the archive itself
//! verifies) and fsynced, then an `audit.pruned` record naming the range and
//! the last pruned hash is chained, and only then are the rows deleted. A
//! range not yet delivered to every SIEM sink is kept.

use crate::db::AuditDb;
use crate::event::{Actor, AuditEvent};
use crate::writer::Auditor;
use crate::AuditError;
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Default)]
pub struct PruneReport {
    pub pruned: u64,
    pub through_seq: Option<i64>,
    pub archive: Option<PathBuf>,
    /// Records kept only because a sink has not delivered them yet.
    pub held_for_sinks: u64,
}

/// Archive and delete records older than `cutoff_us`. The `audit.pruned`
/// event is written through `auditor` (so it is chained by the writer).
pub async fn prune(
    db: &AuditDb,
    auditor: &Auditor,
    cutoff_us: i64,
    archive_dir: &Path,
    sinks: &[String],
) -> Result<PruneReport, AuditError> {
    let pool = db.pool();
    let expired: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_records WHERE time_us < ?")
            .bind(cutoff_us)
            .fetch_one(pool)
            .await?;
    let mut through = expired;
    let mut held = 0u64;
    for sink in sinks {
        let delivered = db.cursor(sink).await?.unwrap_or(0);
        if delivered < through {
            held += (through - delivered) as u64;
            through = delivered;
        }
    }
    // Never prune the chain head: the next record must have something to
    // chain to in the database.
    let max = db.max_seq().await?;
    through = through.min(max - 1);
    let first: i64 = sqlx::query_scalar("SELECT COALESCE(MIN(seq), 0) FROM audit_records")
        .fetch_one(pool)
        .await?;
    if through < first.max(1) {
        return Ok(PruneReport {
            held_for_sinks: held,
            ..Default::default()
        });
    }
    std::fs::create_dir_all(archive_dir)?;
    let path = archive_dir.join(format!("audit-{first:012}-{through:012}.jsonl"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut after = first - 1;
    let mut last_hash = String::new();
    let mut count = 0u64;
    while after < through {
        let batch = db.read_after(after, 5000).await?;
        for r in batch.iter().filter(|r| r.seq <= through) {
            serde_json::to_writer(&mut file, &r.export())
                .map_err(|e| AuditError::Io(std::io::Error::other(e)))?;
            file.write_all(b"\n")?;
            last_hash.clone_from(&r.hash);
            count += 1;
        }
        match batch.last() {
            Some(r) => after = r.seq,
            None => break,
        }
    }
    let file = file
        .into_inner()
        .map_err(|e| AuditError::Io(e.into_error()))?;
    file.sync_all()?;
    auditor
        .record(AuditEvent::security(
            "audit.pruned",
            Some(Actor::system()),
            json!({"from_seq": first, "through_seq": through, "through_hash": last_hash,
                   "records": count, "archive": path.display().to_string()}),
        ))
        .await?;
    sqlx::query("DELETE FROM audit_records WHERE seq <= ?")
        .bind(through)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq <= ?")
        .bind(through)
        .execute(pool)
        .await?;
    Ok(PruneReport {
        pruned: count,
        through_seq: Some(through),
        archive: Some(path),
        held_for_sinks: held,
    })
}
