//! The auditor: the handle every part of the gateway records through. Records
//! are encoded on the caller's task and handed to the committer thread
//! (`committer.rs`), which answers each caller once its group is durable.

use crate::committer::{Committer, Job};
use crate::db::{AuditDb, Columns};
use crate::event::{Actor, AuditEvent};
use crate::keys::SigningKey;
use crate::mask::Masker;
use crate::AuditError;
use portcullis_config::{Audit, AuditFailureMode};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Told of each group commit (for metrics).
pub(crate) type BatchObserver = Box<dyn Fn(&GroupCommit<'_>) + Send + Sync>;

/// One group commit, as observers see it.
pub struct GroupCommit<'a> {
    /// Records in the group.
    pub records: usize,
    /// Whether the group was written (durably, with `sync: full`).
    pub written: bool,
    /// For a written group, how long each of its callers waited from handing
    /// its record over until the record was durable; empty otherwise.
    pub waits: &'a [Duration],
}

/// Upper bounds of the batch-size histogram buckets.
const BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 64, 256, u64::MAX];

/// Upper bounds (µs) of the wait histogram buckets: how long callers waited
/// for their record to be durable.
const WAIT_BUCKETS_US: [u64; 9] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    100_000,
    u64::MAX,
];

/// Handle to the audit log; cheap to clone. A disabled auditor accepts and
/// drops everything.
#[derive(Clone)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

pub(crate) struct Inner {
    tx: mpsc::Sender<Job>,
    pub(crate) healthy: AtomicBool,
    fail_closed: bool,
    replica: String,
    masker: Masker,
    pub(crate) stats: BatchStats,
    pub(crate) committed: watch::Sender<i64>,
    db: AuditDb,
    public_key: String,
    pub(crate) batch_observer: OnceLock<BatchObserver>,
    /// Record `audit.started` / `audit.stopped` (gateways, not CLI commands).
    announce: bool,
}

/// Group commit sizes, and how long callers waited for durability, so far.
#[derive(Default)]
pub struct BatchStats {
    batches: AtomicU64,
    records: AtomicU64,
    largest: AtomicU64,
    buckets: [AtomicU64; 8],
    waited: AtomicU64,
    wait_sum_us: AtomicU64,
    wait_buckets: [AtomicU64; 9],
}

impl BatchStats {
    pub(crate) fn observe(&self, n: usize, waits: &[Duration]) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(n as u64, Ordering::Relaxed);
        self.largest.fetch_max(n as u64, Ordering::Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| n as u64 <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut sum: u64 = 0;
        for w in waits {
            let us = u64::try_from(w.as_micros()).unwrap_or(u64::MAX);
            sum = sum.saturating_add(us);
            if let Some(i) = WAIT_BUCKETS_US.iter().position(|b| us <= *b) {
                self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.waited.fetch_add(waits.len() as u64, Ordering::Relaxed);
        self.wait_sum_us.fetch_add(sum, Ordering::Relaxed);
    }

    /// `{batches, records, mean, largest, histogram: {"<=1": n, …},
    /// wait_mean_us, wait_histogram_us: {"<=250": n, …}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let batches = self.batches.load(Ordering::Relaxed);
        let records = self.records.load(Ordering::Relaxed);
        let hist = labelled(&BUCKETS, &self.buckets);
        let waits = labelled(&WAIT_BUCKETS_US, &self.wait_buckets);
        let waited = self.waited.load(Ordering::Relaxed);
        let wait_sum = self.wait_sum_us.load(Ordering::Relaxed);
        json!({
            "batches": batches,
            "records": records,
            "mean": if batches == 0 { 0.0 } else { records as f64 / batches as f64 },
            "largest": self.largest.load(Ordering::Relaxed),
            "histogram": hist,
            "wait_mean_us": if waited == 0 { 0.0 } else { wait_sum as f64 / waited as f64 },
            "wait_histogram_us": waits,
        })
    }
}

/// Histogram buckets as `{"<=b": n, …, ">last": n}`; the final bound is
/// `u64::MAX`.
fn labelled(bounds: &[u64], counts: &[AtomicU64]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let mut previous = 0;
    for (b, n) in bounds.iter().zip(counts) {
        let label = if *b == u64::MAX {
            format!(">{previous}")
        } else {
            format!("<={b}")
        };
        out.insert(label, json!(n.load(Ordering::Relaxed)));
        previous = *b;
    }
    out
}

impl Auditor {
    /// An auditor that records nothing (`audit.enabled: false`).
    pub fn disabled() -> Auditor {
        Auditor { inner: None }
    }

    /// Open the audit log for `config`, with state under `data_dir`, and start
    /// its writer. Records `audit.started`.
    pub async fn open(config: &Audit, data_dir: &Path) -> Result<Auditor, AuditError> {
        Auditor::open_with(config, data_dir, true).await
    }

    /// As `open`, for a short-lived command-line process: no `audit.started`
    /// or `audit.stopped` records (the gateway's audit subsystem did not start
    /// or stop), but the command's own records and a closing checkpoint.
    pub async fn open_for_command(config: &Audit, data_dir: &Path) -> Result<Auditor, AuditError> {
        Auditor::open_with(config, data_dir, false).await
    }

    async fn open_with(
        config: &Audit,
        data_dir: &Path,
        announce: bool,
    ) -> Result<Auditor, AuditError> {
        if !config.enabled {
            return Ok(Auditor::disabled());
        }
        let path = config
            .path
            .clone()
            .unwrap_or_else(|| data_dir.join("audit.db"));
        let key_path = config
            .signing_key
            .clone()
            .unwrap_or_else(|| data_dir.join("audit-signing.key"));
        let key = SigningKey::load_or_create(&key_path)?;
        let busy = Duration::from_millis(config.write_timeout_ms.max(1));
        let db = AuditDb::open_with(&path, config.sync, busy).await?;
        let head_seq = db.max_seq().await?;
        let last_checkpoint = db.checkpoints().await?.last().map(|c| c.seq).unwrap_or(0);
        let replica = config.replica_id.clone().unwrap_or_else(default_replica);
        let (tx, rx) = mpsc::channel();
        let (committed, _) = watch::channel(head_seq);
        let inner = Arc::new(Inner {
            tx,
            healthy: AtomicBool::new(true),
            fail_closed: config.on_failure == AuditFailureMode::Closed,
            replica,
            masker: Masker::new(&config.mask_arguments, key.digest_key()),
            stats: BatchStats::default(),
            committed,
            db,
            public_key: key.public_hex(),
            batch_observer: OnceLock::new(),
            announce,
        });
        let committer = Committer::open(
            &path,
            config,
            busy,
            key,
            Arc::downgrade(&inner),
            (head_seq - last_checkpoint).max(0) as u64,
        )?;
        std::thread::Builder::new()
            .name("audit-commit".into())
            .spawn(move || committer.run(rx))?;
        let auditor = Auditor { inner: Some(inner) };
        if !announce {
            return Ok(auditor);
        }
        let started = AuditEvent::security(
            "audit.started",
            Some(Actor::system()),
            json!({"database": path.display().to_string(), "version": env!("CARGO_PKG_VERSION"),
                   "signing_key_id": auditor.inner.as_ref().map(|i| key_id_of(&i.public_key))}),
        );
        auditor.record(started).await?;
        Ok(auditor)
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// False after a failed write, until a write succeeds again.
    pub fn healthy(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|i| i.healthy.load(Ordering::Relaxed))
    }

    /// Whether a call must be refused when its record cannot be written.
    pub fn fails_closed(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.fail_closed)
    }

    pub fn replica(&self) -> &str {
        self.inner
            .as_ref()
            .map(|i| i.replica.as_str())
            .unwrap_or("")
    }

    /// The masker for arguments, or `None` when auditing is off.
    pub fn masker(&self) -> Option<&Masker> {
        self.inner.as_ref().map(|i| &i.masker)
    }

    pub fn db(&self) -> Option<&AuditDb> {
        self.inner.as_ref().map(|i| &i.db)
    }

    /// Hex Ed25519 public key that verifies this log's checkpoints.
    pub fn public_key(&self) -> Option<&str> {
        self.inner.as_ref().map(|i| i.public_key.as_str())
    }

    pub fn batch_stats(&self) -> serde_json::Value {
        self.inner
            .as_ref()
            .map(|i| i.stats.snapshot())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Called with each group commit: its size, whether it was written, and
    /// how long its callers waited (for metrics).
    pub fn observe_batches(&self, f: impl Fn(&GroupCommit<'_>) + Send + Sync + 'static) {
        if let Some(i) = &self.inner {
            let _ = i.batch_observer.set(Box::new(f));
        }
    }

    /// The last committed sequence number, updated after every commit (sinks
    /// wait on it).
    pub fn committed(&self) -> Option<watch::Receiver<i64>> {
        self.inner.as_ref().map(|i| i.committed.subscribe())
    }

    /// Write `event` durably; resolves with its sequence number once its group
    /// is committed. With auditing off, resolves at once with 0.
    pub async fn record(&self, mut event: AuditEvent) -> Result<i64, AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(0);
        };
        event.replica.clone_from(&inner.replica);
        let body = crate::canon::encode(&event)
            .map_err(|e| AuditError::WriteFailed(format!("unencodable event: {e}")))?;
        let columns = Columns::of(event);
        let (done, answer) = crate::relay::channel();
        inner
            .tx
            .send(Job::Record {
                body,
                columns: Box::new(columns),
                done,
            })
            .map_err(|_| AuditError::Stopped)?;
        match answer.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AuditError::WriteFailed(e)),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Whether the log can be written now (an empty write transaction). A
    /// success makes the auditor healthy again.
    pub async fn probe(&self) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let (tx, rx) = oneshot::channel();
        if inner.tx.send(Job::Probe(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Write `event` without waiting (security events on paths that must not
    /// block); a failure is logged.
    pub fn record_detached(&self, event: AuditEvent) {
        if self.inner.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let kind = event.event_type.clone();
            if let Err(e) = me.record(event).await {
                tracing::error!(event = %kind, error = %e, "audit record lost");
            }
        });
    }

    /// Record `audit.stopped`, seal the chain with a final checkpoint and stop
    /// the writer.
    pub async fn close(&self) {
        let Some(inner) = &self.inner else { return };
        if inner.announce {
            let stopped = AuditEvent::security(
                "audit.stopped",
                Some(Actor::system()),
                json!({"reason": "shutdown"}),
            );
            if let Err(e) = self.record(stopped).await {
                tracing::error!(error = %e, "could not record audit.stopped");
            }
        }
        let (tx, rx) = oneshot::channel();
        if inner.tx.send(Job::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        // The bench reads this line to report group-commit sizes.
        if inner.announce {
            tracing::info!(target: "portcullis::audit", batches = %inner.stats.snapshot(), "audit log closed");
        }
    }

    /// `close`, then the readers' connections (`AuditDb::close`), which
    /// leaves the log one self-contained file: for a process whose sinks are
    /// stopped or that has none (the CLI, the end of `serve`).
    pub async fn close_and_release(&self) {
        self.close().await;
        if let Some(db) = self.db() {
            db.close().await;
        }
    }
}

fn key_id_of(public_hex: &str) -> String {
    crate::keys::PublicKey::from_hex(public_hex)
        .map(|k| k.key_id)
        .unwrap_or_default()
}

fn default_replica() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}/{}", std::process::id())
}

/// Report a group's fate: health, statistics, the committed watch, and each
/// caller's answer (its sequence number, or why its record was not kept).
pub(crate) fn finish(
    inner: &std::sync::Weak<Inner>,
    result: Result<i64, String>,
    dones: Vec<crate::relay::Done>,
) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let n = dones.len();
    if n == 0 {
        return;
    }
    match result {
        Ok(first) => {
            inner.healthy.store(true, Ordering::Relaxed);
            let waits: Vec<Duration> = dones.iter().map(|d| d.waited()).collect();
            inner.stats.observe(n, &waits);
            if let Some(f) = inner.batch_observer.get() {
                f(&GroupCommit {
                    records: n,
                    written: true,
                    waits: &waits,
                });
            }
            // `send_replace`: the head must move even while no sink is subscribed
            // (the WAL checkpointer reads it too).
            inner.committed.send_replace(first + n as i64 - 1);
            crate::relay::answer_all(dones, |i| Ok(first + i as i64));
        }
        Err(text) => {
            inner.healthy.store(false, Ordering::Relaxed);
            if let Some(f) = inner.batch_observer.get() {
                f(&GroupCommit {
                    records: n,
                    written: false,
                    waits: &[],
                });
            }
            crate::relay::answer_all(dones, |_| Err(text.clone()));
        }
    }
}
