//! The committer: one OS thread per process owns a synchronous SQLite
//! connection and appends records in groups: one transaction (and one fsync
//! with `sync: full`) for everything that queued while the previous group was
//! written, then every caller in the group is answered. A thread of its own
//! (rather than an async task over an async driver) keeps each statement a
//! function call instead of a hand-off between threads.

use crate::db::{Checkpoint, Columns};
use crate::keys::{checkpoint_message, SigningKey};
use crate::relay::Done;
use crate::syncer::Flush;
use crate::writer::{finish, Inner};
use crate::AuditError;
use portcullis_config::{Audit, AuditSync};
use rusqlite::{params, Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Weak;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) enum Job {
    Record {
        body: String,
        columns: Box<Columns>,
        done: Done,
    },
    Stop(oneshot::Sender<()>),
    /// Try an empty write transaction; answers whether the log is writable.
    Probe(oneshot::Sender<bool>),
}

const INSERT: &str = "INSERT INTO audit_records (seq, event_id, time_us, event_type, replica, username, virtual_server, upstream, tool, method, outcome, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

pub(crate) struct Committer {
    path: PathBuf,
    /// Makes committed groups durable (`sync: full`); `None` with `sync: normal`.
    syncer: Option<std::sync::mpsc::Sender<Flush>>,
    /// The WAL checkpointer (`walcheck.rs`), stopped with the committer.
    wal_checkpointer: crate::walcheck::Checkpointer,
    busy: Duration,
    conn: Option<Connection>,
    key: SigningKey,
    inner: Weak<Inner>,
    max_batch: usize,
    commit_delay: Duration,
    /// Size of the previous group: more than one means load.
    last_group: usize,
    every: u64,
    interval: Duration,
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

impl Committer {
    pub(crate) fn open(
        path: &Path,
        config: &Audit,
        busy: Duration,
        key: SigningKey,
        inner: Weak<Inner>,
        since_checkpoint: u64,
    ) -> Result<Committer, AuditError> {
        let mut c = Committer {
            path: path.to_owned(),
            syncer: match config.sync {
                AuditSync::Full => Some(crate::syncer::start(path, inner.clone())?),
                AuditSync::Normal => None,
            },
            wal_checkpointer: crate::walcheck::start(path, busy, inner.clone())?,
            busy,
            conn: None,
            key,
            inner,
            max_batch: config.max_batch.max(1),
            commit_delay: Duration::from_micros(config.commit_delay_us.min(100_000)),
            last_group: 0,
            every: config.checkpoint_every_records.max(1),
            interval: Duration::from_secs(config.checkpoint_interval_secs.max(1)),
            since_checkpoint,
            last_checkpoint: Instant::now(),
        };
        c.connect()?;
        Ok(c)
    }

    fn connect(&mut self) -> Result<&mut Connection, AuditError> {
        if self.conn.is_none() {
            let conn = Connection::open(&self.path).map_err(db_err)?;
            conn.busy_timeout(self.busy).map_err(db_err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(db_err)?;
            // With `sync: full` the syncer flushes the WAL after each commit
            // (see `syncer.rs`); SQLite itself never waits for the disk here.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(db_err)?;
            // The checkpointer thread copies the WAL back into the database
            // as it goes (`walcheck.rs`); this connection's own automatic
            // checkpoint, rare and then short, restarts the WAL.
            conn.pragma_update(None, "wal_autocheckpoint", crate::walcheck::COMMITTER_PAGES)
                .map_err(db_err)?;
            conn.set_prepared_statement_cache_capacity(8);
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| AuditError::WriteFailed("no connection".into()))
    }

    pub(crate) fn run(mut self, rx: Receiver<Job>) {
        batch_scheduling();
        let tick = self.interval.min(Duration::from_secs(5));
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.interval
                    {
                        match self.checkpoint_now() {
                            Ok(()) => self.flush_quietly(),
                            Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut records = Vec::with_capacity(16);
            let mut stop = None;
            let mut probes = Vec::new();
            let mut next = Some(first);
            let mut waited = false;
            loop {
                while let Some(job) = next.take() {
                    match job {
                        Job::Stop(s) => stop = Some(s),
                        Job::Probe(p) => probes.push(p),
                        Job::Record {
                            body,
                            columns,
                            done,
                        } => records.push((body, columns, done)),
                    }
                    if stop.is_none() && records.len() < self.max_batch {
                        next = rx.try_recv().ok();
                    }
                }
                // Under load, let companions gather for a moment. A plain sleep
                // rather than a timed receive: each record arriving during a
                // timed receive would wake this thread once more.
                let gather = stop.is_none()
                    && !waited
                    && records.len() < self.max_batch
                    && worth_gathering(records.len(), self.last_group)
                    && !self.commit_delay.is_zero();
                if !gather {
                    break;
                }
                waited = true;
                std::thread::sleep(self.gather_time());
                next = rx.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            self.last_group = records.len();
            if !records.is_empty() {
                self.commit(records);
            }
            if !probes.is_empty() {
                let ok = self.probe();
                for p in probes {
                    let _ = p.send(ok);
                }
            }
            if let Some(s) = stop {
                if self.since_checkpoint > 0 {
                    if let Err(e) = self.checkpoint_now() {
                        tracing::error!(error = %e, "final audit checkpoint failed");
                    }
                }
                // Everything committed, the final checkpoint included, reaches
                // the disk before the log reports itself closed.
                if let Some(syncer) = self.syncer.take() {
                    let (tx, rx) = std::sync::mpsc::channel();
                    if syncer.send(Flush::Stop(tx)).is_ok() {
                        let _ = rx.recv();
                    }
                }
                // Both writing connections are closed before the log reports
                // itself closed: the readers' pool, closed last, then copies
                // the WAL into the database and deletes it (`AuditDb::close`).
                self.conn = None;
                self.wal_checkpointer.stop();
                let _ = s.send(());
                return;
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn commit(&mut self, records: Vec<(String, Box<Columns>, Done)>) {
        let result = self.append(&records);
        let dones: Vec<Done> = records.into_iter().map(|(_, _, done)| done).collect();
        match result {
            Ok(first) => match &self.syncer {
                Some(syncer) => {
                    if let Err(lost) = syncer.send(Flush::Group { first, dones }) {
                        if let Flush::Group { dones, .. } = lost.0 {
                            finish(
                                &self.inner,
                                Err("the audit syncer has stopped".into()),
                                dones,
                            );
                        }
                    }
                }
                None => finish(&self.inner, Ok(first), dones),
            },
            Err(e) => {
                // A fresh connection for the next group, in case this one is wedged.
                self.conn = None;
                tracing::error!(error = %e, records = dones.len(), "audit group commit failed");
                finish(&self.inner, Err(e.to_string()), dones);
            }
        }
    }

    /// Append the group in one transaction; returns the first sequence number.
    #[allow(clippy::type_complexity)]
    fn append(&mut self, records: &[(String, Box<Columns>, Done)]) -> Result<i64, AuditError> {
        let (every, interval, since, last) = (
            self.every,
            self.interval,
            self.since_checkpoint,
            self.last_checkpoint,
        );
        self.connect()?;
        let Committer { conn, key, .. } = self;
        let conn = conn
            .as_mut()
            .ok_or_else(|| AuditError::WriteFailed("no connection".into()))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        // The head is read inside the transaction, so another process writing
        // the same log (the CLI recording an administrative action) chains
        // correctly too. It is a single index probe.
        let (mut seq, mut prev) = head(&tx)?;
        let first = seq + 1;
        {
            let mut insert = tx.prepare_cached(INSERT).map_err(db_err)?;
            for (body, c, _) in records {
                seq += 1;
                let hash = crate::chain_hash(&prev, seq, body);
                insert
                    .execute(params![
                        seq,
                        c.event_id,
                        c.time_us,
                        c.event_type,
                        c.replica,
                        c.username,
                        c.virtual_server,
                        c.upstream,
                        c.tool,
                        c.method,
                        c.outcome,
                        body,
                        prev,
                        hash
                    ])
                    .map_err(db_err)?;
                prev = hash;
            }
        }
        let due = since + records.len() as u64 >= every || last.elapsed() >= interval;
        let signed = if due {
            let c = sign(key, seq, &prev);
            insert_checkpoint(&tx, &c)?;
            true
        } else {
            false
        };
        tx.commit().map_err(db_err)?;
        if signed {
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        } else {
            self.since_checkpoint += records.len() as u64;
        }
        Ok(first)
    }

    /// How long a group waits for companions: the more callers the previous
    /// group held, the more are in flight, up to the full `commit_delay` from
    /// eight on. A lightly loaded gateway (groups of two) waits a quarter.
    fn gather_time(&self) -> Duration {
        self.commit_delay * self.last_group.min(8) as u32 / 8
    }

    /// Have the syncer flush what was written outside a group (a timed
    /// checkpoint), with nobody waiting on it.
    fn flush_quietly(&self) {
        if let Some(syncer) = &self.syncer {
            let _ = syncer.send(Flush::Group {
                first: 0,
                dones: Vec::new(),
            });
        }
    }

    fn probe(&mut self) -> bool {
        let ok = (|| {
            let conn = self.connect()?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })()
        .is_ok();
        if !ok {
            self.conn = None;
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.healthy.store(ok, Ordering::Relaxed);
        }
        ok
    }

    fn checkpoint_now(&mut self) -> Result<(), AuditError> {
        let signature_key = &self.key;
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => return Ok(()),
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let (seq, hash) = head(&tx)?;
        if seq > 0 {
            insert_checkpoint(&tx, &sign(signature_key, seq, &hash))?;
        }
        tx.commit().map_err(db_err)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// A group this large is committed as soon as it is drained: its commit and
/// flush (~0.3 ms of CPU on the 2-core reference VM) are already shared by
/// enough records, and waiting longer only parks its callers. This is the
/// usual case on a busy core, where this `SCHED_BATCH` thread runs only once
/// the server threads yield and finds everything queued since: there, a
/// further gather cost ~10 % of throughput (`docs/performance-audit.md`).
const ENOUGH_TO_COMMIT: usize = 16;

/// Whether a group of `queued` records should wait `commit_delay` for
/// companions: only under load (the previous group held more than one) and
/// only while it is small.
fn worth_gathering(queued: usize, last_group: usize) -> bool {
    last_group > 1 && queued < ENOUGH_TO_COMMIT
}

/// Run this thread as `SCHED_BATCH`: the kernel then never lets it preempt a
/// running server thread on wake-up, so on a saturated machine it runs when a
/// server thread yields and commits everything queued by then, instead of
/// interrupting the servers for every small group. Measured on the 2-core VM
/// at 64 connections: groups grew from ~13 to ~35 records and the added CPU
/// per call fell from ~30 to ~10 µs (`docs/performance-audit.md`). On a machine
/// with an idle core it changes nothing: the thread is placed there at once.
/// A refusal (a sandbox forbidding it) only loses that gain, as does an
/// operating system without the policy.
#[cfg(target_os = "linux")]
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on the calling thread with a valid parameter.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "audit committer keeps the normal scheduling policy");
    }
}

#[cfg(not(target_os = "linux"))]
fn batch_scheduling() {}

fn sign(key: &SigningKey, seq: i64, hash: &str) -> Checkpoint {
    let time_us = crate::clock::now_us();
    Checkpoint {
        seq,
        hash: hash.to_owned(),
        time_us,
        key_id: key.key_id.clone(),
        signature: key.sign(&checkpoint_message(seq, hash, time_us)),
    }
}

fn head(conn: &Connection) -> Result<(i64, String), AuditError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    match rows.next().map_err(db_err)? {
        Some(r) => Ok((r.get(0).map_err(db_err)?, r.get(1).map_err(db_err)?)),
        None => Ok((0, crate::GENESIS.to_owned())),
    }
}

fn insert_checkpoint(conn: &Connection, c: &Checkpoint) -> Result<(), AuditError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, time_us, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![c.seq, c.hash, c.time_us, c.key_id, c.signature]))
    .map_err(db_err)?;
    Ok(())
}

fn db_err(e: rusqlite::Error) -> AuditError {
    AuditError::WriteFailed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_small_group_under_load_waits_for_companions() {
        // Idle (the previous group was alone): never wait.
        assert!(!worth_gathering(1, 0));
        assert!(!worth_gathering(1, 1));
        // Under load, a small group waits...
        assert!(worth_gathering(1, 2));
        assert!(worth_gathering(ENOUGH_TO_COMMIT - 1, 40));
        // ...and one already large enough goes at once.
        assert!(!worth_gathering(ENOUGH_TO_COMMIT, 2));
        assert!(!worth_gathering(40, 40));
    }
}
