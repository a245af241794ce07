//! The audit database: its own SQLite file (WAL), so audit commits never wait
//! behind catalog or identity writes and the file can be shipped, locked
//! down and retained on its own terms.

use crate::event::AuditEvent;
use crate::AuditError;
use portcullis_config::AuditSync;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub seq: i64,
    pub event_id: String,
    pub time_us: i64,
    pub event_type: String,
    pub replica: String,
    pub username: Option<String>,
    pub virtual_server: Option<String>,
    pub upstream: Option<String>,
    pub tool: Option<String>,
    pub method: Option<String>,
    pub outcome: Option<String>,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredRecord {
    /// The record as exported: the event plus its place in the chain.
    pub fn export(&self) -> Value {
        let mut v: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert(
                "integrity".into(),
                serde_json::json!({"seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash}),
            );
        }
        v
    }

    /// The search columns a body implies; `verify` compares them with the row.
    pub fn columns_from_body(body: &Value) -> Columns {
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_owned);
        Columns {
            event_id: s("/event_id").unwrap_or_default(),
            event_type: s("/event_type").unwrap_or_default(),
            replica: s("/replica").unwrap_or_default(),
            time_us: s("/time")
                .and_then(|t| crate::clock::parse_time(&t))
                .unwrap_or(0),
            username: s("/actor/username"),
            virtual_server: s("/target/virtual_server"),
            upstream: s("/target/upstream"),
            tool: s("/target/tool").or_else(|| s("/target/resource")),
            method: s("/request/method"),
            outcome: s("/outcome/status"),
        }
    }

    pub fn columns(&self) -> Columns {
        Columns {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            replica: self.replica.clone(),
            time_us: self.time_us,
            username: self.username.clone(),
            virtual_server: self.virtual_server.clone(),
            upstream: self.upstream.clone(),
            tool: self.tool.clone(),
            method: self.method.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

/// The searchable copies of a record's fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Columns {
    pub event_id: String,
    pub event_type: String,
    pub replica: String,
    pub time_us: i64,
    pub username: Option<String>,
    pub virtual_server: Option<String>,
    pub upstream: Option<String>,
    pub tool: Option<String>,
    pub method: Option<String>,
    pub outcome: Option<String>,
}

impl Columns {
    /// The searchable copies of an event's fields, taken from the event
    /// itself (the same values `StoredRecord::columns_from_body` reads back).
    pub(crate) fn of(event: AuditEvent) -> Columns {
        let AuditEvent {
            actor,
            event_id,
            event_type,
            outcome,
            replica,
            request,
            target,
            time,
            ..
        } = event;
        let (virtual_server, upstream, tool) = match target {
            Some(t) => (t.virtual_server, t.upstream, t.tool.or(t.resource)),
            None => (None, None, None),
        };
        Columns {
            time_us: crate::clock::parse_time(&time).unwrap_or(0),
            event_id,
            event_type,
            replica,
            username: actor.and_then(|a| a.username),
            virtual_server,
            upstream,
            tool,
            method: request.map(|r| r.method),
            outcome: outcome.map(|o| o.status),
        }
    }

    /// Name the first column that differs from `other`.
    pub fn first_difference(&self, other: &Columns) -> Option<&'static str> {
        [
            ("event_id", self.event_id == other.event_id),
            ("event_type", self.event_type == other.event_type),
            ("replica", self.replica == other.replica),
            ("time_us", self.time_us == other.time_us),
            ("username", self.username == other.username),
            (
                "virtual_server",
                self.virtual_server == other.virtual_server,
            ),
            ("upstream", self.upstream == other.upstream),
            ("tool", self.tool == other.tool),
            ("method", self.method == other.method),
            ("outcome", self.outcome == other.outcome),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(name, _)| name)
    }
}

/// SQLite's write-ahead log beside the database at `db`.
pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Open the log, checkpoint and close: alone, this connection is the last,
/// and its close copies the WAL in and deletes it.
///
/// The checkpoint is passive: it never blocks a writer (the CLI may run
/// beside a gateway), and copies everything when nobody else is writing.
/// The pool's connections may still be closing on their own threads, so
/// while the WAL is still there this is tried a few times.
fn settle_wal(path: &Path) -> rusqlite::Result<()> {
    let wal = wal_path(path);
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(1))?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        conn.close().map_err(|(_, e)| e)?;
        if !wal.exists() {
            break;
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct AuditDb {
    pool: SqlitePool,
    path: PathBuf,
}

const SELECT: &str = "SELECT seq, event_id, time_us, event_type, replica, username, virtual_server, upstream, tool, method, outcome, body, prev_hash, hash FROM audit_records";

impl AuditDb {
    /// Open (creating and migrating) the audit database at `path`.
    pub async fn open(path: &Path, sync: AuditSync) -> Result<AuditDb, AuditError> {
        AuditDb::open_with(path, sync, Duration::from_secs(10)).await
    }

    /// As `open`, waiting at most `busy` for a locked database.
    pub async fn open_with(
        path: &Path,
        sync: AuditSync,
        busy: Duration,
    ) -> Result<AuditDb, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options(path, sync, busy))
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(AuditDb {
            pool,
            path: path.to_owned(),
        })
    }

    /// Open an existing audit database for reading and maintenance (no
    /// creation: a typo in a path must not look like an empty, valid log).
    pub async fn open_existing(path: &Path) -> Result<AuditDb, AuditError> {
        if !path.exists() {
            return Err(AuditError::Invalid(format!(
                "no audit database at {}",
                path.display()
            )));
        }
        AuditDb::open(path, AuditSync::Full).await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Close the readers' connections, waiting for those in use. Once the
    /// log's writer is closed too (`Auditor::close`), the last connection to
    /// close copies the WAL into the database and deletes it, so a cleanly
    /// stopped gateway leaves one self-contained file behind.
    pub async fn close(&self) {
        self.pool.close().await;
        // Connections closing at the same moment can each still see another
        // open and all skip that last copy, so one more connection, opened and
        // closed alone, settles it. With the log still open elsewhere (the CLI
        // beside a running gateway) it is not the last, and changes nothing.
        let path = self.path.clone();
        let settled = tokio::task::spawn_blocking(move || settle_wal(&path)).await;
        if let Ok(Err(e)) = settled {
            tracing::debug!(error = %e, "audit WAL left for the next open to recover");
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn max_seq(&self) -> Result<i64, AuditError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM audit_records")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Up to `limit` records after `seq`, in order.
    pub async fn read_after(&self, seq: i64, limit: i64) -> Result<Vec<StoredRecord>, AuditError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE seq > ? ORDER BY seq LIMIT ?"))
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record).collect()
    }

    pub(crate) async fn query_records(
        &self,
        sql_where: &str,
        binds: &[crate::search::Bind],
        limit: i64,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let sql = format!("{SELECT} {sql_where} ORDER BY seq DESC LIMIT ?");
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                crate::search::Bind::Text(t) => q.bind(t.clone()),
                crate::search::Bind::Int(i) => q.bind(*i),
            };
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    /// `(seq, body)` of records of `event_type` at or after `since_us`, after
    /// `after_seq`, oldest first: for reports that scan a period in pages.
    pub async fn bodies_since(
        &self,
        event_type: &str,
        since_us: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, AuditError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM audit_records WHERE event_type = ? AND time_us >= ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(event_type)
        .bind(since_us)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn cursor(&self, sink: &str) -> Result<Option<i64>, AuditError> {
        let row = sqlx::query("SELECT seq FROM audit_sink_cursors WHERE sink = ?")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn set_cursor(&self, sink: &str, seq: i64) -> Result<(), AuditError> {
        sqlx::query(
            "INSERT INTO audit_sink_cursors (sink, seq, updated_us) VALUES (?, ?, ?)
             ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_us = excluded.updated_us",
        )
        .bind(sink)
        .bind(seq)
        .bind(crate::clock::now_us())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every sink's cursor.
    pub async fn cursors(&self) -> Result<Vec<(String, i64)>, AuditError> {
        let rows = sqlx::query("SELECT sink, seq FROM audit_sink_cursors ORDER BY sink")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// `(seq, hash, time_us, key_id, signature)` of every checkpoint, in order.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        let rows = sqlx::query(
            "SELECT seq, hash, time_us, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    time_us: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    signature: r.try_get(4)?,
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time_us: i64,
    pub key_id: String,
    pub signature: String,
}

fn options(path: &Path, sync: AuditSync, busy: Duration) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sync {
            AuditSync::Full => SqliteSynchronous::Full,
            AuditSync::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(busy)
}

fn record(r: &sqlx::sqlite::SqliteRow) -> Result<StoredRecord, AuditError> {
    Ok(StoredRecord {
        seq: r.try_get(0)?,
        event_id: r.try_get(1)?,
        time_us: r.try_get(2)?,
        event_type: r.try_get(3)?,
        replica: r.try_get(4)?,
        username: r.try_get(5)?,
        virtual_server: r.try_get(6)?,
        upstream: r.try_get(7)?,
        tool: r.try_get(8)?,
        method: r.try_get(9)?,
        outcome: r.try_get(10)?,
        body: r.try_get(11)?,
        prev_hash: r.try_get(12)?,
        hash: r.try_get(13)?,
    })
}
