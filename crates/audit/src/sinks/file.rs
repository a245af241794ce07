//! JSON lines appended to a file: one record (the event and its `integrity`
//! section, canonical JSON) per line, flushed to disk (`fdatasync`) before the
//! batch counts as delivered.
//!
//! The file is opened for every batch, so a rotation by renaming (logrotate
//! without `copytruncate`) is followed at the next batch. A batch that fails
//! half-way is cut off again, so a retry never leaves a broken line behind.

use super::DeliveryError;
use crate::db::StoredRecord;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

pub(super) struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub(super) fn new(path: PathBuf) -> FileSink {
        FileSink { path }
    }

    pub(super) fn describe(&self) -> String {
        self.path.display().to_string()
    }

    pub(super) async fn deliver(&mut self, records: &[StoredRecord]) -> Result<(), DeliveryError> {
        let mut text = String::with_capacity(records.len() * 1024);
        for r in records {
            text.push_str(&super::export_text(r));
            text.push('\n');
        }
        let located = |e: std::io::Error| {
            DeliveryError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", self.path.display()),
            ))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(located)?;
        }
        let mut options = tokio::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&self.path).await.map_err(located)?;
        let start = file.metadata().await.map_err(located)?.len();
        let written = async {
            file.write_all(text.as_bytes()).await?;
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        if let Err(e) = written {
            let _ = file.set_len(start).await;
            return Err(located(e));
        }
        Ok(())
    }
}
