//! SIEM sinks: copies of every audit record for files, OpenTelemetry
//! collectors (OTLP/HTTP logs), Splunk (HEC) and syslog (RFC 5424), fed from
//! the durable audit log itself (the outbox pattern).
//!
//! Each sink runs one task that reads the records after its own cursor
//! (`audit_sink_cursors`), delivers them in batches, and moves the cursor only
//! after the receiver acknowledged the batch. A receiver that is down costs
//! nothing but time: the records wait in the audit log (which is the spool),
//! the task retries with exponential backoff and jitter, and catches up in
//! order when the receiver returns. Delivery is at least once: a batch whose
//! acknowledgement is lost (a timeout after the receiver accepted it, a crash
//! between the acknowledgement and the cursor update) is sent again; every
//! record carries `event_id` and `integrity.seq` to deduplicate on.
//!
//! The backlog is bounded per sink (`max_backlog`): beyond it the sink skips
//! its oldest undelivered records (they stay in the audit log; only this
//! sink's copy is lost) and records the loss as an `audit.sink_overflow`
//! event, which the sink then delivers like any other record.
//!
//! A sink without a cursor (a new name) starts from the beginning of the log
//! that is still kept, so it never misses a record.

mod file;
mod hec;
mod http;
mod otlp;
mod syslog;
#[cfg(test)]
mod tests;
mod validate;

pub use validate::validate_sinks;

use crate::db::{AuditDb, StoredRecord};
use crate::event::{Actor, AuditEvent};
use crate::writer::Auditor;
use portcullis_config::{Sink, SinkKind};
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a sink looks for new records when no commit was announced (the
/// CLI writes to the same log from another process).
const POLL: Duration = Duration::from_secs(1);

/// A sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit sinks: {0}")]
    Config(String),
    #[error("audit sink {sink}: {reason}")]
    Start { sink: String, reason: String },
}

/// Why one delivery attempt failed. Messages never carry credentials: HTTP
/// errors are reported without their URL, and sinks are named by the sink's
/// name and a redacted endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refuses the records for a reason retrying soon will not
    /// fix (a bad token, a missing index): retried at the longest backoff,
    /// never dropped.
    #[error("refused with HTTP {status} (check the sink's configuration): {body}")]
    Rejected { status: u16, body: String },
    #[error("{0}")]
    Protocol(String),
}

/// What operators see per sink (admin API, `/readyz`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkStatus {
    pub name: String,
    /// `file`, `otlp`, `splunk_hec` or `syslog`.
    pub kind: &'static str,
    /// The file path or the endpoint without credentials or query.
    pub target: String,
    /// Last sequence number delivered (or skipped by an overflow).
    pub cursor: i64,
    /// Records in the log after the cursor.
    pub backlog: i64,
    pub last_error: Option<String>,
    pub last_error_us: Option<i64>,
    pub last_success_us: Option<i64>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// Records delivered since the gateway started.
    pub delivered: u64,
    /// Records skipped because the backlog overflowed, since the gateway started.
    pub overflowed: u64,
    /// False once the sink's task has ended (shutdown).
    pub running: bool,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    cursor: i64,
    head: i64,
    last_error: Option<String>,
    last_error_us: Option<i64>,
    last_success_us: Option<i64>,
    consecutive_failures: u64,
    delivered: u64,
    overflowed: u64,
}

struct Shared {
    name: String,
    kind: &'static str,
    target: String,
    progress: Mutex<Progress>,
    running: AtomicBool,
}

/// Clears `running` when a sink's task ends, however it ends.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
    }
}

/// The running sinks. Keep it for the life of the gateway: dropping it stops
/// the sinks (without the flush `shutdown` does).
#[must_use = "dropping a SinkSet stops its sinks"]
pub struct SinkSet {
    tasks: Vec<JoinHandle<()>>,
    monitor: SinkMonitor,
    stop: watch::Sender<bool>,
}

/// A cheap, cloneable view of the sinks' progress, for the admin API and
/// readiness checks.
#[derive(Clone)]
pub struct SinkMonitor {
    sinks: Vec<Arc<Shared>>,
    db: Option<AuditDb>,
}

impl SinkSet {
    /// Validate `sinks` and start one task per sink, reading from `auditor`'s
    /// log. With auditing off there is nothing to export: the set is empty.
    /// Must be called inside a Tokio runtime.
    pub fn start(auditor: &Auditor, sinks: &[Sink]) -> Result<SinkSet, SinkError> {
        validate_sinks(sinks).map_err(SinkError::Config)?;
        let (stop, _) = watch::channel(false);
        let (Some(db), Some(committed)) = (auditor.db(), auditor.committed()) else {
            if !sinks.is_empty() {
                tracing::warn!("audit is disabled: the configured audit sinks receive nothing");
            }
            return Ok(SinkSet {
                tasks: Vec::new(),
                monitor: SinkMonitor {
                    sinks: Vec::new(),
                    db: None,
                },
                stop,
            });
        };
        // Build every target first, so a sink that cannot start starts none.
        let mut targets = Vec::with_capacity(sinks.len());
        for sink in sinks {
            targets.push(Target::new(sink, auditor.replica())?);
        }
        let mut tasks = Vec::with_capacity(sinks.len());
        let mut shared_all = Vec::with_capacity(sinks.len());
        for (sink, target) in sinks.iter().zip(targets) {
            let shared = Arc::new(Shared {
                name: sink.name.clone(),
                kind: kind_name(&sink.kind),
                target: target.describe(),
                progress: Mutex::new(Progress::default()),
                running: AtomicBool::new(true),
            });
            tracing::info!(sink = %sink.name, kind = shared.kind, target = %shared.target, "audit sink starting");
            let runner = Runner {
                sink: sink.clone(),
                db: db.clone(),
                auditor: auditor.clone(),
                target,
                shared: shared.clone(),
                committed: committed.clone(),
                stop: stop.subscribe(),
            };
            let running = Running(shared.clone());
            tasks.push(tokio::spawn(async move {
                let _running = running;
                runner.run().await;
            }));
            shared_all.push(shared);
        }
        Ok(SinkSet {
            tasks,
            monitor: SinkMonitor {
                sinks: shared_all,
                db: Some(db.clone()),
            },
            stop,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The sinks' names (for retention, which keeps what they have not
    /// delivered).
    pub fn names(&self) -> Vec<String> {
        self.monitor.sinks.iter().map(|s| s.name.clone()).collect()
    }

    /// A view of the sinks' progress that outlives borrows of the set.
    pub fn monitor(&self) -> SinkMonitor {
        self.monitor.clone()
    }

    /// Every sink's progress; see [`SinkMonitor::status`].
    pub async fn status(&self) -> Vec<SinkStatus> {
        self.monitor.status().await
    }

    /// Stop the sinks: each delivers what it still can (no more backoff
    /// waits: the first failure ends it), for at most `grace`; tasks still
    /// busy then are cancelled. Nothing is lost either way: undelivered
    /// records stay behind the cursor for the next start.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (shared, mut task) in self.monitor.sinks.iter().zip(self.tasks) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(sink = %shared.name, "audit sink still delivering at shutdown; the rest is sent at the next start");
            }
        }
    }
}

impl SinkMonitor {
    /// Every sink's progress, the backlog measured against the log now.
    pub async fn status(&self) -> Vec<SinkStatus> {
        let head = match &self.db {
            Some(db) => db.max_seq().await.ok(),
            None => None,
        };
        self.report(head)
    }

    /// As `status`, without touching the database: the backlog is measured
    /// against the newest record each sink has seen (for synchronous
    /// readiness checks).
    pub fn status_now(&self) -> Vec<SinkStatus> {
        self.report(None)
    }

    fn report(&self, head: Option<i64>) -> Vec<SinkStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let p = s.progress.lock().map(|p| p.clone()).unwrap_or_default();
                let head = head.unwrap_or(p.head).max(p.head);
                SinkStatus {
                    name: s.name.clone(),
                    kind: s.kind,
                    target: s.target.clone(),
                    cursor: p.cursor,
                    backlog: (head - p.cursor).max(0),
                    last_error: p.last_error,
                    last_error_us: p.last_error_us,
                    last_success_us: p.last_success_us,
                    consecutive_failures: p.consecutive_failures,
                    delivered: p.delivered,
                    overflowed: p.overflowed,
                    running: s.running.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// Sinks' cursors and backlogs read from the database alone (for the CLI,
/// without running sinks).
pub async fn stored_status(db: &AuditDb, sinks: &[Sink]) -> Result<Vec<SinkStatus>, SinkError> {
    let err = |e: crate::AuditError| SinkError::Config(e.to_string());
    let head = db.max_seq().await.map_err(err)?;
    let mut out = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let cursor = db.cursor(&sink.name).await.map_err(err)?.unwrap_or(0);
        out.push(SinkStatus {
            name: sink.name.clone(),
            kind: kind_name(&sink.kind),
            target: describe_kind(&sink.kind),
            cursor,
            backlog: (head - cursor).max(0),
            last_error: None,
            last_error_us: None,
            last_success_us: None,
            consecutive_failures: 0,
            delivered: 0,
            overflowed: 0,
            running: false,
        });
    }
    Ok(out)
}

fn kind_name(kind: &SinkKind) -> &'static str {
    match kind {
        SinkKind::File { .. } => "file",
        SinkKind::Otlp { .. } => "otlp",
        SinkKind::SplunkHec { .. } => "splunk_hec",
        SinkKind::Syslog { .. } => "syslog",
    }
}

fn describe_kind(kind: &SinkKind) -> String {
    match kind {
        SinkKind::File { path } => path.display().to_string(),
        SinkKind::Otlp { endpoint, .. } | SinkKind::SplunkHec { endpoint, .. } => {
            redact_url(endpoint)
        }
        SinkKind::Syslog { address, .. } => address.clone(),
    }
}

/// `scheme://host:port/path`: no user info, query or fragment (where
/// credentials sometimes hide).
pub(crate) fn redact_url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// One destination's wire format and connection.
enum Target {
    File(file::FileSink),
    Otlp(otlp::OtlpSink),
    Hec(hec::HecSink),
    Syslog(syslog::SyslogSink),
}

impl Target {
    fn new(sink: &Sink, replica: &str) -> Result<Target, SinkError> {
        let start = |reason: String| SinkError::Start {
            sink: sink.name.clone(),
            reason,
        };
        Ok(match &sink.kind {
            SinkKind::File { path } => Target::File(file::FileSink::new(path.clone())),
            SinkKind::Otlp { endpoint, headers } => {
                Target::Otlp(otlp::OtlpSink::new(endpoint, headers, replica).map_err(start)?)
            }
            SinkKind::SplunkHec {
                endpoint,
                token,
                index,
                sourcetype,
            } => Target::Hec(
                hec::HecSink::new(endpoint, token, index.clone(), sourcetype.clone())
                    .map_err(start)?,
            ),
            SinkKind::Syslog { address, app_name } => {
                Target::Syslog(syslog::SyslogSink::new(address, app_name, replica).map_err(start)?)
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Target::File(s) => s.describe(),
            Target::Otlp(s) => s.describe(),
            Target::Hec(s) => s.describe(),
            Target::Syslog(s) => s.describe(),
        }
    }

    async fn deliver(&mut self, records: &[StoredRecord]) -> Result<(), DeliveryError> {
        match self {
            Target::File(s) => s.deliver(records).await,
            Target::Otlp(s) => s.deliver(records).await,
            Target::Hec(s) => s.deliver(records).await,
            Target::Syslog(s) => s.deliver(records).await,
        }
    }
}

/// How loud a record is, for syslog severities and OTLP severity numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// A request that succeeded.
    Info,
    /// A security event, or a request that ended in a tool error or was
    /// cancelled.
    Notice,
    /// A refusal or a failure: denied requests, protocol errors, failed
    /// logins, lost sink copies.
    Warning,
}

pub(crate) fn level(r: &StoredRecord) -> Level {
    let t = r.event_type.as_str();
    let failed = t.ends_with("_failed")
        || t.ends_with(".denied")
        || t.ends_with("_overflow")
        || t.ends_with(".failed");
    match r.outcome.as_deref() {
        _ if failed => Level::Warning,
        Some("denied") | Some("protocol_error") => Level::Warning,
        Some("success") => Level::Info,
        Some(_) => Level::Notice,
        None if t == "mcp.request" => Level::Info,
        None => Level::Notice,
    }
}

/// The record as every format carries it: the event and its `integrity`
/// section, canonical JSON on one line.
pub(crate) fn export_text(r: &StoredRecord) -> String {
    crate::canon::canonical_json(&r.export())
}

/// The wait before retry number `failures` (1-based): exponential from
/// `min_ms` to `max_ms`, with jitter in its upper half so that sinks (and
/// replicas) that failed together do not retry together.
pub(crate) fn backoff(failures: u32, min_ms: u64, max_ms: u64) -> Duration {
    use rand::Rng;
    let min_ms = min_ms.max(1);
    let max_ms = max_ms.max(min_ms);
    let exp = failures.saturating_sub(1).min(32);
    let base = min_ms.saturating_mul(1u64 << exp).min(max_ms);
    let low = (base / 2).max(min_ms).min(base);
    Duration::from_millis(rand::thread_rng().gen_range(low..=base))
}

struct Runner {
    sink: Sink,
    db: AuditDb,
    auditor: Auditor,
    target: Target,
    shared: Arc<Shared>,
    committed: watch::Receiver<i64>,
    stop: watch::Receiver<bool>,
}

impl Runner {
    fn stopping(&self) -> bool {
        // A dropped SinkSet stops its sinks too.
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        let mut cursor = loop {
            match self.db.cursor(&self.sink.name).await {
                Ok(c) => break c.unwrap_or(0),
                Err(e) => {
                    failures += 1;
                    self.failed(&format!("reading the cursor: {e}"), failures, false);
                    if self.stopping() {
                        return;
                    }
                    self.pause(backoff(
                        failures,
                        self.sink.backoff_min_ms,
                        self.sink.backoff_max_ms,
                    ))
                    .await;
                }
            }
        };
        self.shared.update(|p| p.cursor = cursor);
        loop {
            let stopping = self.stopping();
            // Mark the commits seen before reading, so a commit after the
            // read wakes the wait below.
            self.committed.borrow_and_update();
            let step = self.step(cursor, stopping).await;
            match step {
                Ok(Step::Delivered(last)) => {
                    cursor = last;
                    failures = 0;
                }
                Ok(Step::Skipped(to)) => cursor = to,
                Ok(Step::Idle) => {
                    if stopping {
                        return;
                    }
                    self.wait_for_records().await;
                }
                Err((e, wait)) => {
                    failures = failures.saturating_add(1);
                    self.failed(&e, failures, matches!(wait, Wait::Longest));
                    if stopping {
                        return;
                    }
                    let delay = match wait {
                        Wait::Longest => Duration::from_millis(self.sink.backoff_max_ms),
                        Wait::Backoff(after) => {
                            let b = backoff(
                                failures,
                                self.sink.backoff_min_ms,
                                self.sink.backoff_max_ms,
                            );
                            after
                                .map(|a| a.min(Duration::from_millis(self.sink.backoff_max_ms)))
                                .map_or(b, |a| a.max(b))
                        }
                    };
                    self.pause(delay).await;
                }
            }
        }
    }

    /// One move: skip an overflowing backlog, or deliver the next batch.
    async fn step(&mut self, cursor: i64, stopping: bool) -> Result<Step, (String, Wait)> {
        let db_err = |e: crate::AuditError| (format!("reading the audit log: {e}"), Wait::none());
        let head = self.db.max_seq().await.map_err(db_err)?;
        self.shared.update(|p| p.head = head);
        if !stopping {
            if let Some(to) = self.overflow(cursor, head).await {
                return Ok(Step::Skipped(to));
            }
        }
        let limit = self.sink.batch.max(1) as i64;
        let batch = self.db.read_after(cursor, limit).await.map_err(db_err)?;
        let Some(last) = batch.last().map(|r| r.seq) else {
            return Ok(Step::Idle);
        };
        if let Err(e) = self.target.deliver(&batch).await {
            let wait = match &e {
                DeliveryError::Rejected { .. } => Wait::Longest,
                DeliveryError::Status { retry_after, .. } => Wait::Backoff(*retry_after),
                _ => Wait::none(),
            };
            return Err((e.to_string(), wait));
        }
        if let Err(e) = self.db.set_cursor(&self.sink.name, last).await {
            // Delivered: go on from here; the stored cursor catches up with
            // the next success (or the batch is sent again after a restart).
            tracing::error!(sink = %self.sink.name, error = %e, "could not store the audit sink's cursor");
        }
        let n = batch.len() as u64;
        let now = crate::clock::now_us();
        let mut recovered = 0;
        self.shared.update(|p| {
            recovered = p.consecutive_failures;
            p.cursor = last;
            p.delivered += n;
            p.last_success_us = Some(now);
            p.consecutive_failures = 0;
        });
        if recovered > 0 {
            tracing::info!(sink = %self.sink.name, after_failures = recovered, "audit sink delivering again");
        }
        Ok(Step::Delivered(last))
    }

    /// Skip the oldest undelivered records when more than `max_backlog` wait,
    /// leaving a tenth of the allowance free so that the overflow record
    /// itself (and a few more) do not trigger another overflow at once. The
    /// loss is recorded (durably) before the cursor moves.
    async fn overflow(&mut self, cursor: i64, head: i64) -> Option<i64> {
        let max = i64::try_from(self.sink.max_backlog)
            .unwrap_or(i64::MAX)
            .max(1);
        if head - cursor <= max {
            return None;
        }
        // Records before the oldest kept one were pruned before this sink
        // existed: they are not pending.
        let cursor = match self.db.read_after(cursor, 1).await {
            Ok(first) => first.first().map_or(cursor, |r| (r.seq - 1).max(cursor)),
            Err(_) => return None,
        };
        if head - cursor <= max {
            return None;
        }
        let keep = max - (max / 10).max(1);
        let to = head - keep;
        let skipped = to - cursor;
        let event = AuditEvent::security(
            "audit.sink_overflow",
            Some(Actor::system()),
            json!({"sink": self.sink.name, "skipped_from_seq": cursor + 1,
                   "skipped_through_seq": to, "skipped": skipped,
                   "max_backlog": self.sink.max_backlog}),
        );
        if let Err(e) = self.auditor.record(event).await {
            tracing::error!(sink = %self.sink.name, error = %e, "cannot record an audit sink overflow; keeping the backlog");
            return None;
        }
        if let Err(e) = self.db.set_cursor(&self.sink.name, to).await {
            tracing::error!(sink = %self.sink.name, error = %e, "could not store the audit sink's cursor");
        }
        tracing::error!(sink = %self.sink.name, from_seq = cursor + 1, through_seq = to, skipped,
            "audit sink backlog overflowed: its copy of these records is lost (they remain in the audit log)");
        self.shared.update(|p| {
            p.cursor = to;
            p.overflowed += skipped as u64;
        });
        Some(to)
    }

    /// Note a failed attempt. A refusal that only a configuration change
    /// can fix is logged as an error, other failures as warnings.
    fn failed(&self, error: &str, failures: u32, misconfigured: bool) {
        let now = crate::clock::now_us();
        self.shared.update(|p| {
            p.last_error = Some(error.to_owned());
            p.last_error_us = Some(now);
            p.consecutive_failures = u64::from(failures);
        });
        // Name and redacted target only: never headers or tokens.
        let (sink, target) = (&self.sink.name, &self.shared.target);
        if misconfigured {
            tracing::error!(sink = %sink, target = %target, attempt = failures, error = %error,
                "audit sink refused by its receiver; retrying at the longest backoff until the configuration is fixed");
        } else {
            tracing::warn!(sink = %sink, target = %target, attempt = failures, error = %error,
                "audit sink delivery failed; retrying");
        }
    }

    async fn wait_for_records(&mut self) {
        tokio::select! {
            changed = self.committed.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(POLL).await;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
            _ = self.stop.changed() => {}
        }
    }

    async fn pause(&mut self, delay: Duration) {
        if self.stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.changed() => {}
        }
    }
}

enum Step {
    Delivered(i64),
    Skipped(i64),
    Idle,
}

enum Wait {
    Longest,
    Backoff(Option<Duration>),
}

impl Wait {
    fn none() -> Wait {
        Wait::Backoff(None)
    }
}
