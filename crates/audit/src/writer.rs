//! The writer: every record goes through one task per process that commits
//! records in groups (one SQLite transaction, one fsync, many records) and
//! answers each caller only after its group is durable. Under load the groups
//! grow by themselves: while one commits, the next gathers.

use crate::db::{self, AuditDb, Checkpoint, Columns, NewRow, StoredRecord};
use crate::event::{Actor, AuditEvent};
use crate::keys::{checkpoint_message, SigningKey};
use crate::mask::Masker;
use crate::AuditError;
use portcullis_config::{Audit, AuditFailureMode};
use serde_json::json;
use sqlx::sqlite::SqliteConnection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Told each group commit's size and whether it succeeded.
type BatchObserver = Box<dyn Fn(usize, bool) + Send + Sync>;

/// Upper bounds of the batch-size histogram buckets.
const BUCKETS: [usize; 8] = [1, 2, 4, 8, 16, 64, 256, usize::MAX];

enum Job {
    Record {
        body: String,
        columns: Box<Columns>,
        done: Option<oneshot::Sender<Result<i64, String>>>,
    },
    Stop(oneshot::Sender<()>),
    /// Try an empty write transaction; answers whether the log is writable.
    Probe(oneshot::Sender<bool>),
}

/// Handle to the audit log; cheap to clone. A disabled auditor accepts and
/// drops everything.
#[derive(Clone)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Job>,
    healthy: AtomicBool,
    fail_closed: bool,
    replica: String,
    masker: Masker,
    stats: BatchStats,
    committed: watch::Sender<i64>,
    db: AuditDb,
    public_key: String,
    batch_observer: OnceLock<BatchObserver>,
    /// Record `audit.started` / `audit.stopped` (gateways, not CLI commands).
    announce: bool,
}

/// Group commit sizes seen so far.
#[derive(Default)]
pub struct BatchStats {
    batches: AtomicU64,
    records: AtomicU64,
    largest: AtomicU64,
    buckets: [AtomicU64; 8],
}

impl BatchStats {
    fn observe(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(n as u64, Ordering::Relaxed);
        self.largest.fetch_max(n as u64, Ordering::Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| n <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{batches, records, mean, largest, histogram: {"<=1": n, …}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let batches = self.batches.load(Ordering::Relaxed);
        let records = self.records.load(Ordering::Relaxed);
        let mut hist = serde_json::Map::new();
        for (i, b) in BUCKETS.iter().enumerate() {
            let label = if *b == usize::MAX {
                ">256".to_owned()
            } else {
                format!("<={b}")
            };
            hist.insert(label, json!(self.buckets[i].load(Ordering::Relaxed)));
        }
        json!({
            "batches": batches,
            "records": records,
            "mean": if batches == 0 { 0.0 } else { records as f64 / batches as f64 },
            "largest": self.largest.load(Ordering::Relaxed),
            "histogram": hist,
        })
    }
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
        let mut conn = db.writer_connection().await?;
        let (head_seq, _) = db::head(&mut conn).await?;
        let last_checkpoint = db.checkpoints().await?.last().map(|c| c.seq).unwrap_or(0);
        let replica = config.replica_id.clone().unwrap_or_else(default_replica);
        let (tx, rx) = mpsc::channel(65_536);
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
        let writer = Writer {
            inner: Arc::downgrade(&inner),
            conn,
            key,
            max_batch: config.max_batch.max(1),
            every: config.checkpoint_every_records.max(1),
            interval: Duration::from_secs(config.checkpoint_interval_secs.max(1)),
            since_checkpoint: (head_seq - last_checkpoint).max(0) as u64,
            last_checkpoint: Instant::now(),
            reconnect: false,
        };
        tokio::spawn(writer.run(rx));
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

    /// Called with each group commit's size and whether it was written (for
    /// metrics).
    pub fn observe_batches(&self, f: impl Fn(usize, bool) + Send + Sync + 'static) {
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
        let value = serde_json::to_value(&event)
            .map_err(|e| AuditError::WriteFailed(format!("unencodable event: {e}")))?;
        let columns = StoredRecord::columns_from_body(&value);
        let body = crate::canon::canonical_json(&value);
        let (done, answer) = oneshot::channel();
        inner
            .tx
            .send(Job::Record {
                body,
                columns: Box::new(columns),
                done: Some(done),
            })
            .await
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
        if inner.tx.send(Job::Probe(tx)).await.is_err() {
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
        if inner.tx.send(Job::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        // The bench reads this line to report group-commit sizes.
        if inner.announce {
            tracing::info!(target: "portcullis::audit", batches = %inner.stats.snapshot(), "audit log closed");
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

struct Writer {
    inner: std::sync::Weak<Inner>,
    conn: SqliteConnection,
    key: SigningKey,
    max_batch: usize,
    every: u64,
    interval: Duration,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The connection failed: open a new one before the next group.
    reconnect: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut tick = tokio::time::interval(self.interval.min(Duration::from_secs(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                job = rx.recv() => job,
                _ = tick.tick() => {
                    if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.interval {
                        if let Err(e) = self.checkpoint_now().await {
                            tracing::error!(error = %e, "audit checkpoint failed");
                        }
                    }
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut jobs = Vec::with_capacity(16);
            let mut stop = None;
            let mut probes = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Stop(s) => stop = Some(s),
                    Job::Probe(p) => probes.push(p),
                    j => jobs.push(j),
                }
                if stop.is_none() && jobs.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !probes.is_empty() {
                let ok = self.probe().await;
                for p in probes {
                    let _ = p.send(ok);
                }
            }
            if !jobs.is_empty() {
                self.commit(jobs).await;
            }
            if let Some(s) = stop {
                if self.since_checkpoint > 0 {
                    if let Err(e) = self.checkpoint_now().await {
                        tracing::error!(error = %e, "final audit checkpoint failed");
                    }
                }
                let _ = s.send(());
                return;
            }
        }
    }

    async fn commit(&mut self, jobs: Vec<Job>) {
        let n = jobs.len();
        let result = self.write(&jobs).await;
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        match result {
            Ok(first_seq) => {
                inner.healthy.store(true, Ordering::Relaxed);
                inner.stats.observe(n);
                if let Some(f) = inner.batch_observer.get() {
                    f(n, true);
                }
                let _ = inner.committed.send(first_seq + n as i64 - 1);
                for (i, job) in jobs.into_iter().enumerate() {
                    if let Job::Record { done: Some(d), .. } = job {
                        let _ = d.send(Ok(first_seq + i as i64));
                    }
                }
            }
            Err(e) => {
                self.reconnect = true;
                inner.healthy.store(false, Ordering::Relaxed);
                if let Some(f) = inner.batch_observer.get() {
                    f(n, false);
                }
                tracing::error!(error = %e, records = n, "audit group commit failed");
                let text = e.to_string();
                for job in jobs {
                    if let Job::Record { done: Some(d), .. } = job {
                        let _ = d.send(Err(text.clone()));
                    }
                }
            }
        }
    }

    /// Append `jobs` in one transaction; returns the first sequence number.
    async fn write(&mut self, jobs: &[Job]) -> Result<i64, AuditError> {
        if self.reconnect {
            if let Some(inner) = self.inner.upgrade() {
                self.conn = inner.db.writer_connection().await?;
            }
            self.reconnect = false;
        }
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        let result = self.append(jobs).await;
        match result {
            Ok(first) => match sqlx::query("COMMIT").execute(&mut self.conn).await {
                Ok(_) => Ok(first),
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                Err(e)
            }
        }
    }

    async fn append(&mut self, jobs: &[Job]) -> Result<i64, AuditError> {
        // The head is read inside the transaction, so another process writing
        // the same log (the CLI recording an administrative action) chains
        // correctly too.
        let (mut seq, mut prev) = db::head(&mut self.conn).await?;
        let first = seq + 1;
        let mut rows = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Job::Record { body, columns, .. } = job else {
                continue;
            };
            seq += 1;
            let hash = crate::chain_hash(&prev, seq, body);
            rows.push(NewRow {
                seq,
                columns: (**columns).clone(),
                body: body.clone(),
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            });
        }
        db::insert_rows(&mut self.conn, &rows).await?;
        self.since_checkpoint += rows.len() as u64;
        if self.since_checkpoint >= self.every || self.last_checkpoint.elapsed() >= self.interval {
            self.sign(seq, &prev).await?;
        }
        Ok(first)
    }

    async fn probe(&mut self) -> bool {
        let ok = async {
            if self.reconnect {
                if let Some(inner) = self.inner.upgrade() {
                    self.conn = inner.db.writer_connection().await?;
                }
                self.reconnect = false;
            }
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut self.conn)
                .await?;
            sqlx::query("COMMIT").execute(&mut self.conn).await?;
            Ok::<(), AuditError>(())
        }
        .await
        .is_ok();
        if !ok {
            let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.healthy.store(ok, Ordering::Relaxed);
        }
        ok
    }

    async fn checkpoint_now(&mut self) -> Result<(), AuditError> {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        let signed = async {
            let (seq, hash) = db::head(&mut self.conn).await?;
            if seq > 0 {
                self.sign(seq, &hash).await?;
            }
            Ok::<(), AuditError>(())
        }
        .await;
        match signed {
            Ok(()) => {
                sqlx::query("COMMIT").execute(&mut self.conn).await?;
                Ok(())
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                Err(e)
            }
        }
    }

    async fn sign(&mut self, seq: i64, hash: &str) -> Result<(), AuditError> {
        let time_us = crate::clock::now_us();
        let c = Checkpoint {
            seq,
            hash: hash.to_owned(),
            time_us,
            key_id: self.key.key_id.clone(),
            signature: self.key.sign(&checkpoint_message(seq, hash, time_us)),
        };
        db::insert_checkpoint(&mut self.conn, &c).await?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}
