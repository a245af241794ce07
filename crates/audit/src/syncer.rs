//! The syncer: with `sync: full`, the thread that makes committed groups
//! durable. The committer commits each group with SQLite's `synchronous =
//! NORMAL` (its WAL frames reach the OS, not yet the disk) and hands it here;
//! one `fdatasync` of the WAL then covers every group committed before it
//! began. Callers are answered only after that, exactly as SQLite's own
//! `synchronous = FULL` would, but the next group is inserted while this one
//! is being flushed, so a call waits for about one flush instead of up to two.

use crate::relay::Done;
use crate::writer::{finish, Inner};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Weak;

pub(crate) enum Flush {
    /// A committed group: its first sequence number and its callers.
    Group { first: i64, dones: Vec<Done> },
    /// Flush what is written, then stop; answered when done.
    Stop(std::sync::mpsc::Sender<()>),
}

/// Start the syncer for the database at `db_path`.
pub(crate) fn start(db_path: &Path, inner: Weak<Inner>) -> std::io::Result<Sender<Flush>> {
    let wal = crate::db::wal_path(db_path);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("audit-sync".into())
        .spawn(move || run(wal, rx, inner))?;
    Ok(tx)
}

fn run(wal: PathBuf, rx: Receiver<Flush>, inner: Weak<Inner>) {
    let mut file = None;
    while let Ok(first) = rx.recv() {
        let mut groups = Vec::new();
        let mut stop = None;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Flush::Group { first, dones } => groups.push((first, dones)),
                Flush::Stop(s) => stop = Some(s),
            }
            if stop.is_none() {
                next = rx.try_recv().ok();
            }
        }
        let result = sync_wal(&wal, &mut file);
        if let Err(e) = &result {
            // Whatever the OS still holds may never reach the disk: the next
            // flush starts from a freshly opened file.
            file = None;
            tracing::error!(error = %e, "audit log flush failed");
        }
        for (first, dones) in groups {
            finish(&inner, result.clone().map(|()| first), dones);
        }
        if let Some(s) = stop {
            let _ = s.send(());
            return;
        }
    }
}

/// `fdatasync` the WAL, reopening it first if the file at its path is not the
/// one held. SQLite replaces the WAL only when every connection has closed
/// (the committer's stays open), but a flush of a stale file would lose
/// durability silently, so the identity is checked on every flush.
fn sync_wal(path: &Path, file: &mut Option<File>) -> Result<(), String> {
    let current = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let same = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .is_some_and(|m| m.dev() == current.dev() && m.ino() == current.ino());
    if !same {
        *file = Some(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    match file {
        Some(f) => f
            .sync_data()
            .map_err(|e| format!("{}: {e}", path.display())),
        None => Err("audit WAL not open".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_the_file_now_at_the_path_and_fails_without_one() {
        let dir = std::env::temp_dir().join(format!("pc-syncer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wal = dir.join("audit.db-wal");
        let _ = std::fs::remove_file(&wal);
        let mut held = None;
        assert!(sync_wal(&wal, &mut held).is_err(), "no WAL yet");
        std::fs::write(&wal, b"one").unwrap();
        sync_wal(&wal, &mut held).unwrap();
        let first = held.as_ref().unwrap().metadata().unwrap().ino();
        // Replaced (a new inode at the same path): the next flush must follow it.
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(
            dir.join("other"),
            b"keeps the old inode number from being reused",
        )
        .unwrap();
        std::fs::write(&wal, b"two").unwrap();
        sync_wal(&wal, &mut held).unwrap();
        let now = std::fs::metadata(&wal).unwrap().ino();
        assert_eq!(held.as_ref().unwrap().metadata().unwrap().ino(), now);
        assert_ne!(first, now);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
