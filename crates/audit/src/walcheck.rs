//! The WAL checkpointer: copies the audit log's write-ahead log back into the
//! database on a thread of its own (`audit-wal`), so that callers do not wait
//! for the copy.
//!
//! SQLite's automatic checkpoint runs at the end of the commit that crosses
//! its threshold, on the committer, and every record queued behind that
//! commit waits for the copy of the whole WAL (~32 MB). On the 2-core
//! reference VM that was ~0.5 % of records waiting 25–100 ms
//! (`docs/performance-audit.md`). Here a second connection runs `PASSIVE`
//! checkpoints every `TICK` while the committer keeps appending; a passive
//! checkpoint never blocks the writer.
//!
//! The WAL can only start again from its beginning when a writer finds it
//! wholly copied, which a concurrent copy rarely achieves under continuous
//! load. So the committer keeps its own automatic checkpoint at
//! `COMMITTER_PAGES`, as before: when it fires, all but the last tick's worth
//! is already copied, so its stall is short, and it restarts the WAL, which
//! keeps the file at about 32 MB.
use crate::writer::Inner;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the checkpointer looks for newly committed records.
const TICK: Duration = Duration::from_millis(100);

/// Passes per tick: each copies what the previous one left behind.
const PASSES: usize = 2;

/// The committer's own automatic checkpoint threshold, in pages of 4 KiB.
/// Every group rewrites the same last pages of the table and its indexes, so
/// a rare restart of the WAL copies each of them back once, not many times.
pub(crate) const COMMITTER_PAGES: i64 = 8_000;

/// The running checkpointer, owned by the committer.
pub(crate) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Stop the thread and wait until its connection is closed, so that the
    /// last connection to close (which copies the WAL back and deletes it)
    /// is a known one. Also run on drop, should the committer end otherwise.
    pub(crate) fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the audit WAL checkpointer panicked");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start the checkpointer for the database at `path`. It runs until stopped
/// (the committer's end) or the log is gone.
pub(crate) fn start(
    path: &Path,
    busy: Duration,
    inner: Weak<Inner>,
) -> std::io::Result<Checkpointer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("audit-wal".into())
        .spawn(move || run(path, busy, inner, rx))?;
    Ok(Checkpointer {
        stop: Some(tx),
        thread: Some(thread),
    })
}

fn run(path: PathBuf, busy: Duration, inner: Weak<Inner>, stop: Receiver<()>) {
    let mut conn: Option<Connection> = None;
    let mut copied_up_to = None;
    loop {
        match stop.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            // Told to stop, or the committer is gone.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(head) = inner.upgrade().map(|i| *i.committed.borrow()) else {
            return;
        };
        if copied_up_to == Some(head) {
            continue;
        }
        match checkpoint(&path, busy, &mut conn) {
            Ok(true) => copied_up_to = Some(head),
            // Not wholly copied yet (a reader in the way, or commits kept
            // coming): the next tick tries again even without new records.
            Ok(false) => copied_up_to = None,
            Err(e) => {
                // The committer's own checkpoint still bounds the WAL; try
                // afresh next tick.
                conn = None;
                tracing::warn!(error = %e, "audit WAL checkpoint failed");
            }
        }
    }
}

/// Up to `PASSES` passive checkpoints, until one finds the WAL wholly copied;
/// returns whether one did.
fn checkpoint(
    path: &Path,
    busy: Duration,
    conn: &mut Option<Connection>,
) -> rusqlite::Result<bool> {
    let c = match conn {
        Some(c) => c,
        None => {
            let c = Connection::open(path)?;
            c.busy_timeout(busy)?;
            conn.insert(c)
        }
    };
    for _ in 0..PASSES {
        // (blocked, frames in the WAL, frames copied into the database)
        let (blocked, frames, copied): (i64, i64, i64) =
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if blocked != 0 {
            return Ok(false);
        }
        if copied >= frames {
            return Ok(true);
        }
    }
    Ok(false)
}
